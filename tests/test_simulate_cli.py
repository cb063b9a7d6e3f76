"""`repmon simulate`: JSONL output is deterministic per seed; Kafka output carries the same events."""

from __future__ import annotations

import gzip
import json
import uuid
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer
from typer.testing import CliRunner

from streams.cli.main import app
from streams.cli.simulate import parse_duration

runner = CliRunner()
ARGS = [
    "--scenario",
    "provider-outage",
    "--rate",
    "3",
    "--duration",
    "20m",
    "--start",
    "1795305600",
]


def run_to_file(path: Path, seed: int) -> list[dict[str, object]]:
    res = runner.invoke(app, ["simulate", *ARGS, "--seed", str(seed), "--out", str(path)])
    assert res.exit_code == 0, res.output
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        return [orjson.loads(line) for line in fh]


def test_jsonl_is_deterministic_and_ordered(tmp_path: Path) -> None:
    a = run_to_file(tmp_path / "a.jsonl", seed=4)
    b = run_to_file(tmp_path / "b.jsonl.gz", seed=4)
    c = run_to_file(tmp_path / "c.jsonl", seed=5)
    assert a == b and len(a) > 500
    assert a != c
    ts = [float(e["timestamp"]) for e in a]  # type: ignore[arg-type]
    assert ts == sorted(ts)
    assert ts[0] >= 1795305600 and ts[-1] < 1795305600 + 20 * 60


def test_truth_file_and_list(tmp_path: Path) -> None:
    truth = tmp_path / "truth.json"
    res = runner.invoke(
        app, ["simulate", *ARGS, "--out", str(tmp_path / "x.jsonl"), "--truth", str(truth)]
    )
    assert res.exit_code == 0, res.output
    t = json.loads(truth.read_text())
    assert t and t[0]["type"] == "provider_outage"
    assert t[0]["act_scope"] == "provider:microsoft" and t[0]["act_scope"] in t[0]["scopes"]
    listed = runner.invoke(app, ["simulate", "--list"])
    assert "b2b-false-bounces" in listed.output.split()
    bad = runner.invoke(app, ["simulate", "--scenario", "nope", "--out", str(tmp_path / "y")])
    assert bad.exit_code != 0


@pytest.mark.parametrize(
    ("text", "s"), [("90", 90), ("90s", 90), ("15m", 900), ("6h", 21600), ("2d", 172800)]
)
def test_durations(text: str, s: float) -> None:
    assert parse_duration(text) == s


@pytest.mark.kafka
def test_kafka_output_equals_file_output(kafka_bootstrap: str, tmp_path: Path) -> None:
    expected = run_to_file(tmp_path / "e.jsonl", seed=9)
    topic = f"it-sim-{uuid.uuid4().hex[:8]}"
    res = runner.invoke(
        app,
        ["simulate", *ARGS, "--seed", "9", "--bootstrap", kafka_bootstrap, "--topic", topic],
        env={"REPMON_TOPIC_PARTITIONS": "3"},
    )
    assert res.exit_code == 0, res.output
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5000,
    )
    got = [(m.key, orjson.loads(m.value)) for m in consumer]
    consumer.close()
    assert sorted(json.dumps(v, sort_keys=True) for _, v in got) == sorted(
        json.dumps(v, sort_keys=True) for v in expected
    )
    # keyed by recipient domain
    assert all(k == str(v["recipient_domain"]).encode() for k, v in got)
