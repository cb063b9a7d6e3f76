"""The throttle record and the per-message lookup (docs/throttle.md, "Record" and "Lookup").

A :class:`ThrottleRecord` is one scope's current decision. The controller
(:mod:`models.act.throttle`) emits one on every change; ``repmon replay`` prints them as JSON
lines and the worker will publish them as the values of the compacted topic ``repmon.throttle``
(key: the scope). :meth:`ThrottleRecord.to_json` / :meth:`ThrottleRecord.from_json` are the wire
format; docs/throttle.md documents it field by field for consumers in other languages.

:func:`most_restrictive` answers, for one message, which decision applies: over the message's
scopes (:func:`message_scopes`), the live decision with the lowest rate factor wins.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

#: Controller states, from open to closed (docs/throttle.md, "States").
STATES: Final[tuple[str, ...]] = ("normal", "throttled", "paused", "recovering")
#: How restrictive a state is when two decisions have the same factor (higher wins).
STATE_RANK: Final[dict[str, int]] = {"normal": 0, "recovering": 1, "throttled": 2, "paused": 3}

#: Why a record was issued (docs/throttle.md, "Reasons"). A refresh re-issues a decision with
#: its reason unchanged.
REASONS: Final[tuple[str, ...]] = (
    "opened",  # an incident opened on the scope (or a more restrictive one joined)
    "critical",  # an open incident became critical
    "persists",  # the signal stayed hot for decrease_every_s: multiplicative decrease
    "worsened",  # the signal's rate rose by worsen_ratio: decrease at once
    "relapse",  # the signal came back (or an incident reopened) while ramping or just after
    "healthy",  # the signal was cold for recover_after_s with the incident open: ramp starts
    "closed",  # every incident on the scope closed: ramp starts
    "stale",  # an open incident was neither observed nor changed for stale_s: as if closed
    "ramp",  # one additive ramp step
    "recovered",  # back to normal
    "manual",  # a person set it (PUT /throttle/{scope}); wins until it expires or is deleted
    "manual-cleared",  # the manual override was deleted; the scope's owner republishes its own
)

#: Keys of the JSON record, in output order.
RECORD_KEYS: Final[tuple[str, ...]] = (
    "kind",
    "scope",
    "state",
    "rate_factor",
    "reason",
    "incident",
    "at",
    "expires_at",
)


class RecordError(ValueError):
    """A JSON throttle record that does not follow docs/throttle.md."""


@dataclass(frozen=True, slots=True)
class ThrottleRecord:
    """One scope's throttle decision. Times are event time (epoch seconds)."""

    #: the scope the incident names (``ip:192.0.2.7|provider:google``); never a wider one
    scope: str
    #: one of :data:`STATES`
    state: str
    #: fraction of the scope's normal send rate the fleet may use, in [0, 1]
    #: (``paused``: the probe share; ``normal``: 1)
    rate_factor: float
    #: one of :data:`REASONS`
    reason: str
    #: id of the incident that drives the decision (``type/scope/opened_at``), or None
    incident: str | None
    #: event time the record was issued
    at: float
    #: the decision no longer holds from this event time on (``normal``: equal to ``at``)
    expires_at: float

    def live(self, now: float) -> bool:
        """Restricts sending at event time ``now`` (not normal, not expired)."""
        return self.state != "normal" and now < self.expires_at

    def to_json(self) -> dict[str, Any]:
        """The wire record (docs/throttle.md, "Record")."""
        return {
            "kind": "throttle",
            "scope": self.scope,
            "state": self.state,
            "rate_factor": self.rate_factor,
            "reason": self.reason,
            "incident": self.incident,
            "at": self.at,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ThrottleRecord:
        """Read a wire record; unknown keys are ignored (later versions may add some), anything
        else that breaks docs/throttle.md raises :class:`RecordError`."""
        if not isinstance(d, Mapping):
            raise RecordError(f"a throttle record is a JSON object, got {type(d).__name__}")
        missing = [k for k in RECORD_KEYS if k not in d]
        if missing:
            raise RecordError(f"missing key(s): {', '.join(missing)}")
        if d["kind"] != "throttle":
            raise RecordError(f"kind must be 'throttle', got {d['kind']!r}")
        scope, state, reason, incident = d["scope"], d["state"], d["reason"], d["incident"]
        if not isinstance(scope, str) or ":" not in scope:
            raise RecordError(f"scope must be a '<kind>:<value>' string, got {scope!r}")
        if state not in STATES:
            raise RecordError(f"state must be one of {', '.join(STATES)}, got {state!r}")
        if not isinstance(reason, str) or not reason:
            raise RecordError(f"reason must be a non-empty string, got {reason!r}")
        if incident is not None and not isinstance(incident, str):
            raise RecordError(f"incident must be a string or null, got {incident!r}")
        factor = _number(d, "rate_factor")
        at = _number(d, "at")
        expires_at = _number(d, "expires_at")
        if not 0.0 <= factor <= 1.0:
            raise RecordError(f"rate_factor must be in [0, 1], got {factor!r}")
        if expires_at < at:
            raise RecordError(f"expires_at ({expires_at}) is before at ({at})")
        if state == "normal" and factor != 1.0:
            raise RecordError(f"a normal record has rate_factor 1, got {factor!r}")
        return cls(scope, state, factor, reason, incident, at, expires_at)


def _number(d: Mapping[str, Any], key: str) -> float:
    v = d[key]
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise RecordError(f"{key} must be a finite number, got {v!r}")
    return float(v)


def tighter(a: ThrottleRecord, b: ThrottleRecord) -> bool:
    """``a`` is more restrictive than ``b``: lower factor; on a tie the higher
    :data:`STATE_RANK`; then the smaller scope name (a total order: the winner of
    :func:`most_restrictive` does not depend on the order of the scopes)."""
    if a.rate_factor != b.rate_factor:
        return a.rate_factor < b.rate_factor
    if a.state != b.state:
        return STATE_RANK[a.state] > STATE_RANK[b.state]
    return a.scope < b.scope


def most_restrictive(
    scopes: Iterable[str], decisions: Mapping[str, ThrottleRecord], now: float
) -> ThrottleRecord | None:
    """The decision that applies to a message with these scopes at event time ``now``: the live
    one (:meth:`ThrottleRecord.live`) with the lowest rate factor, or None (send at the normal
    rate). One dict lookup per scope, nothing allocated; order independent."""
    if not decisions:
        return None
    get = decisions.get
    best: ThrottleRecord | None = None
    for s in scopes:
        d = get(s)
        if d is None or d.state == "normal" or d.expires_at <= now:
            continue
        if best is None or tighter(d, best):
            best = d
    return best


def effective_factor(
    scopes: Iterable[str], decisions: Mapping[str, ThrottleRecord], now: float
) -> float:
    """The rate factor of :func:`most_restrictive` (1.0 when nothing applies)."""
    d = most_restrictive(scopes, decisions, now)
    return 1.0 if d is None else d.rate_factor


def message_scopes(
    *,
    domain: str | None = None,
    provider: str | None = None,
    mx: str | None = None,
    ip: str | None = None,
    pool: str | None = None,
    sender: str | None = None,
    tenant: str | None = None,
    campaign: str | None = None,
) -> tuple[str, ...]:
    """The scope names of one message, as the ingest names them (docs/events.md): the single
    scopes of the given values, then the combined ``<kind>:<value>|provider:<provider>`` ones
    when the provider is known. Values must already be normalised the way the events carry
    them (lower-case domains; ``mx`` is the MX operator, ``provider`` the mailbox provider).
    Compute it once per (recipient domain, IP, pool, sender, tenant, campaign) and reuse it."""
    single = (
        ("domain", domain),
        ("provider", provider),
        ("mx", mx),
        ("ip", ip),
        ("pool", pool),
        ("sender", sender),
        ("tenant", tenant),
        ("campaign", campaign),
    )
    out = [f"{k}:{v}" for k, v in single if v]
    if provider:
        out.extend(
            f"{k}:{v}|provider:{provider}"
            for k, v in (
                ("ip", ip),
                ("pool", pool),
                ("sender", sender),
                ("campaign", campaign),
                ("tenant", tenant),
            )
            if v
        )
    return tuple(out)


__all__ = [
    "REASONS",
    "RECORD_KEYS",
    "STATES",
    "STATE_RANK",
    "RecordError",
    "ThrottleRecord",
    "effective_factor",
    "message_scopes",
    "most_restrictive",
    "tighter",
]
