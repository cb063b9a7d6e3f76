"""Closed-loop evaluation, the loop: the fleet stepped with a controller against the provider
(:class:`ClosedLoop`, :func:`run_closed_loop`) and the scores of a run
(:func:`closed_loop_metrics`). See the package docstring (``models.sim.closed_loop``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from models.act.throttle_config import ThrottleConfig
from models.sim.closed_loop.controllers import (
    KUMO_RULES,
    Controller,
    KumoControl,
    KumoRule,
    Limits,
    NoThrottle,
    RepmonControl,
    StepEvents,
)
from models.sim.closed_loop.world import TICK_S, ClosedLoopScenario, Demand, Provider, ScopeIndex
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
from models.sim.replies import R
from models.sim.traffic import Calendar, Fleet, OutcomeTables

#: recovery: the fleet's attempts on the act scope back to this share of the normal volume
RECOVERED_SHARE: Final[float] = 0.95
#: ... in the minute and on average over this many minutes from it
RECOVERED_WINDOW_MIN: Final[int] = 5
CONTROLLERS: Final[tuple[str, ...]] = ("repmon", "none", "kumo")
#: the fleet's own shaping (what it does with no decision in force): per sending IP -> provider,
#: this many times the path's normal rate (campaign bursts reach several times the mean) ...
SHAPING_HEADROOM: Final[float] = 3.0
#: ... and at least this many messages/s
SHAPING_FLOOR_PER_S: Final[float] = 1.0
#: lanes of the act scope (drawn by expected demand) on which its capacity share is measured
PROBE_LANES: Final[int] = 256


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
    """One scenario with one controller, stepped one tick at a time (package docstring)."""

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
