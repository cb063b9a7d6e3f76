"""Manual throttle overrides: what a PUT /throttle/{scope} body may say (unit), and on the real
broker: the override reaches the throttle topic at once, wins in /throttle, is audited with who
and why, needs the token, and a DELETE hands the scope back. Fails (never skips) without a
broker."""

from __future__ import annotations

import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.worker.web import MAX_OVERRIDE_S, manual_override
from tests.conftest import WorkerProc
from tests.test_integration_kafka import read_incidents_until

NOW = 1_800_000_000.0
OK = {"state": "paused", "rate_factor": 0.02, "why": "delisting request sent", "by": "alice"}


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (OK, None),
        ({**OK, "state": "throttled", "rate_factor": 0.5}, None),
        ({"state": "paused", "why": "x"}, None),  # probe share 0, ttl 1 h, by api
        ([], "JSON object"),
        ({**OK, "state": "normal"}, "throttled or paused"),
        ({**OK, "state": "recovering"}, "throttled or paused"),
        ({**OK, "rate_factor": 1.5}, "from 0 to 1"),
        ({**OK, "rate_factor": True}, "from 0 to 1"),
        ({**OK, "state": "throttled", "rate_factor": 1.0}, "0 < rate_factor < 1"),
        ({**OK, "why": "  "}, "say why"),
        ({k: v for k, v in OK.items() if k != "why"}, "say why"),
        ({**OK, "ttl_s": 0}, "ttl_s"),
        ({**OK, "ttl_s": MAX_OVERRIDE_S + 1}, "ttl_s"),
        ({**OK, "by": ""}, "by must be"),
    ],
)
def test_override_bodies(body: Any, error: str | None) -> None:
    if error is None:
        rec, audit = manual_override("provider:yahoo", body, NOW)
        assert rec.reason == "manual" and rec.incident is None and rec.at == NOW
        assert rec.expires_at == NOW + float(body.get("ttl_s", 3600.0))
        assert audit["action"] == "set" and audit["why"] == body["why"].strip()
        return
    with pytest.raises(ValueError, match=error):
        manual_override("provider:yahoo", body, NOW)


def test_a_scope_needs_a_kind() -> None:
    with pytest.raises(ValueError, match="not a scope"):
        manual_override("yahoo", OK, NOW)


def _call(w: WorkerProc, method: str, path: str, body: Any = None, token: str | None = None):  # type: ignore[no-untyped-def]
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(w.url + path, data=data, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, orjson.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, orjson.loads(e.read())


@pytest.mark.kafka
def test_override_published_audited_and_cleared(kafka_bootstrap: str, tmp_path: Path) -> None:
    token = "t0ken"
    scope = "ip:203.0.113.6|provider:google"
    path = "/throttle/" + scope.replace("|", "%7C")
    w = WorkerProc(kafka_bootstrap, tmp_path / "w")
    w.env["REPMON_API_TOKEN"] = token
    try:
        w.start()
        assert _call(w, "PUT", path, OK)[0] == 401
        assert _call(w, "PUT", path, OK, token="wrong")[0] == 401
        code, err = _call(w, "PUT", path, {**OK, "rate_factor": 3}, token=token)
        assert code == 400 and "rate_factor" in err["error"]
        code, rec = _call(w, "PUT", path, OK, token=token)
        assert code == 200 and rec["scope"] == scope and rec["reason"] == "manual", rec

        def seen(found: list[dict[str, Any]]) -> bool:
            return any(r["scope"] == scope and r["reason"] == "manual" for r in found)

        found = read_incidents_until(kafka_bootstrap, w, seen, "the override", topic="throttle")
        assert next(r for r in found if r["scope"] == scope)["state"] == "paused"

        def audited(found: list[dict[str, Any]]) -> bool:
            return any(r.get("kind") == "override" and r.get("scope") == scope for r in found)

        found = read_incidents_until(kafka_bootstrap, w, audited, "the audit record")
        audit = next(r for r in found if r.get("kind") == "override")
        assert audit["by"] == "alice" and audit["why"] == OK["why"]

        def served() -> bool:
            _, doc = _call(w, "GET", "/throttle", token=token)
            return scope in {d["scope"] for d in doc["decisions"]}

        # every worker follows the overrides topic: /throttle shows it once read back
        from tests.test_integration_kafka import wait_for

        wait_for(served, 60, "/throttle to show the override", w)
        assert _call(w, "DELETE", path, token=token)[0] == 400  # no why
        code, out = _call(w, "DELETE", path + "?why=delisted&by=alice", token=token)
        assert code == 200 and out["cleared"] is True

        def released(found: list[dict[str, Any]]) -> bool:
            mine = [r for r in found if r["scope"] == scope]
            return bool(mine) and mine[-1]["state"] == "normal"

        read_incidents_until(kafka_bootstrap, w, released, "the scope released", topic="throttle")
        wait_for(lambda: not served(), 60, "/throttle without the override", w)
    finally:
        w.stop()
