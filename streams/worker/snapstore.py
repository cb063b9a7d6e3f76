"""Snapshots on a compacted Kafka topic: write one in pieces, read the newest one back.

A snapshot (``models.state.snapshot.encode`` bytes) of one *owner* -- ``o/<p>``, rollup
partition ``p``'s Monitor, or ``i/<p>``, input partition ``p``'s ingest memories -- is written
as records keyed

    <owner>/g<generation>/<i>   the i-th piece (at most PIECE_BYTES)
    <owner>/meta                JSON: generation, pieces, sha256, size, plus the caller's fields
                                (e.g. the offset the snapshot covers)

to partition ``hash(owner) % partitions`` of the topic, the meta record last, then a tombstone
for every piece of the previous generation. Compaction keeps the newest meta and the pieces of
its generation; a writer that dies half-way leaves the previous generation whole, because its
meta record still names it. Reading the partition from the start to its end and taking the newest
meta with all its pieces (sha256 checked) gives the newest complete snapshot.

The Monitor's owner writes in a Kafka transaction together with the incident changes of the same
tick (streams/worker/ticking.py), so a snapshot and the changes it reflects land together or not at
all.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import zlib
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger("repmon.snapshots")

#: bytes of one snapshot piece (under the topic's max.message.bytes of 4 MiB)
PIECE_BYTES = 1 << 20


def state_partition(owner: str, partitions: int) -> int:
    return zlib.crc32(owner.encode()) % max(1, partitions)


@dataclass
class Stored:
    """The newest complete snapshot of one owner, as read back."""

    data: bytes
    meta: dict[str, Any]


def pieces(
    owner: str, data: bytes, generation: int, extra: dict[str, Any]
) -> list[tuple[bytes, bytes | None]]:
    """The (key, value) records of one snapshot, meta last, then the previous generation's
    tombstones (its pieces are at most as many as ``previous_pieces`` in ``extra``)."""
    n = max(1, -(-len(data) // PIECE_BYTES))
    out: list[tuple[bytes, bytes | None]] = [
        (f"{owner}/g{generation}/{i}".encode(), data[i * PIECE_BYTES : (i + 1) * PIECE_BYTES])
        for i in range(n)
    ]
    meta = {
        **extra,
        "generation": generation,
        "pieces": n,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "written_at": time.time(),
    }
    out.append((f"{owner}/meta".encode(), orjson.dumps(meta)))
    prev = int(extra.get("previous_pieces", 0))
    out.extend((f"{owner}/g{generation - 1}/{i}".encode(), None) for i in range(prev))
    return out


async def producer_partition(producer: AIOKafkaProducer, topic: str, owner: str) -> int:
    """The partition of ``topic`` that holds ``owner``'s snapshots, from the topic's actual
    partition count (a topic created earlier may have another count than the settings)."""
    parts = await producer.partitions_for(topic)
    return state_partition(owner, len(parts))


async def read_newest(
    bootstrap: str, topic: str, owner: str, timeout_s: float = 60.0
) -> Stored | None:
    """The newest complete snapshot of ``owner`` on ``topic`` (None: there is none)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + timeout_s
        # a topic created a moment ago may not have a leader in this client's metadata yet:
        # ask for the metadata again, briefly, instead of one long request timeout
        while True:
            # the consumer's own metadata holds only assigned topics: ask the cluster (the
            # topic's actual partition count, which may differ from the settings)
            cluster = await consumer._client.fetch_all_metadata()
            parts = cluster.partitions_for_topic(topic)
            if not parts:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"topic {topic} has no partitions in the metadata")
                await asyncio.sleep(0.5)
                continue
            tp = TopicPartition(topic, state_partition(owner, len(parts)))
            try:
                end = (await asyncio.wait_for(consumer.end_offsets([tp]), 5.0))[tp]
                break
            except (TimeoutError, KafkaError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        metas: list[dict[str, Any]] = []
        got: dict[tuple[int, int], bytes] = {}
        prefix = f"{owner}/".encode()
        while await consumer.position(tp) < end:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic}[{tp.partition}] took over {timeout_s} s")
            batch = await consumer.getmany(tp, timeout_ms=500, max_records=1000)
            for rec in batch.get(tp, []):
                key = rec.key or b""
                if not key.startswith(prefix):
                    continue
                rest = key[len(prefix) :].decode()
                if rest == "meta":
                    if rec.value is not None:
                        metas.append(orjson.loads(rec.value))
                    continue
                gen, _, idx = rest.partition("/")
                k = (int(gen[1:]), int(idx))
                if rec.value is None:
                    got.pop(k, None)
                else:
                    got[k] = rec.value
    finally:
        await consumer.stop()
    for meta in reversed(metas):  # the newest whole one
        g, n = int(meta["generation"]), int(meta["pieces"])
        if all((g, i) in got for i in range(n)):
            data = b"".join(got[(g, i)] for i in range(n))
            if hashlib.sha256(data).hexdigest() == meta["sha256"]:
                return Stored(data, meta)
        log.warning("snapshot %s generation %d is incomplete or damaged: skipped", owner, g)
    return None
