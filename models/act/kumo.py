"""KumoMTA compatibility: repmon's throttle decisions in the formats kumod's shaping helper reads
from tsa-daemon (docs/throttle.md, "Signals", "KumoMTA").

KumoMTA's ``policy-extras/shaping.lua`` (``setup_with_automation { subscribe = {URL} }``) talks to
a traffic-shaping-automation daemon in two ways, and repmon's worker can stand in for it:

* it loads ``GET {URL}/get_config_v1/shaping.toml`` as the last shaping file, an **overlay** of
  egress-path options per destination (a domain entry, ``mx_rollup = true`` meaning the domain's
  MX site) and egress source: :func:`shaping_toml` renders it from a :class:`KumoPlan`;
* it subscribes to the websocket ``{URL}/subscribe_event_v1`` (legacy:
  ``/subscribe_suspension_v1``) for **suspensions** of ready queues (``<source>-><site>@<protocol>``)
  and of scheduled queues (tenant, domain, campaign), each with an expiry:
  :func:`subscription_items`; the same list as JSON is tsa-daemon's
  ``GET /get_suspension_v1/suspended.json``: :func:`suspensions_json`.

:func:`kumo_plan` maps the decisions in force (``scope -> ThrottleRecord``) onto Kumo's notions
with a :class:`KumoConfig` (repmon IPs and pools -> Kumo egress sources, providers and MX
operators -> shaping domains, sites and recipient domains, senders and campaigns -> Kumo tenants,
and the operator's normal rates that a decision's ``rate_factor`` scales). Everything here is
pure (standard library only); the I/O (HTTP, websocket) belongs to the worker.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from models.act.throttle_record import ThrottleRecord, tighter
from models.act.toml_config import loads_toml
from models.ingest.providers import default_table

#: Egress-path options a normal rate may give and a decision scales (docs/throttle.md).
RATE_OPTIONS: Final[tuple[str, ...]] = ("max_message_rate", "max_connection_rate")
LIMIT_OPTIONS: Final[tuple[str, ...]] = ("connection_limit",)
SCALED_OPTIONS: Final[tuple[str, ...]] = (*RATE_OPTIONS, *LIMIT_OPTIONS)

#: Scope kinds that Kumo shapes per egress path (a rate in the overlay, or a ready-queue
#: suspension); the others (tenant, campaign, sender) can only be suspended (scheduled queues).
EGRESS_KINDS: Final[frozenset[str]] = frozenset(
    {"provider", "mx", "ip", "pool", "domain", "ip|provider", "pool|provider"}
)
QUEUE_KINDS: Final[frozenset[str]] = frozenset(
    {"tenant", "campaign", "sender", "tenant|provider", "campaign|provider", "sender|provider"}
)

_UNITS: Final[dict[str, int]] = {
    "s": 1,
    "sec": 1,
    "second": 1,
    "m": 60,
    "min": 60,
    "minute": 60,
    "h": 3600,
    "hr": 3600,
    "hour": 3600,
    "d": 86400,
    "day": 86400,
}
_UNIT_NAME: Final[dict[int, str]] = {1: "s", 60: "m", 3600: "h", 86400: "d"}
_LADDER: Final[tuple[int, ...]] = (1, 60, 3600, 86400)


class KumoConfigError(ValueError):
    """An invalid repmon -> KumoMTA mapping (file, key path and rule in the message)."""


# ------------------------------------------------------------------------------ throttle specs
@dataclass(frozen=True, slots=True)
class ThrottleSpec:
    """A Kumo rate (``"100/h"``, ``"1,000/min"``, ``"5/30m"``, ``"local:10/s,max_burst=2"``):
    ``limit`` events per ``period`` seconds."""

    limit: int
    period: int
    max_burst: int | None = None
    local: bool = False

    @property
    def per_second(self) -> float:
        return self.limit / self.period

    def __str__(self) -> str:
        unit = _UNIT_NAME.get(self.period)
        per = unit if unit is not None else f"{self.period}s"
        burst = f",max_burst={self.max_burst}" if self.max_burst is not None else ""
        return f"{'local:' if self.local else ''}{self.limit}/{per}{burst}"


def _count(text: str, what: str) -> int:
    digits = text.replace("_", "").replace(",", "")
    if not digits.isdigit():
        raise ValueError(f"invalid {what} {text!r}")
    return int(digits)


def parse_throttle_spec(text: str) -> ThrottleSpec:
    """Read a Kumo rate the way kumod does (``limit/[N]unit``, units s/sec/second, m/min/minute,
    h/hr/hour, d/day; ``_`` and ``,`` allowed in numbers; optional ``local:`` prefix and
    ``,max_burst=N`` suffix). Raises ValueError."""
    s = text.strip()
    local = s.startswith("local:")
    if local:
        s = s[len("local:") :]
    burst: int | None = None
    if ",max_burst=" in s:
        s, _, b = s.partition(",max_burst=")
        burst = _count(b, "max_burst")
    limit_s, slash, period_s = s.partition("/")
    if not slash:
        raise ValueError(f"expected 'limit/period', got {text!r}")
    limit = _count(limit_s, "limit")
    if limit == 0:
        raise ValueError(f"a rate's limit must be greater than 0, got {text!r}")
    m = re.fullmatch(r"(\d*)([a-z]+)", period_s)
    if m is None or m.group(2) not in _UNITS:
        raise ValueError(f"unknown period {period_s!r} in {text!r}")
    scale = int(m.group(1)) if m.group(1) else 1
    if scale == 0:
        raise ValueError(f"a rate's period must be greater than 0, got {text!r}")
    return ThrottleSpec(limit, scale * _UNITS[m.group(2)], burst, local)


def scale_throttle_spec(spec: ThrottleSpec, factor: float) -> ThrottleSpec | None:
    """``spec`` x ``factor``, never above the exact product, as a valid Kumo rate (integer limit
    >= 1): the original unit when the product is whole there, else the first longer unit
    (minute, hour, day) where it is whole or at least 100 (under 1 % rounding down), else
    ``1/<N>s``. None when the factor is 0 (Kumo has no zero rate: a pause is a suspension)."""
    if factor >= 1.0:
        return spec
    rate = spec.limit * factor / spec.period
    if rate <= 0.0:
        return None
    burst = None if spec.max_burst is None else max(1, math.floor(spec.max_burst * factor))
    units = [spec.period] + [u for u in _LADDER if u > spec.period]
    for unit in units:
        n = rate * unit
        whole = round(n)
        if whole >= 1 and abs(n - whole) < 1e-6:
            return ThrottleSpec(whole, unit, burst, spec.local)
        if n >= 100.0:
            return ThrottleSpec(math.floor(n), unit, burst, spec.local)
    n = rate * units[-1]
    if n >= 1.0:
        return ThrottleSpec(math.floor(n), units[-1], burst, spec.local)
    return ThrottleSpec(1, math.ceil(1.0 / rate), burst, spec.local)


def scale_limit(limit: int, factor: float) -> int:
    """A connection limit x ``factor``, rounded up, at least 1 (Kumo rejects 0)."""
    return max(1, math.ceil(limit * factor - 1e-9))


# ------------------------------------------------------------------------------ configuration
@dataclass(frozen=True, slots=True)
class Destination:
    """Where a repmon provider or MX operator is in Kumo's terms."""

    #: shaping.toml entries written with ``mx_rollup = true`` (each stands for its MX site)
    shaping_domains: tuple[str, ...] = ()
    #: Kumo site names (as in ready queue names) for ready-queue suspensions
    sites: tuple[str, ...] = ()
    #: recipient domains for scheduled-queue suspensions (queues are per recipient domain)
    domains: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class NormalRates:
    """The normal egress-path values of one destination (or the default), for all sources and
    per egress source; each value is a Kumo rate string or a connection limit."""

    params: Mapping[str, str | int] = field(default_factory=dict)
    sources: Mapping[str, Mapping[str, str | int]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class KumoConfig:
    """The repmon -> KumoMTA mapping (docs/throttle.md, "KumoMTA"; :func:`parse_kumo_config`)."""

    #: repmon IP -> Kumo egress source name
    sources: Mapping[str, str] = field(default_factory=dict)
    #: repmon pool -> Kumo egress source names
    pools: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: egress sources besides those named by ``sources`` / ``pools`` ("every source")
    extra_sources: tuple[str, ...] = ()
    #: repmon provider or MX operator -> Kumo destination
    destinations: Mapping[str, Destination] = field(default_factory=dict)
    #: repmon sender -> Kumo tenant (sender scopes are suspended as that tenant)
    senders: Mapping[str, str] = field(default_factory=dict)
    #: repmon campaign -> Kumo tenant that owns it (Kumo's campaign suspensions need a tenant)
    campaigns: Mapping[str, str] = field(default_factory=dict)
    #: destination name (or recipient domain, or "default") -> its normal rates
    normal: Mapping[str, NormalRates] = field(default_factory=dict)
    #: the delivery protocol part of ready queue names (``<source>-><site>@<protocol>``)
    protocol: str = "smtp_client"
    #: a suspension is issued for at most this long and re-sent while it holds
    suspension_ttl_s: float = 300.0
    #: egress scopes: a rate factor at or below this is a ready-queue suspension, not a rate
    suspend_at_or_below: float = 0.0
    #: destinations not configured take their domains from the provider table (providers.toml)
    provider_table: bool = True

    @property
    def all_sources(self) -> tuple[str, ...]:
        """Every egress source the mapping names ("every source" of a scope with no IP/pool)."""
        names = set(self.sources.values()) | set(self.extra_sources)
        for members in self.pools.values():
            names.update(members)
        return tuple(sorted(names))

    def destination(self, name: str) -> Destination | None:
        d = self.destinations.get(name)
        if d is not None or not self.provider_table:
            return d
        domains = tuple(sorted(d for d, p in default_table().domain_provider.items() if p == name))
        return Destination(shaping_domains=domains, domains=domains) if domains else None

    def all_destinations(self) -> tuple[str, ...]:
        names = set(self.destinations)
        if self.provider_table:
            names.update(default_table().domain_provider.values())
        return tuple(sorted(names))

    def normal_for(self, keys: Iterable[str], source: str | None) -> dict[str, str | int]:
        """The normal values for a source (None: the entry level), layered key by key:
        ``default``, then each of ``keys`` in order; at each level its ``sources.<source>``."""
        out: dict[str, str | int] = {}
        for key in ("default", *keys):
            n = self.normal.get(key)
            if n is None:
                continue
            out.update(n.params)
            if source is not None:
                out.update(n.sources.get(source, {}))
        return out


_TOP_KEYS: Final[frozenset[str]] = frozenset(
    {"kumo", "sources", "pools", "destinations", "senders", "campaigns", "normal"}
)
_KUMO_KEYS: Final[frozenset[str]] = frozenset(
    {"protocol", "suspension_ttl_s", "suspend_at_or_below", "provider_table", "extra_sources"}
)
_DEST_KEYS: Final[frozenset[str]] = frozenset({"shaping_domains", "sites", "domains"})


def _err(source: str, path: str, msg: str) -> KumoConfigError:
    return KumoConfigError(f"{source}: {path}: {msg}")


def _table(source: str, path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _err(source, path, f"must be a table, got {type(v).__name__}")
    return v


def _str(source: str, path: str, v: Any) -> str:
    if not isinstance(v, str) or not v:
        raise _err(source, path, f"must be a non-empty string, got {v!r}")
    return v


def _strs(source: str, path: str, v: Any) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise _err(source, path, f"must be a list of strings, got {v!r}")
    return tuple(_str(source, f"{path}[{i}]", x) for i, x in enumerate(v))


def _number(source: str, path: str, v: Any, lo: float, hi: float) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not lo <= v <= hi:
        raise _err(source, path, f"must be a number in [{lo:g}, {hi:g}], got {v!r}")
    return float(v)


def _normal_params(source: str, path: str, v: Any) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for k, x in _table(source, path, v).items():
        p = f"{path}.{k}"
        if k in RATE_OPTIONS:
            try:
                parse_throttle_spec(_str(source, p, x))
            except ValueError as exc:
                raise _err(source, p, f"not a Kumo rate: {exc}") from None
            out[k] = x
        elif k in LIMIT_OPTIONS:
            if isinstance(x, bool) or not isinstance(x, int) or x < 1:
                raise _err(source, p, f"must be an integer >= 1, got {x!r}")
            out[k] = x
        else:
            raise _err(source, p, f"unknown option (known: {', '.join(SCALED_OPTIONS)}, sources)")
    return out


def parse_kumo_config(data: Mapping[str, Any], source: str = "<kumo config>") -> KumoConfig:
    """Validate a TOML-shaped mapping document (docs/throttle.md, "KumoMTA"); unknown keys,
    wrong types, invalid Kumo rates and out-of-range numbers raise :class:`KumoConfigError`."""
    doc = _table(source, "<top>", dict(data))
    unknown = set(doc) - _TOP_KEYS
    if unknown:
        raise _err(
            source,
            ", ".join(sorted(unknown)),
            f"unknown key(s) (known: {', '.join(sorted(_TOP_KEYS))})",
        )
    kumo = _table(source, "kumo", doc.get("kumo", {}))
    unknown = set(kumo) - _KUMO_KEYS
    if unknown:
        raise _err(
            source,
            "kumo." + ",".join(sorted(unknown)),
            f"unknown key (known: {', '.join(sorted(_KUMO_KEYS))})",
        )
    provider_table = kumo.get("provider_table", True)
    if not isinstance(provider_table, bool):
        raise _err(source, "kumo.provider_table", f"must be a boolean, got {provider_table!r}")
    sources = {
        ip: _str(source, f"sources.{ip}", s)
        for ip, s in _table(source, "sources", doc.get("sources", {})).items()
    }
    pools = {
        p: _strs(source, f"pools.{p}", m)
        for p, m in _table(source, "pools", doc.get("pools", {})).items()
    }
    for p, members in pools.items():
        if not members:
            raise _err(source, f"pools.{p}", "must name at least one egress source")
    dests: dict[str, Destination] = {}
    for name, spec in _table(source, "destinations", doc.get("destinations", {})).items():
        path = f"destinations.{name}"
        t = _table(source, path, spec)
        unknown = set(t) - _DEST_KEYS
        if unknown:
            raise _err(
                source,
                f"{path}.{','.join(sorted(unknown))}",
                f"unknown key (known: {', '.join(sorted(_DEST_KEYS))})",
            )
        dests[name] = Destination(
            shaping_domains=_strs(source, f"{path}.shaping_domains", t.get("shaping_domains", [])),
            sites=_strs(source, f"{path}.sites", t.get("sites", [])),
            domains=_strs(source, f"{path}.domains", t.get("domains", [])),
        )
    normal: dict[str, NormalRates] = {}
    for name, spec in _table(source, "normal", doc.get("normal", {})).items():
        path = f"normal.{name}"
        t = dict(_table(source, path, spec))
        per_source = _table(source, f"{path}.sources", t.pop("sources", {}))
        normal[name] = NormalRates(
            params=_normal_params(source, path, t),
            sources={
                s: _normal_params(source, f"{path}.sources.{s}", v) for s, v in per_source.items()
            },
        )
    return KumoConfig(
        sources=sources,
        pools=pools,
        extra_sources=_strs(source, "kumo.extra_sources", kumo.get("extra_sources", [])),
        destinations=dests,
        senders={
            k: _str(source, f"senders.{k}", v)
            for k, v in _table(source, "senders", doc.get("senders", {})).items()
        },
        campaigns={
            k: _str(source, f"campaigns.{k}", v)
            for k, v in _table(source, "campaigns", doc.get("campaigns", {})).items()
        },
        normal=normal,
        protocol=_str(source, "kumo.protocol", kumo.get("protocol", "smtp_client")),
        suspension_ttl_s=_number(
            source, "kumo.suspension_ttl_s", kumo.get("suspension_ttl_s", 300.0), 1.0, 86400.0
        ),
        suspend_at_or_below=_number(
            source, "kumo.suspend_at_or_below", kumo.get("suspend_at_or_below", 0.0), 0.0, 1.0
        ),
        provider_table=provider_table,
    )


def loads_kumo_config(text: str, source: str = "<kumo config>") -> KumoConfig:
    data = loads_toml(text, source, KumoConfigError, invalid="invalid TOML")
    return parse_kumo_config(data, source)


def load_kumo_config(path: str | Path) -> KumoConfig:
    p = Path(path)
    return loads_kumo_config(p.read_text(encoding="utf-8"), str(p))


# ------------------------------------------------------------------------------ the plan
@dataclass(frozen=True, slots=True)
class ConfigOverride:
    """One option of the shaping overlay: ``[<domain>.sources.<source>] <name> = <value>``
    (``source`` None: at the domain entry's level, for every source)."""

    domain: str
    mx_rollup: bool
    source: str | None
    name: str
    value: str | int
    reason: str
    expires: float
    scope: str


@dataclass(frozen=True, slots=True)
class ReadyQSuspension:
    """Suspend one ready queue (``<source>-><site>@<protocol>``) until ``expires``."""

    rule_hash: str
    site_name: str
    reason: str
    source: str
    expires: float
    scope: str


@dataclass(frozen=True, slots=True)
class SchedQSuspension:
    """Suspend the scheduled queues of a tenant (and campaign) at a recipient domain."""

    rule_hash: str
    tenant: str
    domain: str
    campaign: str | None
    reason: str
    expires: float
    scope: str


@dataclass(frozen=True, slots=True)
class KumoPlan:
    """What the decisions in force at ``now`` ask of a KumoMTA fleet."""

    now: float
    overrides: tuple[ConfigOverride, ...]
    ready_q: tuple[ReadyQSuspension, ...]
    sched_q: tuple[SchedQSuspension, ...]
    #: (scope, why) of the decisions in force that the mapping cannot express
    unmapped: tuple[tuple[str, str], ...]


def _kind_values(scope: str) -> tuple[str, str, str | None]:
    """``ip:1.2.3.4|provider:google`` -> ("ip|provider", "1.2.3.4", "google")."""
    head, bar, tail = scope.partition("|")
    kind, _, value = head.partition(":")
    if bar:
        tkind, _, provider = tail.partition(":")
        return f"{kind}|{tkind}", value, provider
    return kind, value, None


def _rule_hash(scope: str, target: str) -> str:
    return hashlib.sha256(f"repmon\0{scope}\0{target}".encode()).hexdigest()


def _reason(r: ThrottleRecord) -> str:
    inc = f", incident {r.incident}" if r.incident else ""
    return f"repmon {r.scope}: {r.state} x{r.rate_factor:g} ({r.reason}{inc})"


class _Builder:
    def __init__(self, config: KumoConfig, now: float) -> None:
        self.c = config
        self.now = now
        # (domain, source, option) -> (record, mx_rollup, value)
        self.opts: dict[tuple[str, str | None, str], tuple[ThrottleRecord, bool, str | int]] = {}
        self.rollup: dict[str, tuple[bool, ThrottleRecord]] = {}
        self.ready: dict[str, tuple[ThrottleRecord, str]] = {}
        self.sched: dict[tuple[str, str, str | None], ThrottleRecord] = {}
        self.unmapped: list[tuple[str, str]] = []

    # -- egress paths
    def sources_of(self, kind: str, value: str) -> tuple[str, ...] | None:
        """The egress sources of a scope; () for every source; None when unmapped."""
        if kind.startswith("ip"):
            s = self.c.sources.get(value)
            return None if s is None else (s,)
        if kind.startswith("pool"):
            return self.c.pools.get(value)
        return ()

    def add_egress(self, r: ThrottleRecord, kind: str, value: str, provider: str | None) -> None:
        srcs = self.sources_of(kind, value)
        if srcs is None:
            what = "IP" if kind.startswith("ip") else "pool"
            self.unmapped.append((r.scope, f"no Kumo egress source for {what} {value!r}"))
            return
        if not srcs:
            srcs = self.c.all_sources  # () means: at the entry level, for every source
        if kind == "domain":
            targets: list[tuple[str, tuple[str, ...], Destination | None]] = [
                (value, (value,), None)
            ]
        else:
            names = [provider if provider is not None else value]
            if kind in ("ip", "pool"):
                names = list(self.c.all_destinations())
            targets = []
            for n in names:
                d = self.c.destination(n)
                if d is not None:
                    targets.append((n, (n,), d))
            if not targets:
                where = names[0] if len(names) == 1 else "any destination"
                self.unmapped.append((r.scope, f"no Kumo destination for {where!r}"))
                return
        if r.rate_factor <= self.c.suspend_at_or_below:
            if kind == "domain":
                # a ready queue serves a whole site, and a scheduled-queue suspension names a
                # tenant: neither is "this recipient domain, every tenant"
                self.unmapped.append((r.scope, "Kumo cannot suspend one recipient domain"))
            else:
                self.add_ready(r, targets, srcs)
            return
        wrote = False
        for name, keys, dest in targets:
            if dest is None:  # a recipient domain: only that domain, not its site
                table_provider = default_table().domain_provider.get(name.lower())
                nkeys = (table_provider, name) if table_provider else keys
                wrote |= self.add_rates(r, name, False, srcs, nkeys)
                continue
            for dom in dest.shaping_domains:
                wrote |= self.add_rates(r, dom, True, srcs, keys)
        if not wrote and not any(u[0] == r.scope for u in self.unmapped):
            self.unmapped.append((r.scope, "no normal rate to scale (configure [normal])"))

    def add_rates(
        self,
        r: ThrottleRecord,
        domain: str,
        mx_rollup: bool,
        srcs: tuple[str, ...],
        keys: tuple[str, ...],
    ) -> bool:
        held = self.rollup.get(domain)
        if held is not None and held[0] != mx_rollup:
            # one shaping entry per domain name: a destination's site entry (mx_rollup = true)
            # and a recipient domain's own entry cannot both be written; the site entry stays
            if not mx_rollup:
                self.unmapped.append((r.scope, f"{domain!r} is also a site entry (mx_rollup)"))
                return False
            self.drop_domain_entry(domain)
        self.rollup[domain] = (mx_rollup, r)
        wrote = False
        for src in srcs or (None,):
            normal = self.c.normal_for(keys, src)
            for opt in SCALED_OPTIONS:
                base = normal.get(opt)
                if base is None:
                    continue
                value: str | int
                if opt in RATE_OPTIONS:
                    scaled = scale_throttle_spec(parse_throttle_spec(str(base)), r.rate_factor)
                    if scaled is None:
                        continue
                    value = str(scaled)
                else:
                    value = scale_limit(int(base), r.rate_factor)
                k = (domain, src, opt)
                cur = self.opts.get(k)
                if cur is None or tighter(r, cur[0]):
                    self.opts[k] = (r, mx_rollup, value)
                wrote = True
        return wrote

    def drop_domain_entry(self, domain: str) -> None:
        for k in [k for k in self.opts if k[0] == domain]:
            rec = self.opts.pop(k)[0]
            self.unmapped.append((rec.scope, f"{domain!r} is also a site entry (mx_rollup)"))

    def add_ready(
        self,
        r: ThrottleRecord,
        targets: list[tuple[str, tuple[str, ...], Destination | None]],
        srcs: tuple[str, ...],
    ) -> None:
        sites = [s for _, _, d in targets if d is not None for s in d.sites]
        if not sites:
            self.unmapped.append((r.scope, "a pause needs the destination's Kumo sites"))
            return
        if not srcs:
            self.unmapped.append((r.scope, "a pause of every source needs the egress sources"))
            return
        for site in sites:
            for src in srcs:
                name = f"{src}->{site}@{self.c.protocol}"
                cur = self.ready.get(name)
                if cur is None or tighter(r, cur[0]):
                    self.ready[name] = (r, src)

    # -- scheduled queues
    def add_queue(self, r: ThrottleRecord, kind: str, value: str, provider: str | None) -> None:
        if r.state != "paused":
            self.unmapped.append(
                (r.scope, f"Kumo cannot rate-limit a {kind.split('|')[0]}: only a pause maps")
            )
            return
        base = kind.split("|")[0]
        campaign: str | None = None
        if base == "tenant":
            tenant: str | None = value
        elif base == "sender":
            tenant = self.c.senders.get(value)
        else:
            tenant, campaign = self.c.campaigns.get(value), value
        if tenant is None:
            self.unmapped.append((r.scope, f"no Kumo tenant for {base} {value!r}"))
            return
        names = [provider] if provider is not None else list(self.c.all_destinations())
        domains = sorted(
            {dom for n in names if (d := self.c.destination(n)) is not None for dom in d.domains}
        )
        if not domains:
            self.unmapped.append((r.scope, "no recipient domains for the destination(s)"))
            return
        for dom in domains:
            k = (tenant, dom, campaign)
            cur = self.sched.get(k)
            if cur is None or tighter(r, cur):
                self.sched[k] = r

    def plan(self) -> KumoPlan:
        ttl_end = self.now + self.c.suspension_ttl_s
        overrides = tuple(
            ConfigOverride(
                domain=d,
                mx_rollup=roll,
                source=src,
                name=opt,
                value=val,
                reason=_reason(rec),
                expires=rec.expires_at,
                scope=rec.scope,
            )
            for (d, src, opt), (rec, roll, val) in sorted(
                self.opts.items(), key=lambda kv: (kv[0][0], kv[0][1] or "", kv[0][2])
            )
        )
        ready = sorted(
            (
                ReadyQSuspension(
                    rule_hash=_rule_hash(rec.scope, name),
                    site_name=name,
                    reason=_reason(rec),
                    source=src,
                    expires=float(math.floor(min(rec.expires_at, ttl_end))),
                    scope=rec.scope,
                )
                for name, (rec, src) in self.ready.items()
            ),
            key=lambda s: (s.expires, s.source, s.site_name),
        )
        sched = sorted(
            (
                SchedQSuspension(
                    rule_hash=_rule_hash(rec.scope, f"{t}|{d}|{c or ''}"),
                    tenant=t,
                    domain=d,
                    campaign=c,
                    reason=_reason(rec),
                    expires=float(math.floor(min(rec.expires_at, ttl_end))),
                    scope=rec.scope,
                )
                for (t, d, c), rec in self.sched.items()
            ),
            key=lambda s: (s.expires, s.tenant, s.domain, s.campaign or ""),
        )
        return KumoPlan(
            self.now, overrides, tuple(ready), tuple(sched), tuple(sorted(set(self.unmapped)))
        )


def kumo_plan(
    decisions: Mapping[str, ThrottleRecord] | Iterable[ThrottleRecord],
    config: KumoConfig,
    now: float,
) -> KumoPlan:
    """Map the decisions in force at ``now`` (state not normal, not expired) onto Kumo:

    * egress scopes (provider, mx, ip, pool, domain, ip|provider, pool|provider) become overlay
      options, the operator's normal value x ``rate_factor`` per destination entry and egress
      source; at or below ``suspend_at_or_below`` they become ready-queue suspensions instead;
    * tenant, campaign and sender scopes become scheduled-queue suspensions when paused
      (Kumo shapes egress paths, not tenants: throttled or recovering ones are unmapped);
    * where several decisions reach the same Kumo target the most restrictive wins
      (:func:`~models.act.throttle_record.tighter`); what cannot be expressed is listed in
      :attr:`KumoPlan.unmapped` with the reason."""
    recs = decisions.values() if isinstance(decisions, Mapping) else decisions
    b = _Builder(config, now)
    for r in sorted((r for r in recs if r.live(now)), key=lambda r: r.scope):
        kind, value, provider = _kind_values(r.scope)
        if kind in EGRESS_KINDS:
            b.add_egress(r, kind, value, provider)
        elif kind in QUEUE_KINDS:
            b.add_queue(r, kind, value, provider)
        else:
            b.unmapped.append((r.scope, f"unknown scope kind {kind!r}"))
    return b.plan()


# ------------------------------------------------------------------------------ rendering
def rfc3339(t: float, *, z: bool = True) -> str:
    """Whole-second UTC time: ``2026-11-17T10:00:00Z`` (``z=False``: ``+00:00``)."""
    s = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(math.floor(t)))
    return s + ("Z" if z else "+00:00")


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(s: str) -> str:
    out = ['"']
    for ch in s:
        o = ord(ch)
        if ch == '"':
            out.append('\\"')
        elif ch == "\\":
            out.append("\\\\")
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif o < 0x20 or o == 0x7F:
            out.append(f"\\u{o:04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_value(v: str | int) -> str:
    return str(v) if isinstance(v, int) else _toml_str(v)


def _comment(s: str) -> str:
    return " ".join(s.split())


HEADER: Final[str] = "# Generated by repmon (tsa-daemon compatible shaping overlay)"


def shaping_toml(plan: KumoPlan) -> str:
    """The overlay kumod loads from ``/get_config_v1/shaping.toml``, laid out the way
    tsa-daemon writes it: a header and footer with the number of options, then per domain
    entry ``mx_rollup`` and its ``sources`` tables, each option preceded by ``# reason:`` and
    ``# expires:`` comments. Expired decisions are already left out by :func:`kumo_plan`."""
    n = len(plan.overrides)
    head = f"{HEADER}\n# Number of entries: {n}\n"
    blocks: list[str] = []
    by_domain: dict[str, list[ConfigOverride]] = {}
    for o in plan.overrides:
        by_domain.setdefault(o.domain, []).append(o)

    def option(o: ConfigOverride) -> str:
        return (
            f"# reason: {_comment(o.reason)}\n# expires: {rfc3339(o.expires, z=False)}\n"
            f"{o.name} = {_toml_value(o.value)}\n"
        )

    for domain, opts in by_domain.items():
        dk = _toml_key(domain)
        entry = [f"[{dk}]\nmx_rollup = {'true' if opts[0].mx_rollup else 'false'}\n"]
        entry.extend(option(o) for o in opts if o.source is None)
        blocks.append("".join(entry))
        per_source = [o for o in opts if o.source is not None]
        if per_source:
            blocks.append(f"[{dk}.sources]\n")
            by_src: dict[str, list[ConfigOverride]] = {}
            for o in per_source:
                assert o.source is not None
                by_src.setdefault(o.source, []).append(o)
            for src, sopts in by_src.items():
                blocks.append(
                    f"[{dk}.sources.{_toml_key(src)}]\n" + "".join(option(o) for o in sopts)
                )
    body = "\n".join(blocks)
    return f"{head}\n{body}\n\n{head}" if blocks else f"{head}\n\n{head}"


def ready_q_json(s: ReadyQSuspension) -> dict[str, Any]:
    """tsa-daemon's ``ReadyQSuspension`` (crates/kumo-api-types/src/tsa.rs), field for field."""
    return {
        "rule_hash": s.rule_hash,
        "site_name": s.site_name,
        "reason": s.reason,
        "source": s.source,
        "expires": rfc3339(s.expires),
    }


def sched_q_json(s: SchedQSuspension) -> dict[str, Any]:
    """tsa-daemon's ``SchedQSuspension``, field for field (``campaign`` null when none)."""
    return {
        "rule_hash": s.rule_hash,
        "tenant": s.tenant,
        "domain": s.domain,
        "campaign": s.campaign,
        "reason": s.reason,
        "expires": rfc3339(s.expires),
    }


def suspensions_json(plan: KumoPlan) -> dict[str, Any]:
    """The body of ``GET /get_suspension_v1/suspended.json``:
    ``{"ready_q": [ReadyQSuspension...], "sched_q": [SchedQSuspension...]}``."""
    return {
        "ready_q": [ready_q_json(s) for s in plan.ready_q],
        "sched_q": [sched_q_json(s) for s in plan.sched_q],
    }


def subscription_items(plan: KumoPlan, *, legacy: bool = False) -> list[dict[str, Any]]:
    """The websocket messages (one JSON text frame each) for the current suspensions, ready
    queues first: ``{"ReadyQSuspension": {...}}`` / ``{"SchedQSuspension": {...}}`` on
    ``/subscribe_event_v1``; with ``legacy`` ``{"ReadyQ": {...}}`` / ``{"SchedQ": {...}}`` as on
    the deprecated ``/subscribe_suspension_v1``."""
    rq, sq = ("ReadyQ", "SchedQ") if legacy else ("ReadyQSuspension", "SchedQSuspension")
    return [{rq: ready_q_json(s)} for s in plan.ready_q] + [
        {sq: sched_q_json(s)} for s in plan.sched_q
    ]


def _item_key(item: Mapping[str, Any]) -> tuple[str, ...]:
    ((kind, body),) = item.items()
    if "site_name" in body:
        return (kind, body["site_name"])
    return (kind, body["tenant"], body["domain"], body["campaign"] or "")


class SuspensionFeed:
    """Which subscription items to push now, for one websocket subscriber.

    kumod keeps a suspension until its ``expires`` and replaces one with the same target on
    each new message, and the protocol has no "lift": repmon issues short suspensions
    (``suspension_ttl_s``) and re-sends them while the decision holds. :meth:`due` returns,
    for a fresh plan, every item the first time (the initial burst tsa-daemon sends on connect),
    then the items that are new or whose reason changed, and all of them again once
    ``resend_every_s`` passed since the last full send. A lifted suspension is simply not sent
    again: it lapses within ``suspension_ttl_s``. Pure (times are arguments)."""

    def __init__(self, resend_every_s: float = 60.0, *, legacy: bool = False) -> None:
        self.resend_every_s = resend_every_s
        self.legacy = legacy
        self._sent: dict[tuple[str, ...], str] = {}
        self._last_full: float | None = None

    def due(self, plan: KumoPlan, now: float) -> list[dict[str, Any]]:
        items = subscription_items(plan, legacy=self.legacy)
        full = self._last_full is None or now - self._last_full >= self.resend_every_s
        out: list[dict[str, Any]] = []
        current: dict[tuple[str, ...], str] = {}
        for it in items:
            k = _item_key(it)
            (body,) = it.values()
            current[k] = body["reason"]
            if full or self._sent.get(k) != body["reason"]:
                out.append(it)
        if full:
            self._last_full = now
        self._sent = current
        return out


__all__ = [
    "EGRESS_KINDS",
    "HEADER",
    "QUEUE_KINDS",
    "SCALED_OPTIONS",
    "ConfigOverride",
    "Destination",
    "KumoConfig",
    "KumoConfigError",
    "KumoPlan",
    "NormalRates",
    "ReadyQSuspension",
    "SchedQSuspension",
    "SuspensionFeed",
    "ThrottleSpec",
    "kumo_plan",
    "load_kumo_config",
    "loads_kumo_config",
    "parse_kumo_config",
    "parse_throttle_spec",
    "ready_q_json",
    "rfc3339",
    "scale_limit",
    "scale_throttle_spec",
    "sched_q_json",
    "shaping_toml",
    "subscription_items",
    "suspensions_json",
]
