"""Which IP sends in which pool: the containment a scope's name does not tell.

A combined scope names its two wide scopes (``ip:X|provider:P`` is a part of ``ip:X`` and of
``provider:P``), but an IP's pool is not in its name. Ingest reports the (IP, pool) pairs of
each tick's events (``Deltas.members``); :class:`Membership` keeps the last pool each IP sent in,
and answers the Monitor's questions (docs/incidents.md, "Attribution"):

* the wholes of a scope: ``ip:X`` is a part of ``pool:Y``, and ``ip:X|provider:P`` of
  ``pool:Y|provider:P`` (and of ``pool:Y``);
* whether an IP scope and a pool scope are disjoint: the IP sends in another pool;
* the frame's parts of every pool scope, for attribution (one IP of a pool explains the pool's
  surge, or the pool's IPs are affected alike).

Pure Python over scope names; a handful of pairs per tick.
"""

from __future__ import annotations

from typing import Final

#: the (part, whole) kinds reported by ingest
PART_KIND: Final[str] = "ip:"
WHOLE_KIND: Final[str] = "pool:"


class Membership:
    """The last pool each IP sent in (bounded by the scopes the rolling store holds)."""

    __slots__ = ("_pool_of", "version")

    def __init__(self) -> None:
        self._pool_of: dict[str, str] = {}
        #: bumped on every change (caches keyed by it)
        self.version = 0

    def __len__(self) -> int:
        return len(self._pool_of)

    def add(self, pairs: list[tuple[str, str]]) -> None:
        """Remember ``(ip scope, pool scope)`` pairs; an IP moved to another pool follows."""
        for part, whole in pairs:
            if not (part.startswith(PART_KIND) and whole.startswith(WHOLE_KIND)):
                continue
            if self._pool_of.get(part) != whole:
                self._pool_of[part] = whole
                self.version += 1

    def prune(self, held: dict[str, int]) -> None:
        """Forget the IPs the rolling store no longer holds (``held``: scope -> row)."""
        gone = [ip for ip in self._pool_of if ip not in held]
        for ip in gone:
            del self._pool_of[ip]
        if gone:
            self.version += 1

    def pool_of(self, ip_scope: str) -> str | None:
        return self._pool_of.get(ip_scope)

    def wholes(self, scope: str) -> tuple[str, ...]:
        """The pool scopes that hold all of ``scope``'s mail: ``pool:Y`` for ``ip:X``, and
        ``pool:Y|provider:P`` and ``pool:Y`` for ``ip:X|provider:P`` (none when unknown)."""
        single, bar, prov = scope.partition("|")
        pool = self._pool_of.get(single)
        if pool is None:
            return ()
        return (f"{pool}|{prov}", pool) if bar else (pool,)

    def disjoint(self, a: str, b: str) -> bool:
        """Whether an IP scope and a pool scope hold none of the same mail: the IP sends in
        another pool (False when the pair is not IP and pool, or the IP's pool is unknown)."""
        sa, sb = a.partition("|")[0], b.partition("|")[0]
        if sa.startswith(WHOLE_KIND):
            sa, sb = sb, sa
        if not (sa.startswith(PART_KIND) and sb.startswith(WHOLE_KIND)):
            return False
        pool = self._pool_of.get(sa)
        return pool is not None and pool != sb

    def parts_of(self, rows: dict[str, int]) -> dict[int, list[int]]:
        """Row of every pool scope held -> rows of its IPs' scopes held: ``ip:X`` under
        ``pool:Y``, ``ip:X|provider:P`` under ``pool:Y|provider:P``."""
        out: dict[int, list[int]] = {}
        for name, row in rows.items():
            if not name.startswith(PART_KIND):
                continue
            for whole in self.wholes(name)[:1]:
                w = rows.get(whole)
                if w is not None:
                    out.setdefault(w, []).append(row)
        return out

    def snapshot(self) -> dict[str, str]:
        return dict(self._pool_of)

    def restore(self, pairs: dict[str, str]) -> None:
        self._pool_of = {str(k): str(v) for k, v in pairs.items()}
        self.version += 1
