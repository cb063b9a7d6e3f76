"""A Monitor and the throttle controller that follows its incidents, stepped together.

The controller (models/act/throttle.py) must see every detector run: an incident that opens and
closes between two ticks still throttles, and "the signal persists" is judged run by run.
``Monitor.advance_through`` runs the detectors at every multiple of ``DETECT_EVERY_S`` up to the
watermark and calls back after each run; :class:`Acting` steps the controller there with the
run's incident changes and one observation per open incident (hot or not, its current rate).
Replay, ``bench/evaluate.py`` and the worker all go through this, so the throttle decisions of a
replay are the ones the live worker publishes.
"""

from __future__ import annotations

from models.act.throttle import ThrottleController, observations_of
from models.act.throttle_config import ThrottleConfig
from models.act.throttle_record import ThrottleRecord
from models.detect.incidents import IncidentChange
from models.detect.monitor import Monitor


class Acting:
    """``monitor`` and ``controller`` stepped together (see the module docstring)."""

    def __init__(
        self,
        monitor: Monitor,
        controller: ThrottleController | None = None,
        config: ThrottleConfig | None = None,
    ) -> None:
        self.monitor = monitor
        self.controller = controller if controller is not None else ThrottleController(config)

    def step(self, now: float, changes: list[IncidentChange]) -> list[ThrottleRecord]:
        """One detector run at event time ``now`` that returned ``changes``."""
        open_ = self.monitor.open_incidents()
        obs = observations_of(open_, now, rates={i.id: i.rate for i in open_})
        return self.controller.step(now, changes, obs)

    def advance(self, watermark: float) -> tuple[list[IncidentChange], list[ThrottleRecord]]:
        """``Monitor.advance`` (one detector run at ``watermark``) and the controller's step."""
        changes = self.monitor.advance(watermark)
        return changes, self.step(self.monitor.store.watermark, changes)

    def advance_through(
        self, watermark: float, step_s: float
    ) -> tuple[list[IncidentChange], list[ThrottleRecord]]:
        """``Monitor.advance_through``, the controller stepped after every detector run."""
        records: list[ThrottleRecord] = []

        def on_run(t: float, changes: list[IncidentChange]) -> None:
            records.extend(self.step(t, changes))

        changes = self.monitor.advance_through(watermark, step_s, on_run=on_run)
        return changes, records
