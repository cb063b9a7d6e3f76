"""All rolling and detector parameters of the Monitor in one place (defaults: docs/incidents.md)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

from models.detect.detectors import DEFAULT_DETECTORS, DetectorSpec
from models.state.rolling import RollingConfig

#: Event-time seconds between two detector runs, for every caller: ``repmon replay --tick``, the
#: worker's ``REPMON_DETECT_EVERY_S`` and ``bench/evaluate.py``. One value, so that the offline
#: evaluation, a replay and the live worker open the same incidents at the same event times
#: (tests/test_integration_kafka.py and tests/test_integration_backlog.py compare them).
DETECT_EVERY_S: Final[float] = 60.0


@dataclass(slots=True)
class MonitorConfig:
    """All rolling and detector parameters (defaults: docs/incidents.md)."""

    rolling: RollingConfig = field(default_factory=RollingConfig)
    detectors: tuple[DetectorSpec, ...] = DEFAULT_DETECTORS
    #: pseudo-attempts of the parent's rate added to a scope's own baseline
    prior_strength: float = 2000.0
    #: pseudo-attempts of the detector prior added to the global baseline
    global_prior_strength: float = 20000.0
    #: a candidate (of another scope kind) is related to an open incident of the same type when
    #: its excess count is at most 1/r times the incident's (a subset of the same events)
    related_excess_ratio: float = 0.5
    #: no incident opens before this much event time has been seen (baselines warm up)
    warmup_s: float = 1800.0
    #: normalised replies kept per scope (current and previous fine bucket) for evidence
    replies_per_scope: int = 5
    #: closed incidents kept in memory for /status
    keep_closed: int = 200
