"""Closed-loop throttle evaluation: a fleet that obeys a throttle and a provider that answers what
the fleet sends (issue 13, docs/evaluation.md "Closed-loop throttle evaluation").

The open-loop simulator (``simulator.py``) writes its events whatever anybody decides; here the
sending fleet and the provider are stepped together, one detection tick (``DETECT_EVERY_S``, 60 s
of event time) at a time, so that what a controller decides changes what the provider sees:

* **Demand** (:class:`Demand`): new messages at a flat rate (no diurnal curve, no campaign
  bursts, so that "normal volume" is one number), drawn from the simulator's population
  (``traffic.Fleet``: recipient domains and their MX hosts, tenants, sender domains, pools, IPs;
  each tenant's transactional campaign). The demand's random stream does not depend on the
  controller: every controller faces the same messages.
* **Fleet** (:class:`ClosedLoop`): a queue of messages. In each step the messages that are due
  (new ones, retries whose time came, and those held back earlier) are sent, except where the
  controller's limits of the step say otherwise: the controller maps each due message to a
  *bucket* (a decision's scope for repmon, an egress path for KumoMTA) with a rate in messages
  per second, computed from the decisions published at the end of the **previous** tick. A
  bucket sends at most its tokens (rate x step, fractions carried over, at most one step's worth
  saved), oldest due first; the rest stay queued (held: they count as delayed, with the time
  held). repmon's rate is ``rate_factor`` x the scope's normal rate (its expected demand, the
  "usual rate" of docs/throttle.md), so a pause with probes still sends the probe share.
  Deferred messages are retried after 5, 10, 20, 30, 45, 60 min (+-20 %, greylisting 5-12 min)
  and bounced as expired after 7 attempts, as in the open-loop simulator. The fleet's own
  shaping (what it does with no decision in force) caps each sending IP -> provider path at
  ``SHAPING_HEADROOM`` x its normal rate, so a released backlog drains over minutes.
* **Provider** (:class:`Provider`): the simulator's background outcomes (noise replies per
  domain, greylisting, unknown users), and during the incident window ``[onset, end)`` of the
  scenario (:class:`Incident`): an **outage** fails ``intensity`` of the attempts at the
  provider with 4xx transient replies; a **rate limit** accepts at most a hidden rate per key
  (per sending IP or for the whole provider) and answers every attempt above it with the
  provider's 4.7.28-style deferral (so retries of deferred mail make it worse); a **block**
  refuses every attempt from the blocked IPs with the provider's 5.7.1 block-list reply
  (bounced, not retried). After ``end`` the provider is healthy again.
* **Controllers**: :class:`RepmonControl` turns the step's events into canonical events
  (docs/events.md, the dicts ``output.EventOutput`` builds) and feeds them as JSON lines through
  the real ingest ``Pipeline``, ``Monitor`` and ``Acting`` (the throttle controller), exactly as
  ``repmon replay`` does; the fleet reads the decisions with ``most_restrictive`` over each
  message's ``message_scopes``. :class:`NoThrottle` sends everything. :class:`KumoControl`
  models KumoMTA's traffic shaping automation (tsa-daemon): regex rules over the reply text,
  scoped to the default, a destination domain's site or an MX suffix, counted per egress path
  (source -> site) with an ``Immediate`` or ``Threshold`` trigger, setting fixed values
  (``max_message_rate``, ``connection_limit``, ...) or a suspension for a fixed duration that
  each new trigger extends (:data:`KUMO_RULES`: its shipped defaults and the community rules
  for the providers the simulator speaks for).

Per step the run records, on the scenario's act scope, the attempts, failures, deliveries, the
queue, and the *rate factor*: the share of the scope's normal volume the controller lets the
fleet send, measured on ``PROBE_LANES`` lanes of the scope drawn by demand (so it moves only
when the controller's decisions do). :func:`closed_loop_metrics` scores a run.

Everything is pure and deterministic from the seed: numpy and the standard library, event time
only. ``bench/evaluate.py --closed-loop`` runs every scenario with every controller and scores
them (:func:`closed_loop_metrics`).
"""

from __future__ import annotations

import json
import math
import re
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import numpy as np

from models.act.acting import Acting
from models.act.throttle_config import ThrottleConfig
from models.act.throttle_record import ThrottleRecord, message_scopes, most_restrictive
from models.detect.config import DETECT_EVERY_S
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline
from models.sim.config import (
    BOOL,
    DEFAULT_START,
    F64,
    I64,
    K_BOUNCED,
    K_DEFERRED,
    K_DELIVERED,
    K_SENT,
    MINUTE,
    SimConfig,
)
from models.sim.lifecycle import BACKOFF_MIN, MAX_ATTEMPTS
from models.sim.output import EV_FIELDS, EventOutput
from models.sim.replies import REPLIES, R
from models.sim.traffic import GREYLIST_P, TENANTS, Calendar, Fleet, OutcomeTables, hash_arr

#: one fleet step = one detection tick of event time
TICK_S: Final[float] = DETECT_EVERY_S
#: recovery: the fleet's attempts on the act scope back to this share of the normal volume
RECOVERED_SHARE: Final[float] = 0.95
#: ... in the minute and on average over this many minutes from it
RECOVERED_WINDOW_MIN: Final[int] = 5
#: throughput of one SMTP connection (messages/s) when a KumoMTA rule sets ``connection_limit``
KUMO_MSGS_PER_CONNECTION_S: Final[float] = 1.0
#: deliveries per connection (KumoMTA's default ``max_deliveries_per_connection``), to turn a
#: ``max_connection_rate`` into messages
KUMO_DELIVERIES_PER_CONNECTION: Final[int] = 100
CONTROLLERS: Final[tuple[str, ...]] = ("repmon", "none", "kumo")
#: the fleet's own shaping (what it does with no decision in force): per sending IP -> provider,
#: this many times the path's normal rate (campaign bursts reach several times the mean) ...
SHAPING_HEADROOM: Final[float] = 3.0
#: ... and at least this many messages/s
SHAPING_FLOOR_PER_S: Final[float] = 1.0
#: lanes of the act scope (drawn by expected demand) on which its capacity share is measured
PROBE_LANES: Final[int] = 256


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
    """Replies to attempts: background outcomes plus the scenario's incident (module docstring).

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


# ------------------------------------------------------------------------------ controllers
@dataclass
class Limits:
    """A controller's limits for the due messages of one step.

    ``bucket[i]``: the bucket of due message ``i`` (-1: not limited); ``keys[b]`` names bucket
    ``b`` and ``rate[b]`` is its rate in messages/s (0: held entirely); ``factor[i]`` is the
    share of its normal rate message ``i``'s traffic may use (for the report's plot).
    """

    bucket: I64
    keys: list[str]
    rate: F64
    factor: F64

    @classmethod
    def unlimited(cls, n: int) -> Limits:
        return cls(np.full(n, -1, dtype=np.int64), [], np.zeros(0, dtype=np.float64), np.ones(n))


@dataclass
class StepEvents:
    """What the fleet did in one step: the event table (``output.EV_FIELDS`` columns, sorted
    by time) of ``[t0, t1)``; ``dicts()`` builds the canonical events."""

    t0: float
    t1: float
    table: dict[str, Any]
    output: EventOutput

    def dicts(self) -> list[dict[str, Any]]:
        return self.output.dicts(self.table)


class Controller(Protocol):
    """A fleet controller: limits for the due messages, then the step's events."""

    name: str

    def limits(self, now: float, dom: I64, ip: I64, sender: I64) -> Limits: ...

    def observe(self, step: StepEvents) -> None: ...


class NoThrottle:
    """The fleet left alone: every due message is sent."""

    name = "none"

    def limits(self, now: float, dom: I64, ip: I64, sender: I64) -> Limits:
        return Limits.unlimited(len(dom))

    def observe(self, step: StepEvents) -> None:
        return None


def _lane_keys(dom: I64, ip: I64, sender: I64, n_ip: int, n_sender: int) -> tuple[I64, I64]:
    key = (dom * n_ip + ip) * n_sender + sender
    uniq, inv = np.unique(key, return_inverse=True)
    return uniq.astype(np.int64), inv.astype(np.int64).ravel()


class RepmonControl:
    """repmon in the loop: canonical events -> ``Pipeline`` -> ``Monitor`` -> ``Acting``.

    Each step's events go through the real ingest pipeline (as JSON lines, ``feed_many``), the
    Deltas into the Monitor, and ``Acting.advance_through`` runs the detectors and steps the
    throttle controller at the tick boundary (as the worker and ``repmon replay`` do). The
    fleet applies ``most_restrictive`` over each message's scopes, among the decisions in force
    at the step's start; the bucket is the winning decision's scope, at ``rate_factor`` x that
    scope's normal rate.
    """

    name = "repmon"

    def __init__(
        self,
        index: ScopeIndex,
        config: ThrottleConfig | None = None,
        monitor_config: MonitorConfig | None = None,
        tick_s: float = TICK_S,
    ) -> None:
        self.index = index
        self.tick_s = tick_s
        self.pipeline = Pipeline()
        self.monitor = Monitor(monitor_config or MonitorConfig())
        self.acting = Acting(self.monitor, config=config)
        #: every throttle record issued, in order
        self.records: list[ThrottleRecord] = []
        #: incident changes as JSON (``IncidentChange.to_json``), in order
        self.incidents: list[dict[str, Any]] = []
        self.rejected = 0
        self.events = 0
        n_ip, n_snd = len(index.fleet.ip_names), len(index.fleet.sender_names)
        self._dims = (n_ip, n_snd)

    def limits(self, now: float, dom: I64, ip: I64, sender: I64) -> Limits:
        live = self.acting.controller.live
        n = len(dom)
        if not live or n == 0:
            return Limits.unlimited(n)
        uniq, inv = _lane_keys(dom, ip, sender, *self._dims)
        n_ip, n_snd = self._dims
        keys: list[str] = []
        key_ids: dict[str, int] = {}
        rates: list[float] = []
        lane_bucket = np.full(len(uniq), -1, dtype=np.int64)
        lane_factor = np.ones(len(uniq), dtype=np.float64)
        for j, k in enumerate(uniq.tolist()):
            rest, s = divmod(k, n_snd)
            d, i = divmod(rest, n_ip)
            rec = most_restrictive(self.index.scopes(d, i, s), live, now)
            if rec is None:
                continue
            b = key_ids.get(rec.scope)
            if b is None:
                b = key_ids[rec.scope] = len(keys)
                keys.append(rec.scope)
                rates.append(rec.rate_factor * self.index.normal_rate(rec.scope))
            lane_bucket[j] = b
            lane_factor[j] = rec.rate_factor
        return Limits(lane_bucket[inv], keys, np.array(rates, dtype=np.float64), lane_factor[inv])

    def observe(self, step: StepEvents) -> None:
        raws = [json.dumps(e, separators=(",", ":")).encode() for e in step.dicts()]
        self.events += len(raws)
        self.rejected += len(self.pipeline.feed_many(raws))
        d = self.pipeline.flush()
        self.monitor.add(d)
        changes, records = self.acting.advance_through(step.t1, self.tick_s)
        self.incidents.extend(ch.to_json() for ch in changes)
        self.records.extend(records)


#: a KumoMTA rule's actions: (option or "suspend", value)
_Actions = tuple[tuple[str, float], ...]


@dataclass(frozen=True)
class KumoRule:
    """One KumoMTA traffic-shaping automation rule (``[[<scope>.automation]]``).

    ``scope``: ``default`` (every destination), ``domain:<d>`` (the site of ``d``'s MX hosts,
    ``mx_rollup``) or ``mx_suffix:<s>`` (a ``[provider.X]`` block matching ``MXSuffix``).
    ``actions``: ``("suspend", 0)`` or ``(<option>, value)`` with ``max_message_rate`` and
    ``max_connection_rate`` in per-second units and ``connection_limit`` a count.
    ``threshold`` 0 is the ``Immediate`` trigger (every match acts), else ``N`` matches within
    ``period_s`` (``{Threshold="N/hr"}``). Every trigger sets the action's expiry to the match
    time + ``duration_s`` (tsa-daemon's upsert), so it lasts ``duration_s`` after the last one.
    """

    origin: str
    scope: str
    regex: str
    actions: _Actions
    duration_s: float
    threshold: int = 0
    period_s: float = 3600.0


_PER_MIN: Final = 1.0 / 60.0
_IP: Final = r"\[?\d+\.\d+\.\d+\.\d+\]?"

#: KumoMTA's automation rules for the replies the simulator produces: the defaults of
#: ``assets/policy-extras/shaping.toml`` and the community rules of
#: ``assets/community/shaping.toml`` for Gmail, Yahoo and Outlook.com (the web.de, orange.fr,
#: qq.com and 163.com rules match no reply the simulator speaks). The default rule's IP
#: patterns accept an address in brackets too (Microsoft and Gmail write ``[1.2.3.4]``): as
#: shipped they would not fire on those replies at all.
KUMO_RULES: Final[tuple[KumoRule, ...]] = (
    KumoRule(
        "default",
        "default",
        "|".join(
            (
                rf"Messages from {_IP} temporarily deferred",
                rf"All messages from {_IP} will be permanently deferred",
                r"has been temporarily rate limited due to IP reputation",
                rf"Unfortunately, messages from {_IP} weren.t sent",
                r"Server busy\. Please try again later from",
            )
        ),
        (("max_message_rate", _PER_MIN), ("connection_limit", 1.0)),
        90 * MINUTE,
    ),
    KumoRule("default", "mx_suffix:.yahoodns.net", r"\[TS?S04\]", (("suspend", 0.0),), 7200.0),
    KumoRule(
        "default",
        "domain:comcast.net",
        r"RL0000",
        (("max_connection_rate", 10000 / 3600),),
        7200.0,
        threshold=2,
    ),
    KumoRule(
        "community",
        "domain:gmail.com",
        r"Our system has detected that this message",
        (("suspend", 0.0),),
        3600.0,
        threshold=5,
    ),
    KumoRule(
        "community",
        "domain:gmail.com",
        r"Our system has detected an unusual rate",
        (("max_message_rate", 10 * _PER_MIN),),
        1800.0,
        threshold=2,
    ),
    KumoRule(
        "community",
        "domain:yahoo.com",
        r"421 4\.7\.0 \[TSS04\]",
        (("suspend", 0.0),),
        7200.0,
        threshold=2,
    ),
    KumoRule(
        "community",
        "domain:outlook.com",
        r"Unfortunately.*part of their network is on our block list",
        (("suspend", 0.0),),
        7200.0,
        threshold=5,
    ),
    KumoRule(
        "community",
        "domain:outlook.com",
        r"Server busy. Please try again later",
        (("suspend", 0.0),),
        1800.0,
        threshold=5,
    ),
    KumoRule(
        "community",
        "domain:outlook.com",
        r"The mail server.*has been temporarily rate limited",
        (("suspend", 0.0),),
        1800.0,
        threshold=3,
    ),
    KumoRule(
        "community",
        "domain:outlook.com",
        r"Server busy. Please try again later",
        (("max_message_rate", _PER_MIN),),
        900.0,
        threshold=3,
    ),
    KumoRule(
        "community",
        "domain:outlook.com",
        r"Temporary server error. Please try again later",
        (("suspend", 0.0),),
        3600.0,
        threshold=5,
    ),
)


class KumoControl:
    """KumoMTA-style automation (tsa-daemon) driving the fleet (see :class:`KumoRule`).

    Every deferral or bounce of the step is matched against the rules whose scope covers its
    site; matches are counted per (rule, egress path = sending IP -> site). A triggered rule
    (re)sets its action on that path until the match time + its duration. The fleet applies the
    actions in force at the step's start: a suspension holds the path, ``max_message_rate``
    caps it, ``connection_limit`` caps it at that many connections x
    ``KUMO_MSGS_PER_CONNECTION_S``, ``max_connection_rate`` at that rate x
    ``KUMO_DELIVERIES_PER_CONNECTION``; the tightest applies. Like kumod with tsa-daemon, the
    actions take effect from the next step (suspensions are pushed, the shaping overlay is
    polled).
    """

    name = "kumo"

    def __init__(self, index: ScopeIndex, rules: Sequence[KumoRule] = KUMO_RULES) -> None:
        self.index = index
        self.rules = list(rules)
        self._rx = [re.compile(r.regex) for r in self.rules]
        f = index.fleet
        n_sites = len(index.site_hosts)
        #: per rule: which sites it covers
        self._covers: list[BOOL] = []
        for r in self.rules:
            kind, _, value = r.scope.partition(":")
            if kind == "default":
                cov = np.ones(n_sites, dtype=np.bool_)
            elif kind == "domain":
                cov = np.zeros(n_sites, dtype=np.bool_)
                di = index.dom_index.get(value)
                if di is not None:
                    cov[int(index.dom_site[di])] = True
            elif kind == "mx_suffix":
                cov = np.array(
                    [bool(h) and all(x.endswith(value) for x in h) for h in index.site_hosts],
                    dtype=np.bool_,
                )
            else:
                raise ValueError(f"unknown KumoMTA rule scope {r.scope!r}")
            self._covers.append(cov)
        self._fleet = f
        self._match_cache: dict[tuple[int, int, int, int], tuple[int, ...]] = {}
        self._hits: dict[tuple[int, int, int], deque[float]] = {}
        #: (ip, site) -> {rule index: (actions, expires)}
        self.actions: dict[tuple[int, int], dict[int, tuple[_Actions, float]]] = {}
        #: every trigger: (time, rule index, ip, site)
        self.triggers: list[tuple[float, int, int, int]] = []
        self._n_sites = n_sites

    def _matches(self, reply: int, ip: int, dom: int, sender: int) -> tuple[int, ...]:
        key = (reply, ip, dom, sender)
        got = self._match_cache.get(key)
        if got is None:
            f = self._fleet
            text = REPLIES[reply].text
            if "{" in text:  # the reply as the provider words it (no rule reads the tokens)
                text = text.format(
                    ip=f.ip_names[ip],
                    sender=f.sender_names[sender],
                    domain=f.dom_names[dom],
                    tok="000000000000",
                    fe="DM6NAM12FT000",
                    n=10,
                )
            site = int(self.index.dom_site[dom])
            got = self._match_cache[key] = tuple(
                j
                for j, rx in enumerate(self._rx)
                if self._covers[j][site] and rx.search(text) is not None
            )
        return got

    def observe(self, step: StepEvents) -> None:
        tab = step.table
        fail = np.flatnonzero((tab["kind"] == K_DEFERRED) | (tab["kind"] == K_BOUNCED))
        if not len(fail):
            return
        cols = [tab[k][fail].tolist() for k in ("t", "reply", "ip", "dom", "sender")]
        dom_site = self.index.dom_site
        for t, reply, ip, dom, sender in zip(*cols, strict=True):
            for j in self._matches(reply, ip, dom, sender):
                rule = self.rules[j]
                site = int(dom_site[dom])
                if rule.threshold > 0:
                    q = self._hits.setdefault((j, ip, site), deque())
                    q.append(t)
                    while q and q[0] < t - rule.period_s:
                        q.popleft()
                    if len(q) < rule.threshold:
                        continue
                self.actions.setdefault((ip, site), {})[j] = (rule.actions, t + rule.duration_s)
                self.triggers.append((t, j, ip, site))

    def _path_rate(self, ip: int, site: int, now: float) -> float | None:
        """The path's allowed messages/s at ``now`` (None: not limited)."""
        acts = self.actions.get((ip, site))
        if not acts:
            return None
        best: float | None = None
        for j in [j for j, (_, exp) in acts.items() if exp <= now]:
            del acts[j]
        for actions, _ in acts.values():
            for name, value in actions:
                if name == "suspend":
                    r = 0.0
                elif name == "max_message_rate":
                    r = value
                elif name == "connection_limit":
                    r = value * KUMO_MSGS_PER_CONNECTION_S
                elif name == "max_connection_rate":
                    r = value * KUMO_DELIVERIES_PER_CONNECTION
                else:
                    continue
                best = r if best is None else min(best, r)
        return best

    def limits(self, now: float, dom: I64, ip: I64, sender: I64) -> Limits:
        n = len(dom)
        if not self.actions or n == 0:
            return Limits.unlimited(n)
        site = self.index.dom_site[dom]
        key = ip * self._n_sites + site
        uniq, inv = np.unique(key, return_inverse=True)
        keys: list[str] = []
        rates: list[float] = []
        pb = np.full(len(uniq), -1, dtype=np.int64)
        pf = np.ones(len(uniq), dtype=np.float64)
        for j, k in enumerate(uniq.tolist()):
            i, s = divmod(k, self._n_sites)
            r = self._path_rate(i, s, now)
            if r is None:
                continue
            pb[j] = len(keys)
            keys.append(f"{self._fleet.ip_names[i]}->{'|'.join(self.index.site_hosts[s])}")
            rates.append(r)
            normal = self.index.path_rate(i, s)
            pf[j] = 1.0 if normal <= 0 else min(1.0, r / normal)
        inv = inv.ravel()
        return Limits(pb[inv], keys, np.array(rates, dtype=np.float64), pf[inv])


# ------------------------------------------------------------------------------ the loop
@dataclass
class ClosedLoopResult:
    """One run: per-minute series on the act scope and fleet-wide, and what was held."""

    scenario: str
    controller: str
    start: float
    step_s: float
    onset: float
    end: float
    act_scope: str
    #: expected demand of the act scope, messages per step (the "normal volume")
    normal_per_step: float
    series: dict[str, list[float]] = field(default_factory=dict)
    #: per message held by the controller at least once: total time held (s); and whether it
    #: was a message of the act scope
    held_s: list[float] = field(default_factory=list)
    held_act: list[bool] = field(default_factory=list)
    messages: int = 0
    #: time from creation to delivery (s) of the act scope's messages created in the incident
    latency_s: list[float] = field(default_factory=list)
    #: messages still queued at the end of the run
    queued_at_end: int = 0
    #: repmon: throttle records of the run (JSON), incident changes (JSON), events fed
    records: list[dict[str, Any]] = field(default_factory=list)
    incidents: list[dict[str, Any]] = field(default_factory=list)
    events: int = 0
    rejected: int = 0
    #: kumo: triggers of the run, (time, rule origin, regex, sending ip, site)
    triggers: list[tuple[float, str, str, str, str]] = field(default_factory=list)
    seconds: float = 0.0


_SERIES: Final = (
    "t",
    "new_act",
    "attempts_act",
    "failed_act",
    "delivered_act",
    "queued_act",
    "factor_act",
    "attempts_all",
    "failed_all",
    "held_now",
)


class _Store:
    """The fleet's messages (struct of arrays, grown by doubling)."""

    _F: Final = ("created", "ready", "held", "delivered_at")
    _I: Final = ("tenant", "sender", "ip", "dom", "rcpt", "attempts")
    _B: Final = ("valid", "act", "done")

    def __init__(self) -> None:
        self.n = 0
        self.cap = 0
        self.a: dict[str, Any] = {}
        self._grow(1 << 16)

    def _grow(self, cap: int) -> None:
        new: dict[str, Any] = {}
        for k in self._F:
            new[k] = np.full(cap, np.nan if k == "delivered_at" else 0.0, dtype=np.float64)
        for k in self._I:
            new[k] = np.zeros(cap, dtype=np.int64)
        for k in self._B:
            new[k] = np.zeros(cap, dtype=np.bool_)
        for k, v in self.a.items():
            new[k][: self.n] = v[: self.n]
        self.a, self.cap = new, cap

    def add(self, cols: dict[str, Any], act: BOOL) -> I64:
        m = len(cols["created"])
        if self.n + m > self.cap:
            self._grow(max(2 * self.cap, self.n + m))
        ids = np.arange(self.n, self.n + m, dtype=np.int64)
        for k in ("created", "ready", "tenant", "sender", "ip", "dom", "rcpt", "valid"):
            self.a[k][ids] = cols[k]
        self.a["act"][ids] = act
        self.n += m
        return ids


class ClosedLoop:
    """One scenario with one controller, stepped one tick at a time (module docstring)."""

    def __init__(
        self,
        scenario: ClosedLoopScenario,
        controller: str = "repmon",
        seed: int = 1,
        rate: float = 40.0,
        start: float = DEFAULT_START,
        throttle_config: ThrottleConfig | None = None,
        kumo_rules: Sequence[KumoRule] = KUMO_RULES,
        step_s: float = TICK_S,
        headroom: float = SHAPING_HEADROOM,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.scenario = scenario
        self.seed = seed
        self.step_s = step_s
        self.start = float(start)
        self.end = self.start + scenario.duration_s
        cfg = SimConfig(seed=seed, start=self.start, duration_s=scenario.duration_s, rate=rate)
        self.fleet = Fleet(cfg)
        self.outcomes = OutcomeTables(self.fleet)
        self.calendar = Calendar(cfg)
        self.index = ScopeIndex(self.fleet, self.calendar, rate)
        self.output = EventOutput(self.start, self.end, self.fleet, self.calendar)
        self.demand = Demand(self.fleet, rate, seed)
        self.provider = Provider(
            self.fleet, self.outcomes, self.index, scenario.incident, self.start
        )
        self.control: Controller
        if controller == "repmon":
            self.control = RepmonControl(self.index, throttle_config, tick_s=step_s)
        elif controller == "none":
            self.control = NoThrottle()
        elif controller == "kumo":
            self.control = KumoControl(self.index, kumo_rules)
        else:
            raise ValueError(f"unknown controller {controller!r}; one of {', '.join(CONTROLLERS)}")
        # the fleet's own shaping: per sending IP -> provider, `headroom` x its normal rate
        provs = sorted(set(self.fleet.dom_provider))
        self._n_prov = len(provs)
        self._dom_prov: I64 = np.array(
            [provs.index(p) for p in self.fleet.dom_provider], dtype=np.int64
        )
        normal = np.zeros(len(self.fleet.ip_names) * self._n_prov, dtype=np.float64)
        ix = self.index
        np.add.at(normal, ix.lane_ip * self._n_prov + self._dom_prov[ix.lane_dom], ix.lane_rate)
        self._shaping: F64 = np.maximum(headroom * normal, SHAPING_FLOOR_PER_S)
        self.store = _Store()
        self._active: I64 = np.zeros(0, dtype=np.int64)
        self._tokens: dict[str, float] = {}
        # PROBE_LANES lanes of the act scope drawn by their expected demand (the factor series)
        ix = self.index
        lanes = np.flatnonzero(ix.mask(scenario.act_scope, ix.lane_dom, ix.lane_ip, ix.lane_sender))
        if len(lanes):
            w = ix.lane_rate[lanes] / ix.lane_rate[lanes].sum()
            pick = np.random.default_rng([seed, 13]).choice(lanes, PROBE_LANES, p=w)
        else:
            pick = np.zeros(0, dtype=np.int64)
        self._probe = (ix.lane_dom[pick], ix.lane_ip[pick], ix.lane_sender[pick])
        self._msg_campaign: I64 = np.array(
            [s.campaign for s in self.calendar.transactional], dtype=np.int64
        )

    # -------------------------------------------------------------------- one step
    def _take(self, bucket: I64, keys: Sequence[str], rate: F64, dt: float) -> BOOL:
        """Which of the due messages (in due order) their buckets let through in ``dt``
        seconds: a bucket sends at most its tokens (``rate`` x ``dt`` plus the fraction carried,
        at most one step's worth saved), oldest due first. ``bucket`` -1: not limited."""
        sel = np.ones(len(bucket), dtype=np.bool_)
        limited = np.flatnonzero(bucket >= 0)
        if not len(limited):
            return sel
        nb = len(keys)
        counts = np.bincount(bucket[limited], minlength=nb)
        allowed = np.zeros(nb, dtype=np.int64)
        for j, key in enumerate(keys):
            cap = float(rate[j]) * dt
            tok = min(self._tokens.get(key, 0.0), max(cap, 1.0)) + cap
            allowed[j] = min(int(counts[j]), int(tok))
            self._tokens[key] = tok - allowed[j]
        o = limited[np.argsort(bucket[limited], kind="stable")]
        bb = bucket[o]
        first = np.searchsorted(bb, bb, side="left")
        sel[o] = np.arange(len(o)) - first < allowed[bb]
        return sel

    def _select(self, due: I64, lim: Limits, t0: float, t1: float) -> BOOL:
        """The due messages sent this step: the controller's limits, then the fleet's own
        shaping (``headroom`` x the normal rate of each sending IP -> provider path); tokens
        of the controller's buckets not used because of the shaping are given back."""
        dt = t1 - t0
        keys = [f"c:{k}" for k in lim.keys]
        sel = self._take(lim.bucket, keys, lim.rate, dt)
        a = self.store.a
        go = np.flatnonzero(sel)
        path = a["ip"][due[go]] * self._n_prov + self._dom_prov[a["dom"][due[go]]]
        uniq, inv = np.unique(path, return_inverse=True)
        ok = self._take(
            np.asarray(inv, dtype=np.int64).ravel(),
            [f"s:{p}" for p in uniq.tolist()],
            self._shaping[uniq],
            dt,
        )
        refused = go[~ok]
        sel[refused] = False
        rb = lim.bucket[refused]
        for j, n in enumerate(np.bincount(rb[rb >= 0], minlength=len(keys)).tolist()):
            if n:
                self._tokens[keys[j]] += n
        return sel

    def step(self, k: int) -> tuple[StepEvents, dict[str, float]]:
        """Step ``k``: new messages, the due ones sent under the controller's limits, the
        provider's replies; returns the step's events and its series values."""
        st = self.store
        t0 = self.start + k * self.step_s
        t1 = min(t0 + self.step_s, self.end)
        new = self.demand.step(k, t0, t1)
        act_new = self.index.mask(self.scenario.act_scope, new["dom"], new["ip"], new["sender"])
        ids = st.add(new, act_new)
        a = st.a  # after add: it may have grown the arrays
        active = np.concatenate([self._active, ids])
        due = active[a["ready"][active] < t1]
        due = due[np.argsort(a["ready"][due], kind="stable")]
        lim = self.control.limits(t0, a["dom"][due], a["ip"][due], a["sender"][due])
        sel = self._select(due, lim, t0, t1)
        # the act scope's capacity share: the limits on a fixed demand-weighted sample of its
        # lanes (so the series moves only when the controller's decisions do)
        pd, pi, ps = self._probe
        factor = float(self.control.limits(t0, pd, pi, ps).factor.mean()) if len(pd) else 1.0
        go = due[sel]
        rng = np.random.default_rng([self.seed, 12, k])
        ready = a["ready"][go]
        waited = ready < t0
        ta = np.where(waited, t0 + rng.random(len(go)) * (t1 - t0), ready)
        a["held"][go] += np.where(waited, ta - ready, 0.0)
        order = np.argsort(ta, kind="stable")
        go, ta = go[order], ta[order]
        attempt = a["attempts"][go].copy()
        reply = self.provider.replies(
            rng, ta, a["dom"][go], a["ip"][go], attempt, a["valid"][go], t1 - t0
        )
        kind = np.where(reply < 0, K_DELIVERED, self.outcomes.reply_kind[np.maximum(reply, 0)])
        dl = kind == K_DELIVERED
        a["delivered_at"][go[dl]] = ta[dl]
        a["done"][go[kind != K_DEFERRED]] = True
        dfm = kind == K_DEFERRED
        df = go[dfm]
        a["attempts"][df] += 1
        # retry after the simulator's backoff (greylisting: 5-12 min); after MAX_ATTEMPTS the
        # MTA gives up and bounces the message as expired
        grey = self.outcomes.is_grey_reply[reply[dfm]]
        nth = np.minimum(attempt[dfm], len(BACKOFF_MIN) - 1)
        back = np.where(
            grey,
            rng.uniform(5.0, 12.0, len(df)),
            np.asarray(BACKOFF_MIN, dtype=np.float64)[nth] * rng.uniform(0.8, 1.2, len(df)),
        )
        a["ready"][df] = ta[dfm] + back * MINUTE
        gone = a["attempts"][df] >= MAX_ATTEMPTS
        expired = df[gone]
        a["done"][expired] = True
        exp_t = np.minimum(ta[dfm][gone] + 1e-3, np.nextafter(t1, t0))
        # events of the step: sent, the attempts, the expiries (tok: the attempt's number)
        tab = self._table(
            [
                (
                    a["created"][ids],
                    ids,
                    np.full(len(ids), K_SENT),
                    np.full(len(ids), -1),
                    np.zeros(len(ids), dtype=np.int64),
                ),
                (ta, go, kind, reply, attempt),
                (
                    exp_t,
                    expired,
                    np.full(len(expired), K_BOUNCED),
                    np.full(len(expired), R["expired"]),
                    np.full(len(expired), MAX_ATTEMPTS),
                ),
            ]
        )
        events = StepEvents(t0, t1, tab, self.output)
        self._active = active[~a["done"][active]]
        act_go = a["act"][go]
        failed = kind != K_DELIVERED
        queued = self._active[a["ready"][self._active] < t1]
        vals = {
            "t": t0,
            "new_act": float(act_new.sum()),
            "attempts_act": float(act_go.sum()),
            "failed_act": float((act_go & failed).sum()),
            "delivered_act": float((act_go & dl).sum()),
            "queued_act": float(a["act"][queued].sum()),
            "factor_act": factor,
            "attempts_all": float(len(go)),
            "failed_all": float(failed.sum()),
            "held_now": float(len(queued)),
        }
        return events, vals

    def _table(self, parts: Iterable[tuple[F64, I64, Any, Any, I64]]) -> dict[str, Any]:
        a = self.store.a
        cols: dict[str, list[Any]] = {k: [] for k in EV_FIELDS}
        for t, ids, kind, reply, tok in parts:
            if not len(ids):
                continue
            cols["t"].append(np.asarray(t, dtype=np.float64))
            cols["kind"].append(np.asarray(kind, dtype=np.int64))
            cols["msg"].append(ids)
            cols["tenant"].append(a["tenant"][ids])
            cols["campaign"].append(self._msg_campaign[a["tenant"][ids]])
            cols["sender"].append(a["sender"][ids])
            cols["ip"].append(a["ip"][ids])
            cols["dom"].append(a["dom"][ids])
            cols["rcpt"].append(a["rcpt"][ids])
            cols["reply"].append(np.asarray(reply, dtype=np.int64))
            cols["tok"].append(np.asarray(tok, dtype=np.int64))
        tab = {
            k: (np.concatenate(v) if v else np.zeros(0, dtype=np.float64 if k == "t" else np.int64))
            for k, v in cols.items()
        }
        order = np.lexsort((tab["kind"], tab["t"]))
        return {k: v[order] for k, v in tab.items()}

    # -------------------------------------------------------------------- the run
    def run(self) -> ClosedLoopResult:
        inc = self.scenario.incident
        onset = self.start + inc.onset_s
        end = onset + inc.length_s
        res = ClosedLoopResult(
            self.scenario.name,
            self.control.name,
            self.start,
            self.step_s,
            onset,
            end,
            self.scenario.act_scope,
            self.index.normal_rate(self.scenario.act_scope) * self.step_s,
            series={k: [] for k in _SERIES},
        )
        n_steps = math.ceil((self.end - self.start) / self.step_s - 1e-9)
        for k in range(n_steps):
            events, vals = self.step(k)
            self.control.observe(events)
            for key, v in vals.items():
                res.series[key].append(v)
        a, n = self.store.a, self.store.n
        held = a["held"][:n].copy()
        queued = self._active[a["ready"][self._active] < self.end]
        held[queued] += self.end - a["ready"][queued]  # still waiting at the end
        h = held > 0
        res.held_s = held[h].tolist()
        res.held_act = a["act"][:n][h].tolist()
        res.messages = n
        res.queued_at_end = len(queued)
        in_inc = a["act"][:n] & (a["created"][:n] >= onset) & (a["created"][:n] < end)
        lat = a["delivered_at"][:n][in_inc] - a["created"][:n][in_inc]
        res.latency_s = lat[np.isfinite(lat)].tolist()
        if isinstance(self.control, RepmonControl):
            ctl = self.control
            res.records = [r.to_json() for r in ctl.records]
            res.incidents = ctl.incidents
            res.events, res.rejected = ctl.events, ctl.rejected
        elif isinstance(self.control, KumoControl):
            kc = self.control
            res.triggers = [
                (
                    t,
                    kc.rules[j].origin,
                    kc.rules[j].regex,
                    self.fleet.ip_names[i],
                    "|".join(self.index.site_hosts[s]),
                )
                for t, j, i, s in kc.triggers
            ]
        return res


def run_closed_loop(
    scenario: ClosedLoopScenario,
    controller: str,
    seed: int = 1,
    rate: float = 40.0,
    throttle_config: ThrottleConfig | None = None,
) -> ClosedLoopResult:
    """Run one scenario with one controller (``repmon``, ``none`` or ``kumo``)."""
    import time

    t0 = time.perf_counter()
    res = ClosedLoop(scenario, controller, seed, rate, throttle_config=throttle_config).run()
    res.seconds = time.perf_counter() - t0
    return res


# ------------------------------------------------------------------------------ metrics
def reversals(factors: Sequence[float], eps: float = 1e-6) -> tuple[int, int]:
    """(reversals, direction changes) of a rate-factor series: a *reversal* is a cut after
    the factor went up (a re-tightening after a ramp started, the policy's own definition);
    a direction change is any change of the sign of the moves (down -> up counts too)."""
    rev = changes = 0
    last = 0
    prev: float | None = None
    for f in factors:
        if prev is not None and abs(f - prev) > eps:
            d = 1 if f > prev else -1
            if last and d != last:
                changes += 1
                if d < 0:
                    rev += 1
            last = d
        prev = f
    return rev, changes


def recovery_time(
    share: Sequence[float],
    t: Sequence[float],
    recovered_at: float,
    level: float = RECOVERED_SHARE,
    window: int = RECOVERED_WINDOW_MIN,
) -> float | None:
    """Seconds from ``recovered_at`` to the first step from which the act scope's capacity
    share (the share of its normal volume the controller lets the fleet send) is at least
    ``level`` for ``window`` steps in a row (or to the end of the run); None when it never is.
    0 when it already is at ``recovered_at``."""
    n = len(share)
    ok = [x >= level - 1e-9 for x in share]
    for i in range(n):
        if t[i] < recovered_at - 1e-9:
            continue
        j = min(n, i + window)
        if all(ok[i:j]):
            return max(0.0, t[i] - recovered_at)
    return None


def volume_recovery_time(
    attempts: Sequence[float],
    t: Sequence[float],
    recovered_at: float,
    normal_per_step: float,
    level: float = RECOVERED_SHARE,
    window: int = RECOVERED_WINDOW_MIN,
) -> float | None:
    """The same on the attempts the fleet made (noisy: Poisson demand): from the first step at
    or after ``recovered_at`` whose attempts are at least ``level`` x normal in that step and
    on average over ``window`` steps from it."""
    target = level * normal_per_step
    n = len(attempts)
    for i in range(n):
        if t[i] < recovered_at - 1e-9:
            continue
        w = attempts[i : min(n, i + window)]
        if attempts[i] >= target and sum(w) / len(w) >= target:
            return max(0.0, t[i] - recovered_at)
    return None


def _pct(xs: Sequence[float], q: float) -> float | None:
    if not xs:
        return None
    return float(np.percentile(np.asarray(xs, dtype=np.float64), q))


def closed_loop_metrics(res: ClosedLoopResult) -> dict[str, Any]:
    """The scores of one run (docs/evaluation.md, "Closed-loop throttle evaluation")."""
    s = res.series
    t = s["t"]
    in_inc = [res.onset <= x < res.end for x in t]
    failed = sum(f for f, w in zip(s["failed_act"], in_inc, strict=True) if w)
    attempts = sum(f for f, w in zip(s["attempts_act"], in_inc, strict=True) if w)
    after = [res.end <= x < res.end + 1800.0 for x in t]
    failed_after = sum(f for f, w in zip(s["failed_act"], after, strict=True) if w)
    from_onset = [f for f, x in zip(s["factor_act"], t, strict=True) if x >= res.onset]
    rev, changes = reversals([round(f, 4) for f in from_onset])
    rec = recovery_time(s["factor_act"], t, res.end)
    vol = volume_recovery_time(s["attempts_act"], t, res.end, res.normal_per_step)
    before = [
        f for f, x in zip(s["factor_act"], t, strict=True) if res.onset - 1800 <= x < res.onset
    ]
    held = res.held_s
    held_act = [h for h, a in zip(held, res.held_act, strict=True) if a]
    return {
        "scenario": res.scenario,
        "controller": res.controller,
        "act_scope": res.act_scope,
        "normal_per_min": res.normal_per_step * 60.0 / res.step_s,
        "attempts_incident": attempts,
        "failed_incident": failed,
        "failed_30min_after": failed_after,
        "delayed": len(held),
        "delayed_act": len(held_act),
        "delayed_mean_s": float(np.mean(held)) if held else 0.0,
        "delayed_p95_s": _pct(held, 95.0) or 0.0,
        "queued_at_end": res.queued_at_end,
        "recovery_s": rec,
        "volume_recovery_s": vol,
        "factor_before": float(np.mean(before)) if before else 1.0,
        "reversals": rev,
        "direction_changes": changes,
        "min_factor": min(from_onset) if from_onset else 1.0,
        "latency_p95_s": _pct(res.latency_s, 95.0),
        "messages": res.messages,
    }


__all__ = [
    "CLOSED_LOOP_SCENARIOS",
    "CONTROLLERS",
    "KUMO_RULES",
    "TICK_S",
    "ClosedLoop",
    "ClosedLoopResult",
    "ClosedLoopScenario",
    "Controller",
    "Demand",
    "Incident",
    "KumoControl",
    "KumoRule",
    "Limits",
    "NoThrottle",
    "Provider",
    "RepmonControl",
    "ScopeIndex",
    "StepEvents",
    "closed_loop_metrics",
    "quick_scenarios",
    "recovery_time",
    "reversals",
    "run_closed_loop",
    "volume_recovery_time",
]
