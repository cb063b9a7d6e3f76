"""Which IP sends in which pool, which campaign is whose: containment a scope's name does not tell.

A combined scope names its two wide scopes (``ip:X|provider:P`` is a part of ``ip:X`` and of
``provider:P``), but an IP's pool, and a campaign's tenant, are not in their names. Ingest
reports the (IP, pool) and (campaign, tenant) pairs of each tick's events (``Deltas.members``);
:class:`Membership` keeps the last whole each part was seen in, and answers the Monitor's
questions (docs/incidents.md, "Attribution"):

* the wholes of a scope: ``ip:X`` is a part of ``pool:Y``, and ``ip:X|provider:P`` of
  ``pool:Y|provider:P`` (and of ``pool:Y``); likewise ``campaign:C`` of ``tenant:T``;
* whether a part and a whole of the paired kinds are disjoint: the IP sends in another pool;
* the frame's parts of every whole, for attribution (one IP of a pool explains the pool's
  surge, or the pool's IPs are affected alike).

Pure Python over scope names; a handful of pairs per tick.
"""

from __future__ import annotations

from typing import Final

#: the (part, whole) kinds reported by ingest (name prefixes): part kind -> whole kind
PAIRS: Final[dict[str, str]] = {"ip:": "pool:", "campaign:": "tenant:"}
_WHOLES: Final[dict[str, str]] = {w: p for p, w in PAIRS.items()}


def _kind(scope: str) -> str:
    return scope[: scope.find(":") + 1]


class Membership:
    """The last whole each part was seen in (bounded by the scopes the rolling store holds)."""

    __slots__ = ("_whole_of", "version")

    def __init__(self) -> None:
        self._whole_of: dict[str, str] = {}
        #: bumped on every change (caches keyed by it)
        self.version = 0

    def __len__(self) -> int:
        return len(self._whole_of)

    def add(self, pairs: list[tuple[str, str]]) -> None:
        """Remember ``(part, whole)`` pairs (``("ip:X", "pool:Y")``); a part moved to another
        whole follows."""
        for part, whole in pairs:
            if PAIRS.get(_kind(part)) != _kind(whole):
                continue
            if self._whole_of.get(part) != whole:
                self._whole_of[part] = whole
                self.version += 1

    def prune(self, held: dict[str, int]) -> None:
        """Forget the parts the rolling store no longer holds (``held``: scope -> row)."""
        gone = [part for part in self._whole_of if part not in held]
        for part in gone:
            del self._whole_of[part]
        if gone:
            self.version += 1

    def whole_of(self, part: str) -> str | None:
        """The whole ``part`` was last seen in (``pool:Y`` of ``ip:X``, ``tenant:T`` of
        ``campaign:C``), or None."""
        return self._whole_of.get(part)

    def wholes(self, scope: str) -> tuple[str, ...]:
        """The scopes that hold all of ``scope``'s mail: ``pool:Y`` for ``ip:X``, and
        ``pool:Y|provider:P`` and ``pool:Y`` for ``ip:X|provider:P`` (none when unknown)."""
        single, bar, prov = scope.partition("|")
        pool = self._whole_of.get(single)
        if pool is None:
            return ()
        return (f"{pool}|{prov}", pool) if bar else (pool,)

    def disjoint(self, a: str, b: str) -> bool:
        """Whether a part and a whole of paired kinds hold none of the same mail: the IP sends
        in another pool (False when the kinds are not paired, or the part's whole is unknown)."""
        sa, sb = a.partition("|")[0], b.partition("|")[0]
        if _kind(sa) in _WHOLES:
            sa, sb = sb, sa
        if PAIRS.get(_kind(sa)) != _kind(sb):
            return False
        whole = self._whole_of.get(sa)
        return whole is not None and whole != sb

    def parts_of(self, rows: dict[str, int]) -> dict[int, list[int]]:
        """Row of every whole held -> rows of its parts' scopes held: ``ip:X`` under
        ``pool:Y``, ``ip:X|provider:P`` under ``pool:Y|provider:P``."""
        out: dict[int, list[int]] = {}
        for name, row in rows.items():
            if _kind(name) not in PAIRS:
                continue
            for whole in self.wholes(name)[:1]:
                w = rows.get(whole)
                if w is not None:
                    out.setdefault(w, []).append(row)
        return out

    def snapshot(self) -> dict[str, str]:
        return dict(self._whole_of)

    def restore(self, pairs: dict[str, str]) -> None:
        self._whole_of = {str(k): str(v) for k, v in pairs.items()}
        self.version += 1
