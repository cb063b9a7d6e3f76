"""Settings of the traffic simulator and the vocabulary its modules share.

:class:`SimConfig` (docs/simulator.md), the default start, time units, the numpy array types and
the internal event kind codes used by the traffic model (``traffic``), the message lifecycle
(``lifecycle``) and the event output (``output``).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
I64 = NDArray[np.int64]
BOOL = NDArray[np.bool_]

DEFAULT_START: Final[float] = _dt.datetime(2026, 11, 16, tzinfo=_dt.UTC).timestamp()

# Event kind codes used internally (names in KIND_NAMES).
K_SENT, K_DELIVERED, K_DEFERRED, K_BOUNCED, K_COMPLAINED, K_OPENED, K_CLICKED, K_UNSUB = range(8)
KIND_NAMES: Final[tuple[str, ...]] = (
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "complained",
    "opened",
    "clicked",
    "unsubscribed",
)

HOUR: Final = 3600.0
MINUTE: Final = 60.0


@dataclass
class SimConfig:
    """Simulation settings. ``params`` holds scenario parameters (docs/simulator.md):

    ``onset_s`` (seconds after ``start``), ``length_s`` (None = until the end), ``intensity``,
    and a target: ``provider``, ``operator``, ``ip``, ``pool``, ``sender``, ``tenant``,
    ``fraction`` (b2b share of operator domains), ``campaign_rate`` (msgs/s of a scenario stream).
    """

    seed: int = 1
    start: float = DEFAULT_START
    duration_s: float = 6 * HOUR
    rate: float = 50.0
    scenario: str = "baseline"
    params: dict[str, Any] = field(default_factory=dict)
    tz_offset_h: float = 0.0
    n_b2b_domains: int = 400
    step_s: float = 60.0
