"""``repmon ingest`` and ``repmon replay --format``: native files to canonical events, to a file
or to Kafka (keyed by the recipient key, dead letters with the reason and no clear address)."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from models.ingest.formats import make_parser, parse_records
from streams.cli.main import app
from streams.redaction import redact
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


@pytest.mark.kafka
def test_to_kafka_keyed_by_recipient_with_dead_letters(kafka_bootstrap: str) -> None:
    from kafka import KafkaConsumer

    tag = uuid.uuid4().hex[:8]
    env = dict(os.environ)
    env.update(REPMON_KAFKA_BOOTSTRAP=kafka_bootstrap, **private_topics(tag))
    res = subprocess.run(
        [sys.executable, "-m", "streams.cli", "ingest", "-f", "postfix", str(POSTFIX)],
        env=env,
        capture_output=True,
        timeout=180,
        cwd=REPO,
    )
    assert res.returncode == 0, res.stderr.decode()
    want = [
        ev
        for _, evs, _ in parse_records("postfix", POSTFIX.read_bytes(), make_parser("postfix"))
        for ev in evs
    ]
    n_rej = sum(
        len(rj)
        for _, _, rj in parse_records("postfix", POSTFIX.read_bytes(), make_parser("postfix"))
    )

    def read(topic: str, n: int) -> list[tuple[bytes | None, bytes]]:
        c = KafkaConsumer(
            topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest",
            consumer_timeout_ms=5000,
        )  # fmt: skip
        try:
            got: list[tuple[bytes | None, bytes]] = []
            for _ in range(12):  # until n records, 60 s at most
                got.extend((m.key, m.value) for m in c)
                if len(got) >= n:
                    break
            return got
        finally:
            c.close()

    events = read(env["REPMON_TOPIC_EVENTS"], len(want))
    assert sorted(orjson.loads(v)["recipient_key"] for _, v in events) == sorted(
        ev["recipient_key"] for ev in want
    )
    assert all(k == orjson.loads(v)["recipient_key"].encode() for k, v in events)
    dead = read(env["REPMON_TOPIC_DLQ"], n_rej)
    assert len(dead) == n_rej > 0
    for _, v in dead:
        d = orjson.loads(v)
        assert d["reason"] and d["format"] == "postfix"
        assert not CLEAR.search(base64.b64decode(d["original_b64"]))
