"""The Faust application: ingest agent, rollup agent, tick timer and web views.

Data flow (docs/architecture.md):

  mail.events --(ingest task: aiokafka getmany batches, one Pipeline per input partition)-->
      in-memory numpy columns
      --(tick timer: Pipeline.flush -> Deltas, split by scope owner)--> repmon.rollup
      --(then: commit the input offsets those Deltas cover)
  repmon.rollup --(rollup agent: dedupe by (source, seq), Monitor.add)--> rolling state
      --(tick timer: Monitor.advance(min source watermark))--> repmon.incidents, /status, /metrics

The high-volume input is read in batches by an aiokafka consumer that the Faust app runs as a
task: Faust's per-event stream machinery costs several event-loop turns per message, more than
all of repmon's per-event work (docs/performance.md). Input offsets are committed only after the
deltas that count those events have been acknowledged by Kafka, so a crash can re-count at most
one tick of events but never lose one. No Faust table is written per event.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import os
import socket
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.act.kumo import (
    load_kumo_config,
)
from models.act.suppression_config import load_config as load_suppression_config
from models.act.throttle import ThrottleController
from models.act.throttle_config import load_config
from models.classify.classifier import Classifier
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline, PipelineStats, Rejection
from models.state.deltas import Deltas
from models.state.rolling import RollingConfig
from models.state.snapshot import Snap, SnapshotError, decode, encode
from models.state.watermark import PartitionClock, WatermarkTracker
from streams.fleet.client import ThrottleClient
from streams.worker.decoding import ingest_pipeline
from streams.worker.metrics import Metrics
from streams.worker.owners import EveryThirtySeconds, MonitorView, Owner, install_log_filter
from streams.worker.settings import Settings
from streams.worker.snapstore import pieces, producer_partition, read_newest
from streams.worker.suppressions import (
    Directory,
    IncidentFollower,
    PartitionSuppression,
    open_partition,
    store_path,
)
from streams.worker.web import (
    check_token,
    install_kumo_endpoints,
    install_suppression_endpoints,
    install_throttle_endpoints,
)
from streams.worker.wire import (
    MAX_ROWS_PER_MESSAGE,
    chunk_deltas,
    decode_message,
    dlq_record,
    encode_deltas,
    split_by_owner,
)

log = logging.getLogger("repmon.worker")


#: the most scopes per kind /status returns
MAX_STATUS_TOP = 1000


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


def consumer_options(settings: Settings, group: str) -> dict[str, Any]:
    """Group options shared by the ingest and rollup consumers: a short session timeout, and
    static membership when the worker has a stable instance id (a restarted worker then gets
    its partitions back at once, without waiting for its old session to time out)."""
    timeout_ms = int(settings.session_timeout_s * 1000)
    opts: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "group_id": f"{settings.app_id}.{group}",
        "enable_auto_commit": False,
        "session_timeout_ms": timeout_ms,
        "heartbeat_interval_ms": max(100, timeout_ms // 3),
    }
    if settings.instance_id:
        opts["group_instance_id"] = f"{settings.instance_id}.{group}"
    return opts


def create_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    app = faust.App(
        settings.app_id,
        broker=[f"kafka://{h.strip()}" for h in settings.kafka_bootstrap.split(",") if h.strip()],
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
    throttle_config = load_config(settings.throttle_config or None)
    suppression_config = load_suppression_config(settings.suppression_config or None)
    #: manual overrides, followed by every worker (wall-clock expiry: set by people)
    overrides = ThrottleClient(settings.kafka_bootstrap, topic=settings.topic_throttle_overrides)
    state = WorkerState(
        settings=settings,
        classifier=Classifier(settings.rule_files),
        metrics=Metrics(settings.metrics_top_scopes, settings.metrics_max_incidents),
        rollup_partitions=settings.rollup_partitions,
    )
    if settings.suppression:
        state.incidents = IncidentFollower(settings.kafka_bootstrap, settings.topic_incidents)
    state.directory = Directory(settings.kafka_bootstrap, settings.topic_workers)
    dlq_topic = app.topic(settings.topic_dlq, value_type=bytes, value_serializer="raw")
    rollup_topic = app.topic(
        settings.topic_rollup,
        value_type=bytes,
        value_serializer="raw",
        partitions=settings.rollup_partitions,
    )
    m = state.metrics
    log_filter = EveryThirtySeconds()
    plain: dict[str, AIOKafkaProducer] = {}

    async def dead_letter(rej: Rejection, value: bytes, rec: Any) -> None:
        await dlq_topic.send(
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

    def new_producer(**kw: Any) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            max_request_size=4 << 20,
            linger_ms=5,
            **kw,
        )

    plain_lock = asyncio.Lock()

    async def plain_producer() -> AIOKafkaProducer:
        async with plain_lock:  # partitions restored side by side ask for it at once
            prod = plain.get("p")
            if prod is None:
                prod = new_producer(acks="all")
                await prod.start()
                plain["p"] = prod
            return prod

    # ------------------------------------------------------------------ ingest: memories
    async def write_ingest_snapshots(snaps: dict[int, tuple[Snap, int]]) -> None:
        """Write the ingest memories of each partition with the offset they cover (committed)."""
        prod = await plain_producer()
        for part, (snap, offset) in snaps.items():
            t0 = time.perf_counter()
            data = await asyncio.to_thread(encode, snap)
            owner = f"i/{settings.topic_events}/{part}"
            gen, prev = state.ingest_generation.get(part, (0, 0))
            recs = pieces(owner, data, gen + 1, {"offset": offset, "previous_pieces": prev})
            target = await producer_partition(prod, settings.topic_ingest_state, owner)
            futs = [
                await prod.send(settings.topic_ingest_state, key=k, value=v, partition=target)
                for k, v in recs
            ]
            for f in futs:
                await f
            state.ingest_generation[part] = (gen + 1, len(recs) - 1 - prev)
            state.ingest_snapshot_at[part] = time.monotonic()
            m.snapshot_written("ingest", len(data), time.perf_counter() - t0)

    async def restore_ingest(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Give partition ``tp`` a Pipeline with its memories and its suppression policy, and
        tell the other workers who reads it now."""
        snap = await restore_memories(consumer, tp)
        if settings.suppression:
            await restore_suppression(tp.partition, snap)
        await announce(tp.partition)

    async def restore_memories(consumer: AIOKafkaConsumer, tp: TopicPartition) -> Snap | None:
        """Give partition ``tp`` a Pipeline with its memories: restored from its snapshot and
        brought up to the committed offset by reading the records in between again. Returns
        the snapshot (None: none, or unreadable)."""
        part = tp.partition
        pipe = state.new_pipeline()
        committed = await consumer.committed(tp)
        stored = None
        try:
            stored = await read_newest(
                settings.kafka_bootstrap,
                settings.topic_ingest_state,
                f"i/{settings.topic_events}/{part}",
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("ingest memories of partition %d not read (%s): starting empty", part, exc)
        if stored is None:
            m.restore("ingest", "cold")
            state.pipelines[part] = pipe
            return None
        offset = int(stored.meta["offset"])
        if committed is None or offset > committed:
            # memories from beyond the committed offset would take the events read next for
            # duplicates of themselves: start empty instead
            log.warning(
                "ingest snapshot of partition %d is at offset %d, past the committed %s: "
                "starting with empty memories",
                part,
                offset,
                committed,
            )
            m.restore("ingest", "cold")
            state.pipelines[part] = pipe
            return None
        try:
            snap = decode(stored.data)
            pipe.restore_memories(snap)
            clock = PartitionClock.from_state(snap.meta.get("clock"))
        except (SnapshotError, ValueError, TypeError) as exc:
            log.warning("ingest memories of partition %d not restored: %s", part, exc)
            m.restore("ingest", "failed")
            state.pipelines[part] = state.new_pipeline()
            return None
        state.clocks[part] = clock
        state.ingest_generation[part] = (
            int(stored.meta["generation"]),
            int(stored.meta["pieces"]),
        )
        m.restore("ingest", "restored")
        log.info(
            "partition %d: memories restored (snapshot at offset %d, committed %d)",
            part,
            offset,
            committed,
        )
        if offset == committed:
            state.pipelines[part] = pipe
            return None
        consumer.seek(tp, offset)
        state.warming[part] = Warming(pipe, committed)
        log.info(
            "partition %d: re-reading offsets %d..%d into its memories", part, offset, committed
        )
        return snap

    async def restore_suppression(part: int, snap: Snap | None) -> None:
        """Open partition ``part``'s suppression store, bring it up to its changelog and
        restore the policy's indexes (streams/worker/suppressions.py)."""
        old = state.suppression.pop(part, None)
        if old is not None:
            old.close()
        child = (
            snap.child("suppression") if snap is not None and "suppression" in snap.meta else None
        )
        try:
            ps, how = await open_partition(
                bootstrap=settings.kafka_bootstrap,
                changelog=settings.topic_suppressions,
                partition=part,
                path=store_path(settings.data_dir, settings.topic_events, part),
                config=suppression_config,
                snap=child,
            )
        except Exception as exc:
            state.suppression_failed.add(part)
            m.restore("suppression", "failed")
            log.error("partition %d: suppression policy not restored: %r", part, exc)
            return
        state.suppression_failed.discard(part)
        state.suppression[part] = ps
        m.restore("suppression", "rebuilt" if how.mode == "rebuild" else "restored")
        m.suppression_changelog_read.inc(how.records)
        log.info(
            "partition %d: suppression store %s (%d changelog records: %s)",
            part,
            how.mode,
            how.records,
            how.reason,
        )

    async def announce(part: int) -> None:
        """Say on repmon.workers that this worker reads input partition ``part``."""
        try:
            prod = await plain_producer()
            doc = {"url": settings.advertised_url, "instance": state.instance, "at": time.time()}
            await prod.send_and_wait(
                settings.topic_workers,
                key=f"{settings.topic_events}/{part}".encode(),
                value=orjson.dumps(doc),
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("partition %d: reader not announced: %r", part, exc)

    def warm(part: int, recs: list[Any]) -> list[Any]:
        """Feed the records before the warming partition's committed offset to its memories;
        returns the records to count."""
        w = state.warming[part]
        k = 0
        while k < len(recs) and recs[k].offset < w.until:
            k += 1
        if k:
            values = [r.value if r.value is not None else b"" for r in recs[:k]]
            w.pipe.feed_many(values)
            w.pipe.take_recipients()  # the policy saw these before (its store has them)
            w.events += k
            m.warmup_events.inc(k)
        if k < len(recs) or (recs and recs[-1].offset + 1 >= w.until):
            # caught up: keep the memories and the clock, drop the counts (already counted)
            pipe = w.pipe
            clock = state.clocks.setdefault(part, PartitionClock())
            if pipe.pending():
                clock.running(pipe.pending_timestamps())
            pipe.flush()
            pipe.take_recipients()
            pipe.stats = PipelineStats()
            del state.warming[part]
            state.pipelines[part] = pipe
            log.info("partition %d: memories rebuilt from %d events", part, w.events)
        return recs[k:]

    def forget_partition(tp: TopicPartition) -> None:
        state.assigned.discard(tp)
        state.pipelines.pop(tp.partition, None)
        state.warming.pop(tp.partition, None)
        state.clocks.pop(tp.partition, None)
        state.offsets.pop(tp, None)
        ps = state.suppression.pop(tp.partition, None)
        if ps is not None:
            ps.close()

    class IngestRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        def __init__(self, consumer: AIOKafkaConsumer) -> None:
            self.consumer = consumer

        async def on_partitions_revoked(self, revoked: Any) -> None:
            # hand the partitions over with everything counted so far sent and committed, and
            # their memories written, so that the next reader starts where this one stops
            async with flush_lock:
                await _flush_and_commit({tp.partition for tp in revoked})
                for tp in revoked:
                    forget_partition(tp)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            log.info("ingest partitions assigned: %s", sorted(tp.partition for tp in assigned))
            async with flush_lock:
                for tp in assigned:
                    forget_partition(tp)  # whatever a batch read before the rebalance left
                # the partitions' snapshots are read side by side, not one after the other
                await asyncio.gather(*(restore_ingest(self.consumer, tp) for tp in assigned))
                state.assigned.update(assigned)

    @app.task
    async def ingest() -> None:
        install_log_filter(log_filter)
        while True:
            try:
                await ingest_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                m.ingest_restarts.inc()
                state.ingest_error_at = time.monotonic()
                # one line per 30 s while the broker is away, not one per retry
                if time.monotonic() - state.ingest_error_logged >= 30.0:
                    state.ingest_error_logged = time.monotonic()
                    log.warning("ingest consumer failed, retrying every 1 s: %r", exc)
                await asyncio.sleep(1.0)

    async def ingest_once() -> None:
        consumer = AIOKafkaConsumer(
            **consumer_options(settings, "ingest"),
            client_id=state.instance,
            auto_offset_reset=settings.auto_offset_reset,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        consumer.subscribe([settings.topic_events], listener=IngestRebalance(consumer))
        await consumer.start()
        state.consumer = consumer
        parts = consumer.partitions_for_topic(settings.topic_events)
        if parts:
            state.tracker.expect(len(parts), time.monotonic())
        try:
            while True:
                if state.stopping:  # handing over: read nothing more
                    await asyncio.sleep(0.2)
                    continue
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                # one batch at a time against flushes, commits and revocations: a partition
                # revoked meanwhile is skipped, and no flush sees a batch's counts without
                # its offsets (the next reader would count them again)
                async with flush_lock:
                    for tp, recs in batch.items():
                        if tp not in state.assigned:  # revoked since the fetch
                            continue
                        if tp.partition in state.warming:
                            recs = warm(tp.partition, recs)
                        if not recs:
                            continue
                        values = [rec.value if rec.value is not None else b"" for rec in recs]
                        for i, rej in state.pipeline(tp.partition).feed_many(values):
                            await dead_letter(rej, values[i], recs[i])
                        state.offsets[tp] = recs[-1].offset + 1
                        state.last_fed[tp.partition] = time.monotonic()
        finally:
            state.consumer = None
            await consumer.stop()

    # ------------------------------------------------------------------ owners
    def owner_failed(what: str, exc: BaseException) -> None:
        state.owner_error_at = time.monotonic()
        m.owner_failures.inc()
        if time.monotonic() - state.owner_error_logged >= 30.0:
            state.owner_error_logged = time.monotonic()
            log.warning("%s failed (retrying): %r", what, exc)

    async def open_owner(consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Take rollup partition ``tp`` over: fence its previous owner, restore its Monitor
        from the newest snapshot and continue reading right after what the snapshot covers."""
        p = tp.partition
        state.restoring.add(p)
        try:
            producer = new_producer(
                transactional_id=f"{settings.app_id}.owner.{p}", enable_idempotence=True
            )
            await producer.start()  # fences a previous owner's unfinished transaction
            try:
                await restore_owner(consumer, tp, producer)
            except BaseException:
                await producer.stop()
                raise
        finally:
            state.restoring.discard(p)

    async def restore_owner(
        consumer: AIOKafkaConsumer, tp: TopicPartition, producer: AIOKafkaProducer
    ) -> None:
        """Restore rollup partition ``tp``'s Monitor from its newest snapshot and seek to
        right after what it covers (no snapshot: start empty at the committed offset)."""
        p = tp.partition
        stored = await read_newest(
            settings.kafka_bootstrap,
            settings.topic_state,
            f"o/{settings.topic_rollup}/{p}",
        )
        end = (await consumer.end_offsets([tp]))[tp]
        if stored is not None and int(stored.meta.get("offset", 0)) > end:
            log.warning(
                "rollup partition %d: snapshot at offset %s is past the end of the topic "
                "(%d): it belongs to an earlier topic of that name; starting empty",
                p,
                stored.meta.get("offset"),
                end,
            )
            stored = None
        owner = Owner(
            p, Monitor(state.monitor_config), producer, ThrottleController(throttle_config)
        )
        if stored is not None:
            try:
                snap = await asyncio.to_thread(decode, stored.data)
                owner.monitor = Monitor.restore(snap, state.monitor_config)
                if "throttle" in snap.meta:  # snapshots before the throttle have none
                    owner.throttle = ThrottleController.restore(
                        snap.child("throttle"), throttle_config
                    )
                owner.seen = {s: set(v) for s, v in snap.meta.get("seen", {}).items()}
                # the input partitions' reports as the snapshot saw them: one that has nothing
                # new to say still holds the clock back (models/state/watermark.py)
                state.tracker.seed(p, snap.meta.get("reports", {}), time.monotonic())
                owner.next_offset = int(stored.meta["offset"])
                owner.generation = owner.restored_from = int(stored.meta["generation"])
                owner.pieces = int(stored.meta["pieces"])
                consumer.seek(tp, owner.next_offset)
                m.restore("owner", "restored")
                log.info(
                    "rollup partition %d restored: generation %d, %d scopes, %d open "
                    "incidents, from offset %d",
                    p,
                    owner.generation,
                    len(owner.monitor.store.rows),
                    len(owner.monitor.open_incidents()),
                    owner.next_offset,
                )
            except (SnapshotError, KeyError, ValueError) as exc:
                log.warning("rollup partition %d: snapshot not restored: %s", p, exc)
                m.restore("owner", "failed")
                owner.monitor = Monitor(state.monitor_config)
                owner.throttle = ThrottleController(throttle_config)
                stored = None
        if stored is None:
            committed = await consumer.committed(tp)
            if committed is None:
                await consumer.seek_to_beginning(tp)
                owner.next_offset = 0
            else:
                consumer.seek(tp, committed)
                owner.next_offset = committed
            m.restore("owner", "cold")
        state.owners[p] = owner

    async def close_owner(p: int) -> None:
        owner = state.owners.get(p)
        if owner is None:
            return
        try:
            await owner_commit(owner, force=True)
        finally:
            state.owners.pop(p, None)
            state.tracker.forget_owner(p)
            if owner.producer is not None:
                await owner.producer.stop()

    async def owner_commit(owner: Owner, force: bool = False) -> None:
        """Write the owner's pending incident changes and a snapshot of its Monitor in one
        transaction: the changes are published exactly when the state that made them is."""
        async with owner.lock:
            if not owner.pending and not owner.pending_throttle and not force:
                due = time.monotonic() - owner.last_snapshot >= settings.snapshot_every_s
                if not (due and owner.added_since_snapshot):
                    return
            prod = owner.producer
            if prod is None:
                return
            t0 = time.perf_counter()
            snap = owner.monitor.snapshot()
            snap.put("throttle", owner.throttle.snapshot())
            snap.meta["seen"] = owner.seen_state()
            snap.meta["reports"] = state.tracker.reports(owner.partition)
            offset, added = owner.next_offset, owner.added_since_snapshot
            changes = list(owner.pending)
            throttles = list(owner.pending_throttle)
            held = overrides.decisions()
            # a scope under a manual override: the override is what the fleet sees
            publish = [tr for tr in throttles if tr.scope not in held]
            data = await asyncio.to_thread(encode, snap)
            key = f"o/{settings.topic_rollup}/{owner.partition}"
            recs = pieces(
                key,
                data,
                owner.generation + 1,
                {"offset": offset, "previous_pieces": owner.pieces},
            )
            target = await producer_partition(prod, settings.topic_state, key)
            try:
                async with prod.transaction():
                    for ch in changes:
                        rec = ch.to_json()
                        await prod.send(
                            settings.topic_incidents,
                            key=str(rec["id"]).encode(),
                            value=orjson.dumps(rec),
                        )
                    for tr in publish:
                        await prod.send(
                            settings.topic_throttle,
                            key=tr.scope.encode(),
                            value=orjson.dumps(tr.to_json()),
                        )
                    for k, v in recs:
                        await prod.send(settings.topic_state, key=k, value=v, partition=target)
            except (TimeoutError, KafkaError, OSError) as exc:
                owner_failed(f"snapshot of rollup partition {owner.partition}", exc)
                return
            del owner.pending[: len(changes)]
            del owner.pending_throttle[: len(throttles)]
            owner.generation += 1
            owner.pieces = sum(1 for k, v in recs if v is not None) - 1
            owner.last_snapshot = time.monotonic()
            owner.added_since_snapshot -= added
            m.snapshot_written("owner", len(data), time.perf_counter() - t0)
            for tr in throttles:
                m.throttle_record(tr)
            for ch in changes:
                rec = ch.to_json()
                m.incident_change(rec)
                log.warning(
                    "incident %s %s %s at %s", rec["action"], rec["type"], rec["scope"], rec["id"]
                )
            consumer = state.rollup_consumer
            if consumer is not None:
                with contextlib.suppress(KafkaError, AssertionError, CommitFailedError):
                    tp = TopicPartition(settings.topic_rollup, owner.partition)
                    if tp in consumer.assignment():
                        await consumer.commit({tp: offset})

    class OwnerRebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        def __init__(self, consumer: AIOKafkaConsumer) -> None:
            self.consumer = consumer

        async def on_partitions_revoked(self, revoked: Any) -> None:
            for tp in revoked:
                try:
                    await close_owner(tp.partition)
                except Exception as exc:  # the next owner restores the previous snapshot
                    owner_failed(f"handing over rollup partition {tp.partition}", exc)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            log.info("rollup partitions assigned: %s", sorted(tp.partition for tp in assigned))
            for tp in assigned:
                if tp.partition not in state.owners:
                    try:
                        await open_owner(self.consumer, tp)
                    except Exception as exc:  # the rollup loop starts over for it
                        owner_failed(f"restoring rollup partition {tp.partition}", exc)

    @app.task
    async def rollup() -> None:
        while True:
            try:
                await rollup_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                owner_failed("rollup consumer", exc)
                await asyncio.sleep(1.0)

    async def rollup_once() -> None:
        consumer = AIOKafkaConsumer(
            **consumer_options(settings, "rollup"),
            client_id=state.instance,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
        )
        consumer.subscribe([settings.topic_rollup], listener=OwnerRebalance(consumer))
        await consumer.start()
        state.rollup_consumer = consumer
        yielded = time.perf_counter()
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=1000)
                for tp, recs in batch.items():
                    if tp.partition in state.restoring:
                        continue  # fetched before its restore seeks to the snapshot's offset
                    if tp.partition not in state.owners and tp in consumer.assignment():
                        # assigned, but its state could not be restored: never read past it;
                        # start over (rejoin, restore again) rather than lose its deltas
                        raise RuntimeError(f"rollup partition {tp.partition} has no restored state")
                    for rec in recs:
                        owner = state.owners.get(tp.partition)
                        if owner is None:
                            break  # revoked meanwhile
                        if rec.offset < owner.next_offset:
                            continue  # covered by the restored snapshot
                        add_rollup(owner, rec.value or b"")
                        owner.next_offset = rec.offset + 1
                        owner.added_since_snapshot += 1
                        # a backlog's messages carry thousands of rows each: let the web
                        # server and the ticks in between (the state stays consistent: the
                        # offset moves with every message added)
                        if time.perf_counter() - yielded > 0.05:
                            await asyncio.sleep(0)
                            yielded = time.perf_counter()
        finally:
            state.rollup_consumer = None
            for p in list(state.owners):
                with contextlib.suppress(Exception):
                    await close_owner(p)
            await consumer.stop()

    def add_rollup(owner: Owner, value: bytes) -> None:
        try:
            d, env = decode_message(value)
        except (msgspec.DecodeError, ValueError) as exc:
            m.rollup_bad.inc()
            log.error("undecodable rollup message dropped: %s", exc)
            return
        if not owner.remember(env.src, env.seq):
            m.rollup_duplicates.inc()
            return
        part = env.part if env.part >= 0 else int(env.src.rpartition("/")[2] or 0)
        state.tracker.report(part, owner.partition, d.watermark, env.idle, time.monotonic())
        if len(d):
            owner.monitor.add(d)
        m.rollup_messages.inc()

    # ------------------------------------------------------------------ flush
    flush_lock = asyncio.Lock()

    async def flush_and_commit(snapshot: set[int] | None = None) -> None:
        """Flush every pipeline, send its deltas, wait for Kafka's acks, commit the offsets;
        then write the ingest memories of the partitions in ``snapshot`` (or due)."""
        async with flush_lock:
            await _flush_and_commit(snapshot or set())

    async def caught_up_partitions() -> set[int]:
        """Input partitions whose read position is at the high-water mark (nothing to read)."""
        consumer = state.consumer
        out: set[int] = set()
        if consumer is None:
            return out
        for tp in consumer.assignment():
            hw = consumer.highwater(tp)
            if hw is None:
                continue
            try:
                pos = await consumer.position(tp)
            except (KafkaError, AssertionError, ValueError):
                continue
            if pos >= hw:
                out.add(tp.partition)
        return out

    async def _flush_and_commit(force_snapshot: set[int]) -> None:
        # no await between the offset snapshot and the flushes: they cover the same events,
        # and so do the memories taken here for an ingest snapshot
        offsets = dict(state.offsets)
        flushed = []
        mems: dict[int, tuple[Snap, int]] = {}
        now = time.monotonic()
        for part, pipe in list(state.pipelines.items()):
            pending = pipe.pending()
            clock = state.clocks.setdefault(part, PartitionClock())
            if pending:
                clock.running(pipe.pending_timestamps())
            d = pipe.flush()
            d.watermark = clock.watermark
            m.observe_pipeline(part, pipe, d)
            rows = pipe.take_recipients()
            ps = state.suppression.get(part)
            if ps is not None and state.incidents is not None:
                ps.step(rows, state.incidents, clock.watermark)
            flushed.append((part, pending, d))
            tp = TopicPartition(settings.topic_events, part)
            last = state.ingest_snapshot_at.get(part, -math.inf)
            due = now - last >= settings.snapshot_every_s and tp in offsets
            if (part in force_snapshot or due) and tp in offsets:
                snap = pipe.memories_snapshot()
                # the partition's clock goes with its memories: the next reader reports the
                # watermark this one reached, not nothing, so its owner's clock (and what the
                # detectors have run on) is the same after a restart
                snap.meta["clock"] = clock.state()
                if ps is not None:
                    snap.put("suppression", ps.sup.snapshot())
                mems[part] = (snap, offsets[tp])
        caught_up = await caught_up_partitions()
        acks = []
        for part, pending, d in flushed:
            idle = not pending and state.idle(part, part in caught_up)
            changed = (d.watermark, idle) != state.last_sent_wm.get(part)
            if not pending and not (changed or state.ticks % 5 == 0):
                continue
            src = f"{state.instance}/{part}"
            parts = split_by_owner(d, state.rollup_partitions)
            prev_wm = state.last_sent_wm.get(part, (0.0, False))[0]
            # every owner hears the watermark, rows or not; a large flush (a backlog) goes in
            # pieces, and only the last one carries the new watermark, so that an owner never
            # moves its clock before it has added every row the watermark vouches for
            for owner in range(state.rollup_partitions):
                dd = parts.get(owner)
                if dd is None:
                    dd = Deltas.empty()
                    dd.watermark = d.watermark
                chunks = chunk_deltas(dd, MAX_ROWS_PER_MESSAGE)
                for i, piece in enumerate(chunks):
                    last_piece = i == len(chunks) - 1
                    piece.watermark = d.watermark if last_piece else prev_wm
                    seq = state.seq.get(part, 0)
                    state.seq[part] = seq + 1
                    acks.append(
                        await rollup_topic.send(
                            key=str(owner).encode(),
                            value=encode_deltas(piece, src, seq, part, idle and last_piece),
                            partition=owner,
                        )
                    )
            state.last_sent_wm[part] = (d.watermark, idle)
        changelog = await publish_suppressions()
        for ack in acks:
            await ack
        for part, futs in changelog.items():
            last_offset: int | None = None
            for f in futs:
                last_offset = int((await f).offset)
            ps = state.suppression.get(part)
            if ps is not None:
                ps.applied(last_offset)
        m.observe_suppression(list(state.suppression.values()))
        consumer = state.consumer
        committed = False
        if consumer is not None and offsets:
            mine = consumer.assignment()
            todo = {tp: off for tp, off in offsets.items() if tp in mine}
            try:
                if todo:
                    await consumer.commit(todo)
                committed = True
            except (CommitFailedError, KafkaError) as exc:
                log.warning("offset commit failed (a rebalance?): %s", exc)
            lag = 0
            for tp in mine:
                hw = consumer.highwater(tp)
                if hw is not None:
                    part_lag = max(0, hw - offsets.get(tp, hw))
                    lag += part_lag
                    m.consumer_lag.labels(str(tp.partition)).set(part_lag)
            state.lag_history.append(lag)
        if committed and mems:
            try:
                await write_ingest_snapshots(mems)
            except (TimeoutError, KafkaError, OSError) as exc:
                log.warning("ingest memories not written: %r", exc)

    async def publish_suppressions() -> dict[int, list[Any]]:
        """Send every partition's suppression outbox to its changelog partition; returns the
        send futures per partition (the changes reach the store after their acks)."""
        out: dict[int, list[Any]] = {}
        if not state.suppression:
            return out
        prod = await plain_producer()
        for part, ps in state.suppression.items():
            futs = out[part] = []
            for key, value in ps.outbox.items():
                futs.append(
                    await prod.send(
                        settings.topic_suppressions, key=key, value=value, partition=part
                    )
                )
        return out

    # ------------------------------------------------------------------ tick
    retried = {"suppression": time.monotonic()}

    @app.timer(interval=settings.tick_s)
    async def tick() -> None:
        t0 = time.perf_counter()
        state.ticks += 1
        install_log_filter(log_filter)
        await flush_and_commit()
        if state.suppression_failed and time.monotonic() - retried["suppression"] >= 10.0:
            retried["suppression"] = time.monotonic()
            async with flush_lock:  # the snapshot's indexes are lost; the store is not
                for part in sorted(state.suppression_failed & set(state.pipelines)):
                    await restore_suppression(part, None)
        wm = state.watermark()
        for owner in list(state.owners.values()):
            if wm > 0:
                owner.advance_through(wm, settings.detect_every_s)
            owner.follow_overrides(set(overrides.decisions()))
            await owner_commit(owner)
        m.observe_monitor(state.monitor, wm)
        m.observe_throttle([o.throttle for o in state.owners.values()])
        m.log_lines_held.set(log_filter.suppressed)
        m.tick_seconds.observe(time.perf_counter() - t0)
        state.last_tick_done = time.monotonic()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp takes the charset separately from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        # at scrape time, not in the tick: a worker whose ticks stopped must not stay "ready"
        m.ready.set(0 if state.readiness_problems() else 1)
        return web.bytes(generate_latest(m.registry), content_type=ctype)

    @app.page("/livez")
    async def livez(web: Any, request: Any) -> Any:
        return web.json({"status": "alive", "instance": state.instance})

    async def ready_view(web: Any, request: Any) -> Any:
        problems = state.readiness_problems()
        body = {
            "status": "ready" if not problems else "not ready",
            "problems": problems,
            "instance": state.instance,
            "ticks": state.ticks,
        }
        return web.json(body, status=200 if not problems else 503)

    app.page("/readyz")(ready_view)
    app.page("/healthz")(ready_view)  # the older name, same answer

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        denied = check_token(settings.api_token, request.headers.get("Authorization"))
        if denied:
            return web.json({"error": denied}, status=401)
        raw = request.query.get("top", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_STATUS_TOP:
            return web.json(
                {"error": f"top must be an integer from 1 to {MAX_STATUS_TOP}, not {raw[:20]!r}"},
                status=400,
            )
        return web.json(status_document(state, int(raw)))

    @app.task
    async def follow_overrides() -> None:
        await asyncio.to_thread(overrides.start)

    @app.task
    async def follow_incidents() -> None:
        if state.incidents is not None:
            await state.incidents.run()

    @app.task
    async def follow_directory() -> None:
        if state.directory is not None:
            await state.directory.run()

    @app.on_before_shutdown.connect
    async def stop_overrides(app: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(overrides.stop, 5.0)

    router = app.web.web_app.router  # type: ignore[attr-defined]
    decisions_in_force = install_throttle_endpoints(
        router,
        settings,
        state.instance,
        lambda: list(state.owners.values()),
        overrides,
        plain_producer,
    )
    install_suppression_endpoints(router, settings, state)
    if settings.kumo_config:
        install_kumo_endpoints(
            router, settings.api_token, load_kumo_config(settings.kumo_config), decisions_in_force
        )

    @app.on_before_shutdown.connect
    async def hand_over(app: Any, **kwargs: Any) -> None:
        """On a clean stop, hand everything over: stop reading, send and commit what was
        counted (after a tick in flight), write the memories, and a final snapshot per owned
        rollup partition."""
        state.stopping = True
        with contextlib.suppress(Exception):
            await flush_and_commit(snapshot=set(state.pipelines))
        for p in list(state.owners):
            with contextlib.suppress(Exception):
                await close_owner(p)
        for ps in list(state.suppression.values()):
            ps.close()
        state.suppression.clear()
        prod = plain.pop("p", None)
        if prod is not None:
            with contextlib.suppress(Exception):
                await prod.stop()

    return app, state


def status_document(state: WorkerState, top: int = 20) -> dict[str, Any]:
    ingest: dict[str, Any] = {
        "partitions": sorted(state.pipelines),
        "accepted": sum(p.stats.accepted for p in state.pipelines.values()),
        "rejected": {},
        "duplicates": sum(p.stats.duplicates for p in state.pipelines.values()),
        "watermark": max((p.watermark for p in state.pipelines.values()), default=0.0),
    }
    ignored: dict[str, int] = {}
    for p in state.pipelines.values():
        for k, v in p.stats.rejected.items():
            if v:
                ingest["rejected"][k] = ingest["rejected"].get(k, 0) + v
        for k, v in p.stats.ignored_fields.items():
            ignored[k] = ignored.get(k, 0) + v
    ingest["ignored_fields"] = ignored
    return {
        "instance": state.instance,
        "uptime_s": round(time.time() - state.started, 1),
        "ticks": state.ticks,
        "ingest": ingest,
        "rollup": {
            "watermark": state.watermark(),
            "input_partitions": state.tracker.status(time.monotonic()),
            "owned_partitions": {str(p): o.status() for p, o in sorted(state.owners.items())},
        },
        "monitor": state.monitor.status(top),
    }


__all__ = ["WorkerState", "create_app", "status_document"]
