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
import base64
import hmac
import logging
import math
import os
import socket
import time
import uuid
import zlib
from dataclasses import dataclass, field
from typing import Any

import faust
import msgspec
import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.classify.classifier import Classifier
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline, Rejection
from models.schema import N_COLUMNS
from models.state.deltas import Deltas
from models.state.rolling import RollingConfig
from models.state.watermark import PartitionClock, WatermarkTracker
from streams.worker.decoding import ingest_pipeline
from streams.worker.metrics import Metrics
from streams.worker.settings import Settings

log = logging.getLogger("repmon.worker")


class DeltaMessage(msgspec.Struct, array_like=True):
    """Wire form of a Deltas on repmon.rollup (msgpack)."""

    src: str
    seq: int
    watermark: float
    scopes: list[str]
    scope_idx: bytes  # int32
    bucket_start: bytes  # int64
    counts: bytes  # int64, (n, ncol)
    ncol: int
    replies: list[tuple[int, str, int]]
    #: the input partition whose events these are, and whether its reader is idle (caught up and
    #: quiet: it does not hold the owners' watermark back); defaults keep older messages readable
    part: int = -1
    idle: bool = False


_delta_encoder = msgspec.msgpack.Encoder()
_delta_decoder = msgspec.msgpack.Decoder(DeltaMessage)


def encode_deltas(d: Deltas, src: str, seq: int, part: int = -1, idle: bool = False) -> bytes:
    return _delta_encoder.encode(
        DeltaMessage(
            src=src,
            seq=seq,
            watermark=d.watermark,
            scopes=d.scopes,
            scope_idx=d.scope_idx.astype(np.int32).tobytes(),
            bucket_start=d.bucket_start.astype(np.int64).tobytes(),
            counts=np.ascontiguousarray(d.counts, dtype=np.int64).tobytes(),
            ncol=N_COLUMNS,
            replies=d.replies,
            part=part,
            idle=idle,
        )
    )


def decode_deltas(raw: bytes) -> tuple[Deltas, str, int]:
    d, m = decode_message(raw)
    return d, m.src, m.seq


def decode_message(raw: bytes) -> tuple[Deltas, DeltaMessage]:
    """The Deltas and the message's envelope (source, seq, input partition, idle)."""
    m = _delta_decoder.decode(raw)
    if m.ncol != N_COLUMNS:
        raise ValueError(f"delta with {m.ncol} columns, this worker knows {N_COLUMNS}")
    n = len(m.scope_idx) // 4
    d = Deltas(
        scopes=m.scopes,
        scope_idx=np.frombuffer(m.scope_idx, dtype=np.int32).copy(),
        bucket_start=np.frombuffer(m.bucket_start, dtype=np.int64).copy(),
        counts=np.frombuffer(m.counts, dtype=np.int64).reshape(n, N_COLUMNS).copy(),
        replies=[(int(a), str(b), int(c)) for a, b, c in m.replies],
        watermark=m.watermark,
    )
    return d, m


def owner_partition(scope: str, partitions: int) -> int:
    """The rollup partition that owns a scope: stable across processes and restarts."""
    return zlib.crc32(scope.encode("utf-8")) % partitions


def split_by_owner(d: Deltas, partitions: int) -> dict[int, Deltas]:
    """Split one Deltas into one per owning rollup partition (vectorised over rows)."""
    if len(d) == 0:
        return {}
    owner_of_scope = np.array([owner_partition(s, partitions) for s in d.scopes], dtype=np.int64)
    row_owner = owner_of_scope[d.scope_idx]
    out: dict[int, Deltas] = {}
    for p in np.unique(row_owner):
        rows = np.flatnonzero(row_owner == p)
        used, local = np.unique(d.scope_idx[rows], return_inverse=True)
        remap = {int(g): i for i, g in enumerate(used)}
        out[int(p)] = Deltas(
            scopes=[d.scopes[int(g)] for g in used],
            scope_idx=local.astype(np.int32),
            bucket_start=d.bucket_start[rows],
            counts=d.counts[rows],
            replies=[(remap[i], t, c) for i, t, c in d.replies if i in remap],
            watermark=d.watermark,
        )
    return out


#: rows of one rollup message at most: a row is N_COLUMNS int64 counts plus its scope, so 2,000
#: rows stay well under the broker's default 1 MB message limit
MAX_ROWS_PER_MESSAGE = 2000


def chunk_deltas(d: Deltas, max_rows: int) -> list[Deltas]:
    """``d`` in pieces of at most ``max_rows`` rows (one empty piece for an empty ``d``); each
    piece names only its own scopes, and replies go with the piece that has their scope."""
    n = len(d)
    if n <= max_rows:
        return [d]
    out: list[Deltas] = []
    first_piece: dict[int, tuple[int, int]] = {}  # scope index in d -> (piece, index in piece)
    for lo in range(0, n, max_rows):
        rows = np.arange(lo, min(n, lo + max_rows))
        used, local = np.unique(d.scope_idx[rows], return_inverse=True)
        for j, g in enumerate(used.tolist()):
            first_piece.setdefault(g, (len(out), j))
        out.append(
            Deltas(
                scopes=[d.scopes[int(g)] for g in used],
                scope_idx=local.astype(np.int32),
                bucket_start=d.bucket_start[rows],
                counts=d.counts[rows],
                watermark=d.watermark,
            )
        )
    for i, text, cnt in d.replies:  # a scope's replies go with its first piece
        where = first_piece.get(i)
        if where is not None:
            out[where[0]].replies.append((where[1], text, cnt))
    return out


#: the most scopes per kind /status returns
MAX_STATUS_TOP = 1000


def check_token(expected: str, header: str | None) -> str | None:
    """None when the request may see the data; else why not. No token configured: open."""
    if not expected:
        return None
    if not header or not header.startswith("Bearer "):
        return "this endpoint needs 'Authorization: Bearer <token>' (REPMON_API_TOKEN)"
    if not hmac.compare_digest(header[7:].encode(), expected.encode()):
        return "wrong token"
    return None


@dataclass
class WorkerState:
    settings: Settings
    classifier: Classifier
    metrics: Metrics
    monitor: Monitor
    instance: str = field(
        default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    )
    pipelines: dict[int, Pipeline] = field(default_factory=dict)
    #: the event-time clock of each input partition (a lone event far ahead does not move it)
    clocks: dict[int, PartitionClock] = field(default_factory=dict)
    seq: dict[int, int] = field(default_factory=dict)
    last_sent_wm: dict[int, tuple[float, bool]] = field(default_factory=dict)
    #: monotonic time of the last record fed per input partition (-inf: never)
    last_fed: dict[int, float] = field(default_factory=dict)
    seen_seqs: dict[str, set[int]] = field(default_factory=dict)
    #: the owners' event time: min over live (input partition, rollup partition) reports
    tracker: WatermarkTracker = field(init=False)
    started: float = field(default_factory=time.time)
    ticks: int = 0
    rollup_partitions: int = 0
    consumer: AIOKafkaConsumer | None = None
    #: next offset to commit per input partition (last fed + 1)
    offsets: dict[TopicPartition, int] = field(default_factory=dict)

    def pipeline(self, partition: int) -> Pipeline:
        p = self.pipelines.get(partition)
        if p is None:
            p = ingest_pipeline(
                self.classifier,
                bucket_s=self.settings.bucket_s,
                clock=time.time,
                max_future_skew_s=self.settings.max_future_skew_s,
            )
            self.pipelines[partition] = p
        return p

    def remember(self, src: str, seq: int) -> bool:
        """Record a delta's (source, seq); False when it was seen already (a redelivery)."""
        seen = self.seen_seqs.setdefault(src, set())
        if seq in seen:
            return False
        seen.add(seq)
        if len(seen) > 8192:  # keep the newest half: redeliveries are recent
            cut = sorted(seen)[len(seen) // 2]
            self.seen_seqs[src] = {x for x in seen if x >= cut}
        return True

    #: monotonic times: last ingest failure, last time it was logged, last completed tick
    ingest_error_at: float = -math.inf
    ingest_error_logged: float = -math.inf
    last_tick_done: float = -math.inf

    def readiness_problems(self) -> list[str]:
        """Why this worker is not ready (empty: ready): the ingest consumer runs, no ingest
        failure in the last 10 s, and a tick completed recently."""
        now = time.monotonic()
        out = []
        if self.consumer is None:
            out.append("the ingest consumer is not running (broker unreachable or starting)")
        if now - self.ingest_error_at < 10.0:
            out.append(f"ingest failed {now - self.ingest_error_at:.0f} s ago")
        limit = max(5.0, 3 * self.settings.tick_s)
        if now - self.last_tick_done > limit:
            out.append(f"no tick completed in the last {limit:.0f} s")
        return out

    def __post_init__(self) -> None:
        self.tracker = WatermarkTracker(self.settings.source_idle_s)

    def watermark(self) -> float:
        """Event-time watermark of the rolling state (models/state/watermark.py): every delta up
        to it has been added on every rollup partition this worker owns."""
        return self.tracker.watermark(time.monotonic())

    def idle(self, part: int, caught_up: bool) -> bool:
        """A reader is idle when it is caught up and has read nothing for source_idle_s."""
        fed = self.last_fed.get(part, -math.inf)
        return caught_up and time.monotonic() - fed >= self.settings.source_idle_s


def dlq_record(rej: Rejection, raw: bytes, topic: str, partition: int, offset: int) -> bytes:
    """The dead-letter value: reason, detail and the original bytes (base64, at most 1 MiB)."""
    return orjson.dumps(
        {
            "reason": rej.reason,
            "detail": rej.detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": time.time(),
            "original_b64": base64.b64encode(raw[: 1 << 20]).decode("ascii"),
            "original_truncated": len(raw) > (1 << 20),
        }
    )


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
        producer_linger_ms=5,
        producer_max_request_size=4 << 20,
        consumer_max_fetch_size=8 << 20,
    )
    state = WorkerState(
        settings=settings,
        classifier=Classifier(settings.rule_files),
        metrics=Metrics(),
        monitor=Monitor(MonitorConfig(rolling=RollingConfig(max_scopes=settings.max_scopes))),
        rollup_partitions=settings.rollup_partitions,
    )
    dlq_topic = app.topic(settings.topic_dlq, value_type=bytes, value_serializer="raw")
    rollup_topic = app.topic(
        settings.topic_rollup,
        value_type=bytes,
        value_serializer="raw",
        partitions=settings.rollup_partitions,
    )
    incidents_topic = app.topic(settings.topic_incidents, value_type=bytes, value_serializer="raw")
    m = state.metrics

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

    class Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
        async def on_partitions_revoked(self, revoked: Any) -> None:
            # hand the partitions over with everything counted so far sent and committed
            await flush_and_commit()
            for tp in revoked:
                state.pipelines.pop(tp.partition, None)
                state.clocks.pop(tp.partition, None)
                state.offsets.pop(tp, None)

        async def on_partitions_assigned(self, assigned: Any) -> None:
            log.info("ingest partitions assigned: %s", sorted(tp.partition for tp in assigned))
            # every assigned partition reports its watermark, even before (or without) data
            for tp in assigned:
                state.pipeline(tp.partition)

    @app.task
    async def ingest() -> None:
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
            bootstrap_servers=settings.kafka_bootstrap,
            group_id=f"{settings.app_id}.ingest",
            client_id=state.instance,
            enable_auto_commit=False,
            auto_offset_reset=settings.auto_offset_reset,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        consumer.subscribe([settings.topic_events], listener=Rebalance())
        await consumer.start()
        state.consumer = consumer
        parts = consumer.partitions_for_topic(settings.topic_events)
        if parts:
            state.tracker.expect(len(parts), time.monotonic())
        try:
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=10_000)
                for tp, recs in batch.items():
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

    @app.agent(rollup_topic, name="repmon.rollup")
    async def rollup(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            value = event.value
            owner = event.message.partition
            try:
                d, env = decode_message(bytes(value))
                src, seq = env.src, env.seq
            except (msgspec.DecodeError, ValueError) as exc:
                m.rollup_bad.inc()
                log.error("undecodable rollup message dropped: %s", exc)
                continue
            if not state.remember(src, seq):
                m.rollup_duplicates.inc()
                continue
            part = env.part if env.part >= 0 else int(src.rpartition("/")[2] or 0)
            state.tracker.report(part, owner, d.watermark, env.idle, time.monotonic())
            if len(d):
                state.monitor.add(d)
            m.rollup_messages.inc()

    flush_lock = asyncio.Lock()

    async def flush_and_commit() -> None:
        """Flush every pipeline, send its deltas, wait for Kafka's acks, commit the offsets."""
        async with flush_lock:
            await _flush_and_commit()

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

    async def _flush_and_commit() -> None:
        # no await between the offset snapshot and the flushes: they cover the same events
        offsets = dict(state.offsets)
        flushed = []
        for part, pipe in list(state.pipelines.items()):
            pending = pipe.pending()
            clock = state.clocks.setdefault(part, PartitionClock())
            if pending:
                clock.running(pipe.pending_timestamps())
            d = pipe.flush()
            d.watermark = clock.watermark
            m.observe_pipeline(part, pipe, d)
            flushed.append((part, pending, d))
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
                pieces = chunk_deltas(dd, MAX_ROWS_PER_MESSAGE)
                for i, piece in enumerate(pieces):
                    last = i == len(pieces) - 1
                    piece.watermark = d.watermark if last else prev_wm
                    seq = state.seq.get(part, 0)
                    state.seq[part] = seq + 1
                    acks.append(
                        await rollup_topic.send(
                            key=str(owner).encode(),
                            value=encode_deltas(piece, src, seq, part, idle and last),
                            partition=owner,
                        )
                    )
            state.last_sent_wm[part] = (d.watermark, idle)
        for ack in acks:
            await ack
        consumer = state.consumer
        if consumer is not None and offsets:
            mine = consumer.assignment()
            todo = {tp: off for tp, off in offsets.items() if tp in mine}
            try:
                if todo:
                    await consumer.commit(todo)
            except (CommitFailedError, KafkaError) as exc:
                log.warning("offset commit failed (a rebalance?): %s", exc)
            for tp in mine:
                hw = consumer.highwater(tp)
                if hw is not None:
                    m.consumer_lag.labels(str(tp.partition)).set(max(0, hw - offsets.get(tp, hw)))

    @app.timer(interval=settings.tick_s)
    async def tick() -> None:
        t0 = time.perf_counter()
        state.ticks += 1
        await flush_and_commit()
        wm = state.watermark()
        if wm > 0:
            for change in state.monitor.advance_through(wm, settings.detect_every_s):
                rec = change.to_json()
                m.incident_change(rec)
                log.warning(
                    "incident %s %s %s at %s", rec["action"], rec["type"], rec["scope"], rec["id"]
                )
                await incidents_topic.send(key=str(rec["id"]).encode(), value=orjson.dumps(rec))
        m.observe_monitor(state.monitor, wm)
        m.tick_seconds.observe(time.perf_counter() - t0)
        state.last_tick_done = time.monotonic()

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp takes the charset separately from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
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

    return app, state


def status_document(state: WorkerState, top: int = 20) -> dict[str, Any]:
    ingest: dict[str, Any] = {
        "partitions": sorted(state.pipelines),
        "accepted": sum(p.stats.accepted for p in state.pipelines.values()),
        "rejected": {},
        "duplicates": sum(p.stats.duplicates for p in state.pipelines.values()),
        "watermark": max((p.watermark for p in state.pipelines.values()), default=0.0),
    }
    for p in state.pipelines.values():
        for k, v in p.stats.rejected.items():
            if v:
                ingest["rejected"][k] = ingest["rejected"].get(k, 0) + v
    return {
        "instance": state.instance,
        "uptime_s": round(time.time() - state.started, 1),
        "ticks": state.ticks,
        "ingest": ingest,
        "rollup": {
            "watermark": state.watermark(),
            "input_partitions": state.tracker.status(time.monotonic()),
        },
        "monitor": state.monitor.status(top),
    }
