"""``repmon replay`` runs the throttle policy with the detectors and prints its decisions: a
provider outage throttles that provider from the run that opens it, then ramps back to normal;
the output is deterministic and ``--no-throttle`` leaves it out."""

from __future__ import annotations

import io
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from models.act.acting import Acting
from models.detect.monitor import Monitor
from models.ingest.pipeline import Pipeline
from models.sim.simulator import SimConfig, Simulator
from streams.cli.main import app
from streams.cli.replay import replay_lines


@pytest.fixture(scope="module")
def outage() -> tuple[list[bytes], Simulator]:
    sim = Simulator(
        SimConfig(
            seed=3,
            scenario="provider-outage",
            duration_s=3 * 3600,
            rate=20.0,
            params={"onset_s": 4200, "length_s": 1200},
        )
    )
    return [orjson.dumps(ev) for chunk in sim.chunks(300.0) for ev in chunk], sim


def _replay(lines: list[bytes]) -> list[dict[str, object]]:
    mon = Monitor()
    out = io.BytesIO()
    replay_lines(lines, mon, Pipeline(loads=orjson.loads), out=out, acting=Acting(mon))
    return [orjson.loads(ln) for ln in out.getvalue().splitlines()]


def test_an_outage_throttles_its_scope_then_ramps_back(
    outage: tuple[list[bytes], Simulator],
) -> None:
    lines, sim = outage
    (truth,) = sim.truth
    recs = _replay(lines)
    opened = [r for r in recs if r["kind"] == "incident" and r["action"] == "opened"]
    inc = next(r for r in opened if r["type"] == "provider_outage" and r["scope"] in truth.scopes)
    mine = [r for r in recs if r["kind"] == "throttle" and r["scope"] == inc["scope"]]
    assert mine, "the outage's scope was never throttled"
    first = mine[0]
    # the decision is taken in the detector run that opened the incident, on its scope
    assert first["at"] == inc["opened_at"] and first["incident"] == inc["id"]
    assert first["state"] in ("throttled", "paused") and 0 < float(first["rate_factor"]) < 1
    assert float(first["expires_at"]) > float(first["at"])
    # never wider than the incident's scope
    assert {r["scope"] for r in recs if r["kind"] == "throttle"} <= {r["scope"] for r in opened}
    # it comes back: normal again after the provider recovered, not before the outage ended
    back = [r for r in mine if r["state"] == "normal"]
    assert back and float(back[-1]["at"]) > truth.onset
    assert mine[-1]["state"] == "normal"
    factors = [float(r["rate_factor"]) for r in mine]
    assert min(factors) < 1.0


def test_replay_output_is_deterministic(outage: tuple[list[bytes], Simulator]) -> None:
    lines, _ = outage
    assert _replay(lines) == _replay(lines)


def test_no_throttle_prints_incidents_only(
    outage: tuple[list[bytes], Simulator], tmp_path: Path
) -> None:
    lines, _ = outage
    f = tmp_path / "ev.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    runner = CliRunner()
    with_t = runner.invoke(app, ["replay", "-q", "--no-suppression", str(f)])
    without = runner.invoke(app, ["replay", "-q", "--no-suppression", "--no-throttle", str(f)])
    assert with_t.exit_code == 0 and without.exit_code == 0, with_t.output + without.output
    kinds_with = {orjson.loads(ln)["kind"] for ln in with_t.stdout.splitlines()}
    kinds_without = {orjson.loads(ln)["kind"] for ln in without.stdout.splitlines()}
    assert kinds_with == {"incident", "throttle"}
    assert kinds_without == {"incident"}


def test_a_bad_throttle_config_is_a_clear_error(tmp_path: Path) -> None:
    cfg = tmp_path / "t.toml"
    cfg.write_text("[types.provider_outage]\nfloor = 7\n")
    f = tmp_path / "ev.jsonl"
    f.write_text("")
    res = CliRunner().invoke(app, ["replay", "-q", "--throttle-config", str(cfg), str(f)])
    assert res.exit_code == 2
    assert "t.toml" in res.output


def test_replay_emits_suppression_records(
    outage: tuple[list[bytes], Simulator], tmp_path: Path
) -> None:
    """`repmon replay` prints each recipient suppression change (docs/suppression.md, "Record")
    by default, the same as driving the policy by hand over the same events; none with
    --no-suppression."""
    from models.act.suppression import Suppressor

    lines, _ = outage
    f = tmp_path / "ev.jsonl"
    f.write_bytes(b"\n".join(lines) + b"\n")
    runner = CliRunner()
    res = runner.invoke(app, ["replay", "-q", "--no-throttle", str(f)])
    off = runner.invoke(app, ["replay", "-q", "--no-throttle", "--no-suppression", str(f)])
    assert res.exit_code == 0 and off.exit_code == 0, res.output + off.output
    recs = [orjson.loads(ln) for ln in res.stdout.splitlines()]
    sup = [r for r in recs if r["kind"] == "suppression"]
    assert sup, "the outage scenario's hard bounces suppressed nobody"
    for r in sup:
        assert len(r["recipient_key"]) == 64 and int(r["recipient_key"], 16) >= 0
        assert r["state"] in ("active", "suspended", "quarantined", "suppressed")
        assert {"reason", "count", "until", "permanent", "incident"} <= set(r)
    assert all(orjson.loads(ln)["kind"] != "suppression" for ln in off.stdout.splitlines())
    # the same records as the library loop with a Suppressor
    out = io.BytesIO()
    mon = Monitor()
    replay_lines(lines, mon, Pipeline(loads=orjson.loads), out=out, suppressor=Suppressor())
    lib = [orjson.loads(ln) for ln in out.getvalue().splitlines()]
    assert [r for r in lib if r["kind"] == "suppression"] == sup
