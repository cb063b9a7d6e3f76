"""Shared vocabulary of repmon: event kinds, reply classes, reasons, scopes and outcome columns.

Everything that crosses a module boundary as a small integer is defined here, once, so that the
ingest path, the classifier, the rolling windows, the detectors and the worker agree. The orders of
the tuples below are part of the contract: the integer code of a value is its index.
"""

from __future__ import annotations

from typing import Final

#: Canonical event kinds (anymail's normalized names), see docs/events.md.
EVENT_KINDS: Final[tuple[str, ...]] = (
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "rejected",
    "opened",
    "clicked",
    "unsubscribed",
)
EVENT_KIND_CODE: Final[dict[str, int]] = {k: i for i, k in enumerate(EVENT_KINDS)}

#: Event kinds that carry an SMTP reply worth classifying.
REPLY_KINDS: Final[frozenset[str]] = frozenset({"deferred", "bounced", "rejected"})

#: Coarse reply classes (docs/classification.md defines each and what the sender should do).
CLASSES: Final[tuple[str, ...]] = (
    "hard",  # the recipient address is bad: suppress it (unless a B2B false-bounce incident is open)
    "soft",  # recipient-side temporary problem (mailbox full, inactive): retry, suppress after repeats
    "block",  # the receiver refuses *us* (reputation, blocklist, policy, spam): slow down, fix cause
    "throttle",  # the receiver rate-limits us: reduce rate/connections for that provider
    "transient",  # network or server trouble at the receiver: retry later, no reputation signal
    "config",  # our own set-up is wrong (auth, PTR, TLS, relaying): fix configuration, pause stream
    "other",  # not enough information to act on
)
CLASS_CODE: Final[dict[str, int]] = {c: i for i, c in enumerate(CLASSES)}
NO_CLASS: Final[int] = 255

#: Reasons: sisimai's vocabulary plus ``greylisting``.
REASONS: Final[tuple[str, ...]] = (
    "authfailure",
    "badreputation",
    "blocked",
    "contenterror",
    "exceedlimit",
    "expired",
    "failedstarttls",
    "filtered",
    "hasmoved",
    "hostunknown",
    "mailboxfull",
    "mailererror",
    "mesgtoobig",
    "networkerror",
    "norelaying",
    "notaccept",
    "notcompliantrfc",
    "onhold",
    "policyviolation",
    "rejected",
    "requireptr",
    "securityerror",
    "spamdetected",
    "speeding",
    "suspend",
    "syntaxerror",
    "systemerror",
    "systemfull",
    "toomanyconn",
    "userunknown",
    "virusdetected",
    "undefined",
    "greylisting",
)
REASON_CODE: Final[dict[str, int]] = {r: i for i, r in enumerate(REASONS)}
NO_REASON: Final[int] = 255

#: Scope kinds. A scope key is ``"<kind>:<value>"``, e.g. ``provider:google``.
SCOPE_KINDS: Final[tuple[str, ...]] = (
    "domain",
    "provider",
    "mx",
    "ip",
    "pool",
    "sender",
    "tenant",
    "campaign",
)

#: Combined scopes: one sending dimension at one mailbox provider, named
#: ``"<kind>:<value>|provider:<provider>"``, e.g. ``ip:192.0.2.7|provider:google``. They are what
#: a throttle acts on when one IP, pool, sender domain, campaign or tenant has a problem at one
#: provider only (docs/incidents.md, "Attribution"). The ingest derives them per tick from the
#: single scopes (models/ingest/aggregate.py).
COMBINED_KINDS: Final[tuple[str, ...]] = (
    "ip|provider",
    "pool|provider",
    "sender|provider",
    "campaign|provider",
    "tenant|provider",
)
#: Every scope kind the rolling state and the detectors know: single, then combined.
ALL_SCOPE_KINDS: Final[tuple[str, ...]] = (*SCOPE_KINDS, *COMBINED_KINDS)

#: Outcome columns counted per scope and event-time bucket. The first nine are the event kinds
#: in EVENT_KINDS order; then the reply classes of deferred/bounced/rejected events in CLASSES
#: order; then three reason-derived counters.
COLUMNS: Final[tuple[str, ...]] = (
    *EVENT_KINDS,
    *(f"class_{c}" for c in CLASSES),
    "auth_failure",  # reason authfailure (SPF/DKIM/DMARC, 5.7.515, 5.7.26 ...)
    "user_unknown",  # reason userunknown on a bounced/rejected event
    "user_unknown_known_good",  # ... for a recipient recently delivered fine (false hard bounce)
)
COL: Final[dict[str, int]] = {c: i for i, c in enumerate(COLUMNS)}
N_COLUMNS: Final[int] = len(COLUMNS)
CLASS_COLUMN_OFFSET: Final[int] = len(EVENT_KINDS)

#: Incident types (docs/incidents.md).
INCIDENT_TYPES: Final[tuple[str, ...]] = (
    "provider_outage",
    "rate_limited",
    "block",
    "false_hard_bounces",
    "hard_bounce_spike",
    "complaint_spike",
    "auth_failure",
)
