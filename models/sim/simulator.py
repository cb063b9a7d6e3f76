"""Pure, deterministic traffic generator for ``repmon simulate`` and the detection evaluation.

The model (docs/simulator.md): a fixed recipient population (consumer mailbox providers with
realistic shares plus a few hundred B2B domains behind MX operators, Zipf-sized), a handful of ESP
tenants with sender domains, campaigns and IP pools, a diurnal volume curve plus campaign bursts,
and a per-message lifecycle (``sent`` -> attempts with deferrals/retries -> ``delivered`` or
``bounced`` -> ``complained``/``opened``/``clicked``/``unsubscribed``). Scenarios overlay incidents
on that traffic and report ground truth (:class:`Truth`).

Generation is vectorised with numpy in fixed event-time steps (``SimConfig.step_s``); each step
has its own RNG stream seeded from ``(seed, step)``, so the output depends only on the config, not
on the chunk size asked for. Dicts are built only when a chunk is emitted.
"""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.ingest.providers import ProviderResolver
from models.sim.replies import DEFERRED, OK_TEXTS, REPLIES, R

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
BOOL = NDArray[np.bool_]

SCENARIOS: Final[tuple[str, ...]] = (
    "baseline",
    "provider-outage",
    "ip-blocklisted",
    "rate-limited",
    "b2b-false-bounces",
    "complaint-spike",
    "auth-failure",
    "bad-list-import",
    "mixed",
)


DEFAULT_START: Final[float] = _dt.datetime(2026, 11, 16, tzinfo=_dt.UTC).timestamp()

# Event kind codes used internally (names in KIND_NAMES).
K_SENT, K_DELIVERED, K_DEFERRED, K_BOUNCED, K_COMPLAINED, K_OPENED, K_CLICKED, K_UNSUB = range(8)
KIND_NAMES: Final[tuple[str, ...]] = (
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
)

HOUR: Final = 3600.0
MINUTE: Final = 60.0
IMPORTED_BASE: Final = 10_000_000  # recipient numbers of imported (never mailed) lists


# --------------------------------------------------------------------------------------------
# Public API types
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Truth:
    """One injected incident. ``scopes``: acceptable scope keys, most precise first.

    ``onset``/``end`` are event-time epoch seconds; ``end`` is None when the incident lasts until
    the end of the run.
    """

    type: str
    scopes: tuple[str, ...]
    onset: float
    end: float | None


@dataclass
class SimConfig:
    """Simulation settings. ``params`` holds scenario parameters (docs/simulator.md):

    ``onset_s`` (seconds after ``start``), ``length_s`` (None = until the end), ``intensity``,
    and a target: ``provider``, ``operator``, ``ip``, ``pool``, ``sender``, ``tenant``,
    ``fraction`` (b2b share of operator domains), ``campaign_rate`` (msgs/s of a scenario stream).
    """

    seed: int = 1
    start: float = DEFAULT_START
    duration_s: float = 6 * HOUR
    rate: float = 50.0
    scenario: str = "baseline"
    params: dict[str, Any] = field(default_factory=dict)
    tz_offset_h: float = 0.0
    n_b2b_domains: int = 400
    step_s: float = 60.0


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

# Per-attempt background noise on valid recipients: (reply key or provider-specific tag, prob).
GREYLIST_P: Final = 0.35  # first attempt at a greylisting domain
MAX_ATTEMPTS: Final = 7
BACKOFF_MIN: Final = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0)


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


# --------------------------------------------------------------------------------------------
# Internal structures
# --------------------------------------------------------------------------------------------


@dataclass
class _Stream:
    tenant: int
    campaign: int
    start: float
    end: float
    rate: float  # msgs/s (mean if diurnal)
    diurnal: bool
    marketing: bool
    imported: float = 0.0  # share of invalid addresses of an imported list (0 = normal list)
    dead_share: float = 0.0  # share of imported addresses at dead (typo) domains


@dataclass
class _Effect:
    """Overrides attempt outcomes in a time window for matching messages."""

    onset: float
    end: float
    prob: float
    replies: I64  # candidate reply ids (uniform) or empty when per_domain is used
    dom_mask: BOOL | None = None
    ip_mask: BOOL | None = None
    sender_mask: BOOL | None = None
    campaigns: tuple[int, ...] = ()
    per_domain: I64 | None = None  # reply id per domain (-1 = not affected)
    valid_only: bool = False


@dataclass
class _ComplaintEffect:
    onset: float
    end: float
    prob: float
    dom_mask: BOOL
    campaigns: tuple[int, ...]


_EV_FIELDS: Final = (
    "t",
    "kind",
    "msg",
    "tenant",
    "campaign",
    "sender",
    "ip",
    "dom",
    "rcpt",
    "reply",
    "tok",
)


def _concat(tables: list[dict[str, Any]]) -> dict[str, Any]:
    tables = [t for t in tables if len(t["t"])]
    if not tables:
        return {k: np.zeros(0, dtype=np.float64 if k == "t" else np.int64) for k in _EV_FIELDS}
    if len(tables) == 1:
        return tables[0]
    return {k: np.concatenate([t[k] for t in tables]) for k in _EV_FIELDS}


def _take(table: dict[str, Any], idx: Any) -> dict[str, Any]:
    return {k: table[k][idx] for k in _EV_FIELDS}


class Simulator:
    """Deterministic event generator. See module docstring and docs/simulator.md."""

    def __init__(self, config: SimConfig) -> None:
        if config.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {config.scenario!r}; one of {', '.join(SCENARIOS)}")
        if config.rate <= 0 or config.duration_s <= 0 or config.step_s <= 0:
            raise ValueError("rate, duration_s and step_s must be positive")
        self.config = config
        self.start = float(config.start)
        self.end = self.start + float(config.duration_s)
        self._build_population()
        self._effects: list[_Effect] = []
        self._complaint_effects: list[_ComplaintEffect] = []
        self._extra_streams: list[_Stream] = []
        self._truth: list[Truth] = []
        self._build_scenario(config.scenario, dict(config.params))

    # ---------------------------------------------------------------- population ----------
    def _build_population(self) -> None:
        cfg = self.config
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
        self._w_consumer = np.where(self.dom_consumer & ~self.dom_dead, w, 0.0)
        self._w_consumer /= self._w_consumer.sum()
        self._w_b2b = np.where(~self.dom_consumer, w, 0.0)
        self._w_b2b /= self._w_b2b.sum()
        self._w_dead = self.dom_dead.astype(np.float64) / max(1, int(self.dom_dead.sum()))
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
        self._tenant_sender_ids: list[I64] = []
        self._tenant_sender_cum: list[F64] = []
        self._tenant_ips: list[I64] = []
        self._tenant_dom_cum: list[F64] = []
        total_w = np.zeros(n_dom)
        for ti, t in enumerate(TENANTS):
            ids = []
            for sname, _ in t.senders:
                ids.append(len(self.sender_names))
                self.sender_names.append(sname)
                self.sender_tenant.append(ti)
            self._tenant_sender_ids.append(np.array(ids, dtype=np.int64))
            sw = np.array([p for _, p in t.senders], dtype=np.float64)
            self._tenant_sender_cum.append(np.cumsum(sw / sw.sum()))
            pool_i = self.pool_names.index(t.pool)
            self._tenant_ips.append(np.flatnonzero(self.ip_pool == pool_i).astype(np.int64))
            tw = (1.0 - t.b2b) * self._w_consumer + t.b2b * self._w_b2b
            self._tenant_dom_cum.append(np.cumsum(tw))
            total_w += t.share * tw
        tshare = sum(t.share for t in TENANTS)
        self.dom_share: F64 = total_w / tshare  # expected share of `sent` per domain
        per_day = np.where(self.dom_consumer, MAILS_PER_RCPT_DAY_CONSUMER, MAILS_PER_RCPT_DAY_B2B)
        pop = np.round(self.dom_share * cfg.rate * 86400.0 / per_day)
        self.dom_pop: I64 = np.maximum(pop, 3).astype(np.int64)
        self.dom_invalid_permille: I64 = np.where(
            self.dom_consumer, INVALID_PERMILLE_CONSUMER, INVALID_PERMILLE_B2B
        ).astype(np.int64)
        self._build_reply_tables()
        # Campaign table (grows as days are generated).
        self.campaign_names: list[str] = []
        self._campaign_idx: dict[str, int] = {}
        self._transactional: list[_Stream] = []
        for ti, t in enumerate(TENANTS):
            c = self._campaign(f"{t.name}-transactional")
            rate = cfg.rate * t.share / tshare * (1.0 - t.marketing)
            self._transactional.append(
                _Stream(ti, c, -math.inf, math.inf, rate, diurnal=True, marketing=False)
            )
        self._days: dict[int, list[_Stream]] = {}

    def _build_reply_tables(self) -> None:
        n = len(self.dom_names)
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
            p = self.dom_provider[i]
            o = self.dom_operator[i]
            noise: list[tuple[str, float]] = [("timeout", 0.0015)]
            if self.dom_dead[i]:
                uu[i] = R["hostunknown"]
                continue
            if self.dom_consumer[i]:
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
                label = self.b2b_operator_label[i]
                if label == "self":
                    uu[i] = R["uu_exchange"] if self.dom_kind_exchange(i) else R["uu_postfix"]
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
        self._noise_rep: I64 = nrep
        self._noise_cum: F64 = np.cumsum(nprob, axis=1)
        self._reply_kind: I64 = np.array(
            [K_DEFERRED if r.kind == DEFERRED else K_BOUNCED for r in REPLIES], dtype=np.int64
        )
        self._is_grey_reply: BOOL = np.zeros(len(REPLIES), dtype=np.bool_)
        for key in ("grey_postfix", "grey_postgrey", "grey_exim"):
            self._is_grey_reply[R[key]] = True
        fbl = np.array([p in FBL_PROVIDERS for p in self.dom_provider], dtype=np.bool_)
        self._dom_fbl: BOOL = fbl & self.dom_consumer
        self._dom_apple: BOOL = np.array([p == "apple" for p in self.dom_provider], dtype=np.bool_)

    def dom_kind_exchange(self, i: int) -> bool:
        return (hash_int(i * 7919 + self.config.seed) % 100) < 35

    def _campaign(self, name: str) -> int:
        idx = self._campaign_idx.get(name)
        if idx is None:
            idx = len(self.campaign_names)
            self.campaign_names.append(name)
            self._campaign_idx[name] = idx
        return idx

    def _day_streams(self, day: int) -> list[_Stream]:
        got = self._days.get(day)
        if got is not None:
            return got
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, 8_000_000 + day])
        date = _dt.datetime.fromtimestamp(day * 86400.0, tz=_dt.UTC).strftime("%Y-%m-%d")
        tshare = sum(t.share for t in TENANTS)
        out: list[_Stream] = []
        for ti, t in enumerate(TENANTS):
            daily = cfg.rate * 86400.0 * t.share / tshare * t.marketing
            for kind in t.campaigns:
                local_h = float(rng.choice([6.5, 8.0, 9.0, 11.0, 13.0, 16.0, 18.0, 19.5]))
                local_h += float(rng.uniform(-0.4, 0.4))
                length = float(rng.uniform(25.0, 70.0)) * MINUTE
                st = day * 86400.0 + (local_h - cfg.tz_offset_h) * HOUR
                vol = daily / len(t.campaigns)
                c = self._campaign(f"{t.name}-{date}-{kind}")
                out.append(_Stream(ti, c, st, st + length, vol / length, False, True))
        self._days[day] = out
        return out

    # ---------------------------------------------------------------- public info ---------
    @property
    def truth(self) -> list[Truth]:
        return list(self._truth)

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

    # ---------------------------------------------------------------- scenarios -----------
    def _window(
        self, params: dict[str, Any], onset_frac: float, length: float | None
    ) -> tuple[float, float, float | None]:
        dur = self.end - self.start
        onset_s = params.get("onset_s")
        onset = self.start + (float(onset_s) if onset_s is not None else onset_frac * dur)
        if "length_s" in params:
            ln = params["length_s"]
            length = None if ln is None else float(ln)
        end = math.inf if length is None else onset + length
        truth_end = None if (length is None or end >= self.end) else end
        return onset, end, truth_end

    def _dom_mask_provider(self, provider: str) -> BOOL:
        return np.array([p == provider for p in self.dom_provider], dtype=np.bool_)

    def _dom_mask_operator(self, operator: str) -> BOOL:
        return np.array([o == operator for o in self.dom_operator], dtype=np.bool_)

    def _ids(self, idx: list[int]) -> I64:
        return np.array(idx, dtype=np.int64)

    def _build_scenario(self, name: str, p: dict[str, Any]) -> None:
        if name == "baseline":
            return
        if name == "mixed":
            self._build_mixed(p)
            return
        builder = {
            "provider-outage": self._sc_outage,
            "ip-blocklisted": self._sc_block,
            "rate-limited": self._sc_rate_limited,
            "b2b-false-bounces": self._sc_false_bounces,
            "complaint-spike": self._sc_complaints,
            "auth-failure": self._sc_auth,
            "bad-list-import": self._sc_bad_list,
        }[name]
        builder(p)

    def _build_mixed(self, p: dict[str, Any]) -> None:
        dur = self.end - self.start
        step = min(40 * MINUTE, 0.09 * dur)
        plan: list[tuple[str, float, dict[str, Any]]] = [
            ("provider-outage", 0.10, {"provider": "yahoo", "intensity": 0.8}),
            ("rate-limited", 0.22, {"provider": "google", "pool": "shared-2"}),
            ("ip-blocklisted", 0.34, {"provider": "microsoft", "ip": "192.0.2.13"}),
            ("complaint-spike", 0.64, {"provider": "microsoft", "tenant": "umbrella"}),
            ("bad-list-import", 0.76, {"tenant": "hooli"}),
            ("auth-failure", 0.88, {"sender": "news.initech.com"}),
        ]
        if dur >= 4 * HOUR:  # false bounces need >= 3 h of history (known-good recipients)
            plan.append(("b2b-false-bounces", max(0.5, 3 * HOUR / dur), {"operator": "mimecast"}))
        for sc, frac, sp in plan:
            sp = {**sp, "onset_s": frac * dur, "length_s": step}
            self._build_scenario(sc, sp)
        self._truth.sort(key=lambda t: t.onset)

    def _sc_outage(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "microsoft"))
        onset, end, tend = self._window(p, 1 / 3, 30 * MINUTE)
        mask = self._dom_mask_provider(prov)
        if prov == "microsoft":
            reps = ["ms_unavail", "ms_unavail", "timeout", "ms_busy"]
        elif prov == "google":
            reps = ["g_temp", "g_temp", "timeout", "conn_refused"]
        elif prov == "yahoo":
            reps = ["y_temp", "timeout", "timeout", "conn_refused"]
        else:
            reps = ["tempfail_generic", "timeout", "conn_refused"]
        self._effects.append(
            _Effect(
                onset,
                end,
                float(p.get("intensity", 0.8)),
                self._ids([R[k] for k in reps]),
                dom_mask=mask,
            )
        )
        self._truth.append(
            Truth("provider_outage", (f"provider:{prov}", f"mx:{prov}"), onset, tend)
        )

    def _ip_index(self, ip: str) -> int:
        if ip not in self.ip_names:
            raise ValueError(f"unknown sending IP {ip!r}; one of {self.ip_names}")
        return self.ip_names.index(ip)

    def _sc_block(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "microsoft"))
        ip = str(p.get("ip", "192.0.2.12"))
        ii = self._ip_index(ip)
        onset, end, tend = self._window(p, 1 / 3, None)
        ip_mask = np.zeros(len(self.ip_names), dtype=np.bool_)
        ip_mask[ii] = True
        key = {"microsoft": "ms_block", "google": "g_unsolicited", "att": "att_block"}.get(
            prov, "spamhaus"
        )
        self._effects.append(
            _Effect(
                onset,
                end,
                float(p.get("intensity", 0.97)),
                self._ids([R[key]]),
                dom_mask=self._dom_mask_provider(prov),
                ip_mask=ip_mask,
            )
        )
        pool = self.pool_names[int(self.ip_pool[ii])]
        self._truth.append(Truth("block", (f"ip:{ip}", f"pool:{pool}"), onset, tend))

    def _sc_rate_limited(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "google"))
        pool = str(p.get("pool", "shared-1"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        if "ip" in p:
            ips = [self._ip_index(str(p["ip"]))]
        else:
            pi = self.pool_names.index(pool)
            ips = np.flatnonzero(self.ip_pool == pi).tolist()
        ip_mask = np.zeros(len(self.ip_names), dtype=np.bool_)
        ip_mask[ips] = True
        key = {
            "google": "g_rate",
            "yahoo": "y_tss04",
            "microsoft": "ms_rate",
            "apple": "a_rate",
            "comcast": "c_rate",
        }.get(prov, "tempfail_generic")
        self._effects.append(
            _Effect(
                onset,
                end,
                float(p.get("intensity", 0.5)),
                self._ids([R[key]]),
                dom_mask=self._dom_mask_provider(prov),
                ip_mask=ip_mask,
            )
        )
        scopes = [f"ip:{self.ip_names[i]}" for i in ips]
        if "ip" not in p:
            scopes.insert(0, f"pool:{pool}")
        scopes.append(f"provider:{prov}")
        self._truth.append(Truth("rate_limited", tuple(scopes), onset, tend))

    def _sc_false_bounces(self, p: dict[str, Any]) -> None:
        op = str(p.get("operator", "mimecast"))
        dur = self.end - self.start
        frac_default = max(3 * HOUR / dur, 0.5) if dur >= 4 * HOUR else 0.5
        onset, end, tend = self._window(p, frac_default, 90 * MINUTE)
        opmask = self._dom_mask_operator(op) & ~self.dom_consumer
        cand = np.flatnonzero(opmask)
        if len(cand) == 0:
            raise ValueError(f"no B2B domains behind operator {op!r}")
        fraction = float(p.get("fraction", 0.5))
        rng = np.random.default_rng([self.config.seed, 9_000_001])
        k = max(1, round(fraction * len(cand)))
        # Always include the largest domain of the operator so the signal has volume.
        order = cand[np.argsort(-self.dom_share[cand])]
        chosen = [int(order[0]), *rng.permutation(order[1:]).tolist()[: k - 1]]
        dmask = np.zeros(len(self.dom_names), dtype=np.bool_)
        dmask[chosen] = True
        per = np.where(dmask, self.dom_uu_reply, -1).astype(np.int64)
        self._effects.append(
            _Effect(
                onset,
                end,
                float(p.get("intensity", 0.7)),
                np.zeros(0, dtype=np.int64),
                dom_mask=dmask,
                per_domain=per,
                valid_only=True,
            )
        )
        self.false_bounce_domains = sorted(self.dom_names[i] for i in chosen)
        scopes = (f"mx:{op}", *(f"domain:{d}" for d in self.false_bounce_domains))
        self._truth.append(Truth("false_hard_bounces", scopes, onset, tend))

    def _scenario_campaign(self, tenant: str, kind: str, onset: float) -> tuple[int, int]:
        if tenant not in self.tenant_names:
            raise ValueError(f"unknown tenant {tenant!r}; one of {self.tenant_names}")
        ti = self.tenant_names.index(tenant)
        date = _dt.datetime.fromtimestamp(onset, tz=_dt.UTC).strftime("%Y-%m-%d")
        return ti, self._campaign(f"{tenant}-{date}-{kind}")

    def _sc_complaints(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "yahoo"))
        tenant = str(p.get("tenant", "acme"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        ti, c = self._scenario_campaign(tenant, str(p.get("campaign_kind", "flash-sale")), onset)
        crate = float(p.get("campaign_rate", 0.15 * self.config.rate))
        stop = self.end if math.isinf(end) else end
        self._extra_streams.append(
            _Stream(ti, c, max(self.start, onset - 45 * MINUTE), stop, crate, False, True)
        )
        self._complaint_effects.append(
            _ComplaintEffect(
                onset, end, float(p.get("intensity", 0.01)), self._dom_mask_provider(prov), (c,)
            )
        )
        camp = self.campaign_names[c]
        self._truth.append(
            Truth(
                "complaint_spike",
                (f"campaign:{camp}", f"tenant:{tenant}", f"provider:{prov}"),
                onset,
                tend,
            )
        )

    def _sc_auth(self, p: dict[str, Any]) -> None:
        sender = str(p.get("sender", "mail.initech.com"))
        if sender not in self.sender_names:
            raise ValueError(f"unknown sender domain {sender!r}; one of {self.sender_names}")
        si = self.sender_names.index(sender)
        onset, end, tend = self._window(p, 1 / 3, None)
        smask = np.zeros(len(self.sender_names), dtype=np.bool_)
        smask[si] = True
        self._effects.append(
            _Effect(
                onset,
                end,
                float(p.get("intensity", 0.95)),
                np.zeros(0, dtype=np.int64),
                sender_mask=smask,
                per_domain=self.dom_auth_reply,
            )
        )
        tenant = self.tenant_names[self.sender_tenant[si]]
        scopes = [f"sender:{sender}"]
        if len(TENANTS[self.sender_tenant[si]].senders) == 1:
            scopes.append(f"tenant:{tenant}")
        self._truth.append(Truth("auth_failure", tuple(scopes), onset, tend))

    def _sc_bad_list(self, p: dict[str, Any]) -> None:
        tenant = str(p.get("tenant", "initech"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        ti, c = self._scenario_campaign(tenant, str(p.get("campaign_kind", "imported-list")), onset)
        crate = float(p.get("campaign_rate", 0.1 * self.config.rate))
        stop = self.end if math.isinf(end) else end
        invalid = float(p.get("intensity", 0.12))
        self._extra_streams.append(
            _Stream(ti, c, onset, stop, crate, False, True, imported=invalid, dead_share=0.03)
        )
        self._truth.append(
            Truth(
                "hard_bounce_spike",
                (f"campaign:{self.campaign_names[c]}", f"tenant:{tenant}"),
                onset,
                tend,
            )
        )

    # ---------------------------------------------------------------- generation ----------
    def _active_streams(self, s0: float, s1: float) -> list[_Stream]:
        out = list(self._transactional)
        for day in range(int(s0 // 86400) - 1, int(s1 // 86400) + 1):
            out.extend(x for x in self._day_streams(day) if x.end > s0 and x.start < s1)
        out.extend(x for x in self._extra_streams if x.end > s0 and x.start < s1)
        return out

    def _gen_step(self, k: int, msg_base: int) -> tuple[dict[str, Any], int]:
        """Generate all messages sent in step k and their complete lifecycles."""
        cfg = self.config
        s0 = self.start + k * cfg.step_s
        s1 = min(s0 + cfg.step_s, self.end)
        rng = np.random.default_rng([cfg.seed, k])
        parts_t: list[F64] = []
        parts_s: list[I64] = []
        streams = self._active_streams(s0, s1)
        for si, st in enumerate(streams):
            a, b = max(s0, st.start), min(s1, st.end)
            if b <= a:
                continue
            lam = st.rate * (b - a)
            if st.diurnal:
                lam *= float(diurnal_factor(0.5 * (a + b), cfg.tz_offset_h))
            n = int(rng.poisson(lam))
            if n:
                parts_t.append(rng.uniform(a, b, n))
                parts_s.append(np.full(n, si, dtype=np.int64))
        if not parts_t:
            return _concat([]), msg_base
        t_sent = np.concatenate(parts_t)
        sidx = np.concatenate(parts_s)
        order = np.argsort(t_sent, kind="stable")
        t_sent, sidx = t_sent[order], sidx[order]
        n = len(t_sent)
        msg = msg_base + np.arange(n, dtype=np.int64)
        s_tenant = np.array([s.tenant for s in streams], dtype=np.int64)
        s_camp = np.array([s.campaign for s in streams], dtype=np.int64)
        s_mark = np.array([s.marketing for s in streams], dtype=np.bool_)
        s_imp = np.array([s.imported for s in streams], dtype=np.float64)
        s_dead = np.array([s.dead_share for s in streams], dtype=np.float64)
        tenant = s_tenant[sidx]
        camp = s_camp[sidx]
        marketing = s_mark[sidx]
        imported = s_imp[sidx]
        # Domain, sender, IP per message (per tenant cumulative tables).
        dom = np.zeros(n, dtype=np.int64)
        sender = np.zeros(n, dtype=np.int64)
        ip = np.zeros(n, dtype=np.int64)
        u_dom = rng.random(n)
        u_snd = rng.random(n)
        u_ip = rng.random(n)
        for ti in np.unique(tenant).tolist():
            m = tenant == ti
            cum = self._tenant_dom_cum[ti]
            dom[m] = np.minimum(
                np.searchsorted(cum, u_dom[m] * cum[-1], side="right"), self.n_live - 1
            )
            scum = self._tenant_sender_cum[ti]
            sender[m] = self._tenant_sender_ids[ti][
                np.minimum(np.searchsorted(scum, u_snd[m], side="right"), len(scum) - 1)
            ]
            ips = self._tenant_ips[ti]
            ip[m] = ips[(u_ip[m] * len(ips)).astype(np.int64)]
        # Recipients: stable population per domain; invalid ones are fixed by a hash.
        u_r = rng.random(n)
        rcpt = (u_r * self.dom_pop[dom]).astype(np.int64)
        valid = (
            hash_arr(rcpt * 1_000_003 + dom * 7919 + cfg.seed) % 1000
            >= self.dom_invalid_permille[dom]
        )
        imp = imported > 0
        if imp.any():
            ii = np.flatnonzero(imp)
            dead = rng.random(len(ii)) < s_dead[sidx[ii]]
            dead_dom = self.n_live + rng.integers(0, len(DEAD_DOMAINS), len(ii))
            dom[ii] = np.where(dead, dead_dom, dom[ii])
            rcpt[ii] = IMPORTED_BASE + rng.integers(0, 10**6, len(ii))
            valid[ii] = rng.random(len(ii)) >= imported[ii]
        valid &= ~self.dom_dead[dom]
        msgtab = {
            "tenant": tenant,
            "campaign": camp,
            "sender": sender,
            "ip": ip,
            "dom": dom,
            "rcpt": rcpt,
            "msg": msg,
        }
        ev_t: list[F64] = [t_sent]
        ev_kind: list[I64] = [np.full(n, K_SENT, dtype=np.int64)]
        ev_row: list[I64] = [np.arange(n, dtype=np.int64)]
        ev_reply: list[I64] = [np.full(n, -1, dtype=np.int64)]
        ev_tok: list[I64] = [np.zeros(n, dtype=np.int64)]
        # Attempts.
        rows = np.arange(n, dtype=np.int64)
        ta = t_sent + np.clip(rng.lognormal(math.log(2.0), 1.0, n), 0.05, 300.0)
        for attempt in range(MAX_ATTEMPTS):
            if len(rows) == 0:
                break
            reply = self._attempt_replies(rng, rows, ta, attempt, dom, ip, sender, camp, valid)
            kind = np.where(reply < 0, K_DELIVERED, self._reply_kind[np.maximum(reply, 0)])
            ev_t.append(ta)
            ev_kind.append(kind)
            ev_row.append(rows)
            ev_reply.append(reply)
            ev_tok.append(np.full(len(rows), attempt, dtype=np.int64))
            dl = kind == K_DELIVERED
            if dl.any():
                self._engagement(
                    rng,
                    rows[dl],
                    ta[dl],
                    dom,
                    camp,
                    marketing,
                    ev_t,
                    ev_kind,
                    ev_row,
                    ev_reply,
                    ev_tok,
                )
            df = kind == K_DEFERRED
            rows, prev_reply, ta_prev = rows[df], reply[df], ta[df]
            if attempt == MAX_ATTEMPTS - 1:
                if len(rows):
                    ev_t.append(ta_prev + BACKOFF_MIN[-1] * MINUTE)
                    ev_kind.append(np.full(len(rows), K_BOUNCED, dtype=np.int64))
                    ev_row.append(rows)
                    ev_reply.append(np.full(len(rows), R["expired"], dtype=np.int64))
                    ev_tok.append(np.full(len(rows), attempt + 1, dtype=np.int64))
                break
            grey = self._is_grey_reply[prev_reply]
            back = np.where(
                grey,
                rng.uniform(5.0, 12.0, len(rows)),
                BACKOFF_MIN[attempt] * rng.uniform(0.8, 1.2, len(rows)),
            )
            ta = ta_prev + back * MINUTE
        t_all = np.concatenate(ev_t)
        row_all = np.concatenate(ev_row)
        table: dict[str, Any] = {
            "t": t_all,
            "kind": np.concatenate(ev_kind),
            "reply": np.concatenate(ev_reply),
            "tok": np.concatenate(ev_tok),
        }
        for key in ("tenant", "campaign", "sender", "ip", "dom", "rcpt", "msg"):
            table[key] = msgtab[key][row_all]
        return table, msg_base + n

    def _attempt_replies(
        self,
        rng: np.random.Generator,
        rows: I64,
        ta: F64,
        attempt: int,
        dom_all: I64,
        ip_all: I64,
        sender_all: I64,
        camp_all: I64,
        valid_all: BOOL,
    ) -> I64:
        dom = dom_all[rows]
        valid = valid_all[rows]
        m = len(rows)
        u = rng.random(m)
        cum = self._noise_cum[dom]
        slot = (u[:, None] >= cum).sum(axis=1)
        k_slots = cum.shape[1]
        reply = np.where(slot < k_slots, self._noise_rep[dom, np.minimum(slot, k_slots - 1)], -1)
        if attempt == 0:
            g = self.dom_greylist[dom] & (rng.random(m) < GREYLIST_P)
            reply = np.where(g, self.dom_grey_reply[dom], reply)
        reply = np.where(valid, reply, self.dom_uu_reply[dom])
        for ef in self._effects:
            sel = (ta >= ef.onset) & (ta < ef.end)
            if not sel.any():
                continue
            if ef.dom_mask is not None:
                sel &= ef.dom_mask[dom]
            if ef.ip_mask is not None:
                sel &= ef.ip_mask[ip_all[rows]]
            if ef.sender_mask is not None:
                sel &= ef.sender_mask[sender_all[rows]]
            if ef.campaigns:
                sel &= np.isin(camp_all[rows], ef.campaigns)
            if ef.valid_only:
                sel &= valid
            if ef.per_domain is not None:
                sel &= ef.per_domain[dom] >= 0
            sel &= rng.random(m) < ef.prob
            if not sel.any():
                continue
            if ef.per_domain is not None:
                reply = np.where(sel, ef.per_domain[dom], reply)
            else:
                pick = ef.replies[rng.integers(0, len(ef.replies), m)]
                reply = np.where(sel, pick, reply)
        return np.asarray(reply, dtype=np.int64)

    def _engagement(
        self,
        rng: np.random.Generator,
        rows: I64,
        td: F64,
        dom_all: I64,
        camp_all: I64,
        mark_all: BOOL,
        ev_t: list[F64],
        ev_kind: list[I64],
        ev_row: list[I64],
        ev_reply: list[I64],
        ev_tok: list[I64],
    ) -> None:
        dom = dom_all[rows]
        mark = mark_all[rows]
        m = len(rows)

        def add(mask: BOOL, times: F64, kind: int) -> None:
            if mask.any():
                ev_t.append(times[mask])
                ev_kind.append(np.full(int(mask.sum()), kind, dtype=np.int64))
                ev_row.append(rows[mask])
                ev_reply.append(np.full(int(mask.sum()), -1, dtype=np.int64))
                ev_tok.append(np.zeros(int(mask.sum()), dtype=np.int64))

        # Complaints (FBL providers only).
        pc = np.where(self._dom_fbl[dom], np.where(mark, 4e-4, 5e-5), 0.0)
        for ce in self._complaint_effects:
            sel = (td >= ce.onset) & (td < ce.end) & ce.dom_mask[dom]
            sel &= np.isin(camp_all[rows], ce.campaigns)
            pc = np.where(sel, ce.prob, pc)
        comp = rng.random(m) < pc
        add(
            comp,
            td + np.clip(rng.lognormal(math.log(20 * MINUTE), 1.0, m), 30.0, 8 * HOUR),
            K_COMPLAINED,
        )
        # Opens (Apple Mail Privacy Protection pre-fetches most messages within minutes).
        apple = self._dom_apple[dom]
        po = np.where(apple, 0.65, np.where(mark, 0.2, 0.35))
        op = rng.random(m) < po
        med = np.where(apple, 3 * MINUTE, 35 * MINUTE)
        t_open = td + np.clip(med * rng.lognormal(0.0, 1.2, m), 5.0, 10 * HOUR)
        add(op, t_open, K_OPENED)
        cl = op & (rng.random(m) < np.where(mark, 0.12, 0.08))
        add(cl, t_open + np.clip(rng.lognormal(math.log(40.0), 1.0, m), 2.0, HOUR), K_CLICKED)
        un = mark & (rng.random(m) < 0.0012)
        add(un, td + np.clip(rng.lognormal(math.log(HOUR), 1.0, m), 60.0, 10 * HOUR), K_UNSUB)

    # ---------------------------------------------------------------- emission ------------
    def _tables(self) -> Iterator[tuple[float, dict[str, Any]]]:
        """Yield (generated_until, table) per generation step."""
        cfg = self.config
        n_steps = math.ceil((self.end - self.start) / cfg.step_s - 1e-9)
        msg_base = 0
        for k in range(n_steps):
            table, msg_base = self._gen_step(k, msg_base)
            yield min(self.start + (k + 1) * cfg.step_s, self.end), table

    def chunks(self, chunk_s: float = 60.0) -> Iterator[list[dict[str, Any]]]:
        """Event-time ordered chunks of events covering [start, start + duration).

        Chunk i holds the events with timestamps in [start + i*chunk_s, start + (i+1)*chunk_s);
        events after the end of the run (late outcomes of the last messages) are dropped.
        """
        if chunk_s <= 0:
            raise ValueError("chunk_s must be positive")
        gen = self._tables()
        pending = _concat([])
        until = self.start
        c0 = self.start
        while c0 < self.end:
            c1 = min(c0 + chunk_s, self.end)
            new: list[dict[str, Any]] = [pending]
            while until < c1:
                try:
                    until, tab = next(gen)
                except StopIteration:
                    until = self.end
                    break
                new.append(tab)
            pending = _concat(new)
            due = pending["t"] < c1
            now = _take(pending, due)
            pending = _take(pending, ~due)
            order = np.lexsort((now["kind"], now["t"]))
            yield self._dicts(_take(now, order))
            c0 = c1

    def iter_events(self) -> Iterator[dict[str, Any]]:
        for chunk in self.chunks(max(self.config.step_s, 300.0)):
            yield from chunk

    def _dicts(self, tab: dict[str, Any]) -> list[dict[str, Any]]:
        names = self.dom_names
        mxs = self.dom_mx
        opers = self.dom_operator
        ips = self.ip_names
        pools = self.pool_names
        ip_pool = self.ip_pool.tolist()
        senders = self.sender_names
        tenants = self.tenant_names
        camps = self.campaign_names
        replies = REPLIES
        ok = OK_TEXTS
        provs = self.dom_provider
        out: list[dict[str, Any]] = []
        append = out.append
        cols = [tab[k].tolist() for k in _EV_FIELDS]
        for t, kind, msg, ten, camp, snd, ip, d, rc, rep, tok in zip(*cols, strict=True):
            dn = names[d]
            ev: dict[str, Any] = {
                "event": KIND_NAMES[kind],
                "timestamp": round(t, 3),
                "message_id": f"m-{msg:09d}",
                "recipient": f"u{rc:06d}@{dn}",
                "recipient_domain": dn,
                "sender_domain": senders[snd],
                "sending_ip": ips[ip],
                "pool": pools[ip_pool[ip]],
                "tenant": tenants[ten],
                "campaign": camps[camp],
            }
            if kind == K_DELIVERED:
                hosts = mxs[d]
                ev["mx_host"] = hosts[(msg + tok) % len(hosts)]
                ev["smtp_code"] = 250
                op = opers[d]
                ev["response"] = ok.get(op) or ok.get(provs[d]) or ok["other"]
            elif kind in (K_DEFERRED, K_BOUNCED):
                hosts = mxs[d]
                if hosts:
                    ev["mx_host"] = hosts[(msg + tok) % len(hosts)]
                r = replies[rep]
                ev["smtp_code"] = r.code
                if r.enh is not None:
                    ev["enhanced_code"] = r.enh
                if r.templated:
                    h = hash_int(msg * 31 + tok)
                    ev["response"] = r.text.format(
                        ip=ips[ip],
                        sender=senders[snd],
                        domain=dn,
                        tok=f"{h:012x}",
                        fe=f"{('DM6', 'BN8', 'SN1', 'CH2')[h % 4]}NAM12FT{h % 997:03d}",
                        n=h % 90 + 10,
                    )
                else:
                    ev["response"] = r.text
            elif kind == K_COMPLAINED:
                ev["feedback_type"] = "abuse"
            append(ev)
        return out


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
