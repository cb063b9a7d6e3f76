"""The tick: every ``REPMON_TICK_S`` the worker flushes what it read, sends it, and commits.

Per tick (docs/architecture.md, "Per batch, per event and per tick"):

1. :meth:`Ticking.flush_and_commit`: every input partition's Pipeline is flushed to Deltas,
   its suppression policy steps over the tick's rows, the Deltas are split by owner and sent to
   repmon.rollup, the policy's changes to its changelog; once Kafka has acknowledged them the
   input offsets are committed, then the ingest memories that are due are written. A rebalance
   and a clean stop run the same path under the same lock as the reading loop.
2. Each owned rollup partition advances its Monitor to the watermark and writes its incident
   and throttle changes and a snapshot in one transaction (:meth:`Ticking.owner_commit`); a
   revoked or stopped owner writes a final one (:meth:`Ticking.close_owner`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError

from models.state.deltas import Deltas
from models.state.snapshot import Snap, encode
from models.state.watermark import PartitionClock
from streams.worker.owners import Owner, install_log_filter
from streams.worker.partitions import Partitions
from streams.worker.snapstore import pieces, producer_partition
from streams.worker.wire import MAX_ROWS_PER_MESSAGE, chunk_deltas, encode_deltas, split_by_owner

log = logging.getLogger("repmon.worker")


class Ticking(Partitions):
    """The tick's flush, send and commit, and the owners' transactions."""

    async def flush_and_commit(self, snapshot: set[int] | None = None) -> None:
        """Flush every pipeline, send its deltas, wait for Kafka's acks, commit the offsets;
        then write the ingest memories of the partitions in ``snapshot`` (or due)."""
        async with self.flush_lock:
            await self._flush_and_commit(snapshot or set())

    async def caught_up_partitions(self) -> set[int]:
        """Input partitions whose read position is at the high-water mark (nothing to read)."""
        consumer = self.state.consumer
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

    async def _flush_and_commit(self, force_snapshot: set[int]) -> None:
        # no await between the offset snapshot and the flushes: they cover the same events,
        # and so do the memories taken here for an ingest snapshot
        state, settings, m = self.state, self.settings, self.metrics
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
        caught_up = await self.caught_up_partitions()
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
                        await self.rollup_topic.send(
                            key=str(owner).encode(),
                            value=encode_deltas(piece, src, seq, part, idle and last_piece),
                            partition=owner,
                        )
                    )
            state.last_sent_wm[part] = (d.watermark, idle)
        changelog = await self.publish_suppressions()
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
                await self.write_ingest_snapshots(mems)
            except (TimeoutError, KafkaError, OSError) as exc:
                log.warning("ingest memories not written: %r", exc)

    async def write_ingest_snapshots(self, snaps: dict[int, tuple[Snap, int]]) -> None:
        """Write the ingest memories of each partition with the offset they cover (committed)."""
        state, settings, m = self.state, self.settings, self.metrics
        prod = await self.plain_producer()
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

    async def publish_suppressions(self) -> dict[int, list[Any]]:
        """Send every partition's suppression outbox to its changelog partition; returns the
        send futures per partition (the changes reach the store after their acks)."""
        state = self.state
        out: dict[int, list[Any]] = {}
        if not state.suppression:
            return out
        prod = await self.plain_producer()
        for part, ps in state.suppression.items():
            futs = out[part] = []
            for key, value in ps.outbox.items():
                futs.append(
                    await prod.send(
                        self.settings.topic_suppressions, key=key, value=value, partition=part
                    )
                )
        return out

    async def tick(self) -> None:
        state, settings, m = self.state, self.settings, self.metrics
        t0 = time.perf_counter()
        state.ticks += 1
        install_log_filter(self.log_filter)
        await self.flush_and_commit()
        if state.suppression_failed and time.monotonic() - self.suppression_retried_at >= 10.0:
            self.suppression_retried_at = time.monotonic()
            async with self.flush_lock:  # the snapshot's indexes are lost; the store is not
                for part in sorted(state.suppression_failed & set(state.pipelines)):
                    await self.restore_suppression(part, None)
        wm = state.watermark()
        for owner in list(state.owners.values()):
            if wm > 0:
                owner.advance_through(wm, settings.detect_every_s)
            owner.follow_overrides(set(self.overrides.decisions()))
            await self.owner_commit(owner)
        m.observe_monitor(state.monitor, wm)
        m.observe_throttle([o.throttle for o in state.owners.values()])
        m.log_lines_held.set(self.log_filter.suppressed)
        m.tick_seconds.observe(time.perf_counter() - t0)
        state.last_tick_done = time.monotonic()

    async def owner_commit(self, owner: Owner, force: bool = False) -> None:
        """Write the owner's pending incident changes and a snapshot of its Monitor in one
        transaction: the changes are published exactly when the state that made them is."""
        state, settings, m = self.state, self.settings, self.metrics
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
            held = self.overrides.decisions()
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
                self.owner_failed(f"snapshot of rollup partition {owner.partition}", exc)
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

    async def close_owner(self, p: int) -> None:
        """Write a final snapshot of rollup partition ``p``'s owner and let it go (on a
        revocation and on a clean stop)."""
        state = self.state
        owner = state.owners.get(p)
        if owner is None:
            return
        try:
            await self.owner_commit(owner, force=True)
        finally:
            state.owners.pop(p, None)
            state.tracker.forget_owner(p)
            if owner.producer is not None:
                await owner.producer.stop()


__all__ = ["Ticking"]
