"""A rotating Bloom filter over 64-bit keys, vectorised with numpy.

Used to remember recipients that were *recently delivered fine* (docs/incidents.md,
``false_hard_bounces``) in bounded memory. Keys are the first 8 bytes of a recipient's SHA-256
key (docs/events.md). ``generations`` bit arrays are kept; new keys go into the newest one, a
lookup checks all of them, and when the newest has received ``capacity`` keys the oldest is
cleared and becomes the newest. A key is therefore remembered for at least ``(generations - 1) *
capacity`` later insertions and at most ``generations * capacity``.

False-positive rate per generation at capacity, with m bits and k probes:
``(1 - exp(-k * capacity / m)) ** k``; the defaults (2**24 bits, k = 7, capacity 1,000,000)
give about 0.1 %, 2 MiB per generation.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.state.snapshot import Snap, SnapshotError

_MIX1 = np.uint64(0x9E3779B97F4A7C15)
_MIX2 = np.uint64(0xBF58476D1CE4E5B9)
_SHIFT = np.uint64(31)


class RotatingBloom:
    def __init__(
        self,
        bits_log2: int = 24,
        probes: int = 7,
        capacity: int = 1_000_000,
        generations: int = 2,
    ) -> None:
        if not 10 <= bits_log2 <= 34:
            raise ValueError("bits_log2 must be in 10..34")
        if probes < 1 or capacity < 1 or generations < 2:
            raise ValueError("probes, capacity >= 1 and generations >= 2 are required")
        self.bits_log2 = bits_log2
        self.mask = np.uint64((1 << bits_log2) - 1)
        self.probes = probes
        self.capacity = capacity
        self.generations = generations
        n_bytes = (1 << bits_log2) // 8
        self._gens: list[NDArray[np.uint8]] = [
            np.zeros(n_bytes, dtype=np.uint8) for _ in range(generations)
        ]
        self._newest = 0
        self._fill = 0  # keys added to the newest generation
        self.rotations = 0

    @property
    def nbytes(self) -> int:
        return sum(g.nbytes for g in self._gens)

    def _positions(self, keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """(len(keys), probes) bit positions by double hashing."""
        with np.errstate(over="ignore"):
            h1 = keys * _MIX1
            h2 = (keys ^ (keys >> _SHIFT)) * _MIX2 | np.uint64(1)
            i = np.arange(self.probes, dtype=np.uint64)
            pos: NDArray[np.uint64] = (h1[:, None] + i[None, :] * h2[:, None]) >> np.uint64(
                64 - self.bits_log2
            )
        return pos

    def add(self, keys: NDArray[np.uint64]) -> None:
        """Insert keys, rotating generations as the newest one fills up."""
        keys = np.asarray(keys, dtype=np.uint64)
        start = 0
        while start < keys.shape[0]:
            room = self.capacity - self._fill
            if room <= 0:
                self._rotate()
                continue
            chunk = keys[start : start + room]
            pos = self._positions(chunk).ravel()
            gen = self._gens[self._newest]
            np.bitwise_or.at(gen, (pos >> np.uint64(3)).astype(np.intp), _bit(pos))
            self._fill += int(chunk.shape[0])
            start += int(chunk.shape[0])

    def contains(self, keys: NDArray[np.uint64]) -> NDArray[np.bool_]:
        """Whether each key was (probably) added during the remembered generations."""
        keys = np.asarray(keys, dtype=np.uint64)
        if keys.shape[0] == 0:
            return np.zeros(0, dtype=np.bool_)
        pos = self._positions(keys)
        byte = (pos >> np.uint64(3)).astype(np.intp)
        bit = _bit(pos)
        found = np.zeros(keys.shape[0], dtype=np.bool_)
        for gen in self._gens:
            found |= np.all((gen[byte] & bit) != 0, axis=1)
        return found

    def snapshot(self) -> Snap:
        return Snap(
            meta={
                "bits_log2": self.bits_log2,
                "generations": self.generations,
                "newest": self._newest,
                "fill": self._fill,
                "rotations": self.rotations,
            },
            arrays={f"gen{i}": g.copy() for i, g in enumerate(self._gens)},
        )

    def restore(self, snap: Snap) -> None:
        """Continue from :meth:`snapshot` (of a filter of the same size)."""
        m = snap.meta
        if (m["bits_log2"], m["generations"]) != (self.bits_log2, self.generations):
            raise SnapshotError("Bloom filter of another size")
        self._gens = [snap.array(f"gen{i}").astype(np.uint8) for i in range(self.generations)]
        self._newest, self._fill = int(m["newest"]), int(m["fill"])
        self.rotations = int(m["rotations"])

    def _rotate(self) -> None:
        self._newest = (self._newest + 1) % self.generations
        self._gens[self._newest].fill(0)
        self._fill = 0
        self.rotations += 1


def _bit(pos: NDArray[np.uint64]) -> NDArray[np.uint8]:
    out: NDArray[np.uint8] = np.left_shift(
        np.uint8(1), (pos & np.uint64(7)).astype(np.uint8)
    ).astype(np.uint8)
    return out
