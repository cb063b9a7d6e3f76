"""Incident records and the opened/closed changes the Monitor emits (docs/incidents.md)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

#: The incident vocabulary, in documentation order.
SEVERITIES: Final[tuple[str, ...]] = ("warning", "critical")

#: Severity of each incident type (docs/runbook.md, "Severities"): critical pages, warning goes
#: to chat. A warning type is raised to critical when the incident's rate reaches its detector's
#: ``critical_rate`` (:func:`severity_of`). The same word travels unchanged to the
#: ``repmon_incidents_open{severity}`` metric, the alert's ``severity`` label and the page.
BASE_SEVERITY: Final[dict[str, str]] = {
    "provider_outage": "critical",
    "block": "critical",
    "auth_failure": "critical",
    "false_hard_bounces": "critical",
    "rate_limited": "warning",
    "complaint_spike": "warning",
    "hard_bounce_spike": "warning",
}


def severity_of(type_: str, rate: float, critical_rate: float) -> str:
    """The severity of a new incident: its type's, or critical at ``critical_rate`` or more."""
    base = BASE_SEVERITY.get(type_, "warning")
    return "critical" if base == "critical" or rate >= critical_rate else base


@dataclass(slots=True)
class Incident:
    """One incident on one scope. Times are event time (epoch seconds)."""

    id: str
    type: str
    scope: str
    opened_at: float
    severity: str
    evidence: dict[str, Any]
    closed_at: float | None = None
    #: other scopes whose surge of the same signal this incident explains (same events)
    related: list[str] = field(default_factory=list)
    peak_rate: float = 0.0
    last_hot: float = 0.0
    #: id of the incident (of another type) that explains this one; such incidents are tracked
    #: (so that their related scopes stay quiet) but never reported
    explained_by: str | None = None
    #: current excess count of the signal over the baseline (updated while open)
    excess: float = 0.0
    #: the signal's rate at the last detector run (updated while open; the throttle reads it)
    rate: float = 0.0
    #: id of the incident on a wider scope this one was closed into (docs/incidents.md,
    #: "Attribution": widening), and the ids of the narrower incidents closed into this one
    widened_into: str | None = None
    widened_from: list[str] = field(default_factory=list)

    @property
    def is_open(self) -> bool:
        return self.closed_at is None

    def state(self) -> dict[str, Any]:
        """Every field, JSON-able (snapshots; :meth:`from_state` reads it back)."""
        return asdict(self)

    @classmethod
    def from_state(cls, d: dict[str, Any]) -> Incident:
        return cls(**d)

    def to_json(self) -> dict[str, Any]:
        ev = dict(self.evidence)
        ev["peak_rate"] = round(self.peak_rate, 6)
        if self.related:
            ev["related_scopes"] = list(self.related)
        out: dict[str, Any] = {
            "id": self.id,
            "type": self.type,
            "scope": self.scope,
            "opened_at": self.opened_at,
            "closed_at": self.closed_at,
            "severity": self.severity,
            "evidence": ev,
        }
        if self.widened_into is not None:
            out["widened_into"] = self.widened_into
        if self.widened_from:
            out["widened_from"] = list(self.widened_from)
        return out


@dataclass(frozen=True, slots=True)
class IncidentChange:
    """An incident was opened or closed during one ``Monitor.advance``."""

    action: Literal["opened", "closed"]
    incident: Incident
    #: the incident as it was when the change happened (the Incident object lives on)
    snapshot: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, action: Literal["opened", "closed"], incident: Incident) -> IncidentChange:
        return cls(action, incident, incident.to_json())

    def to_json(self) -> dict[str, Any]:
        """The replay / worker output shape (docs/incidents.md, "Output")."""
        body = self.snapshot or self.incident.to_json()
        return {"kind": "incident", "action": self.action, **body}


def incident_id(type_: str, scope: str, opened_at: float) -> str:
    """Deterministic id: the same replay yields the same ids."""
    return f"{type_}/{scope}/{int(opened_at)}"
