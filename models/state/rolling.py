"""Rolling per-scope counts in event time: a struct-of-arrays ring-buffer store.

Every active scope (``domain:``, ``provider:``, ``mx:``, ``ip:``, ``pool:``, ``sender:``,
``tenant:``, ``campaign:``) owns one *row* of three numpy arrays:

``fine``     uint32 ``[rows, n_fine, len(ROLL_COLUMNS)]``: ``n_fine`` event-time buckets of
             ``fine_s`` seconds (default 12 x 5 min = the last hour) of the reduced column set
             ``ROLL_COLUMNS``. Detectors and ``/status`` read these.
``coarse``   uint32 ``[rows, n_coarse, len(COARSE_COLUMNS)]``: ``n_coarse`` buckets of
             ``coarse_s`` seconds (default 48 x 1 h) of fewer columns (volume, deliveries,
             deferrals, failures, complaints), for 24 h / 48 h rates and hour-of-day volume.
``baseline`` float32 ``[rows, len(ROLL_COLUMNS)]``: an exponentially weighted sum of the fine
             buckets that *left* the fine ring (so the baseline lags the detection window by
             one hour and an incident cannot teach itself to the baseline before it is detected).
             Rows flagged ``frozen`` (an incident is open on them) stop learning.

All scopes share one event-time clock: the ring *heads* are global, so advancing time zeroes one
slot for all rows at once and a ``Deltas`` is added with one ``np.add.at`` per ring. Rows are
found through ``dict[str, int]``; evicted rows go to a free list and the arrays grow by doubling.

Event time: only ``advance_to`` moves the clock. The caller passes the event-time watermark, in the
worker the minimum over the live input partitions (docs/architecture.md); ``add`` never moves it,
so one partition (or one event) far ahead cannot make the others' events late.

- A delta row that starts at or after the watermark is *ahead* of the clock: it is held in an
  *early* buffer and counted in its own bucket as soon as the watermark passes its start
  (``early_events`` counts the events that waited). So the detectors at event time ``t`` see the
  events before ``t`` only (to the width of a delta row, the pipeline's 60 s bucket), as a replay
  ticking at ``t`` does, even when a backlog has already delivered what follows. Nothing ahead of the watermark is lost, however far ahead it is, up to
  ``max_early_rows`` buffered rows; past that the rows are dropped and counted in
  ``early_dropped``.
- A row is *late* when its whole fine bucket ends at or before ``watermark - lateness_s``: its events
  are added to ``late_dropped`` (counted once per event, on the ``provider:`` rows: every event has
  exactly one provider scope). Every event within the lateness of the watermark is therefore
  counted in its own bucket, whatever the bucket boundaries (``lateness_s`` is validated to fit
  in the fine ring).
- Complaints are the exception: feedback-loop reports arrive minutes to hours after the message
  and are often stamped with its original send time. A complaint behind the clock counts in the
  fine ring in the *current* bucket (when it became known: the complaint detector sees it now,
  against the smoothed deliveries of the last hours, whichever timestamp the source used), and in
  the coarse ring in the hour it is stamped with (the 24 h rate by send time, as the providers'
  postmaster tools report it). A late row's complaints (up to ``complaint_lateness_s``, default
  72 h) are counted the same way instead of dropped (in the current hour when their own has left
  the coarse ring); ``late_complaints`` counts them, the rest of the row is dropped as above.

Scopes that saw no event for ``idle_evict_s`` are evicted (``evicted`` counts them).

Memory with the defaults is about 1.9 KiB per active scope including the Python dict entry and
the scope name (``bench/memory.py`` measures it); ``nbytes_per_scope()`` reports the array part.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.schema import ALL_SCOPE_KINDS, COL, COLUMNS, EVENT_KINDS, N_COLUMNS
from models.state.deltas import Deltas
from models.state.snapshot import Snap, SnapshotError, strings, unstrings

#: Columns kept in the fine ring and the baseline (derived from ``models.schema.COLUMNS``).
ROLL_COLUMNS: Final[tuple[str, ...]] = (
    "attempts",  # delivered + deferred + bounced + rejected: the denominator of most rates
    "delivered",
    "deferred",
    "failed",  # bounced + rejected
    "complained",
    "hard",  # class_hard ... class_config: reply classes of deferred/bounced/rejected events
    "soft",
    "block",
    "throttle",
    "transient",
    "config",
    "auth_failure",
    "user_unknown",
    "user_unknown_known_good",
)
R: Final[dict[str, int]] = {c: i for i, c in enumerate(ROLL_COLUMNS)}
N_ROLL: Final[int] = len(ROLL_COLUMNS)

#: Columns kept in the coarse ring (indices into ROLL_COLUMNS).
COARSE_COLUMNS: Final[tuple[str, ...]] = (
    "attempts",
    "delivered",
    "deferred",
    "failed",
    "complained",
)
COARSE_IDX: Final[NDArray[np.intp]] = np.array([R[c] for c in COARSE_COLUMNS], dtype=np.intp)
N_COARSE: Final[int] = len(COARSE_COLUMNS)

_COMPLAINED: Final[int] = COL["complained"]
_R_COMPLAINED: Final[int] = R["complained"]
_COARSE_COMPLAINED: Final[int] = COARSE_COLUMNS.index("complained")

#: Event-kind columns of COLUMNS: their sum is the number of events in a delta row.
_EVENT_COLS: Final[NDArray[np.intp]] = np.arange(len(EVENT_KINDS), dtype=np.intp)


def _reduction_matrix() -> NDArray[np.int64]:
    m = np.zeros((N_COLUMNS, N_ROLL), dtype=np.int64)
    for src in ("delivered", "deferred", "bounced", "rejected"):
        m[COL[src], R["attempts"]] = 1
    m[COL["delivered"], R["delivered"]] = 1
    m[COL["deferred"], R["deferred"]] = 1
    m[COL["bounced"], R["failed"]] = 1
    m[COL["rejected"], R["failed"]] = 1
    m[COL["complained"], R["complained"]] = 1
    for c in ("hard", "soft", "block", "throttle", "transient", "config"):
        m[COL[f"class_{c}"], R[c]] = 1
    for c in ("auth_failure", "user_unknown", "user_unknown_known_good"):
        m[COL[c], R[c]] = 1
    assert m.shape == (len(COLUMNS), N_ROLL)
    return m


#: ``counts @ REDUCE`` maps delta rows (COLUMNS) to ROLL_COLUMNS.
REDUCE: Final[NDArray[np.int64]] = _reduction_matrix()

_KIND_CODE: Final[dict[str, int]] = {k: i for i, k in enumerate(ALL_SCOPE_KINDS)}
#: RollingConfig fields a snapshot must match to be restored (the ring geometry)
_GEOMETRY: Final[tuple[str, ...]] = ("fine_s", "n_fine", "coarse_s", "n_coarse")
#: RollingStore counters kept in snapshots
_COUNTERS: Final[tuple[str, ...]] = (
    "late_dropped",
    "early_events",
    "early_dropped",
    "late_rows_dropped",
    "late_complaints",
    "upstream_late_dropped",
    "evicted",
    "evicted_for_room",
    "added_events",
)
NO_KIND: Final[int] = 255


def scope_kind(scope: str) -> str:
    """``"provider:google"`` -> ``"provider"``, ``"ip:192.0.2.7|provider:google"`` ->
    ``"ip|provider"`` (empty string when there is no colon)."""
    kind, sep, rest = scope.partition(":")
    if not sep:
        return ""
    if "|provider:" in rest:
        return f"{kind}|provider"
    return kind


@dataclass(frozen=True, slots=True)
class RollingConfig:
    """Ring geometry and retention. Defaults: 12 x 5 min fine, 48 x 1 h coarse."""

    fine_s: int = 300  #: width of a fine bucket (s); the fine ring covers n_fine * fine_s
    n_fine: int = 12  #: number of fine buckets (default: the last hour)
    coarse_s: int = 3600  #: width of a coarse bucket (s)
    n_coarse: int = 48  #: number of coarse buckets (default: 48 h)
    lateness_s: float = 900.0  #: rows whose bucket ended before watermark - lateness_s are dropped
    idle_evict_s: float = 6 * 3600.0  #: evict scopes idle (no event) for this long
    baseline_half_life_s: float = 12 * 3600.0  #: half-life of the EWMA baseline
    initial_capacity: int = 256  #: rows allocated up front (grown by doubling)
    max_early_rows: int = 2_000_000  #: delta rows held ahead of the watermark at most
    #: active scopes at most (0: no cap). About 2 KiB each (bench/memory.py): 500,000 scopes are
    #: about 1 GiB. Past the cap the least recently active scopes without an open incident are
    #: evicted (``evicted_for_room`` counts them), so a flood of new domains cannot exhaust memory
    max_scopes: int = 500_000
    #: complaints later than lateness_s but at most this late are still counted (see above)
    complaint_lateness_s: float = 72 * 3600.0

    def validate(self) -> None:
        if self.fine_s <= 0 or self.coarse_s <= 0 or self.n_fine < 2 or self.n_coarse < 2:
            raise ValueError("bucket widths must be > 0 and rings must have >= 2 buckets")
        if self.coarse_s % self.fine_s:
            raise ValueError("coarse_s must be a multiple of fine_s")
        if not 0 <= self.lateness_s <= (self.n_fine - 1) * self.fine_s:
            raise ValueError("lateness_s must be within the fine ring: 0..(n_fine-1)*fine_s")
        if self.idle_evict_s <= 0 or self.baseline_half_life_s <= 0:
            raise ValueError("idle_evict_s and baseline_half_life_s must be > 0")


class RollingStore:
    """Per-scope ring buffers of event-time buckets (see the module docstring)."""

    def __init__(self, config: RollingConfig | None = None) -> None:
        self.config = cfg = config or RollingConfig()
        cfg.validate()
        cap = max(1, cfg.initial_capacity)
        self.fine: NDArray[np.uint32] = np.zeros((cap, cfg.n_fine, N_ROLL), dtype=np.uint32)
        self.coarse: NDArray[np.uint32] = np.zeros((cap, cfg.n_coarse, N_COARSE), dtype=np.uint32)
        self.baseline: NDArray[np.float32] = np.zeros((cap, N_ROLL), dtype=np.float32)
        self.last_seen: NDArray[np.int64] = np.full(cap, -1, dtype=np.int64)  # fine bucket index
        self.kind: NDArray[np.uint8] = np.full(cap, NO_KIND, dtype=np.uint8)
        self.active: NDArray[np.bool_] = np.zeros(cap, dtype=np.bool_)
        self.frozen: NDArray[np.bool_] = np.zeros(cap, dtype=np.bool_)
        self.rows: dict[str, int] = {}
        self.names: list[str | None] = [None] * cap
        self._free: list[int] = list(range(cap - 1, -1, -1))
        self.fine_head: int = -1  # index (t // fine_s) of the newest fine bucket; -1 = no data
        self.coarse_head: int = -1
        self.watermark: float = 0.0
        self.late_dropped: int = 0  # events dropped as later than lateness_s (provider rows)
        self.early_events: int = 0  # events that arrived ahead of the watermark and waited
        self.early_dropped: int = 0  # events dropped because the early buffer was full
        #: rows that start at or after the watermark: (scope names, bucket starts, counts) chunks
        self._early: list[tuple[list[str], NDArray[np.int64], NDArray[np.int64]]] = []
        self._early_rows = 0
        #: set when held rows were counted by advance_to (the detectors must run again)
        self.merged_early = False
        self.late_rows_dropped: int = 0  # delta rows (scope x bucket) dropped as late
        self.late_complaints: int = 0  # complaints counted although later than lateness_s
        self.upstream_late_dropped: int = 0  # late drops reported by the producer (Deltas)
        self.evicted: int = 0
        self.evicted_for_room: int = 0  # of which to stay under max_scopes
        self.added_events: int = 0
        self._decay = float(0.5 ** (cfg.fine_s / cfg.baseline_half_life_s))
        self._idle_buckets = max(1, math.ceil(cfg.idle_evict_s / cfg.fine_s))
        #: called with the list of row indices just evicted, before they are reused
        self.on_evict: list[Callable[[NDArray[np.intp]], None]] = []

    # ----------------------------------------------------------------------------- rows
    @property
    def capacity(self) -> int:
        return int(self.fine.shape[0])

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, scope: object) -> bool:
        return scope in self.rows

    def _grow(self) -> None:
        old = self.capacity
        cap = self.config.max_scopes
        # double, but not past max_scopes: the rows over the cap are evicted, never allocated
        new = min(old * 2, max(cap, old + 1)) if cap else old * 2

        def grow(a: NDArray[np.generic], fill: float | int | bool = 0) -> NDArray[np.generic]:
            b = np.full((new, *a.shape[1:]), fill, dtype=a.dtype)
            b[:old] = a
            return b

        self.fine = grow(self.fine)  # type: ignore[assignment]
        self.coarse = grow(self.coarse)  # type: ignore[assignment]
        self.baseline = grow(self.baseline)  # type: ignore[assignment]
        self.last_seen = grow(self.last_seen, -1)  # type: ignore[assignment]
        self.kind = grow(self.kind, NO_KIND)  # type: ignore[assignment]
        self.active = grow(self.active, False)  # type: ignore[assignment]
        self.frozen = grow(self.frozen, False)  # type: ignore[assignment]
        self.names.extend([None] * (new - old))
        self._free.extend(range(new - 1, old - 1, -1))

    def row(self, scope: str) -> int:
        """Row of ``scope``, allocating one when the scope is new."""
        r = self.rows.get(scope)
        if r is not None:
            return r
        if not self._free:
            self._grow()
        r = self._free.pop()
        self.rows[scope] = r
        self.names[r] = scope
        self.kind[r] = _KIND_CODE.get(scope_kind(scope), NO_KIND)
        self.active[r] = True
        self.last_seen[r] = self.fine_head
        return r

    def active_rows(self) -> NDArray[np.intp]:
        return np.flatnonzero(self.active)

    # ----------------------------------------------------------------------------- time
    def _advance_fine(self, new_head: int) -> None:
        cfg = self.config
        if self.fine_head < 0:
            self.fine_head = new_head
            return
        steps = new_head - self.fine_head
        if steps <= 0:
            return
        n = cfg.n_fine
        live = ~self.frozen
        # fold the buckets that leave the ring, oldest first, into the EWMA baseline
        for j in range(self.fine_head + 1, self.fine_head + 1 + min(steps, n)):
            slot = j % n
            leaving = self.fine[:, slot, :].astype(np.float32)
            self.baseline[live] = self.baseline[live] * self._decay + leaving[live]
            self.fine[:, slot, :] = 0
        if steps > n:  # buckets that were never filled: decay only
            self.baseline[live] *= np.float32(self._decay ** (steps - n))
        self.fine_head = new_head
        self._evict_idle()

    def _advance_coarse(self, new_head: int) -> None:
        if self.coarse_head < 0:
            self.coarse_head = new_head
            return
        steps = new_head - self.coarse_head
        if steps <= 0:
            return
        n = self.config.n_coarse
        for j in range(self.coarse_head + 1, self.coarse_head + 1 + min(steps, n)):
            self.coarse[:, j % n, :] = 0
        self.coarse_head = new_head

    def advance_to(self, t: float) -> None:
        """Move event time forward to ``t`` (epoch s): rotate rings, fold baselines, evict."""
        if t > self.watermark:
            self.watermark = float(t)
        self._advance_fine(int(self.watermark // self.config.fine_s))
        self._advance_coarse(int(self.watermark // self.config.coarse_s))
        if self._early:
            self._merge_early()

    def _merge_early(self) -> None:
        """Count the held rows whose bucket the clock has reached."""
        keep: list[tuple[list[str], NDArray[np.int64], NDArray[np.int64]]] = []
        for names, starts, counts in self._early:
            ready = starts < self.watermark
            if ready.all():
                self._apply(names, starts, counts)
            elif ready.any():
                self._apply(names, starts[ready], counts[ready])
                keep.append((names, starts[~ready], counts[~ready]))
            else:
                keep.append((names, starts, counts))
                continue
            self.merged_early = True
        self._early = keep
        self._early_rows = sum(len(st) for _, st, _ in keep)

    @property
    def early_rows(self) -> int:
        """Delta rows held ahead of the watermark."""
        return self._early_rows

    def _evict_idle(self) -> None:
        idle = self.active & ~self.frozen & (self.last_seen < self.fine_head - self._idle_buckets)
        self._evict(np.flatnonzero(idle))

    def _rows_for(self, scopes: list[str], used: list[int]) -> NDArray[np.intp]:
        """Rows of ``scopes[i]`` for ``i`` in ``used`` (allocating new scopes), after making
        room under ``max_scopes`` by evicting the least recently active scopes that no open
        incident holds and that this call does not use."""
        local = np.full(len(scopes), -1, dtype=np.intp)
        cap = self.config.max_scopes
        new = sum(1 for i in used if scopes[i] not in self.rows)
        if cap and len(self.rows) + new > cap:
            keep = [self.rows[scopes[i]] for i in used if scopes[i] in self.rows]
            self._evict_for_room(len(self.rows) + new - cap, keep)
        for i in used:
            local[i] = self.row(scopes[i])
        return local

    def _evict_for_room(self, need: int, keep: list[int]) -> None:
        # evict in batches (1 % of the cap at least) so a flood does not evict per scope
        n = max(need, self.config.max_scopes // 100, 1)
        cand = self.active & ~self.frozen
        cand[keep] = False
        rows = np.flatnonzero(cand)
        if rows.size > n:
            rows = rows[np.argpartition(self.last_seen[rows], n - 1)[:n]]
        self.evicted_for_room += int(rows.size)
        self._evict(rows)

    def _evict(self, rows: NDArray[np.intp]) -> None:
        if rows.size == 0:
            return
        for cb in self.on_evict:
            cb(rows)
        for r in rows.tolist():
            name = self.names[r]
            if name is not None:
                del self.rows[name]
            self.names[r] = None
            self._free.append(r)
        self.fine[rows] = 0
        self.coarse[rows] = 0
        self.baseline[rows] = 0
        self.last_seen[rows] = -1
        self.kind[rows] = NO_KIND
        self.active[rows] = False
        self.evicted += int(rows.size)

    # ----------------------------------------------------------------------------- add
    def add(self, deltas: Deltas) -> NDArray[np.intp]:
        """Add one tick of counts; returns the local-scope -> row map of ``deltas.scopes``.

        Never moves the clock (see the module docstring): rows that start at or after the
        watermark wait in the early buffer, rows whose bucket ended before ``watermark - lateness_s`` are
        dropped and counted.
        """
        self.upstream_late_dropped += int(deltas.late_dropped)
        n = len(deltas)
        if n == 0:
            return np.zeros(0, dtype=np.intp)
        cfg = self.config
        starts = deltas.bucket_start.astype(np.int64, copy=False)
        counts = deltas.counts
        idx = deltas.scope_idx.astype(np.intp, copy=False)
        prov: NDArray[np.bool_] | None = None
        if self.fine_head >= 0:
            late = (starts // cfg.fine_s + 1) * cfg.fine_s <= self.watermark - cfg.lateness_s
            if late.any():
                prov = self._provider_mask(deltas.scopes)
                complaints = counts[:, _COMPLAINED]
                rescue = late & (complaints > 0)
                rescue &= starts >= self.watermark - cfg.complaint_lateness_s
                self.late_dropped += self._events(counts[late & prov[idx]])
                if rescue.any():
                    self.late_dropped -= int(complaints[rescue & prov[idx]].sum())
                    self.late_complaints += int(complaints[rescue & prov[idx]].sum())
                    self._add_late_complaints(
                        deltas.scopes, idx[rescue], starts[rescue], complaints[rescue]
                    )
                self.late_rows_dropped += int(late.sum())
                ok = ~late
                starts, counts, idx = starts[ok], counts[ok], idx[ok]
        if starts.size == 0:
            return np.zeros(0, dtype=np.intp)
        # rows for every scope with counted or held rows (the Monitor maps replies through them)
        local = self._rows_for(deltas.scopes, np.unique(idx).tolist())
        early = starts >= self.watermark if self.fine_head >= 0 else np.ones(starts.size, np.bool_)
        if early.any():
            if prov is None:
                prov = self._provider_mask(deltas.scopes)
            e_counts = counts[early]
            n_events = self._events(e_counts[prov[idx[early]]])
            if self._early_rows + int(early.sum()) > cfg.max_early_rows:
                self.early_dropped += n_events
            else:
                self.early_events += n_events
                self._early.append(
                    (deltas.scopes, starts[early], self._named(idx[early], e_counts))
                )
                self._early_rows += int(early.sum())
            now = ~early
            starts, counts, idx = starts[now], counts[now], idx[now]
        if starts.size:
            self._apply_rows(local[idx], starts, counts)
        return local

    def _add_late_complaints(
        self,
        scopes: list[str],
        idx: NDArray[np.intp],
        starts: NDArray[np.int64],
        n: NDArray[np.int64],
    ) -> None:
        """Complaints later than the lateness: fine ring now, coarse ring in their own hour."""
        cfg = self.config
        local = self._rows_for(scopes, np.unique(idx).tolist())
        rows = local[idx]
        vals = n.astype(np.uint32)
        col = np.full(rows.size, R["complained"], dtype=np.intp)
        slot = np.full(rows.size, self.fine_head % cfg.n_fine, dtype=np.intp)
        np.add.at(self.fine, (rows, slot, col), vals)
        cb = starts // cfg.coarse_s
        cb = np.where(cb > self.coarse_head - cfg.n_coarse, cb, self.coarse_head)
        np.add.at(self.coarse, (rows, cb % cfg.n_coarse, col * 0 + _COARSE_COMPLAINED), vals)
        np.maximum.at(self.last_seen, rows, self.fine_head)

    @staticmethod
    def _named(idx: NDArray[np.intp], counts: NDArray[np.int64]) -> NDArray[np.int64]:
        """Held rows keep their scope index as an extra first column."""
        return np.column_stack([idx.astype(np.int64), counts.astype(np.int64, copy=False)])

    @staticmethod
    def _provider_mask(scopes: list[str]) -> NDArray[np.bool_]:
        # every event is counted in exactly one provider: scope -> count events there
        return np.array([s.startswith("provider:") for s in scopes], dtype=np.bool_)

    @staticmethod
    def _events(counts: NDArray[np.int64]) -> int:
        return int(counts[:, _EVENT_COLS].sum())

    def _apply(self, names: list[str], starts: NDArray[np.int64], named: NDArray[np.int64]) -> None:
        """Count held rows (scope index in the first column) now that their bucket is current."""
        idx = named[:, 0].astype(np.intp)
        local = self._rows_for(names, np.unique(idx).tolist())
        self._apply_rows(local[idx], starts, named[:, 1:])

    def _apply_rows(
        self, rows: NDArray[np.intp], starts: NDArray[np.int64], counts: NDArray[np.int64]
    ) -> None:
        cfg = self.config
        reduced = counts.astype(np.int64, copy=False) @ REDUCE
        fb = starts // cfg.fine_s
        cb = starts // cfg.coarse_s
        # complaints count in the fine ring when they become known: a row behind the clock puts
        # them in the current bucket (the coarse ring keeps them in their own hour, below)
        compl = reduced[:, _R_COMPLAINED].astype(np.uint32)
        fine_rows = reduced.astype(np.uint32)
        fine_rows[:, _R_COMPLAINED] = 0
        np.add.at(self.fine, (rows, fb % cfg.n_fine), fine_rows)
        if compl.any():
            cfb = np.maximum(fb, self.fine_head) % cfg.n_fine
            np.add.at(self.fine, (rows, cfb, np.full(rows.size, _R_COMPLAINED, np.intp)), compl)
        np.add.at(self.coarse, (rows, cb % cfg.n_coarse), reduced[:, COARSE_IDX].astype(np.uint32))
        np.maximum.at(self.last_seen, rows, fb)
        self.added_events += int(counts[:, _EVENT_COLS].sum())

    # ----------------------------------------------------------------------------- snapshots
    def snapshot(self) -> Snap:
        """The active rows, the clock, the counters and the held (early) rows: what
        :meth:`restore` needs to continue exactly where this store is (rows are renumbered)."""
        rows = self.active_rows()
        names = [self.names[r] or "" for r in rows.tolist()]
        # held rows: one table of (index into early_names, bucket start, counts)
        e_names: list[str] = []
        e_pos: dict[str, int] = {}
        e_starts: list[NDArray[np.int64]] = []
        e_counts: list[NDArray[np.int64]] = []
        for chunk_names, starts, named in self._early:
            idx = named[:, 0].astype(np.intp)
            used = np.unique(idx)
            remap = np.zeros(int(used.max()) + 1 if used.size else 0, dtype=np.int64)
            for u in used.tolist():
                nm = chunk_names[u]
                if nm not in e_pos:
                    e_pos[nm] = len(e_names)
                    e_names.append(nm)
                remap[u] = e_pos[nm]
            c = named.copy()
            c[:, 0] = remap[idx]
            e_starts.append(starts.astype(np.int64))
            e_counts.append(c)
        cfg = self.config
        meta: dict[str, object] = {g: getattr(cfg, g) for g in _GEOMETRY}
        meta.update({c: getattr(self, c) for c in _COUNTERS})
        meta.update(
            fine_head=self.fine_head,
            coarse_head=self.coarse_head,
            watermark=self.watermark,
            merged_early=self.merged_early,
        )
        return Snap(
            meta=meta,
            arrays={
                "names": strings(names),
                "fine": self.fine[rows],
                "coarse": self.coarse[rows],
                "baseline": self.baseline[rows],
                "last_seen": self.last_seen[rows],
                "kind": self.kind[rows],
                "frozen": self.frozen[rows],
                "early_names": strings(e_names),
                "early_starts": (
                    np.concatenate(e_starts) if e_starts else np.zeros(0, dtype=np.int64)
                ),
                "early_counts": (
                    np.concatenate(e_counts)
                    if e_counts
                    else np.zeros((0, N_COLUMNS + 1), dtype=np.int64)
                ),
            },
        )

    @classmethod
    def restore(cls, snap: Snap, config: RollingConfig | None = None) -> RollingStore:
        """A store continuing from ``snap``; ``config`` must have the snapshot's ring geometry
        (the other settings, e.g. ``max_scopes`` or ``lateness_s``, may change)."""
        cfg = config or RollingConfig()
        m = snap.meta
        for g in _GEOMETRY:
            if m.get(g) != getattr(cfg, g):
                raise SnapshotError(
                    f"snapshot has {g}={m.get(g)}, this configuration {getattr(cfg, g)}"
                )
        names = unstrings(snap.array("names"))
        n = len(names)
        cap = max(1, cfg.initial_capacity)
        while cap < n:
            cap *= 2
        st = cls(replace(cfg, initial_capacity=cap))
        fine, coarse = snap.array("fine"), snap.array("coarse")
        if fine.shape != (n, cfg.n_fine, N_ROLL) or coarse.shape != (n, cfg.n_coarse, N_COARSE):
            raise SnapshotError("snapshot arrays do not match its scope list")
        st.fine[:n] = fine
        st.coarse[:n] = coarse
        st.baseline[:n] = snap.array("baseline")
        st.last_seen[:n] = snap.array("last_seen")
        st.kind[:n] = snap.array("kind")
        st.frozen[:n] = snap.array("frozen")
        st.active[:n] = True
        st.rows = {nm: i for i, nm in enumerate(names)}
        st.names[:n] = names
        st._free = list(range(st.capacity - 1, n - 1, -1))
        st.fine_head = int(m["fine_head"])
        st.coarse_head = int(m["coarse_head"])
        st.watermark = float(m["watermark"])
        st.merged_early = bool(m["merged_early"])
        for c in _COUNTERS:
            setattr(st, c, int(m[c]))
        e_starts = snap.array("early_starts").astype(np.int64)
        if e_starts.size:
            st._early = [
                (unstrings(snap.array("early_names")), e_starts, snap.array("early_counts"))
            ]
            st._early_rows = int(e_starts.size)
        return st

    # ----------------------------------------------------------------------------- read
    def fine_sum(self, k: int, rows: NDArray[np.intp] | None = None) -> NDArray[np.int64]:
        """Counts over the newest ``k`` fine buckets (the newest is partial), per row."""
        cfg = self.config
        k = max(1, min(k, cfg.n_fine))
        sel = self.fine if rows is None else self.fine[rows]
        if self.fine_head < 0:
            return np.zeros((sel.shape[0], N_ROLL), dtype=np.int64)
        slots = [(self.fine_head - j) % cfg.n_fine for j in range(k)]
        out: NDArray[np.int64] = sel[:, slots, :].sum(axis=1, dtype=np.int64)
        return out

    def coarse_sum(self, k: int, rows: NDArray[np.intp] | None = None) -> NDArray[np.int64]:
        """Counts (COARSE_COLUMNS) over the newest ``k`` coarse buckets, per row."""
        cfg = self.config
        k = max(1, min(k, cfg.n_coarse))
        sel = self.coarse if rows is None else self.coarse[rows]
        if self.coarse_head < 0:
            return np.zeros((sel.shape[0], N_COARSE), dtype=np.int64)
        slots = [(self.coarse_head - j) % cfg.n_coarse for j in range(k)]
        out: NDArray[np.int64] = sel[:, slots, :].sum(axis=1, dtype=np.int64)
        return out

    def window_totals(self, scope: str, seconds: float) -> NDArray[np.int64]:
        """ROLL_COLUMNS counts of one scope over the fine buckets covering the last ``seconds``."""
        r = self.rows.get(scope)
        if r is None:
            return np.zeros(N_ROLL, dtype=np.int64)
        k = max(1, math.ceil(seconds / self.config.fine_s))
        out: NDArray[np.int64] = self.fine_sum(k, np.array([r], dtype=np.intp))[0]
        return out

    def nbytes_per_scope(self) -> int:
        """Bytes of numpy state per row (the Python dict entry and name string are extra)."""
        per_row = 0
        for a in (
            self.fine,
            self.coarse,
            self.baseline,
            self.last_seen,
            self.kind,
            self.active,
            self.frozen,
        ):
            per_row += a.itemsize * int(np.prod(a.shape[1:], dtype=np.int64))
        return per_row + 8  # names list slot

    def nbytes(self) -> int:
        """Approximate total bytes: arrays (allocated capacity) + scope names and dict."""
        arrays = self.nbytes_per_scope() * self.capacity
        names = sum(49 + len(s) for s in self.rows) + 100 * len(self.rows)
        return arrays + names
