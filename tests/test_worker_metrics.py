"""Worker metrics across partition reassignment (a rebalance gives a partition a new Pipeline)."""

from __future__ import annotations

import orjson
from prometheus_client import generate_latest

from models.ingest.pipeline import Pipeline
from models.state.deltas import Deltas
from streams.worker.metrics import Metrics

T = 1_795_420_800.0


def events(n: int, start: int = 0) -> list[bytes]:
    return [
        orjson.dumps(
            {
                "event": "delivered",
                "timestamp": T + i,
                "message_id": f"m{start + i}",
                "recipient": f"user{i}@gmail.com",
                "mx_host": "gmail-smtp-in.l.google.com",
                "sending_ip": "192.0.2.1",
            }
        )
        for i in range(n)
    ]


def delivered_total(m: Metrics) -> float:
    for line in generate_latest(m.registry).decode().splitlines():
        if line.startswith('repmon_events_total{kind="delivered"}'):
            return float(line.split()[-1])
    raise AssertionError("no repmon_events_total{kind=delivered}")


def test_a_partition_that_comes_back_with_a_fresh_pipeline_keeps_counting() -> None:
    m = Metrics()
    first = Pipeline()
    assert first.feed_many(events(10)) == []
    m.observe_pipeline(0, first, first.flush())
    assert delivered_total(m) == 10
    # revoked, then assigned again: a new Pipeline whose statistics start at zero
    second = Pipeline()
    assert second.feed_many(events(3, start=10)) == []
    m.observe_pipeline(0, second, second.flush())  # crashed with a negative increment before
    assert delivered_total(m) == 13
    assert second.feed_many(events(4, start=13)) == []
    m.observe_pipeline(0, second, Deltas.empty())
    assert delivered_total(m) == 17
