"""``repmon ingest --follow``: tail one growing log to Kafka, exactly once across restarts.

    repmon ingest --format postfix --follow /var/log/mail.log   # tail it, across rotation

:class:`Follower` follows one log: stat polling (:class:`Tail`), rename and copytruncate
rotation, a checkpoint file written atomically after the broker acknowledged everything up to
it, and every record it produces marked with a ``repmon-follow`` header (source id, generation,
inode, record number, item), so that after a crash the records the broker already has beyond
the checkpoint are found (:func:`scan_headers`) and not sent again: exactly once
(docs/ingest.md, "Following a log"). The command itself, its options and the one-shot
conversion are ``streams.cli.ingest``, which re-exports the names imported from it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import signal
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import typer

from models.ingest.formats import FORMATS, Format, Parser

if TYPE_CHECKING:
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.producer.future import FutureRecordMetadata

    from streams.worker.settings import Settings

#: bytes read at a time
BLOCK = 1 << 20
#: bytes of a file's start that identify its content (with the device and inode)
FP_MAX = 4096
#: the header on every record ``--follow`` produces:
#: ``<source id>:<generation>:<inode>:<record number>:<item>``
FOLLOW_HEADER = "repmon-follow"
#: rotated files with these suffixes are compressed: not read
COMPRESSED = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".z", ".zip", ".br")
#: bytes read from the log before the records are handed on
READ_LIMIT = 1 << 20
#: events and dead letters sent but not acknowledged before reading waits for the broker
MAX_UNACKED = 20_000
#: seconds to wait for the broker's acknowledgement of a record (kafka-python's delivery timeout
#: is 120 s)
ACK_TIMEOUT_S = 150.0
#: seconds between two refreshes of the scan start (the topics' end offsets) while idle
REFRESH_S = 30.0
#: the format's records that a restarted follower feeds its parser again, without sending,
#: before it resumes: formats whose parser keeps state between records (Postfix's queue ids,
#: PowerMTA's header line)
WARM_UP: dict[str, Callable[[bytes], bool]] = {
    "postfix": lambda rec: True,
    "powermta": lambda rec: rec.lstrip(b'"')[:4].lower() == b"type",
}


def _fp(head: bytes) -> str:
    return hashlib.blake2b(head, digest_size=16).hexdigest()


@dataclass(eq=False)
class Gen:
    """A generation of the followed log: one file read from its first byte (the new file after
    a rename, the same inode again after copytruncate). Numbers only grow; the inode and the
    number together name it in the ``repmon-follow`` header."""

    n: int
    dev: int
    ino: int
    #: the file's first bytes (at most FP_MAX) as read: its fingerprint
    head: bytes = b""
    #: the identity of the generation before it (a restart warms the parser up on it)
    prev: dict[str, Any] | None = None

    def ident(self, size: int | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "dev": self.dev,
            "ino": self.ino,
            "fp": _fp(self.head),
            "fp_len": len(self.head),
        }
        if size is not None:
            d["size"] = size
        return d


@dataclass
class FollowState:
    """The checkpoint file: where the acknowledged prefix of the log ends."""

    source_id: str
    path: str
    format: str
    #: the generation, file identity (device, inode, fingerprint), byte offset and record count
    #: of the end of the last complete record whose events and dead letters the broker acked
    gen: int
    file: dict[str, Any]
    offset: int
    records: int
    #: the previous generation's identity and size (warm-up), or None
    prev: dict[str, Any] | None
    #: ``topic:partition`` -> offset from which a restart looks for this source's records
    scan_from: dict[str, int] = field(default_factory=dict)
    written_at: float = 0.0
    version: int = 1


def load_state(path: Path) -> FollowState | None:
    try:
        doc = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, orjson.JSONDecodeError) as exc:
        raise typer.BadParameter(f"unreadable checkpoint {path}: {exc}") from exc
    try:
        return FollowState(**doc)
    except TypeError as exc:
        raise typer.BadParameter(f"not a repmon --follow checkpoint: {path} ({exc})") from exc


def write_state(path: Path, st: FollowState) -> None:
    """Atomically: a temporary file beside it, fsync, rename over it, fsync the directory."""
    st.written_at = time.time()
    tmp = path.with_name(path.name + ".tmp")
    data = orjson.dumps(asdict(st), option=orjson.OPT_INDENT_2)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def siblings(path: Path) -> list[Path]:
    """Uncompressed files beside ``path`` named like its rotations (``mail.log.1``,
    ``mail.log-20261201``, ``mail.log_old``)."""
    out: list[Path] = []
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return out
    n = len(path.name)
    for p in entries:
        name = p.name
        if (
            len(name) > n + 1
            and name.startswith(path.name)
            and name[n] in ".-_"
            and not name.lower().endswith(COMPRESSED)
            and p.is_file()
        ):
            out.append(p)
    return sorted(out)


def _mtime(p: Path) -> float:
    try:
        return p.stat().st_mtime
    except OSError:
        return 0.0


def _matches(fd: int, ident: Mapping[str, Any]) -> bool:
    """Whether the open file starts with the fingerprinted bytes."""
    n = int(ident["fp_len"])
    head = os.pread(fd, n, 0) if n else b""
    return len(head) == n and _fp(head) == ident["fp"]


def locate(path: Path, ident: Mapping[str, Any], size: int) -> tuple[int, bool, Path] | None:
    """The file a checkpoint names, with at least ``size`` bytes: ``path`` itself (same inode and
    first bytes), a rotation of it (same inode, renamed), or a copy of it (same first bytes:
    copytruncate). Returns (open fd, whether it is not ``path`` any more, its name)."""
    cands = [path, *siblings(path)]
    fallback: tuple[int, bool, Path] | None = None
    for i, p in enumerate(cands):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        st = os.fstat(fd)
        same_inode = (st.st_dev, st.st_ino) == (ident["dev"], ident["ino"])
        ok = st.st_size >= size and _matches(fd, ident)
        if ok and same_inode:
            if fallback is not None:
                os.close(fallback[0])
            return fd, i > 0, p
        if ok and int(ident["fp_len"]) > 0 and fallback is None:
            # the same content in another inode: a copytruncate copy, or the log copied over
            fallback = (fd, i > 0, p)
            continue
        os.close(fd)
    return fallback


def find_copy(path: Path, head: bytes, size: int, not_ino: int) -> tuple[int, Path] | None:
    """A rotated copy of the file (another inode, the same first bytes, at least ``size``)."""
    if not head:
        return None
    ident = {"fp": _fp(head), "fp_len": len(head)}
    for p in siblings(path):
        try:
            fd = os.open(p, os.O_RDONLY)
        except OSError:
            continue
        st = os.fstat(fd)
        if st.st_ino != not_ino and st.st_size >= size and _matches(fd, ident):
            return fd, p
        os.close(fd)
    return None


def last_line_end(fd: int, size: int) -> int:
    """The offset after the last newline before ``size`` (0 without one)."""
    pos = size
    while pos > 0:
        lo = max(0, pos - BLOCK)
        i = os.pread(fd, pos - lo, lo).rfind(b"\n")
        if i >= 0:
            return lo + i + 1
        pos = lo
    return 0


@dataclass
class Batch:
    """Records of one generation, numbered from ``first``; ``end`` the offset after them. A
    batch without records at offset 0 marks the switch to a new generation."""

    gen: Gen
    first: int
    recs: list[bytes]
    end: int


class Tail:
    """The records of a growing file across rotation, by stat polling (no inotify).

    A partial last record stays in the buffer until it is complete, or until its file is
    rotated away (then it is final). Rename rotation (``mail.log`` -> ``mail.log.1``, a new
    ``mail.log``): the old file is read to its end once the new one has data (the writer has
    moved on), then the new one from byte 0. Copytruncate (the same inode shrinks, or its first
    bytes change): what was not read yet is taken from the rotated copy when one is found (the
    same first bytes), then the file again from byte 0.
    """

    def __init__(
        self, path: Path, fmt: Format, max_record: int, say: Callable[[str], None]
    ) -> None:
        self.path = path
        self.split = fmt.split
        self.max_record = max_record
        self.say = say
        self.fd: int | None = None
        self.gen = Gen(-1, 0, 0)
        self.base = 0
        self.buf = b""
        self.recno = 0
        #: the open file is a rotated one: read it to its end, then open ``path``
        self.draining = False
        #: with no file open: the number and predecessor of the next generation
        self.next_gen = 0
        self.next_prev: dict[str, Any] | None = None

    @property
    def pos(self) -> int:
        return self.base + len(self.buf)

    def open(self, fd: int, gen: Gen, offset: int, recno: int, draining: bool = False) -> None:
        self.fd, self.gen, self.base, self.buf, self.recno = fd, gen, offset, b"", recno
        self.draining = draining

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def poll(self, limit: int = READ_LIMIT) -> tuple[list[Batch], bool]:
        """What is new: batches of complete records (and generation switches), and whether any
        byte was read (False: the caller may sleep)."""
        out: list[Batch] = []
        if self.fd is None and not self._open_next(out):
            return out, False
        n_buf, head = len(self.buf), self.gen.head
        got = self._read(limit)
        if not self.draining and self._rewritten():
            # truncated (before or while we read): what was just read may be the new content
            self.buf, self.gen.head = self.buf[:n_buf], head
            self._truncated(out)
            return out, True
        if got:
            out += self._cut(False)
            return out, True
        if self.draining:
            self._finish(out)
            return out, True
        if self._renamed():
            self._read(None)  # what the writer wrote before it moved to the new file
            self.say(f"{self.path} was rotated: finished the old file at byte {self.pos:,}")
            self._finish(out)
            return out, True
        return out, bool(out)

    def _read(self, limit: int | None) -> int:
        assert self.fd is not None
        got = 0
        parts: list[bytes] = []
        pos = self.pos
        while limit is None or got < limit:
            b = os.pread(self.fd, BLOCK, pos)
            if not b:
                break
            if pos < FP_MAX and len(self.gen.head) == pos:
                self.gen.head += b[: FP_MAX - pos]
            parts.append(b)
            pos += len(b)
            got += len(b)
        if parts:
            self.buf += b"".join(parts)
        return got

    def _cut(self, final: bool) -> list[Batch]:
        recs, used = self.split(self.buf, final)
        if not recs and not final and len(self.buf) > self.max_record + BLOCK:
            recs, used = self.split(self.buf, True)  # no end in sight: too_large, not unbounded
        if used == 0 and not recs:
            return []
        b = Batch(self.gen, self.recno, recs, self.base + used)
        self.recno += len(recs)
        self.base += used
        self.buf = self.buf[used:]
        return [b]

    def _rewritten(self) -> bool:
        """The open file shrank below what was read, or its first bytes changed: copytruncate
        (or ``> file``), maybe followed by new lines."""
        assert self.fd is not None
        head = self.gen.head
        if os.fstat(self.fd).st_size < self.pos:
            return True
        return bool(head) and os.pread(self.fd, len(head), 0) != head

    def _renamed(self) -> bool:
        """``path`` is another file now, with data (the writer has reopened its log). A new
        empty file, or none yet, is waited for: the writer may still append to the old one."""
        assert self.fd is not None
        cur = os.fstat(self.fd)
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (st.st_dev, st.st_ino) != (cur.st_dev, cur.st_ino) and st.st_size > 0

    def _finish(self, out: list[Batch]) -> None:
        """The end of this generation's file: the rest is final; then the next file."""
        out += self._cut(True)
        self.next_gen = self.gen.n + 1
        self.next_prev = self.gen.ident(self.pos)
        self.close()
        self._open_next(out)

    def _open_next(self, out: list[Batch]) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return False
        st = os.fstat(fd)
        gen = Gen(self.next_gen, st.st_dev, st.st_ino, prev=self.next_prev)
        self.open(fd, gen, 0, 0)
        out.append(Batch(gen, 0, [], 0))
        return True

    def _truncated(self, out: list[Batch]) -> None:
        assert self.fd is not None
        pos = self.pos
        copy = find_copy(self.path, self.gen.head, pos, self.gen.ino)
        if copy is not None:
            cfd, name = copy
            try:
                while b := os.pread(cfd, BLOCK, self.pos):
                    self.buf += b
            finally:
                os.close(cfd)
            self.say(f"{self.path} was truncated (copytruncate): read the rest from {name}")
        else:
            self.say(
                f"warning: {self.path} was truncated and no rotated copy was found: what was "
                f"written after byte {pos:,} before the truncation is not read"
            )
        out += self._cut(True)
        fd = self.fd
        st = os.fstat(fd)
        gen = Gen(self.gen.n + 1, st.st_dev, st.st_ino, prev=self.gen.ident(self.pos))
        self.open(fd, gen, 0, 0)
        out.append(Batch(gen, 0, [], 0))


@dataclass
class _Pending:
    gen: Gen
    end: int
    recno: int
    futs: list[FutureRecordMetadata]


class Follower:
    """``repmon ingest --follow``: one log to Kafka, exactly once across restarts.

    Every event and dead letter carries the header ``repmon-follow: <source id>:<generation>:
    <inode>:<record>:<item>``. The checkpoint (generation, file identity, offset, record count)
    is written atomically once every record before it was acknowledged, with the Kafka offsets
    from which a restart must look for records of this source. After a crash the follower reads
    those partitions from there to their end, collects the headers of its own records, resumes
    at the checkpoint and does not send what the broker already has: nothing lost, nothing
    twice.
    """

    def __init__(
        self,
        path: Path,
        fmt: str,
        parser: Parser,
        state_path: Path,
        poll_s: float,
        from_end: bool,
        settings: Settings,
        say: Callable[[str], None],
    ) -> None:
        self.path = path
        self.fmt = fmt
        self.format = FORMATS[fmt]
        self.parser = parser
        self.state_path = state_path
        self.poll_s = poll_s
        self.from_end = from_end
        self.settings = settings
        self.say = say
        self.pend: deque[_Pending] = deque()
        self.unacked = 0
        #: (topic, partition) -> offset of the newest acked record behind the checkpoint
        self.acked: dict[tuple[str, int], int] = {}
        self.ck: tuple[Gen, int, int] | None = None
        self.written: tuple[int, int, int] | None = None
        self.last_write = 0.0
        self.last_refresh = time.monotonic()
        #: marks (``gen:ino:record:item``) of this source's records the broker has beyond the
        #: checkpoint, and the (generation, record count) the checkpoint must pass to be beyond
        #: them all
        self.skip: set[bytes] = set()
        self.skip_until: tuple[int, int] | None = None
        self.stats: Counter[str] = Counter()
        self.reasons: Counter[str] = Counter()
        self.state: FollowState | None = None
        self._prod: KafkaProducer | None = None
        self._meta: KafkaConsumer | None = None

    # -- Kafka ----------------------------------------------------------------------------------

    @property
    def prod(self) -> KafkaProducer:
        assert self._prod is not None
        return self._prod

    def _partitions(self) -> list[TopicPartition]:
        from kafka import TopicPartition

        assert self._meta is not None
        out: list[TopicPartition] = []
        for topic in (self.settings.topic_events, self.settings.topic_dlq):
            parts: set[int] | None = None
            deadline = time.monotonic() + 30
            while not parts:
                self._meta.topics()  # refreshes the metadata
                parts = self._meta.partitions_for_topic(topic)
                if not parts and time.monotonic() > deadline:
                    raise TimeoutError(f"no partitions for {topic}")
            out += [TopicPartition(topic, p) for p in sorted(parts)]
        return out

    def _end_offsets(self) -> dict[str, int]:
        assert self._meta is not None
        ends = self._meta.end_offsets(self._partitions())
        return {f"{tp.topic}:{tp.partition}": int(o) for tp, o in ends.items()}

    def _recover(self, st: FollowState) -> None:
        """The records of this source beyond the checkpoint that the broker already has."""

        assert self._meta is not None
        starts: dict[TopicPartition, int] = {}
        missing: list[TopicPartition] = []
        for tp in self._partitions():
            o = st.scan_from.get(f"{tp.topic}:{tp.partition}")
            if o is None:
                missing.append(tp)
            else:
                starts[tp] = o
        if missing:  # partitions added since: from the checkpoint's time, with a margin
            t_ms = int((st.written_at - 300) * 1000)
            found = self._meta.offsets_for_times(dict.fromkeys(missing, t_ms))
            ends = self._meta.end_offsets(missing)
            for tp in missing:
                ot = found.get(tp)
                starts[tp] = ot.offset if ot is not None else ends[tp]
        t0 = time.monotonic()
        keys, read = scan_headers(
            self.settings.kafka_bootstrap, starts, FOLLOW_HEADER, f"{st.source_id}:".encode()
        )
        self.skip = keys
        marks = [k.split(b":") for k in keys]
        self.skip_until = max(((int(m[0]), int(m[2]) + 1) for m in marks), default=None)
        self.say(
            f"recovery: read {read:,} records after the checkpoint's offsets in "
            f"{time.monotonic() - t0:.1f} s; {len(keys):,} of this source's records are in "
            "Kafka already and will not be sent again"
        )

    # -- the log --------------------------------------------------------------------------------

    def _warm(self, fd: int, upto: int | None) -> int:
        """Feed the parser the records of ``fd`` up to ``upto`` without sending anything."""
        keep = WARM_UP.get(self.fmt)
        if keep is None:
            return 0
        n = pos = 0
        buf = b""
        while upto is None or pos < upto:
            b = os.pread(fd, BLOCK if upto is None else min(BLOCK, upto - pos), pos)
            if not b:
                break
            pos += len(b)
            buf += b
            recs, used = self.format.split(buf, False)
            buf = buf[used:]
            for r in recs:
                if keep(r):
                    self.parser.feed(r)
                    n += 1
        for r in self.format.split(buf, True)[0]:
            if keep(r):
                self.parser.feed(r)
                n += 1
        return n

    def _wait_open(self, stop: threading.Event) -> int | None:
        told = False
        while not stop.is_set():
            try:
                return os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                if not told:
                    self.say(f"waiting for {self.path} to appear")
                    told = True
                stop.wait(self.poll_s)
        return None

    def _start(self, stop: threading.Event) -> Tail | None:
        tail = Tail(self.path, self.format, self.parser.max_record_bytes, self.say)
        st = load_state(self.state_path)
        if st is not None and (st.path != str(self.path.absolute()) or st.format != self.fmt):
            raise typer.BadParameter(
                f"{self.state_path} is the checkpoint of {st.path} ({st.format}), not of "
                f"{self.path.absolute()} ({self.fmt}): give another --state"
            )
        if st is None:
            fd = self._wait_open(stop)
            if fd is None:
                return None
            s = os.fstat(fd)
            offset = last_line_end(fd, s.st_size) if self.from_end else 0
            gen = Gen(0, s.st_dev, s.st_ino, head=os.pread(fd, min(FP_MAX, offset), 0))
            self.state = FollowState(
                source_id=uuid.uuid4().hex,
                path=str(self.path.absolute()),
                format=self.fmt,
                gen=0,
                file=gen.ident(),
                offset=offset,
                records=0,
                prev=None,
                scan_from=self._end_offsets(),
            )
            write_state(self.state_path, self.state)
            self._warm(fd, offset)
            tail.open(fd, gen, offset, 0)
            self.written = (0, offset, 0)
            self.ck = (gen, offset, 0)
            self.say(
                f"following {self.path} from byte {offset:,} (new source {self.state.source_id})"
            )
            return tail
        self.state = st
        self._recover(st)
        self.written = (st.gen, st.offset, st.records)
        found = locate(self.path, st.file, st.offset)
        if found is None:
            self.say(
                f"warning: the checkpoint's file ({st.path} generation {st.gen}, byte "
                f"{st.offset:,}) is gone (deleted or compressed): what it held after that "
                f"byte is not read; following {self.path} from byte 0"
            )
            tail.next_gen = st.gen + 1
            tail.next_prev = dict(st.file, size=st.offset)
            return tail  # (no checkpoint to refresh from until the path's file is read)
        fd, draining, name = found
        if draining:
            mtime = os.fstat(fd).st_mtime
            newer = [p.name for p in siblings(self.path) if p != name and _mtime(p) > mtime]
            if newer:
                self.say(
                    f"warning: rotated while stopped more than once? {', '.join(newer)} "
                    f"(newer than {name.name}, which holds the checkpoint) will not be read"
                )
        head = os.pread(fd, max(int(st.file["fp_len"]), min(FP_MAX, st.offset)), 0)
        gen = Gen(st.gen, int(st.file["dev"]), int(st.file["ino"]), head=head, prev=st.prev)
        t0 = time.monotonic()
        warmed = 0
        if st.prev is not None and self.fmt in WARM_UP:
            prev = locate(self.path, st.prev, int(st.prev.get("size", 0)))
            if prev is not None:
                warmed += self._warm(prev[0], int(st.prev.get("size", 0)) or None)
                os.close(prev[0])
        warmed += self._warm(fd, st.offset)
        if warmed:
            self.say(f"warm-up: {warmed:,} records fed again in {time.monotonic() - t0:.1f} s")
        tail.open(fd, gen, st.offset, st.records, draining=draining)
        self.ck = (gen, st.offset, st.records)
        self.say(
            f"resuming {name} at byte {st.offset:,} (record {st.records:,}, generation "
            f"{st.gen})" + (": a rotated file, then the new one" if draining else "")
        )
        return tail

    # -- sending --------------------------------------------------------------------------------

    def _send(self, b: Batch) -> None:
        from streams.cli.ingest import event_key
        from streams.worker.wire import redacted_dlq_record

        st = self.state
        assert st is not None
        futs: list[FutureRecordMetadata] = []
        gen = b.gen
        prefix = f"{gen.n}:{gen.ino}:"
        src = f"{st.source_id}:".encode()
        topic_events, topic_dlq = self.settings.topic_events, self.settings.topic_dlq
        for i, rec in enumerate(b.recs):
            recno = b.first + i
            events, rejs = self.parser.feed(rec)
            self.stats["records"] += 1
            item = 0
            for ev in events:
                mark = f"{prefix}{recno}:{item}".encode()
                item += 1
                if mark in self.skip:
                    self.stats["already_sent"] += 1
                    continue
                futs.append(
                    self.prod.send(
                        topic_events,
                        key=event_key(ev),
                        value=orjson.dumps(ev),
                        headers=[(FOLLOW_HEADER, src + mark)],
                    )
                )
                self.stats["events"] += 1
            for r in rejs:
                mark = f"{prefix}{recno}:{item}".encode()
                item += 1
                self.reasons[r.reason] += 1
                if mark in self.skip:
                    self.stats["already_sent"] += 1
                    continue
                value = redacted_dlq_record(
                    r, rec, str(self.path), recno, self.fmt, file={"gen": gen.n, "ino": gen.ino}
                )
                futs.append(
                    self.prod.send(topic_dlq, value=value, headers=[(FOLLOW_HEADER, src + mark)])
                )
                self.stats["dead_letters"] += 1
        self.pend.append(_Pending(gen, b.end, b.first + len(b.recs), futs))
        self.unacked += len(futs)

    def _settle(self, block: bool) -> None:
        """Pop the acknowledged prefix; raise the first delivery error."""
        while self.pend:
            p = self.pend[0]
            for f in p.futs:
                if not f.is_done:
                    if not block:
                        return
                    f.get(timeout=ACK_TIMEOUT_S)
                if f.failed():
                    raise f.exception
            self.pend.popleft()
            self.unacked -= len(p.futs)
            for f in p.futs:
                md = f.value
                self.acked[(md.topic, md.partition)] = md.offset
            self.ck = (p.gen, p.end, p.recno)

    def _checkpoint(self, force: bool = False) -> None:
        st = self.state
        if self.ck is None or st is None:
            return
        now = time.monotonic()
        if not force and now - self.last_write < self.poll_s:
            return
        gen, end, recno = self.ck
        if (gen.n, end, recno) == self.written and not self.acked:
            return
        for (topic, part), off in self.acked.items():
            st.scan_from[f"{topic}:{part}"] = off + 1
        st.gen, st.file, st.offset, st.records, st.prev = gen.n, gen.ident(), end, recno, gen.prev
        write_state(self.state_path, st)
        self.acked.clear()
        self.written = (gen.n, end, recno)
        self.last_write = now

    def _refresh(self, force: bool = False) -> None:
        """Nothing in flight: a restart need not look before the topics' current ends."""
        st = self.state
        if st is None or self.pend or self.ck is None:
            return
        if self.skip_until is not None:
            if (self.ck[0].n, self.ck[2]) < self.skip_until:
                return  # records of the run before are still ahead: a restart must find them
            self.skip, self.skip_until = set(), None
        if not force and time.monotonic() - self.last_refresh < REFRESH_S:
            return
        self.last_refresh = time.monotonic()
        ends = self._end_offsets()
        if ends != st.scan_from:
            st.scan_from = ends
            write_state(self.state_path, st)
            self.last_write = time.monotonic()

    def run(self, stop: threading.Event) -> int:
        from kafka import KafkaConsumer
        from kafka.errors import KafkaError

        from streams.cli.ingest import _producer
        from streams.worker.topics import ensure_topics

        ensure_topics(self.settings)
        self._meta = KafkaConsumer(
            bootstrap_servers=self.settings.kafka_bootstrap, enable_auto_commit=False
        )
        tail: Tail | None = None
        try:
            tail = self._start(stop)
            if tail is None:
                return 0
            self._prod = _producer(self.settings)
            while not stop.is_set():
                batches, busy = tail.poll()
                for b in batches:
                    self._send(b)
                self._settle(block=self.unacked > MAX_UNACKED)
                self._checkpoint()
                if not busy:
                    self._settle(block=False)
                    self._checkpoint(force=not self.pend)
                    self._refresh()
                    stop.wait(self.poll_s)
            self.prod.flush(timeout=ACK_TIMEOUT_S)
            self._settle(block=True)
            self._checkpoint(force=True)
            self._refresh(force=True)
            return 0
        except (KafkaError, TimeoutError) as exc:
            self.say(
                f"error: {type(exc).__name__}: {exc}; the checkpoint stays where all was acked"
            )
            return 1
        finally:
            if tail is not None:
                tail.close()
            if self._prod is not None:
                with contextlib.suppress(Exception):
                    self._prod.close(timeout=10)
            self._meta.close()


def scan_headers(
    bootstrap: str,
    starts: Mapping[TopicPartition, int],
    header: str,
    prefix: bytes,
    timeout_s: float = 900.0,
) -> tuple[set[bytes], int]:
    """The values (without ``prefix``) of ``header`` on the records of each partition from its
    start offset to its current end whose value starts with ``prefix``; and how many records
    were read. A start past the end (a topic made again) reads the partition from its start."""
    from kafka import KafkaConsumer

    found: set[bytes] = set()
    if not starts:
        return found, 0
    c = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )
    n = 0
    try:
        tps = list(starts)
        ends = c.end_offsets(tps)
        begins = c.beginning_offsets(tps)
        todo: dict[TopicPartition, int] = {}
        for tp in tps:
            s = starts[tp]
            if s > ends[tp]:
                s = begins[tp]
            s = max(s, begins[tp])
            if s < ends[tp]:
                todo[tp] = s
        if not todo:
            return found, 0
        c.assign(list(todo))
        for tp, s in todo.items():
            c.seek(tp, s)
        deadline = time.monotonic() + timeout_s
        plen = len(prefix)
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {len(todo)} partitions to their end took too long")
            for tp, recs in c.poll(timeout_ms=500, max_records=50_000).items():
                end = ends[tp]
                for r in recs:
                    if r.offset >= end:
                        break
                    n += 1
                    for k, v in r.headers:
                        if k == header and v is not None and v[:plen] == prefix:
                            found.add(bytes(v[plen:]))
            for tp in list(todo):
                if c.position(tp) >= ends[tp]:
                    del todo[tp]
                    c.pause(tp)
    finally:
        c.close()
    return found, n


def run_follow(
    path: Path,
    fmt: str,
    parser: Parser,
    state_path: Path,
    poll_s: float,
    from_end: bool,
    quiet: bool,
) -> int:
    """Follow ``path`` until SIGTERM or SIGINT; the exit code."""
    from streams.worker.settings import get_settings

    def say(msg: str) -> None:
        if not quiet or msg.startswith(("warning", "error")):
            typer.echo(f"repmon ingest --follow: {msg}", err=True)

    state_path.parent.mkdir(parents=True, exist_ok=True)
    lock_fd = os.open(
        state_path.with_name(state_path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600
    )
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock_fd)
        say(f"error: another follower holds {state_path}")
        return 2
    stop = threading.Event()
    old = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    fol = Follower(path, fmt, parser, state_path, poll_s, from_end, get_settings(), say)
    try:
        code = fol.run(stop)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        os.close(lock_fd)
    st = fol.stats
    rej = ", ".join(f"{k}: {v}" for k, v in fol.reasons.most_common()) or "none"
    say(
        f"stopped: {st['records']:,} records, {st['events']:,} events to Kafka, "
        f"{st['dead_letters']:,} dead letters ({rej}), {st['already_sent']:,} found in Kafka "
        "already (not sent again)"
    )
    return code
