"""Recipient suppression: the record of a change (docs/suppression.md, "Record"), the value
of the compacted topic ``repmon.suppressions``: :class:`SuppressionChange`, :func:`record_of`,
:func:`state_from_record` (its inverse) and :func:`may_send` (the fleet's answer on it).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from models.act.suppression.state import (
    ACTIVE,
    QUARANTINED,
    STATE_CODE,
    STATES,
    SUPPRESSED,
    SUSPENDED,
    RecipientState,
    incident_hash,
    reason_code,
    reason_name,
)

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
