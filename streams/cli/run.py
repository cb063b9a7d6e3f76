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


def render(status: dict[str, Any] | None, metrics_url: str) -> Group:
    head = Text(f"repmon  |  metrics: {metrics_url}  |  Ctrl-C stops everything", style="bold")
    if status is None:
        return Group(head, Text("waiting for the worker ..."))
    ing = status.get("ingest", {})
    wm = status.get("rollup", {}).get("watermark", 0.0) or 0.0
    lag = time.time() - wm if wm else float("nan")
    info = Text(
        f"accepted {ing.get('accepted', 0):,}  rejected {sum(ing.get('rejected', {}).values()):,}"
        f"  event time {time.strftime('%Y-%m-%d %H:%M', time.gmtime(wm)) if wm else '-'} UTC"
        f"  ({lag / 60:.0f} min behind the wall clock)  partitions {ing.get('partitions', [])}"
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
    inc = Table(title="open incidents", expand=False)
    for col in ("type", "scope", "severity", "opened (UTC)"):
        inc.add_column(col)
    for i in mon.get("open_incidents", [])[:15]:
        inc.add_row(
            str(i.get("type")),
            str(i.get("scope")),
            str(i.get("severity")),
            time.strftime("%H:%M", time.gmtime(float(i.get("opened_at") or 0))),
        )
    return Group(head, info, prov, inc)


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
        try:
            with Live(render(None, metrics_url), console=console, refresh_per_second=1) as live:
                while t_end is None or time.monotonic() < t_end:
                    if worker.poll() is not None:
                        console.print(
                            f"[red]worker exited ({worker.returncode}); see {logs / 'worker.log'}"
                        )
                        break
                    live.update(
                        render(fetch_json(status_url, token=settings.api_token), metrics_url)
                    )
                    time.sleep(2.0)
        except KeyboardInterrupt:
            pass
        finally:
            _stop(sim, "simulator", console)
            _stop(worker, "worker", console)
            if started_broker and not keep_broker:
                subprocess.call([str(LOCAL_KAFKA), "stop"], env=env)
        if worker.returncode not in (None, 0, -signal.SIGTERM):
            raise typer.Exit(1)
