"""Traffic model of the simulator: the sending fleet, its recipients and its volume over time.

Static population data (consumer mailbox providers with their real MX hosts and shares, B2B
domain names and MX operators, ESP tenants with sender domains, pools and campaigns), the diurnal
volume curve, and the classes built from them for one :class:`~models.sim.config.SimConfig`:

- :class:`Fleet`: recipient domains (provider, operator, MX hosts, shares, population sizes),
  tenants, sender domains, pools and IPs;
- :class:`OutcomeTables`: base outcome probabilities per domain (user-unknown, greylisting and
  authentication replies, background noise per attempt, FBL and Apple pre-fetch flags);
- :class:`Calendar`: the campaign table and the message streams (transactional, daily bursts).

See docs/simulator.md ("Population", "Volume", "Message lifecycle").
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.ingest.providers import ProviderResolver
from models.sim.config import BOOL, F64, HOUR, I64, K_BOUNCED, K_DEFERRED, MINUTE, SimConfig
from models.sim.replies import DEFERRED, REPLIES, R

# --------------------------------------------------------------------------------------------
# Static population data
# --------------------------------------------------------------------------------------------

#: (domain, share within consumer traffic, MX hosts). Provider comes from providers.toml.
CONSUMER_DOMAINS: Final[tuple[tuple[str, float, tuple[str, ...]], ...]] = (
    ("gmail.com", 0.40, ("gmail-smtp-in.l.google.com", "alt1.gmail-smtp-in.l.google.com")),
    ("googlemail.com", 0.005, ("gmail-smtp-in.l.google.com",)),
    ("hotmail.com", 0.085, ("hotmail-com.olc.protection.outlook.com",)),
    ("outlook.com", 0.060, ("outlook-com.olc.protection.outlook.com",)),
    ("live.com", 0.020, ("live-com.olc.protection.outlook.com",)),
    ("msn.com", 0.005, ("msn-com.olc.protection.outlook.com",)),
    ("hotmail.co.uk", 0.006, ("eur.olc.protection.outlook.com",)),
    ("hotmail.fr", 0.004, ("eur.olc.protection.outlook.com",)),
    (
        "yahoo.com",
        0.075,
        ("mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"),
    ),
    ("aol.com", 0.025, ("mx-aol.mail.gm0.yahoodns.net",)),
    ("ymail.com", 0.003, ("mta5.am0.yahoodns.net",)),
    ("yahoo.co.uk", 0.004, ("mx-eu.mail.am0.yahoodns.net",)),
    ("yahoo.fr", 0.003, ("mx-eu.mail.am0.yahoodns.net",)),
    ("icloud.com", 0.040, ("mx01.mail.icloud.com", "mx02.mail.icloud.com")),
    ("me.com", 0.008, ("mx01.mail.icloud.com", "mx02.mail.icloud.com")),
    ("mac.com", 0.004, ("mx01.mail.icloud.com", "mx02.mail.icloud.com")),
    ("comcast.net", 0.016, ("mx1.comcast.net", "mx2.comcast.net")),
    ("att.net", 0.008, ("ff-ip4-mx-vip1.prodigy.net", "ff-ip4-mx-vip2.prodigy.net")),
    ("sbcglobal.net", 0.005, ("ff-ip4-mx-vip1.prodigy.net",)),
    ("bellsouth.net", 0.003, ("ff-ip4-mx-vip2.prodigy.net",)),
    ("gmx.de", 0.012, ("mx00.emig.gmx.net", "mx01.emig.gmx.net")),
    ("gmx.net", 0.006, ("mx00.emig.gmx.net",)),
    ("web.de", 0.012, ("mx-ha03.web.de", "mx-ha02.web.de")),
    ("orange.fr", 0.008, ("smtp-in.orange.fr",)),
    ("wanadoo.fr", 0.003, ("smtp-in.orange.fr",)),
    ("t-online.de", 0.008, ("mx00.t-online.de", "mx01.t-online.de")),
    ("mail.ru", 0.005, ("mxs.mail.ru",)),
    ("yandex.ru", 0.004, ("mx.yandex.ru",)),
    ("qq.com", 0.004, ("mx3.qq.com", "mx2.qq.com")),
    ("163.com", 0.002, ("163mx01.mxmail.netease.com",)),
)

#: Typo / dead domains (no MX): only imported lists reach them (host unknown).
DEAD_DOMAINS: Final[tuple[str, ...]] = (
    "gmial.com",
    "gmai.com",
    "hotmial.com",
    "yaho.com",
    "outlok.com",
    "icloud.co",
    "comcast.nt",
    "gnail.com",
)

#: MX operator mix of B2B domains (by domain count).
B2B_OPERATORS: Final[tuple[tuple[str, float], ...]] = (
    ("microsoft", 0.36),
    ("google", 0.20),
    ("mimecast", 0.10),
    ("proofpoint", 0.08),
    ("barracuda", 0.06),
    ("cisco", 0.04),
    ("broadcom", 0.04),
    ("self", 0.12),
)

_W1: Final = [
    "acme",
    "alpine",
    "apex",
    "atlas",
    "blue",
    "bright",
    "cedar",
    "coastal",
    "delta",
    "falcon",
    "granite",
    "green",
    "harbor",
    "iron",
    "maple",
    "metro",
    "nord",
    "nova",
    "orbit",
    "pine",
    "pioneer",
    "prime",
    "quantum",
    "river",
    "silver",
    "stellar",
    "summit",
    "urban",
    "vertex",
    "vista",
    "oak",
    "lumen",
    "rhein",
    "elbe",
    "isar",
    "hansa",
    "baltic",
    "sierra",
    "cobalt",
    "ember",
]
_W2: Final = [
    "logistics",
    "systems",
    "consulting",
    "partners",
    "labs",
    "foods",
    "energy",
    "medical",
    "capital",
    "software",
    "industries",
    "bau",
    "technik",
    "media",
    "retail",
    "legal",
    "finance",
    "solutions",
    "analytics",
    "design",
    "motors",
    "pharma",
    "insurance",
    "holding",
    "services",
    "gruppe",
    "werke",
    "group",
    "networks",
    "robotics",
]
_TLDS: Final = (
    (".com", 0.45),
    (".de", 0.2),
    (".co.uk", 0.1),
    (".fr", 0.07),
    (".io", 0.06),
    (".net", 0.05),
    (".nl", 0.04),
    (".ch", 0.03),
)
_EU_TLDS: Final = frozenset({".de", ".co.uk", ".fr", ".nl", ".ch"})

#: Providers that send per-message ARF feedback (FBL) to ESPs. Gmail has none (only aggregate
#: Postmaster Tools / Feedback-ID data); Apple, GMX/web.de, Orange, T-Online, QQ have none.
FBL_PROVIDERS: Final = frozenset({"microsoft", "yahoo", "comcast", "att", "mailru", "yandex"})

#: Chance complaints per delivered message at FBL providers: (transactional, marketing).
COMPLAINT_RATE: Final[tuple[float, float]] = (5e-5, 4e-4)
#: Delay of an FBL complaint after the delivery (the report's arrival, which the simulator stamps
#: as the complaint's event time): lognormal with this median and sigma, clipped to the range.
FBL_DELAY_MEDIAN_S: Final = 20 * MINUTE
FBL_DELAY_SIGMA: Final = 1.0
FBL_DELAY_CLIP_S: Final[tuple[float, float]] = (30.0, 8 * HOUR)

POOLS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("shared-1", tuple(f"192.0.2.{i}" for i in range(10, 18))),
    ("shared-2", tuple(f"198.51.100.{i}" for i in range(20, 28))),
    ("dedicated-acme", tuple(f"203.0.113.{i}" for i in range(5, 9))),
)


@dataclass(frozen=True)
class Tenant:
    name: str
    share: float  # of total volume
    b2b: float  # share of B2B recipients
    senders: tuple[tuple[str, float], ...]
    pool: str
    campaigns: tuple[str, ...]  # marketing campaign kinds; one burst per kind per day
    marketing: float  # share of the tenant's volume sent in campaign bursts


TENANTS: Final[tuple[Tenant, ...]] = (
    Tenant(
        "acme",
        0.38,
        0.04,
        (("news.acme-shop.com", 0.7), ("mail.acme-shop.com", 0.3)),
        "dedicated-acme",
        ("newsletter", "promo"),
        0.6,
    ),
    Tenant("globex", 0.22, 0.65, (("notify.globex.io", 1.0),), "shared-1", ("digest",), 0.25),
    Tenant(
        "initech",
        0.15,
        0.35,
        (("mail.initech.com", 0.6), ("news.initech.com", 0.4)),
        "shared-1",
        ("newsletter", "webinar"),
        0.5,
    ),
    Tenant(
        "umbrella",
        0.15,
        0.05,
        (
            ("e.umbrella-health.com", 0.5),
            ("info.umbrella-health.com", 0.3),
            ("care.umbrella-health.com", 0.2),
        ),
        "shared-2",
        ("newsletter", "promo"),
        0.55,
    ),
    Tenant("hooli", 0.10, 0.15, (("mail.hooli.com", 1.0),), "shared-2", ("newsletter",), 0.5),
)

# Recipient population: mean messages per recipient per day (consumer lists vs B2B notifications).
MAILS_PER_RCPT_DAY_CONSUMER: Final = 1.5
MAILS_PER_RCPT_DAY_B2B: Final = 12.0
INVALID_PERMILLE_CONSUMER: Final = 8  # addresses that do not exist (hard bounce every time)
INVALID_PERMILLE_B2B: Final = 5

GREYLIST_P: Final = 0.35  # first attempt at a greylisting domain


def _diurnal_raw(h: F64) -> F64:
    def bump(c: float, w: float) -> F64:
        d = np.abs(((h - c) + 12.0) % 24.0 - 12.0)
        return np.asarray(np.exp(-0.5 * (d / w) ** 2), dtype=np.float64)

    return np.asarray(0.3 + 1.0 * bump(10.0, 2.8) + 0.75 * bump(19.5, 2.3), dtype=np.float64)


_GRID: Final = np.linspace(0.0, 24.0, 24 * 60, endpoint=False)
_DIURNAL_MEAN: Final = float(_diurnal_raw(_GRID).mean())


def diurnal_factor(t: F64 | float, tz_offset_h: float = 0.0) -> F64:
    """Volume multiplier at epoch time(s) ``t``; its mean over a day is 1.

    Low at night (~0.45 at 03:00), peaks at ~10:00 (~1.9) and ~19:30 (~1.5) local time.
    """
    h = (np.asarray(t, dtype=np.float64) / HOUR + tz_offset_h) % 24.0
    return np.asarray(_diurnal_raw(h) / _DIURNAL_MEAN, dtype=np.float64)


def hash_int(x: int) -> int:
    """Cheap deterministic 48-bit integer mix (splitmix-like), used for ids and tokens."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 31)) & 0xFFFFFFFFFFFF


def hash_arr(x: I64) -> I64:
    """Vectorised integer mix (uint64 arithmetic, wraps), non-negative result."""
    with np.errstate(over="ignore"):
        v = x.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        v = (v ^ (v >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        v = (v ^ (v >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        v = v ^ (v >> np.uint64(31))
    return (v >> np.uint64(16)).astype(np.int64)


@dataclass
class Stream:
    """A message stream: a tenant's campaign sending at ``rate`` msgs/s in [start, end)."""

    tenant: int
    campaign: int
    start: float
    end: float
    rate: float  # msgs/s (mean if diurnal)
    diurnal: bool
    marketing: bool
    imported: float = 0.0  # share of invalid addresses of an imported list (0 = normal list)
    dead_share: float = 0.0  # share of imported addresses at dead (typo) domains


class Fleet:
    """The recipient domain population and the senders (tenants, sender domains, pools, IPs).

    Domain arrays are indexed by domain id: consumer domains first (``n_consumer``), then the B2B
    domains (live domains end at ``n_live``), then the dead (typo) domains. Names, MX operators and
    Zipf sizes of the B2B domains are deterministic from the seed.
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        cfg = config
        rng = np.random.default_rng([cfg.seed, 7_000_001])
        resolver = ProviderResolver()
        names: list[str] = []
        mx: list[tuple[str, ...]] = []
        weight: list[float] = []
        consumer: list[bool] = []
        greylist: list[bool] = []
        self_kind: list[int] = []  # 0 postfix, 1 exchange (self-hosted only)
        csum = sum(s for _, s, _ in CONSUMER_DOMAINS)
        for d, s, hosts in CONSUMER_DOMAINS:
            names.append(d)
            mx.append(hosts)
            weight.append(s / csum)
            consumer.append(True)
            greylist.append(False)
            self_kind.append(0)
        n_cons = len(names)
        # B2B domains: deterministic names, operators and Zipf weights.
        n_b2b = max(1, int(cfg.n_b2b_domains))
        tld_names = [t for t, _ in _TLDS]
        tld_p = np.array([p for _, p in _TLDS])
        tld_p /= tld_p.sum()
        op_names = [o for o, _ in B2B_OPERATORS]
        op_p = np.array([p for _, p in B2B_OPERATORS])
        op_p /= op_p.sum()
        seen: set[str] = set(names)
        b2b_ops: list[str] = []
        attempts = 0
        while len(b2b_ops) < n_b2b:
            attempts += 1
            w1 = _W1[int(rng.integers(len(_W1)))]
            w2 = _W2[int(rng.integers(len(_W2)))]
            tld = tld_names[int(rng.choice(len(tld_names), p=tld_p))]
            name = f"{w1}-{w2}{tld}" if attempts < 50 * n_b2b else f"{w1}-{w2}{attempts}{tld}"
            if name in seen:
                continue
            seen.add(name)
            op = op_names[int(rng.choice(len(op_names), p=op_p))]
            b2b_ops.append(op)
            eu = tld in _EU_TLDS
            num = int(rng.integers(10_000, 99_999))
            if op == "google":
                hosts = ("aspmx.l.google.com", "alt1.aspmx.l.google.com")
            elif op == "microsoft":
                hosts = (name.replace(".", "-") + ".mail.protection.outlook.com",)
            elif op == "mimecast":
                r = "eu" if eu else "us"
                hosts = (f"{r}-smtp-inbound-1.mimecast.com", f"{r}-smtp-inbound-2.mimecast.com")
            elif op == "proofpoint":
                hosts = (f"mx0a-00{num}01.pphosted.com", f"mx0b-00{num}01.pphosted.com")
            elif op == "barracuda":
                hosts = (f"d{num}a.ess.barracudanetworks.com", f"d{num}b.ess.barracudanetworks.com")
            elif op == "cisco":
                hosts = (f"esa1.{w1}{w2[:3]}.iphmx.com", f"esa2.{w1}{w2[:3]}.iphmx.com")
            elif op == "broadcom":
                r = "eu" if eu else "us"
                hosts = (f"cluster1.{r}.messagelabs.com", f"cluster1a.{r}.messagelabs.com")
            else:
                hosts = (f"mx1.{name}", f"mx2.{name}")
            names.append(name)
            mx.append(hosts)
            consumer.append(False)
            greylist.append(op == "self" and bool(rng.random() < 0.6))
            self_kind.append(int(rng.random() < 0.35))
        ranks = rng.permutation(n_b2b).astype(np.float64)
        zipf = 1.0 / (ranks + 2.0) ** 1.15
        zipf /= zipf.sum()
        weight.extend(zipf.tolist())
        n_live = len(names)
        for d in DEAD_DOMAINS:
            names.append(d)
            mx.append(())
            weight.append(0.0)
            consumer.append(True)
            greylist.append(False)
            self_kind.append(0)
        n_dom = len(names)
        self.dom_names: list[str] = names
        self.dom_mx: list[tuple[str, ...]] = mx
        self.n_consumer = n_cons
        self.n_live = n_live
        self.dom_consumer: BOOL = np.array(consumer, dtype=np.bool_)
        self.dom_greylist: BOOL = np.array(greylist, dtype=np.bool_)
        self.dom_dead: BOOL = np.zeros(n_dom, dtype=np.bool_)
        self.dom_dead[n_live:] = True
        prov: list[str] = []
        oper: list[str] = []
        for i, d in enumerate(names):
            p, o = resolver.resolve(d, mx[i][0] if mx[i] else "")
            prov.append(p)
            oper.append(o)
        self.dom_provider: list[str] = prov
        self.dom_operator: list[str] = oper
        self.b2b_operator_label: list[str] = (
            ["" for _ in range(n_cons)] + b2b_ops + ["" for _ in DEAD_DOMAINS]
        )
        w = np.array(weight, dtype=np.float64)
        self.w_consumer = np.where(self.dom_consumer & ~self.dom_dead, w, 0.0)
        self.w_consumer /= self.w_consumer.sum()
        self.w_b2b = np.where(~self.dom_consumer, w, 0.0)
        self.w_b2b /= self.w_b2b.sum()
        self.w_dead = self.dom_dead.astype(np.float64) / max(1, int(self.dom_dead.sum()))
        # Tenants, senders, pools, IPs.
        self.pool_names = [p for p, _ in POOLS]
        self.ip_names: list[str] = []
        ip_pool: list[int] = []
        for pi, (_, ips) in enumerate(POOLS):
            for ip in ips:
                self.ip_names.append(ip)
                ip_pool.append(pi)
        self.ip_pool: I64 = np.array(ip_pool, dtype=np.int64)
        self.tenant_names = [t.name for t in TENANTS]
        self.sender_names: list[str] = []
        self.sender_tenant: list[int] = []
        self.tenant_sender_ids: list[I64] = []
        self.tenant_sender_cum: list[F64] = []
        self.tenant_ips: list[I64] = []
        self.tenant_dom_cum: list[F64] = []
        total_w = np.zeros(n_dom)
        for ti, t in enumerate(TENANTS):
            ids = []
            for sname, _ in t.senders:
                ids.append(len(self.sender_names))
                self.sender_names.append(sname)
                self.sender_tenant.append(ti)
            self.tenant_sender_ids.append(np.array(ids, dtype=np.int64))
            sw = np.array([p for _, p in t.senders], dtype=np.float64)
            self.tenant_sender_cum.append(np.cumsum(sw / sw.sum()))
            pool_i = self.pool_names.index(t.pool)
            self.tenant_ips.append(np.flatnonzero(self.ip_pool == pool_i).astype(np.int64))
            tw = (1.0 - t.b2b) * self.w_consumer + t.b2b * self.w_b2b
            self.tenant_dom_cum.append(np.cumsum(tw))
            total_w += t.share * tw
        tshare = sum(t.share for t in TENANTS)
        self.dom_share: F64 = total_w / tshare  # expected share of `sent` per domain
        per_day = np.where(self.dom_consumer, MAILS_PER_RCPT_DAY_CONSUMER, MAILS_PER_RCPT_DAY_B2B)
        pop = np.round(self.dom_share * cfg.rate * 86400.0 / per_day)
        self.dom_pop: I64 = np.maximum(pop, 3).astype(np.int64)
        self.dom_invalid_permille: I64 = np.where(
            self.dom_consumer, INVALID_PERMILLE_CONSUMER, INVALID_PERMILLE_B2B
        ).astype(np.int64)

    def dom_kind_exchange(self, i: int) -> bool:
        return (hash_int(i * 7919 + self.config.seed) % 100) < 35

    def domains(self) -> list[dict[str, Any]]:
        """The recipient domain population (name, provider, operator, MX hosts, share, size)."""
        return [
            {
                "domain": self.dom_names[i],
                "provider": self.dom_provider[i],
                "operator": self.dom_operator[i],
                "mx_hosts": list(self.dom_mx[i]),
                "share": float(self.dom_share[i]),
                "recipients": int(self.dom_pop[i]),
                "consumer": bool(self.dom_consumer[i]),
                "greylisting": bool(self.dom_greylist[i]),
            }
            for i in range(self.n_live)
        ]


class OutcomeTables:
    """Base outcome probabilities per domain (without scenario effects).

    Per domain: the user-unknown reply (``dom_uu_reply``), the greylisting reply, the reply to a
    sender failing authentication (-1: accepted), up to six background-noise replies with their
    probabilities per attempt on a valid recipient (cumulative in ``noise_cum``), and the flags
    used by engagement (per-message FBL, chance complaint rates, Apple Mail Privacy Protection).
    Per reply id: its event kind and whether it is a greylisting reply.
    """

    def __init__(self, fleet: Fleet) -> None:
        n = len(fleet.dom_names)
        uu = np.full(n, -1, dtype=np.int64)
        grey = np.full(n, R["grey_postfix"], dtype=np.int64)
        auth = np.full(n, -1, dtype=np.int64)
        # Noise slots per domain: (reply id, probability per attempt on a valid recipient).
        k_slots = 6
        nrep = np.full((n, k_slots), -1, dtype=np.int64)
        nprob = np.zeros((n, k_slots), dtype=np.float64)
        cons_uu = {
            "google": "g_uu",
            "microsoft": "ms_uu",
            "yahoo": "y_uu",
            "apple": "a_uu",
            "comcast": "c_uu",
            "att": "att_uu",
            "gmx": "gmx_uu",
            "orange": "orange_uu",
            "tonline": "tonline_uu",
            "mailru": "mailru_uu",
            "yandex": "yandex_uu",
            "qq": "qq_uu",
        }
        op_uu = {
            "google": "g_uu",
            "microsoft": "ms365_uu",
            "mimecast": "mimecast_uu",
            "proofpoint": "proofpoint_uu",
            "barracuda": "barracuda_uu",
            "cisco": "cisco_uu",
            "broadcom": "messagelabs_uu",
        }
        for i in range(n):
            p = fleet.dom_provider[i]
            o = fleet.dom_operator[i]
            noise: list[tuple[str, float]] = [("timeout", 0.0015)]
            if fleet.dom_dead[i]:
                uu[i] = R["hostunknown"]
                continue
            if fleet.dom_consumer[i]:
                uu[i] = R[cons_uu.get(p, "uu_postfix")]
                if p == "google":
                    noise += [
                        ("g_temp", 0.002),
                        ("g_quota", 0.0015),
                        ("g_rate", 0.0004),
                        ("g_lowrep", 0.0002),
                        ("g_unsolicited", 0.0002),
                    ]
                    auth[i] = R["g_auth"]
                elif p == "microsoft":
                    noise += [
                        ("ms_busy", 0.002),
                        ("ms_rate", 0.0008),
                        ("ms_temp", 0.0005),
                        ("mbox_full", 0.0006),
                    ]
                    auth[i] = R["ms_auth"]
                elif p == "yahoo":
                    noise += [("y_tss04", 0.004), ("y_temp", 0.0005), ("mbox_full", 0.0005)]
                    auth[i] = R["y_auth"]
                elif p == "apple":
                    noise += [("a_rate", 0.002), ("mbox_full", 0.0008)]
                elif p == "comcast":
                    noise += [("c_rate", 0.003)]
                    auth[i] = R["c_auth"]
                elif p == "att":
                    noise += [("tempfail_generic", 0.002), ("att_block", 0.0002)]
                elif p == "gmx":
                    noise += [("gmx_temp", 0.002), ("mbox_full", 0.001)]
                else:
                    noise += [("tempfail_generic", 0.002), ("mbox_full", 0.001)]
            else:
                label = fleet.b2b_operator_label[i]
                if label == "self":
                    uu[i] = R["uu_exchange"] if fleet.dom_kind_exchange(i) else R["uu_postfix"]
                    grey[i] = R[("grey_postfix", "grey_postgrey", "grey_exim")[i % 3]]
                    noise += [
                        ("timeout", 0.004),
                        ("tempfail_generic", 0.002),
                        ("spamhaus", 0.0004),
                        ("mbox_full", 0.0008),
                    ]
                else:
                    uu[i] = R[op_uu.get(o, "uu_postfix")]
                    if o == "google":
                        noise += [("g_temp", 0.001), ("g_quota", 0.0005)]
                    elif o == "microsoft":
                        noise += [("ms_busy", 0.001), ("mbox_full", 0.0004)]
                    elif o == "mimecast":
                        noise += [("mimecast_grey", 0.003)]
                    else:
                        noise += [("tempfail_generic", 0.001)]
            for k, (key, prob) in enumerate(noise[:k_slots]):
                nrep[i, k] = R[key]
                nprob[i, k] = prob
        self.dom_uu_reply: I64 = uu
        self.dom_grey_reply: I64 = grey
        self.dom_auth_reply: I64 = auth
        self.noise_rep: I64 = nrep
        self.noise_cum: F64 = np.cumsum(nprob, axis=1)
        self.reply_kind: I64 = np.array(
            [K_DEFERRED if r.kind == DEFERRED else K_BOUNCED for r in REPLIES], dtype=np.int64
        )
        self.is_grey_reply: BOOL = np.zeros(len(REPLIES), dtype=np.bool_)
        for key in ("grey_postfix", "grey_postgrey", "grey_exim"):
            self.is_grey_reply[R[key]] = True
        fbl = np.array([p in FBL_PROVIDERS for p in fleet.dom_provider], dtype=np.bool_)
        self.dom_fbl: BOOL = fbl & fleet.dom_consumer
        #: chance complaint probability per delivery, [domain, marketing (0/1)]
        self.dom_complaint: F64 = np.where(
            self.dom_fbl[:, None], np.array(COMPLAINT_RATE, dtype=np.float64)[None, :], 0.0
        )
        self.dom_apple: BOOL = np.array([p == "apple" for p in fleet.dom_provider], dtype=np.bool_)


class Calendar:
    """The campaign table and the message streams over time.

    Each tenant has a steady transactional stream following the diurnal curve and, per day, one
    burst per marketing campaign kind, drawn from the day's own RNG stream when the day is first
    needed. Campaign ids are assigned in the order campaigns are first named (the table grows as
    days are generated and when scenarios add campaigns).
    """

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        cfg = config
        tshare = sum(t.share for t in TENANTS)
        self.campaign_names: list[str] = []
        self._campaign_idx: dict[str, int] = {}
        self.transactional: list[Stream] = []
        for ti, t in enumerate(TENANTS):
            c = self.campaign(f"{t.name}-transactional")
            rate = cfg.rate * t.share / tshare * (1.0 - t.marketing)
            self.transactional.append(
                Stream(ti, c, -math.inf, math.inf, rate, diurnal=True, marketing=False)
            )
        self._days: dict[int, list[Stream]] = {}

    def campaign(self, name: str) -> int:
        idx = self._campaign_idx.get(name)
        if idx is None:
            idx = len(self.campaign_names)
            self.campaign_names.append(name)
            self._campaign_idx[name] = idx
        return idx

    def day_streams(self, day: int) -> list[Stream]:
        got = self._days.get(day)
        if got is not None:
            return got
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 8_000_000 + day])
        date = _dt.datetime.fromtimestamp(day * 86400.0, tz=_dt.UTC).strftime("%Y-%m-%d")
        tshare = sum(t.share for t in TENANTS)
        out: list[Stream] = []
        for ti, t in enumerate(TENANTS):
            daily = cfg.rate * 86400.0 * t.share / tshare * t.marketing
            for kind in t.campaigns:
                local_h = float(rng.choice([6.5, 8.0, 9.0, 11.0, 13.0, 16.0, 18.0, 19.5]))
                local_h += float(rng.uniform(-0.4, 0.4))
                length = float(rng.uniform(25.0, 70.0)) * MINUTE
                st = day * 86400.0 + (local_h - cfg.tz_offset_h) * HOUR
                vol = daily / len(t.campaigns)
                c = self.campaign(f"{t.name}-{date}-{kind}")
                out.append(Stream(ti, c, st, st + length, vol / length, False, True))
        self._days[day] = out
        return out

    def active_streams(self, s0: float, s1: float, extra: Sequence[Stream] = ()) -> list[Stream]:
        """Streams sending in [s0, s1): transactional, daily bursts, then ``extra`` (scenarios)."""
        out = list(self.transactional)
        for day in range(int(s0 // 86400) - 1, int(s1 // 86400) + 1):
            out.extend(x for x in self.day_streams(day) if x.end > s0 and x.start < s1)
        out.extend(x for x in extra if x.end > s0 and x.start < s1)
        return out
