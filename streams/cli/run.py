"""``repmon run``: the whole monitor on one machine, with a live summary in the terminal.

Starts the local Kafka broker (unless REPMON_KAFKA_BOOTSTRAP names a cluster), a worker and the
traffic simulator as child processes, polls the worker's /status, and stops everything it started
on Ctrl-C (or after ``--for``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import typer
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from streams.worker.settings import Settings

REPO = Path(__file__).resolve().parents[2]
LOCAL_KAFKA = REPO / "deploy" / "kafka" / "local-kafka"


def fetch_json(url: str, timeout: float = 2.0, token: str = "") -> dict[str, Any] | None:
    req = urllib.request.Request(url)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            data = orjson.loads(resp.read())
            return data if isinstance(data, dict) else None
    except (urllib.error.URLError, OSError, ValueError):
        return None


def _fmt_pct(v: Any) -> str:
    try:
        return f"{100.0 * float(v):.2f}%"
    except (TypeError, ValueError):
        return "-"


def lag_text(wm: float, now: float) -> str:
    """How far event time is behind the wall clock, and why that can be normal."""
    if not wm:
        return "no event time yet"
    lag = now - wm
    if lag < 120:
        return f"{lag:.0f} s behind the wall clock"
    return (
        f"{lag / 60:.0f} min behind the wall clock: the events are stamped in the past "
        "(a simulator replaying history faster than real time, or a backlog); detection "
        "follows event time, not the wall clock"
    )


def incident_cells(i: dict[str, Any], throttles: dict[str, dict[str, Any]]) -> list[str]:
    """type, scope, severity, opened, rate vs baseline, top reply, action (the throttle)."""
    ev = i.get("evidence", {}) or {}
    rate = f"{_fmt_pct(ev.get('rate'))} vs {_fmt_pct(ev.get('baseline'))}"
    replies = ev.get("top_replies") or []
    top = str(replies[0][0])[:60] if replies and replies[0] else "-"
    t = throttles.get(str(i.get("scope")))
    if t is not None:
        action = f"{t.get('state')} x{float(t.get('rate_factor', 1.0)):.2f}"
    elif i.get("closed_at"):
        action = f"closed {time.strftime('%H:%M', time.gmtime(float(i['closed_at'])))}"
    else:
        action = "-"
    return [
        str(i.get("type")),
        str(i.get("scope")),
        str(i.get("severity")),
        time.strftime("%H:%M", time.gmtime(float(i.get("opened_at") or 0))),
        rate,
        top,
        action,
    ]


def plain_lines(
    status: dict[str, Any] | None,
    recent: list[dict[str, Any]],
    throttles: dict[str, dict[str, Any]],
    known: dict[str, str],
) -> list[str]:
    """The line-based summary (output not a terminal): one status line, then one line per
    incident change since the last call (``known``: incident id -> "open" / "closed")."""
    stamp = time.strftime("%H:%M:%S")
    if status is None:
        return [f"{stamp} waiting for the worker ..."]
    ing = status.get("ingest", {})
    wm = float(status.get("rollup", {}).get("watermark", 0.0) or 0.0)
    opened = sum(1 for i in recent if not i.get("closed_at"))
    out = [
        f"{stamp} accepted {ing.get('accepted', 0):,} rejected "
        f"{sum(ing.get('rejected', {}).values()):,} event time "
        f"{time.strftime('%Y-%m-%d %H:%M', time.gmtime(wm)) if wm else '-'} UTC "
        f"({lag_text(wm, time.time())}); open incidents {opened}, throttled scopes "
        f"{len(throttles)}"
    ]
    for i in recent:
        iid = str(i.get("id"))
        now_state = "closed" if i.get("closed_at") else "open"
        if known.get(iid) == now_state:
            continue
        known[iid] = now_state
        cells = incident_cells(i, throttles)
        verb = "OPENED" if now_state == "open" else "CLOSED"
        out.append(
            f"{stamp} {verb} {cells[0]} on {cells[1]} ({cells[2]}, since {cells[3]} UTC): "
            f"{cells[4]}; top reply: {cells[5]}; throttle: {cells[6]}"
        )
    return out


def render(
    status: dict[str, Any] | None,
    metrics_url: str,
    recent: list[dict[str, Any]] | None = None,
    throttles: dict[str, dict[str, Any]] | None = None,
) -> Group:
    head = Text(f"repmon  |  metrics: {metrics_url}  |  Ctrl-C stops everything", style="bold")
    if status is None:
        return Group(head, Text("waiting for the worker ..."))
    ing = status.get("ingest", {})
    wm = status.get("rollup", {}).get("watermark", 0.0) or 0.0
    info = Text(
        f"accepted {ing.get('accepted', 0):,}  rejected {sum(ing.get('rejected', {}).values()):,}"
        f"  event time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(wm)) if wm else '-'} UTC"
        f"  ({lag_text(wm, time.time())})  partitions {ing.get('partitions', [])}"
    )
    mon = status.get("monitor", {})
    prov = Table(title="providers (last 15 min)", expand=False)
    for col in ("provider", "attempts", "delivery", "deferral", "bounce", "block", "complaint"):
        prov.add_column(col, justify="right" if col != "provider" else "left")
    for row in (mon.get("scopes", {}).get("provider") or [])[:10]:
        m15 = row.get("m15", {})
        r = m15.get("rates", {})
        prov.add_row(
            str(row.get("scope", "")).removeprefix("provider:"),
            f"{int(m15.get('counts', {}).get('attempts', 0)):,}",
            _fmt_pct(r.get("delivery")),
            _fmt_pct(r.get("deferral")),
            _fmt_pct(r.get("bounce")),
            _fmt_pct(r.get("block")),
            _fmt_pct(r.get("complaint")),
        )
    inc = Table(title="incidents (open, and closed in the last hour)", expand=False)
    for col in ("type", "scope", "severity", "opened (UTC)", "rate vs baseline", "top reply",
                "throttle / state"):  # fmt: skip
        inc.add_column(col)
    rows = recent if recent is not None else mon.get("open_incidents", [])
    for i in rows[-15:]:
        inc.add_row(*incident_cells(i, throttles or {}))
    return Group(head, info, prov, inc)


def recent_incidents(base: str, token: str, status: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Open incidents and those closed in the last hour of event time, oldest first."""
    if status is None:
        return []
    doc = fetch_json(f"{base}/incidents?state=recent", token=token) or {}
    wm = float(status.get("rollup", {}).get("watermark", 0.0) or 0.0)
    return [
        i
        for i in doc.get("incidents", [])
        if i.get("closed_at") is None or float(i["closed_at"]) >= wm - 3600.0
    ]


def throttled(base: str, token: str) -> dict[str, dict[str, Any]]:
    doc = fetch_json(f"{base}/throttle", token=token) or {}
    return {str(d.get("scope")): d for d in doc.get("decisions", [])}


def _spawn(args: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fh = log_path.open("ab")
    return subprocess.Popen(
        args, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _stop(proc: subprocess.Popen[bytes] | None, name: str, console: Console) -> None:
    if proc is None or proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
    except ProcessLookupError:
        pass
    console.print(f"stopped {name}")


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run(
        scenario: str = typer.Option("mixed", "--scenario", "-s", help="simulator scenario"),
        rate: float = typer.Option(
            40.0, "--rate", help="simulated 'sent' events per simulated second"
        ),
        speedup: float = typer.Option(
            60.0, "--speedup", help="simulated seconds per wall-clock second"
        ),
        duration: str = typer.Option("6h", "--duration", help="simulated span"),
        seed: int = typer.Option(1, "--seed"),
        simulate: bool = typer.Option(True, "--simulate/--no-simulate", help="run the simulator"),
        run_for: float = typer.Option(
            0.0, "--for", help="stop after this many seconds (0 = until Ctrl-C)"
        ),
        keep_broker: bool = typer.Option(
            False, "--keep-broker", help="leave the local broker running"
        ),
    ) -> None:
        """Run the monitor: local broker + worker + simulated traffic, with a live summary."""
        console = Console(stderr=True)
        # Ctrl-C and `kill` both stop everything this command started, even when it was
        # launched with SIGINT ignored (a background job of a non-interactive shell).
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, _raise_interrupt)
        settings = Settings()
        env = dict(os.environ)
        env.setdefault("REPMON_PYTHON", sys.executable)
        logs = REPO / "var" / "log"
        started_broker = False
        already = subprocess.call(
            [str(LOCAL_KAFKA), "status"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if "REPMON_KAFKA_BOOTSTRAP" not in os.environ and already != 0:
            console.print("starting the local Kafka broker (deploy/kafka/local-kafka) ...")
            rc = subprocess.call([str(LOCAL_KAFKA), "start"], env=env)
            if rc != 0:
                console.print(
                    "[red]the local broker did not start; see deploy/kafka/local-kafka logs"
                )
                raise typer.Exit(1)
            started_broker = True
        metrics_url = f"http://{settings.web_host}:{settings.web_port}/metrics"
        exe = [sys.executable, "-m", "streams.cli"]
        worker = _spawn([*exe, "worker"], logs / "worker.log", env)
        sim = None
        if simulate:
            sim = _spawn(
                [
                    *exe,
                    "simulate",
                    "--scenario",
                    scenario,
                    "--rate",
                    str(rate),
                    "--speedup",
                    str(speedup),
                    "--duration",
                    duration,
                    "--seed",
                    str(seed),
                ],
                logs / "simulate.log",
                env,
            )
        console.print(f"worker log: {logs / 'worker.log'}   metrics: {metrics_url}")
        status_url = f"http://{settings.web_host}:{settings.web_port}/status?top=10"
        t_end = time.monotonic() + run_for if run_for > 0 else None
        base = f"http://{settings.web_host}:{settings.web_port}"
        token = settings.api_token
        try:
            if console.is_terminal:
                with Live(render(None, metrics_url), console=console, refresh_per_second=1) as live:
                    while t_end is None or time.monotonic() < t_end:
                        if worker.poll() is not None:
                            console.print(
                                f"[red]worker exited ({worker.returncode}); see "
                                f"{logs / 'worker.log'}"
                            )
                            break
                        st = fetch_json(status_url, token=token)
                        rec = recent_incidents(base, token, st)
                        live.update(render(st, metrics_url, rec, throttled(base, token)))
                        time.sleep(2.0)
            else:
                # not a terminal (a pipe, a file): plain lines, flushed, every 10 s
                known: dict[str, str] = {}
                last = 0.0
                while t_end is None or time.monotonic() < t_end:
                    if worker.poll() is not None:
                        print(f"worker exited ({worker.returncode}); see {logs / 'worker.log'}")
                        break
                    if time.monotonic() - last >= 10.0:
                        last = time.monotonic()
                        st = fetch_json(status_url, token=token)
                        rec = recent_incidents(base, token, st)
                        for line in plain_lines(st, rec, throttled(base, token), known):
                            print(line, flush=True)
                    time.sleep(1.0)
        except (KeyboardInterrupt, BrokenPipeError):
            pass
        finally:
            _stop(sim, "simulator", console)
            _stop(worker, "worker", console)
            if started_broker and not keep_broker:
                subprocess.call([str(LOCAL_KAFKA), "stop"], env=env)
        if worker.returncode not in (None, 0, -signal.SIGTERM):
            raise typer.Exit(1)
