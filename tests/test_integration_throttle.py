"""The throttle on the real broker: a provider outage's decision is published on the compacted
throttle topic (keyed by scope) in the run that opens the incident, equals what replay decides,
is served at /throttle, survives kill -9 and restart, and goes back to normal after the outage.
Fails (never skips) without a broker."""

from __future__ import annotations

import io
import signal
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from models.act.acting import Acting
from models.detect.monitor import Monitor
from streams.cli.replay import replay_lines
from streams.worker.decoding import ingest_pipeline
from tests.conftest import WorkerProc
from tests.test_integration_kafka import read_incidents_until
from tests.test_integration_state import outage_events, send, send_sentinels

pytestmark = pytest.mark.kafka


def replay_throttle(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The throttle records ``repmon replay`` prints for the same events."""
    mon = Monitor()
    out = io.BytesIO()
    lines = (orjson.dumps(e) for e in evs)
    replay_lines(lines, mon, ingest_pipeline(), out=out, acting=Acting(mon))
    recs = [orjson.loads(ln) for ln in out.getvalue().splitlines()]
    return [r for r in recs if r["kind"] == "throttle"]


def test_outage_throttle_published_restored_and_released(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    sim, evs = outage_events()
    truth = sim.truth[0]
    cut = truth.onset + 900.0
    first = [e for e in evs if float(e["timestamp"]) < cut]
    rest = [e for e in evs if float(e["timestamp"]) >= cut]
    want = next(r for r in replay_throttle(evs) if r["scope"] in truth.scopes)
    w = WorkerProc(kafka_bootstrap, tmp_path / "a")
    w.env["REPMON_INSTANCE_ID"] = f"it-{uuid.uuid4().hex[:6]}"
    # the KumoMTA endpoints on, as an operator would run them (no token: any path token)
    w.env["REPMON_KUMO_CONFIG"] = str(Path(__file__).parent / "data" / "kumo" / "kumo.toml")
    try:
        w.start()
        send(kafka_bootstrap, w, first)
        send_sentinels(kafka_bootstrap, w, cut + 0.5)

        def restricted(found: list[dict[str, Any]]) -> bool:
            return any(r["scope"] == want["scope"] and r["state"] != "normal" for r in found)

        found = read_incidents_until(
            kafka_bootstrap, w, restricted, "the outage's throttle record", topic="throttle"
        )
        got = next(r for r in found if r["scope"] == want["scope"])
        # the live worker decides what replay decides, at the same detector run (replay ticks
        # at the batch boundaries, the worker at multiples of DETECT_EVERY_S: one run apart at
        # most, as the incidents, tests/test_integration_state.py)
        for k in ("state", "rate_factor", "reason"):
            assert got[k] == want[k], (k, got, want)
        assert abs(float(got["at"]) - float(want["at"])) <= 61.0, (got, want)
        assert str(got["incident"]).rsplit("/", 1)[0] == str(want["incident"]).rsplit("/", 1)[0]
        doc = orjson.loads(w.get("/throttle"))
        served = {d["scope"]: d for d in doc["decisions"]}
        assert want["scope"] in served, doc
        before = served[want["scope"]]
        one = orjson.loads(w.get("/throttle/" + want["scope"].replace("|", "%7C")))
        assert one["scope"] == want["scope"] and one["state"] == before["state"]
        open_doc = orjson.loads(w.get("/incidents?state=open"))
        assert any(i["id"] == got["incident"] for i in open_doc["incidents"]), open_doc
        # kumod's shaping helper can poll the live worker
        assert w.get("/kumo/any/tsa/status") == b"TSA Daemon OK"
        susp = orjson.loads(w.get("/kumo/any/get_suspension_v1/suspended.json"))
        assert set(susp) == {"ready_q", "sched_q"}, susp
        assert w.get("/kumo/any/get_config_v1/shaping.toml").strip()

        assert w.proc is not None
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(timeout=10)
        w.start()
        # restored with the owner's snapshot: the same decision is in force at once
        doc = orjson.loads(w.get("/throttle"))
        after = {d["scope"]: d for d in doc["decisions"]}
        assert want["scope"] in after, doc
        for k in ("state", "rate_factor", "incident"):
            assert after[want["scope"]][k] == before[k], (after, before)

        send(kafka_bootstrap, w, rest)
        send_sentinels(kafka_bootstrap, w, max(float(e["timestamp"]) for e in evs) + 1.0)

        def released(found: list[dict[str, Any]]) -> bool:
            mine = [r for r in found if r["scope"] == want["scope"]]
            return bool(mine) and mine[-1]["state"] == "normal"

        found = read_incidents_until(
            kafka_bootstrap, w, released, "the throttle back to normal", topic="throttle"
        )
        mine = [r for r in found if r["scope"] == want["scope"]]
        assert float(mine[-1]["at"]) > truth.onset
    finally:
        w.stop()
