"""The Faust application: ingest agent, rollup agent, tick timer and web views.

Data flow (docs/architecture.md):

  mail.events --(ingest agent, one Pipeline per input partition)--> in-memory numpy columns
      --(tick timer: Pipeline.flush -> Deltas, split by scope owner)--> repmon.rollup
      --(rollup agent: dedupe by (source, seq), Monitor.add)--> rolling state
      --(tick timer: Monitor.advance(min source watermark))--> repmon.incidents, /status, /metrics

No Faust table is written per event: counts live in numpy arrays and leave the process once per
tick as one compact message per rollup partition.
"""

from __future__ import annotations

import base64
import logging
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
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.classifier import Classifier
from models.deltas import Deltas
from models.monitor import Monitor
from models.pipeline import Pipeline, Rejection
from models.schema import N_COLUMNS
from streams.metrics import Metrics
from streams.settings import Settings

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


_delta_encoder = msgspec.msgpack.Encoder()
_delta_decoder = msgspec.msgpack.Decoder(DeltaMessage)


def encode_deltas(d: Deltas, src: str, seq: int) -> bytes:
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
        )
    )


def decode_deltas(raw: bytes) -> tuple[Deltas, str, int]:
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
    return d, m.src, m.seq


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
    seq: dict[int, int] = field(default_factory=dict)
    last_sent_wm: dict[int, float] = field(default_factory=dict)
    last_seen_seq: dict[str, int] = field(default_factory=dict)
    source_wm: dict[str, tuple[float, float]] = field(default_factory=dict)
    started: float = field(default_factory=time.time)
    ticks: int = 0
    rollup_partitions: int = 0

    def pipeline(self, partition: int) -> Pipeline:
        p = self.pipelines.get(partition)
        if p is None:
            p = Pipeline(
                self.classifier,
                bucket_s=self.settings.bucket_s,
                clock=time.time,
                max_future_skew_s=self.settings.max_future_skew_s,
                loads=orjson.loads,
            )
            self.pipelines[partition] = p
        return p

    def watermark(self) -> float:
        """Event-time watermark of the rolling state: the slowest active source."""
        now = time.monotonic()
        active = [
            wm for wm, seen in self.source_wm.values() if now - seen <= self.settings.source_idle_s
        ]
        if not active:
            active = [wm for wm, _ in self.source_wm.values()]
        return min(active) if active else 0.0


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
        monitor=Monitor(),
        rollup_partitions=settings.topic_partitions,
    )
    events_topic = app.topic(
        settings.topic_events, value_type=bytes, key_type=bytes, value_serializer="raw"
    )
    dlq_topic = app.topic(settings.topic_dlq, value_type=bytes, value_serializer="raw")
    rollup_topic = app.topic(settings.topic_rollup, value_type=bytes, value_serializer="raw")
    incidents_topic = app.topic(settings.topic_incidents, value_type=bytes, value_serializer="raw")
    m = state.metrics

    @app.agent(events_topic, name="repmon.ingest")
    async def ingest(stream: faust.StreamT[bytes]) -> None:
        async for event in stream.events():
            msg = event.message
            value = event.value
            if not isinstance(value, bytes | bytearray):
                value = b"" if value is None else bytes(str(value), "utf-8")
            rej = state.pipeline(msg.partition).feed(value)
            if rej is not None:
                await dlq_topic.send(
                    key=msg.key,
                    value=dlq_record(rej, bytes(value), msg.topic, msg.partition, msg.offset),
                )
                log.warning(
                    "dead-lettered %s[%d]@%d: %s (%s)",
                    msg.topic,
                    msg.partition,
                    msg.offset,
                    rej.reason,
                    rej.detail,
                )

    @app.agent(rollup_topic, name="repmon.rollup")
    async def rollup(stream: faust.StreamT[bytes]) -> None:
        async for value in stream:
            try:
                d, src, seq = decode_deltas(bytes(value))
            except (msgspec.DecodeError, ValueError) as exc:
                m.rollup_bad.inc()
                log.error("undecodable rollup message dropped: %s", exc)
                continue
            if seq <= state.last_seen_seq.get(src, -1):
                m.rollup_duplicates.inc()
                continue
            state.last_seen_seq[src] = seq
            state.source_wm[src] = (d.watermark, time.monotonic())
            if len(d):
                state.monitor.add(d)
            m.rollup_messages.inc()

    @app.timer(interval=settings.tick_s)
    async def tick() -> None:
        t0 = time.perf_counter()
        state.ticks += 1
        for part, pipe in list(state.pipelines.items()):
            pending = pipe.pending()
            d = pipe.flush()
            m.observe_pipeline(part, pipe, d)
            wm_moved = d.watermark != state.last_sent_wm.get(part)
            if not pending and not (wm_moved or state.ticks % 5 == 0):
                continue
            src = f"{state.instance}/{part}"
            parts = split_by_owner(d, state.rollup_partitions)
            # every owner hears the watermark, rows or not
            for owner in range(state.rollup_partitions):
                dd = parts.get(owner)
                if dd is None:
                    dd = Deltas.empty()
                    dd.watermark = d.watermark
                seq = state.seq.get(part, 0)
                state.seq[part] = seq + 1
                await rollup_topic.send(
                    key=str(owner).encode(), value=encode_deltas(dd, src, seq), partition=owner
                )
            state.last_sent_wm[part] = d.watermark
        wm = state.watermark()
        if wm > 0:
            for change in state.monitor.advance(wm):
                rec = change.to_json()
                m.incident_change(rec)
                log.warning(
                    "incident %s %s %s at %s", rec["action"], rec["type"], rec["scope"], rec["id"]
                )
                await incidents_topic.send(key=str(rec["id"]).encode(), value=orjson.dumps(rec))
        m.observe_monitor(state.monitor, wm)
        m.tick_seconds.observe(time.perf_counter() - t0)

    @app.page("/metrics")
    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp takes the charset separately from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        return web.bytes(generate_latest(m.registry), content_type=ctype)

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok", "instance": state.instance, "ticks": state.ticks})

    @app.page("/status")
    async def status(web: Any, request: Any) -> Any:
        top = int(request.query.get("top", "20"))
        return web.json(status_document(state, top))

    return app, state


def status_document(state: WorkerState, top: int = 20) -> dict[str, Any]:
    ingest: dict[str, Any] = {
        "partitions": sorted(state.pipelines),
        "accepted": sum(p.stats.accepted for p in state.pipelines.values()),
        "rejected": {},
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
        "rollup": {"watermark": state.watermark(), "sources": len(state.source_wm)},
        "monitor": state.monitor.status(top),
    }
