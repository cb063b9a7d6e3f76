"""Recipient suppression: the :class:`~models.act.suppression.suppressor.Suppressor`'s
in-memory indexes: the timers, the open quarantining incidents with the recipients they hold,
and the recent hard hits kept for the look-back.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from models.act.suppression.state import _sec
from models.state.snapshot import Snap

# -- indexes ----------------------------------------------------------------------------------


class _Timers:
    """(time, identity) of the records with a timer, so :meth:`Suppressor.expire` finds the
    due ones without reading the store. Entries go stale when a record changes (the new timer
    adds a new entry); a due entry is only a hint to read the record."""

    def __init__(self) -> None:
        self.t: NDArray[np.uint32] = np.zeros(0, dtype=np.uint32)
        self.ident: NDArray[np.uint64] = np.zeros(0, dtype=np.uint64)
        self._pt: list[int] = []
        self._pi: list[int] = []

    def add(self, t: int, ident: int) -> None:
        self._pt.append(t)
        self._pi.append(ident)

    def _merge(self) -> None:
        if self._pt:
            t = np.concatenate((self.t, np.asarray(self._pt, dtype=np.uint32)))
            i = np.concatenate((self.ident, np.asarray(self._pi, dtype=np.uint64)))
            order = np.argsort(t, kind="stable")
            self.t, self.ident = t[order], i[order]
            self._pt, self._pi = [], []

    def pop_due(self, now: float) -> NDArray[np.uint64]:
        """The identities with an entry due at ``now`` (removed), each once, ascending."""
        self._merge()
        k = int(np.searchsorted(self.t, np.uint32(_sec(now)), side="right"))
        if not k:
            return np.zeros(0, dtype=np.uint64)
        due = np.unique(self.ident[:k])
        self.t, self.ident = self.t[k:], self.ident[k:]
        return due

    def __len__(self) -> int:
        return len(self.t) + len(self._pt)

    def snapshot(self) -> Snap:
        self._merge()
        return Snap(meta={}, arrays={"t": self.t.copy(), "ident": self.ident.copy()})

    def restore(self, snap: Snap) -> None:
        self.t = np.asarray(snap.array("t"), dtype=np.uint32)
        self.ident = np.asarray(snap.array("ident"), dtype=np.uint64)
        self._pt, self._pi = [], []


@dataclass
class _Held:
    """An open quarantining incident: its scopes and the recipients it holds."""

    hash: int
    id: str | None
    scopes: frozenset[str]
    opened_at: float
    idents: set[int] = field(default_factory=set)
    type: str = ""


@dataclass(frozen=True, slots=True)
class _Recent:
    """A hard hit counted by the schedule (not held), kept ``lookback_s`` for a quarantining
    incident that opens later."""

    ts: float
    ident: int
    reason: int
    #: the row's scope names in SCOPE_COLUMN_KINDS order ("": unknown)
    scopes: tuple[str, ...]
    before: bytes | None
    after: bytes
