"""Two bounded memories of the ingest Pipeline: the event keys seen last (duplicates) and the
recipients delivered last with the message they were delivered in (known-good).

:class:`RecentKeys` answers "was this event already accepted?" for at-least-once producers: a
window of the last distinct 64-bit event keys, in generations. The newest generation is a set;
the older ones are one sorted numpy array (8 bytes a key).

:class:`RecentDeliveries` answers "was this recipient delivered in a message other than this
one?" for the deliveries too recent to be in the Bloom filter: a set-associative table of
recipient key -> message hash, oldest way out first (the evicted recipients go to the Bloom
filter). docs/events.md has the rules and their limits.

Pure logic: standard library and numpy only.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from models.state.snapshot import Snap, SnapshotError

#: generations of RecentKeys (the newest one a set, the others sorted arrays)
KEY_GENERATIONS = 8
_GEN_BITS = np.int64(KEY_GENERATIONS - 1)
_HIGH_BITS = ~_GEN_BITS
_HIGH_INT = ~(KEY_GENERATIONS - 1)
#: runs of at most this many keys are looked up one by one (no numpy calls)
_SMALL = 4
#: ways per set of RecentDeliveries (a set is one 64-byte row: keys, messages, ages)
WAYS = 4
_ROW = 2 * WAYS  # 64-bit words per set
_MSG = 2 * WAYS  # the first message of a set, in 32-bit words
_AGE = 3 * WAYS  # the first age of a set, in 32-bit words
#: RecentDeliveries' message value for "delivered in more than one message, or in one without
#: a message id": it vouches for every message
ANY_MESSAGE = 0


class RecentKeys:
    """The last distinct 64-bit keys, about ``capacity`` of them.

    Keys live in :data:`KEY_GENERATIONS` generations of ``ceil(capacity / 8)`` keys. New keys
    go into the newest, a set; when it is full it is sorted into one array with the older ones
    and the oldest generation is dropped. A key is therefore remembered for at least
    ``7/8 capacity`` and at most ``capacity`` later distinct keys (``capacity`` rounded up to
    a multiple of 8). In the array the low 3 bits of a key hold its generation, so keys there
    are compared on their high 61 bits. Memory at capacity: ~80 bytes a key in the newest
    generation (a Python set, 1/8 of the keys), 8 bytes in the others: about 17 bytes a key.
    (Two Python sets would take ~80 bytes a key for a few percent less time.) ``capacity`` 0
    remembers nothing.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, int(capacity))
        self.step = max(1, -(-self.capacity // KEY_GENERATIONS))
        self._new: set[int] = set()
        #: the keys of the newest generation, as arrays and ints (for the next rotation)
        self._arrays: list[NDArray[np.int64]] = []
        self._ints: list[int] = []
        #: the older generations: sorted (key & ~7) | generation
        self._old: NDArray[np.int64] = np.zeros(0, dtype=np.int64)
        self._gens: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._new) + len(self._old)

    @property
    def nbytes(self) -> int:
        """Bytes of the older generations (the newest is a Python set of ints)."""
        return int(self._old.nbytes)

    def seen(self, keys: Sequence[int | None]) -> list[int]:
        """The positions in ``keys`` of keys seen before (in the window, or earlier in
        ``keys``); the others are remembered. None is never seen nor remembered.

        The same as asking about one key at a time: a run of keys is cut where the newest
        generation fills up, so generations turn over at the same key either way.
        """
        if not self.capacity:
            return []
        if len(keys) == 1:  # one event: the same steps, without the loop
            dup = self._piece(keys)
            if len(self._new) >= self.step:
                self._rotate()
            return dup
        out: list[int] = []
        i, n = 0, len(keys)
        while i < n:
            room = self.step - len(self._new)
            piece = keys[i : i + room] if i or n > room else keys
            out += [i + j for j in self._piece(piece)]
            i += len(piece)
            if len(self._new) >= self.step:
                self._rotate()
        return out

    def _piece(self, piece: Sequence[int | None]) -> list[int]:
        """:meth:`seen` for a run that cannot fill the newest generation."""
        rows: Sequence[int] = range(len(piece))
        keys: Sequence[int]
        if None in piece:
            rows = [j for j, k in enumerate(piece) if k is not None]
            keys = [k for k in piece if k is not None]
        else:
            keys = piece  # type: ignore[assignment]
        if not keys:
            return []
        new = self._new
        small = len(keys) <= _SMALL
        arr = None if small else np.array(keys, dtype=np.int64)
        in_old = self._in_old(keys, arr) if len(self._old) else None
        if in_old is None and new.isdisjoint(keys):
            size = len(new)
            new.update(keys)
            if len(new) - size == len(keys):  # all new and distinct: the common case
                if arr is None:
                    self._ints += keys
                else:
                    self._arrays.append(arr)
                return []
            new.difference_update(keys)  # repeats within the run: one by one below
        dups = []
        for j, k, o in zip(rows, keys, in_old or [False] * len(keys), strict=True):
            if o or k in new:
                dups.append(j)
            else:
                new.add(k)
                self._ints.append(k)
        return dups

    def _in_old(self, keys: Sequence[int], arr: NDArray[np.int64] | None) -> list[bool] | None:
        """Whether each key is in the older generations; None when none is. ``arr``: the keys
        as an array (None: few keys, asked one at a time)."""
        old = self._old
        if arr is None:
            flags = []
            for k in keys:
                high = k & _HIGH_INT
                i = int(old.searchsorted(high))
                flags.append(i < len(old) and int(old[i]) & _HIGH_INT == high)
            return flags if any(flags) else None
        q = arr & _HIGH_BITS
        qs = np.sort(q)  # sorted queries: the binary searches share their paths (3x faster)
        pos = np.searchsorted(old, qs)
        pos[pos == len(old)] = 0
        if not ((old[pos] & _HIGH_BITS) == qs).any():
            return None
        pos = np.searchsorted(old, q)  # some are: which ones (rare)
        pos[pos == len(old)] = 0
        found: list[bool] = ((old[pos] & _HIGH_BITS) == q).tolist()
        return found

    def snapshot(self) -> Snap:
        new = np.concatenate([*self._arrays, np.array(self._ints, dtype=np.int64)])
        return Snap(
            meta={"capacity": self.capacity, "gens": list(self._gens)},
            arrays={"new": new.astype(np.int64), "old": self._old},
        )

    def restore(self, snap: Snap) -> None:
        """Continue from :meth:`snapshot` (of a window with the same capacity)."""
        if int(snap.meta["capacity"]) != self.capacity:
            raise SnapshotError("duplicate window of another capacity")
        new = snap.array("new").astype(np.int64)
        self._new = set(new.tolist())
        self._arrays, self._ints = [new], []
        self._old = snap.array("old").astype(np.int64)
        self._gens = deque(int(g) for g in snap.meta["gens"])

    def _rotate(self) -> None:
        old = self._old
        if len(self._gens) >= KEY_GENERATIONS - 1:
            old = old[(old & _GEN_BITS) != self._gens.popleft()]
        tag = next(g for g in range(KEY_GENERATIONS) if g not in self._gens)
        gen = np.concatenate([*self._arrays, np.array(self._ints, dtype=np.int64)])
        gen = gen & _HIGH_BITS | tag
        gen.sort()
        # two sorted runs: the stable sort merges them in one pass
        merged = np.concatenate((old, gen))
        merged.sort(kind="stable")
        self._old = merged
        self._gens.append(tag)
        self._new = set()
        self._arrays, self._ints = [], []


class RecentDeliveries:
    """Recipient key -> 32-bit hash of the message it was last delivered in, for about
    ``capacity`` recipients.

    A table of ``WAYS``-way sets (a recipient's set: the low bits of its key). A delivery of a
    recipient in the table updates its entry: the same message keeps the hash, another one
    makes it :data:`ANY_MESSAGE`. A new recipient takes the oldest way of its set; the recipient
    it evicts is returned, for the Bloom filter. 16 bytes an entry (key, hash, age), fixed:
    8 MiB at the default 524,288 entries.
    """

    def __init__(self, capacity: int = 1 << 19) -> None:
        bits = max(0, (max(1, int(capacity) // WAYS) - 1).bit_length())
        sets = 1 << bits
        self._mask = np.uint64(sets - 1)
        #: rotating a key by this many bits puts its set first (one sort groups by set, then key)
        self._rot = (np.uint64(64 - bits) if bits else np.uint64(0), np.uint64(bits))
        # one 64-byte row per set, on a cache line: WAYS keys, then WAYS 32-bit message
        # hashes, then WAYS 32-bit ages (the add() call that last wrote the way; 0: empty)
        buf = np.zeros(sets * _ROW + 8, dtype=np.uint64)
        skip = (-buf.ctypes.data % 64) // 8
        self._table = buf[skip : skip + sets * _ROW].reshape(sets, _ROW)
        self._flat64 = self._table.reshape(-1)
        self._flat32 = self._table.view(np.uint32).reshape(-1)
        self._age = 0

    @property
    def capacity(self) -> int:
        return int(self._table.shape[0] * WAYS)

    @property
    def nbytes(self) -> int:
        return int(self._table.nbytes)

    def _rows(
        self, rkeys: NDArray[np.uint64]
    ) -> tuple[NDArray[np.intp], NDArray[np.uint64], NDArray[np.uint32], NDArray[np.uint32]]:
        """The sets of ``rkeys``, and copies of their keys, messages and ages."""
        s = (rkeys & self._mask).astype(np.intp)
        rows = self._table[s]
        words = rows.view(np.uint32)
        return s, rows[:, :WAYS], words[:, _MSG : _MSG + WAYS], words[:, _AGE : _AGE + WAYS]

    def snapshot(self) -> Snap:
        return Snap(meta={"age": self._age}, arrays={"table": self._table.copy()})

    def restore(self, snap: Snap) -> None:
        """Continue from :meth:`snapshot` (of a table with the same capacity)."""
        table = snap.array("table")
        if table.shape != self._table.shape:
            raise SnapshotError("known-good table of another capacity")
        self._table[...] = table
        self._age = int(snap.meta["age"])

    def lookup(self, rkeys: NDArray[np.uint64]) -> tuple[NDArray[np.bool_], NDArray[np.uint32]]:
        """Whether each recipient is in the table, and its message value (where it is)."""
        _, keys, messages, _ = self._rows(rkeys)
        match = keys == rkeys[:, None]
        way = match.argmax(axis=1)
        return match.any(axis=1), messages[np.arange(len(rkeys)), way]

    def add(self, rkeys: NDArray[np.uint64], messages: NDArray[np.uint32]) -> NDArray[np.uint64]:
        """Record deliveries (in feed order; message 0: without a message id); returns the
        recipient keys evicted to make room (delivered earlier, for the Bloom filter)."""
        if not len(rkeys):
            return np.zeros(0, dtype=np.uint64)
        self._age = self._age % 0xFFFFFFFF + 1  # never 0 (empty)
        age = np.uint32(self._age)
        # one entry per recipient, grouped by set: its message, or ANY_MESSAGE for several
        left, right = self._rot
        order = np.argsort((rkeys << left) | (rkeys >> right))
        srk, val = rkeys[order], messages[order]
        if len(srk) > 1:
            first = np.flatnonzero(np.concatenate(([True], srk[1:] != srk[:-1])))
            if len(first) < len(srk):
                lo = np.minimum.reduceat(val, first)
                hi = np.maximum.reduceat(val, first)
                srk, val = srk[first], np.where(lo == hi, lo, np.uint32(ANY_MESSAGE))
        s, keys, msgs, ages = self._rows(srk)
        match = keys == srk[:, None]
        known = match.any(axis=1)
        if known.any():
            kw = match[known].argmax(axis=1)
            kr = np.flatnonzero(known)
            prev = msgs[kr, kw]
            v = val[known]
            base = s[known] * (2 * _ROW) + kw
            self._flat32[base + _MSG] = np.where(prev == v, v, np.uint32(ANY_MESSAGE))
            self._flat32[base + _AGE] = age
            if known.all():
                return np.zeros(0, dtype=np.uint64)
            ages[kr, kw] = age
            new = ~known
            srk, val, s, keys, ages = srk[new], val[new], s[new], keys[new], ages[new]
        # the r-th new recipient of a set takes its r-th oldest way (ways refreshed just now
        # come last); more than WAYS new ones in one set in one call go straight out
        starts = np.concatenate(([True], s[1:] != s[:-1]))
        overflow = None
        if starts.all():
            way = ages.argmin(axis=1)
        else:
            at = np.flatnonzero(starts)
            rank = np.arange(len(s)) - np.repeat(at, np.diff(np.append(at, len(s))))
            fits = rank < WAYS
            overflow = srk[~fits]
            srk, val, s, keys, ages = srk[fits], val[fits], s[fits], keys[fits], ages[fits]
            way = np.argsort(ages, axis=1, kind="stable")[np.arange(len(s)), rank[fits]]
        i = np.arange(len(s))
        out: NDArray[np.uint64] = keys[i, way]
        out = out[(ages[i, way] != 0) & (out != 0)]
        self._flat64[s * _ROW + way] = srk
        base = s * (2 * _ROW) + way
        self._flat32[base + _MSG] = val
        self._flat32[base + _AGE] = age
        if overflow is not None and len(overflow):
            out = np.concatenate((out, overflow))
        return out
