"""Throttle policy parameters: per incident type, per scope kind and per provider (docs/throttle.md).

The defaults are :data:`DEFAULTS` (the same values, commented, are shipped as
``models/act/data/throttle.toml``, the file to copy and edit). A user file holds only what it
changes; :func:`load_config` / :func:`parse_config` layer it over the defaults and validate every
effective combination, raising :class:`ThrottleConfigError` with the file, the key path and the
rule broken (unknown keys, wrong types, values out of range, inconsistent pairs).

Layers, the later winning key by key::

    [types.<type>]                     every key of TypeParams (defaults: DEFAULTS)
    [types.<type>.kinds.<scope kind>]  for scopes of that kind (``ip|provider``, ``provider`` ...)
    [providers.<provider>.<type>]      for scopes at that provider (``provider:P``, ``X|provider:P``,
                                       ``mx:P``, ``domain:d`` of a provider-table domain)
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from functools import lru_cache
from pathlib import Path
from typing import Any, Final

from models.act.toml_config import load_toml, loads_toml
from models.ingest.providers import default_table
from models.schema import ALL_SCOPE_KINDS, INCIDENT_TYPES

#: what the fleet is asked to do while an incident of a type is open (docs/throttle.md)
ACTIONS: Final[tuple[str, ...]] = ("throttle", "pause", "none")
#: where a relapse (the signal back while ramping, or just after) sends the factor:
#: ``last_good`` the last factor at which the signal stayed cold (a signal that depends on our
#: rate: a rate limit), ``open`` the opening decision (one that does not: an outage, a block)
RELAPSE_TO: Final[tuple[str, ...]] = ("last_good", "open")


class ThrottleConfigError(ValueError):
    """A throttle configuration that cannot be used (the message names file, key and rule)."""


@dataclass(frozen=True, slots=True)
class TypeParams:
    """The policy of one incident type (on one scope kind / provider). Times are event seconds,
    factors fractions of the scope's normal send rate."""

    #: ``throttle``: multiplicative decrease while the signal persists, ramp back while healthy;
    #: ``pause``: hold everything but the probe share at once; ``none``: no throttle decision
    action: str
    #: rate factor when an incident opens (``throttle``)
    open_factor: float
    #: ... when it opens (or becomes) critical
    critical_open_factor: float
    #: multiplicative step per decrease (1 = hold at the opening factor, never decrease more)
    decrease: float
    #: a decrease every this many seconds while the signal is hot and persists
    decrease_every_s: float
    #: a rate this many times the rate at the last decrease is "worse": decrease at once
    worsen_ratio: float
    #: a rate below this fraction of the rate at the last decrease is "improving": no decrease
    persist_ratio: float
    #: also cut to ``1 - rate`` when the rate is known (at most ``decrease`` per step)
    proportional: bool
    #: the lowest throttled factor
    min_factor: float
    #: when a decrease is due at ``min_factor``: pause (true) or hold there (false)
    pause_at_floor: bool
    #: rate factor while paused: the probe traffic that lets recovery be seen
    probe_share: float
    #: minimum dwell after a decrease (or a pause) before the ramp may start
    hold_s: float
    #: the signal must be cold this long (incident still open) before the ramp starts
    recover_after_s: float
    #: ... and clean: its rate, when known, at most this (1: the detector's hot test alone);
    #: a paused scope's few probes can be too few for the hot test while still all refused
    clean_rate: float
    #: ramp while the incident is open but cold (false: wait for the incident to close)
    ramp_while_open: bool
    #: 0, or the least time between two tests of a signal that depends on our rate (a rate
    #: limit): a ramp starts at least this long after the episode's first cut, and after a
    #: failed one this long x ``flap_backoff``^reversals after that ramp's start, even when
    #: the incident closed meanwhile (a close at a reduced rate proves nothing)
    retest_after_s: float
    #: the longest wait between two tests (the back-off stops there); at least
    #: ``retest_after_s`` when that is set
    retest_max_s: float
    #: the first factor of a ramp out of ``paused``
    ramp_start: float
    #: additive ramp step: the smallest increase of a step
    ramp_step: float
    #: multiplicative ramp step: each step multiplies the factor by this (1: additive only);
    #: a step takes the larger of the two (``max(f * ramp_multiplier, f + ramp_step)``)
    ramp_multiplier: float
    #: seconds between ramp steps
    ramp_every_s: float
    #: a relapse goes back to ``last_good`` (the factor of the ramp's previous step, held cold)
    #: or to ``open`` (the opening decision)
    relapse_to: str
    #: re-tightenings after a ramp started, per episode, after which the ramp waits for the
    #: incident to close
    max_reversals: int
    #: ``recover_after_s`` is multiplied by this for each reversal of the episode
    flap_backoff: float


@dataclass(frozen=True, slots=True)
class GlobalParams:
    #: every non-normal decision expires this long after it was issued
    expire_s: float
    #: a live decision is re-issued (new ``at``/``expires_at``) this long after it was issued
    refresh_s: float
    #: an open incident neither observed nor changed this long is treated as closed
    stale_s: float
    #: a scope back to normal remembers its reversals this long (a relapse continues the episode)
    relapse_window_s: float


_GLOBAL_KEYS: Final[dict[str, str]] = {
    "expire_s": "float",
    "refresh_s": "float",
    "stale_s": "float",
    "relapse_window_s": "float",
}

_TYPE_KEYS: Final[dict[str, str]] = {
    "action": "action",
    "open_factor": "float",
    "critical_open_factor": "float",
    "decrease": "float",
    "decrease_every_s": "float",
    "worsen_ratio": "float",
    "persist_ratio": "float",
    "proportional": "bool",
    "min_factor": "float",
    "pause_at_floor": "bool",
    "probe_share": "float",
    "hold_s": "float",
    "recover_after_s": "float",
    "clean_rate": "float",
    "ramp_while_open": "bool",
    "retest_after_s": "float",
    "retest_max_s": "float",
    "ramp_start": "float",
    "ramp_step": "float",
    "ramp_multiplier": "float",
    "ramp_every_s": "float",
    "relapse_to": "relapse_to",
    "max_reversals": "int",
    "flap_backoff": "float",
}
assert set(_TYPE_KEYS) == {f.name for f in fields(TypeParams)}
assert set(_GLOBAL_KEYS) == {f.name for f in fields(GlobalParams)}

_BASE: Final[dict[str, Any]] = {
    "action": "throttle",
    "open_factor": 0.5,
    "critical_open_factor": 0.25,
    "decrease": 0.5,
    "decrease_every_s": 300.0,
    "worsen_ratio": 1.5,
    "persist_ratio": 0.8,
    "proportional": False,
    "min_factor": 0.1,
    "pause_at_floor": False,
    "probe_share": 0.05,
    "hold_s": 120.0,
    "recover_after_s": 300.0,
    "clean_rate": 0.2,
    "ramp_while_open": True,
    "retest_after_s": 0.0,
    "retest_max_s": 0.0,
    "ramp_start": 0.25,
    "ramp_step": 0.25,
    "ramp_multiplier": 1.0,
    "ramp_every_s": 300.0,
    "relapse_to": "open",
    "max_reversals": 2,
    "flap_backoff": 2.0,
}

#: The shipped policy (docs/throttle.md, "Policy", justifies each value). Plain TOML-shaped data.
DEFAULTS: Final[dict[str, Any]] = {
    "throttle": {
        "expire_s": 3600.0,
        "refresh_s": 1200.0,
        "stale_s": 1800.0,
        "relapse_window_s": 3600.0,
    },
    "types": {
        "provider_outage": {
            **_BASE,
            "action": "throttle",
            "open_factor": 0.25,
            "critical_open_factor": 0.25,
            "decrease": 0.5,
            "decrease_every_s": 180.0,
            "proportional": True,
            "min_factor": 0.1,
            "pause_at_floor": True,
            "probe_share": 0.05,
            "hold_s": 60.0,
            "recover_after_s": 120.0,
            "ramp_start": 0.25,
            "ramp_step": 0.25,
            "ramp_multiplier": 2.0,
            "ramp_every_s": 120.0,
        },
        "rate_limited": {
            **_BASE,
            "action": "throttle",
            "open_factor": 0.5,
            "critical_open_factor": 0.3,
            "decrease": 0.7,
            "decrease_every_s": 300.0,
            "proportional": True,
            "min_factor": 0.1,
            "pause_at_floor": False,
            "probe_share": 0.05,
            "hold_s": 300.0,
            "recover_after_s": 300.0,
            "retest_after_s": 1200.0,
            "retest_max_s": 2400.0,
            "ramp_start": 0.3,
            "ramp_step": 0.1,
            "ramp_multiplier": 1.5,
            "ramp_every_s": 300.0,
            "relapse_to": "last_good",
        },
        "block": {
            **_BASE,
            "action": "pause",
            "open_factor": 0.1,
            "critical_open_factor": 0.1,
            "min_factor": 0.1,
            "probe_share": 0.02,
            "hold_s": 600.0,
            "recover_after_s": 120.0,
            "ramp_while_open": True,
            "ramp_start": 0.2,
            "ramp_step": 0.1,
            "ramp_multiplier": 2.0,
            "ramp_every_s": 120.0,
        },
        "auth_failure": {
            **_BASE,
            "action": "pause",
            "open_factor": 0.1,
            "critical_open_factor": 0.1,
            "min_factor": 0.1,
            "probe_share": 0.02,
            "hold_s": 300.0,
            "ramp_while_open": False,
            "ramp_start": 0.5,
            "ramp_step": 0.25,
            "ramp_every_s": 120.0,
        },
        "complaint_spike": {
            **_BASE,
            "action": "pause",
            "open_factor": 0.1,
            "critical_open_factor": 0.1,
            "min_factor": 0.1,
            "probe_share": 0.0,
            "hold_s": 1800.0,
            "ramp_while_open": False,
            "ramp_start": 0.1,
            "ramp_step": 0.1,
            "ramp_every_s": 600.0,
            "kinds": {
                # every campaign's complaints rose at one provider: slow all mail to it, do
                # not stop it (the campaigns are paused on their own scopes when one explains it)
                "provider": {
                    "action": "throttle",
                    "open_factor": 0.5,
                    "critical_open_factor": 0.25,
                    "decrease": 1.0,
                    "min_factor": 0.25,
                    "ramp_start": 0.25,
                    "ramp_while_open": False,
                },
            },
        },
        "hard_bounce_spike": {
            **_BASE,
            "action": "pause",
            "open_factor": 0.1,
            "critical_open_factor": 0.1,
            "min_factor": 0.1,
            "probe_share": 0.05,
            "hold_s": 1800.0,
            "ramp_while_open": False,
            "ramp_start": 0.1,
            "ramp_step": 0.1,
            "ramp_every_s": 600.0,
        },
        "false_hard_bounces": {
            **_BASE,
            "action": "throttle",
            "open_factor": 0.5,
            "critical_open_factor": 0.5,
            "decrease": 1.0,
            "min_factor": 0.5,
            "probe_share": 0.05,
            "hold_s": 300.0,
            "recover_after_s": 600.0,
            "ramp_start": 0.5,
            "ramp_step": 0.25,
            "ramp_every_s": 300.0,
        },
    },
    "providers": {},
}


def _err(source: str, path: str, msg: str) -> ThrottleConfigError:
    return ThrottleConfigError(f"{source}: {path}: {msg}")


def _check_value(source: str, path: str, kind: str, v: Any) -> Any:
    if kind == "bool":
        if not isinstance(v, bool):
            raise _err(source, path, f"must be true or false, got {v!r}")
        return v
    if kind == "int":
        if isinstance(v, bool) or not isinstance(v, int):
            raise _err(source, path, f"must be an integer, got {v!r}")
        return v
    if kind == "action":
        if v not in ACTIONS:
            raise _err(source, path, f"must be one of {', '.join(ACTIONS)}, got {v!r}")
        return v
    if kind == "relapse_to":
        if v not in RELAPSE_TO:
            raise _err(source, path, f"must be one of {', '.join(RELAPSE_TO)}, got {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
        raise _err(source, path, f"must be a finite number, got {v!r}")
    return float(v)


def _table(source: str, path: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise _err(source, path, f"must be a table, got {type(v).__name__}")
    return v


def _merge_params(source: str, path: str, base: dict[str, Any], over: Any) -> dict[str, Any]:
    out = dict(base)
    for k, v in _table(source, path, over).items():
        if k not in _TYPE_KEYS:
            raise _err(
                source, f"{path}.{k}", f"unknown key (known: {', '.join(sorted(_TYPE_KEYS))})"
            )
        out[k] = _check_value(source, f"{path}.{k}", _TYPE_KEYS[k], v)
    return out


def _range(
    source: str, path: str, v: float, lo: float, hi: float, lo_open: bool, hi_open: bool = False
) -> None:
    bad = v < lo or v > hi or (lo_open and v == lo) or (hi_open and v == hi)
    if bad:
        lb, rb = "(" if lo_open else "[", ")" if hi_open else "]"
        raise _err(source, path, f"must be in {lb}{lo:g}, {hi:g}{rb}, got {v:g}")


def _validate_params(source: str, path: str, d: dict[str, Any]) -> TypeParams:
    p = TypeParams(**d)
    for key in ("open_factor", "critical_open_factor", "decrease", "persist_ratio", "min_factor"):
        _range(source, f"{path}.{key}", getattr(p, key), 0.0, 1.0, lo_open=True)
    _range(source, f"{path}.ramp_start", p.ramp_start, 0.0, 1.0, lo_open=True)
    _range(source, f"{path}.ramp_step", p.ramp_step, 0.01, 1.0, lo_open=False)
    _range(source, f"{path}.probe_share", p.probe_share, 0.0, 1.0, lo_open=False, hi_open=True)
    for key in ("decrease_every_s", "ramp_every_s"):
        _range(source, f"{path}.{key}", getattr(p, key), 0.0, 7 * 86400.0, lo_open=True)
    for key in ("hold_s", "recover_after_s", "retest_after_s", "retest_max_s"):
        _range(source, f"{path}.{key}", getattr(p, key), 0.0, 7 * 86400.0, lo_open=False)
    _range(source, f"{path}.worsen_ratio", p.worsen_ratio, 1.0, 1000.0, lo_open=True)
    _range(source, f"{path}.flap_backoff", p.flap_backoff, 1.0, 100.0, lo_open=False)
    _range(source, f"{path}.ramp_multiplier", p.ramp_multiplier, 1.0, 10.0, lo_open=False)
    _range(source, f"{path}.clean_rate", p.clean_rate, 0.0, 1.0, lo_open=False)
    if not 0 <= p.max_reversals <= 100:
        raise _err(source, f"{path}.max_reversals", f"must be in [0, 100], got {p.max_reversals}")
    if p.critical_open_factor > p.open_factor:
        raise _err(
            source,
            f"{path}.critical_open_factor",
            f"must be at most open_factor ({p.open_factor:g}), got {p.critical_open_factor:g}",
        )
    if p.min_factor > p.critical_open_factor:
        raise _err(
            source,
            f"{path}.min_factor",
            f"must be at most critical_open_factor ({p.critical_open_factor:g}), "
            f"got {p.min_factor:g}",
        )
    if p.probe_share > p.min_factor:
        raise _err(
            source,
            f"{path}.probe_share",
            f"must be at most min_factor ({p.min_factor:g}), got {p.probe_share:g}",
        )
    if p.ramp_start < p.min_factor:
        raise _err(
            source,
            f"{path}.ramp_start",
            f"must be at least min_factor ({p.min_factor:g}), got {p.ramp_start:g}",
        )
    if p.retest_max_s < p.retest_after_s:
        raise _err(
            source,
            f"{path}.retest_max_s",
            f"must be at least retest_after_s ({p.retest_after_s:g}), got {p.retest_max_s:g}",
        )
    if p.relapse_to == "last_good" and p.action == "pause":
        raise _err(
            source,
            f"{path}.relapse_to",
            "must be open for a pause (a pause has no rate to step back to), got last_good",
        )
    return p


def ramp_factor(p: TypeParams, base: float, k: int) -> float:
    """The factor ``k`` ramp steps above ``base``: each step takes the larger of
    ``f * ramp_multiplier`` and ``f + ramp_step``, capped at 1 (at most ``1 / ramp_step``
    iterations: ``ramp_step`` is at least 0.01)."""
    f = base
    for _ in range(max(0, k)):
        if f >= 1.0:
            break
        f = max(f * p.ramp_multiplier, f + p.ramp_step)
    return min(1.0, f)


def retest_wait_s(p: TypeParams, reversals: int) -> float:
    """After a failed test (the episode's ``reversals``-th reversal), the least time from that
    test's start to the next: ``retest_after_s x flap_backoff^reversals``, at most
    ``retest_max_s`` (0 when tests are not scheduled)."""
    if p.retest_after_s <= 0.0:
        return 0.0
    return min(p.retest_max_s, p.retest_after_s * p.flap_backoff ** min(reversals, 64))


def ramp_steps(p: TypeParams, start: float) -> int:
    """Ramp steps from the factor ``start`` to normal (1) with ``p``'s steps."""
    f, n = start, 0
    while f < 1.0 - 1e-9:
        f = max(f * p.ramp_multiplier, f + p.ramp_step)
        n += 1
    return n


def max_ramp_s(p: TypeParams) -> float:
    """Longest ramp back to normal with ``p``, in seconds: from the lowest factor a ramp can
    start at (``ramp_start`` out of a pause, one step above ``min_factor`` out of a throttle;
    the first step is taken at the ramp's start)."""
    low = min(p.ramp_start, max(p.min_factor * p.ramp_multiplier, p.min_factor + p.ramp_step))
    return ramp_steps(p, low) * p.ramp_every_s


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    """A validated throttle configuration; :meth:`params` answers per (type, scope)."""

    globals: GlobalParams
    #: type -> its params
    types: Mapping[str, TypeParams]
    #: (type, scope kind) -> params with that kind's overrides
    kinds: Mapping[tuple[str, str], TypeParams]
    #: (type, scope kind or "", provider) -> params with the provider's overrides
    providers: Mapping[tuple[str, str, str], TypeParams]
    #: the merged document (defaults + user), TOML-shaped
    document: Mapping[str, Any]

    def params(self, type_: str, scope: str) -> TypeParams:
        """The policy for an incident of ``type_`` on ``scope`` (unknown types: ``none``)."""
        kind = scope_kind_of(scope)
        prov = provider_of(scope)
        if prov is not None:
            p = self.providers.get((type_, kind, prov))
            if p is not None:
                return p
        p = self.kinds.get((type_, kind))
        if p is not None:
            return p
        return self.types.get(type_, _NONE)


_NONE: Final[TypeParams] = TypeParams(**{**_BASE, "action": "none"})


def scope_kind_of(scope: str) -> str:
    """``ip:1.2.3.4|provider:google`` -> ``ip|provider``; ``domain:x.org`` -> ``domain``."""
    head, bar, tail = scope.partition("|")
    kind = head.partition(":")[0]
    if bar:
        return f"{kind}|{tail.partition(':')[0]}"
    return kind


def provider_of(scope: str) -> str | None:
    """The mailbox provider a scope is at, when its name says so (``provider:P``,
    ``X|provider:P``, ``mx:P``) or the provider table knows the domain of ``domain:d``."""
    _, bar, tail = scope.partition("|")
    if bar:
        kind, _, value = tail.partition(":")
        return value if kind == "provider" else None
    kind, _, value = scope.partition(":")
    if kind in ("provider", "mx"):
        return value
    if kind == "domain":
        return default_table().domain_provider.get(value.lower())
    return None


def parse_config(data: Mapping[str, Any], source: str = "<throttle config>") -> ThrottleConfig:
    """Layer a TOML-shaped user document over :data:`DEFAULTS` and validate the result."""
    user = _table(source, "<top>", dict(data))
    unknown = set(user) - {"throttle", "types", "providers"}
    if unknown:
        raise _err(
            source,
            ", ".join(sorted(unknown)),
            "unknown top-level key(s) (known: throttle, types, providers)",
        )
    doc: dict[str, Any] = copy.deepcopy(DEFAULTS)
    # [throttle]
    for k, v in _table(source, "throttle", user.get("throttle", {})).items():
        if k not in _GLOBAL_KEYS:
            raise _err(
                source,
                f"throttle.{k}",
                f"unknown key (known: {', '.join(sorted(_GLOBAL_KEYS))})",
            )
        doc["throttle"][k] = _check_value(source, f"throttle.{k}", _GLOBAL_KEYS[k], v)
    # [types.<type>] and [types.<type>.kinds.<kind>]
    for t, over in _table(source, "types", user.get("types", {})).items():
        if t not in INCIDENT_TYPES:
            raise _err(
                source, f"types.{t}", f"unknown incident type (known: {', '.join(INCIDENT_TYPES)})"
            )
        over = dict(_table(source, f"types.{t}", over))
        kinds_over = _table(source, f"types.{t}.kinds", over.pop("kinds", {}))
        cur = doc["types"][t]
        cur_kinds = cur.pop("kinds", {})
        merged = _merge_params(source, f"types.{t}", cur, over)
        for kind, kover in kinds_over.items():
            if kind not in ALL_SCOPE_KINDS:
                raise _err(
                    source,
                    f"types.{t}.kinds.{kind}",
                    f"unknown scope kind (known: {', '.join(ALL_SCOPE_KINDS)})",
                )
            base_k = cur_kinds.get(kind, {})
            k_merged = _merge_params(source, f"types.{t}.kinds.{kind}", {}, base_k)
            k_merged.update(_merge_params(source, f"types.{t}.kinds.{kind}", {}, kover))
            cur_kinds[kind] = k_merged
        if cur_kinds:
            merged["kinds"] = cur_kinds
        doc["types"][t] = merged
    # [providers.<provider>.<type>]
    for prov, per_type in _table(source, "providers", user.get("providers", {})).items():
        if not prov or not isinstance(prov, str):
            raise _err(source, "providers", "provider names must be non-empty")
        dst = doc["providers"].setdefault(prov, {})
        for t, over in _table(source, f"providers.{prov}", per_type).items():
            if t not in INCIDENT_TYPES:
                raise _err(
                    source,
                    f"providers.{prov}.{t}",
                    f"unknown incident type (known: {', '.join(INCIDENT_TYPES)})",
                )
            prev = dst.get(t, {})
            got = _merge_params(source, f"providers.{prov}.{t}", {}, over)
            dst[t] = {**prev, **got}
    return _build(doc, source)


def _build(doc: dict[str, Any], source: str) -> ThrottleConfig:
    g = doc["throttle"]
    for key in ("expire_s", "refresh_s", "stale_s"):
        _range(source, f"throttle.{key}", g[key], 0.0, 30 * 86400.0, lo_open=True)
    _range(source, "throttle.relapse_window_s", g["relapse_window_s"], 0.0, 30 * 86400.0, False)
    if g["refresh_s"] >= g["expire_s"]:
        raise _err(
            source,
            "throttle.refresh_s",
            f"must be less than expire_s ({g['expire_s']:g}), got {g['refresh_s']:g}",
        )
    glob = GlobalParams(**g)
    types: dict[str, TypeParams] = {}
    kinds: dict[tuple[str, str], TypeParams] = {}
    provs: dict[tuple[str, str, str], TypeParams] = {}
    for t in INCIDENT_TYPES:
        td = dict(doc["types"][t])
        kd: dict[str, dict[str, Any]] = td.pop("kinds", {})
        types[t] = _validate_params(source, f"types.{t}", td)
        for kind, over in kd.items():
            kinds[(t, kind)] = _validate_params(source, f"types.{t}.kinds.{kind}", {**td, **over})
        for prov, per_type in doc["providers"].items():
            pover = per_type.get(t)
            if pover is None:
                continue
            path = f"providers.{prov}.{t}"
            provs[(t, "", prov)] = _validate_params(source, path, {**td, **pover})
            for kind, over in kd.items():
                provs[(t, kind, prov)] = _validate_params(
                    source, f"{path} (with types.{t}.kinds.{kind})", {**td, **over, **pover}
                )
            for kind in ALL_SCOPE_KINDS:
                provs.setdefault((t, kind, prov), provs[(t, "", prov)])
    return ThrottleConfig(glob, types, kinds, provs, doc)


@lru_cache(maxsize=1)
def default_config() -> ThrottleConfig:
    """The shipped policy (:data:`DEFAULTS`)."""
    return parse_config({}, "<defaults>")


def load_config(path: Path | str | None = None) -> ThrottleConfig:
    """The defaults, overridden by the TOML file at ``path`` when one is given."""
    if path is None:
        return default_config()
    return parse_config(load_toml(path, ThrottleConfigError), str(path))


def loads_config(text: str, source: str = "<string>") -> ThrottleConfig:
    """:func:`load_config` from TOML text."""
    return parse_config(loads_toml(text, source, ThrottleConfigError), source)


__all__ = [
    "ACTIONS",
    "DEFAULTS",
    "RELAPSE_TO",
    "GlobalParams",
    "ThrottleConfig",
    "ThrottleConfigError",
    "TypeParams",
    "default_config",
    "load_config",
    "loads_config",
    "max_ramp_s",
    "parse_config",
    "provider_of",
    "ramp_factor",
    "ramp_steps",
    "retest_wait_s",
    "scope_kind_of",
]
