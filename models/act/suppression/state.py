"""Recipient suppression: the vocabulary (states, reason codes, causes), the packed
per-recipient record (:class:`RecipientState`) and where it lives (:class:`RecipientStore`,
:class:`MemoryStore`). docs/suppression.md, "Interfaces"; the package docstring has the whole.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
from numpy.typing import NDArray

from models.schema import CLASS_CODE, EVENT_KIND_CODE, REASON_CODE, REASONS

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
