"""Closed-loop evaluation, the controllers: repmon in the loop (:class:`RepmonControl`), no
throttle (:class:`NoThrottle`) and KumoMTA-style automation rules (:class:`KumoControl`,
:data:`KUMO_RULES`), with the :class:`Limits` they set and the :class:`StepEvents` they observe.
See the package docstring (``models.sim.closed_loop``).
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np

from models.act.acting import Acting
from models.act.throttle_config import ThrottleConfig
from models.act.throttle_record import ThrottleRecord, most_restrictive
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline
from models.sim.closed_loop.world import TICK_S, ScopeIndex
from models.sim.config import BOOL, F64, I64, K_BOUNCED, K_DEFERRED, MINUTE
from models.sim.output import EventOutput
from models.sim.replies import REPLIES

#: throughput of one SMTP connection (messages/s) when a KumoMTA rule sets ``connection_limit``
KUMO_MSGS_PER_CONNECTION_S: Final[float] = 1.0
#: deliveries per connection (KumoMTA's default ``max_deliveries_per_connection``), to turn a
#: ``max_connection_rate`` into messages
KUMO_DELIVERIES_PER_CONNECTION: Final[int] = 100


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
