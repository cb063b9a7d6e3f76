"""The per-tick half of the ingest Pipeline: pending columns -> ``Deltas``.

Accepted events wait as a handful of integers in :class:`Columns`. Once per tick
:func:`aggregate` turns them into numpy arrays and, in bulk: decides which unknown-user bounces
are to known-good recipients and remembers the deliveries (:func:`known_good`), counts per
(scope combination, event-time bucket, column), then fans the counts out to the eight scope
dimensions (docs/architecture.md).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from models.ingest.recent import ANY_MESSAGE, RecentDeliveries
from models.ingest.replies import ReplyTable
from models.ingest.scopes import N_DIMS, ScopeTable
from models.schema import (
    CLASS_COLUMN_OFFSET,
    COL,
    COMBINED_KINDS,
    EVENT_KIND_CODE,
    N_COLUMNS,
    NO_CLASS,
    REASON_CODE,
    SCOPE_KINDS,
)
from models.state.bloom import RotatingBloom
from models.state.deltas import Deltas

_KIND_DELIVERED = EVENT_KIND_CODE["delivered"]
_KIND_BOUNCED = EVENT_KIND_CODE["bounced"]
_KIND_REJECTED = EVENT_KIND_CODE["rejected"]
_REASON_USERUNKNOWN = REASON_CODE["userunknown"]
_REASON_AUTH = REASON_CODE["authfailure"]
#: the single-scope dimension of each combined kind, and the provider dimension
_COMBINED_DIMS = tuple(SCOPE_KINDS.index(k.partition("|")[0]) for k in COMBINED_KINDS)
_PROVIDER_DIM = SCOPE_KINDS.index("provider")
#: (part, whole) dimensions whose pairs the Deltas report (``Deltas.members``): IP -> pool
#: (models/detect/membership.py says why not campaign -> tenant)
_MEMBER_DIMS = ((SCOPE_KINDS.index("ip"), SCOPE_KINDS.index("pool")),)


class Columns:
    """The accepted events not flushed yet, one list per column, in feed order."""

    __slots__ = ("cls", "combo", "kind", "mid", "rdig", "reason", "reply", "rkey", "ts")

    def split(self, k: int) -> Columns:
        """Keep the first ``k`` rows here; return the others as new columns."""
        tail = Columns()
        for name in self.__slots__:
            col = getattr(self, name)
            getattr(tail, name).extend(col[k:])
            del col[k:]
        return tail

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.ts: list[float] = []
        self.cls: list[int] = []
        self.reason: list[int] = []
        self.rkey: list[int] = []
        self.reply: list[int] = []
        self.combo: list[int] = []
        #: hash of the message id (0: none)
        self.mid: list[int] = []
        #: the recipient's 32-byte SHA-256 where a suppression decision may need it, else b""
        self.rdig: list[bytes] = []


def aggregate(
    c: Columns,
    *,
    bucket_s: int,
    scopes: ScopeTable,
    replies: ReplyTable,
    bloom: RotatingBloom,
    recent: RecentDeliveries,
    watermark: float,
    known_good_out: list[NDArray[np.bool_]] | None = None,
) -> Deltas:
    """The Deltas of the events in ``c`` (counts per scope, bucket and column, top replies).
    ``known_good_out`` (a list) receives the known-good verdict of every event (see
    :func:`known_good_bounces`)."""
    n = len(c.ts)
    if n == 0:
        d = Deltas.empty()
        d.watermark = watermark
        if known_good_out is not None:
            known_good_out.append(np.zeros(0, dtype=np.bool_))
        return d
    kind = np.asarray(c.kind, dtype=np.int64)
    ts = np.asarray(c.ts, dtype=np.float64)
    cls = np.asarray(c.cls, dtype=np.int64)
    reason = np.asarray(c.reason, dtype=np.int64)
    rkey = np.asarray(c.rkey, dtype=np.uint64)
    reply = np.asarray(c.reply, dtype=np.int64)
    combo = np.asarray(c.combo, dtype=np.int64)
    combo_scopes = scopes.combo_array()
    bucket = (np.floor(ts / bucket_s) * bucket_s).astype(np.int64)

    uu = (reason == _REASON_USERUNKNOWN) & ((kind == _KIND_BOUNCED) | (kind == _KIND_REJECTED))
    known_good = known_good_bounces(
        kind == _KIND_DELIVERED,
        uu,
        rkey,
        np.asarray(c.mid, dtype=np.int64).astype(np.uint32),
        bloom,
        recent,
    )
    if known_good_out is not None:
        known_good_out.append(known_good)

    # (event, column) increments
    ev_parts = [np.arange(n)]
    col_parts = [kind]
    has_cls = cls != NO_CLASS
    ev_parts.append(np.flatnonzero(has_cls))
    col_parts.append(cls[has_cls] + CLASS_COLUMN_OFFSET)
    for mask, col in (
        (reason == _REASON_AUTH, COL["auth_failure"]),
        (uu, COL["user_unknown"]),
        (known_good, COL["user_unknown_known_good"]),
    ):
        ev_parts.append(np.flatnonzero(mask))
        col_parts.append(np.full(int(mask.sum()), col, dtype=np.int64))
    ev = np.concatenate(ev_parts)
    col_of = np.concatenate(col_parts)

    # 1) aggregate per (combo, bucket, column): events of one tick share few combos
    b0 = int(bucket.min())
    nb = int((bucket.max() - b0) // bucket_s) + 1
    bidx = (bucket[ev] - b0) // bucket_s
    k1, w1 = np.unique((combo[ev] * nb + bidx) * N_COLUMNS + col_of, return_counts=True)
    col1 = k1 % N_COLUMNS
    cb1 = k1 // N_COLUMNS
    # 2) fan the aggregated triples out to every scope dimension of their combo, and to the
    # combined scopes (one sending dimension at the combo's provider)
    # the combined scopes once per distinct combo of the tick, then per triple
    u_combo, inv_c = np.unique(cb1 // nb, return_inverse=True)
    rows_u = combo_scopes[u_combo, :N_DIMS]
    extra_u, extra_names = _combined(rows_u, scopes.names)
    rows_c = rows_u[inv_c]
    extra_sid = extra_u[inv_c]
    sid = np.concatenate((rows_c.T.ravel(), extra_sid.T.ravel()))
    fan = N_DIMS + extra_sid.shape[1]
    rb = np.tile(cb1 % nb, fan)
    cc = np.tile(col1, fan)
    ww = np.tile(w1, fan)
    keep = sid >= 0
    sid, rb, cc, ww = sid[keep], rb[keep], cc[keep], ww[keep]
    uniq, inv = np.unique(sid * nb + rb, return_inverse=True)
    counts = (
        np.bincount(inv * N_COLUMNS + cc, weights=ww, minlength=uniq.shape[0] * N_COLUMNS)
        .astype(np.int64)
        .reshape(uniq.shape[0], N_COLUMNS)
    )
    gsid = uniq // nb
    gbucket = b0 + (uniq % nb) * bucket_s
    local_sids, scope_idx = np.unique(gsid, return_inverse=True)
    base = len(scopes.names)
    names = [scopes.names[int(s)] if s < base else extra_names[int(s) - base] for s in local_sids]
    # top replies of every scope, the combined ones too (an incident on ip:X|provider:Y shows
    # what Y answered X): the tick's combos with all their scope ids, single and combined
    full_u = np.concatenate((rows_u, extra_u), axis=1)
    top = replies.top(full_u, np.searchsorted(u_combo, combo), reply, local_sids)
    return Deltas(
        scopes=names,
        scope_idx=scope_idx.astype(np.int32),
        bucket_start=gbucket.astype(np.int64),
        counts=counts,
        replies=top,
        watermark=watermark,
        members=_members(rows_u, scopes.names),
    )


def _members(rows: NDArray[np.int64], names: list[str]) -> list[tuple[str, str]]:
    """The distinct (part, whole) scope pairs of the tick's combos (``_MEMBER_DIMS``)."""
    out: list[tuple[str, str]] = []
    for part, whole in _MEMBER_DIMS:
        both = rows[(rows[:, part] >= 0) & (rows[:, whole] >= 0)][:, (part, whole)]
        if both.shape[0]:
            for a, b in np.unique(both, axis=0).tolist():
                out.append((names[a], names[b]))
    return out


def _combined(rows: NDArray[np.int64], names: list[str]) -> tuple[NDArray[np.int64], list[str]]:
    """Scope ids of the combined scopes (``COMBINED_KINDS``) of each combo row: ids from
    ``len(names)`` on, one per distinct (dimension value, provider) pair of this tick, named
    ``"<scope>|provider:<p>"``; -1 where the dimension or the provider is absent."""
    prov = rows[:, _PROVIDER_DIM]
    pairs = np.stack([rows[:, d] for d in _COMBINED_DIMS], axis=1)  # (rows, combined kinds)
    ok = (pairs >= 0) & (prov >= 0)[:, None]
    out = np.full(pairs.shape, -1, dtype=np.int64)
    if not ok.any():
        return out, []
    key = pairs[ok] * (len(names) + 1) + prov[np.nonzero(ok)[0]]
    uniq, inv = np.unique(key, return_inverse=True)
    base = len(names)
    out[ok] = base + inv
    extra = [f"{names[int(k) // (base + 1)]}|{names[int(k) % (base + 1)]}" for k in uniq.tolist()]
    return out, extra


def known_good_bounces(
    delivered: NDArray[np.bool_],
    uu: NDArray[np.bool_],
    rkey: NDArray[np.uint64],
    msg: NDArray[np.uint32],
    bloom: RotatingBloom,
    recent: RecentDeliveries,
) -> NDArray[np.bool_]:
    """Which unknown-user bounces (``uu``) of a tick are to known-good recipients; then
    remembers the tick's deliveries. Rows in feed order; ``msg``: 32-bit hash of the message
    id (0: none).

    A bounce of recipient R in message M is known good when R was delivered before it (in
    feed order) in a message other than M: R is in the Bloom filter (delivered long ago), or
    in ``recent`` with another message (or several, or one without an id), or delivered
    earlier in this tick in another message. A bounce without a message id counts as another
    message than every delivery. A delivery enters the Bloom filter only when it leaves
    ``recent``, so the same message's DSN after its 250 is not known good (docs/events.md).
    """
    n = len(rkey)
    known_good = np.zeros(n, dtype=np.bool_)
    delivered = delivered & (rkey != 0)
    idx = np.flatnonzero(uu & (rkey != 0))
    if len(idx):
        bk, bm = rkey[idx], msg[idx]
        kg = bloom.contains(bk)
        found, val = recent.lookup(bk)
        kg |= found & ((val != bm) | (bm == ANY_MESSAGE))
        # deliveries of the same recipients earlier in this tick, in feed order
        didx = np.flatnonzero(delivered)
        didx = didx[np.isin(rkey[didx], bk)]
        if len(didx):
            last: dict[int, int] = {}
            rk, ms, dl = rkey.tolist(), msg.tolist(), delivered.tolist()
            earlier: list[bool] = []
            for j in np.union1d(idx, didx).tolist():
                k, m = rk[j], ms[j]
                if dl[j]:
                    prev = last.get(k)
                    last[k] = m if prev is None or prev == m else ANY_MESSAGE
                else:
                    v = last.get(k)
                    earlier.append(v is not None and (v != m or m == ANY_MESSAGE))
            kg |= np.asarray(earlier, dtype=np.bool_)
        known_good[idx] = kg
    if delivered.any():
        out = recent.add(rkey[delivered], msg[delivered])
        if len(out):
            bloom.add(out)
    return known_good
