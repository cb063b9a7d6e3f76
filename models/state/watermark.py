"""The event-time watermark of a rollup owner: the minimum over the live input partitions.

Every input partition (``mail.events`` partition ``p``) is read by one ingest Pipeline somewhere in
the group; each tick it sends its Deltas, split by scope owner, to every rollup partition ``o``,
with its watermark (the newest event time it has read) and whether it is *idle*. A rollup owner
may count events up to time ``W`` only when every input partition has delivered everything
before ``W`` to every rollup partition the owner reads. So ``W`` is the minimum, over the input
partitions, of the minimum over the owner's rollup partitions of the last reported watermark.

Excluded from the minimum, so that nobody waits forever:

- an *idle* partition: its reader says it is caught up (nothing pending, read position at the
  high-water mark) and has read nothing for the reader's idle time: an empty or quiet partition
  must not stop time for the others;
- a *silent* partition: no report for ``silent_s`` (its reader died and nobody has taken it over
  yet). A (partition, rollup partition) pair never heard counts as heard when the tracker first
  learned of either, so a partition that never reports is excluded after ``silent_s`` too.
  ``silent_s`` must be longer than a rebalance (group join, restore of the ingest memories,
  first flush): a partition that is only moving to another reader must hold time back, or the
  others carry the clock past its unread events and the detectors run on part of the data.

A partition that is known (``expect``) but has not reported yet holds ``W`` back: right after a
start, the first partition read must not carry time past the others' unread events. When every
partition is excluded, ``W`` is the minimum over all reports (nothing holds it back, nothing
moves it past a partition's data).

The reports an owner has heard are part of its durable state (``reports``/``seed``): a new owner
of a rollup partition starts from the reports its snapshot was taken with, not from nothing, so
partitions that reported before the snapshot and have nothing new to say still count.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray


@dataclass(slots=True)
class _Report:
    watermark: float
    idle: bool
    heard: float  #: when it was heard (monotonic seconds)


class WatermarkTracker:
    """Per (input partition, rollup partition) reports -> the owner's watermark."""

    def __init__(self, silent_s: float) -> None:
        self.silent_s = silent_s
        self._reports: dict[tuple[int, int], _Report] = {}
        self._owners: dict[int, float] = {}  # rollup partition -> first heard
        self._inputs: dict[int, float] = {}  # input partition -> first known

    def expect(self, partitions: int, now: float) -> None:
        """The input topic has ``partitions`` partitions: each must report (or go silent)."""
        for p in range(partitions):
            self._inputs.setdefault(p, now)

    def report(self, part: int, owner: int, watermark: float, idle: bool, now: float) -> None:
        """A reader's report on one rollup partition. A partition that moved to another reader
        restarts from its committed offset, so a lower watermark than before is kept as it is:
        it holds time back until the new reader has caught up."""
        self._inputs.setdefault(part, now)
        self._owners.setdefault(owner, now)
        self._reports[(part, owner)] = _Report(watermark, idle, now)

    def reports(self, owner: int) -> dict[str, list[float | bool]]:
        """The last report of every input partition on rollup partition ``owner``, for its
        snapshot: ``{partition: [watermark, idle]}``."""
        return {
            str(part): [r.watermark, r.idle]
            for (part, o), r in sorted(self._reports.items())
            if o == owner
        }

    def seed(self, owner: int, reports: dict[str, list[float | bool]], now: float) -> None:
        """Take over rollup partition ``owner`` with the reports of its snapshot (heard now)."""
        for part, (wm, idle) in reports.items():
            self.report(int(part), owner, float(wm), bool(idle), now)

    def forget_owner(self, owner: int) -> None:
        """The rollup partition was revoked from this worker: its reports no longer apply."""
        self._owners.pop(owner, None)
        for key in [k for k in self._reports if k[1] == owner]:
            del self._reports[key]

    def watermark(self, now: float) -> float:
        """The owner's watermark now; 0.0 means "do not move" (nothing reported yet, or a known
        partition has not reported yet and may hold older events than any report)."""
        if not self._owners:
            return 0.0
        live: list[float] = []
        for part, first_known in self._inputs.items():
            lows: list[float] = []
            for owner, first_heard in self._owners.items():
                r = self._reports.get((part, owner))
                if r is None:
                    if now - max(first_known, first_heard) < self.silent_s:
                        return 0.0  # wait for its first report, silent_s at most
                    continue
                if r.idle or now - r.heard > self.silent_s:
                    continue
                lows.append(r.watermark)
            if lows:
                live.append(min(lows))
        if live:
            return min(live)
        return min((r.watermark for r in self._reports.values()), default=0.0)

    def status(self, now: float) -> dict[str, object]:
        """For /status: per input partition, the lowest report and whether it is live."""
        out: dict[str, object] = {}
        for part in sorted(self._inputs):
            reps = [r for (p, _), r in self._reports.items() if p == part]
            if not reps:
                out[str(part)] = {"reported": False}
                continue
            out[str(part)] = {
                "reported": True,
                "watermark": min(r.watermark for r in reps),
                "idle": all(r.idle for r in reps),
                "silent_s": round(now - max(r.heard for r in reps), 1),
            }
        return out


class PartitionClock:
    """The watermark of one input partition (or replay file): the newest event time read, except
    that an event far ahead of it does not move it on its own.

    An event more than ``max_ahead_s`` ahead of the watermark (a node with a skewed clock, a
    mistyped timestamp) is *held*: it moves the watermark only when a second event corroborates
    it (one at or after ``held - max_ahead_s``), as after a real gap in the traffic. A lone
    event stamped minutes ahead therefore neither moves time nor is lost (it is counted in its
    own bucket when the clock gets there, models/state/rolling.py). The cost: on a partition
    whose events are more than ``max_ahead_s`` apart the watermark lags one event. The first
    event starts the clock.
    """

    def __init__(self, max_ahead_s: float = 300.0) -> None:
        self.max_ahead_s = max_ahead_s
        self.watermark = 0.0
        self._held: float | None = None
        self.held_events = 0  #: events that were ahead of the watermark when read

    def state(self) -> list[float | None]:
        """What a snapshot keeps: ``[watermark, held]``."""
        return [self.watermark, self._held]

    @classmethod
    def from_state(cls, st: object, max_ahead_s: float = 300.0) -> PartitionClock:
        """The clock ``state()`` returned (``None``: a new clock, as before a first event)."""
        clock = cls(max_ahead_s)
        if st is None:
            return clock
        if not isinstance(st, list | tuple) or len(st) != 2:
            raise ValueError(f"not a partition clock: {st!r}")
        wm, held = st
        clock.watermark = float(wm)
        clock._held = None if held is None else float(held)
        return clock

    def running(self, ts: NDArray[np.float64]) -> NDArray[np.float64]:
        """Read ``ts`` in order; the watermark after each event."""
        wm, held, step = self.watermark, self._held, self.max_ahead_s
        if ts.size and wm != 0.0 and held is None:
            # the usual case, vectorised: no event ahead of the running maximum by more than
            # max_ahead_s, so the clock is the running maximum
            run = np.maximum.accumulate(np.concatenate(([wm], ts)))
            if bool((ts <= run[:-1] + step).all()):
                self.watermark = float(run[-1])
                out_fast: NDArray[np.float64] = run[1:]
                return out_fast
        out = np.empty(len(ts), dtype=np.float64)
        n_held = 0
        for k, t in enumerate(ts.tolist()):
            if wm == 0.0:
                wm = t
            elif t <= wm + step:
                if t > wm:
                    wm = t
                if held is not None and held <= wm + step:
                    held = None  # the clock caught up with it
            elif held is not None and t >= held - step:
                wm = max(wm, min(held, t))  # corroborated: a gap, not a skewed clock
                held = t if t > wm + step else None
                if held is None and t > wm:
                    wm = t
            else:
                n_held += 1
                held = t if held is None else min(held, t)
            out[k] = wm
        self.watermark, self._held = wm, held
        self.held_events += n_held
        return out
