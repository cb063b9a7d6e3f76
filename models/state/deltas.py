"""Per-tick count deltas: the unit exchanged between ingest and the rolling state.

Ingest (one per input partition) turns classified events into ``Deltas``: for every
(scope, event-time bucket) that saw events during the tick, one row of outcome counts in
``models.schema.COLUMNS`` order. Deltas are additive and carry scope *names*, not local ids, so
partial deltas produced by several workers can be summed exactly by whoever owns a scope
(docs/architecture.md). ``RollingState``/``Monitor`` consume them; ``repmon replay`` produces
them from files with the same code the worker uses.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from models.schema import N_COLUMNS


@dataclass(slots=True)
class Deltas:
    """Counts per (scope, bucket) accumulated over one tick.

    Attributes:
        scopes: scope keys (``"provider:google"``) referenced by ``scope_idx``.
        scope_idx: int32 array (n,), index into ``scopes`` for each row.
        bucket_start: int64 array (n,), event-time bucket start in epoch seconds.
        counts: int64 array (n, N_COLUMNS), outcome counts in ``COLUMNS`` order.
        replies: ``(scope_idx, normalised reply text, count)`` for the most frequent non-delivery
            replies of each scope during the tick (bounded per scope), used as incident evidence.
        watermark: the largest event time seen by the producer so far (epoch seconds).
        late_dropped: events older than the allowed lateness, counted but not bucketed.
        members: ``(part, whole)`` pairs of single scopes seen together in the tick's events:
            a sending IP and the pool it sent in (``("ip:192.0.2.7", "pool:shared-a")``). The
            Monitor keeps them (``models.detect.membership``), so
            that an incident on a pool and one on an IP of it are known to be about the same
            mail (docs/incidents.md).
    """

    scopes: list[str]
    scope_idx: NDArray[np.int32]
    bucket_start: NDArray[np.int64]
    counts: NDArray[np.int64]
    replies: list[tuple[int, str, int]] = field(default_factory=list)
    watermark: float = 0.0
    late_dropped: int = 0
    members: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def empty(cls) -> Deltas:
        return cls(
            scopes=[],
            scope_idx=np.zeros(0, dtype=np.int32),
            bucket_start=np.zeros(0, dtype=np.int64),
            counts=np.zeros((0, N_COLUMNS), dtype=np.int64),
        )

    def __len__(self) -> int:
        return int(self.scope_idx.shape[0])

    def scope_rows(self, scope: str) -> NDArray[np.int64]:
        """Row indices that belong to one scope (for tests and debugging)."""
        try:
            i = self.scopes.index(scope)
        except ValueError:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.scope_idx == i)

    def totals(self, scope: str) -> NDArray[np.int64]:
        """Summed counts of one scope over all buckets in this delta."""
        rows = self.scope_rows(scope)
        out: NDArray[np.int64] = self.counts[rows].sum(axis=0, dtype=np.int64)
        return out
