"""``repmon replay``: output contract, bad lines, gzip, merge, report; Pipeline+Monitor end to end."""

from __future__ import annotations

import gzip
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
import typer
from typer.testing import CliRunner

from models.detect.monitor import Monitor
from models.ingest.pipeline import Pipeline
from models.sim.simulator import SimConfig, Simulator
from models.state.watermark import PartitionClock
from streams.cli import replay as replay_cmd
from streams.cli.replay import replay_lines, replay_parallel, shard_of

CONTRACT = {
    "kind",
    "action",
    "id",
    "type",
    "scope",
    "opened_at",
    "closed_at",
    "severity",
    "evidence",
}


@pytest.fixture(scope="module")
def outage_events() -> tuple[list[bytes], Simulator]:
    """A short provider outage: 1 h 45 min at 20 msgs/s, onset after 70 min, lasting 20 min."""
    sim = Simulator(
        SimConfig(
            seed=3,
            scenario="provider-outage",
            duration_s=6300,
            rate=20.0,
            params={"onset_s": 4200, "length_s": 1200},
        )
    )
    lines = [orjson.dumps(ev) for chunk in sim.chunks(300.0) for ev in chunk]
    return lines, sim


def test_end_to_end_outage_opens_provider_outage(
    outage_events: tuple[list[bytes], Simulator],
) -> None:
    lines, sim = outage_events
    (truth,) = sim.truth
    out = io.BytesIO()
    stats = replay_lines(lines, Monitor(), Pipeline(loads=orjson.loads), out=out)
    changes = [json.loads(x) for x in out.getvalue().splitlines()]
    opened = [c for c in changes if c["action"] == "opened"]
    assert stats.accepted == len(lines)
    assert opened, "no incident"
    first = opened[0]
    assert first["type"] == truth.type == "provider_outage"
    assert first["scope"] in truth.scopes
    assert 0 <= first["opened_at"] - truth.onset <= 300
    assert [c["type"] for c in opened] == ["provider_outage"]  # related scopes folded in
    for c in changes:
        assert set(c) == CONTRACT


def _ev(t: float, kind: str = "delivered", dom: str = "gmail.com") -> bytes:
    return orjson.dumps({"event": kind, "timestamp": t, "recipient": f"a{t}@{dom}"})


def test_bad_lines_are_counted_not_fatal() -> None:
    t0 = 1_795_420_800.0
    lines = [
        _ev(t0),
        b"{not json",
        b"[1, 2]",
        b"",
        orjson.dumps({"event": "exploded", "timestamp": t0, "recipient": "a@b.com"}),
        orjson.dumps({"event": "delivered", "timestamp": "yesterday", "recipient": "a@b.com"}),
        _ev(t0 + 1),
    ]
    stats = replay_lines(lines, Monitor(), Pipeline(loads=orjson.loads))
    assert stats.accepted == 2
    assert stats.rejected == {
        "bad_json": 1,
        "not_an_object": 1,
        "empty_line": 1,
        "unknown_event": 1,
        "bad_timestamp": 1,
    }


def test_ticks_follow_event_time() -> None:
    t0 = 1_795_420_800.0
    lines = [_ev(t0 + 10 * i) for i in range(60)]  # 10 minutes of event time
    mon = Monitor()
    stats = replay_lines(lines, mon, Pipeline(loads=orjson.loads), tick_s=60.0)
    assert 9 <= stats.ticks <= 11
    assert mon.rolling_totals("provider:google", 3600)["delivered"] == 60


@pytest.fixture()
def app() -> typer.Typer:
    a = typer.Typer()
    replay_cmd.register(a)

    @a.command("noop")
    def _noop() -> None:  # a second command so typer keeps the "replay" sub-command name
        pass

    return a


def test_cli_gzip_merge_and_report(
    tmp_path: Path, app: typer.Typer, outage_events: tuple[list[bytes], Simulator]
) -> None:
    lines, _ = outage_events
    # split into two files (alternating lines), one gzipped: the merge restores event order
    a = tmp_path / "a.jsonl.gz"
    b = tmp_path / "b.jsonl"
    with gzip.open(a, "wb") as fh:
        fh.write(b"\n".join(lines[0::2]) + b"\n")
    b.write_bytes(b"garbage line\n" + b"\n".join(lines[1::2]) + b"\n")
    report = tmp_path / "r.html"
    res = CliRunner().invoke(app, ["replay", str(a), str(b), "--report", str(report), "-q"])
    assert res.exit_code == 0, res.output
    out = [json.loads(x) for x in res.stdout.splitlines() if x.startswith("{")]
    out = [r for r in out if r["kind"] == "incident"]
    assert out and out[0]["type"] == "provider_outage" and out[0]["action"] == "opened"
    html = report.read_text()
    assert html.startswith("<!doctype html>") and "<svg" in html and "provider_outage" in html
    assert "<script" not in html and "http" not in html.split("<body>")[1].split("provider:")[0]


def test_cli_missing_file(app: typer.Typer, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["replay", str(tmp_path / "nope.jsonl")])
    assert res.exit_code != 0


def test_parallel_replay_matches_in_process(
    tmp_path: Path, outage_events: tuple[list[bytes], Simulator]
) -> None:
    lines, _ = outage_events
    f = tmp_path / "e.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n{bad\n")
    out1, out2 = io.BytesIO(), io.BytesIO()
    s1 = replay_parallel([f], Monitor(), 2, out=out1)
    with f.open("rb") as fh:
        s2 = replay_lines(fh, Monitor(), Pipeline(loads=orjson.loads), out=out2)
    assert (s1.lines, s1.accepted, dict(s1.rejected)) == (s2.lines, s2.accepted, dict(s2.rejected))

    def key(b: bytes) -> list[tuple[str, str, str]]:
        return [(c["action"], c["type"], c["scope"]) for c in map(json.loads, b.splitlines())]

    assert key(out1.getvalue()) == key(out2.getvalue())


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (
            b'{"recipient": "Bob@x.com", "event": "delivered"}',
            b'{"event":"bounced","recipient":"bob@x.com"}',
        ),
    ],
)
def test_shard_by_recipient(a: bytes, b: bytes) -> None:
    assert shard_of(a, 7) == shard_of(b, 7)


def _reference_ticks(
    lines: list[bytes], tick_s: float, max_pending: int
) -> tuple[list[tuple[float, Any]], list[str]]:
    """The replay loop fed line by line, as it was before batching: the contract of TickLoop.
    The watermark is the file's PartitionClock, one event at a time."""
    pipe = Pipeline(loads=orjson.loads)
    clock = PartitionClock()
    ticks: list[tuple[float, Any]] = []
    rejected: list[str] = []
    next_tick, pending = -math.inf, 0
    for line in lines:
        if not line.strip():
            rejected.append("empty_line")
            continue
        rej = pipe.feed(line)
        if rej is not None:
            rejected.append(rej.reason)
            continue
        pending += 1
        wm = float(clock.running(pipe.pending_timestamps(pipe.pending() - 1))[0])
        if wm >= next_tick or pending >= max_pending:
            if next_tick != -math.inf:
                d = pipe.flush()
                d.watermark = wm
                ticks.append((next_tick, d))
                pending = 0
            next_tick = (math.floor(wm / tick_s) + 1) * tick_s
    d = pipe.flush()
    d.watermark = clock.watermark
    ticks.append((math.inf, d))
    return ticks, rejected


@pytest.mark.parametrize(
    ("batch", "max_pending"), [(1, 200_000), (7, 150), (512, 200_000), (4096, 333)]
)
def test_batched_ticks_equal_line_by_line_ticks(
    outage_events: tuple[list[bytes], Simulator],
    monkeypatch: pytest.MonkeyPatch,
    batch: int,
    max_pending: int,
) -> None:
    """Batching changes no tick: same boundaries, same Deltas, same rejections."""
    lines = list(outage_events[0][:6000])
    t0 = orjson.loads(lines[0])["timestamp"]
    for at, bad in (
        (5, b"{oops"),
        (50, b""),
        (700, orjson.dumps({"event": "sent", "timestamp": t0})),
    ):
        lines.insert(at, bad)
    lines.insert(
        900, orjson.dumps({"event": "sent", "timestamp": t0 + 9000, "recipient": "a@b.com"})
    )
    want, want_rej = _reference_ticks(lines, 60.0, max_pending)
    got: list[tuple[float, Any]] = []
    monkeypatch.setattr(replay_cmd, "BATCH", batch)
    loop = replay_cmd.TickLoop(
        Pipeline(loads=orjson.loads), lambda d, b: got.append((b, d)), 60.0, max_pending
    )
    loop.run(lines)
    loop.finish()
    assert sorted(loop.rejected.elements()) == sorted(want_rej)
    assert loop.accepted == len(lines) - len(want_rej)
    assert [b for b, _ in got] == [b for b, _ in want]
    for (_, d1), (_, d2) in zip(got, want, strict=True):
        assert d1.scopes == d2.scopes
        assert np.array_equal(d1.counts, d2.counts)
        assert np.array_equal(d1.bucket_start, d2.bucket_start)
        assert d1.replies == d2.replies
        assert d1.watermark == d2.watermark
