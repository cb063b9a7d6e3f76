"""Independent test traffic for repmon, written from docs/events.md and docs/incidents.md only.

Usage::

    python bench/external_scenarios.py --list
    python bench/external_scenarios.py --scenario NAME --seed N --out DIR [--order log|sorted]

writes ``DIR/NAME-seedN.jsonl`` (canonical events) and ``DIR/NAME-seedN.truth.json`` (expected
incidents, and ``quiet`` when nothing should open). numpy + orjson + stdlib, no repmon imports.

Traffic model
-------------
* Fleet: 12 egress IPs in three pools (``shared-a`` 198.51.100.10-13, ``shared-b``
  198.51.100.20-23, ``dedicated-c`` 203.0.113.30-33) on four MTA nodes of three IPs each, so
  nodes and pools do not line up. Four tenants (a retailer, a news publisher, a B2B SaaS and a
  bank) with 2-3 sender domains and one stream (campaign) per sender domain.
* Recipient lists of realistic size (9k-120k, fixed across seeds): consumer mailboxes at Gmail,
  Outlook.com, Yahoo/AOL, iCloud, Comcast, GMX/web.de, T-Online, Orange with their real MX
  hosts, and B2B domains behind Microsoft 365, Google Workspace, Mimecast, Proofpoint or their
  own Postfix. A few addresses are invalid (hard bounce once, then suppressed: later sends are
  ``rejected`` by the ESP), a few mailboxes are full or disabled, some self-hosted domains
  (and Exchange Online for full mailboxes) accept and bounce by DSN minutes later, Mimecast and
  some Postfix domains greylist new (recipient, /24) pairs until they trust the sender.
* Each stream has a daily volume curve (US consumer, EU consumer, business hours, flat) and
  picks recipients repeatedly (uniformly, or with log-normal "active user" weights for
  notifications), so known-good memory has something to remember. Every message is ``sent``,
  then attempted from an IP of its pool; 4xx replies are retried after 5, 10, 20, 30, 60 ... min
  (80 % from the same IP). Base reply rates and reply wording are per provider family. Complaints
  come only from feedback-loop providers (Yahoo/AOL CFL, Microsoft JMRP, Comcast), never from
  Gmail. Opens, clicks and unsubscribes come from the tracking service.
* A scenario overlays one incident on this traffic: a reply key with a ramped probability on
  the matching attempts (per provider it may start later, with its own ramp: ``stagger``), or
  a complaint probability for one campaign (or all of one tenant's campaigns) at one provider.
* Truth: each incident's ``scope`` is the one scope an engineer acts on under
  docs/incidents.md, "Attribution" (a combined scope ``X|provider:P`` for one sending dimension
  at one provider; the wide scope when its parts are affected alike); ``also_ok`` lists the
  other scopes where it would still be a detection, wider or narrower.

Log-order model (``--order log``)
---------------------------------
Every event has a source: the node that owns its IP (``sent`` and attempts), the DSN processor,
the FBL processor, the tracking webhook, or the API (suppression rejects). A source ships its
lines after a small lag in batches of 2-5 s (the FBL processor once a minute); lines are
slightly reordered inside a batch and batches of all sources interleave by flush time. Node
``mta-3`` is slow: its lag wanders between 2 and 8 min. A retry or a DSN is never logged before
the attempt it follows. Complaints carry the original send time but arrive 0.5-24 h later
(log-normal, median 1.5 h); a scenario's ``fast_fbl`` provider reports most of them 5-20 min
after the delivery instead (``fast_fbl_lag``). About 0.3 % of batches are shipped twice
(at-least-once). Apart from complaints, no line is more than 15 min older than a line before
it. ``--order sorted`` writes the same lines (duplicates included) stably sorted by timestamp
value.

Field shapes (``--shapes messy``, the default) follow each source's adapter: epoch floats and
ints, RFC 3339 with ``Z``, with offsets (``+01:00`` node clock, ``-05:00`` ARF dates), with
fractions, lower-case ``t``/``z`` (DSN parser, tracking) or a space separator (API);
``smtp_code`` as a digit string from one ``mta-2`` process and from the DSN parser; empty strings
for unknown optional fields on ``mta-2``; ``smtp;``-prefixed responses on ``mta-3``; raw
multi-line replies (continuation prefixes kept) on ``mta-2``; upper- and mixed-case domains;
recipient-less (redacted) Yahoo complaints; unknown extra fields. ``--shapes clean`` keeps the
events and their order but writes plain canonical fields.
"""

from __future__ import annotations

import argparse
import gc
import heapq
import math
import random
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import orjson

DAY0 = 1_795_132_800  # 2026-11-20T00:00:00Z, the Friday before Black Friday
IPS = [f"198.51.100.{i}" for i in (10, 11, 12, 13, 20, 21, 22, 23)]
IPS += [f"203.0.113.{i}" for i in (30, 31, 32, 33)]
POOLS = {"shared-a": (0, 1, 2, 3), "shared-b": (4, 5, 6, 7), "dedicated-c": (8, 9, 10, 11)}
SOURCES = ("mta-1", "mta-2", "mta-3", "mta-4", "dsn-processor", "fbl-processor", "tracking", "api")
DSN, FBL, TRACK, API = 4, 5, 6, 7
SLOW_NODE = 2
KINDS: tuple[str, ...] = ("sent", "delivered", "deferred", "bounced", "complained", "rejected")
KINDS += ("opened", "clicked", "unsubscribed")  # anymail's normalized names, docs/events.md
SENT, DELIVERED, DEFERRED, BOUNCED, COMPLAINED, REJECTED, OPENED, CLICKED, UNSUB = range(9)
ATTEMPT_KINDS = (DELIVERED, DEFERRED, BOUNCED)
BACKOFF = (300, 600, 1200, 1800, 3600, 3600, 3600, 3600)


def _rows(text: str) -> list[str]:
    return [x.strip() for x in text.strip().splitlines() if x.strip() and x[0] != "#"]


# ---------------------------------------------------------------------------------------------
# SMTP replies. Row: family | key[*weight] | code | text. Code "421-4.7.28" is a multi-line
# reply on the wire, "550 5.1.1" a single line, "554" / "554-" without enhanced code, "-" a
# connection failure without any reply. Every family's "transient" list also gets the timeout.
# "dmarc": the refusal of a DMARC p=reject failure (only forced by a scenario).
# "dnsbl": the refusal of a host that checks the connecting IP against Spamhaus (Yahoo/AOL,
# Comcast, GMX/web.de, Exchange Online Protection for Microsoft 365 tenants, Postfix with
# zen.spamhaus.org; Gmail, Outlook.com and iCloud use their own lists). "net_limit": Gmail's
# 4.7.28 for a whole /24 ("IP Netblock"). Both only forced by a scenario.
G = "https://support.google.com/mail/?p="
YH = "https://postmaster.yahooinc.com/error-codes"
MC = "https://community.mimecast.com/docs/DOC-1369#"
CC = "https://postmaster.comcast.net/smtp-error-codes.php#"
REPLY_TEXT = f"""
generic | ok | 250 2.0.0 | Ok: queued as {{q}}
generic | unknown | 550 5.1.1 | <{{rcpt}}>: Recipient address rejected: User unknown in local recipient table
generic | full | 452 4.2.2 | <{{rcpt}}>: Mailbox full
generic | full | 552 5.2.2 | <{{rcpt}}>: Mailbox full, quota exceeded
generic | throttle | 421 4.7.0 | {{host}} Error: too many connections from {{ip}}
generic | transient | 451 4.3.0 | <{{rcpt}}>: Temporary lookup failure
generic | transient | 421 4.3.2 | Service not available, closing transmission channel
generic | block,dnsbl | 554 5.7.1 | Service unavailable; Client host [{{ip}}] blocked using zen.spamhaus.org; https://www.spamhaus.org/query/ip/{{ip}}
generic | auth,dmarc | 550 5.7.26 | This message does not pass authentication checks (SPF and DKIM both do not pass). DMARC policy of {{sender}} is reject.
generic | grey | 450 4.2.0 | <{{rcpt}}>: Recipient address rejected: Greylisted, see http://postgrey.schweikert.ch/help/{{dom}}.html
generic | dsn | 550 5.1.1 | <{{rcpt}}>: Recipient address rejected: User unknown in virtual mailbox table
generic | dsn | 550 5.1.10 | RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP address lookup
generic | rejected | - | Not delivering to previously bounced address
gmail | ok | 250 2.0.0 | OK  {{epoch}} {{g}}
gmail | unknown | 550-5.1.1 | The email account that you tried to reach does not exist. Please try double-checking the recipient's email address for typos or unnecessary spaces. For more information, go to {G}NoSuchUser {{g}}
gmail | full | 452-4.2.2 | The recipient's inbox is out of storage space. Please direct the recipient to {G}OverQuotaTemp {{g}}
gmail | throttle,ip_limit | 421-4.7.28 | [{{ip}}      15] Our system has detected an unusual rate of unsolicited mail originating from your IP address. To protect our users from spam, mail sent from your IP address has been temporarily rate limited. For more information, go to {G}UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. {{g}}
gmail | net_limit | 421-4.7.28 | [{{ip}}      15] Our system has detected an unusual rate of unsolicited mail originating from your IP Netblock. To protect our users from spam, mail sent from your IP Netblock has been temporarily rate limited. For more information, go to {G}UnsolicitedRateLimitError to review our Bulk Email Senders Guidelines. {{g}}
gmail | throttle | 452-4.2.1 | The recipient you are trying to contact is receiving mail at a rate that prevents additional messages from being delivered. Please resend your message at a later point. If the user is able to receive mail at that time, your message will be delivered. For more information, go to {G}ReceivingRatePerm {{g}}
gmail | transient | 421-4.3.0 | Temporary System Problem.  Try again later (10). {{g}}
gmail | transient | 451 4.3.0 | Mail server temporarily rejected message. {{g}}
gmail | block | 550-5.7.1 | [{{ip}}] Gmail has detected that this message is likely unsolicited mail. To reduce the amount of spam sent to Gmail, this message has been blocked. For more information, go to {G}UnsolicitedMessageError {{g}}
gmail | auth,dmarc | 550-5.7.26 | Unauthenticated email from {{sender}} is not accepted due to domain's DMARC policy. Please contact the administrator of {{sender}} domain if this was a legitimate mail. To learn about the DMARC initiative, go to {G}DmarcRejection {{g}}
ms | ok | 250 2.6.0 | {{mid}} [InternalId={{iid}}, Hostname={{msh}}.prod.exchangelabs.com] Queued mail for delivery -> 250 2.1.5
ms | unknown | 550 5.5.0 | Requested action not taken: mailbox unavailable (S2017062302). {{ms}}
ms | full | 552 5.2.2 | Requested mail action aborted: exceeded storage allocation. {{ms}}
ms | throttle | 451 4.7.650 | The mail server [{{ip}}] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775) {{ms}}
ms,m365 | throttle,outage*2 | 451 4.7.500 | Server busy. Please try again later from [{{ip}}]. (S77719) {{ms}}
ms,m365 | transient,outage*3 | 421 4.3.2 | Service not available, closing transmission channel {{ms}}
ms,m365 | transient,outage*2 | 451 4.7.0 | Temporary server error. Please try again later. PRX5 {{ms}}
ms | outage | 451 4.7.650 | The mail server [{{ip}}] has been temporarily rate limited due to IP reputation. For e-mail delivery information, see https://postmaster.live.com (S775) {{ms}}
ms | outage*3 | - | connect to {{host}}:25: Connection timed out
ms | block | 550 5.7.1 | Unfortunately, messages from [{{ip}}] weren't sent. Please contact your Internet service provider since part of their network is on our block list (S3150). You can also refer your provider to http://mail.live.com/mail/troubleshooting.aspx#errors. {{ms}}
ms | auth,dmarc | 550 5.7.515 | Access denied, sending domain [{{SENDER}}] doesn't meet the required authentication level. The sender's domain in the 5322.From address doesn't meet the authentication requirements defined for the sender. To learn more about the requirements, see https://go.microsoft.com/fwlink/?linkid=2289955 {{ms}}
m365 | ok | 250 2.6.0 | {{mid}} [InternalId={{iid}}, Hostname={{msh}}.prod.outlook.com] Queued mail for delivery
m365 | unknown | 550 5.1.10 | RESOLVER.ADR.RecipientNotFound; Recipient {{rcpt}} not found by SMTP address lookup
m365 | full | 552 5.2.2 | mailbox full; STOREDRV.Deliver.Exception:QuotaExceededException.MapiExceptionShutoffQuotaExceeded
m365 | block | 550 5.7.606 | Access denied, banned sending IP [{{ip}}]. To request removal from this list please visit https://sender.office.com/ and follow the directions. For more information please go to  http://go.microsoft.com/fwlink/?LinkID=526655 AS(1430) {{ms}}
m365 | dnsbl | 550 5.7.1 | Service unavailable, Client host [{{ip}}] blocked using Spamhaus. To request removal from this list see https://www.spamhaus.org/query/ip/{{ip}} (AS16012611) {{ms}}
m365 | auth | 550 5.7.509 | Access denied, sending domain {{SENDER}} does not pass DMARC verification and has a DMARC policy of reject. {{ms}}
yahoo | ok | 250 | ok dirdel
yahoo | unknown | 554 | delivery error: dd This user doesn't have a {{dom}} account ({{rcpt}}) [0] - {{y}}
yahoo | full | 554 | delivery error: dd Sorry your message to {{rcpt}} cannot be delivered. This mailbox is disabled (554.30). - {{y}}
yahoo | throttle | 421 4.7.0 | [TSS04] Messages from {{ip}} temporarily deferred due to unexpected volume or user complaints - 4.16.55.1; see {YH}
yahoo | transient | 421 4.3.2 | Service temporarily unavailable, please try again later
yahoo | block,pool_block*5,dnsbl | 553 5.7.1 | [BL21] Connections will not be accepted from {{ip}}, because the ip is in Spamhaus's list; see {YH}
yahoo | block,pool_block*4 | 554 5.7.9 | Message not accepted for policy reasons.  See {YH}
yahoo | pool_block | 421 4.7.0 | [TSS09] All messages from {{ip}} will be permanently deferred; Retrying will NOT succeed. See {YH}
yahoo | auth | 550 5.7.9 | This mail has been blocked because the sender is unauthenticated. Yahoo requires all senders to authenticate with either SPF or DKIM.
# Yahoo's DMARC p=reject refusal (help.yahoo.com SLN7253) is its generic policy reply, as in "block"
yahoo | dmarc | 554 5.7.9 | Message not accepted for policy reasons.  See {YH}
apple | unknown | 550 5.1.1 | <{{rcpt}}>: user does not exist
apple | full | 552 5.2.2 | <{{rcpt}}>: user is over quota
apple | throttle | 421 4.7.0 | Too many connections from {{ip}}, please try again later
apple | block | 554 5.7.1 | [CS01] Message rejected due to local policy. Please visit https://support.apple.com/en-us/HT204137
comcast | ok | 250 2.0.0 | {{q}} mail accepted for delivery
comcast | unknown | 550 5.1.1 | <{{rcpt}}> Not our Customer
comcast | throttle | 421 4.7.0 | {{host}} comcast {{ip}} Too many sessions opened from your IP. Please try again later. Refer to {CC}RL000010
comcast | block,dnsbl | 554 5.7.1 | {{host}} comcast {{ip}} found on one or more DNSBLs, see {CC}BL000000
gmx | ok | 250 | Requested mail action okay, completed: id={{q}}
gmx | unknown | 550 | Requested action not taken: mailbox unavailable
gmx | full | 452 | Requested action not taken: insufficient system storage
gmx | throttle | 421- | {{dom}} (mxgmx{{n}}) Nemesis ESMTP Service not available Too many connections from your IP address. For explanation visit https://www.gmx.net/mail/senderguidelines?c=ipc
gmx | block,dnsbl | 554- | {{dom}} (mxgmx{{n}}) Nemesis ESMTP Service not available No SMTP service IP address is block listed. For explanation visit https://www.gmx.net/mail/senderguidelines?c=bl
orange | ok | 250 2.0.0 | {{q}} mail accepted for delivery
orange | unknown | 550 5.1.1 | Adresse d au moins un destinataire invalide. Invalid recipient. OFR_416 [416]
orange | full | 452 4.2.2 | Boite du destinataire pleine. Recipient overquota. OFR_417 [417]
orange | throttle | 421 | mwinf{{n}} ME Trop de connexions, veuillez verifier votre configuration. Too many connections, slow down. OFR005_104 [104]
orange | block | 550 5.7.1 | Service refuse. Veuillez essayer plus tard. Service refused, please try later. OFR006_101 [101]
mimecast | unknown | 550 | Invalid Recipient - {MC}550 [{{mc}}]
mimecast | grey,transient | 451 | Internal resource temporarily unavailable - {MC}451 [{{mc}}]
mimecast | block | 554 | Email rejected due to security policies - {MC}554 [{{mc}}]
proofpoint | ok | 250 2.0.0 | {{pp}} Message accepted for delivery
proofpoint | unknown | 550 5.1.1 | <{{rcpt}}>... User unknown
proofpoint | block | 554 5.7.1 | Blocked by policy
proofpoint | transient | 421 4.3.2 | Service not available, closing transmission channel
"""
# per-attempt base rates for valid mailboxes: family key=probability ...
BASE_TEXT = """
gmail throttle=.002 transient=.002 block=4e-4 auth=1e-4
ms throttle=.003 transient=.004 block=5e-4 auth=1e-4
m365 throttle=.001 transient=.003 block=3e-4 auth=1e-4
yahoo throttle=.008 transient=.003 block=5e-4 auth=1e-4
apple throttle=.002 transient=.002 block=3e-4
comcast throttle=.004 transient=.003 block=5e-4
gmx throttle=.002 transient=.002 block=5e-4
orange throttle=.006 transient=.003 block=5e-4
mimecast throttle=.001 transient=.003 block=5e-4 auth=1e-4
proofpoint transient=.003 block=8e-4 auth=1e-4
generic throttle=.002 transient=.006 block=1e-3 auth=2e-4
"""
Reply = tuple[int | None, str, str, bool]  # code (None: no reply), enhanced, text, multi-line


def _replies() -> dict[str, dict[str, list[Reply]]]:
    out: dict[str, dict[str, list[Reply]]] = {}
    timeout: Reply = (None, "", "connect to {host}:25: Connection timed out", False)
    for row in _rows(REPLY_TEXT):
        fams, keys, code, text = (x.strip() for x in row.split(" | ", 3))
        num, sep, enh = code[:3], code[3:4], code[4:]
        rep: Reply = (None if code == "-" else int(num), enh, text, sep == "-")
        for fam in fams.split(","):
            for key in keys.split(","):
                k, _, w = key.partition("*")
                out.setdefault(fam, {}).setdefault(k, []).extend([rep] * int(w or 1))
    for table in out.values():
        table.setdefault("transient", []).append(timeout)
    return out


REPLIES = _replies()
GENERIC = REPLIES["generic"]
REJECT_REPLY = GENERIC["rejected"][0]
BASE = {
    r.split()[0]: [(kv.split("=")[0], float(kv.split("=")[1])) for kv in r.split()[1:]]
    for r in _rows(BASE_TEXT)
}

# ---------------------------------------------------------------------------------------------
# Domains, recipient lists, streams


@dataclass(frozen=True, slots=True)
class Dom:
    name: str
    family: str
    provider: str
    mxs: tuple[str, ...]
    fbl: float = 0.0  # complaint factor; 0 = no per-message feedback loop
    grey: bool = False
    accept_all: bool = False
    rank: int = 0  # size rank among the customers of a B2B operator (0 = largest)


DOMAIN_TEXT = """
gmail.com googlemail.com | gmail google 0 | gmail-smtp-in.l.google.com alt1.gmail-smtp-in.l.google.com
outlook.com | ms microsoft 0.8 | outlook-com.olc.protection.outlook.com
hotmail.com | ms microsoft 0.8 | hotmail-com.olc.protection.outlook.com
live.com | ms microsoft 0.8 | live-com.olc.protection.outlook.com
msn.com | ms microsoft 0.8 | msn-com.olc.protection.outlook.com
hotmail.co.uk hotmail.fr outlook.de | ms microsoft 0.8 | eur.olc.protection.outlook.com
yahoo.com | yahoo yahoo 1.0 | mta5.am0.yahoodns.net mta6.am0.yahoodns.net mta7.am0.yahoodns.net
aol.com | yahoo yahoo 1.0 | mx-aol.mail.gm0.yahoodns.net
yahoo.fr yahoo.co.uk | yahoo yahoo 1.0 | mx-eu.mail.am0.yahoodns.net
icloud.com me.com mac.com | apple apple 0 | mx01.mail.icloud.com mx02.mail.icloud.com
comcast.net | comcast comcast 1.2 | mx1h1.comcast.net mx2h1.comcast.net
gmx.de gmx.net | gmx gmx 0 | mx00.emig.gmx.net mx01.emig.gmx.net
web.de | gmx web.de 0 | mx-ha03.web.de mx-ha02.web.de
t-online.de | generic t-online 0 | mx00.t-online.de mx01.t-online.de
orange.fr wanadoo.fr | orange orange 0 | smtp-in.orange.fr
"""
WORD_TEXT = """
first james mary john linda robert emma michael sophie david laura daniel anna thomas julia paul
first marie kevin sarah lukas lea chris nina mark olga peter claire sam ines tom eva
last smith johnson brown miller davis garcia wilson moore taylor martin muller schmidt fischer
last schneider weber dubois bernard petit rossi young king wright lopez hill scott green adams
co_a north blue silver apex harbor summit cedar iron bright lake stone pine clear crown delta
co_a eagle granite maple orbit quarry
co_b logistics dynamics health capital systems foods labs energy partners media robotics legal
co_b insurance builders pharma analytics freight solar networks consulting
"""
WORDS: dict[str, list[str]] = {}
for _row in _rows(WORD_TEXT):
    WORDS.setdefault(_row.split()[0], []).extend(_row.split()[1:])
LOCAL = (  # consumer / business local parts
    ("{f}.{l}{n2}", "{f}{l}{n}", "{i}{l}{n}", "{f}_{l}{n3}", "{l}.{f}{n}"),
    ("{f}.{l}", "{i}{l}", "{f}.{l}{n1}", "{f}", "{l}.{f}"),
)
TLDS = (".com", ".com", ".com", ".de", ".co.uk", ".fr", ".io", ".net")
OPERATORS = {"m365": 50, "gws": 30, "proofpoint": 8, "mimecast": 10, "self": 22}
PROFILE_TEXT = """
us gmail.com=36 googlemail.com=0.5 outlook.com=4 hotmail.com=8 live.com=2 msn.com=1 yahoo.com=9
us aol.com=3 icloud.com=7 me.com=2 mac.com=0.5 comcast.net=3 gmx.net=0.5 b2b:m365=8 b2b:gws=6
us b2b:self=3 b2b:mimecast=1 b2b:proofpoint=1.5
us_legacy gmail.com=27 hotmail.com=10 outlook.com=2 msn.com=2 yahoo.com=19 aol.com=11
us_legacy icloud.com=4 comcast.net=6 b2b:m365=4 b2b:gws=2 b2b:self=3
eu gmail.com=30 googlemail.com=2 hotmail.fr=3 hotmail.co.uk=3 outlook.de=3 outlook.com=2
eu yahoo.fr=2 yahoo.co.uk=1.5 gmx.de=9 gmx.net=2 web.de=9 t-online.de=6 orange.fr=7
eu wanadoo.fr=1 icloud.com=4 b2b:m365=6 b2b:gws=4 b2b:self=3 b2b:mimecast=2
b2b b2b:m365=42 b2b:gws=22 b2b:proofpoint=12 b2b:mimecast=9 b2b:self=10 gmail.com=4 outlook.com=1
bank gmail.com=33 outlook.com=6 hotmail.com=9 live.com=3 msn.com=2 yahoo.com=9 aol.com=3
bank icloud.com=9 comcast.net=5 b2b:m365=5 b2b:gws=3 b2b:self=2
"""
PROFILES: dict[str, dict[str, float]] = {}
for _row in _rows(PROFILE_TEXT):
    for _kv in _row.split()[1:]:
        PROFILES.setdefault(_row.split()[0], {})[_kv.split("=")[0]] = float(_kv.split("=")[1])
# list name -> (profile, size, invalid share, log-normal sigma of "activity" weights)
LISTS = {
    "acme": ("us", 120_000, 0.005, 0.0),
    "acme-legacy": ("us_legacy", 40_000, 0.006, 0.0),
    "greenleaf": ("eu", 60_000, 0.003, 0.0),
    "pixelforge": ("b2b", 9_000, 0.002, 1.0),
    "brightbank": ("bank", 40_000, 0.001, 0.8),
}


@dataclass(frozen=True)
class Stream:
    tenant: str
    campaign: str  # "" for a stream without campaign id
    sender: str  # as written in the From header (case kept)
    pool: str
    rlist: str
    rate: float  # messages/s at curve value 1 (the daily mean)
    curve: str  # us | eu | b2b | flat | const
    cr: float  # complaints per delivered at a feedback-loop provider
    opens: float


# tenant campaign sender pool list rate curve complaint-rate open-rate ("-": no campaign)
STREAM_TEXT = """
acme-retail acme-daily-deals news.acme-retail.example shared-a acme 2.2 us 5e-4 0.14
acme-retail - acme-retail.example shared-a acme 0.35 flat 1e-4 0.35
acme-retail acme-loyalty offers.acme-retail.example shared-a acme 0.5 us 5e-4 0.12
greenleaf gl-morning-brief mail.greenleaf-news.example shared-b greenleaf 1.4 eu 4e-4 0.2
greenleaf gl-breaking alerts.greenleaf-news.example shared-b greenleaf 0.4 eu 3e-4 0.15
pixelforge pf-notifications app.pixelforge.example shared-b pixelforge 1.8 b2b 5e-5 0.3
pixelforge pf-weekly-digest news.pixelforge.example shared-b pixelforge 0.35 b2b 2e-4 0.2
brightbank bb-alerts notify.brightbank.example dedicated-c brightbank 1.5 flat 1e-4 0.25
brightbank bb-statements secure.BrightBank.example dedicated-c brightbank 0.6 us 2e-4 0.2
acme-retail acme-bf-preview offers.acme-retail.example shared-a acme-legacy 2.2 const 5e-4 0.1
"""


def _stream(row: str) -> Stream:
    t, c, s, p, lst, rate, cv, cr, op = row.split()
    return Stream(t, "" if c == "-" else c, s, p, lst, float(rate), cv, float(cr), float(op))


*STREAMS, BLAST = (_stream(r) for r in _rows(STREAM_TEXT))  # the blast only in one scenario
CURVE_BUMPS = {  # floor, then (UTC hour, width h, weight) bumps
    "us": (0.25, ((14.5, 2.5, 1.0), (18.5, 2.5, 0.7), (1.0, 2.5, 0.6))),
    "eu": (0.2, ((7.5, 2.0, 1.0), (12.5, 2.5, 0.6), (19.0, 2.0, 0.7))),
    "b2b": (0.1, ((10.0, 3.5, 1.0), (16.0, 3.5, 1.0))),
    "flat": (0.6, ((15.0, 5.0, 0.5),)),
    "const": (1.0, ()),
}


def curve(kind: str, hours: np.ndarray) -> np.ndarray:
    """Relative volume at UTC hours, normalised to a daily mean of 1."""
    floor, bumps = CURVE_BUMPS[kind]

    def raw(h: np.ndarray) -> np.ndarray:
        v = np.full_like(h, floor)
        for c, w, a in bumps:
            d = np.minimum(np.abs(h - c), 24 - np.abs(h - c))
            v = v + a * np.exp(-((d / w) ** 2))
        return v

    out: np.ndarray = raw(hours) / float(raw(np.arange(0, 24, 0.1)).mean())
    return out


@dataclass
class Catalog:
    doms: list[Dom]
    b2b: dict[str, tuple[np.ndarray, np.ndarray]]  # operator -> (dom indices, weights)
    addr: list[str] = field(default_factory=list)
    rdom: list[int] = field(default_factory=list)
    flag: list[int] = field(default_factory=list)  # 0 fine, 1 invalid, 2 full / disabled
    lists: dict[str, tuple[int, int, np.ndarray]] = field(default_factory=dict)


def _b2b_dom(rng: np.random.Generator, op: str, name: str, tld: str) -> Dom:
    if op == "m365":
        return Dom(
            name, "m365", "microsoft", (name.replace(".", "-") + ".mail.protection.outlook.com",)
        )
    if op == "gws":
        return Dom(name, "gmail", "google", ("aspmx.l.google.com", "alt1.aspmx.l.google.com"))
    if op == "proofpoint":
        cid = f"00{int(rng.integers(0x100000, 0xFFFFFF)):06x}"
        return Dom(name, op, op, (f"mx0a-{cid}.pphosted.com", f"mx0b-{cid}.pphosted.com"))
    if op == "mimecast":
        reg = "eu" if tld in (".de", ".co.uk", ".fr") else "us"
        return Dom(
            name, op, op, tuple(f"{reg}-smtp-inbound-{k}.mimecast.com" for k in (1, 2)), grey=True
        )
    u = rng.random()  # self-hosted Postfix: some greylist, some accept all and bounce later
    return Dom(name, "generic", "self", (f"mail.{name}",), grey=u < 0.4, accept_all=u > 0.7)


def build_catalog() -> Catalog:
    """Domains and recipients; fixed across seeds so that truth scopes are stable."""
    rng = np.random.default_rng(2026)
    doms: list[Dom] = []
    for row in _rows(DOMAIN_TEXT):
        names, spec, mxs = (x.split() for x in row.split(" | "))
        doms += [Dom(n, spec[0], spec[1], tuple(mxs), float(spec[2])) for n in names]
    b2b: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    used: set[str] = set()
    for op, count in OPERATORS.items():
        idx: list[int] = []
        while len(idx) < count:
            a, b = rng.choice(WORDS["co_a"]), rng.choice(WORDS["co_b"])
            tld = TLDS[int(rng.integers(len(TLDS)))]
            name = f"{a}-{b}{tld}" if rng.random() < 0.5 else f"{a}{b}{tld}"
            if name not in used:
                used.add(name)
                idx.append(len(doms))
                doms.append(replace(_b2b_dom(rng, op, name, tld), rank=len(idx) - 1))
        w = 1.0 / np.arange(1, count + 1) ** 0.9  # company sizes are Zipf-like
        b2b[op] = (np.array(idx), w / w.sum())
    cat = Catalog(doms, b2b)
    didx = {d.name: i for i, d in enumerate(doms)}
    first, last = WORDS["first"], WORDS["last"]
    for lname, (prof, size, invalid, sigma) in LISTS.items():
        keys = list(PROFILES[prof])
        pw = np.array([PROFILES[prof][k] for k in keys])
        pick = rng.choice(len(keys), size, p=pw / pw.sum())
        dom = np.zeros(size, dtype=np.int64)
        for j, k in enumerate(keys):
            m = pick == j
            if k.startswith("b2b:"):
                ids, w = b2b[k[4:]]
                dom[m] = rng.choice(ids, int(m.sum()), p=w)
            else:
                dom[m] = didx[k]
        f_, l_ = rng.integers(0, len(first), size), rng.integers(0, len(last), size)
        pat, num, u = rng.integers(0, 5, size), rng.integers(1, 9999, size), rng.random(size)
        v = rng.random(size)
        start = len(cat.addr)
        for i in range(size):
            d = doms[int(dom[i])]
            f, ln, n = first[f_[i]], last[l_[i]], int(num[i])
            biz = "aspmx" in d.mxs[0] or d.family in ("m365", "proofpoint", "mimecast", "generic")
            local = LOCAL[biz and d.provider != "t-online"][pat[i]]
            local = local.format(f=f, i=f[0], l=ln, n=n, n1=n % 10, n2=n % 100, n3=n % 1000)
            host = d.name
            if u[i] < 0.02:  # typed by a human: mixed or upper case
                local, host = local.capitalize(), (host.upper() if u[i] < 0.008 else host.title())
            cat.addr.append(f"{local}@{host}")
            cat.rdom.append(int(dom[i]))
            cat.flag.append(1 if v[i] < invalid else 2 if v[i] < invalid + 0.001 else 0)
        w = rng.lognormal(0.0, sigma, size) if sigma > 0 else np.ones(size)
        cat.lists[lname] = (start, size, w / w.sum())
    return cat


# ---------------------------------------------------------------------------------------------
# Scenarios

Match = Callable[[int, Dom, Stream], bool]  # (ip index, recipient domain, stream)


@dataclass(frozen=True)
class Scenario:
    hours: int
    about: str
    typ: str = ""  # expected incident type; "" = quiet
    scope: str = ""
    also: tuple[str, ...] = ()
    at: int = 0  # onset in s after the start (plus the seed's jitter of up to +-10 min)
    dur: int = 0
    key: str = ""  # reply key forced on matching attempts, or "complaint"
    p: float = 0.0  # peak probability per matching attempt (complaint: per delivered)
    ramp: float = 120.0
    match: Match = lambda i, d, s: False
    domains_ok: bool = False  # the matching recipient domains are acceptable scopes too
    # per provider (name, delay s after the onset, ramp s): parts that start failing later
    stagger: tuple[tuple[str, float, float], ...] = ()
    fast_fbl: str = ""  # provider whose feedback loop reports within minutes (log order)

    def prob(self, t: float, on: float, provider: str = "") -> float:
        delay, ramp = 0.0, self.ramp
        for name, dl, rp in self.stagger:
            if name == provider:
                delay, ramp = dl, rp
        start = on + delay
        return self.p * min(1.0, (t - start) / ramp) if start <= t < on + self.dur else 0.0


def at(scope: str, provider: str) -> str:
    """A combined scope, one sending dimension at one provider (docs/incidents.md)."""
    return f"{scope}|provider:{provider}"


IP11, IP12, CAMP = "ip:198.51.100.11", "ip:198.51.100.12", "campaign:acme-bf-preview"
BB, BBS = "sender:notify.brightbank.example", "sender:secure.brightbank.example"
SHARED_A = tuple(f"ip:{IPS[i]}" for i in POOLS["shared-a"])
MS_CONSUMER = ("outlook.com", "hotmail.com", "live.com", "msn.com")
IP13, DC, ACME = "ip:198.51.100.13", "pool:dedicated-c", "tenant:acme-retail"
DEDICATED_C = tuple(f"ip:{IPS[i]}" for i in POOLS["dedicated-c"])
ACME_CAMPAIGNS = tuple(
    f"campaign:{x.campaign}" for x in (*STREAMS, BLAST) if x.campaign[:5] == "acme-"
)
SPAMHAUS_AT = ("yahoo", "microsoft", "comcast", "gmx")  # 198.51.100.13's refusing providers
YAHOO_PARTS = tuple(at(f"pool:{p}", "yahoo") for p in POOLS)
YAHOO_PARTS += tuple(at(f"ip:{x}", "yahoo") for x in IPS)
# scope: the one scope to act on (docs/incidents.md, "Attribution"); also: other acceptable ones
SCENARIOS = {
    "normal-24h": Scenario(24, "24 h of normal traffic; nothing should open"),
    "gmail-ip-ratelimit": Scenario(
        6, "Gmail 421-4.7.28 to 60 % of the attempts from one IP, 40 min", "rate_limited",
        at(IP12, "google"), (IP12, at("pool:shared-a", "google")), 9000, 2400, "ip_limit", 0.6,
        60.0, lambda i, d, s: i == 2 and d.provider == "google"),
    "yahoo-pool-block": Scenario(
        6, "Yahoo blocks pool shared-a (553 [BL21] / 554 5.7.9), 1 h", "block",
        at("pool:shared-a", "yahoo"), ("pool:shared-a", *(at(x, "yahoo") for x in SHARED_A),
        *SHARED_A), 8400, 3600, "pool_block", 0.95, 180.0,
        lambda i, d, s: i in POOLS["shared-a"] and d.provider == "yahoo"),
    "microsoft-sender-auth": Scenario(
        6, "550 5.7.515 for one sender at Outlook.com, ramp 10 min, 2 h", "auth_failure",
        at(BB, "microsoft"), (BB,), 8100, 7200, "auth", 0.9, 600.0,
        lambda i, d, s: s.sender == BB[7:] and d.family == "ms"),
    "campaign-complaints-yahoo": Scenario(
        6, "one campaign's Yahoo complaints 0.05 % -> 0.6 %, 90 min of sends", "complaint_spike",
        at(CAMP, "yahoo"), (CAMP, at("tenant:acme-retail", "yahoo"), "provider:yahoo",
        "tenant:acme-retail"), 9000, 5400, "complaint", 0.006, 1.0,
        lambda i, d, s: s.campaign == CAMP[9:] and d.provider == "yahoo"),
    "microsoft-outage": Scenario(
        6, "Outlook.com/Hotmail 421 4.3.2 / 451 4.7.650 / timeouts, 45 min", "provider_outage",
        "provider:microsoft", ("mx:microsoft", *(f"domain:{d}" for d in MS_CONSUMER)), 9600,
        2700, "outage", 0.85, 120.0, lambda i, d, s: d.family == "ms"),
    "b2b-false-bounces": Scenario(
        6, "Proofpoint domains: 550 5.1.1 for known-good users, 50 min", "false_hard_bounces",
        "mx:proofpoint", (), 10800, 3000, "unknown", 0.9, 120.0,
        lambda i, d, s: d.provider == "proofpoint" and d.rank < 4, domains_ok=True),
    # A DKIM rotation done in the wrong order: the selector's public key was replaced in DNS
    # while the MTA still signs with the old private key; the Return-Path is the ESP's own
    # domain (SPF passes, unaligned), so DMARC fails and the bank's p=reject applies wherever
    # it is enforced, as each receiver's cached key expires. Gmail / Google Workspace at once,
    # Yahoo/AOL from +4 min (ramp 8 min), Outlook.com from +6 min (ramp 10 min). Microsoft 365
    # tenants junk rather than reject (oreject), iCloud, Comcast, GMX, B2B gateways accept.
    "sender-auth-two-providers": Scenario(
        6, "one sender's DMARC fails: Gmail 5.7.26, then Yahoo 5.7.9, Outlook.com 5.7.515, 90 min",
        "auth_failure", BBS, (at(BBS, "google"), at(BBS, "microsoft"), at(BBS, "yahoo")),
        8400, 5400, "dmarc", 0.97, 60.0,
        lambda i, d, s: s.sender.lower() == BBS[7:] and d.family in ("gmail", "ms", "yahoo"),
        stagger=(("yahoo", 240.0, 480.0), ("microsoft", 360.0, 600.0))),
    # S3150: Outlook.com's own IP block list (consumer mailboxes; Exchange Online tenants use
    # other lists), every connection from the IP refused; its Gmail/Yahoo/... mail and the
    # other three IPs of shared-a deliver normally.
    "ip-blocklisted-microsoft": Scenario(
        6, "Outlook.com S3150 block list: one IP (198.51.100.11) refused, 1 h", "block",
        at(IP11, "microsoft"), (IP11, at("pool:shared-a", "microsoft")), 9600, 3600, "block",
        0.97, 60.0, lambda i, d, s: i == 1 and d.family == "ms"),
    # The same campaign and volume as campaign-complaints-yahoo (~660 Yahoo/AOL deliveries per
    # 15 min), but Yahoo's CFL reports arrive within minutes (fast_fbl, see log_order).
    "complaint-spike-fast-fbl": Scenario(
        6, "one campaign's Yahoo complaints 0.05 % -> 0.5 %, CFL in 5-20 min, 60 min of sends",
        "complaint_spike", at(CAMP, "yahoo"), (CAMP, at("tenant:acme-retail", "yahoo"),
        "provider:yahoo", "tenant:acme-retail"), 9000, 3600, "complaint", 0.005, 1.0,
        lambda i, d, s: s.campaign == CAMP[9:] and d.provider == "yahoo", fast_fbl="yahoo"),
    # Gmail rate-limits dedicated-c's /24 as a whole (203.0.113.0/24 is the bank's alone; the
    # shared pools share 198.51.100.0/24): 4.7.28 "IP Netblock" for every IP of the pool,
    # Google Workspace MXs included. Its other providers and the shared pools deliver normally.
    # Retries stay in the pool. Volume (seed 1, log order, retries included): the act scope
    # has ~123 attempts/min during the incident (~30 per IP), 52 % deferred; a third of Google's.
    "gmail-pool-netblock-limit": Scenario(
        6, "Gmail 421-4.7.28 'IP Netblock' rate limit for all of pool dedicated-c, 50 min",
        "rate_limited", at(DC, "google"), (DC, *(at(x, "google") for x in DEDICATED_C),
        *DEDICATED_C), 5400, 3000, "net_limit", 0.55, 300.0,
        lambda i, d, s: i in POOLS["dedicated-c"] and d.provider == "google"),
    # Spamhaus (CSS) lists 198.51.100.13 after spam-trap hits. Every host that checks Spamhaus
    # refuses it at connect, as its mirror or resolver cache picks the listing up: Yahoo/AOL
    # [BL21] at once, Comcast BL000000 from +1 min, GMX from +2 min, the Exchange Online
    # Protection of Microsoft 365 tenants from +4 min (ramp 10 min), half of the self-hosted
    # Postfix domains (zen.spamhaus.org) as their caches expire (ramp 15 min). Gmail,
    # Outlook.com (own list), iCloud, the B2B gateways and the other three IPs of shared-a
    # deliver normally. Delisted after 2 h. The listing is the IP's problem (delisting, drain
    # the IP): the IP as a whole, its affected parts at the refusing providers also counting.
    # Volume (seed 1): the IP has ~83 attempts/min, 24 % refused (~20/min): Yahoo/AOL 9.7/min
    # (47 % of the refusals), Microsoft 20/min of which 6.2 refused (M365), Comcast 2.8/min,
    # self-hosted 2.5/min (half refused), GMX 0.5/min; Gmail 37/min and iCloud 8/min accepted.
    "ip-spamhaus-listed": Scenario(
        6, "Spamhaus lists 198.51.100.13: Yahoo BL21, Comcast, GMX, M365 EOP, Postfix refuse, 2 h",
        "block", IP13, (*(at(IP13, p) for p in SPAMHAUS_AT), "pool:shared-a",
        *(at("pool:shared-a", p) for p in SPAMHAUS_AT)), 7200, 7200, "dnsbl", 0.97, 60.0,
        lambda i, d, s: i == 3 and (d.family in ("yahoo", "comcast", "gmx", "m365")
                                    or (d.provider == "self" and d.rank % 2 == 0)),
        stagger=(("comcast", 60.0, 180.0), ("gmx", 120.0, 300.0), ("microsoft", 240.0, 600.0),
                 ("self", 0.0, 900.0))),
    # acme-retail adds a co-registration segment, mostly Hotmail/Outlook.com addresses, to the
    # audiences of all its campaigns: Outlook.com users report junk (JMRP) at 0.5 % of the
    # deliveries instead of 0.04 %, on every acme campaign; its transactional stream, its other
    # providers and the other tenants are unchanged. Microsoft 365 tenants have no per-message
    # feedback loop. Volume (seed 1): the act scope has ~107 deliveries/min (about two thirds
    # at Outlook.com), 38 % of Microsoft's; 46 complaints for the 2 h of sends (daily-deals
    # 25, bf-preview 11, loyalty 10), reported 0.5-24 h later.
    "tenant-complaints-jmrp": Scenario(
        6, "acme-retail's campaigns: Outlook.com JMRP complaints 0.04 % -> 0.5 %, 2 h of sends",
        "complaint_spike", at(ACME, "microsoft"), (ACME, "provider:microsoft",
        *(at(c, "microsoft") for c in ACME_CAMPAIGNS)), 7200, 7200, "complaint", 0.005, 1.0,
        lambda i, d, s: s.tenant == ACME[7:] and s.campaign != "" and d.family == "ms"),
    # Yahoo defers every sender IP of the fleet alike ([TSS04], "unexpected volume"), all pools
    # and tenants, ramp 10 min: Yahoo's problem, throttled at the provider. Volume (seed 1,
    # retries included): ~122 attempts/min, 49 % deferred; shared-a 58 %, dedicated-c 37 %,
    # shared-b 5 % of them.
    "yahoo-provider-ratelimit": Scenario(
        6, "Yahoo/AOL [TSS04] deferrals to half the attempts of every IP and pool, 90 min",
        "rate_limited", "provider:yahoo", ("mx:yahoo", *YAHOO_PARTS), 6300, 5400, "throttle",
        0.5, 600.0, lambda i, d, s: d.provider == "yahoo", domains_ok=True),
}  # fmt: skip

# ---------------------------------------------------------------------------------------------
# Simulation: one pass in time order (injections merged with a retry heap)

Event = tuple[float, int, int, int, int, int, str, Reply | None, int, int]
# (time, kind, message no, stream no, recipient no, ip (-1 none), mx host, reply, token, source)


def simulate(
    cat: Catalog, streams: list[Stream], sc: Scenario, on: float, t1: float, seed: int
) -> tuple[list[Event], list[tuple[int, int]]]:
    t0 = t1 - sc.hours * 3600
    rng = np.random.default_rng(seed)
    r = random.Random(seed)
    rnd, bits, expo = r.random, r.getrandbits, r.expovariate
    ts_l, st_l, rc_l = [], [], []
    for si, st in enumerate(streams):
        minutes = np.arange(t0, t1, 60.0)
        lam = st.rate * 60.0 * curve(st.curve, ((minutes - DAY0) / 3600.0) % 24)
        n = rng.poisson(lam)
        ts_l.append(np.repeat(minutes, n) + rng.random(int(n.sum())) * 60.0)
        off, size, w = cat.lists[st.rlist]
        rc_l.append(rng.choice(size, int(n.sum()), p=w) + off)
        st_l.append(np.full(int(n.sum()), si))
    T = np.concatenate(ts_l)
    o = np.argsort(T, kind="stable")
    sts, rcs = np.concatenate(st_l)[o].tolist(), np.concatenate(rc_l)[o].tolist()
    inj = zip(T[o].tolist(), sts, rcs, strict=True)
    ev: list[Event] = []
    links: list[tuple[int, int]] = []
    heap: list[tuple[float, int, int, int, int, int, int, int]] = []
    supp: set[int] = set()
    grey: set[tuple[int, int]] = set()
    trusted: Counter[tuple[int, int]] = Counter()  # most gateways know our /24s already
    doms, rdom, flag = cat.doms, cat.rdom, cat.flag
    trusted.update({(i, k): 5 for i, d in enumerate(doms) if d.grey for k in (0, 1) if rnd() < 0.8})
    pools = {p: list(v) for p, v in POOLS.items()}

    def attempt(t: float, mid: int, s: int, ri: int, ip: int, n: int, prev: int) -> None:
        st, d = streams[s], doms[rdom[ri]]
        p_hit = sc.prob(t, on, d.provider) if sc.match(ip, d, st) else 0.0
        key = sc.key if p_hit and sc.key != "complaint" and rnd() < p_hit else ""
        fl = flag[ri]
        if not key:
            if fl == 1:
                key = "ok" if d.accept_all else "unknown"
            elif fl == 2:  # Exchange Online accepts, then its store bounces (STOREDRV)
                key = "ok" if d.family == "m365" else "full"
            elif d.grey and (ri, ip >> 3) not in grey and trusted[(rdom[ri], ip >> 3)] < 5:
                grey.add((ri, ip >> 3))  # per /24 and recipient; the client is auto-whitelisted
                key = "grey"  # after 5 deliveries (postgrey's default; Mimecast is similar)
            else:
                u, key = rnd(), "ok"
                for k, p in BASE[d.family]:
                    if u < p:
                        key = k
                        break
                    u -= p
        reps = REPLIES[d.family].get(key) or GENERIC[key]
        rep = reps[int(rnd() * len(reps))]
        code = rep[0]
        kind = DELIVERED if code and code < 300 else BOUNCED if code and code >= 500 else DEFERRED
        te = t + 0.3 + expo(0.8)
        idx = len(ev)
        msg = (mid, s, ri)
        ev.append((te, kind, *msg, ip, d.mxs[int(rnd() * len(d.mxs))], rep, bits(48), ip // 3))
        if prev >= 0:
            links.append((idx, prev))
        if kind == DEFERRED:
            tn = t + BACKOFF[min(n, len(BACKOFF) - 1)] * (0.8 + 0.45 * rnd())
            if n < len(BACKOFF) and tn < t1:
                nip = ip if rnd() < 0.8 else r.choice(pools[st.pool])
                heapq.heappush(heap, (tn, idx, mid, s, ri, nip, n + 1, idx))
            return
        if kind == BOUNCED:
            if key in ("unknown", "full"):
                supp.add(ri)
            return
        if d.grey:
            trusted[(rdom[ri], ip >> 3)] += 1
        if fl:  # accepted, then the DSN of the gateway or mailbox store arrives
            supp.add(ri)
            td = te + 60.0 + expo(1 / 600.0)
            dsn = GENERIC["dsn"][int(rnd() * 2)] if fl == 1 else REPLIES["m365"]["full"][0]
            if td < t1:
                links.append((len(ev), idx))
                ev.append((td, BOUNCED, *msg, ip, d.mxs[0], dsn, bits(48), DSN))
        else:
            cp = p_hit if sc.key == "complaint" and p_hit else st.cr * d.fbl
            if cp and rnd() < cp:
                ev.append((te, COMPLAINED, *msg, ip, "", None, bits(48), FBL))
            if rnd() < (0.6 if d.provider == "apple" else st.opens):
                to = te + (5 + expo(1 / 60.0) if d.provider == "apple" else 30 + expo(1 / 2400.0))
                if to < t1:
                    ev.append((to, OPENED, *msg, -1, "", None, bits(48), TRACK))
                    if rnd() < 0.1:
                        tc = to + 3 + expo(1 / 90.0)
                        ev.append((tc, CLICKED, *msg, -1, "", None, bits(48), TRACK))
                    elif rnd() < 0.004:
                        tu = to + 10 + expo(1 / 60.0)
                        ev.append((tu, UNSUB, *msg, -1, "", None, bits(48), TRACK))

    mid = 0
    for t, s, ri in inj:
        while heap and heap[0][0] <= t:
            h = heapq.heappop(heap)
            attempt(h[0], h[2], h[3], h[4], h[5], h[6], h[7])
        mid += 1
        if ri in supp:
            ev.append((t, REJECTED, mid, s, ri, -1, "", REJECT_REPLY, 0, API))
            continue
        ip = r.choice(pools[streams[s].pool])
        ev.append((t, SENT, mid, s, ri, ip, "", None, 0, ip // 3))
        heapq.heappush(heap, (t + 0.5 + expo(1 / 4.0), -mid, mid, s, ri, ip, 0, -1))
    while heap:
        h = heapq.heappop(heap)
        attempt(h[0], h[2], h[3], h[4], h[5], h[6], h[7])
    return ev, links


# ---------------------------------------------------------------------------------------------
# Log order

BATCH_S = np.array([3.0, 2.0, 4.0, 5.0, 3.0, 60.0, 2.0, 2.0])
PREC_US = np.array([1000, 1000, 10**6, 10**6, 10_000, 10**6, 1, 10**6])  # timestamp precision


def fast_fbl_lag(slow: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Report delays (s after the delivery) of a feedback loop that reports within minutes.

    An engaged promotional audience sees the message within minutes (push notifications, the
    app open all day) and most complaints are a "spam" click on first sight: 85 % complain
    after a log-normal delay (median 8 min, sigma 0.5: 80 % within 4-15 min) and Yahoo's CFL
    mails the ARF report 30-150 s later; the other 15 % read it later (``slow``, the usual
    0.5-24 h lag). With the FBL processor's 1 min batches: median 11 min, 78 % of the reports
    5-20 min after the delivery, 3 % earlier, 9 % within 20-60 min, 10 % later.
    """
    n = len(slow)
    quick = rng.lognormal(math.log(480.0), 0.5, n) + rng.uniform(30.0, 150.0, n)
    return np.where(rng.random(n) < 0.85, quick, slow)


def log_order(
    ev: list[Event],
    links: list[tuple[int, int]],
    t0: float,
    t1: float,
    seed: int,
    messy: bool,
    fast: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (event index per log line, timestamp value per event, duplicate mask per line).

    ``fast`` marks the complaints of a feedback loop that reports within minutes.
    """
    rng = np.random.default_rng(seed + 7919)
    n = len(ev)
    ts = np.fromiter((e[0] for e in ev), float, n)
    src = np.fromiter((e[9] for e in ev), np.int64, n)
    lag = 0.3 + rng.exponential(1.0, n)
    knots = np.arange(t0 - 3600, t1 + 7200, 600.0)
    slow = src == SLOW_NODE
    lag[slow] = np.interp(ts[slow], knots, rng.uniform(120.0, 470.0, len(knots)))
    fbl = src == FBL
    lag[fbl] = np.clip(rng.lognormal(math.log(5400.0), 0.9, int(fbl.sum())), 1800.0, 86400.0)
    if fast is not None and fast.any():  # own generator: the other lines' lags stay the same
        lag[fast] = fast_fbl_lag(lag[fast], np.random.default_rng(seed + 104_729))
    b = BATCH_S[src]
    pub = (np.floor((ts + lag) / b) + 1.0) * b + src * 0.01
    for i, p in links:  # a retry / DSN is never shipped before what it follows
        if pub[i] <= pub[p]:
            pub[i] = (np.floor(pub[p] / b[i]) + 1.0) * b[i] + src[i] * 0.01
    batch = np.floor(pub / b) * 16 + src
    ub, inv = np.unique(batch, return_inverse=True)
    again = rng.random(len(ub)) < 0.003
    dup = np.nonzero(again[inv])[0]
    delay = rng.uniform(5.0, 60.0, len(ub))[inv[dup]]
    idx = np.concatenate([np.arange(n), dup])
    allpub = np.concatenate([pub, pub[dup] + delay])
    inkey = ts[idx] + rng.normal(0.0, 0.8, len(idx))
    order = np.lexsort((inkey, allpub))
    order = order[ts[idx[order]] < t1]  # the capture ends at t1 (late complaints excepted)
    prec = PREC_US[src] if messy else np.full(n, 1000)
    us = np.floor(ts * 1e6).astype(np.int64)
    us -= us % prec
    isdup = np.concatenate([np.zeros(n, bool), np.ones(len(dup), bool)])
    return idx[order], us, isdup[order]


# ---------------------------------------------------------------------------------------------
# Rendering

_DATES: dict[int, str] = {}
# per source: separator (e: epoch number, _: space), fraction digits, zone
TS_STYLE = ("e3", "T3Z", "T0+01:00", "e0", "t2z", "T0-05:00", "t6z", "_0Z")
FBL_UA = {"yahoo": "Yahoo!-Mail-Feedback/2.0", "microsoft": "Microsoft JMRP", "comcast": "Comcast"}


def render_ts(us: int, src: int, messy: bool) -> float | int | str:
    style = TS_STYLE[src] if messy else "e3"
    sep, digits, zone = style[0].replace("_", " "), int(style[1]), style[2:]
    if sep == "e":
        return us // 1_000_000 if digits == 0 else us / 1e6  # an epoch number
    sec, frac = divmod(us, 1_000_000)
    off = int(zone[:3]) * 3600 if len(zone) > 1 else 0
    day, rem = divmod(sec + off, 86400)
    date = _DATES.get(day)
    if date is None:
        date = _DATES[day] = time.strftime("%Y-%m-%d", time.gmtime(day * 86400))
    f = "." + f"{frac:06d}"[:digits] if digits else ""
    return f"{date}{sep}{rem // 3600:02d}:{rem // 60 % 60:02d}:{rem % 60:02d}{f}{zone}"


class _Ctx(dict[str, str]):
    """Lazy placeholders for reply templates (derived from the event's token)."""

    tok = 0
    t = 0.0
    mid = ""

    def __missing__(self, k: str) -> str:
        tok = self.tok
        if k == "g":  # Gmail's per-transaction id
            return f"{tok:012x}-{tok >> 11 & 0xFFFFFF:06x}si{tok % 9999991:07d}ad.{tok % 900 + 100} - gsmtp"
        region = ("eurprd02", "namprd09")[tok >> 3 & 1]
        if k == "ms":  # Exchange Online's trailer: [server date id]
            iso = render_ts(int(self.t * 1e3) * 1000, 1, True)
            srv = f"{('DB5', 'AM4', 'BL02', 'CH1')[tok % 4]}PEPF{tok >> 8 & 0xFFFFFFFF:08X}"
            return f"[{srv}.{region}.prod.outlook.com {iso} {tok:016X}]"
        if k == "msh":
            return f"{('AM0', 'DB9', 'BN8', 'SA1')[tok % 4]}PR0{tok % 9 + 1}MB{tok % 10000:04d}.{region}"
        table = {
            "q": f"{tok:012X}",
            "epoch": str(int(self.t)),
            "mid": self.mid,
            "iid": str(tok % 10**12),
            "n": str(tok % 900 + 100),
            "y": f"mta{tok % 9000 + 1000}.mail.{('gq1', 'bf1', 'ne1')[tok % 3]}.yahoo.com",
            "mc": f"{tok:012x}.{('eu', 'us')[tok & 1]}{tok % 900 + 100}",
            "pp": f"{tok & 0xFFFFFFFFFF:010x}-1",
        }
        return table[k]


def response(rep: Reply, ctx: _Ctx, src: int, messy: bool) -> str:
    code, enh, text, ml = rep
    body = text.format_map(ctx)
    if code is None:
        return body
    line = f"{code}{'-' if ml else ' '}{enh + ' ' if enh else ''}{body}"
    if messy and ml and src == 1:  # Postfix keeps the continuation lines' prefixes
        words, parts, cur = body.split(" "), [], ""
        for w in words:
            if len(cur) + len(w) > 64 and cur:
                parts.append(cur)
                cur = ""
            cur = f"{cur} {w}" if cur else w
        pre = f"{code}-{enh}" if enh else f"{code}-"
        last = f"{code} {enh} {cur}" if enh else f"{code} {cur}"
        line = " ".join([f"{pre} {p}" for p in parts] + [last])
    if messy and src in (2, DSN):  # PowerMTA's dsnDiag, a DSN's Diagnostic-Code
        return ("smtp;" if src == 2 else "smtp; ") + line
    return line


def render(e: Event, us: int, cat: Catalog, streams: list[Stream], messy: bool) -> bytes:
    t, kind, mid, s, ri, ip, host, rep, tok, src = e
    st, d = streams[s], cat.doms[cat.rdom[ri]]
    mids = f"<{mid:09x}.{st.tenant[:4]}@{st.sender.lower()}>"
    o: dict[str, object] = {"event": KINDS[kind], "timestamp": render_ts(us, src, messy)}
    o["message_id"] = mids
    addr = cat.addr[ri]
    if messy and kind == COMPLAINED and d.provider == "yahoo" and tok % 10 == 0:
        o["recipient_domain"] = d.name  # a redacted report: only the domain is known
    else:
        o["recipient"] = addr if messy else addr.lower()
    if messy and src == 3 and kind in ATTEMPT_KINDS:
        o["recipient_domain"] = d.name.upper()
    o["sender_domain"] = st.sender if messy else st.sender.lower()
    blank = messy and src == 1
    if ip >= 0 and kind != SENT:
        o["sending_ip"] = IPS[ip]
    elif blank and kind == SENT:
        o["sending_ip"] = ""
    if src != TRACK:
        o["pool"] = st.pool
    o["tenant"] = st.tenant
    if st.campaign or blank:
        o["campaign"] = st.campaign
    if host or (blank and kind == SENT):
        o["mx_host"] = host
    if rep is not None:
        ipx, snd = IPS[ip] if ip >= 0 else "", st.sender.lower()
        ctx = _Ctx(ip=ipx, rcpt=addr, sender=snd, SENDER=snd.upper(), dom=d.name, host=host)
        ctx.tok, ctx.t, ctx.mid = tok, t, mids
        code, enh = rep[0], rep[1]
        if code is not None:
            as_str = messy and (src == DSN or (src == 1 and mid & 1))
            o["smtp_code"] = str(code) if as_str else code
        if enh or (blank and kind != REJECTED):
            o["enhanced_code"] = enh
        o["response"] = response(rep, ctx, src, messy)
    if kind == COMPLAINED:
        o["feedback_type"] = "abuse"
        if messy:
            o["user_agent"] = FBL_UA.get(d.provider, "ARF")
    if messy and src == 0:
        o["node"] = SOURCES[src]
    elif messy and src == 3 and ip >= 0:
        o["vmta"] = f"{st.pool}-{ip % 4 + 1}"
    return orjson.dumps(o, option=orjson.OPT_APPEND_NEWLINE)


# ---------------------------------------------------------------------------------------------
# CLI


def start_of(sc: Scenario) -> int:
    return DAY0 + (12 * 3600 if sc.hours <= 6 else 0)  # 6 h scenarios: 12:00-18:00 UTC


def late_by(tsv: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """How much older than the newest earlier line (of the mask) each line (of the mask) is."""
    prev = np.maximum.accumulate(np.where(mask, tsv, -np.inf))
    return np.where(mask, np.concatenate([[-np.inf], prev[:-1]]) - tsv, 0.0)


def run(name: str, seed: int, out: Path, order: str, messy: bool) -> None:
    sc = SCENARIOS[name]
    t0 = float(start_of(sc))
    t1, on = t0 + sc.hours * 3600, t0 + sc.at + int(np.random.default_rng(seed).integers(-600, 601))
    cat = build_catalog()
    streams = STREAMS + ([BLAST] if sc.key == "complaint" else [])
    ev, links = simulate(cat, streams, sc, on, t1, seed)
    fast = None
    if sc.fast_fbl:
        prov = [d.provider == sc.fast_fbl for d in cat.doms]
        it = (e[1] == COMPLAINED and prov[cat.rdom[e[4]]] for e in ev)
        fast = np.fromiter(it, bool, len(ev))
    lines, us, isdup = log_order(ev, links, t0, t1, seed, messy, fast)
    tsv = us[lines] / 1e6
    if order == "sorted":
        o = np.argsort(tsv, kind="stable")
        lines, tsv, isdup = lines[o], tsv[o], isdup[o]
    kinds = np.fromiter((ev[i][1] for i in lines), np.int64, len(lines))
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}-seed{seed}.jsonl"
    usl = us.tolist()
    with path.open("wb") as f:
        for i in lines.tolist():  # one write per line: orjson's buffers are over-allocated
            f.write(render(ev[i], usl[i], cat, streams, messy))
    late, late_nc = late_by(tsv, kinds >= 0), late_by(tsv, kinds != COMPLAINED)
    assert late_nc.max() <= 900.0, late_nc.max()
    counts = " ".join(f"{k}={int((kinds == j).sum())}" for j, k in enumerate(KINDS))
    print(
        f"{path}: {len(lines)} events ({len(lines) / (t1 - t0):.1f}/s) {counts} "
        f"out_of_order_60s={int((late > 60).sum())} (complaints excluded: "
        f"{int((late_nc > 60).sum())}, max {late_nc.max():.0f} s) duplicates={int(isdup.sum())}"
    )
    incidents = []
    if sc.typ:
        also = list(sc.also)
        if sc.domains_ok:
            also += [f"domain:{d.name}" for d in cat.doms if sc.match(-1, d, streams[0])]
        inc = {"type": sc.typ, "scope": sc.scope, "also_ok": also, "onset": int(on)}
        incidents.append(inc | {"end": int(on + sc.dur)})
    truth = {"scenario": name, "seed": seed, "start": int(t0), "end": int(t1)}
    truth |= {"quiet": not incidents, "incidents": incidents, "note": TRUTH_NOTE}
    tpath = out / f"{name}-seed{seed}.truth.json"
    tpath.write_bytes(orjson.dumps(truth, option=orjson.OPT_INDENT_2) + b"\n")
    print(f"{tpath}: {len(incidents)} incident(s), quiet={not incidents}")


TRUTH_NOTE = (
    "complaint onset/end are send times. Provider/MX names (google, microsoft, yahoo, proofpoint)"
    " are assumed. scope: the one scope to act on under docs/incidents.md 'Attribution' (the"
    " narrowest scope whose surge explains the signal: a combined scope X|provider:P for one"
    " sending dimension at one provider, or the wide scope X when its parts at several providers"
    " are affected alike, whatever order they opened in). also_ok: other scopes where it is"
    " still a detection, not a false alarm: the dimension as a whole, its container at that"
    " provider, the affected parts at that provider, the parts that may open before widening."
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--list", action="store_true", help="list the scenarios")
    ap.add_argument("--scenario", choices=sorted(SCENARIOS))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("."))
    ap.add_argument("--order", choices=("log", "sorted"), default="log")
    ap.add_argument("--shapes", choices=("messy", "clean"), default="messy")
    a = ap.parse_args(argv)
    if a.list or not a.scenario:
        for name, sc in SCENARIOS.items():
            start = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(start_of(sc)))
            print(f"{name:26s} {sc.hours:2d} h from {start}  {sc.about}")
        return 0
    gc.disable()  # millions of long-lived tuples: the cyclic GC would only rescan them
    t = time.perf_counter()
    run(a.scenario, a.seed, a.out, a.order, a.shapes == "messy")
    print(f"generated in {time.perf_counter() - t:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
