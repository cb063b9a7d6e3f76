"""Taking partitions over: the input partitions' memories and suppression policies, and the
rollup partitions' Monitors, restored from their snapshots when the consumers are assigned them
(docs/architecture.md, "State that survives").

An input partition gets a Pipeline with its duplicate window and known-good memory (re-read up
to the committed offset when its snapshot is older: :meth:`Partitions.warm`), its suppression
store and policy, and an announcement on repmon.workers. A rollup partition gets an Owner: a
transactional producer that fences the previous owner, and the Monitor and throttle state of
its newest snapshot.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from models.act.throttle import ThrottleController
from models.detect.monitor import Monitor
from models.ingest.pipeline import PipelineStats
from models.state.snapshot import Snap, SnapshotError, decode
from models.state.watermark import PartitionClock
from streams.worker.base import WorkerBase
from streams.worker.owners import Owner
from streams.worker.snapstore import read_newest
from streams.worker.state import Warming
from streams.worker.suppressions import open_partition, store_path

log = logging.getLogger("repmon.worker")


class Partitions(WorkerBase):
    """Restore what an assigned partition needs, forget what a revoked one had."""

    async def restore_ingest(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Give partition ``tp`` a Pipeline with its memories and its suppression policy, and
        tell the other workers who reads it now."""
        snap = await self.restore_memories(consumer, tp)
        if self.settings.suppression:
            await self.restore_suppression(tp.partition, snap)
        await self.announce(tp.partition)

    async def restore_memories(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> Snap | None:
        """Give partition ``tp`` a Pipeline with its memories: restored from its snapshot and
        brought up to the committed offset by reading the records in between again. Returns
        the snapshot (None: none, or unreadable)."""
        state, settings, m = self.state, self.settings, self.metrics
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

    async def restore_suppression(self, part: int, snap: Snap | None) -> None:
        """Open partition ``part``'s suppression store, bring it up to its changelog and
        restore the policy's indexes (streams/worker/suppressions.py)."""
        state, settings, m = self.state, self.settings, self.metrics
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
                config=self.suppression_config,
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

    async def announce(self, part: int) -> None:
        """Say on repmon.workers that this worker reads input partition ``part``."""
        settings = self.settings
        try:
            prod = await self.plain_producer()
            doc = {
                "url": settings.advertised_url,
                "instance": self.state.instance,
                "at": time.time(),
            }
            await prod.send_and_wait(
                settings.topic_workers,
                key=f"{settings.topic_events}/{part}".encode(),
                value=orjson.dumps(doc),
            )
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("partition %d: reader not announced: %r", part, exc)

    def warm(self, part: int, recs: list[Any]) -> list[Any]:
        """Feed the records before the warming partition's committed offset to its memories;
        returns the records to count."""
        state = self.state
        w = state.warming[part]
        k = 0
        while k < len(recs) and recs[k].offset < w.until:
            k += 1
        if k:
            values = [r.value if r.value is not None else b"" for r in recs[:k]]
            w.pipe.feed_many(values)
            w.pipe.take_recipients()  # the policy saw these before (its store has them)
            w.events += k
            self.metrics.warmup_events.inc(k)
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

    def forget_partition(self, tp: TopicPartition) -> None:
        state = self.state
        state.assigned.discard(tp)
        state.pipelines.pop(tp.partition, None)
        state.warming.pop(tp.partition, None)
        state.clocks.pop(tp.partition, None)
        state.offsets.pop(tp, None)
        ps = state.suppression.pop(tp.partition, None)
        if ps is not None:
            ps.close()

    async def open_owner(self, consumer: AIOKafkaConsumer, tp: TopicPartition) -> None:
        """Take rollup partition ``tp`` over: fence its previous owner, restore its Monitor
        from the newest snapshot and continue reading right after what the snapshot covers."""
        p = tp.partition
        self.state.restoring.add(p)
        try:
            producer = self.new_producer(
                transactional_id=f"{self.settings.app_id}.owner.{p}", enable_idempotence=True
            )
            await producer.start()  # fences a previous owner's unfinished transaction
            try:
                await self.restore_owner(consumer, tp, producer)
            except BaseException:
                await producer.stop()
                raise
        finally:
            self.state.restoring.discard(p)

    async def restore_owner(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, producer: AIOKafkaProducer
    ) -> None:
        """Restore rollup partition ``tp``'s Monitor from its newest snapshot and seek to
        right after what it covers (no snapshot: start empty at the committed offset)."""
        state, settings, m = self.state, self.settings, self.metrics
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
            p, Monitor(state.monitor_config), producer, ThrottleController(self.throttle_config)
        )
        if stored is not None:
            try:
                snap = await asyncio.to_thread(decode, stored.data)
                owner.monitor = Monitor.restore(snap, state.monitor_config)
                if "throttle" in snap.meta:  # snapshots before the throttle have none
                    owner.throttle = ThrottleController.restore(
                        snap.child("throttle"), self.throttle_config
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
                owner.throttle = ThrottleController(self.throttle_config)
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


__all__ = ["Partitions"]
