"""Which IP sends in which pool: containment a scope's name does not tell.

A combined scope names its two wide scopes (``ip:X|provider:P`` is a part of ``ip:X`` and of
``provider:P``), but an IP's pool is not in its name. Ingest reports the (IP, pool) pairs of
each tick's events (``Deltas.members``);
:class:`Membership` keeps the wholes each part was seen in, and answers the Monitor's
questions (docs/incidents.md, "Attribution"). A part may be in several wholes at once (KumoMTA
lets a source serve several pools): each pair is kept with the newest event time it was seen
at, and forgotten ``ttl_s`` of event time later, so the result does not depend on the order
pairs arrive in, and a part moved to another whole leaves the old one after a day.

* the wholes of a scope: ``ip:X`` is a part of ``pool:Y``, and ``ip:X|provider:P`` of
  ``pool:Y|provider:P`` (and of ``pool:Y``);
* whether a part and a whole of the paired kinds are disjoint: the IP sends in another pool;
* the frame's parts of every whole, for attribution (one IP of a pool explains the pool's
  surge, or the pool's IPs are affected alike).

Pure Python over scope names; a handful of pairs per tick.
"""

from __future__ import annotations

import math
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

#: the (part, whole) kinds reported by ingest (name prefixes): part kind -> whole kind. Not
#: campaign -> tenant: with it, a campaign that is most of its tenant's mail widened into the
#: tenant (a bad list import, one campaign's complaints), where the campaign is what to pause
#: (docs/evaluation.md)
PAIRS: Final[dict[str, str]] = {"ip:": "pool:"}
_WHOLES: Final[dict[str, str]] = {w: p for p, w in PAIRS.items()}


def _kind(scope: str) -> str:
    return scope[: scope.find(":") + 1]


class Membership:
    """The wholes each part was seen in, with the newest event time of each pair; bounded by
    ``ttl_s`` and by the scopes the rolling store holds (:meth:`maybe_prune`)."""

    __slots__ = ("_limit", "_swept", "_wholes", "ttl_s", "version")

    def __init__(self, ttl_s: float = 86_400.0) -> None:
        #: part -> {whole: newest event time the pair was seen at}
        self._wholes: dict[str, dict[str, float]] = {}
        self.ttl_s = ttl_s
        #: bumped when a pair is added or forgotten (caches keyed by it), not when one is seen
        #: again
        self.version = 0
        self._limit = 1024
        self._swept = -math.inf

    def __len__(self) -> int:
        return len(self._wholes)

    def add(self, pairs: list[tuple[str, str]], t: float) -> None:
        """Remember ``(part, whole)`` pairs (``("ip:X", "pool:Y")``) seen up to event time
        ``t``; pairs of kinds that are not paired are ignored."""
        for part, whole in pairs:
            if PAIRS.get(_kind(part)) != _kind(whole):
                continue
            ws = self._wholes.setdefault(part, {})
            seen = ws.get(whole)
            if seen is None:
                self.version += 1
            if seen is None or t > seen:
                ws[whole] = t

    def expire(self, now: float) -> None:
        """Forget the pairs not seen for ``ttl_s`` of event time (swept at most hourly)."""
        if now - self._swept < 3600.0:
            return
        self._swept = now
        horizon = now - self.ttl_s
        for part in list(self._wholes):
            ws = self._wholes[part]
            old = [w for w, seen in ws.items() if seen < horizon]
            for w in old:
                del ws[w]
            if old:
                self.version += 1
            if not ws:
                del self._wholes[part]

    def maybe_prune(self, held: dict[str, int]) -> None:
        """Forget the parts the rolling store holds no scope of (``held``: scope -> row), once
        the parts outnumber twice what the last prune kept (plus 1,024). A part is held when
        ``ip:X`` or any ``ip:X|provider:P`` is (an owner of some rollup partitions holds only
        some of an IP's scopes)."""
        if len(self._wholes) <= self._limit:
            return
        singles = {name.partition("|")[0] for name in held}
        gone = [part for part in self._wholes if part not in singles]
        for part in gone:
            del self._wholes[part]
        if gone:
            self.version += 1
        self._limit = 2 * len(self._wholes) + 1024

    def wholes_of(self, part: str) -> tuple[str, ...]:
        """The wholes ``part`` is in (the pools of ``ip:X``), sorted."""
        return tuple(sorted(self._wholes.get(part, ())))

    def wholes(self, scope: str) -> tuple[str, ...]:
        """The scopes that hold all of ``scope``'s mail in one of its wholes: ``pool:Y`` for
        ``ip:X``, and ``pool:Y|provider:P`` and ``pool:Y`` for ``ip:X|provider:P`` (none when
        unknown); the combined ones first."""
        single, bar, prov = scope.partition("|")
        ws = self.wholes_of(single)
        if not ws:
            return ()
        return (*(f"{w}|{prov}" for w in ws), *ws) if bar else ws

    def disjoint(self, a: str, b: str) -> bool:
        """Whether a part and a whole of paired kinds hold none of the same mail: the IP sends
        in other pools only (False when the kinds are not paired, or the part is unknown)."""
        sa, sb = a.partition("|")[0], b.partition("|")[0]
        if _kind(sa) in _WHOLES:
            sa, sb = sb, sa
        if PAIRS.get(_kind(sa)) != _kind(sb):
            return False
        ws = self._wholes.get(sa)
        return ws is not None and sb not in ws

    def pairs_of(self, rows: dict[str, int]) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
        """Rows of (whole, part) for every pair of held scopes: ``pool:Y`` and ``ip:X``,
        ``pool:Y|provider:P`` and ``ip:X|provider:P``."""
        wr: list[int] = []
        pr: list[int] = []
        for name, row in rows.items():
            single, bar, prov = name.partition("|")
            if _kind(single) not in PAIRS:
                continue
            for w in self._wholes.get(single, ()):
                r = rows.get(f"{w}|{prov}" if bar else w)
                if r is not None:
                    wr.append(r)
                    pr.append(row)
        return np.asarray(wr, dtype=np.intp), np.asarray(pr, dtype=np.intp)

    def snapshot(self) -> dict[str, dict[str, float]]:
        return {part: dict(ws) for part, ws in self._wholes.items()}

    def restore(self, state: dict[str, Any], now: float = 0.0) -> None:
        """From :meth:`snapshot` (a part -> whole mapping of an older format is read too, as
        seen at ``now``, the restored clock: it carries no times)."""
        self._wholes = {
            str(part): {str(ws): now}
            if isinstance(ws, str)
            else {str(w): float(t) for w, t in ws.items()}
            for part, ws in state.items()
        }
        self.version += 1
