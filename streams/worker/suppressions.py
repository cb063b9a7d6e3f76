"""Recipient suppression in the worker: one policy per input partition (docs/suppression.md).

The recipients of an input partition are its own (``mail.events`` is keyed by recipient key), so
each input partition ``p`` a worker reads has a :class:`PartitionSuppression`: the pure policy
(:class:`models.act.suppression.Suppressor`) over a RocksDB store
(:class:`streams.worker.suppression_store.RocksRecipientStore`) in
``<data_dir>/suppressions/<topic>-<p>``, whose changelog is partition ``p`` of the compacted topic
``repmon.suppressions`` (keyed by the 64-hex recipient key; a tombstone: back to active).

**Each tick** (``streams/worker/ticking.py``, inside the flush that sends the tick's deltas):

1. :meth:`PartitionSuppression.step`: the incidents the worker follows (:class:`IncidentFollower`)
   that closed release what they held, new quarantining incidents start holding, the tick's
   recipient rows (``Pipeline.take_recipients``) in feed order, then the timers due at the
   partition's event-time watermark. Each change's record joins the partition's *outbox*.
2. The outbox is sent to partition ``p`` of the changelog with the tick's deltas (acks=all); only
   then are the input offsets committed.
3. :meth:`PartitionSuppression.applied`: after the acks, the policy's writes go to the store in
   one atomic batch with the changelog offset they reach (the store's marker).

So the changelog is always ahead of or equal to the store, and the store's marker says how far:
a worker killed between 2 and 3 catches up from the changelog when the partition is assigned
again; one killed between the changelog's ack and the input commit reads those events again
(at-least-once), which the policy absorbs (a hit in a message already counted does not count
again; a delivery resets what it reset; a complaint suppresses what is suppressed). A failed
send keeps the outbox and the pending writes (the policy reads its own pending writes), and the
next tick sends them again.

**Restore** (:func:`open_partition`): the store's marker against the changelog partition's
offsets (``restore_plan``): catch up from the marker, or rebuild from the start of the partition
when there is no usable marker. Then the policy's in-memory indexes: the recent hard hits (for a
false-bounce incident's look-back) and incident names from the input partition's ingest snapshot,
the timers and held recipients rebuilt from the store in one scan.

**Incidents** are opened and closed by the detection owners, on any worker: every worker follows
``repmon.incidents`` from its start (read_committed) and knows which are open. The policy steps
only once that follower has caught up with the topic (rows wait meanwhile, at most
``FOLLOWER_WAIT_S``), so that a restart does not suppress hard bounces of an incident still open.

**Which worker answers** ``GET /suppressions/{key}``: the one reading the key's input partition
(Kafka's default partitioner over the key's UTF-8 bytes). Each worker announces the input
partitions it reads, with its web address, on the compacted topic ``repmon.workers``
(:class:`Directory`); a worker asked about a key it does not hold forwards the request there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from models.act.suppression import (
    RecordError,
    SuppressionChange,
    Suppressor,
    state_from_record,
)
from models.act.suppression_config import SuppressionConfig
from models.ingest.recipients import RecipientRows
from models.state.snapshot import Snap, SnapshotError
from streams.worker.suppression_store import RocksRecipientStore, restore_plan

log = logging.getLogger("repmon.suppression")

#: wall-clock seconds the policy waits for the incident follower to catch up before it steps
#: without it (rows wait meanwhile); a broker outage holds up everything else too
FOLLOWER_WAIT_S = 60.0
#: incident ids whose close time is remembered (a held incident's release uses it)
CLOSED_KEPT = 10_000


def key_partition(key: str, partitions: int) -> int:
    """The input partition Kafka's default partitioner gives a record keyed by ``key``
    (murmur2 of the UTF-8 bytes, as the Java client, kafka-python and aiokafka do)."""
    return int(murmur2(key.encode()) & 0x7FFFFFFF) % partitions


def ident_of(key: bytes) -> int:
    """The policy's identity of a 32-byte recipient key (its first 8 bytes, little-endian)."""
    return int.from_bytes(key[:8], "little")


# -- incidents -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FollowedIncident:
    """What the policy reads of an incident (``IncidentLike``), from its record."""

    id: str
    type: str
    scope: str
    related: list[str]
    opened_at: float


class IncidentFollower:
    """The open incidents, from ``repmon.incidents`` read from its start (see the module
    docstring). ``apply`` takes one record value; :meth:`run` feeds it from Kafka."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.open: dict[str, FollowedIncident] = {}
        #: id -> closed_at of the incidents closed recently
        self.closed: OrderedDict[str, float] = OrderedDict()
        self.caught_up = False
        self.records = 0
        self.bad = 0
        self.started = time.monotonic()

    def apply(self, value: bytes | None) -> None:
        if not value:
            return
        self.records += 1
        try:
            rec = orjson.loads(value)
            if not isinstance(rec, dict) or rec.get("kind") != "incident":
                return  # audit records of manual overrides share the topic
            iid = str(rec["id"])
            if rec.get("action") == "opened":
                related = rec.get("evidence", {}).get("related_scopes") or []
                self.open[iid] = FollowedIncident(
                    iid,
                    str(rec["type"]),
                    str(rec["scope"]),
                    [str(s) for s in related],
                    float(rec["opened_at"]),
                )
                self.closed.pop(iid, None)
            elif rec.get("action") == "closed":
                self.open.pop(iid, None)
                at = rec.get("closed_at")
                self.closed[iid] = float(at) if at is not None else math.nan
                self.closed.move_to_end(iid)
                while len(self.closed) > CLOSED_KEPT:
                    self.closed.popitem(last=False)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
            self.bad += 1
            log.warning("unreadable incident record skipped: %r", exc)

    def ready(self) -> bool:
        """Caught up, or waited long enough (the policy then steps with what it knows)."""
        return self.caught_up or time.monotonic() - self.started > FOLLOWER_WAIT_S

    async def run(self) -> None:
        await follow_forever(
            self.bootstrap, self.topic, lambda k, v: self.apply(v), self._caught_up
        )

    def _caught_up(self) -> None:
        self.caught_up = True


async def follow_forever(
    bootstrap: str,
    topic: str,
    apply: Callable[[bytes | None, bytes | None], None],
    caught_up: Callable[[], None] = lambda: None,
) -> None:
    """:func:`follow_topic`, started again 1 s after a failure."""
    while True:
        try:
            await follow_topic(bootstrap, topic, apply, caught_up)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("following %s failed, retrying in 1 s: %r", topic, exc)
            await asyncio.sleep(1.0)


async def follow_topic(
    bootstrap: str,
    topic: str,
    apply: Callable[[bytes | None, bytes | None], None],
    caught_up: Callable[[], None],
) -> None:
    """Read every partition of ``topic`` from its start for ever (no consumer group,
    read_committed), calling ``apply(key, value)`` per record and ``caught_up()`` once the end
    offsets taken at the start have been reached."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        auto_offset_reset="earliest",
    )
    await consumer.start()
    try:
        parts: set[int] | None = None
        for _ in range(60):
            # the consumer's own metadata holds only assigned topics: ask the cluster
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(topic)
            if parts:
                break
            await asyncio.sleep(0.5)
        if not parts:
            raise KafkaError(f"topic {topic} has no partitions")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        done = False
        while True:
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            for recs in batch.values():
                for rec in recs:
                    apply(rec.key, rec.value)
            if not done:
                pos = {tp: await consumer.position(tp) for tp in tps}
                if all(pos[tp] >= ends[tp] for tp in tps):
                    done = True
                    caught_up()
    finally:
        await consumer.stop()


# -- who reads which input partition ------------------------------------------------------------


class Directory:
    """Input partition -> the web address of the worker reading it, from the compacted topic
    ``repmon.workers`` (key ``<events topic>/<partition>``, value ``{"url", "instance",
    "at"}``)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.readers: dict[str, dict[str, Any]] = {}

    def apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        k = key.decode(errors="replace")
        if not value:
            self.readers.pop(k, None)
            return
        try:
            doc = orjson.loads(value)
            if isinstance(doc, dict) and isinstance(doc.get("url"), str):
                self.readers[k] = doc
        except orjson.JSONDecodeError:
            log.warning("unreadable %s record for %s skipped", self.topic, k)

    def reader(self, events_topic: str, partition: int) -> dict[str, Any] | None:
        return self.readers.get(f"{events_topic}/{partition}")

    async def run(self) -> None:
        await follow_forever(self.bootstrap, self.topic, self.apply)


# -- one input partition -------------------------------------------------------------------------


@dataclass
class SuppressionStats:
    """What the policy of one partition did (the worker's metrics read and reset it)."""

    changes: dict[tuple[str, str], int] = field(default_factory=dict)  #: (state, cause) -> n


@dataclass
class PartitionSuppression:
    """The suppression policy of one input partition (see the module docstring)."""

    partition: int
    store: RocksRecipientStore
    sup: Suppressor
    #: records not yet acknowledged by the changelog: topic key -> value (None: a tombstone)
    outbox: dict[bytes, bytes | None] = field(default_factory=dict)
    #: rows that wait for the incident follower to catch up
    waiting: list[RecipientRows] = field(default_factory=list)
    stats: SuppressionStats = field(default_factory=SuppressionStats)
    #: wall-clock time the store's marker was last written
    marker_at: float = field(default_factory=time.time)

    def step(self, rows: RecipientRows, follower: IncidentFollower, watermark: float) -> int:
        """The tick's step (module docstring, 1); returns the number of changes."""
        if len(rows):
            self.waiting.append(rows)
        if not follower.ready():
            return 0
        sup = self.sup
        out: list[SuppressionChange] = []
        holds = sup.open_holds()
        for iid in list(holds):
            if iid in follower.closed:
                at = follower.closed[iid]
                out += sup.incident_closed(iid, watermark if math.isnan(at) else at)
        opening = None  # sync_incidents opens the new ones
        if follower.caught_up:  # names held by hash only (a restart), closes missed
            out += sup.sync_incidents(follower.open.values(), watermark)
        else:  # waited too long: what is known so far
            opening = follower.open.values()
        batch = RecipientRows.concat(self.waiting) if self.waiting else RecipientRows.empty()
        self.waiting = []
        out += sup.observe(batch, opening)
        if watermark > 0:
            out += sup.expire(watermark)
        for ch in out:
            rec = ch.to_json()
            key = str(rec["recipient_key"]).encode()
            self.outbox[key] = None if ch.tombstone else orjson.dumps(rec)
            k = (str(rec["state"]), ch.cause)
            self.stats.changes[k] = self.stats.changes.get(k, 0) + 1
        return len(out)

    def applied(self, last_offset: int | None) -> None:
        """The outbox was acknowledged up to changelog offset ``last_offset`` (module
        docstring, 3): the policy's writes go to the store with it."""
        self.outbox.clear()
        writes = self.sup.take_writes()
        offsets = {self.partition: last_offset} if last_offset is not None else None
        if writes or offsets:
            self.store.put_many(writes, offsets)
            self.marker_at = time.time()
        elif time.time() - self.marker_at > 3600.0:
            self.store.touch_marker()  # caught up: a quiet day is not a stale marker
            self.marker_at = time.time()

    def lookup(self, key: bytes) -> dict[str, Any] | None:
        """The current record of a 32-byte recipient key (None: active, nothing stored)."""
        return self.sup.lookup([key])[0]

    def close(self) -> None:
        self.store.close()


def store_path(data_dir: Path, events_topic: str, partition: int) -> Path:
    return data_dir / "suppressions" / f"{events_topic}-{partition}"


@dataclass(frozen=True)
class Restored:
    """How a partition's store was brought up to its changelog."""

    mode: str  #: "up_to_date", "catch_up", "rebuild"
    records: int
    reason: str


async def read_changelog(
    bootstrap: str, tp: TopicPartition, start: int, end: int
) -> list[tuple[int, bytes | None]]:
    """The (ident, packed value or None) of changelog partition ``tp``'s records from ``start``
    to ``end`` (exclusive), in order (read_committed)."""
    out: list[tuple[int, bytes | None]] = []
    if end <= start:
        return out
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        deadline = time.monotonic() + 600.0
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {tp.topic}[{tp.partition}] to {end} took too long")
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=10_000)
            for rec in batch.get(tp, []):
                if rec.offset >= end:
                    break
                out.append(decode_change(rec.key, rec.value))
    finally:
        await consumer.stop()
    return out


def decode_change(key: bytes | None, value: bytes | None) -> tuple[int, bytes | None]:
    """A changelog record as the store holds it: (ident, packed state or None)."""
    try:
        digest = bytes.fromhex((key or b"").decode())
    except ValueError as exc:
        raise RecordError(f"changelog key {key!r} is not 64 hex digits") from exc
    if len(digest) != 32:
        raise RecordError(f"changelog key {key!r} is not 64 hex digits")
    if value is None:
        return ident_of(digest), None
    st = state_from_record(orjson.loads(value))
    return ident_of(digest), (st.pack() if st is not None else None)


async def open_partition(
    *,
    bootstrap: str,
    changelog: str,
    partition: int,
    path: Path,
    config: SuppressionConfig,
    snap: Snap | None,
) -> tuple[PartitionSuppression, Restored]:
    """The partition's policy with its store brought up to the changelog (module docstring)."""
    store = await asyncio.to_thread(RocksRecipientStore, path)
    try:
        tp = TopicPartition(changelog, partition)
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            lo = (await consumer.beginning_offsets([tp]))[tp]
            hi = (await consumer.end_offsets([tp]))[tp]
        finally:
            await consumer.stop()
        written = store.marker_written_at()
        plan = restore_plan(
            store.applied_offsets(),
            {partition: (lo, hi)},
            marker_age_s=None if written is None else max(0.0, time.time() - written),
        )
        if plan.rebuild:
            records = await read_changelog(bootstrap, tp, lo, hi)
            latest: dict[int, bytes | None] = {}
            for ident, value in records:
                latest[ident] = value
            await asyncio.to_thread(
                store.rebuild,
                [(i, v) for i, v in latest.items() if v is not None],
                {partition: hi - 1},
            )
            restored = Restored("rebuild", len(records), plan.reason)
        elif plan.start:
            records = await read_changelog(bootstrap, tp, plan.start[partition], hi)
            store.put_many(records, {partition: hi - 1})
            restored = Restored("catch_up", len(records), plan.reason)
        else:
            restored = Restored("up_to_date", 0, plan.reason)
        sup = None
        if snap is not None:
            try:
                sup = Suppressor.restore(snap, config, store, write_through=False)
            except SnapshotError as exc:
                log.warning("partition %d: suppression indexes not restored: %s", partition, exc)
        if sup is None:
            sup = Suppressor(config, store, write_through=False)
        await asyncio.to_thread(sup.rebuild_indexes)
        return PartitionSuppression(partition, store, sup), restored
    except BaseException:
        store.close()
        raise


__all__ = [
    "Directory",
    "FollowedIncident",
    "IncidentFollower",
    "PartitionSuppression",
    "Restored",
    "decode_change",
    "follow_forever",
    "follow_topic",
    "ident_of",
    "key_partition",
    "open_partition",
    "read_changelog",
    "store_path",
]
