"""``repmon ingest`` and ``repmon replay --format``: native files to canonical events, to a file
or to Kafka (keyed by the recipient key, dead letters with the reason and no clear address)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import orjson
import pytest
from typer.testing import CliRunner

from models.ingest.formats import make_parser, parse_records
from models.ingest.validate import recipient_key
from streams.cli.main import app
from streams.redaction import redact
from streams.worker.wire import redacted_dlq_record
from tests.conftest import REPO, private_topics

DATA = REPO / "tests" / "data" / "formats"
POSTFIX = DATA / "postfix" / "maillog"
KUMO = DATA / "kumomta" / "records.jsonl"
#: an address that is not redacted (the parsers' own recipient@ and the dead letters' redacted@)
CLEAR = re.compile(
    rb"(?<![A-Za-z0-9._%+-])(?!redacted@|recipient@)[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+"
)


def test_out_writes_the_parsers_events(tmp_path: Path) -> None:
    out, rej = tmp_path / "ev.jsonl", tmp_path / "rej.jsonl"
    res = CliRunner().invoke(
        app, ["ingest", "-f", "postfix", "--out", str(out), "--rejects", str(rej), str(POSTFIX)]
    )
    assert res.exit_code == 0, res.output
    want = [
        ev
        for _, evs, _ in parse_records("postfix", POSTFIX.read_bytes(), make_parser("postfix"))
        for ev in evs
    ]
    got = [orjson.loads(ln) for ln in out.read_bytes().splitlines()]
    assert got == want and got
    assert all("recipient" not in ev and ev.get("recipient_key") for ev in got)
    rejected = [orjson.loads(ln) for ln in rej.read_bytes().splitlines()]
    assert rejected, "the fixture has bad lines: the test would prove nothing"
    assert not CLEAR.search(rej.read_bytes()), "a clear address in the dead letters"
    assert all(r["reason"] and r["source"] == str(POSTFIX) for r in rejected)


@pytest.mark.parametrize(
    ("raw", "want"),
    [
        (b"to=<Judy.Doe+x@Example.COM>, status=sent", b"to=<redacted@Example.COM>, status=sent"),
        (b'{"rcpt": "a@b.example", "n": 1}', b'{"rcpt": "redacted@b.example", "n": 1}'),
        (b"no address here", b"no address here"),
    ],
)
def test_redact(raw: bytes, want: bytes) -> None:
    assert redact(raw) == want


def test_bad_format_and_config_are_usage_errors(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["ingest", "-f", "nope", "--out", "x", str(POSTFIX)])
    assert r.exit_code == 2 and "kumomta" in r.output
    cfg = tmp_path / "p.toml"
    cfg.write_text("[postfix]\nno_such_option = 1\n")
    r = CliRunner().invoke(
        app, ["ingest", "-f", "postfix", "--config", str(cfg), "--out", "x", str(POSTFIX)]
    )
    assert r.exit_code == 2 and "postfix parser configuration" in r.output


def test_replay_format_equals_replay_of_the_converted_file(tmp_path: Path) -> None:
    out = tmp_path / "ev.jsonl"
    runner = CliRunner()
    assert (
        runner.invoke(
            app, ["ingest", "-q", "-f", "kumomta", "--out", str(out), str(KUMO)]
        ).exit_code
        == 0
    )
    a = runner.invoke(app, ["replay", "-q", "-f", "kumomta", str(KUMO)])
    b = runner.invoke(app, ["replay", "-q", str(out)])
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    assert a.stdout == b.stdout


def _ingest_to_kafka(kafka_bootstrap: str, path: Path) -> dict[str, str]:
    """``repmon ingest -f postfix PATH`` to topics of its own; their ``REPMON_*`` settings."""
    env = dict(os.environ)
    env.update(REPMON_KAFKA_BOOTSTRAP=kafka_bootstrap, **private_topics(uuid.uuid4().hex[:8]))
    res = subprocess.run(
        [sys.executable, "-m", "streams.cli", "ingest", "-f", "postfix", str(path)],
        env=env,
        capture_output=True,
        timeout=180,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr.decode()
    return env


def _read(kafka_bootstrap: str, topic: str, n: int) -> list[tuple[bytes | None, bytes]]:
    """(key, value) of the records of ``topic``, until ``n`` of them (60 s at most)."""
    from kafka import KafkaConsumer

    c = KafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
        consumer_timeout_ms=5000, max_partition_fetch_bytes=8 << 20, fetch_max_bytes=64 << 20,
    )  # fmt: skip
    try:
        got: list[tuple[bytes | None, bytes]] = []
        for _ in range(12):
            got.extend((m.key, m.value) for m in c)
            if len(got) >= n:
                break
        return got
    finally:
        c.close()


@pytest.mark.kafka
def test_to_kafka_keyed_by_recipient_with_dead_letters(kafka_bootstrap: str) -> None:
    env = _ingest_to_kafka(kafka_bootstrap, POSTFIX)
    want = [
        ev
        for _, evs, _ in parse_records("postfix", POSTFIX.read_bytes(), make_parser("postfix"))
        for ev in evs
    ]
    n_rej = sum(
        len(rj)
        for _, _, rj in parse_records("postfix", POSTFIX.read_bytes(), make_parser("postfix"))
    )

    events = _read(kafka_bootstrap, env["REPMON_TOPIC_EVENTS"], len(want))
    assert sorted(orjson.loads(v)["recipient_key"] for _, v in events) == sorted(
        ev["recipient_key"] for ev in want
    )
    assert all(k == orjson.loads(v)["recipient_key"].encode() for k, v in events)
    dead = _read(kafka_bootstrap, env["REPMON_TOPIC_DLQ"], n_rej)
    assert len(dead) == n_rej > 0
    for _, v in dead:
        d = orjson.loads(v)
        assert d["reason"] and d["format"] == "postfix"
        assert not CLEAR.search(base64.b64decode(d["original_b64"]))


# -- dead letters: the original is cut before an address -----------------------------------------

MIB = 1 << 20
#: 8-byte local parts: redacted, an address keeps its length and place, so a raw offset is an
#: offset in the redacted original too
JUDY, JANE, JOHN = b"judy.doe@example.com", b"jane.roe@example.org", b"john.poe@example.net"


def _across(start: int) -> tuple[bytes, list[bytes]]:
    """A log line over 1 MiB whose second address (JANE) begins ``start`` bytes from the end of
    the first MiB (negative: before it), one address before it and one after."""
    head = JUDY + b" "
    pad = b"x" * (MIB + start - len(head) - 1)
    line = head + pad + b" " + JANE + b" " + JOHN + b" " + b"y" * 100
    assert line.index(JANE) == MIB + start
    return line, [JUDY, JANE, JOHN]


def _many(n: int) -> tuple[bytes, list[bytes]]:
    """A log line of ``n`` addresses of 21 bytes, one space after each, after a 6-byte head."""
    addresses = [b"u%08d@example.com" % i for i in range(n)]
    return b"rcpts " + b"".join(a + b" " for a in addresses), addresses


class Cut(NamedTuple):
    """A rejected line and where its dead letter's original must end."""

    case: str
    #: the line and its addresses, in order
    make: Callable[[], tuple[bytes, list[bytes]]]
    #: the parser's reason
    reason: str
    #: bytes of the line the original keeps (redacted); None: the whole line
    cut: int | None
    #: addresses kept, the first ones
    n: int


DEAD_LETTER_CUTS = [
    Cut("1 MiB inside a local part", lambda: _across(-3), "too_large", MIB - 3, 1),
    Cut("1 MiB at the @", lambda: _across(-8), "too_large", MIB - 8, 1),
    Cut("1 MiB inside a domain", lambda: _across(-12), "too_large", MIB - 12, 1),
    Cut("an address ending at 1 MiB", lambda: _across(-20), "too_large", MIB, 2),
    Cut("an address beginning at 1 MiB", lambda: _across(0), "too_large", MIB, 1),
    Cut("10,000 addresses", lambda: _many(10_000), "unparseable", None, 10_000),
    Cut("10,001 addresses", lambda: _many(10_001), "unparseable", 6 + 10_000 * 22, 10_000),
    Cut(
        "50,000 addresses, over 1 MiB", lambda: _many(50_000), "too_large", 6 + 10_000 * 22, 10_000
    ),
]
_CUT_IDS = [c.case for c in DEAD_LETTER_CUTS]


def _check_cut(value: bytes, c: Cut) -> None:
    """The dead letter of ``c``'s line keeps its first ``c.cut`` bytes (redacted) and the keys
    of exactly the ``c.n`` addresses in them: ``original_b64`` never ends inside an address."""
    line, addresses = c.make()
    d = orjson.loads(value)
    assert d["reason"] == c.reason
    original = base64.b64decode(d["original_b64"])
    assert original == redact(line[: c.cut])  # not line[:c.cut] redacted then cut elsewhere
    assert len(original) <= MIB and not CLEAR.search(original)
    assert d["address_keys"] == [recipient_key(a.decode()) for a in addresses[: c.n]]
    assert d["redacted"] == c.n
    assert d["original_truncated"] == (c.cut is not None) and d["original_bytes"] == len(line)
    assert d["partition"] == -1 and d["offset_unit"] == "record" and d["format"] == "postfix"


@pytest.mark.parametrize("c", DEAD_LETTER_CUTS, ids=_CUT_IDS)
def test_dead_letter_cut(c: Cut) -> None:
    """What ``repmon ingest`` dead-letters (the gateway's builder): cut at 1 MiB or 10,000
    addresses, before an address."""
    line, _ = c.make()
    (rej,) = make_parser("postfix").feed(line)[1]
    _check_cut(redacted_dlq_record(rej, line, "mail.log", 7, "postfix"), c)


@pytest.fixture(scope="module")
def ingested_dead_letters(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[int, bytes]:
    """``repmon ingest -f postfix`` of one file holding the lines of DEAD_LETTER_CUTS, in order,
    to private topics: its dead letters by record number."""
    path = tmp_path_factory.mktemp("cuts") / "mail.log"
    path.write_bytes(b"".join(c.make()[0] + b"\n" for c in DEAD_LETTER_CUTS))
    env = _ingest_to_kafka(kafka_bootstrap, path)
    dead = _read(kafka_bootstrap, env["REPMON_TOPIC_DLQ"], len(DEAD_LETTER_CUTS))
    return {orjson.loads(v)["offset"]: v for _, v in dead}


@pytest.mark.kafka
@pytest.mark.parametrize("c", DEAD_LETTER_CUTS, ids=_CUT_IDS)
def test_to_kafka_dead_letter_cut(ingested_dead_letters: dict[int, bytes], c: Cut) -> None:
    """``repmon ingest`` to Kafka cuts a dead letter's original before an address, and keeps the
    keys of exactly the addresses kept."""
    assert sorted(ingested_dead_letters) == list(range(len(DEAD_LETTER_CUTS)))
    _check_cut(ingested_dead_letters[DEAD_LETTER_CUTS.index(c)], c)
