"""Attribution: the narrowest scope whose surge explains a candidate's (docs/incidents.md).

A surge on a wide scope W (``provider:google``, ``ip:192.0.2.7``, ``sender:news.example``) can
come from one narrower part of it: one IP at Google, one sender domain at Microsoft. The
narrower parts that can be named are the combined scopes (``ip:X|provider:P``): each is a part
of two wide scopes, ``provider:P`` and ``ip:X``; and, by membership (``models.detect.membership``),
an IP's scopes are parts of its pool's (``ip:X|provider:P`` of ``pool:Y|provider:P``). For a
candidate W and the window that opened it:

* a hot part C **explains** W when C is clearly narrower (at most ``NARROWER`` of W's volume),
  holds most of W's excess count (at least ``EXPLAIN_SHARE``, both against W's baseline), and
  the rest of W, ``W - C``, is not affected alike: its rate is not significantly above W's
  baseline (one-sided z below ``Z_ALIKE``), or its excess rate is under ``ALIKE_SHARE`` of C's.
  Of the parts that explain W, the one with the least volume is taken;
* else a few hot parts of one kind (at most ``MAX_PARTS``, at most ``GROUP_NARROWER`` of W's
  volume together) explain W together on the same terms; each of them is taken (of several
  such groups, the one with the least volume: the narrowest);
* else W is the scope to act on (the parts are affected alike: a provider-wide problem).

Pure numpy over the Monitor's frame: the statistics are those of the detector's own test.
"""

from __future__ import annotations

import math
from typing import Final

import numpy as np
from numpy.typing import NDArray

from models.detect.detectors import DetectorSpec
from models.detect.windows import Frame, SpecResult

#: a part must hold at most this share of the wide scope's volume to be "narrower"
NARROWER: Final[float] = 0.8
#: the rest is affected alike when its z reaches this...
Z_ALIKE: Final[float] = 3.0
#: ...and its excess rate is at least this share of the part's excess rate
ALIKE_SHARE: Final[float] = 0.25
#: a part must hold at least this share of the wide scope's excess count
EXPLAIN_SHARE: Final[float] = 0.8
#: parts of one kind that may explain a wide scope together, and their volume share at most
MAX_PARTS: Final[int] = 3
GROUP_NARROWER: Final[float] = 0.5


def parents_of(rows: dict[str, int]) -> dict[int, tuple[int, int]]:
    """Row of every combined scope -> rows of its two wide scopes (the single scope, the
    provider; -1 for one that is not held). ``rows``: scope -> row."""
    out: dict[int, tuple[int, int]] = {}
    for name, row in rows.items():
        single, bar, prov = name.partition("|")
        if bar:
            out[row] = (rows.get(single, -1), rows.get(prov, -1))
    return out


def _alike(x_r: float, n_r: float, p0: float, part_rate: float) -> bool:
    """Whether the rest (``x_r`` of ``n_r``) is affected like a part of rate ``part_rate``."""
    if n_r <= 0:
        return False
    var = n_r * p0 * (1.0 - p0)
    z = (x_r - n_r * p0) / math.sqrt(var) if var > 0 else (math.inf if x_r > n_r * p0 else 0.0)
    return z >= Z_ALIKE and (x_r / n_r - p0) >= ALIKE_SHARE * (part_rate - p0)


def attribute(
    spec: DetectorSpec,
    f: Frame,
    res: SpecResult,
    parents: dict[int, tuple[int, int]],
    kinds_allowed: NDArray[np.bool_],
    members: dict[int, list[int]] | None = None,
) -> dict[int, list[int]]:
    """Candidate frame position -> the positions to open instead (absent: open it as is).

    ``parents``: frame position of every combined scope -> positions of its two wide scopes.
    A part C chosen for W has a second wide scope W2 (``ip:X`` when W is ``provider:P``, and the
    other way round); when W2 is hot too and the rest of W2 outside C is affected alike (the IP
    is rate-limited at every provider, or every IP is at this provider), W2 is the scope.

    ``members``: positions of a pool's scope -> its IPs' scopes (``models.detect.membership``);
    they are parts of the pool like combined scopes are parts of their wide scopes, with no
    second wide scope to weigh."""
    children: dict[int, list[int]] = {}
    for c, pair in parents.items():
        for wp in pair:
            if wp >= 0:
                children.setdefault(wp, []).append(c)
    for wp, cs in (members or {}).items():
        children.setdefault(wp, []).extend(cs)
    out: dict[int, list[int]] = {}
    t = res.t
    for w_pos in np.flatnonzero(res.opens).tolist():
        parts = [
            c
            for c in children.get(w_pos, ())
            if res.hot[c] and kinds_allowed[c] and t.x[int(res.best_w[w_pos]), c] >= spec.min_num
        ]
        if not parts:
            continue
        w = int(res.best_w[w_pos])
        x_w, n_w = float(t.x[w, w_pos]), float(t.n[w, w_pos])
        p0 = float(t.p0[w, w_pos])
        excess_w = x_w - n_w * p0
        if n_w <= 0 or excess_w <= 0:
            continue
        single: list[tuple[float, int]] = []
        for c in parts:
            x_c, n_c = float(t.x[w, c]), float(t.n[w, c])
            if n_c <= 0 or n_c > NARROWER * n_w or x_c - n_c * p0 < EXPLAIN_SHARE * excess_w:
                continue
            if not _alike(x_w - x_c, n_w - n_c, p0, x_c / n_c):
                single.append((n_c, c))
        if single:
            c = min(single)[1]
            pc: tuple[int, ...] = parents.get(c, ())
            other = next((wp for wp in pc if wp not in (w_pos, -1)), -1) if w_pos in pc else -1
            if other >= 0 and res.hot[other] and kinds_allowed[other]:
                x_o, n_o = float(t.x[w, other]), float(t.n[w, other])
                x_c, n_c = float(t.x[w, c]), float(t.n[w, c])
                if _alike(x_o - x_c, n_o - n_c, float(t.p0[w, other]), x_c / n_c):
                    out[w_pos] = [other]
                    continue
            out[w_pos] = [c]
            continue
        by_kind: dict[int, list[int]] = {}
        for c in parts:
            by_kind.setdefault(int(f.kinds[c]), []).append(c)
        groups: list[tuple[float, int, list[int]]] = []
        for kind, group in by_kind.items():
            if not 1 < len(group) <= MAX_PARTS:
                continue
            x_g = sum(float(t.x[w, c]) for c in group)
            n_g = sum(float(t.n[w, c]) for c in group)
            if n_g <= 0 or n_g > GROUP_NARROWER * n_w or x_g - n_g * p0 < EXPLAIN_SHARE * excess_w:
                continue
            if not _alike(x_w - x_g, n_w - n_g, p0, x_g / n_g):
                groups.append((n_g, kind, sorted(group)))
        if groups:  # the narrowest group (least volume), whatever order the scopes came in
            out[w_pos] = min(groups)[2]
    return out


def parts_explain(res: SpecResult, w_pos: int, part_pos: list[int]) -> bool:
    """Whether disjoint parts of a wide scope that already have incidents explain its surge
    together: they hold at most ``GROUP_NARROWER`` of its volume and at least ``EXPLAIN_SHARE``
    of its excess count, and the rest of it is not affected alike (a pool and an IP of another
    pool rate-limited at Yahoo are not all of Yahoo). Then the wide scope does not widen them."""
    t = res.t
    w = int(res.best_w[w_pos])
    x_w, n_w = float(t.x[w, w_pos]), float(t.n[w, w_pos])
    p0 = float(t.p0[w, w_pos])
    excess_w = x_w - n_w * p0
    x_g = sum(float(t.x[w, c]) for c in part_pos)
    n_g = sum(float(t.n[w, c]) for c in part_pos)
    if n_w <= 0 or excess_w <= 0 or n_g <= 0 or n_g > GROUP_NARROWER * n_w:
        return False
    if x_g - n_g * p0 < EXPLAIN_SHARE * excess_w:
        return False
    return not _alike(x_w - x_g, n_w - n_g, p0, x_g / n_g)
