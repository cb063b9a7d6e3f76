"""Recipient suppression policy: per recipient, may the fleet keep mailing it (docs/suppression.md).

Pure and deterministic: driven only by the event times and inputs the caller passes. One
:class:`Suppressor` per input partition (the recipients of a partition are its own)::

    sup = Suppressor(load_config(path), store)         # store: a RecipientStore
    for tick in ticks:
        changes = sup.observe(rows, mon.open_incidents())   # rows: RecipientRows of the tick
        for ch in incident_changes_of_the_tick:
            if ch.action == "closed":
                changes += sup.incident_closed(ch.incident, watermark)
        changes += sup.expire(watermark)
        for c in changes:
            emit(c.to_json())          # {"kind": "suppression", "recipient_key": ..., ...}

Per recipient the states are ``active``, ``suspended`` (until a time), ``quarantined`` (while a
quarantining incident holding it is open) and ``suppressed`` (permanent by default):

* a reply of class ``hard`` or ``soft`` is a *hit* counted by its (class, reason)'s schedule
  (:mod:`models.act.suppression_config`): the n-th hit of the same reason in a message other than
  the last counted one suspends for the schedule's n-th duration or, from ``suppress_after``
  (``known_good_suppress_after`` for a recipient the pipeline saw delivered in another message),
  suppresses. ``block``, ``throttle``, ``transient``, ``config`` and ``other`` replies never count;
* a complaint or an unsubscribe suppresses at once;
* a delivery (in a message other than the last counted hit's) resets the counters: a suspended
  recipient is active again; a suppressed one stays suppressed;
* while a ``false_hard_bounces``, ``block`` or ``provider_outage`` incident is open on the
  recipient's domain, MX operator or provider (a combined ``ip:X|provider:P``: the mail sent
  from X to P), its hard hits only **quarantine** it; hard hits up to ``lookback_s`` before a
  ``false_hard_bounces`` incident opened (``lookback_types``) are quarantined when it opens;
  when the incident closes, its quarantined recipients return to the state they had before (the
  held hits stay in the record as evidence: ``held``, ``last_incident``);
* a suspension ends at ``until`` (:meth:`Suppressor.expire`, or at the recipient's next event);
  an active record with counters or evidence is forgotten ``forget_after_days`` after its last
  event (a tombstone), so the store keeps only what matters.

Hot path (:meth:`Suppressor.observe`): the rows that cannot matter are dropped with numpy (replies
of classes that never count; deliveries of recipients with no state), the store is read once per
call for the distinct recipients left (:class:`RecipientStore`, ``get_many``), and only the rows
of recipients that have or get state go through the per-row transition (:func:`step`), which is
what a naive per-event reference applies to every event (tests compare the two).

Each recipient's state is one fixed 63-byte value (:class:`RecipientState`, ``pack``/``unpack``)
keyed by the pipeline's 64-bit recipient identity; the value carries the full 32-byte key, so an
identity collision is seen (the newer recipient's rows are skipped and counted).
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

import numpy as np
from numpy.typing import NDArray

from models.act.suppression_config import (
    DAY,
    Schedule,
    SuppressionConfig,
    default_config,
)
from models.ingest.recipients import RecipientRows
from models.schema import CLASS_CODE, EVENT_KIND_CODE, REASON_CODE, REASONS
from models.state.snapshot import Snap, SnapshotError, strings, unstrings

# -- vocabulary -------------------------------------------------------------------------------

#: recipient states, in code order (the code is the index)
STATES: Final[tuple[str, ...]] = ("active", "suspended", "quarantined", "suppressed")
ACTIVE, SUSPENDED, QUARANTINED, SUPPRESSED = range(4)
STATE_CODE: Final[dict[str, int]] = {s: i for i, s in enumerate(STATES)}

#: reason codes besides models.schema.REASON_CODE (bounce reasons, 0..32)
COMPLAINT: Final[int] = 250
UNSUBSCRIBE: Final[int] = 251
MANUAL: Final[int] = 252
NO_REASON: Final[int] = 255
_OTHER_REASONS: Final[dict[int, str]] = {
    COMPLAINT: "complaint",
    UNSUBSCRIBE: "unsubscribe",
    MANUAL: "manual",
}
_CONSENT: Final[frozenset[int]] = frozenset({COMPLAINT, UNSUBSCRIBE, MANUAL})

#: why a change happened (the record's ``cause``)
CAUSES: Final[tuple[str, ...]] = (
    "bounce",  # a counted hit (suspended, suppressed, or counted while active)
    "complaint",
    "unsubscribe",
    "delivery",  # a delivery reset the counters
    "quarantine",  # a hard hit held by an open incident (or an earlier one, when it opened)
    "release",  # the incident holding it closed
    "expired",  # a suspension (or a suppression with a duration) ended
    "forgotten",  # an active record with nothing recent to remember (a tombstone)
    "manual",
)

_K_DELIVERED: Final = EVENT_KIND_CODE["delivered"]
_K_BOUNCED: Final = EVENT_KIND_CODE["bounced"]
_K_REJECTED: Final = EVENT_KIND_CODE["rejected"]
_K_COMPLAINED: Final = EVENT_KIND_CODE["complained"]
_K_UNSUB: Final = EVENT_KIND_CODE["unsubscribed"]
_HARD: Final = CLASS_CODE["hard"]

#: the packed record: format, key, state, reason, resume state, resume reason, count, resume
#: count, held, first seen, last seen, until, last message, incident
_FORMAT: Final[int] = 1
_STRUCT: Final = struct.Struct("<B32sBBBBHHHIIIII")
RECORD_BYTES: Final[int] = _STRUCT.size  # 63
#: the key of a row without one (deliveries: RecipientRows.key)
_NO_KEY: Final[bytes] = bytes(32)
_U16: Final = 0xFFFF
_U32: Final = 0xFFFF_FFFF


def reason_name(code: int) -> str | None:
    """The record's name of a reason code (None: no reason)."""
    if code == NO_REASON:
        return None
    if code < len(REASONS):
        return REASONS[code]
    return _OTHER_REASONS.get(code, f"#{code}")


def reason_code(name: str | None) -> int:
    """Inverse of :func:`reason_name` (ValueError for an unknown name)."""
    if name is None:
        return NO_REASON
    if name in REASON_CODE:
        return REASON_CODE[name]
    for code, n in _OTHER_REASONS.items():
        if n == name:
            return code
    if name.startswith("#") and name[1:].isdigit() and 0 <= int(name[1:]) < 255:
        return int(name[1:])
    raise ValueError(f"unknown suppression reason {name!r}")


def incident_hash(incident_id: str) -> int:
    """The 32-bit reference of an incident id kept in a record (never 0)."""
    d = hashlib.blake2b(incident_id.encode("utf-8", "surrogatepass"), digest_size=4).digest()
    return int.from_bytes(d, "little") or 1


def _sec(t: float) -> int:
    """Event time as the record's uint32 seconds (floor, clamped)."""
    if not math.isfinite(t) or t <= 0:
        return 0
    return min(int(t), _U32)


# -- the record -------------------------------------------------------------------------------


@dataclass(slots=True)
class RecipientState:
    """One recipient's state, packed to :data:`RECORD_BYTES` bytes (docs/suppression.md,
    "Stored value"). Times are uint32 epoch seconds (0: none)."""

    key: bytes
    state: int = ACTIVE
    #: the reason of the state: the counted hits' reason, the consent source, or (quarantined)
    #: the held hits' reason
    reason: int = NO_REASON
    #: hits of ``reason`` counted (quarantined: hits held in the current quarantine)
    count: int = 0
    #: suspended: its end; suppressed: its end (0: permanent); active: when it is forgotten;
    #: quarantined: the end of the suspension it returns to (0: none)
    until: int = 0
    #: quarantined: the state, reason and count it returns to on release
    base_state: int = ACTIVE
    base_reason: int = NO_REASON
    base_count: int = 0
    #: hard hits held in quarantine, over all quarantines (evidence)
    held: int = 0
    first_seen: int = 0
    last_seen: int = 0
    #: low 32 bits of the message hash of the last hit counted or held (0: none)
    message: int = 0
    #: quarantined: the incident holding it; otherwise the last one that did (0: none)
    incident: int = 0

    def pack(self) -> bytes:
        return _STRUCT.pack(
            _FORMAT,
            self.key,
            self.state,
            self.reason,
            self.base_state,
            self.base_reason,
            self.count,
            self.base_count,
            self.held,
            self.first_seen,
            self.last_seen,
            self.until,
            self.message,
            self.incident,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> RecipientState:
        if len(raw) != RECORD_BYTES:
            raise ValueError(f"a recipient record has {RECORD_BYTES} bytes, not {len(raw)}")
        (fmt, key, st, rs, bst, brs, cnt, bcnt, held, first, last, until, msg, inc) = (
            _STRUCT.unpack(raw)
        )
        if fmt != _FORMAT:
            raise ValueError(f"recipient record format {fmt}, this version reads {_FORMAT}")
        if st >= len(STATES) or bst >= len(STATES):
            raise ValueError(f"recipient record with an unknown state ({st}, {bst})")
        return cls(key, st, rs, cnt, until, bst, brs, bcnt, held, first, last, msg, inc)

    @property
    def ident(self) -> int:
        return int.from_bytes(self.key[:8], "little")

    def forgettable(self) -> bool:
        """Active with nothing left to remember: the store holds no entry for it."""
        return self.state == ACTIVE and self.count == 0 and self.held == 0


def _with(r: RecipientState, **changes: int) -> RecipientState:
    """A copy of ``r`` with ``changes`` (``dataclasses.replace``, three times faster)."""
    c = RecipientState(
        r.key,
        r.state,
        r.reason,
        r.count,
        r.until,
        r.base_state,
        r.base_reason,
        r.base_count,
        r.held,
        r.first_seen,
        r.last_seen,
        r.message,
        r.incident,
    )
    for k, v in changes.items():
        setattr(c, k, v)
    return c


# -- storage ----------------------------------------------------------------------------------


class RecipientStore(Protocol):
    """Where the packed records live, keyed by the recipient identity (uint64).

    ``get_many`` answers in the order asked (None: no record); ``put_many`` writes a batch
    (None deletes); ``items`` iterates over every record (restarts, exports; never on the hot
    path). The worker's RocksDB store (streams/worker/suppression_store.py) implements it."""

    def get_many(self, idents: NDArray[np.uint64]) -> list[bytes | None]: ...
    def put_many(self, items: Sequence[tuple[int, bytes | None]]) -> None: ...
    def items(self) -> Iterator[tuple[int, bytes]]: ...


class MemoryStore:
    """A dict-backed :class:`RecipientStore` (replay, tests)."""

    def __init__(self) -> None:
        self.data: dict[int, bytes] = {}
        self.reads = 0
        self.writes = 0

    def get_many(self, idents: NDArray[np.uint64]) -> list[bytes | None]:
        self.reads += len(idents)
        get = self.data.get
        return [get(i) for i in idents.tolist()]

    def put_many(self, items: Sequence[tuple[int, bytes | None]]) -> None:
        self.writes += len(items)
        for ident, value in items:
            if value is None:
                self.data.pop(int(ident), None)
            else:
                self.data[int(ident)] = value

    def items(self) -> Iterator[tuple[int, bytes]]:
        yield from sorted(self.data.items())

    def __len__(self) -> int:
        return len(self.data)


# -- the transition ---------------------------------------------------------------------------


class Event(NamedTuple):
    """One row as the transition reads it."""

    ts: float
    kind: int
    cls: int
    reason: int
    #: low 32 bits of the message hash (0: none)
    message: int = 0
    known_good: bool = False
    #: hashes of the open quarantining incidents whose scopes cover the row (hard hits: held)
    holders: tuple[int, ...] = ()


#: (cause, the record after it; None: deleted, a tombstone)
Transition = tuple[str, RecipientState | None]


class Policy:
    """The configuration compiled for the transition: a schedule per (class, reason) code."""

    def __init__(self, config: SuppressionConfig) -> None:
        self.config = config
        self.schedules: list[Schedule] = []
        #: [class code, reason code] -> index into schedules, -1: never penalises
        self.table: NDArray[np.int16] = np.full((256, 256), -1, dtype=np.int16)
        seen: dict[Schedule, int] = {}
        for cls in ("hard", "soft"):
            c = CLASS_CODE[cls]
            for r in range(256):
                s = config.schedule(cls, REASONS[r] if r < len(REASONS) else None)
                if s is None:
                    continue
                if s not in seen:
                    seen[s] = len(self.schedules)
                    self.schedules.append(s)
                self.table[c, r] = seen[s]
        self.counts: NDArray[np.bool_] = self.table >= 0
        self.forget_s = int(config.forget_after_s)
        self.quarantine_hard_only = True

    def schedule(self, cls: int, reason: int) -> Schedule | None:
        i = int(self.table[cls & 0xFF, reason & 0xFF])
        return None if i < 0 else self.schedules[i]


def _fresh(key: bytes, t: int) -> RecipientState:
    return RecipientState(key=key, first_seen=t, last_seen=t)


def timers(
    policy: Policy, rec: RecipientState, now: float
) -> tuple[RecipientState | None, list[Transition]]:
    """The record's timers due at ``now``: a suspension (or a suppression with a duration)
    that ended, an active record to forget. Quarantined records wait for their incident."""
    out: list[Transition] = []
    cur: RecipientState | None = rec
    while cur is not None and cur.until and cur.until <= now and cur.state != QUARANTINED:
        if cur.state == SUSPENDED:
            new = _with(cur, state=ACTIVE, until=0)
            if new.forgettable():
                out.append(("expired", None))
                return None, out
            new.until = min(max(cur.until, cur.last_seen) + policy.forget_s, _U32)
            out.append(("expired", new))
            cur = new
        elif cur.state == SUPPRESSED:
            out.append(("expired", None))
            return None, out
        else:  # active: forget
            out.append(("forgotten", None))
            return None, out
    return cur, out


def _hit(
    s: Schedule,
    state: int,
    reason: int,
    count: int,
    until: int,
    hit_reason: int,
    kg: bool,
    t: int,
    forget_s: int,
) -> tuple[int, int, int, int]:
    """(state, reason, count, until) after a counted hit on (state, reason, count, until)."""
    n = min((count if reason == hit_reason else 0) + 1, _U16)
    thr = s.threshold(kg)
    if thr and n >= thr:
        end = min(t + int(s.suppressed_days * DAY), _U32) if s.suppressed_days else 0
        return SUPPRESSED, hit_reason, n, end
    d = s.suspend_s(n)
    if d:
        end = min(t + int(d), _U32)
        if state == SUSPENDED:
            end = max(end, until)
        return SUSPENDED, hit_reason, n, end
    return ACTIVE, hit_reason, n, min(t + forget_s, _U32)


def relevant(policy: Policy, ev: Event) -> bool:
    """Whether an event can change a recipient's state at all: a delivery, a complaint or an
    unsubscribe the policy does not ignore, a bounce (a rejection with ``count_rejected``)
    whose (class, reason) has a schedule. Due timers fire only on relevant events."""
    kind = ev.kind
    cfg = policy.config
    if kind == _K_DELIVERED:
        return True
    if kind == _K_COMPLAINED:
        return not cfg.complaint.ignored
    if kind == _K_UNSUB:
        return not cfg.unsubscribe.ignored
    if kind == _K_BOUNCED or (kind == _K_REJECTED and cfg.count_rejected):
        return policy.schedule(ev.cls, ev.reason) is not None
    return False


def step(
    policy: Policy, rec: RecipientState | None, key: bytes, ev: Event
) -> tuple[RecipientState | None, list[Transition]]:
    """The record of recipient ``key`` after event ``ev`` (None: no record), and the
    transitions on the way (due timers first). Never mutates ``rec``."""
    if not relevant(policy, ev) or (rec is not None and rec.key != key):
        return rec, []  # never a change, not even a due timer (the hot path skips these rows)
    out: list[Transition] = []
    if rec is not None:
        rec, out = timers(policy, rec, ev.ts)
    cfg = policy.config
    t = _sec(ev.ts)
    kind = ev.kind
    if kind == _K_DELIVERED:
        if rec is None or (ev.message and ev.message == rec.message):
            return rec, out
        if rec.state == SUPPRESSED:
            return rec, out
        if rec.state == QUARANTINED:
            if rec.base_state == ACTIVE and rec.base_count == 0:
                return rec, out
            new = _with(rec, base_state=ACTIVE, base_reason=NO_REASON, base_count=0, until=0)
        else:
            if rec.state == ACTIVE and rec.count == 0:
                return rec, out
            new = _with(rec, state=ACTIVE, reason=NO_REASON, count=0, until=0)
            if new.forgettable():
                out.append(("delivery", None))
                return None, out
            new.until = min(t + policy.forget_s, _U32)
        new.last_seen = max(new.last_seen, t)
        out.append(("delivery", new))
        return new, out
    if kind in (_K_COMPLAINED, _K_UNSUB):
        rule, code = (
            (cfg.complaint, COMPLAINT) if kind == _K_COMPLAINED else (cfg.unsubscribe, UNSUBSCRIBE)
        )
        if rule.ignored or (rec is not None and rec.state == SUPPRESSED and rec.reason in _CONSENT):
            return rec, out
        base = rec if rec is not None else _fresh(key, t)
        end = min(t + int(rule.suppressed_days * DAY), _U32) if rule.suppressed_days else 0
        new = _with(
            base,
            state=SUPPRESSED,
            reason=code,
            count=1,
            until=end,
            base_state=ACTIVE,
            base_reason=NO_REASON,
            base_count=0,
            last_seen=max(base.last_seen, t),
        )
        if ev.message:
            new.message = ev.message
        out.append((_OTHER_REASONS[code], new))
        return new, out
    s = policy.schedule(ev.cls, ev.reason)
    assert s is not None  # relevant()
    if rec is not None and (rec.state == SUPPRESSED or (ev.message and ev.message == rec.message)):
        return rec, out
    base = rec if rec is not None else _fresh(key, t)
    if ev.cls == _HARD and ev.holders:  # held by an open incident: quarantine only
        if base.state == QUARANTINED:
            new = _with(base, count=min(base.count + 1, _U16), held=min(base.held + 1, _U16))
        else:
            new = _with(
                base,
                state=QUARANTINED,
                reason=ev.reason,
                count=1,
                until=base.until if base.state == SUSPENDED else 0,
                base_state=base.state,
                base_reason=base.reason,
                base_count=base.count,
                held=min(base.held + 1, _U16),
                incident=ev.holders[0],
            )
        new.message = ev.message
        new.last_seen = max(new.last_seen, t)
        out.append(("quarantine", new))
        return new, out
    if base.state == QUARANTINED:  # a hit its incidents do not hold: counts for what it resumes
        st, rs, n, until = _hit(
            s,
            base.base_state,
            base.base_reason,
            base.base_count,
            base.until if base.base_state == SUSPENDED else 0,
            ev.reason,
            ev.known_good,
            t,
            policy.forget_s,
        )
        if st == SUPPRESSED:
            new = _with(
                base,
                state=st,
                reason=rs,
                count=n,
                until=until,
                base_state=ACTIVE,
                base_reason=NO_REASON,
                base_count=0,
            )
        else:
            new = _with(
                base,
                base_state=st,
                base_reason=rs,
                base_count=n,
                until=until if st == SUSPENDED else 0,
            )
    else:
        st, rs, n, until = _hit(
            s,
            base.state,
            base.reason,
            base.count,
            base.until,
            ev.reason,
            ev.known_good,
            t,
            policy.forget_s,
        )
        new = _with(base, state=st, reason=rs, count=n, until=until)
    new.message = ev.message
    new.last_seen = max(new.last_seen, t)
    out.append(("bounce", new))
    return new, out


# -- changes and records ----------------------------------------------------------------------

#: the keys every record has, in order (docs/suppression.md, "Record")
RECORD_KEYS: Final[tuple[str, ...]] = (
    "kind",
    "recipient_key",
    "state",
    "reason",
    "count",
    "until",
    "permanent",
    "incident",
)
#: the documented extra keys, in order
EXTRA_KEYS: Final[tuple[str, ...]] = (
    "at",
    "cause",
    "tombstone",
    "first_seen",
    "last_seen",
    "held",
    "last_incident",
    "resume",
    "forget_at",
    "message_hash",
)


@dataclass(slots=True)
class SuppressionChange:
    """One change of one recipient's state (the record, :meth:`to_json`). Treat as read-only."""

    ident: int
    #: event time of the change (the event's, the timer's, the incident's close)
    at: float
    cause: str
    #: the state after the change; for a tombstone, the active state with nothing remembered
    state: RecipientState
    #: the record left the store (the topic gets a tombstone)
    tombstone: bool
    #: incident hash -> id for the incidents the record names (None: not known here)
    incident_id: str | None = None
    last_incident_id: str | None = None

    @property
    def key(self) -> bytes:
        return self.state.key

    @property
    def value(self) -> bytes | None:
        """The packed value the store holds after the change (None: deleted)."""
        return None if self.tombstone else self.state.pack()

    def to_json(self) -> dict[str, Any]:
        return record_of(
            self.state, self.at, self.cause, self.tombstone, self.incident_id, self.last_incident_id
        )


def _ref(h: int, name: str | None) -> str | None:
    if not h:
        return None
    return name if name is not None else f"#{h:08x}"


def record_of(
    r: RecipientState,
    at: float,
    cause: str,
    tombstone: bool,
    incident_id: str | None = None,
    last_incident_id: str | None = None,
) -> dict[str, Any]:
    """The record of a state (docs/suppression.md, "Record")."""
    q = r.state == QUARANTINED
    return {
        "kind": "suppression",
        "recipient_key": r.key.hex(),
        "state": STATES[r.state],
        "reason": reason_name(r.reason),
        "count": r.count,
        "until": r.until if r.until and r.state in (SUSPENDED, SUPPRESSED) else None,
        "permanent": r.state == SUPPRESSED and not r.until,
        "incident": _ref(r.incident, incident_id) if q else None,
        "at": round(at, 3),
        "cause": cause,
        "tombstone": tombstone,
        "first_seen": r.first_seen,
        "last_seen": r.last_seen,
        "held": r.held,
        "last_incident": None if q else _ref(r.incident, last_incident_id),
        "resume": (
            {
                "state": STATES[r.base_state],
                "reason": reason_name(r.base_reason),
                "count": r.base_count,
                "until": r.until if r.base_state == SUSPENDED and r.until else None,
            }
            if q
            else None
        ),
        "forget_at": r.until if r.state == ACTIVE and r.until else None,
        "message_hash": r.message,
    }


class RecordError(ValueError):
    """A suppression record that cannot be read back."""


def state_from_record(rec: Mapping[str, Any]) -> RecipientState | None:
    """The state a record describes (None for a tombstone): what a worker rebuilding its store
    from the ``repmon.suppressions`` topic writes (``pack()``) under the key's identity."""
    try:
        if rec.get("kind") != "suppression":
            raise RecordError("not a suppression record")
        key = bytes.fromhex(str(rec["recipient_key"]))
        if len(key) != 32:
            raise RecordError("recipient_key must be 64 hex digits")
        if rec.get("tombstone"):
            return None
        st = STATE_CODE[str(rec["state"])]
        r = RecipientState(
            key=key,
            state=st,
            reason=reason_code(rec["reason"]),
            count=int(rec["count"]),
            held=int(rec.get("held") or 0),
            first_seen=int(rec.get("first_seen") or 0),
            last_seen=int(rec.get("last_seen") or 0),
            message=int(rec.get("message_hash") or 0),
        )
        if st in (SUSPENDED, SUPPRESSED):
            r.until = int(rec["until"] or 0)
        elif st == ACTIVE:
            r.until = int(rec.get("forget_at") or 0)
        inc = rec["incident"] if st == QUARANTINED else rec.get("last_incident")
        if inc:
            s = str(inc)
            r.incident = int(s[1:], 16) if s.startswith("#") else incident_hash(s)
        if st == QUARANTINED:
            res = rec["resume"]
            r.base_state = STATE_CODE[str(res["state"])]
            r.base_reason = reason_code(res["reason"])
            r.base_count = int(res["count"])
            r.until = int(res.get("until") or 0)
        r.pack()  # ranges
        return r
    except RecordError:
        raise
    except (KeyError, TypeError, ValueError, struct.error) as exc:
        raise RecordError(f"bad suppression record: {exc!r}") from exc


def may_send(rec: Mapping[str, Any] | None, now: float) -> bool:
    """What the fleet client answers for a recipient's current record (None: no record):
    active yes; suspended not before ``until``; quarantined not while held; suppressed no
    (until its end when it has one)."""
    if rec is None or rec.get("tombstone"):
        return True
    st = rec["state"]
    if st == "active":
        return True
    if st in ("suspended", "suppressed"):
        until = rec.get("until")
        return until is not None and now >= float(until)
    return False


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


class IncidentLike(Protocol):
    """What the policy reads of an incident (models.detect.incidents.Incident has it)."""

    @property
    def id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def scope(self) -> str: ...
    @property
    def related(self) -> list[str]: ...
    @property
    def opened_at(self) -> float: ...


#: sending dimensions of a combined scope that name the mail of an event
_SENDING_KINDS: Final[tuple[str, ...]] = ("ip", "pool", "sender")


def quarantine_scopes(config: SuppressionConfig, incident: IncidentLike) -> frozenset[str]:
    """The scopes an incident holds hard hits of: none unless its type quarantines; its scope
    and (``related``) its related scopes of the configured kinds (``domain:``, ``mx:``,
    ``provider:``); with ``combined``, a combined scope ``K:V|provider:P`` (K: ip, pool,
    sender) as it is: it holds the hard hits of the mail sent from V to provider P."""
    q = config.quarantine
    if incident.type not in q.types:
        return frozenset()
    names = [incident.scope, *(incident.related if q.related else ())]
    out: set[str] = set()
    for s in names:
        head, bar, tail = s.partition("|")
        if bar:
            if (
                q.combined
                and tail.startswith("provider:")
                and head.partition(":")[0] in _SENDING_KINDS
            ):
                out.add(s)
            continue
        if head.partition(":")[0] in q.scope_kinds:
            out.add(head)
    return frozenset(out)


def covers(scopes: frozenset[str], row: tuple[str | None, ...]) -> bool:
    """Whether held ``scopes`` cover an event with these scope names (SCOPE_COLUMN_KINDS
    order: domain, mx, provider, ip, pool, sender; None or "": unknown)."""
    dom, mx, prov, *sending = row
    if any(s and s in scopes for s in (dom, mx, prov)):
        return True
    return bool(prov) and any(s and f"{s}|{prov}" in scopes for s in sending)


# -- the suppressor ---------------------------------------------------------------------------

#: bumped when a snapshot written by an older version cannot be read correctly
STATE_FORMAT: Final[int] = 1
#: incident ids remembered for the records' ``incident`` / ``last_incident`` names
_NAMES_KEPT: Final[int] = 100_000
_NO_HOLDERS: Final[tuple[int, ...]] = ()
_TIMER_CAUSES: Final[frozenset[str]] = frozenset({"expired", "forgotten"})


@dataclass
class SuppressorStats:
    rows: int = 0
    #: rows left after the numpy filters (read from the store or changed state)
    examined: int = 0
    lookups: int = 0
    writes: int = 0
    #: rows skipped: their identity holds another recipient's record (a 64-bit collision)
    collisions: int = 0
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))


class Suppressor:
    """Per-recipient suppression state over a :class:`RecipientStore` (module docstring).

    ``write_through`` (default): each call writes its changes to the store before it returns.
    Without it the changes wait in memory (and are read from there) until :meth:`take_writes`
    hands them over: a worker that must publish a change to the changelog topic before its
    store applies it writes them itself, with the topic offsets.
    """

    def __init__(
        self,
        config: SuppressionConfig | None = None,
        store: RecipientStore | None = None,
        *,
        write_through: bool = True,
    ) -> None:
        self.config = config or default_config()
        self.policy = Policy(self.config)
        self.store: RecipientStore = store if store is not None else MemoryStore()
        self.write_through = write_through
        self.stats = SuppressorStats()
        self._pending: dict[int, bytes | None] = {}
        self._timers = _Timers()
        #: incident hash -> open quarantining incident
        self._held: dict[int, _Held] = {}
        #: incident hash -> id (names for the records)
        self._names: OrderedDict[int, str] = OrderedDict()
        self._recent: deque[_Recent] = deque()
        self.now: float = 0.0

    # ------------------------------------------------------------------ storage helpers
    def _get(self, idents: NDArray[np.uint64]) -> list[bytes | None]:
        self.stats.lookups += len(idents)
        if not self._pending:
            return self.store.get_many(idents)
        pend = self._pending
        ids = idents.tolist()
        miss = [i for i in ids if i not in pend]
        got = dict(zip(miss, self.store.get_many(np.asarray(miss, dtype=np.uint64)), strict=True))
        return [pend[i] if i in pend else got[i] for i in ids]

    def _put(self, items: dict[int, bytes | None]) -> None:
        if not items:
            return
        self.stats.writes += len(items)
        if self.write_through:
            self.store.put_many(list(items.items()))
        else:
            self._pending.update(items)

    def take_writes(self) -> list[tuple[int, bytes | None]]:
        """The writes waiting (``write_through=False``), oldest change first per identity;
        the caller must now apply them to the store."""
        out = list(self._pending.items())
        self._pending = {}
        return out

    def _name(self, h: int) -> str | None:
        return self._names.get(h) if h else None

    def _remember_name(self, h: int, name: str) -> None:
        self._names[h] = name
        self._names.move_to_end(h)
        while len(self._names) > _NAMES_KEPT:
            self._names.popitem(last=False)

    def _change(
        self, ident: int, at: float, cause: str, new: RecipientState | None, old: RecipientState
    ) -> SuppressionChange:
        self.stats.changes[cause] = self.stats.changes.get(cause, 0) + 1
        if new is None:
            gone = RecipientState(
                key=old.key,
                first_seen=old.first_seen,
                last_seen=old.last_seen,
                incident=old.incident,
                held=0,
            )
            return SuppressionChange(ident, at, cause, gone, True, None, self._name(old.incident))
        h = self._name(new.incident)
        return SuppressionChange(ident, at, cause, new, False, h, h)

    def _index(self, ident: int, rec: RecipientState | None) -> None:
        if rec is not None and rec.until and rec.state != QUARANTINED:
            self._timers.add(rec.until, ident)

    # ------------------------------------------------------------------ incidents
    def incident_opened(self, incident: IncidentLike) -> list[SuppressionChange]:
        """Start holding the hard hits of a quarantining incident's scopes; quarantine the
        recipients counted for hard hits from them up to ``lookback_s`` before it opened
        (unless something changed them since). No-op for other types and known incidents."""
        h = incident_hash(incident.id)
        self._remember_name(h, incident.id)
        known = self._held.get(h)
        if known is not None:
            if known.id is None:  # rebuilt from the store: now we know it
                known.id = incident.id
                known.scopes = quarantine_scopes(self.config, incident)
                known.opened_at = float(incident.opened_at)
                known.type = incident.type
            return []
        scopes = quarantine_scopes(self.config, incident)
        if not scopes:
            return []
        held = _Held(h, incident.id, scopes, float(incident.opened_at), type=incident.type)
        self._held[h] = held
        if incident.type not in self.config.quarantine.lookback_types:
            return []
        return self._retro(held)

    def _retro(self, held: _Held) -> list[SuppressionChange]:
        lo = held.opened_at - self.config.quarantine.lookback_s
        by_ident: dict[int, list[_Recent]] = {}
        for e in self._recent:
            if e.ts >= lo:
                by_ident.setdefault(e.ident, []).append(e)
        cands = {
            i: es for i, es in by_ident.items() if all(covers(held.scopes, e.scopes) for e in es)
        }
        if not cands:
            return []
        idents = np.fromiter(sorted(cands), dtype=np.uint64, count=len(cands))
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        for ident, cur_raw in zip(idents.tolist(), self._get(idents), strict=True):
            es = cands[ident]
            if cur_raw is None or cur_raw != es[-1].after:
                continue  # changed since (a delivery, a complaint, another quarantine ...)
            cur = RecipientState.unpack(cur_raw)
            before = RecipientState.unpack(es[0].before) if es[0].before is not None else None
            bst = before.state if before is not None else ACTIVE
            new = _with(
                cur,
                state=QUARANTINED,
                reason=es[0].reason,
                count=len(es),
                until=before.until if before is not None and bst == SUSPENDED else 0,
                base_state=bst,
                base_reason=before.reason if before is not None else NO_REASON,
                base_count=before.count if before is not None else 0,
                held=min(cur.held + len(es), _U16),
                incident=held.hash,
            )
            held.idents.add(ident)
            writes[ident] = new.pack()
            out.append(self._change(ident, held.opened_at, "quarantine", new, cur))
        self._put(writes)
        return out

    def incident_closed(self, incident: IncidentLike | str, at: float) -> list[SuppressionChange]:
        """Release the recipients an incident (or its id) held, unless another open incident
        holds them too (the record then names that one)."""
        iid = incident if isinstance(incident, str) else incident.id
        return self._close(incident_hash(iid), at)

    def _close(self, h: int, at: float) -> list[SuppressionChange]:
        held = self._held.pop(h, None)
        if held is None or not held.idents:
            return []
        idents = np.fromiter(sorted(held.idents), dtype=np.uint64, count=len(held.idents))
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        t = _sec(at)
        for ident, raw in zip(idents.tolist(), self._get(idents), strict=True):
            if raw is None:
                continue
            cur = RecipientState.unpack(raw)
            if cur.state != QUARANTINED:
                continue
            others = [o.hash for o in self._held.values() if ident in o.idents]
            if others:
                if cur.incident in others:
                    continue
                new = _with(cur, incident=others[0])
                writes[ident] = new.pack()
                out.append(self._change(ident, at, "quarantine", new, cur))
                continue
            new = _with(
                cur,
                state=cur.base_state,
                reason=cur.base_reason,
                count=cur.base_count,
                base_state=ACTIVE,
                base_reason=NO_REASON,
                base_count=0,
            )
            if new.state == SUSPENDED and new.until <= t:
                new.state = ACTIVE
            if new.state == ACTIVE:
                new.until = min(max(t, new.last_seen) + self.policy.forget_s, _U32)
            self._index(ident, new)
            writes[ident] = new.pack()
            out.append(self._change(ident, at, "release", new, cur))
        self._put(writes)
        return out

    def sync_incidents(
        self, open_incidents: Iterable[IncidentLike], at: float
    ) -> list[SuppressionChange]:
        """Make the held incidents those of ``open_incidents`` (every open incident): open the
        new ones, close the others at ``at`` (after a restart, or a missed close)."""
        out: list[SuppressionChange] = []
        live: set[int] = set()
        for inc in open_incidents:
            live.add(incident_hash(inc.id))
            out += self.incident_opened(inc)
        for h in [h for h in self._held if h not in live]:
            out += self._close(h, at)
        return out

    def open_holds(self) -> dict[str, int]:
        """Open quarantining incidents -> recipients they hold."""
        return {(o.id or f"#{o.hash:08x}"): len(o.idents) for o in self._held.values()}

    def _held_by_scope(self) -> dict[str, list[int]]:
        """Scope name (single or combined) -> the open incidents holding it."""
        by_scope: dict[str, list[int]] = {}
        for o in self._held.values():
            for s in o.scopes:
                by_scope.setdefault(s, []).append(o.hash)
        return by_scope

    def _candidates(
        self, rows: RecipientRows, idx: NDArray[np.intp], by_scope: dict[str, list[int]]
    ) -> NDArray[np.bool_]:
        """Which rows ``idx`` are hard hits some held scope may cover (exact for single
        scopes; a combined scope is confirmed per row by :func:`covers`)."""
        names = rows.scope_keys
        single = np.array([s in by_scope for s in names] + [False], dtype=np.bool_)
        heads = {s.partition("|")[0] for s in by_scope if "|" in s}
        head = np.array([s in heads for s in names] + [False], dtype=np.bool_)
        return np.asarray(
            (rows.cls[idx] == _HARD)
            & (
                single[rows.domain_idx[idx]]
                | single[rows.mx_idx[idx]]
                | single[rows.provider_idx[idx]]
                | head[rows.ip_idx[idx]]
                | head[rows.pool_idx[idx]]
                | head[rows.sender_idx[idx]]
            ),
            dtype=np.bool_,
        )

    # ------------------------------------------------------------------ events
    def observe(
        self, rows: RecipientRows, open_incidents: Iterable[IncidentLike] | None = None
    ) -> list[SuppressionChange]:
        """Apply a tick's rows, in feed order. ``open_incidents`` (the Monitor's open
        incidents): those not seen before start holding first (:meth:`incident_opened`).
        Returns the changes, in the order they happened."""
        out: list[SuppressionChange] = []
        if open_incidents is not None:
            for inc in open_incidents:
                out += self.incident_opened(inc)
        n = len(rows)
        self.stats.rows += n
        if not n:
            return out
        pol = self.policy
        cfg = self.config
        kind = rows.kind
        deliv = kind == _K_DELIVERED
        bounce = kind == _K_BOUNCED
        if cfg.count_rejected:
            bounce |= kind == _K_REJECTED
        relevant = deliv | (bounce & pol.counts[rows.cls, rows.reason])
        if not cfg.complaint.ignored:
            relevant |= kind == _K_COMPLAINED
        if not cfg.unsubscribe.ignored:
            relevant |= kind == _K_UNSUB
        relevant &= rows.ident != 0
        idx = np.flatnonzero(relevant)
        if not len(idx):
            self.now = max(self.now, float(rows.ts.max()))
            return out
        uniq, inv = np.unique(rows.ident[idx], return_inverse=True)
        vals = self._get(uniq)
        has = np.fromiter((v is not None for v in vals), dtype=np.bool_, count=len(vals))
        # deliveries matter only to recipients that have state, or get it in this call
        d = deliv[idx]
        touched = np.zeros(len(uniq), dtype=np.bool_)
        touched[inv[~d]] = True
        keep = ~d | has[inv] | touched[inv]
        idx, inv = idx[keep], inv[keep]
        self.stats.examined += len(idx)
        by_scope = self._held_by_scope()
        if by_scope:
            covered = self._candidates(rows, idx, by_scope)
        else:
            covered = np.zeros(len(idx), dtype=np.bool_)
        recs: dict[int, RecipientState | None] = {}
        orig: dict[int, bytes | None] = {}
        changed: set[int] = set()
        uniq_l = uniq.tolist()
        ts_l = rows.ts[idx].tolist()
        kind_l = kind[idx].tolist()
        cls_l = rows.cls[idx].tolist()
        reason_l = rows.reason[idx].tolist()
        mid_l = (rows.mid[idx] & np.uint64(_U32)).tolist()
        kg_l = rows.known_good[idx].tolist()
        cov_l = covered.tolist()
        inv_l = inv.tolist()
        # the keys as raw bytes (numpy's S32 items drop trailing NUL bytes)
        kraw = rows.key[idx].tobytes()
        lookback = cfg.quarantine.lookback_s
        for j, (row, u) in enumerate(zip(idx.tolist(), inv_l, strict=True)):
            ident = uniq_l[u]
            if ident in recs:
                rec = recs[ident]
            else:
                raw = vals[u]
                orig[ident] = raw
                rec = RecipientState.unpack(raw) if raw is not None else None
                recs[ident] = rec
            key = kraw[32 * j : 32 * j + 32]
            if rec is not None and rec.key != key:
                if key != _NO_KEY:
                    self.stats.collisions += 1
                    continue
                # a delivery carries no key (the pipeline digests only the kinds that can
                # create a record): it acts on the record of its identity
                key = rec.key
            holders = _NO_HOLDERS
            if cov_l[j]:
                holders = _holders(by_scope, rows.scopes_of(row))
            ev = Event(ts_l[j], kind_l[j], cls_l[j], reason_l[j], mid_l[j], kg_l[j], holders)
            new, trans = step(pol, rec, key, ev)
            if not trans:
                continue
            prev = rec
            for cause, after in trans:
                old = prev if prev is not None else after
                assert old is not None
                # a timer that fired at this event happened at its due time
                at = float(old.until) if cause in _TIMER_CAUSES and old.until else ev.ts
                out.append(self._change(ident, at, cause, after, old))
                prev = after if after is not None else prev
            recs[ident] = new
            changed.add(ident)
            if new is not None and new.state == QUARANTINED and holders:
                for h in holders:
                    self._held[h].idents.add(ident)
            if (
                lookback > 0
                and cls_l[j] == _HARD
                and not holders
                and trans[-1][0] == "bounce"
                and new is not None
                and new.state != QUARANTINED
            ):
                scopes = tuple(s or "" for s in rows.scopes_of(row))
                self._recent.append(
                    _Recent(
                        ev.ts,
                        ident,
                        ev.reason,
                        scopes,
                        rec.pack() if rec is not None else None,
                        new.pack(),
                    )
                )
            self._index(ident, new)
        writes: dict[int, bytes | None] = {}
        for ident in changed:
            rec = recs[ident]
            v = rec.pack() if rec is not None else None
            if v != orig[ident]:
                writes[ident] = v
        self._put(writes)
        self.now = max(self.now, float(rows.ts.max()))
        self._prune_recent()
        return out

    def _prune_recent(self) -> None:
        # incidents open at the watermark; keep an extra lookback for a late one
        lo = self.now - 2 * self.config.quarantine.lookback_s
        r = self._recent
        while r and r[0].ts < lo:
            r.popleft()

    def expire(self, now: float) -> list[SuppressionChange]:
        """Timers due at event time ``now``: suspensions (and suppressions with a duration)
        that ended, active records to forget. Reads only the records the index names."""
        due = self._timers.pop_due(now)
        if not len(due):
            return []
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        for ident, raw in zip(due.tolist(), self._get(due), strict=True):
            if raw is None:
                continue
            rec = RecipientState.unpack(raw)
            new, trans = timers(self.policy, rec, now)
            if not trans:
                continue
            prev = rec
            for cause, after in trans:
                at = float(prev.until) if prev.until else now
                out.append(self._change(ident, at, cause, after, prev))
                prev = after if after is not None else prev
            self._index(ident, new)
            writes[ident] = new.pack() if new is not None else None
        self._put(writes)
        return out

    # ------------------------------------------------------------------ operators
    def manual(self, key: bytes, at: float, suppress: bool = True) -> list[SuppressionChange]:
        """An operator suppresses a recipient (reason ``manual``, permanent) or clears it
        (whatever its state: a tombstone)."""
        ident = int.from_bytes(key[:8], "little")
        raw = self._get(np.asarray([ident], dtype=np.uint64))[0]
        cur = RecipientState.unpack(raw) if raw is not None else None
        if cur is not None and cur.key != key:
            self.stats.collisions += 1
            return []
        t = _sec(at)
        for o in self._held.values():
            o.idents.discard(ident)
        if not suppress:
            if cur is None:
                return []
            self._put({ident: None})
            return [self._change(ident, at, "manual", None, cur)]
        base = cur if cur is not None else _fresh(key, t)
        new = _with(
            base,
            state=SUPPRESSED,
            reason=MANUAL,
            count=1,
            until=0,
            base_state=ACTIVE,
            base_reason=NO_REASON,
            base_count=0,
            last_seen=max(base.last_seen, t),
        )
        self._put({ident: new.pack()})
        return [self._change(ident, at, "manual", new, base)]

    # ------------------------------------------------------------------ output
    def record(self, change: SuppressionChange) -> dict[str, Any]:
        """The record of a change (docs/suppression.md, "Record")."""
        return change.to_json()

    def lookup(self, keys: Sequence[bytes]) -> list[dict[str, Any] | None]:
        """The current record of each 32-byte key (None: nothing stored: active)."""
        idents = np.asarray([int.from_bytes(k[:8], "little") for k in keys], dtype=np.uint64)
        out: list[dict[str, Any] | None] = []
        for k, raw in zip(keys, self._get(idents), strict=True):
            rec = RecipientState.unpack(raw) if raw is not None else None
            if rec is None or rec.key != k:
                out.append(None)
                continue
            name = self._name(rec.incident)
            out.append(record_of(rec, float(rec.last_seen), "lookup", False, name, name))
        return out

    def metrics(self) -> dict[str, Any]:
        return {
            "rows": self.stats.rows,
            "examined": self.stats.examined,
            "lookups": self.stats.lookups,
            "writes": self.stats.writes,
            "collisions": self.stats.collisions,
            "changes": dict(self.stats.changes),
            "timers": len(self._timers),
            "held_incidents": len(self._held),
            "held_recipients": sum(len(o.idents) for o in self._held.values()),
            "recent_hard_hits": len(self._recent),
        }

    # ------------------------------------------------------------------ state
    def snapshot(self) -> Snap:
        """The in-memory indexes (timers, held incidents and their recipients, recent hard
        hits, incident names) as a :class:`Snap`; the records are the store's."""
        snap = Snap(meta={"format": STATE_FORMAT, "now": self.now})
        snap.put("timers", self._timers.snapshot())
        held = sorted(self._held.values(), key=lambda o: o.hash)
        snap.meta["held"] = [
            {
                "hash": o.hash,
                "id": o.id,
                "type": o.type,
                "scopes": sorted(o.scopes),
                "opened_at": o.opened_at,
            }
            for o in held
        ]
        for i, o in enumerate(held):
            snap.arrays[f"held/{i}"] = np.fromiter(
                sorted(o.idents), dtype=np.uint64, count=len(o.idents)
            )
        snap.arrays["names/hash"] = np.fromiter(
            self._names.keys(), dtype=np.uint32, count=len(self._names)
        )
        snap.arrays["names/id"] = strings(list(self._names.values()))
        r = list(self._recent)
        snap.arrays["recent/ts"] = np.array([e.ts for e in r], dtype=np.float64)
        snap.arrays["recent/ident"] = np.array([e.ident for e in r], dtype=np.uint64)
        snap.arrays["recent/reason"] = np.array([e.reason for e in r], dtype=np.uint8)
        snap.arrays["recent/before"] = np.array(
            [e.before or b"" for e in r], dtype=f"S{RECORD_BYTES}"
        )
        snap.arrays["recent/after"] = np.array([e.after for e in r], dtype=f"S{RECORD_BYTES}")
        snap.arrays["recent/scopes"] = strings(["\n".join(e.scopes) for e in r])
        return snap

    @classmethod
    def restore(
        cls,
        snap: Snap,
        config: SuppressionConfig | None = None,
        store: RecipientStore | None = None,
        *,
        write_through: bool = True,
    ) -> Suppressor:
        """A suppressor continuing from :meth:`snapshot` over ``store`` (``SnapshotError``
        when it cannot)."""
        if snap.meta.get("format") != STATE_FORMAT:
            raise SnapshotError(
                f"suppression state format {snap.meta.get('format')}, this version reads "
                f"{STATE_FORMAT}"
            )
        sup = cls(config, store, write_through=write_through)
        try:
            sup.now = float(snap.meta["now"])
            sup._timers.restore(snap.child("timers"))
            for i, o in enumerate(snap.meta["held"]):
                sup._held[int(o["hash"])] = _Held(
                    int(o["hash"]),
                    None if o["id"] is None else str(o["id"]),
                    frozenset(str(s) for s in o["scopes"]),
                    float(o["opened_at"]),
                    set(np.asarray(snap.array(f"held/{i}"), dtype=np.uint64).tolist()),
                    str(o.get("type", "")),
                )
            for h, name in zip(
                snap.array("names/hash").tolist(), unstrings(snap.array("names/id")), strict=True
            ):
                sup._names[int(h)] = name
            ts = snap.array("recent/ts").tolist()
            before = snap.array("recent/before").tolist()
            after = snap.array("recent/after").tolist()
            scopes = unstrings(snap.array("recent/scopes"))
            for t, ident, reason, b, a, s in zip(
                ts,
                snap.array("recent/ident").tolist(),
                snap.array("recent/reason").tolist(),
                before,
                after,
                scopes,
                strict=True,
            ):
                sup._recent.append(
                    _Recent(
                        float(t),
                        int(ident),
                        int(reason),
                        tuple(s.split("\n")),
                        _pad(b) if b else None,
                        _pad(a),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"damaged suppression state: {exc!r}") from exc
        return sup

    def rebuild_indexes(self) -> int:
        """Rebuild the timers and the held recipients from the store (one scan: after a
        restart without a snapshot). Held incidents not known by id are named by their hash
        until :meth:`incident_opened` or :meth:`sync_incidents` sees them. Returns the records
        read."""
        self._timers = _Timers()
        for held in self._held.values():
            held.idents.clear()
        n = 0
        for ident, raw in self.store.items():
            n += 1
            rec = RecipientState.unpack(raw)
            if rec.state == QUARANTINED:
                o = self._held.get(rec.incident)
                if o is None:
                    o = self._held[rec.incident] = _Held(
                        rec.incident, self._name(rec.incident), frozenset(), 0.0
                    )
                o.idents.add(int(ident))
            else:
                self._index(int(ident), rec)
        return n


def _holders(by_scope: dict[str, list[int]], row: tuple[str | None, ...]) -> tuple[int, ...]:
    """The held incidents covering an event with these scope names (see :func:`covers`)."""
    dom, mx, prov, *sending = row
    hs: set[int] = set()
    for s in (dom, mx, prov):
        if s:
            hs.update(by_scope.get(s, ()))
    if prov:
        for s in sending:
            if s:
                hs.update(by_scope.get(f"{s}|{prov}", ()))
    return tuple(sorted(hs))


def _pad(b: bytes) -> bytes:
    """numpy's S arrays drop trailing NUL bytes: put them back."""
    return b.ljust(RECORD_BYTES, b"\x00")


__all__ = [
    "ACTIVE",
    "CAUSES",
    "COMPLAINT",
    "EXTRA_KEYS",
    "MANUAL",
    "NO_REASON",
    "QUARANTINED",
    "RECORD_BYTES",
    "RECORD_KEYS",
    "STATES",
    "SUPPRESSED",
    "SUSPENDED",
    "UNSUBSCRIBE",
    "Event",
    "IncidentLike",
    "MemoryStore",
    "Policy",
    "RecipientState",
    "RecipientStore",
    "RecordError",
    "SuppressionChange",
    "Suppressor",
    "covers",
    "incident_hash",
    "may_send",
    "quarantine_scopes",
    "reason_code",
    "reason_name",
    "record_of",
    "state_from_record",
    "step",
    "timers",
]
