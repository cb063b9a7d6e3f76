"""``repmon ingest --follow``: tailing a growing log across rotation, with checkpoints after the
broker's acks, exactly once across restarts (a kill -9 included).

The Tail tests need no broker. The others run ``repmon ingest --follow`` as a subprocess on
private topics and compare what Kafka holds with what the parser makes of the log's lines.
"""

from __future__ import annotations

import base64
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from models.ingest.formats import FORMATS, make_parser
from streams.cli.ingest import FOLLOW_HEADER, Tail, last_line_end
from tests.conftest import REPO, private_topics

#: an address that is not redacted (the parsers' own recipient@ and the dead letters' redacted@)
CLEAR = re.compile(
    rb"(?<![A-Za-z0-9._%+-])(?!redacted@|recipient@)[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+"
)

# -- log lines --------------------------------------------------------------------------------


def postfix_lines(lo: int, hi: int, bad_every: int = 0) -> bytes:
    """Postfix lines for messages lo..hi-1: a qmgr ``from=`` line (the sender, remembered by
    queue id) and a delivery line each; every ``bad_every``-th message also a broken line with
    an address in it (a dead letter)."""
    out: list[str] = []
    for i in range(lo, hi):
        q = f"{i:010X}"
        ts = f"2026-11-27T{10 + (i // 3600) % 12:02d}:{(i // 60) % 60:02d}:{i % 60:02d}.{i % 997:06d}+00:00"
        status, reply, dsn = [
            ("sent", "250 2.0.0 OK", "2.0.0"),
            ("deferred", "451 4.7.1 try again later", "4.7.1"),
            ("bounced", "550 5.1.1 <user{i}@d.example.org>: user unknown", "5.1.1"),
        ][i % 3]
        reply = reply.replace("{i}", str(i))
        dom = f"d{i % 11}.example.org"
        out.append(
            f"{ts} mx1 postfix/qmgr[100]: {q}: from=<bounce@news{i % 5}.example.com>, "
            "size=1000, nrcpt=1 (queue active)"
        )
        out.append(
            f"{ts} mx1 postfix/smtp[200]: {q}: to=<user{i}@{dom}>, relay=mx.{dom}[192.0.2.{i % 250}]:25, "
            f"delay=1, delays=0/0/0/1, dsn={dsn}, status={status} (host mx.{dom}[192.0.2.{i % 250}] "
            f"said: {reply} (in reply to RCPT TO command))"
        )
        if bad_every and i % bad_every == bad_every - 1:
            out.append(f"this is not syslog, mail for user{i}@{dom} went nowhere")
    return ("\n".join(out) + "\n").encode()


def expected(fmt: str, generations: list[bytes]) -> tuple[Counter[bytes], Counter[str]]:
    """The events (canonical JSON, sorted keys) and rejection reasons one parser makes of the
    log's generations read in order, each to its end."""
    parser = make_parser(fmt)
    events: Counter[bytes] = Counter()
    reasons: Counter[str] = Counter()
    for data in generations:
        for rec in FORMATS[fmt].split(data, True)[0]:
            evs, rejs = parser.feed(rec)
            events.update(orjson.dumps(e, option=orjson.OPT_SORT_KEYS) for e in evs)
            reasons.update(r.reason for r in rejs)
    return events, reasons


# -- the Tail, without a broker ----------------------------------------------------------------


def _append(rel: str, data: bytes) -> Callable[[Path], None]:
    def act(path: Path) -> None:
        with (path.parent / rel).open("ab") as fh:
            fh.write(data)

    return act


def _rename(suffix: str) -> Callable[[Path], None]:
    return lambda path: os.rename(path, path.with_name(path.name + suffix))


def _copytruncate(suffix: str) -> Callable[[Path], None]:
    def act(path: Path) -> None:
        shutil.copyfile(path, path.with_name(path.name + suffix))
        os.truncate(path, 0)

    return act


def _truncate(path: Path) -> None:
    os.truncate(path, 0)


def _unlink(path: Path) -> None:
    path.unlink()


W = lambda data: _append("mail.log", data)  # noqa: E731 (the table reads better)

#: steps of (actions on the directory, the (generation, record) the Tail gives after them)
TAIL_CASES: dict[str, list[tuple[list[Callable[[Path], None]], list[tuple[int, bytes]]]]] = {
    "a partial line waits for its newline": [
        ([W(b"a\nb")], [(0, b"a")]),
        ([W(b"b\n")], [(0, b"bb")]),
        ([W(b"c\r\n\n\nd\n")], [(0, b"c"), (0, b"d")]),
    ],
    "rename: the old file is finished first, its partial line final": [
        ([W(b"a\n")], [(0, b"a")]),
        (
            [W(b"b\nc"), _rename(".1"), W(b"d\n")],
            [(0, b"b"), (0, b"c"), (1, b"d")],
        ),
    ],
    "rename: no switch while the new file is empty (the writer is still on the old)": [
        ([W(b"a\n")], [(0, b"a")]),
        ([_rename(".1"), W(b""), _append("mail.log.1", b"b\n")], [(0, b"b")]),
        ([_append("mail.log.1", b"c\n"), W(b"d\n")], [(0, b"c"), (1, b"d")]),
    ],
    "rename: no new file yet": [
        ([W(b"a\n")], [(0, b"a")]),
        ([_rename(".1"), _append("mail.log.1", b"b\n")], [(0, b"b")]),
        ([W(b"c\n")], [(1, b"c")]),
    ],
    "copytruncate: the unread rest comes from the copy": [
        ([W(b"a\n")], [(0, b"a")]),
        ([W(b"b\nc"), _copytruncate(".1"), W(b"d\n")], [(0, b"b"), (0, b"c"), (1, b"d")]),
    ],
    "truncated without a copy: from byte 0": [
        ([W(b"aaaa\nbbbb\n")], [(0, b"aaaa"), (0, b"bbbb")]),
        ([_truncate, W(b"c\n")], [(1, b"c")]),
    ],
    "truncated and grown past the old position: the first bytes tell": [
        ([W(b"a1\n")], [(0, b"a1")]),
        ([_truncate, W(b"xx\nyyyy\n")], [(1, b"xx"), (1, b"yyyy")]),
    ],
    "deleted and made again": [
        ([W(b"a\n")], [(0, b"a")]),
        ([_unlink, W(b"b\n")], [(1, b"b")]),
    ],
}


def _collect(tail: Tail) -> list[tuple[int, bytes]]:
    out: list[tuple[int, bytes]] = []
    for _ in range(100):
        batches, busy = tail.poll()
        for b in batches:
            out += [(b.gen.n, r) for r in b.recs]
        if not busy:
            return out
    raise AssertionError("the Tail never ran dry")


@pytest.mark.parametrize("case", list(TAIL_CASES))
def test_tail_rotation(tmp_path: Path, case: str) -> None:
    path = tmp_path / "mail.log"
    path.write_bytes(b"")
    said: list[str] = []
    tail = Tail(path, FORMATS["postfix"], 1 << 20, said.append)
    try:
        for actions, want in TAIL_CASES[case]:
            for act in actions:
                act(path)
            assert _collect(tail) == want, said
    finally:
        tail.close()


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"", 0),
        (b"abc", 0),
        (b"a\n", 2),
        (b"a\nbc", 2),
        (b"a\nb\n", 4),
        (b"x" * 3_000_000 + b"\ny", 3_000_001),
    ],
)
def test_last_line_end(tmp_path: Path, data: bytes, end: int) -> None:
    p = tmp_path / "f"
    p.write_bytes(data)
    fd = os.open(p, os.O_RDONLY)
    try:
        assert last_line_end(fd, len(data)) == end
    finally:
        os.close(fd)


# -- with the broker ---------------------------------------------------------------------------


def wait_until(cond: Callable[[], bool], what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


class FollowProc:
    """``repmon ingest --follow`` as a subprocess."""

    def __init__(self, env: dict[str, str], log: Path, state: Path, fmt: str = "postfix") -> None:
        self.env, self.log, self.state, self.fmt = env, log, state, fmt
        self.err = state.with_name("follow.stderr")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.err.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    sys.executable, "-m", "streams.cli", "ingest", "-f", self.fmt, "--follow",
                    str(self.log), "--state", str(self.state), "--poll-interval", "0.05",
                ],
                env=self.env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip

    def stderr(self) -> str:
        return self.err.read_text(errors="replace") if self.err.exists() else ""

    def alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"the follower exited ({self.proc.returncode}):\n{self.stderr()}")
        return True

    def checkpoint(self) -> dict[str, object] | None:
        try:
            return dict(orjson.loads(self.state.read_bytes()))
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None

    def caught_up(self, offset: int | None = None, gen: int | None = None) -> None:
        """Wait until the checkpoint is at ``offset`` (default: the end) of the current file."""

        def ok() -> bool:
            self.alive()
            st = self.checkpoint()
            if st is None:
                return False
            s = os.stat(self.log)
            file = st["file"]
            assert isinstance(file, dict)
            return (
                file["ino"] == s.st_ino
                and st["offset"] == (s.st_size if offset is None else offset)
                and (gen is None or st["gen"] == gen)
            )

        wait_until(ok, f"the checkpoint at the end of {self.log}\n{self.stderr()}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def term(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.stderr()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(timeout=30)


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes, dict[str, bytes]]]:
    """Every record of ``topic`` up to its current end: (key, value, headers)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        c.topics()
        tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
        ends = c.end_offsets(tps)
        todo = [tp for tp in tps if ends[tp] > 0]
        out: list[tuple[bytes | None, bytes, dict[str, bytes]]] = []
        if not todo:
            return out
        c.assign(todo)
        c.seek_to_beginning(*todo)
        deadline = time.monotonic() + 120
        left = set(todo)
        while left and time.monotonic() < deadline:
            for tp, recs in c.poll(timeout_ms=500).items():
                out += [(r.key, r.value, dict(r.headers)) for r in recs if r.offset < ends[tp]]
            left = {tp for tp in left if c.position(tp) < ends[tp]}
        assert not left, f"{topic} not read to its end"
        return out
    finally:
        c.close()


@pytest.fixture
def follow_env(kafka_bootstrap: str, tmp_path: Path) -> Iterator[tuple[FollowProc, dict[str, str]]]:
    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(REPMON_KAFKA_BOOTSTRAP=kafka_bootstrap, **private_topics(tag))
    proc = FollowProc(env, tmp_path / "mail.log", tmp_path / "follow.json")
    try:
        yield proc, env
    finally:
        proc.stop()


def check_kafka(env: dict[str, str], generations: list[bytes]) -> tuple[int, int]:
    """What the topics hold equals what one parser makes of the log's generations: every event
    once (count and content), every rejection once as a redacted dead letter."""
    boot = env["REPMON_KAFKA_BOOTSTRAP"]
    want, reasons = expected("postfix", generations)
    got = read_topic(boot, env["REPMON_TOPIC_EVENTS"])
    have = Counter(orjson.dumps(orjson.loads(v), option=orjson.OPT_SORT_KEYS) for _, v, _ in got)
    missing, extra = want - have, have - want
    assert not missing and not extra, (
        f"{sum(missing.values())} events missing, {sum(extra.values())} extra (of {len(got)})"
    )
    assert all(k == orjson.loads(v)["recipient_key"].encode() for k, v, _ in got)
    marks = Counter(h[FOLLOW_HEADER] for _, _, h in got)
    assert len(marks) == len(got), "two records with one follow mark"
    dead = read_topic(boot, env["REPMON_TOPIC_DLQ"])
    assert Counter(orjson.loads(v)["reason"] for _, v, _ in dead) == reasons
    for _, v, h in dead:
        d = orjson.loads(v)
        original = base64.b64decode(d["original_b64"])
        assert b"redacted@" in original and not CLEAR.search(original)
        assert len(d["address_keys"]) == d["redacted"] >= 1 and FOLLOW_HEADER in h
    return len(got), len(dead)


@pytest.mark.kafka
def test_follow_appends_over_time_partial_lines(
    follow_env: tuple[FollowProc, dict[str, str]],
) -> None:
    p, env = follow_env
    p.log.write_bytes(b"")
    p.start()
    chunks = [postfix_lines(0, 50), postfix_lines(50, 120, bad_every=20), postfix_lines(120, 200)]
    for c in chunks:
        with p.log.open("ab") as fh:
            fh.write(c)
        p.caught_up()
    # lines and half a line in one write: the checkpoint stops at the last newline, and the
    # half line is neither parsed nor sent until the rest of it arrives
    more, line = postfix_lines(200, 230), postfix_lines(230, 231)
    cut = len(line) - 40
    with p.log.open("ab") as fh:
        fh.write(more + line[:cut])
    data = p.log.read_bytes()
    complete = data.rfind(b"\n") + 1
    assert complete < len(data)
    p.caught_up(offset=complete)
    check_kafka(env, [data[:complete]])
    with p.log.open("ab") as fh:
        fh.write(line[cut:] + postfix_lines(231, 260, bad_every=25))
    p.caught_up()
    p.term()
    n_ev, n_dead = check_kafka(env, [p.log.read_bytes()])
    assert n_ev == 260 and n_dead == 4 + 1


@pytest.mark.kafka
def test_follow_rename_then_copytruncate(follow_env: tuple[FollowProc, dict[str, str]]) -> None:
    p, env = follow_env
    p.log.write_bytes(postfix_lines(0, 100))
    p.start()
    p.caught_up(gen=0)
    # rename rotation with an unread tail and a last line without newline in the old file;
    # the follower is stopped meanwhile so that all of it happens between two of its polls
    p.signal(signal.SIGSTOP)
    with p.log.open("ab") as fh:
        fh.write(postfix_lines(100, 150, bad_every=10) + postfix_lines(150, 151)[:-1])
    os.rename(p.log, p.log.with_name("mail.log.1"))
    p.log.write_bytes(postfix_lines(151, 200))
    p.signal(signal.SIGCONT)
    p.caught_up(gen=1)
    # copytruncate: the rest is read from the copy, then the file again from byte 0
    p.signal(signal.SIGSTOP)
    with p.log.open("ab") as fh:
        fh.write(postfix_lines(200, 260, bad_every=30))
    shutil.copyfile(p.log, p.log.with_name("mail.log.2"))
    os.truncate(p.log, 0)
    with p.log.open("ab") as fh:
        fh.write(postfix_lines(260, 300))
    p.signal(signal.SIGCONT)
    p.caught_up(gen=2)
    p.term()
    gens = [p.log.with_name(n).read_bytes() for n in ("mail.log.1", "mail.log.2", "mail.log")]
    n_ev, n_dead = check_kafka(env, gens)
    assert n_ev == 300 and n_dead == 5 + 2


@pytest.mark.kafka
def test_follow_restart_after_rotations_while_stopped(
    follow_env: tuple[FollowProc, dict[str, str]],
) -> None:
    p, env = follow_env
    p.log.write_bytes(postfix_lines(0, 80))
    p.start()
    p.caught_up()
    p.term()
    # renamed while nobody follows: the old file's rest (and its unfinished last line) first
    with p.log.open("ab") as fh:
        fh.write(postfix_lines(80, 120) + postfix_lines(120, 121)[:-1])
    os.rename(p.log, p.log.with_name("mail.log.1"))
    p.log.write_bytes(postfix_lines(121, 160))
    p.start()
    p.caught_up(gen=1)
    p.term()
    # copytruncated while nobody follows: the rest from the copy
    with p.log.open("ab") as fh:
        fh.write(postfix_lines(160, 200))
    shutil.copyfile(p.log, p.log.with_name("mail.log.2"))
    os.truncate(p.log, 0)
    p.log.write_bytes(postfix_lines(200, 230))
    p.start()
    p.caught_up(gen=2)
    p.term()
    gens = [p.log.with_name(n).read_bytes() for n in ("mail.log.1", "mail.log.2", "mail.log")]
    assert check_kafka(env, gens) == (230, 0)
    # a clean stop moved the checkpoint's scan offsets to the topics' ends: nothing to read
    p.start()
    wait_until(lambda: p.alive() and p.stderr().count("resuming") == 3, "the fourth start")
    p.term()
    recoveries = [ln for ln in p.stderr().splitlines() if "recovery:" in ln]
    assert len(recoveries) == 3 and "read 0 records" in recoveries[-1], recoveries
    assert check_kafka(env, gens) == (230, 0)


@pytest.mark.kafka
def test_follow_kill9_mid_file_then_restart(follow_env: tuple[FollowProc, dict[str, str]]) -> None:
    p, env = follow_env
    # the first half of the log is there when the follower starts; it is killed once its
    # checkpoint passed a random point of that half, so the kill always leaves the rest of the
    # file unread (a fast follower could otherwise finish a whole file before the kill lands)
    p.log.write_bytes(postfix_lines(0, 10_000, bad_every=2_000))
    half = p.log.stat().st_size
    target = random.Random().uniform(0.05, 0.9) * half
    p.start()

    def progressed() -> bool:
        st = p.checkpoint()
        return p.alive() and st is not None and int(str(st["offset"])) >= target

    wait_until(progressed, "a checkpoint past the kill point")
    p.kill9()
    st = p.checkpoint()
    assert st is not None and 0 < int(str(st["offset"])) <= half, "no checkpoint before the kill"
    with p.log.open("ab") as fh:  # the log grows while the follower is down
        fh.write(postfix_lines(10_000, 20_000, bad_every=2_000))
        fh.write(postfix_lines(20_000, 21_000, bad_every=500))
    size = p.log.stat().st_size
    assert int(str(st["offset"])) < size
    p.start()
    p.caught_up()
    p.term()
    n_ev, n_dead = check_kafka(env, [p.log.read_bytes()])
    assert (n_ev, n_dead) == (21_000, 10 + 2)
    recovery = [ln for ln in p.stderr().splitlines() if "recovery:" in ln]
    assert len(recovery) == 1
    print(f"killed at byte {st['offset']} of {size}; {recovery[0]}")
