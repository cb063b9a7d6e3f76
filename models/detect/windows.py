"""Window tests: every detector's statistical test over every window of every active scope.

Once per advance the Monitor takes a ``Frame`` of the rolling state (newest-k-bucket sums of
all active rows, their kinds, parents and baselines); ``WindowTests.test`` then computes, per
detector, the baseline of each scope (its own history shrunk toward its parent's, the parent's
toward the global rate, docs/incidents.md) and runs ``run_window`` on all windows at once.

Lagging signals (complaints, ``DetectorSpec.den_coarse_h`` > 0) are tested against their
*exposure*, the largest denominator of a window of the same span within the lag range
(``_lagged_exposure``, ``_coarse_peak_hour``), and with ``parent_floor`` a scope's baseline is at
least its parent's: its own complaints have not all arrived yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from models.detect.config import MonitorConfig
from models.detect.detectors import DetectorSpec, WindowTest, run_window, shrunk_rate
from models.schema import ALL_SCOPE_KINDS
from models.state.rolling import COARSE_COLUMNS, R, RollingStore

F64 = NDArray[np.float64]
_KIND_CODE = {k: i for i, k in enumerate(ALL_SCOPE_KINDS)}


@dataclass(slots=True)
class Frame:
    """What every detector reads in one advance: window sums and facts of the active rows."""

    now: float
    rows: NDArray[np.intp]
    sums: dict[int, F64]  #: newest-k-bucket sums per row, for every k a detector needs
    csum: F64  #: (rows, n_fine, columns) cumulative sums of the fine ring, newest bucket first
    gaps: dict[str, int]  #: per detector type: buckets kept out of its own history
    base: F64
    kinds: NDArray[np.uint8]
    parents: NDArray[np.intp]
    pos_of_row: NDArray[np.intp]
    ppos: NDArray[np.intp]
    prov_mask: NDArray[np.bool_]
    warm: bool


@dataclass(slots=True)
class SpecResult:
    """One detector's test over all windows and active rows."""

    t: WindowTest
    win: F64
    p0: F64
    p_parent: F64
    opens: NDArray[np.bool_]
    hot: NDArray[np.bool_]
    best_w: NDArray[np.intp]
    excess: F64
    rate_any: F64


class WindowTests:
    """The detectors' tests over a RollingStore (stateless but for cached kind tables)."""

    def __init__(self, config: MonitorConfig, store: RollingStore) -> None:
        self.config = config
        self.store = store
        self._specs = config.detectors
        self._kind_tables: dict[str, NDArray[np.bool_]] = {}

    def allowed(self, spec: DetectorSpec, f: Frame) -> NDArray[np.bool_]:
        """Which frame positions are of a scope kind the detector opens incidents on."""
        out: NDArray[np.bool_] = self._kind_table(spec)[f.kinds]
        return out

    def frame(self, now: float, parents: NDArray[np.intp], first_t: float | None) -> Frame | None:
        """Window sums and scope facts of all active rows, once per advance."""
        st = self.store
        rows = st.active_rows()
        if rows.size == 0:
            return None
        cfg = self.config
        n_fine = st.config.n_fine
        gaps = {s.type: min(n_fine, max(s.windows) + 1) for s in self._specs}
        needed = sorted({k for s in self._specs for k in s.windows} | set(gaps.values()) | {n_fine})
        # all window sums at once: gather the ring newest-first, cumulative sum over buckets
        order = [(st.fine_head - j) % n_fine for j in range(n_fine)]
        csum = np.cumsum(st.fine[rows][:, order, :], axis=1, dtype=np.float64)
        parents = parents[rows]
        pos_of_row = np.full(st.capacity, -1, dtype=np.intp)
        pos_of_row[rows] = np.arange(rows.size)
        kinds = st.kind[rows]
        return Frame(
            now=now,
            rows=rows,
            sums={k: csum[:, k - 1, :] for k in needed},
            csum=csum,
            gaps=gaps,
            base=st.baseline[rows].astype(np.float64),
            kinds=kinds,
            parents=parents,
            pos_of_row=pos_of_row,
            ppos=np.where(parents >= 0, pos_of_row[np.maximum(parents, 0)], -1),
            prov_mask=kinds == _KIND_CODE["provider"],
            warm=first_t is not None and now - first_t >= cfg.warmup_s,
        )

    def test(self, spec: DetectorSpec, f: Frame) -> SpecResult:
        """Baselines (own history shrunk toward the parent's) and every window's test."""
        cfg = self.config
        st = self.store
        n_fine = st.config.n_fine
        ni, di = spec.num_idx, spec.den_idx
        sums = f.sums
        # own history: EWMA of buckets that left the ring + ring buckets older than the
        # test windows (and a one-bucket gap), so young scopes have a baseline too
        g = f.gaps[spec.type]
        hist = f.base + (sums[n_fine] - sums[g]) if g < n_fine else f.base
        gsum = hist[f.prov_mask].sum(axis=0) if f.prov_mask.any() else hist.sum(axis=0)
        gs = cfg.global_prior_strength
        p_glob = (float(gsum[ni]) + gs * spec.prior) / (float(gsum[di]) + gs)
        p_par_own = shrunk_rate(hist[:, ni], hist[:, di], p_glob, cfg.prior_strength)
        p_parent = np.where(f.ppos >= 0, p_par_own[np.maximum(f.ppos, 0)], p_glob)
        p0 = shrunk_rate(hist[:, ni], hist[:, di], p_parent, cfg.prior_strength)
        # the parent's share of the baseline (1 where the parent floor overrules the own history)
        w_parent = cfg.prior_strength / (np.maximum(hist[:, di], 0.0) + cfg.prior_strength)
        if spec.parent_floor:
            w_parent = np.where(p0 <= p_parent, 1.0, w_parent)
            p0 = np.maximum(p0, p_parent)
        if spec.min_baseline > 0:
            p0 = np.maximum(p0, spec.min_baseline)
        cv: F64 | None = None
        if spec.spread > 0:  # a borrowed baseline is known to within the siblings' spread
            cv = np.sqrt(spec.cv**2 + w_parent * spec.spread**2)
        allowed = self._kind_table(spec)[f.kinds]
        min_den: F64 | None = None
        min_abs: F64 | None = None
        abs_rate: F64 | None = None
        if spec.kind_overrides:
            min_den = np.full(f.rows.size, float(spec.min_den))
            min_abs = np.full(f.rows.size, spec.min_abs)
            abs_rate = np.full(f.rows.size, spec.abs_rate)
            for kname, kden, kabs, krate in spec.kind_overrides:
                sel = f.kinds == _KIND_CODE.get(kname, -1)
                min_den[sel] = kden
                min_abs[sel] = kabs
                if krate >= 0:
                    abs_rate[sel] = krate
        coarse_hour: F64 | None = None
        if spec.den_coarse_h > 0:
            coarse_hour = self._coarse_peak_hour(spec, f.rows)
        # every window of the detector in one test: rows are (window, scope)
        dens, p0s = [], []
        fs = float(st.config.fine_s)
        for k in spec.windows:
            s = sums[k]
            den = s[:, di]
            if coarse_hour is not None:  # the exposure of a lagging signal (docstring)
                # the window covers k - 1 whole buckets and the elapsed part of the newest
                span = (k - 1) * fs + min(max(f.now - st.fine_head * fs, 0.0), fs)
                den = np.maximum(den, self._lagged_exposure(f.csum[:, :, di], k, span / (k * fs)))
                den = np.maximum(den, coarse_hour * (span / st.config.coarse_s))
            dens.append(den)
            if spec.peer_adjust and f.prov_mask.sum() > 1:
                p0s.append(self._peer_adjusted(p0, s[:, ni], den, f.prov_mask))
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
            cv=cv,
        )
        # evidence: the opening window with the largest z (else the largest z); the first
        # such window on ties
        return SpecResult(
            t=t,
            win=win,
            p0=p0,
            p_parent=p_parent,
            opens=t.opens.any(axis=0) & allowed,
            hot=t.hot.any(axis=0) & allowed,
            best_w=np.argmax(np.where(t.opens, t.z + 1e6, t.z), axis=0),
            excess=t.x[-1] - t.n[-1] * p0,
            rate_any=t.rate.max(axis=0),
        )

    def _kind_table(self, spec: DetectorSpec) -> NDArray[np.bool_]:
        table = self._kind_tables.get(spec.type)
        if table is None:
            table = np.zeros(256, dtype=np.bool_)
            for k in spec.kinds:
                if k in _KIND_CODE:
                    table[_KIND_CODE[k]] = True
            self._kind_tables[spec.type] = table
        return table

    @staticmethod
    def _peer_adjusted(p0: F64, x: F64, n: F64, prov: NDArray[np.bool_]) -> F64:
        """Provider rows: baseline times the observed/expected ratio of all other providers."""
        e = n * p0
        xt, et = float(x[prov].sum()), float(e[prov].sum())
        # only the provider rows' own ratio is used ("all other providers" is not theirs for the
        # other rows, and its denominator can reach zero there)
        others_x = np.where(prov, xt - x, 0.0)
        others_e = np.where(prov, et - e, 0.0)
        ratio = np.clip((others_x + 1.0) / (np.maximum(others_e, 0.0) + 1.0), 1.0, 5.0)
        out: F64 = np.where(prov, p0 * ratio, p0)
        return out

    @staticmethod
    def _lagged_exposure(csum: F64, k: int, scale: float) -> F64:
        """The newest ``k``-bucket window's denominator count, or the largest of the earlier
        ``k``-bucket windows of the fine ring times ``scale`` (the newest window's share of
        ``k`` whole buckets: its newest bucket is partial), per row.

        ``csum``: (rows, n_fine) cumulative sums, newest bucket first. The window ending ``j``
        buckets ago holds ``csum[j + k - 1] - csum[j - 1]``."""
        n_fine = csum.shape[1]
        if k >= n_fine:
            out: F64 = csum[:, n_fine - 1]
            return out
        shifted = csum[:, k:] - csum[:, : n_fine - k]
        out = np.maximum(csum[:, k - 1], scale * shifted.max(axis=1))
        return out

    def _coarse_peak_hour(self, spec: DetectorSpec, rows: NDArray[np.intp]) -> F64:
        """The largest denominator count of the ``den_coarse_h`` completed coarse buckets before
        the current one, per row (a window of the lag range older than the fine ring)."""
        st = self.store
        n = st.config.n_coarse
        h = min(spec.den_coarse_h, n - 1)
        if st.coarse_head < 0 or h <= 0:
            return np.zeros(rows.size, dtype=np.float64)
        col = COARSE_COLUMNS.index(spec.den)
        slots = [(st.coarse_head - j) % n for j in range(1, h + 1)]
        out: F64 = st.coarse[:, slots, col][rows].max(axis=1).astype(np.float64)
        return out
