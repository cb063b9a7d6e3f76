"""The worker's shared state: the input partitions read, their pipelines and clocks, the owned
rollup partitions and their Monitors, the consumers, and what readiness is judged on.

One :class:`WorkerState` per worker (streams/worker/app.py makes it); the parts of the worker
(streams/worker/base.py and the modules built on it) and its web views read and change it.
"""

from __future__ import annotations

import itertools
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, TopicPartition

from models.classify.classifier import Classifier
from models.detect.monitor import MonitorConfig
from models.ingest.pipeline import Pipeline
from models.state.rolling import RollingConfig
from models.state.watermark import PartitionClock, WatermarkTracker
from streams.worker.decoding import ingest_pipeline
from streams.worker.metrics import Metrics
from streams.worker.owners import MonitorView, Owner
from streams.worker.settings import Settings
from streams.worker.suppressions import Directory, IncidentFollower, PartitionSuppression


@dataclass
class Warming:
    """An input partition being warmed up after assignment: the records from its ingest
    snapshot's offset to the committed offset are read again into ``pipe`` to rebuild the
    duplicate window and the known-good memory; their counts are thrown away (the owners have
    them already)."""

    pipe: Pipeline
    until: int  #: the committed offset: records from here on are counted
    events: int = 0


@dataclass
class WorkerState:
    settings: Settings
    classifier: Classifier
    metrics: Metrics
    instance: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    #: input partitions whose memories are being rebuilt (not counted, not in ``pipelines``)
    warming: dict[int, Warming] = field(default_factory=dict)
    #: the event-time clock of each input partition (a lone event far ahead does not move it)
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    seq: dict[int, int] = field(default_factory=dict)
    last_sent_wm: dict[int, tuple[float, bool]] = field(default_factory=dict)
    #: monotonic time of the last record fed per input partition (-inf: never)
    last_fed: dict[int, float] = field(default_factory=dict)
    #: the owned rollup partitions and their Monitors
    owners: dict[int, Owner] = field(default_factory=dict)
    #: rollup partitions being restored from their snapshot
    restoring: set[int] = field(default_factory=set)
    #: the owners' event time: min over live (input partition, rollup partition) reports
    tracker: WatermarkTracker = field(init=False)
    monitor: MonitorView = field(init=False)
    monitor_config: MonitorConfig = field(init=False)
    started: float = field(default_factory=time.time)
    ticks: int = 0
    rollup_partitions: int = 0
    consumer: AIOKafkaConsumer | None = None
    rollup_consumer: AIOKafkaConsumer | None = None
    #: input partitions assigned and restored (a batch of any other partition is dropped)
    assigned: set[TopicPartition] = field(default_factory=set)
    #: next offset to commit per input partition (last fed + 1)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)
    #: per input partition: monotonic time of its last ingest snapshot
    ingest_snapshot_at: dict[int, float] = field(default_factory=dict)
    ingest_generation: dict[int, tuple[int, int]] = field(default_factory=dict)
    #: total input lag after each of the last ticks (readiness: "lag not growing")
    lag_history: deque[int] = field(default_factory=lambda: deque(maxlen=64))
    #: monotonic times: last ingest failure, last time it was logged, last completed tick
    ingest_error_at: float = -math.inf
    ingest_error_logged: float = -math.inf
    last_tick_done: float = -math.inf
    #: last failure of the rollup consumer or of an owner's transaction
    owner_error_at: float = -math.inf
    owner_error_logged: float = -math.inf
    #: set on a clean stop: the ingest loop reads nothing more
    stopping: bool = False
    #: the suppression policy of each input partition read (docs/suppression.md)
    suppression: dict[int, PartitionSuppression] = field(default_factory=dict)
    #: open incidents of every owner (repmon.incidents), for the suppression policy
    incidents: IncidentFollower | None = None
    #: input partition -> the worker reading it (repmon.workers)
    directory: Directory | None = None
    #: input partitions whose suppression policy could not be restored (not ready)
    suppression_failed: set[int] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.tracker = WatermarkTracker(self.settings.source_silent_s)
        self.monitor_config = MonitorConfig(
            rolling=RollingConfig(max_scopes=self.settings.max_scopes),
            warmup_s=self.settings.warmup_s,
        )
        self.monitor = MonitorView(self.owners, self.monitor_config)

    def new_pipeline(self) -> Pipeline:
        return ingest_pipeline(
            self.classifier,
            bucket_s=self.settings.bucket_s,
            clock=time.time,
            max_future_skew_s=self.settings.max_future_skew_s,
            max_scopes=self.settings.max_scopes,
            keep_recipients=self.settings.suppression,
        )

    def pipeline(self, partition: int) -> Pipeline:
        p = self.pipelines.get(partition)
        if p is None:
            p = self.pipelines[partition] = self.new_pipeline()
        return p

    def readiness_problems(self) -> list[str]:
        """Why this worker is not ready (empty: ready): see docs/architecture.md, "Health"."""
        now = time.monotonic()
        s = self.settings
        out = []
        if self.consumer is None:
            out.append("the ingest consumer is not running (broker unreachable or starting)")
        if self.rollup_consumer is None:
            out.append("the rollup consumer is not running (broker unreachable or starting)")
        if now - self.ingest_error_at < 10.0:
            out.append(f"ingest failed {now - self.ingest_error_at:.0f} s ago")
        if now - self.owner_error_at < 10.0:
            out.append(
                f"detection state failed to reach Kafka {now - self.owner_error_at:.0f} s ago"
            )
        if self.restoring:
            out.append(f"restoring the state of rollup partitions {sorted(self.restoring)}")
        if self.warming:
            out.append(f"rebuilding the ingest memories of partitions {sorted(self.warming)}")
        if self.incidents is not None and not self.incidents.caught_up:
            out.append("the suppression policy is reading the open incidents")
        if self.suppression_failed:
            out.append(
                f"the suppression policy of partitions {sorted(self.suppression_failed)} "
                "could not be restored (its rows are not applied)"
            )
        limit = max(5.0, 3 * s.tick_s)
        if now - self.last_tick_done > limit:
            out.append(f"no tick completed in the last {limit:.0f} s")
        m = s.ready_lag_ticks
        lags = list(self.lag_history)[-(m + 1) :]
        if m and len(lags) == m + 1 and all(b > a for a, b in itertools.pairwise(lags)):
            out.append(f"input lag grew in each of the last {m} ticks (now {lags[-1]} events)")
        return out

    def watermark(self) -> float:
        """Event-time watermark of the rolling state (models/state/watermark.py): every delta up
        to it has been added on every rollup partition this worker owns."""
        return self.tracker.watermark(time.monotonic())

    def idle(self, part: int, caught_up: bool) -> bool:
        """A reader is idle when it is caught up and has read nothing for source_idle_s."""
        fed = self.last_fed.get(part, -math.inf)
        return caught_up and time.monotonic() - fed >= self.settings.source_idle_s


__all__ = ["Warming", "WorkerState"]
