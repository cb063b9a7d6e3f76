"""The worker's consumers and the rest of its life: the ingest loop (aiokafka ``getmany``
batches of mail.events, one Pipeline per input partition), the rollup loop (repmon.rollup into
the owned Monitors), the rebalance listeners that hand partitions over, the loops that follow
the overrides, the open incidents and the directory of readers, and the hand-over on a clean stop.

:class:`Worker` is the whole worker: this layer on top of :class:`~streams.worker.ticking.Ticking`
(streams/worker/base.py lists the layers). streams/worker/app.py makes one and registers its
tasks on the Faust app.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener

from streams.worker.owners import Owner, install_log_filter
from streams.worker.settings import Settings
from streams.worker.ticking import Ticking
from streams.worker.wire import decode_message

log = logging.getLogger("repmon.worker")


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


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    """A rebalance listener of one of the worker's consumers."""

    def __init__(self, worker: Worker, consumer: AIOKafkaConsumer) -> None:
        self.worker = worker
        self.consumer = consumer


class IngestRebalance(_Listener):
    async def on_partitions_revoked(self, revoked: Any) -> None:
        # hand the partitions over with everything counted so far sent and committed, and
        # their memories written, so that the next reader starts where this one stops
        w = self.worker
        async with w.flush_lock:
            await w._flush_and_commit({tp.partition for tp in revoked})
            for tp in revoked:
                w.forget_partition(tp)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        w = self.worker
        log.info("ingest partitions assigned: %s", sorted(tp.partition for tp in assigned))
        async with w.flush_lock:
            for tp in assigned:
                w.forget_partition(tp)  # whatever a batch read before the rebalance left
            # the partitions' snapshots are read side by side, not one after the other
            await asyncio.gather(*(w.restore_ingest(self.consumer, tp) for tp in assigned))
            w.state.assigned.update(assigned)


class OwnerRebalance(_Listener):
    async def on_partitions_revoked(self, revoked: Any) -> None:
        w = self.worker
        for tp in revoked:
            try:
                await w.close_owner(tp.partition)
            except Exception as exc:  # the next owner restores the previous snapshot
                w.owner_failed(f"handing over rollup partition {tp.partition}", exc)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        w = self.worker
        log.info("rollup partitions assigned: %s", sorted(tp.partition for tp in assigned))
        for tp in assigned:
            if tp.partition not in w.state.owners:
                try:
                    await w.open_owner(self.consumer, tp)
                except Exception as exc:  # the rollup loop starts over for it
                    w.owner_failed(f"restoring rollup partition {tp.partition}", exc)


class Worker(Ticking):
    """The whole worker: its consumer loops, follow loops and hand-over, on top of the tick."""

    # ------------------------------------------------------------------ ingest
    async def ingest(self) -> None:
        state = self.state
        install_log_filter(self.log_filter)
        while True:
            try:
                await self.ingest_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.ingest_restarts.inc()
                state.ingest_error_at = time.monotonic()
                # one line per 30 s while the broker is away, not one per retry
                if time.monotonic() - state.ingest_error_logged >= 30.0:
                    state.ingest_error_logged = time.monotonic()
                    log.warning("ingest consumer failed, retrying every 1 s: %r", exc)
                await asyncio.sleep(1.0)

    async def ingest_once(self) -> None:
        state, settings = self.state, self.settings
        consumer = AIOKafkaConsumer(
            **consumer_options(settings, "ingest"),
            client_id=state.instance,
            auto_offset_reset=settings.auto_offset_reset,
            max_partition_fetch_bytes=8 << 20,
            fetch_max_bytes=64 << 20,
        )
        consumer.subscribe([settings.topic_events], listener=IngestRebalance(self, consumer))
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
                async with self.flush_lock:
                    for tp, recs in batch.items():
                        if tp not in state.assigned:  # revoked since the fetch
                            continue
                        if tp.partition in state.warming:
                            recs = self.warm(tp.partition, recs)
                        if not recs:
                            continue
                        values = [rec.value if rec.value is not None else b"" for rec in recs]
                        for i, rej in state.pipeline(tp.partition).feed_many(values):
                            await self.dead_letter(rej, values[i], recs[i])
                        state.offsets[tp] = recs[-1].offset + 1
                        state.last_fed[tp.partition] = time.monotonic()
        finally:
            state.consumer = None
            await consumer.stop()

    # ------------------------------------------------------------------ rollup
    async def rollup(self) -> None:
        while True:
            try:
                await self.rollup_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.owner_failed("rollup consumer", exc)
                await asyncio.sleep(1.0)

    async def rollup_once(self) -> None:
        state, settings = self.state, self.settings
        consumer = AIOKafkaConsumer(
            **consumer_options(settings, "rollup"),
            client_id=state.instance,
            isolation_level="read_committed",
            auto_offset_reset="earliest",
            max_partition_fetch_bytes=8 << 20,
        )
        consumer.subscribe([settings.topic_rollup], listener=OwnerRebalance(self, consumer))
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
                        self.add_rollup(owner, rec.value or b"")
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
                    await self.close_owner(p)
            await consumer.stop()

    def add_rollup(self, owner: Owner, value: bytes) -> None:
        m = self.metrics
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
        self.state.tracker.report(part, owner.partition, d.watermark, env.idle, time.monotonic())
        if len(d):
            owner.monitor.add(d)
        m.rollup_messages.inc()

    # ------------------------------------------------------------------ follow loops
    async def follow_overrides(self) -> None:
        await asyncio.to_thread(self.overrides.start)

    async def follow_incidents(self) -> None:
        if self.state.incidents is not None:
            await self.state.incidents.run()

    async def follow_directory(self) -> None:
        if self.state.directory is not None:
            await self.state.directory.run()

    # ------------------------------------------------------------------ stop
    async def stop_overrides(self, app: Any, **kwargs: Any) -> None:
        await asyncio.to_thread(self.overrides.stop, 5.0)

    async def hand_over(self, app: Any, **kwargs: Any) -> None:
        """On a clean stop, hand everything over: stop reading, send and commit what was
        counted (after a tick in flight), write the memories, and a final snapshot per owned
        rollup partition."""
        state = self.state
        state.stopping = True
        with contextlib.suppress(Exception):
            await self.flush_and_commit(snapshot=set(state.pipelines))
        for p in list(state.owners):
            with contextlib.suppress(Exception):
                await self.close_owner(p)
        for ps in list(state.suppression.values()):
            ps.close()
        state.suppression.clear()
        prod, self.plain = self.plain, None
        if prod is not None:
            with contextlib.suppress(Exception):
                await prod.stop()


__all__ = ["IngestRebalance", "OwnerRebalance", "Worker", "consumer_options"]
