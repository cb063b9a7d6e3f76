"""Recipient suppression: which hard hits an open incident holds (docs/suppression.md,
"Quarantine"): :class:`IncidentLike` (what the policy reads of an incident),
:func:`quarantine_scopes` (the scopes an incident holds) and :func:`covers` (whether they cover
an event's scopes).
"""

from __future__ import annotations

from typing import Final, Protocol

from models.act.suppression_config import SuppressionConfig


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
