"""Closed-loop evaluation, the world the fleet sends into: the scenarios (:class:`Incident`,
:class:`ClosedLoopScenario`), which messages a scope covers (:class:`ScopeIndex`), the demand
(:class:`Demand`) and the provider's replies (:class:`Provider`). See the package docstring
(``models.sim.closed_loop``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Final

import numpy as np

from models.act.throttle_record import message_scopes
from models.detect.config import DETECT_EVERY_S
from models.sim.config import BOOL, F64, I64
from models.sim.replies import R
from models.sim.traffic import GREYLIST_P, TENANTS, Calendar, Fleet, OutcomeTables, hash_arr

#: one fleet step = one detection tick of event time
TICK_S: Final[float] = DETECT_EVERY_S


# ------------------------------------------------------------------------------ scenarios
@dataclass(frozen=True)
class Incident:
    """What the provider does during ``[onset, onset + length_s)`` (seconds after the start).

    ``kind``: ``outage`` (``intensity`` of the attempts to ``provider`` fail with one of
    ``replies``), ``rate_limit`` (per ``key`` -- ``ip``: each of ``ips``; ``provider``: all of
    our mail to it -- at most ``limit_share`` x that key's normal rate is accepted, every attempt
    above it gets ``replies[0]``) or ``block`` (``intensity`` of the attempts from ``ips`` to
    ``provider`` are refused with ``replies[0]``, a bounce).
    """

    kind: str
    provider: str
    onset_s: float
    length_s: float
    replies: tuple[str, ...]
    intensity: float = 1.0
    ips: tuple[str, ...] = ()
    key: str = "ip"
    limit_share: float = 0.5

    def __post_init__(self) -> None:
        if self.kind not in ("outage", "rate_limit", "block"):
            raise ValueError(f"unknown incident kind {self.kind!r}")
        if self.key not in ("ip", "provider"):
            raise ValueError(f"rate-limit key must be 'ip' or 'provider', got {self.key!r}")
        if not self.replies or any(r not in R for r in self.replies):
            raise ValueError(f"unknown reply key in {self.replies!r}")
        if self.kind == "block" and not self.ips:
            raise ValueError("a block needs the blocked ips")
        if not 0.0 < self.intensity <= 1.0 or not 0.0 < self.limit_share < 1.0:
            raise ValueError("intensity must be in (0, 1], limit_share in (0, 1)")
        if self.onset_s < 0 or self.length_s <= 0:
            raise ValueError("onset_s must be >= 0 and length_s > 0")


@dataclass(frozen=True)
class ClosedLoopScenario:
    """One closed-loop run: the incident, the scope it should be acted on, the run's length."""

    name: str
    description: str
    act_scope: str
    incident: Incident
    #: seconds observed after the provider recovered
    after_s: float = 7200.0

    @property
    def duration_s(self) -> float:
        return self.incident.onset_s + self.incident.length_s + self.after_s


def _scenarios(onset_s: float, after_s: float) -> dict[str, ClosedLoopScenario]:
    outage = Incident(
        "outage",
        "microsoft",
        onset_s,
        1800.0,
        ("ms_unavail", "ms_unavail", "timeout", "ms_busy"),
        intensity=0.9,
    )
    ip_rate = Incident(
        "rate_limit", "google", onset_s, 3600.0, ("g_rate",), ips=("203.0.113.6",), key="ip"
    )
    block = Incident("block", "microsoft", onset_s, 3600.0, ("ms_block",), ips=("192.0.2.12",))
    prov_rate = Incident(
        "rate_limit", "yahoo", onset_s, 3600.0, ("y_tss04",), key="provider", limit_share=0.6
    )
    return {
        s.name: s
        for s in (
            ClosedLoopScenario(
                "provider-outage",
                "Microsoft (consumer and Microsoft 365 domains) fails 90 % of the attempts with "
                "421 4.3.2 / 421 4.4.2 timeouts / 451 4.7.500 server busy for 30 min",
                "provider:microsoft",
                outage,
                after_s,
            ),
            ClosedLoopScenario(
                "ip-rate-limit",
                "Gmail accepts at most 50 % of the normal rate of one IP (203.0.113.6) and answers "
                "421-4.7.28 above it, for 60 min",
                "ip:203.0.113.6|provider:google",
                ip_rate,
                after_s,
            ),
            ClosedLoopScenario(
                "ip-block",
                "Microsoft refuses every attempt from 192.0.2.12 with 550 5.7.1 S3150 (block "
                "list) for 60 min, then delists it",
                "ip:192.0.2.12|provider:microsoft",
                block,
                after_s,
            ),
            ClosedLoopScenario(
                "provider-rate-limit",
                "Yahoo accepts at most 60 % of our normal rate to it (all IPs together) and "
                "answers 421 4.7.0 [TSS04] above it, for 60 min",
                "provider:yahoo",
                prov_rate,
                after_s,
            ),
        )
    }


#: the scenarios of ``bench/evaluate.py --closed-loop`` (onset 90 min: after the Monitor's
#: 30 min warm-up and an hour of baseline; 2 h observed after the recovery)
CLOSED_LOOP_SCENARIOS: Final[dict[str, ClosedLoopScenario]] = _scenarios(5400.0, 7200.0)


def quick_scenarios() -> dict[str, ClosedLoopScenario]:
    """The same scenarios, shorter: onset after 45 min, 60 min observed after the recovery."""
    return _scenarios(2700.0, 3600.0)


# ------------------------------------------------------------------------------ scopes
class ScopeIndex:
    """Which messages a scope name covers, and the scope's normal (expected) send rate.

    Messages are described by their recipient domain, IP and sender domain ids (tenant, pool
    and campaign follow from those in this fleet). ``mask`` evaluates a scope name
    (``kind:value`` or ``kind:value|provider:P``, docs/events.md) on such arrays; ``normal_rate``
    is the expected demand of the scope in messages/s, summed over the *lanes* (every (tenant,
    domain, sender, IP) with its expected rate).
    """

    def __init__(self, fleet: Fleet, calendar: Calendar, rate: float) -> None:
        self.fleet = fleet
        self.dom_index = {d: i for i, d in enumerate(fleet.dom_names)}
        self.ip_index = {ip: i for i, ip in enumerate(fleet.ip_names)}
        self.sender_index = {s: i for i, s in enumerate(fleet.sender_names)}
        self.sender_tenant: I64 = np.array(fleet.sender_tenant, dtype=np.int64)
        self.tenant_campaign = [calendar.campaign_names[s.campaign] for s in calendar.transactional]
        #: Kumo site (the sorted MX host set) of each domain, as an id
        sites: dict[tuple[str, ...], int] = {}
        self.dom_site: I64 = np.array(
            [sites.setdefault(tuple(sorted(mx)), len(sites)) for mx in fleet.dom_mx],
            dtype=np.int64,
        )
        self.site_hosts: list[tuple[str, ...]] = [k for k, _ in sorted(sites.items(), key=_v)]
        self._scopes: dict[tuple[int, int, int], tuple[str, ...]] = {}
        self._rates: dict[str, float] = {}
        self._dom_masks: dict[tuple[str, str], BOOL] = {}
        # lanes: every (tenant, domain, sender, ip) with its expected rate (messages/s)
        tshare = sum(t.share for t in TENANTS)
        parts: list[tuple[I64, I64, I64, F64]] = []
        for ti, t in enumerate(TENANTS):
            cum = fleet.tenant_dom_cum[ti]
            p_dom = np.diff(np.concatenate([[0.0], cum])) / cum[-1]
            doms = np.flatnonzero(p_dom > 0)
            scum = fleet.tenant_sender_cum[ti]
            p_snd = np.diff(np.concatenate([[0.0], scum]))
            snds = fleet.tenant_sender_ids[ti]
            ips = fleet.tenant_ips[ti]
            d, s, i = np.meshgrid(doms, np.arange(len(snds)), ips, indexing="ij")
            r = rate * t.share / tshare * p_dom[d] * p_snd[s] / len(ips)
            parts.append(
                (d.ravel(), snds[s.ravel()], i.ravel(), np.asarray(r.ravel(), dtype=np.float64))
            )
        self.lane_dom: I64 = np.concatenate([p[0] for p in parts]).astype(np.int64)
        self.lane_sender: I64 = np.concatenate([p[1] for p in parts]).astype(np.int64)
        self.lane_ip: I64 = np.concatenate([p[2] for p in parts]).astype(np.int64)
        self.lane_rate: F64 = np.concatenate([p[3] for p in parts])

    def scopes(self, dom: int, ip: int, sender: int) -> tuple[str, ...]:
        """The scope names of a message (``message_scopes``, the way the ingest names them)."""
        key = (dom, ip, sender)
        got = self._scopes.get(key)
        if got is None:
            f = self.fleet
            ti = int(self.sender_tenant[sender])
            got = self._scopes[key] = message_scopes(
                domain=f.dom_names[dom],
                provider=f.dom_provider[dom],
                mx=f.dom_operator[dom],
                ip=f.ip_names[ip],
                pool=f.pool_names[int(f.ip_pool[ip])],
                sender=f.sender_names[sender],
                tenant=f.tenant_names[ti],
                campaign=self.tenant_campaign[ti],
            )
        return got

    def mask(self, scope: str, dom: I64, ip: I64, sender: I64) -> BOOL:
        """The messages (ids of domain, IP, sender) that belong to ``scope``."""
        out = np.ones(len(dom), dtype=np.bool_)
        f = self.fleet
        for part in scope.split("|"):
            kind, _, value = part.partition(":")
            if kind == "domain":
                out &= dom == self.dom_index.get(value, -1)
            elif kind in ("provider", "mx"):
                out &= self._dom_mask(kind, value)[dom]
            elif kind == "ip":
                out &= ip == self.ip_index.get(value, -1)
            elif kind == "pool":
                pi = f.pool_names.index(value) if value in f.pool_names else -1
                out &= f.ip_pool[ip] == pi
            elif kind == "sender":
                out &= sender == self.sender_index.get(value, -1)
            elif kind == "tenant":
                ti = f.tenant_names.index(value) if value in f.tenant_names else -1
                out &= self.sender_tenant[sender] == ti
            elif kind == "campaign":
                ti = self.tenant_campaign.index(value) if value in self.tenant_campaign else -1
                out &= self.sender_tenant[sender] == ti
            else:
                out[:] = False
        return out

    def _dom_mask(self, kind: str, value: str) -> BOOL:
        """Per domain: its provider (``provider``) or MX operator (``mx``) is ``value``."""
        got = self._dom_masks.get((kind, value))
        if got is None:
            names = self.fleet.dom_provider if kind == "provider" else self.fleet.dom_operator
            got = self._dom_masks[(kind, value)] = np.array(
                [x == value for x in names], dtype=np.bool_
            )
        return got

    def normal_rate(self, scope: str) -> float:
        """Expected demand of ``scope`` in messages/s (0 for a scope no message has)."""
        got = self._rates.get(scope)
        if got is None:
            m = self.mask(scope, self.lane_dom, self.lane_ip, self.lane_sender)
            got = self._rates[scope] = float(self.lane_rate[m].sum())
        return got

    def path_rate(self, ip: int, site: int) -> float:
        """Expected demand of one egress path (sending IP -> site) in messages/s."""
        key = f"path:{ip}:{site}"
        got = self._rates.get(key)
        if got is None:
            m = (self.lane_ip == ip) & (self.dom_site[self.lane_dom] == site)
            got = self._rates[key] = float(self.lane_rate[m].sum())
        return got


def _v(kv: tuple[tuple[str, ...], int]) -> int:
    return kv[1]


# ------------------------------------------------------------------------------ demand
class Demand:
    """New messages per step at a flat rate: tenant by share, then the tenant's domain mix,
    sender mix and a uniform IP of its pool (``traffic.Fleet``); recipients from each domain's
    stable population, invalid ones fixed by a hash (as in the open-loop simulator)."""

    def __init__(self, fleet: Fleet, rate: float, seed: int) -> None:
        self.fleet = fleet
        self.rate = rate
        self.seed = seed
        tshare = sum(t.share for t in TENANTS)
        self.tenant_rate = [rate * t.share / tshare for t in TENANTS]

    def step(self, k: int, t0: float, t1: float) -> dict[str, Any]:
        """The messages created in ``[t0, t1)``, sorted by creation time (step ``k``'s own
        random stream: the same for every controller)."""
        f = self.fleet
        rng = np.random.default_rng([self.seed, 11, k])
        counts = [int(rng.poisson(r * (t1 - t0))) for r in self.tenant_rate]
        tenant = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
        n = len(tenant)
        created = rng.uniform(t0, t1, n)
        dom = np.zeros(n, dtype=np.int64)
        sender = np.zeros(n, dtype=np.int64)
        ip = np.zeros(n, dtype=np.int64)
        u_dom, u_snd, u_ip = rng.random(n), rng.random(n), rng.random(n)
        for ti in range(len(counts)):
            m = tenant == ti
            if not m.any():
                continue
            cum = f.tenant_dom_cum[ti]
            dom[m] = np.minimum(
                np.searchsorted(cum, u_dom[m] * cum[-1], side="right"), f.n_live - 1
            )
            scum = f.tenant_sender_cum[ti]
            sender[m] = f.tenant_sender_ids[ti][
                np.minimum(np.searchsorted(scum, u_snd[m], side="right"), len(scum) - 1)
            ]
            ips = f.tenant_ips[ti]
            ip[m] = ips[(u_ip[m] * len(ips)).astype(np.int64)]
        rcpt = (rng.random(n) * f.dom_pop[dom]).astype(np.int64)
        valid = (
            hash_arr(rcpt * 1_000_003 + dom * 7919 + self.seed) % 1000
            >= f.dom_invalid_permille[dom]
        )
        first = created + np.clip(rng.lognormal(math.log(2.0), 1.0, n), 0.05, 300.0)
        order = np.argsort(created, kind="stable")
        return {
            "created": created[order],
            "ready": first[order],
            "tenant": tenant[order],
            "sender": sender[order],
            "ip": ip[order],
            "dom": dom[order],
            "rcpt": rcpt[order],
            "valid": valid[order],
        }


# ------------------------------------------------------------------------------ provider
class Provider:
    """Replies to attempts: background outcomes plus the scenario's incident (package docstring).

    ``replies`` returns a reply id per attempt (-1: delivered). The rate limit keeps, per key,
    the hidden token bucket (the provider's accepted rate; fractions carried, at most one step
    saved).
    """

    def __init__(
        self,
        fleet: Fleet,
        outcomes: OutcomeTables,
        index: ScopeIndex,
        incident: Incident,
        start: float,
    ) -> None:
        self.fleet = fleet
        self.outcomes = outcomes
        self.incident = incident
        self.onset = start + incident.onset_s
        self.end = self.onset + incident.length_s
        self.dom_mask: BOOL = np.array(
            [p == incident.provider for p in fleet.dom_provider], dtype=np.bool_
        )
        self.ip_mask: BOOL = np.zeros(len(fleet.ip_names), dtype=np.bool_)
        for ipn in incident.ips:
            self.ip_mask[fleet.ip_names.index(ipn)] = True
        self.reply_ids: I64 = np.array([R[k] for k in incident.replies], dtype=np.int64)
        #: rate-limit keys: (key name, accepted messages/s)
        self.limits: list[tuple[str, float]] = []
        if incident.kind == "rate_limit":
            if incident.key == "ip":
                for ipn in incident.ips:
                    normal = index.normal_rate(f"ip:{ipn}|provider:{incident.provider}")
                    self.limits.append((ipn, incident.limit_share * normal))
            else:
                normal = index.normal_rate(f"provider:{incident.provider}")
                self.limits.append(("*", incident.limit_share * normal))
        self._tokens: dict[str, float] = {}

    def replies(
        self,
        rng: np.random.Generator,
        t: F64,
        dom: I64,
        ip: I64,
        attempt: I64,
        valid: BOOL,
        step_s: float,
    ) -> I64:
        """Reply ids of the attempts at times ``t`` (one step) of messages to ``dom`` from ``ip``
        (``attempt``: how many attempts each message had before this one)."""
        o = self.outcomes
        m = len(t)
        u = rng.random(m)
        cum = o.noise_cum[dom]
        slot = (u[:, None] >= cum).sum(axis=1)
        k_slots = cum.shape[1]
        reply = np.where(slot < k_slots, o.noise_rep[dom, np.minimum(slot, k_slots - 1)], -1)
        grey = (attempt == 0) & self.fleet.dom_greylist[dom] & (rng.random(m) < GREYLIST_P)
        reply = np.where(grey, o.dom_grey_reply[dom], reply)
        reply = np.where(valid, reply, o.dom_uu_reply[dom])
        inc = self.incident
        win = (t >= self.onset) & (t < self.end) & self.dom_mask[dom]
        pick = rng.integers(0, len(self.reply_ids), m)
        u2 = rng.random(m)
        if inc.kind == "outage":
            sel = win & (u2 < inc.intensity)
            reply = np.where(sel, self.reply_ids[pick], reply)
        elif inc.kind == "block":
            sel = win & self.ip_mask[ip] & (u2 < inc.intensity)
            reply = np.where(sel, self.reply_ids[0], reply)
        else:
            for key, per_s in self.limits:
                grp = win if key == "*" else win & (ip == self.fleet.ip_names.index(key))
                idx = np.flatnonzero(grp)
                cap = per_s * step_s
                tok = min(self._tokens.get(key, 0.0), max(cap, 1.0)) + cap
                accepted = min(len(idx), int(tok))
                self._tokens[key] = tok - accepted
                if len(idx) > accepted:
                    refused = rng.permutation(idx)[: len(idx) - accepted]
                    reply[refused] = self.reply_ids[0]
        return np.asarray(reply, dtype=np.int64)
