"""Event time on the real broker: a backlog read at full speed equals `repmon replay`.

The whole stream is in Kafka before the worker starts, so the worker reads hours of events in
seconds, unevenly across partitions. It must count every event and open the same incidents, at
the same event times (within one detector step), as a replay of the same events. Fails, never
skips, without a broker (conftest.kafka_bootstrap).
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from models.detect.monitor import Monitor
from models.sim.simulator import SimConfig, Simulator
from streams.cli.replay import replay_lines
from streams.worker.decoding import ingest_pipeline
from tests.conftest import WorkerProc
from tests.test_integration_kafka import metric_values, read_incidents_until, wait_for

pytestmark = pytest.mark.kafka

PARTITIONS = 3


def produce_partitioned(bootstrap: str, topic: str, evs: list[dict[str, Any]]) -> dict[int, float]:
    """Produce keyed by recipient domain to an explicit partition; returns the newest event time
    per partition (the worker's final watermark is their minimum)."""
    newest: dict[int, float] = {}
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20)
    try:
        for e in evs:
            key = str(e["recipient_domain"]).encode()
            part = zlib.crc32(key) % PARTITIONS
            producer.send(topic, key=key, value=orjson.dumps(e), partition=part)
            newest[part] = max(newest.get(part, 0.0), float(e["timestamp"]))
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)
    return newest


def replay(evs: list[dict[str, Any]]) -> tuple[Monitor, list[dict[str, Any]], Counter[str]]:
    mon = Monitor()
    changes: list[Any] = []
    stats = replay_lines((orjson.dumps(e) for e in evs), mon, ingest_pipeline(), changes=changes)
    assert not stats.rejected
    return mon, [c.to_json() for c in changes], Counter(str(e["event"]) for e in evs)


def provider_h24(status: dict[str, Any]) -> dict[str, dict[str, int]]:
    return {row["scope"]: row["h24"] for row in status["scopes"]["provider"]}


@pytest.mark.parametrize("workers", [1, 2])
def test_backlog_equals_replay(kafka_bootstrap: str, tmp_path: Any, workers: int) -> None:
    """One or two workers of a group: the same counts and incidents as replay."""
    start = 1_796_000_000.0  # a fixed past: the whole stream is a backlog
    sim = Simulator(SimConfig(seed=3, start=start, duration_s=4 * 3600, rate=5.0, scenario="mixed"))
    evs = [e for chunk in sim.chunks(600.0) for e in chunk]
    mon, changes, kinds = replay(evs)
    replay_opened = {
        (c["type"], c["scope"]): c["opened_at"] for c in changes if c["action"] == "opened"
    }
    assert len(replay_opened) >= 4, replay_opened  # the scenario's incidents show in replay

    (tmp_path / "w0").mkdir()
    w = WorkerProc(kafka_bootstrap, tmp_path / "w0", partitions=PARTITIONS)
    procs = [w] + [w.sibling(tmp_path / f"w{i}") for i in range(1, workers)]
    try:
        from streams.worker.settings import Settings
        from streams.worker.topics import ensure_topics

        ensure_topics(Settings(_env_file=None, **w.settings_kwargs()))
        newest = produce_partitioned(kafka_bootstrap, w.topics["events"], evs)
        final_wm = min(newest.values())
        for p in procs:
            p.start()
        owner: list[WorkerProc] = []

        def caught_up() -> bool | str:
            marks = []
            for p in procs:
                st = orjson.loads(p.get("/status?top=50"))
                marks.append(st["monitor"]["watermark"])
                if st["monitor"]["watermark"] == final_wm:
                    owner[:] = [p]
                    return True
            return f"monitor watermarks {marks}, want {final_wm}"

        wait_for(caught_up, 180, "the monitor at the backlog's final watermark", w)
        det = owner[0]

        def all_counted() -> bool | dict[str, int]:
            total: Counter[str] = Counter()
            for p in procs:
                text = p.get("/metrics").decode()
                for k, v in metric_values(text, "repmon_events_total", "kind").items():
                    total[k] += int(v)
            got = {k: v for k, v in total.items() if v}
            return True if got == dict(kinds) else got

        # every event counted once, over all workers (the partitions moved between them)
        wait_for(all_counted, 60, "every event counted exactly once", w)
        text = det.get("/metrics").decode()
        assert "repmon_late_events_dropped 0.0" in text
        status = orjson.loads(det.get("/status?top=50"))
        # exact rolling totals: every provider's 24 h counts equal the replay's
        assert provider_h24(status["monitor"]) == provider_h24(mon.status(top=50))

        # every incident the worker opened is on the incidents topic (as many as it counted)
        n_opened = int(sum(metric_values(text, "repmon_incidents_opened_total", "type").values()))
        records = read_incidents_until(
            kafka_bootstrap,
            det,
            lambda rs: sum(1 for r in rs if r["action"] == "opened") >= n_opened,
            f"{n_opened} opened incidents on the topic",
            timeout_s=60,
        )
    finally:
        for p in procs:
            p.stop()
    worker_opened = {
        (r["type"], r["scope"]): r["opened_at"] for r in records if r["action"] == "opened"
    }
    assert set(worker_opened) == set(replay_opened), (worker_opened, replay_opened)
    for key, at in worker_opened.items():
        assert abs(at - replay_opened[key]) <= 61.0, (key, at, replay_opened[key])
