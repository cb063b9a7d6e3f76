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
(the candidate's surge can be a subset of the same events; scopes of one kind are disjoint, so
they never explain each other). This can hide a second, smaller, simultaneous incident of the same
type on another scope kind: it is listed in ``related_scopes`` of the first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.detect.detectors import DEFAULT_DETECTORS, DetectorSpec, run_window, shrunk_rate
from models.detect.incidents import Incident, IncidentChange, incident_id
from models.schema import INCIDENT_TYPES, SCOPE_KINDS
from models.state.deltas import Deltas
from models.state.rolling import (
    COARSE_COLUMNS,
    N_ROLL,
    ROLL_COLUMNS,
    R,
    RollingConfig,
    RollingStore,
    scope_kind,
)

F64 = NDArray[np.float64]
_KIND_CODE = {k: i for i, k in enumerate(SCOPE_KINDS)}


@dataclass(slots=True)
class MonitorConfig:
    """All rolling and detector parameters (defaults: docs/incidents.md)."""

    rolling: RollingConfig = field(default_factory=RollingConfig)
    detectors: tuple[DetectorSpec, ...] = DEFAULT_DETECTORS
    #: pseudo-attempts of the parent's rate added to a scope's own baseline
    prior_strength: float = 2000.0
    #: pseudo-attempts of the detector prior added to the global baseline
    global_prior_strength: float = 20000.0
    #: a candidate (of another scope kind) is related to an open incident of the same type when
    #: its excess count is at most 1/r times the incident's (a subset of the same events)
    related_excess_ratio: float = 0.5
    #: no incident opens before this much event time has been seen (baselines warm up)
    warmup_s: float = 1800.0
    #: normalised replies kept per scope (current and previous fine bucket) for evidence
    replies_per_scope: int = 5
    #: closed incidents kept in memory for /status
    keep_closed: int = 200


def _parent_scope(scope: str) -> str | None:
    kind, _, value = scope.partition(":")
    if kind == "domain":
        from models.ingest.providers import default_table

        prov = default_table().domain_provider.get(value)
        return f"provider:{prov}" if prov else None
    if kind == "mx":
        return f"provider:{value}"
    return None


def _rates(c: NDArray[np.int64]) -> dict[str, float | None]:
    """Documented rates of one ROLL_COLUMNS count vector."""
    att = int(c[R["attempts"]])
    dlv = int(c[R["delivered"]])

    def per(x: str, d: int) -> float | None:
        return round(int(c[R[x]]) / d, 6) if d > 0 else None

    out: dict[str, float | None] = {
        "delivery": per("delivered", att),
        "deferral": per("deferred", att),
        "bounce": per("failed", att),
        "hard_bounce": per("hard", att),
        "block": per("block", att),
        "throttle": per("throttle", att),
        "transient": per("transient", att),
        "soft": per("soft", att),
        "config": per("config", att),
        "complaint": per("complained", dlv),
        "auth_failure": per("auth_failure", att),
        "user_unknown": per("user_unknown", att),
        "user_unknown_known_good": per("user_unknown_known_good", att),
    }
    return out


class Monitor:
    """Rolling state and incident detection for all scopes (see the module docstring)."""

    def __init__(self, config: MonitorConfig | None = None) -> None:
        self.config = cfg = config or MonitorConfig()
        self.store = RollingStore(cfg.rolling)
        self.store.on_evict.append(self._on_evict)
        self._specs = cfg.detectors
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
        self._replies_cur: dict[int, dict[str, int]] = {}
        self._replies_prev: dict[int, dict[str, int]] = {}
        self._replies_head = -1
        self.advances = 0
        self._kind_tables: dict[str, NDArray[np.bool_]] = {}

    # ------------------------------------------------------------------------------ input
    def add(self, deltas: Deltas) -> None:
        """Add one tick of counts (vectorised) and remember the tick's top replies."""
        if len(deltas) and self._first_t is None:
            self._first_t = float(deltas.bucket_start.min())
        local = self.store.add(deltas)
        self._rotate_replies()
        if len(deltas):
            self._dirty = True
        if deltas.replies and local.size:
            limit = self.config.replies_per_scope
            cur = self._replies_cur
            for sidx, text, cnt in deltas.replies:
                if sidx >= local.size:
                    continue
                row = int(local[sidx])
                if row < 0:
                    continue
                d = cur.get(row)
                if d is None:
                    d = cur[row] = {}
                d[text] = d.get(text, 0) + cnt
                if len(d) > 2 * limit:
                    keep = sorted(d.items(), key=lambda kv: -kv[1])[:limit]
                    cur[row] = dict(keep)

    def _rotate_replies(self) -> None:
        head = self.store.fine_head
        if head != self._replies_head:
            if head == self._replies_head + 1:
                self._replies_prev = self._replies_cur
            else:
                self._replies_prev = {}
            self._replies_cur = {}
            self._replies_head = head

    def _on_evict(self, rows: NDArray[np.intp]) -> None:
        for r in rows.tolist():
            self._replies_cur.pop(r, None)
            self._replies_prev.pop(r, None)
        self._parents_version = -1

    def _top_replies(self, row: int, n: int = 5) -> list[list[Any]]:
        agg: dict[str, int] = {}
        for src in (self._replies_prev.get(row), self._replies_cur.get(row)):
            if src:
                for k, v in src.items():
                    agg[k] = agg.get(k, 0) + v
        return [[k, v] for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[:n]]

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
    def advance_through(self, watermark: float, step_s: float) -> list[IncidentChange]:
        """Run the detectors at every multiple of ``step_s`` of event time up to ``watermark``,
        then at ``watermark``: a watermark that jumps (a backlog read in seconds, a partition
        that catches up) is detected at the event times a replay with ``--tick step_s`` uses,
        not once at the end of the jump."""
        out: list[IncidentChange] = []
        t = self.store.watermark
        if t > 0 and step_s > 0:
            b = (math.floor(t / step_s) + 1) * step_s
            while b < watermark:
                out.extend(self.advance(b))
                b += step_s
        out.extend(self.advance(watermark))
        return out

    def advance(self, watermark: float) -> list[IncidentChange]:
        """Run the detectors at event time ``watermark``; returns opened/closed changes."""
        st = self.store
        st.advance_to(watermark)
        if st.merged_early:  # rows held ahead of the clock were counted
            st.merged_early = False
            self._dirty = True
        self._rotate_replies()
        now = st.watermark
        head_moved = st.fine_head != self._last_head
        if not self._dirty and not head_moved:
            return self._close_quiet(now, hot_rows=None)
        self._dirty = False
        self._last_head = st.fine_head
        self.advances += 1
        rows = st.active_rows()
        if rows.size == 0:
            return self._close_quiet(now, hot_rows=None)
        cfg = self.config
        n_fine = st.config.n_fine
        gaps = {s.type: min(n_fine, max(s.windows) + 1) for s in self._specs}
        needed = sorted({k for s in self._specs for k in s.windows} | set(gaps.values()) | {n_fine})
        # all window sums at once: gather the ring newest-first, cumulative sum over buckets
        order = [(st.fine_head - j) % n_fine for j in range(n_fine)]
        csum = np.cumsum(st.fine[rows][:, order, :], axis=1, dtype=np.float64)
        sums = {k: csum[:, k - 1, :] for k in needed}
        base = st.baseline[rows].astype(np.float64)
        kinds = st.kind[rows]
        parents = self._parents()[rows]
        pos_of_row = np.full(st.capacity, -1, dtype=np.intp)
        pos_of_row[rows] = np.arange(rows.size)
        ppos = np.where(parents >= 0, pos_of_row[np.maximum(parents, 0)], -1)
        prov_mask = kinds == _KIND_CODE["provider"]
        warm = self._first_t is not None and now - self._first_t >= cfg.warmup_s

        changes: list[IncidentChange] = []
        hot_by_type: dict[str, set[int]] = {}
        for spec in self._specs:
            ni, di = spec.num_idx, spec.den_idx
            # own history: EWMA of buckets that left the ring + ring buckets older than the
            # test windows (and a one-bucket gap), so young scopes have a baseline too
            g = gaps[spec.type]
            hist = base + (sums[n_fine] - sums[g]) if g < n_fine else base
            gsum = hist[prov_mask].sum(axis=0) if prov_mask.any() else hist.sum(axis=0)
            gs = cfg.global_prior_strength
            p_glob = (float(gsum[ni]) + gs * spec.prior) / (float(gsum[di]) + gs)
            p_par_own = shrunk_rate(hist[:, ni], hist[:, di], p_glob, cfg.prior_strength)
            p_parent = np.where(ppos >= 0, p_par_own[np.maximum(ppos, 0)], p_glob)
            p0 = shrunk_rate(hist[:, ni], hist[:, di], p_parent, cfg.prior_strength)
            if spec.min_baseline > 0:
                p0 = np.maximum(p0, spec.min_baseline)
            allowed = self._kind_table(spec)[kinds]
            min_den: F64 | None = None
            min_abs: F64 | None = None
            abs_rate: F64 | None = None
            if spec.kind_overrides:
                min_den = np.full(rows.size, float(spec.min_den))
                min_abs = np.full(rows.size, spec.min_abs)
                abs_rate = np.full(rows.size, spec.abs_rate)
                for kname, kden, kabs, krate in spec.kind_overrides:
                    sel = kinds == _KIND_CODE.get(kname, -1)
                    min_den[sel] = kden
                    min_abs[sel] = kabs
                    if krate >= 0:
                        abs_rate[sel] = krate
            coarse_den: F64 | None = None
            if spec.den_coarse_h > 0:
                coarse_den = self._coarse_rate_den(spec, rows, now)
            # every window of the detector in one test: rows are (window, scope)
            dens, p0s = [], []
            for k in spec.windows:
                s = sums[k]
                den = s[:, di]
                if coarse_den is not None:  # the larger of the window's and the smoothed one
                    den = np.maximum(den, coarse_den * (k * st.config.fine_s))
                dens.append(den)
                if spec.peer_adjust and prov_mask.sum() > 1:
                    p0s.append(self._peer_adjusted(p0, s[:, ni], den, prov_mask))
                else:
                    p0s.append(p0)
            win = np.stack([sums[k] for k in spec.windows])  # (windows, rows, columns)
            t = run_window(
                spec,
                win[:, :, ni],
                np.stack(dens),
                np.stack(p0s),
                uu=win[:, :, R["user_unknown"]],
                kg=win[:, :, R["user_unknown_known_good"]],
                min_den=min_den,
                min_abs=min_abs,
                abs_rate=abs_rate,
            )
            opens = t.opens.any(axis=0)
            hot = t.hot.any(axis=0)
            # evidence: the opening window with the largest z (else the largest z); the first
            # such window on ties
            best_w = np.argmax(np.where(t.opens, t.z + 1e6, t.z), axis=0)
            opens &= allowed
            hot &= allowed
            hot_pos = np.flatnonzero(hot)
            hot_by_type[spec.type] = {int(rows[p]) for p in hot_pos}
            excess = t.x[-1] - t.n[-1] * p0
            rate_any = t.rate.max(axis=0)
            # update open incidents of this type
            for (typ, scope), inc in self._open.items():
                if typ != spec.type:
                    continue
                r = st.rows.get(scope)
                if r is None or pos_of_row[r] < 0:
                    continue
                pos = int(pos_of_row[r])
                inc.excess = float(excess[pos])
                if hot[pos]:
                    inc.last_hot = now
                    inc.peak_rate = max(inc.peak_rate, float(rate_any[pos]))
            if not warm:
                continue
            cand = np.flatnonzero(opens)
            if cand.size == 0:
                continue
            pref = {_KIND_CODE[k]: i for i, k in enumerate(spec.kinds)}
            order = sorted(
                cand.tolist(), key=lambda p: (pref.get(int(kinds[p]), 99), -float(rate_any[p]))
            )
            for p in order:
                r = int(rows[p])
                name = st.names[r]
                if name is None or (spec.type, name) in self._open:
                    continue
                explainer = (
                    self._explained(spec, name, int(parents[p]), float(excess[p]))
                    if spec.explained_by
                    else None
                )
                rel = self._related_to(spec, p, r, rows, pos_of_row, parents, kinds, excess)
                if rel is not None:
                    if name not in rel.related:
                        rel.related.append(name)
                        self.related_total += 1
                    continue
                w = int(best_w[p])
                window_s = spec.windows[w] * st.config.fine_s
                counts = win[w, p]
                rate = float(t.rate[w, p])
                inc = Incident(
                    id=incident_id(spec.type, name, now),
                    type=spec.type,
                    scope=name,
                    opened_at=now,
                    severity="critical" if rate >= spec.critical_rate else "warning",
                    evidence={
                        "signal": spec.num,
                        "denominator": spec.den,
                        "window_s": window_s,
                        "count": int(t.x[w, p]),
                        "volume": int(t.n[w, p]),
                        "rate": round(rate, 6),
                        "baseline": round(float(t.p0[w, p]), 6),
                        "parent_baseline": round(float(p_parent[p]), 6),
                        "z": round(float(t.z[w, p]), 2),
                        "counts": {c: int(counts[i]) for i, c in enumerate(ROLL_COLUMNS)},
                        "top_replies": self._top_replies(r),
                    },
                    peak_rate=rate,
                    last_hot=now,
                    explained_by=explainer.id if explainer is not None else None,
                )
                self._open[(spec.type, name)] = inc
                st.frozen[r] = True
                if inc.explained_by is None:
                    self.opened_total[spec.type] = self.opened_total.get(spec.type, 0) + 1
                    changes.append(IncidentChange.of("opened", inc))
        changes.extend(self._close_quiet(now, hot_rows=hot_by_type))
        return changes

    def _kind_table(self, spec: DetectorSpec) -> NDArray[np.bool_]:
        table = self._kind_tables.get(spec.type)
        if table is None:
            table = np.zeros(256, dtype=np.bool_)
            for k in spec.kinds:
                if k in _KIND_CODE:
                    table[_KIND_CODE[k]] = True
            self._kind_tables[spec.type] = table
        return table

    def _explained(
        self, spec: DetectorSpec, name: str, parent: int, my_excess: float
    ) -> Incident | None:
        """An open incident of an ``explained_by`` type on this scope, its parent or a related
        scope -- or anywhere, when that incident's excess dwarfs this candidate's."""
        pname = self.store.names[parent] if parent >= 0 else None
        lo = self.config.related_excess_ratio
        for (typ, scope), inc in self._open.items():
            if typ not in spec.explained_by or inc.explained_by is not None:
                continue
            if scope in (name, pname) or name in inc.related:
                return inc
            if inc.excess > 0 and my_excess <= inc.excess / lo:
                return inc
        return None

    @staticmethod
    def _peer_adjusted(p0: F64, x: F64, n: F64, prov: NDArray[np.bool_]) -> F64:
        """Provider rows: baseline times the observed/expected ratio of all other providers."""
        e = n * p0
        xt, et = float(x[prov].sum()), float(e[prov].sum())
        ratio = np.clip((xt - x + 1.0) / (et - e + 1.0), 1.0, 5.0)
        out: F64 = np.where(prov, p0 * ratio, p0)
        return out

    def _coarse_rate_den(self, spec: DetectorSpec, rows: NDArray[np.intp], now: float) -> F64:
        """Denominator per second of event time over the last ``den_coarse_h`` coarse buckets."""
        st = self.store
        cs = st.config.coarse_s
        h = min(spec.den_coarse_h, st.config.n_coarse)
        col = COARSE_COLUMNS.index(spec.den)
        tot = st.coarse_sum(h, rows)[:, col].astype(np.float64)
        since = (st.coarse_head - h + 1) * cs
        if self._first_t is not None:
            since = max(since, int(self._first_t))
        covered = max(float(st.config.fine_s), now - since)
        out: F64 = tot / covered
        return out

    def _related_to(
        self,
        spec: DetectorSpec,
        p: int,
        r: int,
        rows: NDArray[np.intp],
        pos_of_row: NDArray[np.intp],
        parents: NDArray[np.intp],
        kinds: NDArray[np.uint8],
        excess: F64,
    ) -> Incident | None:
        st = self.store
        par = int(parents[p])
        if par >= 0:
            pname = st.names[par]
            if pname is not None:
                inc = self._open.get((spec.type, pname))
                if inc is not None:
                    return inc
        my_ex = float(excess[p])
        if my_ex <= 0:
            return None
        lo = self.config.related_excess_ratio
        best: Incident | None = None
        best_gap = math.inf
        my_kind = scope_kind(st.names[r] or "")
        for (typ, scope), inc in self._open.items():
            if typ != spec.type or scope_kind(scope) == my_kind:
                continue
            orow = st.rows.get(scope)
            if orow is None or pos_of_row[orow] < 0:
                continue
            ox = float(excess[int(pos_of_row[orow])])
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
        for key, inc in list(self._open.items()):
            if now - inc.last_hot < quiet.get(inc.type, 900.0):
                continue
            inc.closed_at = now
            del self._open[key]
            r = self.store.rows.get(inc.scope)
            if r is not None and not any(s == inc.scope for (_, s) in self._open):
                self.store.frozen[r] = False
            self._closed.append(inc)
            if inc.explained_by is not None:
                self._closed.pop()
            elif len(self._closed) > self.config.keep_closed:
                del self._closed[: len(self._closed) - self.config.keep_closed]
            if inc.explained_by is None:
                out.append(IncidentChange.of("closed", inc))
        return out

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
        fine_s = st.config.fine_s
        k15 = max(1, math.ceil(900 / fine_s))
        k60 = max(1, math.ceil(3600 / fine_s))
        k24 = max(1, math.ceil(86400 / st.config.coarse_s))
        rows = st.active_rows()
        out: dict[str, Any] = {
            "watermark": st.watermark,
            "active_scopes": len(st.rows),
            "scopes": {},
            "open_incidents": [i.to_json() for i in self.open_incidents()],
        }
        if rows.size == 0:
            for kind in SCOPE_KINDS:
                out["scopes"][kind] = []
            return out
        s15 = st.fine_sum(k15, rows)
        s60 = st.fine_sum(k60, rows)
        c24 = st.coarse_sum(k24, rows)
        kinds = st.kind[rows]
        for kind in SCOPE_KINDS:
            pos = np.flatnonzero(kinds == _KIND_CODE[kind])
            vol = s60[pos, R["attempts"]]
            order = pos[np.argsort(-vol, kind="stable")][:top]
            items = []
            for p in order.tolist():
                name = st.names[int(rows[p])]
                c24p = c24[p]
                items.append(
                    {
                        "scope": name,
                        "m15": {
                            "counts": {c: int(s15[p, i]) for i, c in enumerate(ROLL_COLUMNS)},
                            "rates": _rates(s15[p]),
                        },
                        "h1": {
                            "counts": {c: int(s60[p, i]) for i, c in enumerate(ROLL_COLUMNS)},
                            "rates": _rates(s60[p]),
                        },
                        "h24": {c: int(c24p[i]) for i, c in enumerate(COARSE_COLUMNS)},
                    }
                )
            out["scopes"][kind] = items
        return out

    def metrics(self) -> dict[str, Any]:
        st = self.store
        open_by_type = dict.fromkeys(INCIDENT_TYPES, 0)
        for inc in self.open_incidents():
            open_by_type[inc.type] = open_by_type.get(inc.type, 0) + 1
        reply_entries = sum(len(d) for d in self._replies_cur.values()) + sum(
            len(d) for d in self._replies_prev.values()
        )
        return {
            "active_scopes": len(st.rows),
            "capacity_rows": st.capacity,
            "late_dropped": st.late_dropped,
            "late_rows_dropped": st.late_rows_dropped,
            "early_events": st.early_events,
            "early_dropped": st.early_dropped,
            "early_rows_held": st.early_rows,
            "upstream_late_dropped": st.upstream_late_dropped,
            "evicted": st.evicted,
            "incidents_open": open_by_type,
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
