"""What every part of the worker shares: the Faust app and its topics, the settings, the
:class:`~streams.worker.state.WorkerState`, the policies' configurations, the manual overrides,
the producers and the locks.

The worker is one object, :class:`streams.worker.consumers.Worker`, built up in layers, each in
its own module, each using only what the layers below it define:

  WorkerBase  base.py        the Faust app, topics, settings, state, producers, dead letters
  Partitions  partitions.py  restore of assigned input and rollup partitions; forget revoked ones
  Ticking     ticking.py     the tick: flush, send, commit; the owners' transactions
  Worker      consumers.py   the ingest and rollup consumers, follow loops, hand-over on stop

streams/worker/app.py makes one and registers its tasks, its tick and its web views on the app.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
from aiokafka import AIOKafkaProducer

from models.act.suppression_config import load_config as load_suppression_config
from models.act.throttle_config import load_config
from models.classify.classifier import Classifier
from models.ingest.pipeline import Rejection
from streams.fleet.client import ThrottleClient
from streams.worker.metrics import Metrics
from streams.worker.owners import EveryThirtySeconds
from streams.worker.settings import Settings
from streams.worker.state import WorkerState
from streams.worker.suppressions import Directory, IncidentFollower
from streams.worker.wire import dlq_record

log = logging.getLogger("repmon.worker")


class WorkerBase:
    """The Faust app, its topics and the state the parts of the worker share."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = faust.App(
            settings.app_id,
            broker=[
                f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()
            ],
            value_serializer="raw",
            key_serializer="raw",
            web_host=settings.web_host,
            web_port=settings.web_port,
            web_bind=settings.web_host,
            datadir=str(settings.data_dir),
            topic_partitions=settings.topic_partitions,
            consumer_auto_offset_reset=settings.auto_offset_reset,
            store="memory://",
            stream_buffer_maxsize=16384,
            broker_commit_every=10_000,
            broker_session_timeout=settings.session_timeout_s,
            broker_heartbeat_interval=max(0.1, settings.session_timeout_s / 3),
            producer_linger_ms=5,
            producer_max_request_size=4 << 20,
            consumer_max_fetch_size=8 << 20,
        )
        self.throttle_config = load_config(settings.throttle_config or None)
        self.suppression_config = load_suppression_config(settings.suppression_config or None)
        #: manual overrides, followed by every worker (wall-clock expiry: set by people)
        self.overrides = ThrottleClient(
            settings.kafka_bootstrap, topic=settings.topic_throttle_overrides
        )
        self.state = state = WorkerState(
            settings=settings,
            classifier=Classifier(settings.rule_files),
            metrics=Metrics(settings.metrics_top_scopes, settings.metrics_max_incidents),
            rollup_partitions=settings.rollup_partitions,
        )
        if settings.suppression:
            state.incidents = IncidentFollower(settings.kafka_bootstrap, settings.topic_incidents)
        state.directory = Directory(settings.kafka_bootstrap, settings.topic_workers)
        self.dlq_topic = self.app.topic(
            settings.topic_dlq, value_type=bytes, value_serializer="raw"
        )
        self.rollup_topic = self.app.topic(
            settings.topic_rollup,
            value_type=bytes,
            value_serializer="raw",
            partitions=settings.rollup_partitions,
        )
        self.metrics: Metrics = state.metrics
        self.log_filter = EveryThirtySeconds()
        #: the producer of everything outside the owners' transactions (started on first use)
        self.plain: AIOKafkaProducer | None = None
        self.plain_lock = asyncio.Lock()
        #: one batch, one flush, one rebalance at a time (docs/architecture.md)
        self.flush_lock = asyncio.Lock()
        #: monotonic time of the last retry of the suppression policies that failed to restore
        self.suppression_retried_at = time.monotonic()

    async def dead_letter(self, rej: Rejection, value: bytes, rec: Any) -> None:
        await self.dlq_topic.send(
            key=rec.key, value=dlq_record(rej, value, rec.topic, rec.partition, rec.offset)
        )
        log.warning(
            "dead-lettered %s[%d]@%d: %s (%s)",
            rec.topic,
            rec.partition,
            rec.offset,
            rej.reason,
            rej.detail,
        )

    def new_producer(self, **kw: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.settings.kafka_bootstrap,
            max_request_size=4 << 20,
            linger_ms=5,
            **kw,
        )

    async def plain_producer(self) -> AIOKafkaProducer:
        async with self.plain_lock:  # partitions restored side by side ask for it at once
            prod = self.plain
            if prod is None:
                prod = self.new_producer(acks="all")
                await prod.start()
                self.plain = prod
            return prod

    def owner_failed(self, what: str, exc: BaseException) -> None:
        state = self.state
        state.owner_error_at = time.monotonic()
        self.metrics.owner_failures.inc()
        if time.monotonic() - state.owner_error_logged >= 30.0:
            state.owner_error_logged = time.monotonic()
            log.warning("%s failed (retrying): %r", what, exc)


__all__ = ["WorkerBase"]
