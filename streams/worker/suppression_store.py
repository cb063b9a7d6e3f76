"""The worker's durable per-recipient suppression store: RocksDB through rocksdict.

The suppression policy (``models/act/suppression/``, pure) keeps one packed record of at most
64 bytes per recipient that is not plainly active and reads and writes it through its
``RecipientStore`` protocol: ``get_many(idents)``, ``put_many([(ident, value | None)])`` (None
deletes) and ``items()``. :class:`RocksRecipientStore` implements it on one RocksDB directory.

**Keys and values.** An *ident* is the first 8 bytes of the recipient key (the SHA-256 of the
lower-cased address) read as a little-endian uint64, as everywhere in repmon (docs/events.md).
The DB key is that ident as 8 **big-endian** bytes, so the DB's byte order is the ident order
(``items()`` yields ascending idents). Values are stored as given (``raw_mode``: no pickling);
the policy's record carries the full 32-byte key, so an ident collision is the policy's to see.

**Most lookups miss.** Nearly every delivery goes to a recipient with no entry. ``get_many`` is
one RocksDB multi-get (``Rdict.get(list)``) over the batch; a miss is answered by Bloom filters
without reading a data block: the memtables' (2 % of their size) and the SST files' (10 bits a
key, about 1 % false positives, partitioned, in the block cache). bench/suppression_store.py
measured a fixed-size in-process Bloom filter in front of RocksDB (16 MiB, 3 probes, ``--prefilter``):
it makes an all-miss batch about 10 times cheaper in CPU, but it has to be filled by scanning
every key at each open (0.7-2.6 µs a recipient: 7-26 s for 10 million), a fixed size fills up
(4.7 % of misses pass it at 20 million recipients) and deletes leave its bits set. RocksDB
alone is above the 200,000 lookups/s target, so the store has no such filter.

**Bounded memory.** Resident memory does not grow with the number of recipients:

* one LRU block cache of ``cache_bytes`` (default 64 MiB) holds data blocks, index and filter
  blocks (``cache_index_and_filter_blocks``; partitioned index and filters, only their small
  top levels pinned), and the memtables are charged to it too (a ``WriteBufferManager`` of
  ``write_buffer_bytes``, default 16 MiB, inside the cache's budget; writes stall above it);
* at most ``max_open_files`` (default 256) SST readers are kept open (64 MiB files: 16 GiB of
  SSTs, about 250 million recipients, before one is ever closed);
* outside the cache there are the interpreter and RocksDB's working memory (compaction
  buffers, allocator slack): about 20-40 MB in the bench, whatever the number of recipients.

Measured (bench/suppression_store.py): a reopened store's process is at 50 MB after the open
and peaks at 140-150 MB over writes and lookups with 1, 10 and 20 million recipients alike; a
process that loads the recipients grows towards the same ceiling as its cache fills.

With 10 million recipients the filters (about 12 MiB) and indexes (a few MiB) fit in the
default cache, so a miss costs no disk read; far beyond that, filter partitions are read from
disk (the OS page cache) as needed but memory still stays at the cache size. The OS page cache
that holds the SST files is not resident memory of the process (shared, reclaimable).

**Disk.** LZ4 in the upper levels, ZSTD in the bottom level (where nearly all data is after a
compaction), level compaction with dynamic level sizes (space amplification about 1.1), 4 KiB
blocks: about 63 bytes a recipient with 64-byte records whose half is a SHA-256 (measured in
bench/suppression_store.py; 16 KiB blocks save 2 bytes but make a hit's block twice as slow to
read). ``compact()`` runs a full compaction on request.

**Durability.** Every ``put_many`` is one atomic ``WriteBatch`` through the write-ahead log: after
it returns, the batch survives the process being killed (``kill -9``): the WAL is in the OS page
cache and is replayed at the next open (tests/test_suppression_store.py kills a child process).
``sync=True`` also fsyncs the WAL at each batch, for a machine that loses power; without it a
power loss loses the last batches **together with their offsets** (point-in-time recovery keeps
a prefix of the batches), and the worker reads them again from the changelog.

**Changelog offsets and restore.** The source of truth is the compacted changelog topic
(``repmon.suppressions``); the store is its local materialisation. The store keeps, in a separate
column family ``meta`` written in the **same WriteBatch** as the data, the last changelog offset
applied per partition (``put_many(items, offsets=...)``, :meth:`applied_offsets`), with the time
it was written. The worker writes a change to the topic first and applies it here once the write
is acknowledged (or its transaction committed), with the record's offset. When partitions are
assigned, :func:`restore_plan` compares the marker with the topic's offsets:

* no marker (a new machine, a lost directory, or a rebuild that did not finish), another set of
  partitions than assigned, a marker past the end of a partition (topic deleted and re-created),
  before its start (records deleted) or older than ``max_marker_age_s`` (tombstones may have
  been compacted away meanwhile: default 1 day, Kafka's ``delete.retention.ms``) -> **rebuild**:
  :meth:`rebuild` wipes the directory and writes the partitions read from their start;
* otherwise -> **catch up**: read each partition from its marker + 1 to its end and apply with
  ``put_many`` (re-applying a change is harmless: a record is the recipient's whole state).

The changelog is read with ``isolation_level="read_committed"`` (records of an aborted
transaction never reach the store). A running worker is caught up by construction (it applies
its own changes), so it refreshes the marker's time now and then (:meth:`touch_marker`).

A rebuild first removes the marker (synced), writes the records without the WAL (fast), flushes
them to SST files and only then writes the new marker (synced); a crash half-way leaves no
marker, so the next start rebuilds again.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from numpy.typing import NDArray
from rocksdict import (
    AccessType,
    BlockBasedIndexType,
    BlockBasedOptions,
    BottommostLevelCompaction,
    Cache,
    ColumnFamily,
    CompactOptions,
    DBCompressionType,
    DBRecoveryMode,
    Options,
    Rdict,
    WriteBatch,
    WriteBufferManager,
    WriteOptions,
)

#: bytes of the longest value (the policy's packed record)
MAX_VALUE_BYTES = 64
#: the column family of the marker (changelog offsets per partition)
META_CF = "meta"
_MARKER_KEY = b"changelog-offsets"
#: default age after which a marker is not trusted for a catch-up (Kafka's delete.retention.ms)
MAX_MARKER_AGE_S = 86_400.0

MIB = 1 << 20


@dataclass(frozen=True)
class StoreTuning:
    """RocksDB sizes; the defaults are the ones measured in bench/suppression_store.py."""

    #: LRU block cache: data, index and filter blocks, and the memtables (charged to it)
    cache_bytes: int = 64 * MIB
    #: memtables (a part of ``cache_bytes``): writes stall above it until a flush
    write_buffer_bytes: int = 16 * MIB
    #: one memtable; a flush writes one L0 file of about this size
    memtable_bytes: int = 8 * MIB
    bloom_bits_per_key: int = 10
    #: 4 KiB: a hit decompresses less (16 KiB blocks save 2 bytes a recipient on disk)
    block_bytes: int = 4096
    target_file_bytes: int = 64 * MIB
    max_open_files: int = 256
    background_jobs: int = 2
    #: two-level index and partitioned filters (only their top level pinned in the cache)
    partitioned: bool = True
    #: compression above the bottom level and in it: "lz4", "zstd", "snappy", "none"
    compression: str = "lz4"
    bottommost_compression: str = "zstd"
    #: fsync the WAL at every batch (power-loss safe) instead of only writing it (kill-safe)
    sync: bool = False


def _db_options(t: StoreTuning, cache: Cache) -> Options:
    """The DB-wide options and the records' column family (``default``)."""
    opt = Options(raw_mode=True)
    opt.create_if_missing(True)
    opt.create_missing_column_families(True)
    opt.set_max_open_files(t.max_open_files)
    opt.set_max_background_jobs(t.background_jobs)
    opt.set_wal_recovery_mode(DBRecoveryMode.point_in_time())
    opt.set_keep_log_file_num(2)
    opt.set_max_log_file_size(1 * MIB)
    opt.set_manifest_preallocation_size(256 * 1024)
    # a memtable flush flushes the marker's column family with it, so the WAL files behind it
    # are deleted at once (without, the marker's small memtable would keep every WAL file
    # until ``max_total_wal_size`` forces a flush)
    opt.set_atomic_flush(True)
    opt.set_max_total_wal_size(4 * t.write_buffer_bytes)
    # all memtables together are charged to the block cache and stall writes above the budget
    opt.set_write_buffer_manager(
        WriteBufferManager.new_write_buffer_manager_with_cache(t.write_buffer_bytes, True, cache)
    )
    opt.set_write_buffer_size(t.memtable_bytes)
    opt.set_max_write_buffer_number(max(2, t.write_buffer_bytes // t.memtable_bytes))
    opt.set_target_file_size_base(t.target_file_bytes)
    opt.set_max_bytes_for_level_base(4 * t.target_file_bytes)
    opt.set_level_compaction_dynamic_level_bytes(True)
    opt.set_compression_type(_compression(t.compression))
    opt.set_bottommost_compression_type(_compression(t.bottommost_compression))
    # a Bloom filter over the memtable's keys too (2 % of its size, about 16 bits a key):
    # a miss does not walk the memtable's skip list
    opt.set_memtable_whole_key_filtering(True)
    opt.set_memtable_prefix_bloom_ratio(0.02)
    # lookups mostly miss: keep filters on the last level too (the default, said here)
    opt.set_optimize_filters_for_hits(False)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    table.set_format_version(5)
    table.set_block_size(t.block_bytes)
    table.set_bloom_filter(t.bloom_bits_per_key, False)
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    if t.partitioned:
        table.set_index_type(BlockBasedIndexType.two_level_index_search())
        table.set_partition_filters(True)
        table.set_metadata_block_size(4096)
        table.set_pin_top_level_index_and_filter(True)
    opt.set_block_based_table_factory(table)
    return opt


def _meta_options(cache: Cache) -> Options:
    """The marker's column family: one small record."""
    opt = Options(raw_mode=True)
    opt.set_write_buffer_size(256 * 1024)
    opt.set_max_write_buffer_number(2)
    table = BlockBasedOptions()
    table.set_block_cache(cache)
    opt.set_block_based_table_factory(table)
    return opt


def _compression(name: str) -> DBCompressionType:
    kinds = {
        "lz4": DBCompressionType.lz4,
        "zstd": DBCompressionType.zstd,
        "snappy": DBCompressionType.snappy,
        "none": DBCompressionType.none,
    }
    if name not in kinds:
        raise ValueError(f"compression {name!r}: one of {sorted(kinds)}")
    return kinds[name]()


def _keys(idents: NDArray[np.uint64]) -> list[bytes]:
    """8-byte big-endian DB keys of ``idents`` (a view; the trailing zero bytes are kept)."""
    return np.ascontiguousarray(idents, dtype=">u8").view("V8").tolist()  # type: ignore[no-any-return]


class RocksRecipientStore:
    """Per-recipient records in one RocksDB directory (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], tuning: StoreTuning | None = None) -> None:
        self.path = Path(path)
        self.tuning = tuning or StoreTuning()
        self._db: Rdict | None = None
        self._open()

    # -- lifecycle -----------------------------------------------------------------------
    def _open(self) -> None:
        t = self.tuning
        self.path.mkdir(parents=True, exist_ok=True)
        self._cache = Cache(t.cache_bytes)
        self._db = Rdict(
            str(self.path),
            _db_options(t, self._cache),
            column_families={META_CF: _meta_options(self._cache)},
            access_type=AccessType.read_write(),
        )
        self._meta_handle: ColumnFamily | None = self._db.get_column_family_handle(META_CF)
        meta = self._db.get_column_family(META_CF)
        self._marker: _Marker | None = _Marker.decode(meta.get(_MARKER_KEY))
        meta.close()
        del meta
        self._wopt = WriteOptions()
        self._wopt.sync = t.sync

    def close(self) -> None:
        """Release the directory (every batch is in the WAL already: nothing is flushed).

        Every rocksdict object that refers to the DB (a column family handle too) keeps it
        open, so all of them are dropped here."""
        if self._db is not None:
            self._meta_handle = None
            self._db.close()
            self._db = None

    @property
    def closed(self) -> bool:
        return self._db is None

    def __enter__(self) -> RocksRecipientStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _rdb(self) -> Rdict:
        if self._db is None:
            raise RuntimeError(f"suppression store {self.path} is closed")
        return self._db

    # -- the RecipientStore protocol -----------------------------------------------------
    def get_many(self, idents: NDArray[np.uint64]) -> list[bytes | None]:
        """The record of each ident, or None: one multi-get, in the order of ``idents``."""
        db = self._rdb()
        if len(idents) == 0:
            return []
        keys: list[Any] = _keys(idents)
        return db.get(keys)  # type: ignore[return-value]

    def put_many(
        self,
        items: Sequence[tuple[int, bytes | None]],
        offsets: Mapping[int, int] | None = None,
    ) -> None:
        """Write ``items`` (None deletes) and, when given, the changelog ``offsets`` they reach
        (merged into the marker), as one atomic WriteBatch. Later items win over earlier ones
        for the same ident."""
        db = self._rdb()
        wb = WriteBatch(raw_mode=True)
        for ident, value in items:
            key = _key(ident)
            if value is None:
                wb.delete(key)
            else:
                _check_value(value)
                wb.put(key, value)
        marker = None
        if offsets:
            marker = _Marker.merged(self._marker, offsets)
            wb.put(_MARKER_KEY, marker.encode(), self._meta_handle)
        if wb.is_empty():
            return
        db.write(wb, self._wopt)
        if marker is not None:
            self._marker = marker

    def items(self) -> Iterator[tuple[int, bytes]]:
        """Every (ident, record) in ascending ident order."""
        for key, value in self._rdb().items():
            assert isinstance(key, bytes)
            yield int.from_bytes(key, "big"), value

    # -- changelog offsets ---------------------------------------------------------------
    def applied_offsets(self) -> dict[int, int] | None:
        """Last changelog offset applied per partition; None when the store has no marker (new,
        lost, or a rebuild that did not finish): the worker must rebuild it."""
        self._rdb()
        return dict(self._marker.offsets) if self._marker is not None else None

    def marker_written_at(self) -> float | None:
        """Unix time the marker was last written (None: no marker)."""
        return self._marker.written_at if self._marker is not None else None

    def set_applied_offsets(self, offsets: Mapping[int, int], *, replace: bool = False) -> None:
        """Write the marker alone: merge ``offsets`` into it, or ``replace`` it (partitions not
        named are forgotten). To move offsets with data, pass them to ``put_many``."""
        db = self._rdb()
        marker = _Marker(dict(offsets)) if replace else _Marker.merged(self._marker, offsets)
        wb = WriteBatch(raw_mode=True)
        wb.put(_MARKER_KEY, marker.encode(), self._meta_handle)
        db.write(wb, self._wopt)
        self._marker = marker

    def touch_marker(self) -> None:
        """Rewrite the marker with the current time (nothing when there is none). A running
        worker applies its own changes, so it is caught up: it touches the marker now and then
        (say hourly) so that a restart after a quiet day does not take it for a stale one."""
        if self._marker is not None:
            self.set_applied_offsets({})

    def clear_applied_offsets(self) -> None:
        """Remove the marker (synced): the next start rebuilds."""
        db = self._rdb()
        wb = WriteBatch(raw_mode=True)
        wb.delete(_MARKER_KEY, self._meta_handle)
        wopt = WriteOptions()
        wopt.sync = True
        db.write(wb, wopt)
        self._marker = None

    # -- restore ---------------------------------------------------------------------------
    def rebuild(
        self,
        records: Iterable[tuple[int, bytes | None]],
        offsets: Mapping[int, int] | None = None,
        *,
        batch: int = 10_000,
    ) -> int:
        """Wipe the store and apply ``records`` (ident, record or None) in order, e.g. the
        changelog partitions read from their start; then write ``offsets`` as the marker:
        for every assigned partition, the end offset it was read up to minus one (not the last
        record's offset: a transaction's commit marker takes an offset too; an empty partition
        gets its end offset minus one as well). Returns the number of records applied.

        The marker is removed first and written last, after the data is flushed to SST files,
        so a crash half-way leaves a store without marker (rebuilt again at the next start).
        The data goes without the WAL: it is either flushed or, after a crash, not trusted."""
        self.clear_applied_offsets()
        self._wipe()
        db = self._rdb()
        wopt = WriteOptions()
        # a property in rocksdict 0.3.29 (its stub says a method)
        wopt.disable_wal = True  # type: ignore[method-assign,assignment]
        n = 0
        wb = WriteBatch(raw_mode=True)
        for ident, value in records:
            key = _key(ident)
            if value is None:
                wb.delete(key)
            else:
                _check_value(value)
                wb.put(key, value)
            n += 1
            if len(wb) >= batch:
                db.write(wb, wopt)
                wb = WriteBatch(raw_mode=True)
        if not wb.is_empty():
            db.write(wb, wopt)
        db.flush(wait=True)
        self._marker = None
        wb = WriteBatch(raw_mode=True)
        marker = _Marker(dict(offsets or {}))
        wb.put(_MARKER_KEY, marker.encode(), self._meta_handle)
        sync = WriteOptions()
        sync.sync = True
        db.write(wb, sync)
        self._marker = marker
        return n

    def _wipe(self) -> None:
        """Delete the directory and open an empty store in its place (frees the disk at once,
        unlike a range delete that waits for compaction)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)
        self._open()

    # -- upkeep and figures -----------------------------------------------------------------
    def compact(self) -> None:
        """Full compaction into the bottom level (ZSTD): the smallest disk footprint."""
        opt = CompactOptions()
        opt.set_bottommost_level_compaction(BottommostLevelCompaction.force_optimized())
        opt.set_exclusive_manual_compaction(True)
        self._rdb().compact_range(None, None, opt)

    def flush(self) -> None:
        """Write the memtables of both column families to SST files (the WAL is then deleted
        and the next open has nothing to replay)."""
        db = self._rdb()
        db.flush(wait=True)
        meta = db.get_column_family(META_CF)
        try:
            meta.flush(wait=True)
        finally:
            meta.close()
            del meta

    def count_estimate(self) -> int:
        """RocksDB's estimate of the records (exact after a compaction without deletes)."""
        return self._rdb().property_int_value("rocksdb.estimate-num-keys") or 0

    def disk_bytes(self) -> int:
        """Bytes of every file in the directory (SSTs, WAL, MANIFEST, logs)."""
        total = 0
        for entry in os.scandir(self.path):
            if entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        return total

    def memory(self) -> dict[str, int]:
        """RocksDB's own memory figures (bytes): block cache use and what it pins, memtables,
        SST readers outside the cache."""
        db = self._rdb()

        def prop(name: str) -> int:
            return db.property_int_value(name) or 0

        return {
            "block_cache_usage": self._cache.get_usage(),
            "block_cache_pinned": self._cache.get_pinned_usage(),
            "block_cache_capacity": self.tuning.cache_bytes,
            "memtables": prop("rocksdb.cur-size-all-mem-tables"),
            "table_readers": prop("rocksdb.estimate-table-readers-mem"),
        }


@dataclass(frozen=True)
class _Marker:
    offsets: dict[int, int]
    written_at: float = field(default_factory=time.time)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "offsets": {str(p): o for p, o in sorted(self.offsets.items())},
                "written_at": self.written_at,
            }
        ).encode()

    @staticmethod
    def decode(raw: bytes | None) -> _Marker | None:
        if raw is None:
            return None
        d = json.loads(raw)
        return _Marker({int(p): int(o) for p, o in d["offsets"].items()}, float(d["written_at"]))

    @staticmethod
    def merged(old: _Marker | None, offsets: Mapping[int, int]) -> _Marker:
        merged = dict(old.offsets) if old is not None else {}
        merged.update({int(p): int(o) for p, o in offsets.items()})
        return _Marker(merged)


def _key(ident: int) -> bytes:
    return int(ident).to_bytes(8, "big")


def _check_value(value: bytes) -> None:
    if len(value) > MAX_VALUE_BYTES:
        raise ValueError(
            f"a recipient record has at most {MAX_VALUE_BYTES} bytes, not {len(value)}"
        )


# -- the restore decision --------------------------------------------------------------------


@dataclass(frozen=True)
class RestorePlan:
    """What the worker does with its store when changelog partitions are assigned."""

    #: True: wipe and read every partition from ``start``; False: catch up from ``start``
    rebuild: bool
    #: partition -> first changelog offset to read (partitions already at their end omitted)
    start: dict[int, int]
    reason: str


def restore_plan(
    applied: Mapping[int, int] | None,
    bounds: Mapping[int, tuple[int, int]],
    *,
    marker_age_s: float | None = None,
    max_marker_age_s: float = MAX_MARKER_AGE_S,
) -> RestorePlan:
    """Decide between a catch-up and a rebuild.

    ``applied``: :meth:`RocksRecipientStore.applied_offsets`; ``bounds``: per assigned changelog
    partition, (its first offset, its end offset = the offset the next record gets), as the
    consumer's ``beginning_offsets`` / ``end_offsets`` say; ``marker_age_s``: seconds since the
    marker was written (:meth:`RocksRecipientStore.marker_written_at`)."""

    def rebuild(reason: str) -> RestorePlan:
        return RestorePlan(
            True, {p: lo for p, (lo, hi) in sorted(bounds.items()) if hi > lo}, reason
        )

    if applied is None:
        return rebuild("no marker: a new or lost directory, or an unfinished rebuild")
    if set(applied) != set(bounds):
        return rebuild(
            f"the store covers partitions {sorted(applied)}, assigned are {sorted(bounds)}"
        )
    if marker_age_s is not None and marker_age_s > max_marker_age_s:
        return rebuild(
            f"the marker is {marker_age_s:.0f} s old (> {max_marker_age_s:.0f} s: tombstones "
            "may have been compacted away since)"
        )
    start: dict[int, int] = {}
    for p, (lo, hi) in sorted(bounds.items()):
        nxt = applied[p] + 1
        if nxt > hi:
            return rebuild(f"partition {p}: the marker {applied[p]} is past its end {hi}")
        if nxt < lo:
            return rebuild(f"partition {p}: records {nxt}..{lo - 1} were deleted unread")
        if nxt < hi:
            start[p] = nxt
    return RestorePlan(False, start, "catch up" if start else "up to date")
