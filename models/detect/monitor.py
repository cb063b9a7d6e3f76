"""Monitor: rolling state + incident detectors, driven by Deltas and the event-time watermark.

Used per tick by the Faust worker and by ``repmon replay``::

    mon = Monitor()
    mon.add(pipeline.flush())                 # vectorised update of the rolling state
    for change in mon.advance(pipeline.watermark):
        emit(change.to_json())                # {"kind": "incident", "action": "opened", ...}
    mon.status()                              # /status; mon.metrics() for Prometheus

Baselines: each scope's rate baseline is its EWMA (``models.state.rolling``) shrunk toward its
parent's baseline with ``prior_strength`` pseudo-attempts; the parent of ``domain:d`` is the
provider of ``d`` (``models/ingest/data/providers.toml`` domain table), the parent of ``mx:x`` is
``provider:x`` when that scope exists, and everything else (and parents themselves) shrink toward
the global baseline (all ``provider:`` scopes together), itself shrunk toward the detector's
``prior``.

Related scopes: one cause surges the same signal in several scopes (an IP blocked at Microsoft
shows on ``ip:``, ``pool:``, ``sender:`` ...). Candidates are opened in each detector's kind
preference order; a candidate is attached to an open incident of the same type as a *related
scope* instead of opening its own when its parent has one, or when the open incident is on a
scope of another kind whose excess count is at least ``related_excess_ratio`` of the candidate's
(the candidate's surge can be a subset of the same events; scopes of one kind, and scopes at two
different providers, and an IP and a pool it does not send in, are disjoint (``_disjoint``), so
they never explain each other). Within one run the outcome does not depend on the order
(``_absorb_same_run``), and a part that opened first (a combined scope, or an IP of a pool:
``models.detect.membership``) widens into its wide scope when that opens (``_widen``), unless
disjoint open parts explain the wide scope together (``_held_by_parts``). This can hide a
second, smaller, simultaneous incident of the same type on another scope kind: it is listed in
``related_scopes`` of the first.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.detect.attribution import EXPLAIN_SHARE, attribute, parents_of, parts_explain
from models.detect.config import MonitorConfig
from models.detect.detectors import (
    DetectorSpec,
)
from models.detect.evidence import ReplyMemory
from models.detect.incidents import SEVERITIES, Incident, IncidentChange, incident_id, severity_of
from models.detect.membership import Membership
from models.detect.report import scope_table
from models.detect.windows import Frame, SpecResult, WindowTests
from models.schema import ALL_SCOPE_KINDS, INCIDENT_TYPES
from models.state.deltas import Deltas
from models.state.rolling import (
    N_ROLL,
    ROLL_COLUMNS,
    RollingStore,
    scope_kind,
)
from models.state.snapshot import Snap

F64 = NDArray[np.float64]
_KIND_CODE = {k: i for i, k in enumerate(ALL_SCOPE_KINDS)}


def _provider_part(scope: str) -> str | None:
    """``provider:P`` of a provider scope or a combined scope ``X|provider:P``, else None."""
    if scope.startswith("provider:"):
        return scope
    _, bar, prov = scope.partition("|")
    return prov if bar and prov.startswith("provider:") else None


def _provider_of(scope: str) -> str | None:
    """The provider all of a scope's events go to: its provider part, or a recipient domain's
    provider in the provider table (``domain:outlook.com`` -> ``provider:microsoft``); None for
    scopes that span providers (``ip:X``, ``sender:d``, an MX operator: Microsoft 365 tenants
    are not ``provider:microsoft``)."""
    prov = _provider_part(scope)
    if prov is None and scope.startswith("domain:"):
        prov = _parent_scope(scope)
    return prov


def disjoint(a: str, b: str) -> bool:
    """Whether two scopes can hold none of the same events: scopes of one kind (one IP is not
    another), or scopes at two different providers (``ip:X|provider:yahoo`` and
    ``pool:Y|provider:microsoft``, ``domain:outlook.com`` and ``provider:google``). Only scopes
    that are not disjoint can be related."""
    if scope_kind(a) == scope_kind(b):
        return True
    pa, pb = _provider_of(a), _provider_of(b)
    return pa is not None and pb is not None and pa != pb


def shared_part(probe: str, name: str) -> str | None:
    """The narrowest counted scope that holds every event ``probe`` and ``name`` (not disjoint)
    can share, when it is narrower than ``name``: ``name``'s part at ``probe``'s provider
    (``ip:X|provider:microsoft`` for ``ip:X`` and ``provider:microsoft``), ``probe``'s part at
    ``name``'s provider (``sender:d|provider:yahoo`` for ``sender:d`` and
    ``pool:Y|provider:yahoo``), or ``probe`` itself when neither is at one provider. None when
    all of ``name``'s events can be shared (both at one provider, or ``probe`` holds ``name``)."""
    pp, pn = _provider_of(probe), _provider_of(name)
    if pn is not None and pp is not None:
        return None  # the same provider (not disjoint): name lies within it
    if pp is not None:
        return f"{name}|{pp}"
    if pn is not None:
        return f"{probe}|{pn}"
    return probe


def _parent_scope(scope: str) -> str | None:
    _, bar, wide = scope.partition("|")
    if bar:  # a combined scope: its provider
        return wide
    kind, _, value = scope.partition(":")
    if kind == "domain":
        from models.ingest.providers import default_table

        prov = default_table().domain_provider.get(value)
        return f"provider:{prov}" if prov else None
    if kind == "mx":
        return f"provider:{value}"
    return None


class Monitor:
    """Rolling state and incident detection for all scopes (see the module docstring)."""

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = cfg = config or MonitorConfig()
        self.store = RollingStore(cfg.rolling)
        self.store.on_evict.append(self._on_evict)
        self._specs = cfg.detectors
        self._sender_side = {s.type: s.sender_side for s in cfg.detectors}
        self._open: dict[tuple[str, str], Incident] = {}  # (type, scope) -> incident
        self._closed: list[Incident] = []
        self.opened_total: dict[str, int] = dict.fromkeys(INCIDENT_TYPES, 0)
        self.related_total = 0
        self._first_t: float | None = None
        self._dirty = False
        self._last_head = -1
        self._parents_version = -1
        self._parent_row: NDArray[np.intp] = np.zeros(0, dtype=np.intp)
        self._parent_name: dict[str, str | None] = {}
        self._replies = ReplyMemory(cfg.replies_per_scope)
        self._children_version = -1
        #: event time of the last detector run of advance_through (None: none yet)
        self._detected_at: float | None = None
        self._children_rows: dict[int, tuple[int, int]] = {}
        #: the pools each IP sends in (``Deltas.members``),
        #: and their (whole, part) rows cached per layout
        self.members = Membership()
        self._member_version: tuple[int, int] = (-1, -1)
        self._member_rows: tuple[NDArray[np.intp], NDArray[np.intp]] = (
            np.zeros(0, dtype=np.intp),
            np.zeros(0, dtype=np.intp),
        )
        self.advances = 0
        self._windows = WindowTests(cfg, self.store)

    # ------------------------------------------------------------------------------ input
    def add(self, deltas: Deltas) -> None:
        """Add one tick of counts (vectorised) and remember the tick's top replies."""
        if len(deltas) and self._first_t is None:
            self._first_t = float(deltas.bucket_start.min())
        local = self.store.add(deltas)
        if deltas.members:
            self.members.add(deltas.members, deltas.watermark)
            self.members.maybe_prune(self.store.rows)
        self.members.expire(self.store.watermark)
        self._replies.rotate(self.store.fine_head)
        if len(deltas):
            self._dirty = True
        self._replies.add(deltas, local)

    def _on_evict(self, rows: NDArray[np.intp]) -> None:
        self._replies.forget(rows)
        self._parents_version = -1

    # ------------------------------------------------------------------------------ parents
    def _parents(self) -> NDArray[np.intp]:
        st = self.store
        version = len(st.rows) + 1_000_003 * st.evicted + 7 * st.capacity
        if version == self._parents_version:
            return self._parent_row
        pr = np.full(st.capacity, -1, dtype=np.intp)
        for name, row in st.rows.items():
            if name not in self._parent_name:
                self._parent_name[name] = _parent_scope(name)
                if len(self._parent_name) > 4 * max(1024, len(st.rows)):
                    self._parent_name.clear()
            p = self._parent_name.get(name)
            if p is not None:
                pr[row] = st.rows.get(p, -1)
        self._parent_row = pr
        self._parents_version = version
        return pr

    # ------------------------------------------------------------------------------ detect
    def advance_through(
        self,
        watermark: float,
        step_s: float,
        on_run: Callable[[float, list[IncidentChange]], None] | None = None,
    ) -> list[IncidentChange]:
        """Run the detectors at every multiple of ``step_s`` of event time up to ``watermark``,
        then move the clock (not the detectors) on to ``watermark``.

        Detection happens at the event times a replay with ``--tick step_s`` uses, and only
        there: a watermark that jumps (a backlog read in seconds, a partition that catches up)
        is detected step by step, and the live worker, whose ticks fall at any time, opens and
        closes the same incidents at the same event times as a replay of the same events. The
        clock itself follows the watermark, so the counts of ``/status`` are current.
        ``on_run(t, changes)`` is called after each detector run (the throttle steps there)."""
        out: list[IncidentChange] = []
        start = self._detected_at
        if start is None:
            # the clock has not started yet: step from the first event time seen (a backlog
            # read before the first advance is detected step by step, not once at its end)
            start = self.store.watermark if self.store.fine_head >= 0 else (self._first_t or 0.0)
        if start > 0 and step_s > 0:
            b = (math.floor(start / step_s) + 1) * step_s
            while b <= watermark:
                run = self.advance(b)
                out.extend(run)
                self._detected_at = b
                if on_run is not None:
                    on_run(b, run)
                b += step_s
        self.catch_up(watermark)
        return out

    def catch_up(self, watermark: float) -> None:
        """Move the clock to ``watermark`` (held rows are counted), without running the
        detectors: the next detector run sees the same state as if it had not moved."""
        st = self.store
        st.advance_to(watermark)
        if st.merged_early:
            st.merged_early = False
            self._dirty = True
        self._replies.rotate(st.fine_head)

    def advance(self, watermark: float) -> list[IncidentChange]:
        """Run the detectors at event time ``watermark``; returns opened/closed changes.

        The steps: move the clock (``RollingStore.advance_to``), take one ``Frame`` of window
        sums for all active rows, then per detector test every window (``_test_windows``),
        keep the open incidents' state current (``_update_open``), open the candidates that no
        open incident explains (``_open_candidates``), and finally close the incidents that
        have been quiet long enough (``_close_quiet``).
        """
        st = self.store
        st.advance_to(watermark)
        if st.merged_early:  # rows held ahead of the clock were counted
            st.merged_early = False
            self._dirty = True
        self._replies.rotate(st.fine_head)
        now = st.watermark
        head_moved = st.fine_head != self._last_head
        if not self._dirty and not head_moved:
            return self._close_quiet(now, hot_rows=None)
        self._dirty = False
        self._last_head = st.fine_head
        self.advances += 1
        frame = self._windows.frame(now, self._parents(), self._first_t)
        if frame is None:
            return self._close_quiet(now, hot_rows=None)
        changes: list[IncidentChange] = []
        hot_by_type: dict[str, set[int]] = {}
        for spec in self._specs:
            res = self._windows.test(spec, frame)
            hot_by_type[spec.type] = {int(frame.rows[p]) for p in np.flatnonzero(res.hot)}
            self._update_open(spec, frame, res)
            if frame.warm:
                changes.extend(self._open_candidates(spec, frame, res))
        changes.extend(self._close_quiet(now, hot_rows=hot_by_type))
        return changes

    def _update_open(self, spec: DetectorSpec, f: Frame, res: SpecResult) -> None:
        """Open incidents of this type: current excess, last hot time, peak rate."""
        st = self.store
        for (typ, scope), inc in self._open.items():
            if typ != spec.type:
                continue
            r = st.rows.get(scope)
            if r is None or f.pos_of_row[r] < 0:
                continue
            pos = int(f.pos_of_row[r])
            inc.excess = float(res.excess[pos])
            inc.rate = float(res.rate_any[pos])
            if res.hot[pos]:
                inc.last_hot = f.now
                inc.peak_rate = max(inc.peak_rate, float(res.rate_any[pos]))

    def _open_candidates(
        self, spec: DetectorSpec, f: Frame, res: SpecResult
    ) -> list[IncidentChange]:
        """Open the candidates in the detector's scope-kind preference order, unless an open
        incident already explains them (then they are listed as its related scopes)."""
        cand = np.flatnonzero(res.opens)
        if cand.size == 0:
            return []
        st = self.store
        pref = {_KIND_CODE[k]: i for i, k in enumerate(spec.kinds)}
        order = sorted(
            cand.tolist(),
            key=lambda p: (
                pref.get(int(f.kinds[p]), 99),
                -float(res.rate_any[p]),
                st.names[int(f.rows[p])] or "",
            ),
        )
        # a wide candidate whose surge one narrower part explains opens on that part
        # (models/detect/attribution.py); the wide scope is listed as related
        targets = attribute(
            spec, f, res, self._parts(f), self._windows.allowed(spec, f), self._member_parts(f)
        )
        changes: list[IncidentChange] = []
        for p in order:
            r = int(f.rows[p])
            name = st.names[r]
            if name is None:
                continue
            if (spec.type, name) in self._open:
                continue  # already open: its parts are its to act on, not new incidents
            if p in targets:
                for q in targets[p]:
                    changes.extend(self._open_one(spec, f, res, q, name, targets))
                continue
            parts = self._open_parts(spec, r)
            if parts:  # attribution names W itself now: its open parts widen into it...
                held = self._held_by_parts(f, res, p, parts)
                if held is not None:  # ...unless they explain it together (disjoint causes)
                    self._relate(held, (name,))
                else:
                    changes.extend(self._widen(spec, f, res, p, name, parts))
                continue
            explainer = self._explained(spec, f, res, p, name) if spec.explained_by else None
            rel = self._related_to(spec, p, r, f, res.excess)
            if rel is not None:
                self._relate(rel, (name,))
                continue
            inc = self._new_incident(spec, f, res, p, name)
            inc.explained_by = explainer.id if explainer is not None else None
            self._open[(spec.type, name)] = inc
            st.frozen[r] = True
            if inc.explained_by is None:
                self.opened_total[spec.type] = self.opened_total.get(spec.type, 0) + 1
                changes.append(IncidentChange.of("opened", inc))
        return self._absorb_same_run(spec, changes)

    def _absorb_same_run(
        self, spec: DetectorSpec, changes: list[IncidentChange]
    ) -> list[IncidentChange]:
        """Make the incidents opened in one run independent of the order they were opened in.

        Candidates open in the detector's kind preference order, and a candidate is related to
        an incident that is already open (``_related_to``). Within one run, a smaller incident
        can therefore open before the larger one it would have been related to (the IPs of a
        pool blocked at Yahoo, attributed to their ``ip:X|provider:yahoo`` parts before the
        pool's part opens): such an incident is not reported, and becomes a related scope of
        the larger one, exactly as if the larger one had opened first. A part that opened and
        widened into its wide scope in the same run (an IP's part, then its pool's) is not
        reported either: its scope stays a related scope of the wide incident, and the parts it
        had widened in this run (an IP's Yahoo part, then the IP, then its pool) close into the
        wide incident instead."""
        opened_here = {c.incident.id: c.incident for c in changes if c.action == "opened"}
        dropped: set[str] = set()
        repointed: set[str] = set()
        closed_here = {c.incident.id: c.incident for c in changes if c.action == "closed"}
        for c in changes:
            part = c.incident
            if c.action != "closed" or part.id not in opened_here or part.widened_into is None:
                continue
            wide = opened_here.get(part.widened_into)
            if wide is None:
                continue
            dropped.add(part.id)
            self.opened_total[spec.type] -= 1
            self._closed = [i for i in self._closed if i.id != part.id]
            at = wide.widened_from.index(part.id) if part.id in wide.widened_from else 0
            wide.widened_from[at : at + 1] = part.widened_from
            for child_id in part.widened_from:
                child = closed_here.get(child_id)
                if child is not None:
                    child.widened_into = wide.id
                    repointed.add(child_id)
        opened = [
            c.incident for c in changes if c.action == "opened" and c.incident.id not in dropped
        ]
        if len(opened) < 2 and not dropped:
            return changes
        lo = self.config.related_excess_ratio
        kept: list[Incident] = []
        for inc in sorted(opened, key=lambda i: -i.excess):
            into = next(
                (
                    k
                    for k in kept
                    if not self._disjoint(k.scope, inc.scope)
                    and not inc.widened_from
                    and inc.excess > 0
                    and inc.excess <= k.excess / lo
                ),
                None,
            )
            if into is None:
                kept.append(inc)
                continue
            dropped.add(inc.id)
            self._drop_open(inc, into)
            self.opened_total[spec.type] -= 1
            self._relate(into, (inc.scope,))
            self._relate(into, tuple(inc.related), count=False)
        if not dropped:
            return changes
        # the opened records carry the related scopes they have at the end of the run, and a
        # part's closed record (re-pointed or not) follows the record of what it widened into
        out = [
            IncidentChange.of("opened", c.incident)
            if c.action == "opened"
            else IncidentChange.of("closed", c.incident)
            if c.incident.id in repointed
            else c
            for c in changes
            if c.incident.id not in dropped
        ]
        into_here = {c.incident.id for c in out if c.action == "opened"}
        late = [c for c in out if c.action == "closed" and c.incident.widened_into in into_here]
        rest = [
            c for c in out if not (c.action == "closed" and c.incident.widened_into in into_here)
        ]
        ordered: list[IncidentChange] = []
        for c in rest:
            ordered.append(c)
            if c.action == "opened":
                ordered.extend(x for x in late if x.incident.widened_into == c.incident.id)
        return ordered

    def _open_one(
        self,
        spec: DetectorSpec,
        f: Frame,
        res: SpecResult,
        q: int,
        related: str,
        targets: dict[int, list[int]],
        seen: frozenset[int] = frozenset(),
    ) -> list[IncidentChange]:
        """Open (or keep) the incident on the part at frame position ``q`` that a wider
        candidate's surge is attributed to; the wider scope becomes one of its related scopes.
        When ``q`` is a candidate that attribution explains by a narrower part in turn (a
        pool's Yahoo part by one IP's), that part is the one."""
        r = int(f.rows[q])
        name = self.store.names[r]
        if name is None:
            return []
        inner = [x for x in targets.get(q, ()) if x != q and x not in seen]
        if inner and (spec.type, name) not in self._open:
            got: list[IncidentChange] = []
            for x in inner:
                got.extend(self._open_one(spec, f, res, x, name, targets, seen | {q}))
                inc_x = self._open.get((spec.type, self.store.names[int(f.rows[x])] or ""))
                if inc_x is not None:
                    self._relate(inc_x, (related,))
            return got
        inc = self._open.get((spec.type, name))
        out: list[IncidentChange] = []
        # a wide scope (W2 of step 2) that is a candidate itself, which attribution names as
        # it is, over open parts: as in _open_candidates (it widens them unless they hold it)
        own = inc is None and bool(res.opens[q]) and q not in targets
        parts = self._open_parts(spec, r) if own else []
        if parts:
            held = self._held_by_parts(f, res, q, parts)
            if held is not None:
                self._relate(held, (name, related))
                return []
            out = self._widen(spec, f, res, q, name, parts)
            inc = self._open[(spec.type, name)]
        elif inc is None:
            rel = self._related_to(spec, q, r, f, res.excess)
            if rel is not None and rel.scope != related:
                self._relate(rel, (name,))
                return []
            explainer = self._explained(spec, f, res, q, name) if spec.explained_by else None
            inc = self._new_incident(spec, f, res, q, name)
            inc.explained_by = explainer.id if explainer is not None else None
            self._open[(spec.type, name)] = inc
            self.store.frozen[r] = True
            if explainer is None:
                self.opened_total[spec.type] = self.opened_total.get(spec.type, 0) + 1
                out.append(IncidentChange.of("opened", inc))
        self._relate(inc, (related,))
        return out

    def _relate(self, inc: Incident, scopes: tuple[str, ...], count: bool = True) -> None:
        """List ``scopes`` (other than the incident's own) as related scopes of ``inc``
        (counted in ``related_total`` when ``inc`` is reported, not explained, and ``count``:
        scopes handed on from a part that widened or was absorbed were counted there, and a
        part that was reported itself is not a new related scope)."""
        for s in scopes:
            if s != inc.scope and s not in inc.related:
                inc.related.append(s)
                if count and inc.explained_by is None:
                    self.related_total += 1

    def _drop_open(self, inc: Incident, into: Incident | None = None) -> None:
        """Take ``inc`` out of the open incidents; its row thaws when no other incident is open
        on the scope. The incidents it explained are explained by ``into`` from now on (what
        it widened or was absorbed into), or else leave with it: they were never reported, and
        one still surging opens on its own at the next detector run."""
        del self._open[(inc.type, inc.scope)]
        r = self.store.rows.get(inc.scope)
        if r is not None and not any(s == inc.scope for (_, s) in self._open):
            self.store.frozen[r] = False
        for dep in [d for d in self._open.values() if d.explained_by == inc.id]:
            if into is not None:
                dep.explained_by = into.id
            else:
                self._drop_open(dep)

    def _keep_closed(self, inc: Incident) -> None:
        """Remember a closed incident for /status (the newest ``keep_closed``)."""
        self._closed.append(inc)
        if len(self._closed) > self.config.keep_closed:
            del self._closed[: len(self._closed) - self.config.keep_closed]

    def _open_parts(self, spec: DetectorSpec, row: int) -> list[Incident]:
        """Open (reported) incidents of this type on scopes that are parts of ``row``: combined
        scopes (``sender:d|provider:P`` for ``sender:d`` or ``provider:P``) and, by membership,
        a pool's IPs (``ip:X|provider:P`` for ``pool:Y|provider:P``, ``ip:X`` for ``pool:Y``)."""
        st = self.store
        name = st.names[row]
        out: list[Incident] = []
        for (typ, scope), inc in self._open.items():
            if typ != spec.type or inc.explained_by is not None:
                continue
            c = st.rows.get(scope)
            if (c is not None and row in self._children_rows.get(c, ())) or (
                name is not None and name in self.members.wholes(scope)
            ):
                out.append(inc)
        return out

    def _held_by_parts(
        self, f: Frame, res: SpecResult, p: int, parts: list[Incident]
    ) -> Incident | None:
        """The largest of ``parts`` (open incidents on parts of the candidate at ``p``) when
        they are pairwise disjoint and explain its surge together (``parts_explain``)."""
        rows = [self.store.rows.get(i.scope, -1) for i in parts]
        pos = [int(f.pos_of_row[r]) if r >= 0 else -1 for r in rows]
        if any(q < 0 for q in pos):
            return None
        if any(
            not self._disjoint(a.scope, b.scope)
            for i, a in enumerate(parts)
            for b in parts[i + 1 :]
        ):
            return None
        if not parts_explain(res, p, pos):
            return None
        return max(parts, key=lambda i: i.excess)

    def _disjoint(self, a: str, b: str) -> bool:
        """``disjoint``, and an IP and a pool it does not send in."""
        return disjoint(a, b) or self.members.disjoint(a, b)

    def _widen(
        self,
        spec: DetectorSpec,
        f: Frame,
        res: SpecResult,
        p: int,
        name: str,
        parts: list[Incident],
    ) -> list[IncidentChange]:
        """Open the incident on the wide scope at frame position ``p`` and close its open
        parts into it (docs/incidents.md, "Attribution", widening).

        A part opened first because it crossed the thresholds first (its provider answers
        sooner, or holds more of the volume); once the wide scope opens and attribution finds
        no part that explains it alone, the parts are affected alike and the wide scope is the
        one to act on, whatever order the parts crossed in. The parts' incidents close with
        ``widened_into`` set to the new incident's id, and their scopes (and related scopes)
        become its related scopes."""
        st = self.store
        r = int(f.rows[p])
        inc = self._new_incident(spec, f, res, p, name)
        self._open[(spec.type, name)] = inc
        st.frozen[r] = True
        self.opened_total[spec.type] = self.opened_total.get(spec.type, 0) + 1
        closed: list[IncidentChange] = []
        for part in parts:
            self._drop_open(part, inc)
            part.closed_at = f.now
            part.widened_into = inc.id
            inc.widened_from.append(part.id)
            self._relate(inc, (part.scope, *part.related), count=False)
            self._keep_closed(part)
            closed.append(IncidentChange.of("closed", part))
        # the opened record carries the parts it widened
        return [IncidentChange.of("opened", inc), *closed]

    def _parts(self, f: Frame) -> dict[int, tuple[int, int]]:
        """Frame positions: combined scope -> its two wide scopes (cached per row layout)."""
        st = self.store
        version = len(st.rows) + 1_000_003 * st.evicted + 7 * st.capacity
        if version != self._children_version:
            self._children_rows = parents_of(st.rows)
            self._children_version = version
        pos = f.pos_of_row
        out: dict[int, tuple[int, int]] = {}
        for c, (a, b) in self._children_rows.items():
            cp = int(pos[c])
            if cp < 0:
                continue
            out[cp] = (int(pos[a]) if a >= 0 else -1, int(pos[b]) if b >= 0 else -1)
        return out

    def _member_parts(self, f: Frame) -> dict[int, list[int]]:
        """Frame positions: whole -> its parts' scopes (``pool:Y|provider:P`` -> its IPs'
        ``ip:X|provider:P``; membership, rows cached per layout)."""
        st = self.store
        version = (len(st.rows) + 1_000_003 * st.evicted + 7 * st.capacity, self.members.version)
        if version != self._member_version:
            self._member_rows = self.members.pairs_of(st.rows)
            self._member_version = version
        wr, pr = self._member_rows
        wp, cp = f.pos_of_row[wr], f.pos_of_row[pr]
        keep = (wp >= 0) & (cp >= 0)
        out: dict[int, list[int]] = {}
        for w, c in zip(wp[keep].tolist(), cp[keep].tolist(), strict=True):
            out.setdefault(w, []).append(c)
        return out

    def _new_incident(
        self, spec: DetectorSpec, f: Frame, res: SpecResult, p: int, name: str
    ) -> Incident:
        t = res.t
        w = int(res.best_w[p])
        window_s = spec.windows[w] * self.store.config.fine_s
        counts = res.win[w, p]
        rate = float(t.rate[w, p])
        return Incident(
            id=incident_id(spec.type, name, f.now),
            type=spec.type,
            scope=name,
            opened_at=f.now,
            severity=severity_of(spec.type, rate, spec.critical_rate),
            evidence={
                "signal": spec.num,
                "denominator": spec.den,
                "window_s": window_s,
                "count": int(t.x[w, p]),
                "volume": int(t.n[w, p]),
                "rate": round(rate, 6),
                "baseline": round(float(t.p0[w, p]), 6),
                "parent_baseline": round(float(res.p_parent[p]), 6),
                "z": round(float(t.z[w, p]), 2),
                "counts": {c: int(counts[i]) for i, c in enumerate(ROLL_COLUMNS)},
                "top_replies": self._replies.top(int(f.rows[p])),
            },
            peak_rate=rate,
            last_hot=f.now,
            excess=float(res.excess[p]),
        )

    def _explained(
        self, spec: DetectorSpec, f: Frame, res: SpecResult, p: int, name: str
    ) -> Incident | None:
        """An open incident of an ``explained_by`` type on this scope, its parent, a scope that
        holds all of its mail (``sender:d`` for ``sender:d|provider:P``, an IP's pool) or a
        related scope -- or on any scope not disjoint from it (``_disjoint``: an outage at
        Microsoft does not explain a block at Google), when that incident's excess dwarfs this
        candidate's and the events the two can share hold most of the candidate's excess
        (``_shares_excess``). The scope of a ``sender_side`` type counts without its provider:
        a sender's authentication failure seen at Gmail explains the blocks its mail gets at
        Yahoo."""
        parent = int(f.parents[p])
        my_excess = float(res.excess[p])
        pname = self.store.names[parent] if parent >= 0 else None
        single, bar, _ = name.partition("|")
        holders = {name, pname, *self.members.wholes(name)} | ({single} if bar else set())
        lo = self.config.related_excess_ratio
        for (typ, scope), inc in self._open.items():
            if typ not in spec.explained_by or inc.explained_by is not None:
                continue
            if scope in holders or name in inc.related:
                return inc
            probe = scope.partition("|")[0] if self._sender_side.get(typ, False) else scope
            if (
                inc.excess > 0
                and my_excess <= inc.excess / lo
                and not self._disjoint(probe, name)
                and self._shares_excess(probe, name, my_excess, f, res)
            ):
                return inc
        return None

    def _shares_excess(
        self, probe: str, name: str, my_excess: float, f: Frame, res: SpecResult
    ) -> bool:
        """Whether the events ``probe`` and ``name`` can share hold most of ``name``'s excess
        (``EXPLAIN_SHARE``, the attribution's share), measured on ``shared_part``: a Microsoft
        outage cannot account for a block of an IP whose excess is at Google, nor a sender's
        Gmail authentication failure for the Yahoo block of an IP that does not carry that
        sender's Yahoo mail. Where the shared events are not counted (no such scope), the
        excess alone decides, as before."""
        part = shared_part(probe, name)
        if part is None:
            return True
        r = self.store.rows.get(part)
        if r is None or f.pos_of_row[r] < 0:
            return True
        return float(res.excess[int(f.pos_of_row[r])]) >= EXPLAIN_SHARE * my_excess

    def _related_to(
        self, spec: DetectorSpec, p: int, r: int, f: Frame, excess: F64
    ) -> Incident | None:
        st = self.store
        par = int(f.parents[p])
        if par >= 0:
            pname = st.names[par]
            if pname is not None:
                inc = self._open.get((spec.type, pname))
                if inc is not None:
                    return inc
        my_name = st.names[r] or ""
        for whole in self.members.wholes(my_name):  # an IP of a pool that has one open
            inc = self._open.get((spec.type, whole))
            if inc is not None:
                return inc
        my_ex = float(excess[p])
        if my_ex <= 0:
            return None
        lo = self.config.related_excess_ratio
        best: Incident | None = None
        best_gap = math.inf
        for (typ, scope), inc in self._open.items():
            if typ != spec.type or self._disjoint(scope, my_name):
                continue
            orow = st.rows.get(scope)
            if orow is None or f.pos_of_row[orow] < 0:
                continue
            ox = float(excess[int(f.pos_of_row[orow])])
            if ox <= 0:
                continue
            ratio = my_ex / ox
            if ratio <= 1 / lo:
                gap = abs(math.log(ratio))
                if gap < best_gap:
                    best, best_gap = inc, gap
        return best

    def _close_quiet(
        self, now: float, hot_rows: dict[str, set[int]] | None
    ) -> list[IncidentChange]:
        quiet = {s.type: s.close_quiet_s for s in self._specs}
        out: list[IncidentChange] = []
        for inc in list(self._open.values()):
            if self._open.get((inc.type, inc.scope)) is not inc:
                continue  # left with the incident that explained it
            if now - inc.last_hot < quiet.get(inc.type, 900.0):
                continue
            inc.closed_at = now
            self._drop_open(inc)
            if inc.explained_by is None:
                self._keep_closed(inc)
                out.append(IncidentChange.of("closed", inc))
        return out

    # ------------------------------------------------------------------------------ snapshots
    def snapshot(self) -> Snap:
        """Everything :meth:`restore` needs to continue as if never stopped: the rolling store,
        the open (and recently closed) incidents, the evidence and the detection clock."""
        st = self.store
        snap = Snap(
            meta={
                "open": [i.state() for i in self._open.values()],
                "closed": [i.state() for i in self._closed],
                "opened_total": dict(self.opened_total),
                "related_total": self.related_total,
                "first_t": self._first_t,
                "dirty": self._dirty,
                "last_head": self._last_head,
                "advances": self.advances,
                "detected_at": self._detected_at,
                "replies": self._replies.snapshot(st.names),
                "members": self.members.snapshot(),
            }
        )
        snap.put("store", st.snapshot())
        return snap

    @classmethod
    def restore(cls, snap: Snap, config: MonitorConfig | None = None) -> Monitor:
        """A Monitor continuing from ``snap`` (raises ``SnapshotError`` when it cannot)."""
        mon = cls(config)
        mon.store = RollingStore.restore(snap.child("store"), mon.config.rolling)
        mon.store.on_evict.append(mon._on_evict)
        mon._windows = WindowTests(mon.config, mon.store)
        m = snap.meta
        for d in m["open"]:
            inc = Incident.from_state(d)
            mon._open[(inc.type, inc.scope)] = inc
        mon._closed = [Incident.from_state(d) for d in m["closed"]]
        mon.opened_total.update({str(k): int(v) for k, v in m["opened_total"].items()})
        mon.related_total = int(m["related_total"])
        mon._first_t = None if m["first_t"] is None else float(m["first_t"])
        mon._dirty = bool(m["dirty"])
        mon._last_head = int(m["last_head"])
        mon.advances = int(m["advances"])
        mon._detected_at = None if m.get("detected_at") is None else float(m["detected_at"])
        mon._replies.restore(m["replies"], mon.store.rows)
        mon.members.restore(m.get("members", {}), mon.store.watermark)
        return mon

    # ------------------------------------------------------------------------------ output
    def open_incidents(self) -> list[Incident]:
        """Open incidents, oldest first (incidents explained by another one are left out)."""
        return sorted(
            (i for i in self._open.values() if i.explained_by is None),
            key=lambda i: (i.opened_at, i.id),
        )

    def recent_closed(self) -> list[Incident]:
        return list(self._closed)

    def status(self, top: int = 20) -> dict[str, Any]:
        """Top scopes per kind by 1 h volume with 15 min / 1 h / 24 h counts and rates."""
        st = self.store
        out: dict[str, Any] = {
            "watermark": st.watermark,
            "active_scopes": len(st.rows),
            "scopes": scope_table(st, top),
            "open_incidents": [i.to_json() for i in self.open_incidents()],
        }
        return out

    def metrics(self) -> dict[str, Any]:
        st = self.store
        open_by_type = dict.fromkeys(INCIDENT_TYPES, 0)
        open_by_sev = {t: dict.fromkeys(SEVERITIES, 0) for t in INCIDENT_TYPES}
        for inc in self.open_incidents():
            open_by_type[inc.type] = open_by_type.get(inc.type, 0) + 1
            by = open_by_sev.setdefault(inc.type, dict.fromkeys(SEVERITIES, 0))
            by[inc.severity] = by.get(inc.severity, 0) + 1
        reply_entries = self._replies.entries()
        return {
            "active_scopes": len(st.rows),
            "capacity_rows": st.capacity,
            "late_dropped": st.late_dropped,
            "late_rows_dropped": st.late_rows_dropped,
            "late_complaints": st.late_complaints,
            "early_events": st.early_events,
            "early_dropped": st.early_dropped,
            "early_rows_held": st.early_rows,
            "upstream_late_dropped": st.upstream_late_dropped,
            "evicted": st.evicted,
            "evicted_for_room": st.evicted_for_room,
            "incidents_open": open_by_type,
            "incidents_open_by_severity": open_by_sev,
            "incidents_opened_total": dict(self.opened_total),
            "related_scopes_total": self.related_total,
            "memory_bytes": st.nbytes() + 200 * reply_entries,
            "bytes_per_scope_arrays": st.nbytes_per_scope(),
            "watermark": st.watermark,
        }

    def rolling_totals(self, scope: str, seconds: float) -> dict[str, int]:
        """ROLL_COLUMNS counts of one scope over the last ``seconds`` (fine ring)."""
        v = self.store.window_totals(scope, seconds)
        return {c: int(v[i]) for i, c in enumerate(ROLL_COLUMNS)}


__all__ = ["N_ROLL", "Incident", "IncidentChange", "Monitor", "MonitorConfig"]
