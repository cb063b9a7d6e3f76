"""Worker metrics across partition reassignment (a rebalance gives a partition a new Pipeline)."""

from __future__ import annotations

import orjson
import pytest
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


def _lines(m: Metrics, prefix: str) -> list[str]:
    return [ln for ln in generate_latest(m.registry).decode().splitlines() if ln.startswith(prefix)]


class _FakeMonitor:
    def __init__(self, status: dict[str, object]) -> None:
        self._status = status

    def metrics(self) -> dict[str, object]:
        return {"incidents_open_by_severity": {}}

    def status(self, top: int = 20) -> dict[str, object]:
        return self._status


def _row(scope: str, attempts: int, deferral: float) -> dict[str, object]:
    return {
        "scope": scope,
        "m15": {"counts": {"attempts": attempts}, "rates": {"deferral": deferral}},
    }


def test_series_follow_what_the_worker_holds_now() -> None:
    """A provider or IP whose rollup partition moved away leaves no stale series behind."""
    m = Metrics(top_scopes=2)
    first = {
        "scopes": {
            "provider": [_row("provider:google", 100, 0.1), _row("provider:yahoo", 50, 0.2)],
            "ip": [_row("ip:192.0.2.1", 80, 0.3), _row("ip:192.0.2.2", 60, 0.0)],
            "pool": [_row("pool:shared-1", 140, 0.2)],
        },
        "open_incidents": [],
    }
    m.observe_monitor(_FakeMonitor(first), 1.0)
    assert len(_lines(m, 'repmon_provider_attempts_15m{provider="yahoo"}')) == 1
    assert _lines(m, 'repmon_scope_attempts_15m{kind="ip",scope="192.0.2.1"}')
    second = {
        "scopes": {"provider": [_row("provider:google", 90, 0.1)], "ip": [], "pool": []},
        "open_incidents": [],
    }
    m.observe_monitor(_FakeMonitor(second), 2.0)
    assert _lines(m, 'repmon_provider_attempts_15m{provider="yahoo"}') == []
    assert _lines(m, "repmon_scope_attempts_15m{") == []
    assert _lines(m, 'repmon_provider_attempts_15m{provider="google"} 90.0')


def _incident(i: int, scope: str, severity: str = "warning") -> dict[str, object]:
    return {
        "type": "rate_limited",
        "severity": severity,
        "scope": scope,
        "opened_at": 1000.0 + i,
        "evidence": {"rate": 0.4, "baseline": 0.01},
    }


@pytest.mark.parametrize(
    ("scope", "kind", "provider"),
    [
        ("ip:192.0.2.7|provider:google", "ip|provider", "google"),
        ("provider:yahoo", "provider", "yahoo"),
        ("sender:mail.example.com", "sender", "any"),
        ("campaign:c1|provider:microsoft", "campaign|provider", "microsoft"),
    ],
)
def test_an_open_incident_names_its_scope(scope: str, kind: str, provider: str) -> None:
    m = Metrics()
    m.observe_incidents([_incident(0, scope)])
    want = (
        f'repmon_incident_open_info{{provider="{provider}",scope="{scope}",'
        f'scope_kind="{kind}",severity="warning",type="rate_limited"}} 1.0'
    )
    assert _lines(m, "repmon_incident_open_info") == [want]
    assert len(_lines(m, "repmon_incident_rate_ratio{")) == 2


def test_open_incident_series_are_capped_and_critical_ones_kept() -> None:
    m = Metrics(max_incidents=3)
    incs = [_incident(i, f"ip:192.0.2.{i}") for i in range(10)]
    incs.append(_incident(-1, "ip:198.51.100.1", severity="critical"))
    m.observe_incidents(incs)
    lines = _lines(m, "repmon_incident_open_info{")
    assert len(lines) == 4  # three incidents and one "other"
    assert any('scope="ip:198.51.100.1"' in ln for ln in lines)
    assert any('scope="other"' in ln and ln.endswith(" 8.0") for ln in lines)
    m.observe_incidents([])
    assert _lines(m, "repmon_incident_open_info{") == []


def test_process_series_on_and_created_series_off() -> None:
    m = Metrics()
    text = generate_latest(m.registry).decode()
    assert "process_resident_memory_bytes" in text
    assert "python_gc_objects_collected_total" in text
    assert "_created" not in text
