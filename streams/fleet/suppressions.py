"""The fleet client's "may I send to this address": follow ``repmon.suppressions``.

A sending fleet (an MTA's policy hook, a campaign scheduler) creates one
:class:`SuppressionClient` per process::

    from streams.fleet import SuppressionClient

    sup = SuppressionClient("kafka-1:9092").start()      # returns at once, follows in a thread
    sup.wait_ready(60)                                   # the whole list read once (see below)
    if sup.may_send("Jane.Doe@example.org"):             # hashed here: the address stays here
        send(...)
    e = sup.lookup("jane.doe@example.org")               # SuppressionEntry or None
    ok = sup.may_send_many(addresses)                    # numpy bool array, one per address

The client reads the compacted topic from the beginning (no consumer group, ``read_committed``:
records of aborted transactions are never seen) and keeps, per recipient that may not be mailed
now or later (``suspended``, ``quarantined``, ``suppressed``), one row of a compact table
(:class:`SuppressionTable`: numpy columns sorted by the 32-byte key, 48 bytes a recipient,
plus a small dict of the latest changes folded in now and then). A tombstone or an ``active``
record removes the recipient. An address is hashed locally with the pipeline's own function
(:func:`models.ingest.recipients.recipient_digest`: SHA-256 of the trimmed, lower-cased address);
the clear address never leaves the process and is never logged.

The answer is :func:`models.act.suppression.may_send` on the recipient's current record (tested
equal on every state): no entry or ``active``: yes; ``suspended``: not before ``until``;
``quarantined``: no (hold the message, do not drop the address); ``suppressed``: no, or not
before ``until`` when it has one.

**Fallback.** Lookups never touch Kafka and never block. When the broker or the topic is
unreachable the client keeps the list it has and goes on answering from it: a suppression list
is safe to keep (an entry only ever withholds mail; a suspension still ends at its ``until``
without any record, since the answer compares ``until`` with the clock). Entries that repmon
lifts meanwhile (a delivery, a release, an operator) stay in force until the client reads their
records again: the cost of an outage is mail held a little longer, never mail sent to a
suppressed address. Before the first catch-up the table is empty and every answer is "yes":
gate sending on :meth:`wait_ready` / :attr:`ready` at start if that matters.
``healthy``, ``version``, ``wait_until``, ``stats`` are those of
:class:`~streams.fleet.follower.CompactedTopicFollower` (shared with the throttle client).
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Unpack, cast

import numpy as np
import orjson
from numpy.typing import NDArray

from models.act.suppression import (
    ACTIVE,
    NO_REASON,
    QUARANTINED,
    STATE_CODE,
    STATES,
    SUPPRESSED,
    SUSPENDED,
    reason_code,
    reason_name,
)
from models.ingest.recipients import KEY_DTYPE, recipient_digest
from streams.fleet.follower import CompactedTopicFollower, FollowOptions

log = logging.getLogger("repmon.fleet")

DEFAULT_TOPIC = "repmon.suppressions"

#: a staged or delta row whose recipient has no entry (a tombstone, an ``active`` record)
ABSENT: Final[int] = 255
#: ``until`` of an entry without one (permanent suppression): never reached
NO_UNTIL: Final[int] = 0xFFFF_FFFF
#: a reason name this version cannot code (not in the vocabulary, not ``#N``): kept by name
ODD_REASON: Final[int] = 254
_U16: Final[int] = 0xFFFF
_HEX64: Final = re.compile(rb"[0-9a-f]{64}\Z")
_NAN: Final[float] = math.nan
_BLOCKED: Final[frozenset[int]] = frozenset({SUSPENDED, SUPPRESSED})

#: a parsed message: key (32 bytes), state code (ABSENT: no entry), reason code, count, until
#: (NO_UNTIL: none), at (NaN: not given), incident id (quarantined), reason name (ODD_REASON)
Row = tuple[bytes, int, int, int, int, float, str | None, str | None]
#: what the table keeps of a row, and what a lookup reads: state, reason, count, until, at
_Value = tuple[int, int, int, int, float]


@dataclass(frozen=True, slots=True)
class SuppressionEntry:
    """A recipient's current entry (docs/suppression.md, "Record": the fields that matter to
    a sender)."""

    recipient_key: str
    state: str
    reason: str | None
    count: int
    until: int | None
    permanent: bool
    incident: str | None
    at: float | None


class MalformedRecord(ValueError):
    """A message of the topic that does not follow docs/suppression.md, "Record"."""


# ---------------------------------------------------------------------------- parsing
def _key_bytes(key: bytes | str | None) -> bytes:
    raw = key.encode("ascii", "replace") if isinstance(key, str) else key
    if raw is None or _HEX64.match(raw) is None:
        raise MalformedRecord("the message key is not a 64-hex recipient key")
    return bytes.fromhex(raw.decode("ascii"))


def _number(v: Any, what: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise MalformedRecord(f"{what} is not a number")
    f = float(v)
    if not math.isfinite(f):
        raise MalformedRecord(f"{what} is not finite")
    return f


def parse_message(key: bytes | str | None, value: bytes | str | None) -> Row:
    """One message of ``repmon.suppressions`` as a table row; :class:`MalformedRecord` when it
    breaks the contract. The key must be the record's ``recipient_key`` (64 lower-case hex
    digits, UTF-8); a null value (a tombstone), a record with ``"tombstone": true`` or an
    ``active`` record mean "no entry". Unknown keys are ignored. ``until`` (suspended,
    suppressed) is rounded up to a whole second (the record's is an integer: a fraction would
    only ever hold mail a little longer); ``count`` is clamped to 0..65535."""
    k = _key_bytes(key)
    if value is None:
        return (k, ABSENT, NO_REASON, 0, NO_UNTIL, _NAN, None, None)
    try:
        rec = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise MalformedRecord(f"not JSON: {exc}") from None
    if not isinstance(rec, dict):
        raise MalformedRecord("not a JSON object")
    if rec.get("kind") != "suppression":
        raise MalformedRecord("kind is not 'suppression'")
    if rec.get("recipient_key") != k.hex():
        raise MalformedRecord("recipient_key is not the message key")
    st = rec.get("state")
    code = STATE_CODE.get(st) if isinstance(st, str) else None
    if code is None:
        raise MalformedRecord("unknown state")
    at_v = rec.get("at")
    at = _NAN if at_v is None else _number(at_v, "at")
    if rec.get("tombstone") or code == ACTIVE:
        return (k, ABSENT, NO_REASON, 0, NO_UNTIL, at, None, None)
    name = rec.get("reason")
    odd = None
    if name is None:
        reason = NO_REASON
    elif isinstance(name, str):
        try:
            reason = reason_code(name)
        except ValueError:  # a newer vocabulary: keep the entry, and the name
            reason, odd = ODD_REASON, name
    else:
        raise MalformedRecord("reason is not a string")
    c = rec.get("count", 0)
    if isinstance(c, bool) or not isinstance(c, int):
        if isinstance(c, float) and c.is_integer():
            c = int(c)
        else:
            raise MalformedRecord("count is not an integer")
    count = min(max(c, 0), _U16)
    until = NO_UNTIL
    if code in _BLOCKED:
        u = rec.get("until")
        if u is not None:
            until = min(max(math.ceil(_number(u, "until")), 0), NO_UNTIL - 1)
    incident = None
    if code == QUARANTINED:
        inc = rec.get("incident")
        if inc is not None and not isinstance(inc, str):
            raise MalformedRecord("incident is not a string")
        incident = inc
    return (k, code, reason, count, until, at, incident, odd)


def _hashed(address: str | None, recipient_key: str | bytes | None) -> bytes:
    """The 32-byte key of an address (hashed here, the pipeline's way) or of a given key."""
    if (address is None) == (recipient_key is None):
        raise ValueError("give either an address or a recipient_key")
    if address is not None:
        return recipient_digest(address)
    if isinstance(recipient_key, bytes) and len(recipient_key) == 32:
        return recipient_key
    if isinstance(recipient_key, str) and len(recipient_key) == 64:
        try:
            return bytes.fromhex(recipient_key)
        except ValueError:
            pass
    raise ValueError("recipient_key must be 64 hex digits or 32 bytes")


def keys_of(addresses: Iterable[str]) -> NDArray[np.bytes_]:
    """The 32-byte keys of ``addresses`` (:func:`recipient_digest` each) as an ``S32`` array."""
    return np.array([recipient_digest(a) for a in addresses], dtype=KEY_DTYPE).reshape(-1)


# ---------------------------------------------------------------------------- the table
@dataclass(frozen=True, slots=True)
class Columns:
    """Rows as numpy columns; in a table: sorted by key, one row per key."""

    key: NDArray[np.bytes_]  # S32
    state: NDArray[np.uint8]
    reason: NDArray[np.uint8]
    count: NDArray[np.uint16]
    until: NDArray[np.uint32]
    at: NDArray[np.float64]

    @property
    def size(self) -> int:
        """Rows."""
        return int(self.key.shape[0])

    def arrays(self) -> tuple[NDArray[Any], ...]:
        return (self.key, self.state, self.reason, self.count, self.until, self.at)

    def take(self, idx: Any) -> Columns:
        return Columns(*(c[idx] for c in self.arrays()))

    @property
    def nbytes(self) -> int:
        return sum(int(c.nbytes) for c in self.arrays())


_DTYPES: Final = (
    KEY_DTYPE,
    np.dtype(np.uint8),
    np.dtype(np.uint8),
    np.dtype(np.uint16),
    np.dtype(np.uint32),
    np.dtype(np.float64),
)
#: bytes a recipient's row takes in the table's columns
ROW_BYTES: Final[int] = sum(d.itemsize for d in _DTYPES)


def _empty() -> Columns:
    return Columns(*(np.zeros(0, dtype=d) for d in _DTYPES))


def _columns(rows: Sequence[Row] | Sequence[tuple[bytes, int, int, int, int, float]]) -> Columns:
    if not rows:
        return _empty()
    cols = list(zip(*rows, strict=False))
    return Columns(*(np.array(cols[i], dtype=d) for i, d in enumerate(_DTYPES)))


def last_per_key(c: Columns) -> Columns:
    """One row per key, the last one given (sorted by key)."""
    n = c.size
    if n == 0:
        return c
    order = np.argsort(c.key, kind="stable")
    k = c.key[order]
    last = np.ones(n, dtype=bool)
    last[:-1] = k[1:] != k[:-1]
    del k
    return c.take(order[last])


def _without(c: Columns, i: int) -> Columns:
    """``c`` with its ``i``-th column replaced by an empty one (to free it early)."""
    arrays = list(c.arrays())
    arrays[i] = arrays[i][:0].copy()
    return Columns(*arrays)


def merge(base: Columns, upd: Columns) -> Columns:
    """``base`` with ``upd``'s rows (both sorted, one row per key) replacing its own; rows of
    ``upd`` in state ABSENT delete. O(len(base) + len(upd)), vectorised."""
    if upd.size == 0:
        return base
    n = base.size
    if n:
        pos = np.searchsorted(base.key, upd.key)
        ok = pos < n
        hit = np.zeros(upd.size, dtype=bool)
        hit[ok] = base.key[pos[ok]] == upd.key[ok]
        keep = np.ones(n, dtype=bool)
        keep[pos[hit]] = False
        kept = base.take(keep) if not keep.all() else base
    else:
        kept = base
    live = upd.state != ABSENT
    ins = upd if live.all() else upd.take(live)
    if ins.size == 0:
        return kept
    if kept.size == 0:
        return ins
    where = np.searchsorted(kept.key, ins.key)
    return Columns(
        *(np.insert(a, where, b) for a, b in zip(kept.arrays(), ins.arrays(), strict=True))
    )


def allowed(state: NDArray[np.uint8], until: NDArray[np.uint32], now: float) -> NDArray[np.bool_]:
    """:func:`models.act.suppression.may_send` over columns (ABSENT: no record)."""
    blocked = (state == SUSPENDED) | (state == SUPPRESSED)
    ok = (state == ABSENT) | (state == ACTIVE)
    ok |= blocked & (until != NO_UNTIL) & (until <= now)
    return cast(NDArray[np.bool_], ok)


class Staging:
    """Rows gathered in numpy chunks (a topic's history: millions of rows, no Python object kept
    per row), then reduced to one row per key, the last (:meth:`SuppressionTable.load_staged`)."""

    CHUNK = 1 << 16

    def __init__(self) -> None:
        self._chunks: list[Columns] = []
        self._rows: list[tuple[bytes, int, int, int, int, float]] = []
        #: key -> (incident, reason name) for the last row of a key that has one; None: none
        self.names: dict[bytes, tuple[str | None, str | None] | None] = {}
        self.rows = 0

    def add(self, rows: Iterable[Row]) -> None:
        out = self._rows
        names = self.names
        for k, st, rs, cnt, until, at, inc, odd in rows:
            out.append((k, st, rs, cnt, until, at))
            if inc is not None or odd is not None:
                names[k] = (inc, odd)
            elif names and k in names:
                names[k] = None
            if len(out) >= self.CHUNK:
                self._chunks.append(_columns(out))
                out.clear()
        self.rows = sum(c.size for c in self._chunks) + len(out)

    def finish(self) -> Columns:
        if self._rows:
            self._chunks.append(_columns(self._rows))
            self._rows = []
        if not self._chunks:
            return _empty()
        parts = self._chunks
        self._chunks = []
        if len(parts) == 1:
            cols = parts[0]
        else:  # column by column, each chunk's column freed once copied (a lower peak)
            arrays = []
            for i in range(len(_DTYPES)):
                arrays.append(np.concatenate([p.arrays()[i] for p in parts]))
                parts = [_without(p, i) for p in parts]
            cols = Columns(*arrays)
        del parts
        self.rows = 0
        return last_per_key(cols)


class SuppressionTable:
    """Current entries per recipient key, compact: a base of numpy columns sorted by key
    (:data:`ROW_BYTES`, 48 bytes a recipient) and a dict of the changes since the last fold
    (at most ``delta_max`` keys; then folded into a new base in one vectorised merge).

    Readers take no lock: the writer (one thread at a time, under a lock) updates the delta in
    place, key by key, and swaps ``(base, delta)`` as one reference when it folds, so a reader
    sees each key before or after a change, never half of one. Incident ids (quarantined) and
    reason names this version cannot code are kept in a side dict (few)."""

    def __init__(self, delta_max: int = 1 << 16) -> None:
        self.delta_max = delta_max
        self._snap: tuple[Columns, dict[bytes, _Value | None]] = (_empty(), {})
        self._names: dict[bytes, tuple[str | None, str | None]] = {}
        self._write = threading.Lock()
        self._delta_cols: tuple[dict[bytes, _Value | None], int, Columns] | None = None
        self._changes = 0

    # -- writes
    def apply(self, rows: Iterable[Row]) -> int:
        """Apply rows in order (a batch of live messages); returns how many."""
        n = 0
        with self._write:
            delta = self._snap[1]
            names = self._names
            for k, st, rs, cnt, until, at, inc, odd in rows:
                n += 1
                delta[k] = None if st == ABSENT else (st, rs, cnt, until, at)
                if inc is not None or odd is not None:
                    names[k] = (inc, odd)
                else:
                    names.pop(k, None)
            self._changes += 1
            if len(delta) > self.delta_max:
                self._fold()
        return n

    def load(
        self, cols: Columns, names: Mapping[bytes, tuple[str | None, str | None] | None]
    ) -> None:
        """Merge rows (sorted, one per key: :func:`last_per_key`) newer than everything held,
        as one change (a topic's history read at once)."""
        with self._write:
            self._fold()
            base, _ = self._snap
            new = merge(base, cols)
            if self._names and cols.size:
                held = np.array(list(self._names), dtype=KEY_DTYPE)
                pos = np.searchsorted(cols.key, held)
                ok = pos < cols.size
                hit = np.zeros(len(held), dtype=bool)
                hit[ok] = cols.key[pos[ok]] == held[ok]
                for i in np.flatnonzero(hit):
                    self._names.pop(_pad(held[i]), None)
            for k, v in names.items():
                if v is None:
                    self._names.pop(k, None)
                else:
                    self._names[k] = v
            self._snap = (new, {})
            self._changes += 1

    def load_staged(self, staged: Staging) -> None:
        """:meth:`load` what ``staged`` gathered (it is left empty)."""
        self.load(staged.finish(), staged.names)
        staged.names = {}

    def fold(self) -> None:
        """Fold the recent changes into the sorted base now."""
        with self._write:
            self._fold()

    def _fold(self) -> None:
        base, delta = self._snap
        if delta:
            self._snap = (merge(base, self._cols_of(delta)), {})
            self._delta_cols = None

    @staticmethod
    def _cols_of(delta: Mapping[bytes, _Value | None]) -> Columns:
        rows = [
            (k, ABSENT, NO_REASON, 0, NO_UNTIL, _NAN) if v is None else (k, *v)
            for k, v in sorted(delta.items())
        ]
        return _columns(rows)

    # -- reads
    def get(self, key: bytes) -> _Value | None:
        """(state, reason, count, until, at) of ``key`` (32 bytes), or None: no entry."""
        base, delta = self._snap
        if delta:
            v = delta.get(key, _MISS)
            if v is not _MISS:
                return cast(_Value | None, v)
        keys = base.key
        i = int(keys.searchsorted(key))
        if i < keys.shape[0] and keys[i] == key.rstrip(b"\x00"):
            return (
                int(base.state[i]),
                int(base.reason[i]),
                int(base.count[i]),
                int(base.until[i]),
                float(base.at[i]),
            )
        return None

    def may_send(self, key: bytes, now: float) -> bool:
        """:func:`models.act.suppression.may_send` for ``key``'s current entry."""
        base, delta = self._snap
        if delta:
            v = delta.get(key, _MISS)
            if v is not _MISS:
                if v is None:
                    return True
                st, _, _, until, _ = cast(_Value, v)
                if st in _BLOCKED:
                    return bool(until != NO_UNTIL and now >= until)
                return bool(st == ACTIVE)
        keys = base.key
        i = int(keys.searchsorted(key))
        if i < keys.shape[0] and keys[i] == key.rstrip(b"\x00"):
            st = int(base.state[i])
            if st in _BLOCKED:
                until = int(base.until[i])
                return until != NO_UNTIL and now >= until
            return st == ACTIVE
        return True

    def may_send_many(self, keys: NDArray[np.bytes_], now: float) -> NDArray[np.bool_]:
        """:meth:`may_send` for each key of an ``S32`` array, vectorised (the keys are looked
        up in sorted order: twice as fast as in the order given on a large table)."""
        keys = np.asarray(keys, dtype=KEY_DTYPE).reshape(-1)
        if keys.shape[0] > 64:
            order = np.argsort(keys)
            out = np.empty(keys.shape[0], dtype=bool)
            out[order] = self._may_send_many(keys[order], now)
            return out
        return self._may_send_many(keys, now)

    def _may_send_many(self, keys: NDArray[np.bytes_], now: float) -> NDArray[np.bool_]:
        base, delta = self._snap
        state = np.full(keys.shape[0], ABSENT, dtype=np.uint8)
        until = np.full(keys.shape[0], NO_UNTIL, dtype=np.uint32)
        todo = np.ones(keys.shape[0], dtype=bool)
        if delta:
            d = self._delta_columns(delta)
            hit, pos = _find(d.key, keys)
            state[hit] = d.state[pos[hit]]
            until[hit] = d.until[pos[hit]]
            todo = ~hit
        hit, pos = _find(base.key, keys)
        hit &= todo
        state[hit] = base.state[pos[hit]]
        until[hit] = base.until[pos[hit]]
        return allowed(state, until, now)

    def _delta_columns(self, delta: dict[bytes, _Value | None]) -> Columns:
        # the stamp is read before the copy: a cached copy is never older than its stamp; the
        # dict's identity tells a fold (a fresh dict) from a change of the same one
        stamp = self._changes
        cached = self._delta_cols
        if cached is not None and cached[0] is delta and cached[1] == stamp:
            return cached[2]
        cols = self._cols_of(dict(delta))
        self._delta_cols = (delta, stamp, cols)
        return cols

    def names(self, key: bytes) -> tuple[str | None, str | None]:
        """(incident id, reason name) kept by name for ``key``, (None, None) without."""
        return self._names.get(key) or (None, None)

    def entry(self, key: bytes) -> SuppressionEntry | None:
        v = self.get(key)
        if v is None:
            return None
        return self._entry(key, *v)

    def _entry(
        self, key: bytes, st: int, rs: int, cnt: int, until: int, at: float
    ) -> SuppressionEntry:
        inc, odd = self.names(key)
        return SuppressionEntry(
            recipient_key=key.hex(),
            state=STATES[st],
            reason=odd if rs == ODD_REASON and odd is not None else reason_name(rs),
            count=cnt,
            until=None if until == NO_UNTIL else until,
            permanent=st == SUPPRESSED and until == NO_UNTIL,
            incident=inc if st == QUARANTINED else None,
            at=None if math.isnan(at) else at,
        )

    def columns(self) -> Columns:
        """Every entry as columns (sorted by key): the base with the recent changes merged."""
        base, delta = self._snap
        return merge(base, self._cols_of(dict(delta))) if delta else base

    def _of_states(self, states: Iterable[str] | None) -> Columns:
        c = self.columns()
        if states is not None:
            want = np.zeros(256, dtype=bool)
            for s in states:
                want[STATE_CODE[s]] = True
            c = c.take(want[c.state])
        return c

    def keys(self, states: Iterable[str] | None = None) -> NDArray[np.bytes_]:
        """The keys of the entries (of ``states``), sorted (``S32``)."""
        return self._of_states(states).key

    def entries(self, states: Iterable[str] | None = None) -> Iterator[SuppressionEntry]:
        """The entries (of ``states``), in key order."""
        c = self._of_states(states)
        for i in range(c.size):
            yield self._entry(
                _pad(c.key[i]),
                int(c.state[i]),
                int(c.reason[i]),
                int(c.count[i]),
                int(c.until[i]),
                float(c.at[i]),
            )

    def _state_counts(self) -> NDArray[np.int64]:
        """Entries per state code, from the columns and the recent changes without merging
        them (no copy of the columns)."""
        base, delta = self._snap
        n = np.bincount(base.state, minlength=256).astype(np.int64)
        if delta:
            d = self._delta_columns(delta)
            hit, pos = _find(base.key, d.key)
            np.subtract.at(n, base.state[pos[hit]], 1)  # replaced or deleted
            n += np.bincount(d.state[d.state != ABSENT], minlength=256)
        return n

    def counts(self) -> dict[str, int]:
        """Entries per state."""
        n = self._state_counts()
        return {s: int(n[i]) for i, s in enumerate(STATES) if i != ACTIVE}

    def __len__(self) -> int:
        return int(self._state_counts()[: len(STATES)].sum())

    @property
    def nbytes(self) -> int:
        """Bytes of the base columns (the delta and the side dict are not counted)."""
        return self._snap[0].nbytes


_MISS: Final = object()


def _pad(k: bytes) -> bytes:
    """numpy's S arrays drop trailing NUL bytes: put them back."""
    return bytes(k).ljust(32, b"\x00")


def _find(sorted_keys: NDArray[np.bytes_], keys: NDArray[np.bytes_]) -> tuple[Any, Any]:
    """(found, position) of each of ``keys`` in ``sorted_keys``."""
    n = sorted_keys.shape[0]
    if n == 0:
        return np.zeros(keys.shape[0], dtype=bool), np.zeros(keys.shape[0], dtype=np.intp)
    pos = np.searchsorted(sorted_keys, keys)
    np.minimum(pos, n - 1, out=pos)
    return sorted_keys[pos] == keys, pos


# ---------------------------------------------------------------------------- the client
class SuppressionClient(CompactedTopicFollower[Row]):
    """Follows the compacted ``repmon.suppressions`` topic and answers "may I send to this
    address" from memory (see the module's docstring).

    ``bootstrap``: Kafka bootstrap servers (None: no broker; feed messages with :meth:`feed`,
    rows with :meth:`apply`, as the unit tests and the bench do). ``clock``: the wall clock a
    suspension's ``until`` is compared with (epoch seconds). ``delta_max``: recent changes kept
    in a dict before they are folded into the sorted columns. The other options are
    :class:`~streams.fleet.follower.CompactedTopicFollower`'s."""

    _what = "suppression topic"
    _thread_name = "repmon-suppressions"

    def __init__(
        self,
        bootstrap: str | list[str] | None = None,
        topic: str = DEFAULT_TOPIC,
        *,
        clock: Callable[[], float] = time.time,
        delta_max: int = 1 << 16,
        **follow: Unpack[FollowOptions],
    ) -> None:
        super().__init__(bootstrap, topic, isolation_level="read_committed", **follow)
        self.clock = clock
        self.table = SuppressionTable(delta_max)
        self._staged = Staging()
        self._last_warning = -math.inf
        self._unlogged = 0

    # ------------------------------------------------------------------ lookups (hot path)
    def may_send(
        self,
        address: str | None = None,
        *,
        recipient_key: str | bytes | None = None,
        now: float | None = None,
    ) -> bool:
        """May the fleet send to this recipient now? ``address`` is hashed here (the pipeline's
        :func:`~models.ingest.recipients.recipient_digest`); or give its ``recipient_key`` (64
        hex digits or the 32 bytes). ``now``: epoch seconds (default: ``clock()``)."""
        k = _hashed(address, recipient_key)
        return self.table.may_send(k, self.clock() if now is None else now)

    def may_send_many(
        self,
        addresses: Iterable[str] | None = None,
        *,
        recipient_keys: NDArray[np.bytes_] | Sequence[bytes] | None = None,
        now: float | None = None,
    ) -> NDArray[np.bool_]:
        """:meth:`may_send` for many recipients at once (a bool per address or key, in order);
        ``recipient_keys``: 32-byte keys (an ``S32`` array or a list of bytes)."""
        if (addresses is None) == (recipient_keys is None):
            raise ValueError("give either addresses or recipient_keys")
        if addresses is not None:
            keys = keys_of(addresses)
        else:
            keys = np.asarray(recipient_keys, dtype=KEY_DTYPE).reshape(-1)
        return self.table.may_send_many(keys, self.clock() if now is None else now)

    def lookup(
        self, address: str | None = None, *, recipient_key: str | bytes | None = None
    ) -> SuppressionEntry | None:
        """The recipient's current entry (state, reason, count, until, permanent, incident,
        at), or None: no entry (never suppressed, back to active, or forgotten)."""
        return self.table.entry(_hashed(address, recipient_key))

    def entries(self, states: Iterable[str] | None = None) -> Iterator[SuppressionEntry]:
        """Every entry held (of ``states``), in key order."""
        return self.table.entries(states)

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ the table
    def apply(self, rows: Iterable[Row]) -> int:
        """Apply parsed rows (:func:`parse_message`) in order as one change."""
        n = self.table.apply(rows)
        if n:
            self._note_change()
        return n

    def feed(self, key: bytes | str | None, value: bytes | str | None) -> bool:
        """Apply one topic message (key: the recipient key, UTF-8 hex; value: the JSON record,
        or None for a tombstone). A malformed one is counted and skipped (False)."""
        row = self._parse(key, value)
        if row is None:
            return False
        self.apply([row])
        return True

    def _parse(self, key: bytes | str | None, value: bytes | str | None) -> Row | None:
        try:
            row = parse_message(key, value)
        except MalformedRecord as exc:
            self.stats["skipped"] += 1
            self._warn(str(exc))
            return None
        if value is None:
            self.stats["tombstones"] += 1
        else:
            self.stats["records"] += 1
        return row

    def _warn(self, why: str) -> None:
        """Log skipped messages at most every 10 s (a broken producer can send millions)."""
        now = time.monotonic()
        if now - self._last_warning < 10.0:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning("%s %s: malformed message skipped: %s%s", self._what, self.topic, why, more)
        self._last_warning = now
        self._unlogged = 0

    # ------------------------------------------------------------------ follower hooks
    def _stage(self, items: list[Row]) -> None:
        self._staged.add(items)

    def _publish_staged(self) -> None:
        staged, self._staged = self._staged, Staging()
        self.table.load_staged(staged)
        self._note_change()

    def _drop_staged(self) -> None:
        self._staged = Staging()

    def _apply_live(self, items: list[Row]) -> None:
        self.apply(items)


__all__ = [
    "DEFAULT_TOPIC",
    "ROW_BYTES",
    "Columns",
    "MalformedRecord",
    "Staging",
    "SuppressionClient",
    "SuppressionEntry",
    "SuppressionTable",
    "keys_of",
    "parse_message",
]
