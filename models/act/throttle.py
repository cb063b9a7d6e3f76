"""Throttle controller: per scope, what the sending fleet may do while incidents are open.

Pure and deterministic: driven only by the event times and inputs the caller passes. One
:class:`ThrottleController` holds every scope with a decision; the caller feeds it once per
detector run (docs/throttle.md, "Driving the controller")::

    ctl = ThrottleController(load_config(path))
    for b in detector_run_times:
        changes = mon.advance(b)
        for rec in ctl.step(b, changes, observations_of(mon.open_incidents(), b)):
            emit(rec.to_json())      # {"kind": "throttle", "scope": ..., "state": ...}
    ctl.decisions(now)               # scope -> live ThrottleRecord (for most_restrictive)

Per scope the states are ``normal -> throttled -> paused -> recovering -> normal``
(docs/throttle.md, "Policy"):

* an incident opening on the scope tightens it at once: ``pause`` types to the probe share,
  ``throttle`` types to ``open_factor`` (``critical_open_factor`` when critical; with
  ``proportional`` to at most ``1 - rate``);
* while a throttled scope's signal is hot and persists (its rate not below ``persist_ratio`` of
  the rate at the start of the period: the last decrease, or the last period that found it
  improving) the factor is multiplied by ``decrease`` every ``decrease_every_s``; a rate ``worsen_ratio`` times higher decreases it at once; at
  ``min_factor`` the next decrease pauses (``pause_at_floor``) or holds;
* the ramp back starts when every incident on the scope closed (or, for types with
  ``ramp_while_open``, after the signal was cold and clean -- its rate at most ``clean_rate`` --
  for ``recover_after_s``), at least ``hold_s`` after the last decrease: ``ramp_start`` out of a
  pause, one step up out of a throttle, then one step every ``ramp_every_s`` until normal, a step
  being ``f -> max(f * ramp_multiplier, f + ramp_step)`` (doubling, like slow start, or additive);
* a signal that depends on our rate (a rate limit: cold whenever we send below the hidden limit,
  so neither the cold signal nor the incident's close shows the limit is gone) is *tested* on a
  schedule: with ``retest_after_s``, no ramp before that long after the episode's first cut, and
  after a failed ramp none before ``retest_after_s * flap_backoff**reversals`` (at most
  ``retest_max_s``) after its start;
* a hot signal (or a reopened incident) while ramping tightens again: a *reversal*, back to the
  opening decision (``relapse_to = "open"``: an outage, a block) or to the *last good factor*,
  the ramp's previous step (``"last_good"``: a rate limit). Each reversal of an episode
  multiplies ``recover_after_s`` by ``flap_backoff``; after ``max_reversals`` the ramp waits for
  the incidents to close. A scope back to normal remembers its reversals for
  ``relapse_window_s``;
* every live decision expires ``expire_s`` after it was issued and is re-issued every
  ``refresh_s``; an open incident not observed for ``stale_s`` counts as closed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from models.act.throttle_config import (
    ThrottleConfig,
    TypeParams,
    default_config,
    ramp_factor,
    retest_wait_s,
)
from models.act.throttle_record import ThrottleRecord
from models.detect.incidents import Incident, IncidentChange
from models.state.snapshot import Snap, SnapshotError

#: bumped when a controller state written by an older version cannot be read correctly
STATE_FORMAT: Final[int] = 1
_EPS: Final[float] = 1e-9
_ACTION_RANK: Final[dict[str, int]] = {"none": 0, "throttle": 1, "pause": 2}
_SEVERITY_RANK: Final[dict[str, int]] = {"warning": 0, "critical": 1}


@dataclass(frozen=True, slots=True)
class Observation:
    """What the caller knows about one open incident at one detector run.

    Supply one per open incident (``Monitor.open_incidents()``) at every ``step``:
    :func:`observations_of` builds them from the Monitor's incidents. An incident without an
    observation in a step neither decreases nor advances; one unobserved for ``stale_s`` counts
    as closed. An observation of an incident the controller has not seen open adopts it (a
    controller started without state catches up with the open incidents).
    """

    #: ``Incident.id``
    incident: str
    #: ``Incident.type``
    type: str
    #: ``Incident.scope``: the scope the decision is made for
    scope: str
    #: the detector's relaxed ("hot") test held for this incident at this run
    hot: bool
    #: current rate of the incident's signal on its scope (a fraction: throttle replies per
    #: attempt ...), or None when unknown (then "persists" is assumed while hot)
    rate: float | None = None
    #: current severity (``warning``/``critical``); None keeps the last known
    severity: str | None = None


def observations_of(
    incidents: Iterable[Incident], now: float, rates: dict[str, float] | None = None
) -> list[Observation]:
    """Observations of the Monitor's open incidents at detector run ``now``: hot when the
    detector found the incident hot at this run (``last_hot >= now``). ``rates`` maps incident
    ids to their current rate when the caller has it (the Monitor does not keep it yet)."""
    out = []
    for inc in incidents:
        if not inc.is_open:
            continue
        rate = rates.get(inc.id) if rates is not None else None
        out.append(
            Observation(inc.id, inc.type, inc.scope, inc.last_hot >= now - _EPS, rate, inc.severity)
        )
    return out


@dataclass(slots=True)
class _Driver:
    """One open incident on a scope."""

    id: str
    type: str
    severity: str
    opened_at: float
    last_seen: float
    hot: bool = True
    rate: float | None = None
    #: rate at the last decrease (or at the opening): "persists" / "worsened" compare to it
    ref_rate: float | None = None

    def state(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "severity": self.severity,
            "opened_at": self.opened_at,
            "last_seen": self.last_seen,
            "hot": self.hot,
            "rate": self.rate,
            "ref_rate": self.ref_rate,
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Driver:
        return cls(
            str(d["id"]),
            str(d["type"]),
            str(d["severity"]),
            float(d["opened_at"]),
            float(d["last_seen"]),
            bool(d["hot"]),
            _opt_float(d["rate"]),
            _opt_float(d["ref_rate"]),
        )


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


@dataclass(slots=True)
class _Scope:
    """The controller state of one scope."""

    scope: str
    state: str = "normal"
    factor: float = 1.0
    reason: str = "recovered"
    incident: str | None = None
    #: incident type whose params apply (the dominant driver's; kept after it closed)
    ptype: str = ""
    at: float = 0.0
    expires_at: float = 0.0
    drivers: dict[str, _Driver] = field(default_factory=dict)
    last_decrease: float = -math.inf
    last_hot: float = -math.inf
    #: last run at which the signal was hot or not clean (rate above ``clean_rate``)
    last_unclean: float = -math.inf
    #: start of the current period of the "persists" test (a decrease, or a due test that
    #: found the signal improving: the rates are then compared with that run's)
    last_check: float = -math.inf
    #: ``retest_after_s``: no ramp before this time; start of the last ramp
    next_test: float = -math.inf
    tested_at: float = -math.inf
    ramp_t0: float | None = None
    ramp_base: float = 0.0
    #: the last factor known to keep the signal cold: the factor a ramp started from (held cold
    #: for the dwell), then the factor of the ramp's previous step; after a cut, the new factor
    #: (a relapse of a ``last_good`` type goes back to it)
    good: float = 0.0
    reversals: int = 0
    #: tightened at least once (a later tightening after a ramp is a reversal)
    episode: bool = False
    normal_since: float | None = None
    #: why the last driver went away: "closed" or "stale" (the reason of the ramp that follows)
    ended: str = "closed"
    #: (state, factor, incident) of the last record issued: a record is issued when it changes
    last_key: tuple[str, float, str | None] = ("normal", 1.0, None)

    def key(self) -> tuple[str, float, str | None]:
        return (self.state, self.factor, None if self.state == "normal" else self.incident)

    def record(self) -> ThrottleRecord:
        return ThrottleRecord(
            self.scope,
            self.state,
            self.factor,
            self.reason,
            self.incident,
            self.at,
            self.expires_at,
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            "scope": self.scope,
            "state": self.state,
            "factor": self.factor,
            "reason": self.reason,
            "incident": self.incident,
            "ptype": self.ptype,
            "at": self.at,
            "expires_at": self.expires_at,
            "drivers": [d.state() for d in self.drivers.values()],
            "last_decrease": None if self.last_decrease == -math.inf else self.last_decrease,
            "last_hot": None if self.last_hot == -math.inf else self.last_hot,
            "last_unclean": None if self.last_unclean == -math.inf else self.last_unclean,
            "last_check": None if self.last_check == -math.inf else self.last_check,
            "next_test": None if self.next_test == -math.inf else self.next_test,
            "tested_at": None if self.tested_at == -math.inf else self.tested_at,
            "ramp_t0": self.ramp_t0,
            "ramp_base": self.ramp_base,
            "good": self.good,
            "reversals": self.reversals,
            "episode": self.episode,
            "normal_since": self.normal_since,
            "ended": self.ended,
            "last_key": list(self.last_key),
        }

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> _Scope:
        drivers = [_Driver.from_state(x) for x in d["drivers"]]
        ld, lh = d["last_decrease"], d["last_hot"]
        # absent from states written before they existed: as a controller without them
        lu, lc = d.get("last_unclean", lh), d.get("last_check")
        nt, ta = d.get("next_test"), d.get("tested_at")
        return cls(
            scope=str(d["scope"]),
            state=str(d["state"]),
            factor=float(d["factor"]),
            reason=str(d["reason"]),
            incident=None if d["incident"] is None else str(d["incident"]),
            ptype=str(d["ptype"]),
            at=float(d["at"]),
            expires_at=float(d["expires_at"]),
            drivers={x.id: x for x in drivers},
            last_decrease=-math.inf if ld is None else float(ld),
            last_hot=-math.inf if lh is None else float(lh),
            last_unclean=-math.inf if lu is None else float(lu),
            last_check=-math.inf if lc is None else float(lc),
            next_test=-math.inf if nt is None else float(nt),
            tested_at=-math.inf if ta is None else float(ta),
            ramp_t0=_opt_float(d["ramp_t0"]),
            ramp_base=float(d["ramp_base"]),
            # absent from states written before last_good existed: unknown, as for a new episode
            good=float(d.get("good", 0.0)),
            reversals=int(d["reversals"]),
            episode=bool(d["episode"]),
            normal_since=_opt_float(d["normal_since"]),
            ended=str(d["ended"]),
            last_key=(
                str(d["last_key"][0]),
                float(d["last_key"][1]),
                None if d["last_key"][2] is None else str(d["last_key"][2]),
            ),
        )


def _rate(v: Any) -> float | None:
    """A rate as the policy uses it: a finite number clipped to [0, 1], else None."""
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        return None
    return min(1.0, max(0.0, float(v)))


def _clamp01(x: float) -> float:
    return round(min(1.0, max(0.0, x)), 6)


class ThrottleController:
    """Per-scope throttle decisions from incident changes and per-run observations."""

    def __init__(self, config: ThrottleConfig | None = None) -> None:
        self.config = config or default_config()
        self._scopes: dict[str, _Scope] = {}
        #: scope -> its live (non-normal) record: what :func:`most_restrictive` reads
        self._live: dict[str, ThrottleRecord] = {}
        self.now: float = -math.inf
        #: records issued, by reason (metrics)
        self.issued: dict[str, int] = {}
        #: reversals over all scopes (metrics)
        self.reversals_total: int = 0
        self._pcache: dict[tuple[str, str], TypeParams] = {}

    # ------------------------------------------------------------------------------ input
    def step(
        self,
        now: float,
        changes: Iterable[IncidentChange] = (),
        observations: Iterable[Observation] = (),
    ) -> list[ThrottleRecord]:
        """Advance to event time ``now`` (a detector run; earlier times are taken as the last
        one): apply the incident changes of that run, then the observations of the incidents
        open after it. Returns the records issued (changed or refreshed decisions), by scope."""
        now = max(float(now), self.now)
        self.now = now
        hot_ids: set[str] = set()
        for ch in changes:
            inc = ch.incident
            if ch.action == "opened":
                rate = inc.evidence.get("rate") if isinstance(inc.evidence, dict) else None
                self._open(inc.id, inc.type, inc.scope, inc.severity, _rate(rate), now)
                hot_ids.add(inc.id)
            else:
                sc = self._scopes.get(inc.scope)
                if sc is not None and sc.drivers.pop(inc.id, None) is not None:
                    sc.ended = "closed"
                    was = sc.incident
                    if sc.drivers and self._dominate(sc) is not None and sc.incident != was:
                        sc.reason = "closed"  # the same decision, now driven by another one
        for ob in observations:
            sc = self._scopes.get(ob.scope)
            drv = sc.drivers.get(ob.incident) if sc is not None else None
            if drv is None:
                sev = ob.severity or "warning"
                self._open(ob.incident, ob.type, ob.scope, sev, _rate(ob.rate), now)
                sc = self._scopes.get(ob.scope)
                drv = sc.drivers.get(ob.incident) if sc is not None else None
                if sc is None or drv is None:
                    continue  # an incident type the policy ignores
            assert sc is not None
            drv.last_seen = now
            drv.hot = ob.hot
            if (r := _rate(ob.rate)) is not None:
                drv.rate = r
            if ob.hot:
                hot_ids.add(drv.id)
                sc.last_hot = now
            if ob.hot or (
                drv.rate is not None and drv.rate > self._p(drv.type, sc.scope).clean_rate
            ):
                sc.last_unclean = now
            if ob.severity is not None and ob.severity != drv.severity:
                rising = _SEVERITY_RANK.get(ob.severity, 0) > _SEVERITY_RANK.get(drv.severity, 0)
                drv.severity = ob.severity
                if rising:
                    self._critical(sc, drv, now)
        out: list[ThrottleRecord] = []
        g = self.config.globals
        for scope in sorted(self._scopes):
            sc = self._scopes[scope]
            self._evaluate(sc, now, hot_ids)
            if sc.key() != sc.last_key:
                self._issue(sc, now)
                out.append(sc.record())
            elif sc.state != "normal" and now - sc.at >= g.refresh_s - _EPS:
                self._issue(sc, now)  # refresh: the same decision, new at / expires_at
                out.append(sc.record())
            if (
                sc.state == "normal"
                and not sc.drivers
                and sc.normal_since is not None
                and now - sc.normal_since >= g.relapse_window_s - _EPS
            ):
                del self._scopes[scope]
        return out

    # ------------------------------------------------------------------------------ policy
    def _params(self, sc: _Scope) -> TypeParams:
        return self._p(sc.ptype, sc.scope)

    def _p(self, type_: str, scope: str) -> TypeParams:
        """``config.params``, cached (scope names are parsed once)."""
        key = (type_, scope)
        p = self._pcache.get(key)
        if p is None:
            if len(self._pcache) > 65_536:
                self._pcache.clear()
            p = self._pcache[key] = self.config.params(type_, scope)
        return p

    def _scope(self, scope: str) -> _Scope:
        sc = self._scopes.get(scope)
        if sc is None:
            sc = self._scopes[scope] = _Scope(scope)
        return sc

    def _open(
        self,
        iid: str,
        type_: str,
        scope: str,
        severity: str,
        rate: float | None,
        now: float,
    ) -> None:
        p = self._p(type_, scope)
        if p.action == "none":
            return
        sc = self._scope(scope)
        if iid in sc.drivers:
            return
        drv = _Driver(iid, type_, severity, now, now, True, rate, rate)
        sc.drivers[iid] = drv
        sc.last_hot = sc.last_unclean = now
        sc.ended = "closed"
        was = sc.incident
        self._dominate(sc)
        relapse = sc.state in ("recovering", "normal") and sc.episode
        reason = "relapse" if relapse else "opened"
        if relapse and p.relapse_to == "last_good":
            # the limit is back: return to the last factor that kept the signal cold
            target, state = self._relapse_target(sc, p, drv), "throttled"
        else:
            target, state = self._open_target(p, drv)
        if state == "paused" and sc.state != "paused":
            self._tighten(sc, target, "paused", reason, now)
        elif target < sc.factor - _EPS:
            self._tighten(sc, target, "throttled", reason, now)
        elif sc.state in ("recovering", "normal"):
            # the new incident does not ask for less than the ramp reached: stop the ramp there
            self._tighten(sc, sc.factor, "throttled", reason, now)
        elif sc.incident != was:
            sc.reason = "opened"  # the same decision, now driven by the new incident

    def _open_target(self, p: TypeParams, drv: _Driver) -> tuple[float, str]:
        if p.action == "pause":
            return p.probe_share, "paused"
        target = p.critical_open_factor if drv.severity == "critical" else p.open_factor
        if p.proportional and drv.rate is not None:
            target = min(target, 1.0 - drv.rate)
        return max(p.min_factor, target), "throttled"

    def _relapse_target(self, sc: _Scope, p: TypeParams, drv: _Driver) -> float:
        """Where a relapse of a ``last_good`` type goes: the last good factor (the opening
        target when none is known), never below ``min_factor`` nor above the current factor.
        Not ``proportional``: the rate a too-high step caused says little about the limit (a
        scope back to normal sends its backlog at the fleet's own pace); a good factor that
        turns out too high is hot again and decreased as usual."""
        target = sc.good if sc.good > 0.0 else self._open_target(p, drv)[0]
        return min(sc.factor, max(p.min_factor, target))

    def _critical(self, sc: _Scope, drv: _Driver, now: float) -> None:
        if drv.severity != "critical":
            return
        p = self._p(drv.type, sc.scope)
        if p.action != "throttle" or sc.state == "paused":
            return
        if p.relapse_to == "last_good" and sc.state in ("recovering", "normal") and sc.episode:
            # the rate a ramp step caused is not the provider getting worse: a relapse
            target = self._relapse_target(sc, p, drv)
            if target < sc.factor - _EPS:
                self._dominate(sc)
                self._tighten(sc, target, "throttled", "critical", now)
            return
        if p.critical_open_factor < sc.factor - _EPS:
            self._dominate(sc)
            self._tighten(sc, p.critical_open_factor, "throttled", "critical", now)

    def _dominate(self, sc: _Scope) -> _Driver | None:
        """The driver whose params apply: pause before throttle, critical before warning,
        then the oldest (then the smallest id)."""
        best: _Driver | None = None
        best_key: tuple[int, int, float, str] | None = None
        for d in sc.drivers.values():
            act = self._p(d.type, sc.scope).action
            key = (-_ACTION_RANK[act], -_SEVERITY_RANK.get(d.severity, 0), d.opened_at, d.id)
            if best_key is None or key < best_key:
                best, best_key = d, key
        if best is not None:
            sc.ptype = best.type
            sc.incident = best.id
        return best

    def _tighten(self, sc: _Scope, factor: float, state: str, reason: str, now: float) -> None:
        p = self._params(sc)
        if sc.state in ("recovering", "normal") and sc.episode:
            sc.reversals += 1
            self.reversals_total += 1
            if p.retest_after_s > 0.0:  # the test (ramp) that started at tested_at failed
                start = sc.tested_at if sc.tested_at > -math.inf else now
                sc.next_test = start + retest_wait_s(p, sc.reversals)
        elif not sc.episode:
            sc.next_test = now + p.retest_after_s if p.retest_after_s > 0.0 else -math.inf
        sc.factor = _clamp01(factor)
        sc.good = sc.factor
        sc.state = state
        sc.reason = reason
        sc.last_decrease = sc.last_check = now
        sc.ramp_t0 = None
        sc.episode = True
        sc.normal_since = None
        for d in sc.drivers.values():
            if d.rate is not None:
                d.ref_rate = d.rate

    def _evaluate(self, sc: _Scope, now: float, hot_ids: set[str]) -> None:
        g = self.config.globals
        stale = [d.id for d in sc.drivers.values() if now - d.last_seen > g.stale_s + _EPS]
        for iid in stale:
            del sc.drivers[iid]
            sc.ended = "stale"
        dom = self._dominate(sc)
        p = self._params(sc)
        if dom is not None:
            if any(d.id in hot_ids for d in sc.drivers.values()):
                self._hot(sc, p, dom, now, hot_ids)
                return
            if any(d.hot for d in sc.drivers.values()):
                return  # last seen hot, not observed at this run: hold
            wait = p.recover_after_s * p.flap_backoff**sc.reversals
            may_ramp = p.ramp_while_open and sc.reversals < p.max_reversals
            if sc.state in ("throttled", "paused"):
                if (
                    may_ramp
                    and now - sc.last_unclean >= wait - _EPS
                    and now - sc.last_decrease >= p.hold_s - _EPS
                    and now >= sc.next_test - _EPS
                ):
                    self._start_ramp(sc, p, now, "healthy")
            elif sc.state == "recovering":
                self._ramp(sc, p, now)
            return
        # no incident open on the scope any more
        if sc.state in ("throttled", "paused"):
            if now - sc.last_decrease >= p.hold_s - _EPS and now >= sc.next_test - _EPS:
                self._start_ramp(sc, p, now, sc.ended)
        elif sc.state == "recovering":
            self._ramp(sc, p, now)

    def _hot(self, sc: _Scope, p: TypeParams, dom: _Driver, now: float, hot_ids: set[str]) -> None:
        if sc.state in ("recovering", "normal"):
            if p.relapse_to == "last_good" and p.action == "throttle":
                self._tighten(sc, self._relapse_target(sc, p, dom), "throttled", "relapse", now)
                return
            target, state = self._open_target(p, dom)
            self._tighten(sc, min(target, sc.factor), state, "relapse", now)
            return
        if sc.state != "throttled" or p.action != "throttle":
            return  # paused: the floor
        hot = [d for d in sc.drivers.values() if d.id in hot_ids]
        worsened = any(
            d.rate is not None
            and d.ref_rate is not None
            and d.rate > 0.0
            and d.rate >= d.ref_rate * p.worsen_ratio
            for d in hot
        )
        improving = all(
            d.rate is not None and d.ref_rate is not None and d.rate < d.ref_rate * p.persist_ratio
            for d in hot
        )
        due = now - sc.last_check >= p.decrease_every_s - _EPS
        if worsened:
            self._decrease(sc, p, dom, now, "worsened")
        elif due and not improving:
            self._decrease(sc, p, dom, now, "persists")
        elif due:
            # improving over this period: no cut, and the next period is judged against the
            # rates of now (a rate that stops falling while still hot is cut then)
            sc.last_check = now
            for d in hot:
                if d.rate is not None:
                    d.ref_rate = d.rate

    def _decrease(self, sc: _Scope, p: TypeParams, dom: _Driver, now: float, reason: str) -> None:
        step = p.decrease
        if p.proportional and dom.rate is not None:
            step = min(step, max(0.0, 1.0 - dom.rate))
        new = sc.factor * step
        if new < p.min_factor - _EPS:
            if sc.factor <= p.min_factor + _EPS and p.pause_at_floor:
                self._tighten(sc, p.probe_share, "paused", reason, now)
                return
            new = p.min_factor
        if new < sc.factor - _EPS:
            self._tighten(sc, new, "throttled", reason, now)

    def _start_ramp(self, sc: _Scope, p: TypeParams, now: float, reason: str) -> None:
        base = p.ramp_start if sc.state == "paused" else ramp_factor(p, sc.factor, 1)
        sc.good = sc.factor  # held with a cold signal (or its incidents closed)
        sc.ramp_t0 = sc.tested_at = now
        sc.ramp_base = _clamp01(max(base, sc.factor))
        sc.reason = reason
        self._set_ramp(sc, sc.ramp_base, now)

    def _ramp(self, sc: _Scope, p: TypeParams, now: float) -> None:
        if sc.ramp_t0 is None:  # cannot happen; be safe
            sc.ramp_t0, sc.ramp_base = now, sc.factor
        k = math.floor((now - sc.ramp_t0) / p.ramp_every_s + _EPS)
        f = _clamp01(ramp_factor(p, sc.ramp_base, k))
        if f > sc.factor + _EPS:
            sc.good = sc.factor  # the previous step held a whole step with a cold signal
            sc.reason = "ramp"
            self._set_ramp(sc, f, now)

    def _set_ramp(self, sc: _Scope, f: float, now: float) -> None:
        if f >= 1.0 - _EPS:
            sc.state, sc.factor, sc.reason = "normal", 1.0, "recovered"
            sc.ramp_t0 = None
            sc.normal_since = now
        else:
            sc.state, sc.factor = "recovering", f

    def _issue(self, sc: _Scope, now: float) -> None:
        sc.last_key = sc.key()
        sc.at = now
        sc.expires_at = now if sc.state == "normal" else now + self.config.globals.expire_s
        self.issued[sc.reason] = self.issued.get(sc.reason, 0) + 1
        if sc.state == "normal":
            self._live.pop(sc.scope, None)
        else:
            self._live[sc.scope] = sc.record()

    # ------------------------------------------------------------------------------ output
    def decisions(self, now: float | None = None) -> dict[str, ThrottleRecord]:
        """Scope -> its current non-normal decision (those expired at ``now`` left out when
        ``now`` is given). A copy: safe to hand to another thread."""
        if now is None:
            return dict(self._live)
        return {s: r for s, r in self._live.items() if now < r.expires_at}

    @property
    def live(self) -> dict[str, ThrottleRecord]:
        """The controller's own scope -> decision dict (no copy: read it, do not keep it across
        a ``step``); pass it to :func:`most_restrictive` with the event time."""
        return self._live

    def decision(self, scope: str) -> ThrottleRecord | None:
        """The scope's current record (normal ones included while remembered), or None."""
        sc = self._scopes.get(scope)
        return None if sc is None else sc.record()

    def scopes(self) -> list[str]:
        """Scopes the controller remembers (decisions, and normal ones in their relapse window)."""
        return sorted(self._scopes)

    def metrics(self) -> dict[str, Any]:
        by_state = {s: 0 for s in ("throttled", "paused", "recovering")}
        for r in self._live.values():
            by_state[r.state] = by_state.get(r.state, 0) + 1
        return {
            "scopes": len(self._scopes),
            "decisions_by_state": by_state,
            "records_by_reason": dict(self.issued),
            "reversals_total": self.reversals_total,
        }

    # ------------------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        """Everything :meth:`from_state` needs, JSON-able (no parameters: the configuration is
        the caller's and may change between runs)."""
        return {
            "format": STATE_FORMAT,
            "now": None if self.now == -math.inf else self.now,
            "scopes": [self._scopes[s].state_dict() for s in sorted(self._scopes)],
            "issued": dict(self.issued),
            "reversals_total": self.reversals_total,
        }

    @classmethod
    def from_state(
        cls, d: dict[str, Any], config: ThrottleConfig | None = None
    ) -> ThrottleController:
        """A controller continuing from :meth:`state` (``SnapshotError`` when it cannot)."""
        if not isinstance(d, dict) or d.get("format") != STATE_FORMAT:
            got = d.get("format") if isinstance(d, dict) else type(d).__name__
            raise SnapshotError(f"throttle state format {got}, this version reads {STATE_FORMAT}")
        ctl = cls(config)
        try:
            ctl.now = -math.inf if d["now"] is None else float(d["now"])
            for s in d["scopes"]:
                sc = _Scope.from_state(s)
                ctl._scopes[sc.scope] = sc
                if sc.state != "normal":
                    ctl._live[sc.scope] = sc.record()
            ctl.issued = {str(k): int(v) for k, v in d["issued"].items()}
            ctl.reversals_total = int(d["reversals_total"])
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"damaged throttle state: {exc!r}") from exc
        return ctl

    def snapshot(self) -> Snap:
        """:meth:`state` as a :class:`Snap` (metadata only), to ``put`` into an owner snapshot."""
        return Snap(meta=self.state())

    @classmethod
    def restore(cls, snap: Snap, config: ThrottleConfig | None = None) -> ThrottleController:
        """A controller continuing from :meth:`snapshot` (``SnapshotError`` when it cannot)."""
        return cls.from_state(snap.meta, config)


__all__ = ["STATE_FORMAT", "Observation", "ThrottleController", "observations_of"]
