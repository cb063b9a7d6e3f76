"""Suppression policy parameters (docs/suppression.md, "Configuration").

The defaults are :data:`DEFAULTS` (the same values, commented, are shipped as
``models/act/data/suppression.toml``, the file to copy and edit; tests keep the two equal). A user
file holds only what it changes; :func:`load_config` / :func:`parse_config` layer it over the
defaults and validate the result, raising :class:`SuppressionConfigError` with the file, the key
path and the rule broken.

Shape::

    [suppression]                       forget_after_days, count_rejected
    [complaint], [unsubscribe]          action ("suppress" | "ignore"), suppressed_days
    [classes.hard], [classes.soft]      a schedule (below) for every reason of the class ...
    [classes.<cls>.reasons.<reason>]    ... except these (the class's keys, overridden)
    [quarantine]                        types, scope_kinds, combined, related, lookback_s,
                                        lookback_types

A schedule: ``action`` ("schedule" | "ignore"), ``suspend_days`` (list of durations: the n-th
counted hit suspends for the n-th, the last one repeating), ``suppress_after`` (the counted hit
that suppresses; 0: never), ``known_good_suppress_after`` (the same for a hit the pipeline marks
known-good: the recipient was delivered before in another message; 0: as ``suppress_after``),
``suppressed_days`` (how long a suppression lasts; 0: permanent).

Only the ``hard`` and ``soft`` classes can penalise a recipient; ``block``, ``throttle``,
``transient``, ``config`` and ``other`` replies never do (the sender, or nobody, is at fault):
that is not configurable.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from models.act.toml_config import load_toml, loads_toml
from models.schema import INCIDENT_TYPES, REASONS

#: reply classes a schedule can be given for
SCHEDULE_CLASSES: Final[tuple[str, ...]] = ("hard", "soft")
#: scope kinds a quarantining incident may name for a recipient
RECIPIENT_SCOPE_KINDS: Final[tuple[str, ...]] = ("domain", "mx", "provider")
DAY: Final[float] = 86_400.0
#: durations are bounded so that times stay in the record's uint32 seconds
_MAX_DAYS: Final[float] = 3_650.0


class SuppressionConfigError(ValueError):
    """A suppression configuration that cannot be used (the message names file, key, rule)."""


@dataclass(frozen=True, slots=True)
class Schedule:
    """What counted hits of one (class, reason) do (module docstring)."""

    action: str
    suspend_days: tuple[float, ...]
    suppress_after: int
    known_good_suppress_after: int
    suppressed_days: float

    @property
    def ignored(self) -> bool:
        return self.action == "ignore"

    def threshold(self, known_good: bool) -> int:
        """The counted hit that suppresses (0: never)."""
        if known_good and self.known_good_suppress_after:
            return self.known_good_suppress_after
        return self.suppress_after

    def suspend_s(self, count: int) -> float:
        """Seconds the ``count``-th counted hit suspends for (0: it does not suspend)."""
        if not self.suspend_days or count < 1:
            return 0.0
        return self.suspend_days[min(count, len(self.suspend_days)) - 1] * DAY


@dataclass(frozen=True, slots=True)
class ConsentRule:
    """A complaint or an unsubscribe: suppress at once, or ignore."""

    action: str
    suppressed_days: float

    @property
    def ignored(self) -> bool:
        return self.action == "ignore"


@dataclass(frozen=True, slots=True)
class QuarantineParams:
    #: incident types whose open incidents hold hard bounces in quarantine
    types: tuple[str, ...]
    #: scope kinds of an incident that name recipients (domain, mx, provider)
    scope_kinds: tuple[str, ...]
    #: a combined scope ``K:V|provider:P`` (K: ip, pool, sender) names the mail sent from V
    #: to provider P
    combined: bool
    #: the incident's related scopes count as its own
    related: bool
    #: hard hits this long before an incident of ``lookback_types`` opened are quarantined
    #: when it opens
    lookback_s: float
    lookback_types: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SuppressionConfig:
    """A validated suppression configuration."""

    #: active records with counters or evidence are forgotten this long after their last event
    forget_after_s: float
    #: ``rejected`` events count like bounces (by their reply's class and reason)
    count_rejected: bool
    complaint: ConsentRule
    unsubscribe: ConsentRule
    #: class -> its schedule for reasons without their own
    classes: Mapping[str, Schedule]
    #: (class, reason) -> schedule, for the reasons given their own
    reasons: Mapping[tuple[str, str], Schedule]
    quarantine: QuarantineParams
    #: the merged document (defaults + user), TOML-shaped
    document: Mapping[str, Any]

    def schedule(self, cls: str, reason: str | None) -> Schedule | None:
        """The schedule of a reply of class ``cls`` and ``reason`` (None: never penalises).
        A reason without its own schedule (unknown ones included) gets its class's."""
        base = self.classes.get(cls)
        if base is None:
            return None
        s = self.reasons.get((cls, reason or ""), base)
        return None if s.ignored else s


_SCHEDULE_KEYS: Final[dict[str, str]] = {
    "action": "schedule_action",
    "suspend_days": "days_list",
    "suppress_after": "count",
    "known_good_suppress_after": "count",
    "suppressed_days": "days",
}
_CONSENT_KEYS: Final[dict[str, str]] = {"action": "consent_action", "suppressed_days": "days"}
_GLOBAL_KEYS: Final[dict[str, str]] = {"forget_after_days": "days_pos", "count_rejected": "bool"}
_QUARANTINE_KEYS: Final[dict[str, str]] = {
    "types": "types",
    "scope_kinds": "scope_kinds",
    "combined": "bool",
    "related": "bool",
    "lookback_s": "seconds",
    "lookback_types": "types",
}

#: The shipped policy (docs/suppression.md justifies each value). Plain TOML-shaped data.
DEFAULTS: Final[dict[str, Any]] = {
    "suppression": {"forget_after_days": 30.0, "count_rejected": True},
    "complaint": {"action": "suppress", "suppressed_days": 0.0},
    "unsubscribe": {"action": "suppress", "suppressed_days": 0.0},
    "classes": {
        "hard": {
            "action": "schedule",
            "suspend_days": [1.0],
            "suppress_after": 1,
            "known_good_suppress_after": 2,
            "suppressed_days": 0.0,
        },
        "soft": {
            "action": "schedule",
            "suspend_days": [1.0, 3.0, 7.0],
            "suppress_after": 4,
            "known_good_suppress_after": 0,
            "suppressed_days": 0.0,
            "reasons": {
                "mailboxfull": {"suspend_days": [1.0, 3.0, 7.0], "suppress_after": 4},
                "suspend": {"suspend_days": [3.0, 14.0], "suppress_after": 3},
                "exceedlimit": {"action": "ignore"},
                "mesgtoobig": {"action": "ignore"},
            },
        },
    },
    "quarantine": {
        "types": ["false_hard_bounces", "block", "provider_outage"],
        "scope_kinds": ["domain", "mx", "provider"],
        "combined": True,
        "related": False,
        "lookback_s": 3600.0,
        "lookback_types": ["false_hard_bounces"],
    },
}


def _err(source: str, path: str, msg: str) -> SuppressionConfigError:
    return SuppressionConfigError(f"{source}: {path}: {msg}")


def _table(source: str, path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _err(source, path, f"must be a table, got {type(v).__name__}")
    return v


def _number(source: str, path: str, v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _err(source, path, f"must be a finite number, got {v!r}")
    return float(v)


def _check(source: str, path: str, kind: str, v: Any) -> Any:
    if kind == "bool":
        if not isinstance(v, bool):
            raise _err(source, path, f"must be true or false, got {v!r}")
        return v
    if kind == "schedule_action":
        if v not in ("schedule", "ignore"):
            raise _err(source, path, f'must be "schedule" or "ignore", got {v!r}')
        return v
    if kind == "consent_action":
        if v not in ("suppress", "ignore"):
            raise _err(source, path, f'must be "suppress" or "ignore", got {v!r}')
        return v
    if kind == "count":
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 1000:
            raise _err(source, path, f"must be an integer in [0, 1000], got {v!r}")
        return v
    if kind in ("days", "days_pos"):
        d = _number(source, path, v)
        lo_ok = d > 0 if kind == "days_pos" else d >= 0
        if not lo_ok or d > _MAX_DAYS:
            lb = "(0" if kind == "days_pos" else "[0"
            raise _err(source, path, f"must be in {lb}, {_MAX_DAYS:g}] days, got {d:g}")
        return d
    if kind == "seconds":
        s = _number(source, path, v)
        if not 0 <= s <= 7 * DAY:
            raise _err(source, path, f"must be in [0, {7 * DAY:g}] seconds, got {s:g}")
        return s
    if kind == "days_list":
        if not isinstance(v, list):
            raise _err(source, path, f"must be a list of durations in days, got {v!r}")
        out = [_check(source, f"{path}[{i}]", "days_pos", x) for i, x in enumerate(v)]
        if len(out) > 100:
            raise _err(source, path, "at most 100 durations")
        return out
    if kind in ("types", "scope_kinds"):
        known = INCIDENT_TYPES if kind == "types" else RECIPIENT_SCOPE_KINDS
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise _err(source, path, f"must be a list of strings, got {v!r}")
        for x in v:
            if x not in known:
                raise _err(source, path, f"unknown value {x!r} (known: {', '.join(known)})")
        return list(dict.fromkeys(v))
    raise AssertionError(kind)  # pragma: no cover


def _merge(
    source: str, path: str, base: dict[str, Any], over: Any, keys: Mapping[str, str]
) -> dict[str, Any]:
    out = dict(base)
    for k, v in _table(source, path, over).items():
        if k not in keys:
            raise _err(source, f"{path}.{k}", f"unknown key (known: {', '.join(sorted(keys))})")
        out[k] = _check(source, f"{path}.{k}", keys[k], v)
    return out


def parse_config(
    data: Mapping[str, Any], source: str = "<suppression config>"
) -> SuppressionConfig:
    """Layer a TOML-shaped user document over :data:`DEFAULTS` and validate the result."""
    user = _table(source, "<top>", dict(data))
    top = ("suppression", "complaint", "unsubscribe", "classes", "quarantine")
    unknown = set(user) - set(top)
    if unknown:
        raise _err(
            source,
            ", ".join(sorted(unknown)),
            f"unknown top-level key(s) (known: {', '.join(top)})",
        )
    doc: dict[str, Any] = copy.deepcopy(DEFAULTS)
    doc["suppression"] = _merge(
        source, "suppression", doc["suppression"], user.get("suppression", {}), _GLOBAL_KEYS
    )
    for name in ("complaint", "unsubscribe"):
        doc[name] = _merge(source, name, doc[name], user.get(name, {}), _CONSENT_KEYS)
    doc["quarantine"] = _merge(
        source, "quarantine", doc["quarantine"], user.get("quarantine", {}), _QUARANTINE_KEYS
    )
    for cls, over in _table(source, "classes", user.get("classes", {})).items():
        path = f"classes.{cls}"
        if cls not in SCHEDULE_CLASSES:
            raise _err(
                source,
                path,
                "only the hard and soft classes have schedules (block, throttle, transient, "
                "config and other replies never penalise a recipient)",
            )
        over = dict(_table(source, path, over))
        reasons_over = _table(source, f"{path}.reasons", over.pop("reasons", {}))
        cur = doc["classes"][cls]
        reasons = cur.pop("reasons", {})
        cur = _merge(source, path, cur, over, _SCHEDULE_KEYS)
        for reason, rover in reasons_over.items():
            if reason not in REASONS:
                raise _err(
                    source, f"{path}.reasons.{reason}", "unknown reason (see models.schema.REASONS)"
                )
            reasons[reason] = _merge(
                source, f"{path}.reasons.{reason}", reasons.get(reason, {}), rover, _SCHEDULE_KEYS
            )
        if reasons:
            cur["reasons"] = reasons
        doc["classes"][cls] = cur
    return _build(doc, source)


def _schedule(source: str, path: str, d: Mapping[str, Any]) -> Schedule:
    s = Schedule(
        action=str(d["action"]),
        suspend_days=tuple(float(x) for x in d["suspend_days"]),
        suppress_after=int(d["suppress_after"]),
        known_good_suppress_after=int(d["known_good_suppress_after"]),
        suppressed_days=float(d["suppressed_days"]),
    )
    if s.ignored:
        return s
    if not s.suppress_after and not s.suspend_days:
        raise _err(
            source,
            path,
            'a schedule that neither suspends nor suppresses does nothing: use action = "ignore"',
        )
    if s.known_good_suppress_after and not s.suppress_after:
        raise _err(
            source,
            f"{path}.known_good_suppress_after",
            "needs suppress_after (a schedule that never suppresses cannot for known-good hits)",
        )
    if s.known_good_suppress_after and s.known_good_suppress_after < s.suppress_after:
        raise _err(
            source,
            f"{path}.known_good_suppress_after",
            f"must be 0 or at least suppress_after ({s.suppress_after}), "
            f"got {s.known_good_suppress_after}: a recipient known to exist needs more evidence",
        )
    return s


def _build(doc: dict[str, Any], source: str) -> SuppressionConfig:
    classes: dict[str, Schedule] = {}
    reasons: dict[tuple[str, str], Schedule] = {}
    for cls in SCHEDULE_CLASSES:
        cd = dict(doc["classes"][cls])
        rd: dict[str, dict[str, Any]] = cd.pop("reasons", {})
        classes[cls] = _schedule(source, f"classes.{cls}", cd)
        for reason, over in rd.items():
            reasons[(cls, reason)] = _schedule(
                source, f"classes.{cls}.reasons.{reason}", {**cd, **over}
            )
    q = doc["quarantine"]
    g = doc["suppression"]
    return SuppressionConfig(
        forget_after_s=float(g["forget_after_days"]) * DAY,
        count_rejected=bool(g["count_rejected"]),
        complaint=ConsentRule(
            str(doc["complaint"]["action"]), float(doc["complaint"]["suppressed_days"])
        ),
        unsubscribe=ConsentRule(
            str(doc["unsubscribe"]["action"]), float(doc["unsubscribe"]["suppressed_days"])
        ),
        classes=classes,
        reasons=reasons,
        quarantine=QuarantineParams(
            types=tuple(q["types"]),
            scope_kinds=tuple(q["scope_kinds"]),
            combined=bool(q["combined"]),
            related=bool(q["related"]),
            lookback_s=float(q["lookback_s"]),
            lookback_types=tuple(q["lookback_types"]),
        ),
        document=doc,
    )


@lru_cache(maxsize=1)
def default_config() -> SuppressionConfig:
    """The shipped policy (:data:`DEFAULTS`)."""
    return parse_config({}, "<defaults>")


def load_config(path: Path | str | None = None) -> SuppressionConfig:
    """The defaults, overridden by the TOML file at ``path`` when one is given."""
    if path is None:
        return default_config()
    return parse_config(load_toml(path, SuppressionConfigError), str(path))


def loads_config(text: str, source: str = "<string>") -> SuppressionConfig:
    """:func:`load_config` from TOML text."""
    return parse_config(loads_toml(text, source, SuppressionConfigError), source)


__all__ = [
    "DAY",
    "DEFAULTS",
    "RECIPIENT_SCOPE_KINDS",
    "SCHEDULE_CLASSES",
    "ConsentRule",
    "QuarantineParams",
    "Schedule",
    "SuppressionConfig",
    "SuppressionConfigError",
    "default_config",
    "load_config",
    "loads_config",
    "parse_config",
]
