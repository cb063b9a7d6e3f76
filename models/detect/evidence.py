"""Incident evidence kept beside the rolling state: the most frequent replies per scope.

The Monitor hands each tick's top normalised replies (``Deltas.replies``) to a ``ReplyMemory``;
it keeps them for the current and the previous fine bucket, per rolling-store row, bounded per
row, and an opening incident quotes the top ones as ``evidence.top_replies``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.state.deltas import Deltas


class ReplyMemory:
    """Top replies per row over the current and the previous fine bucket."""

    def __init__(self, per_scope: int) -> None:
        self.per_scope = per_scope
        self._cur: dict[int, dict[str, int]] = {}
        self._prev: dict[int, dict[str, int]] = {}
        self._head = -1

    def rotate(self, head: int) -> None:
        """Follow the store's newest fine bucket: one step keeps the current as previous."""
        if head != self._head:
            if head == self._head + 1:
                self._prev = self._cur
            else:
                self._prev = {}
            self._cur = {}
            self._head = head

    def add(self, deltas: Deltas, local: NDArray[np.intp]) -> None:
        """Count the tick's replies on the rows ``local`` maps the Deltas' scopes to."""
        if not deltas.replies or not local.size:
            return
        limit = self.per_scope
        cur = self._cur
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

    def forget(self, rows: NDArray[np.intp]) -> None:
        for r in rows.tolist():
            self._cur.pop(r, None)
            self._prev.pop(r, None)

    def top(self, row: int, n: int = 5) -> list[list[Any]]:
        agg: dict[str, int] = {}
        for src in (self._prev.get(row), self._cur.get(row)):
            if src:
                for k, v in src.items():
                    agg[k] = agg.get(k, 0) + v
        return [[k, v] for k, v in sorted(agg.items(), key=lambda kv: -kv[1])[:n]]

    def snapshot(self, names: list[str | None]) -> dict[str, Any]:
        """JSON-able state, rows written as the scope names ``names[row]``."""

        def named(d: dict[int, dict[str, int]]) -> list[list[Any]]:
            return [[names[r], dict(v)] for r, v in d.items() if names[r] is not None]

        return {"head": self._head, "cur": named(self._cur), "prev": named(self._prev)}

    def restore(self, state: dict[str, Any], rows: dict[str, int]) -> None:
        """Continue from :meth:`snapshot`, scope names mapped to rows by ``rows``."""

        def unnamed(items: list[list[Any]]) -> dict[int, dict[str, int]]:
            return {rows[n]: {str(k): int(c) for k, c in v.items()} for n, v in items if n in rows}

        self._head = int(state["head"])
        self._cur = unnamed(state["cur"])
        self._prev = unnamed(state["prev"])

    def entries(self) -> int:
        return sum(len(d) for d in self._cur.values()) + sum(len(d) for d in self._prev.values())
