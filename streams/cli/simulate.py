"""``repmon simulate``: realistic traffic to Kafka (kafka-python, like a sending fleet) or JSONL."""

from __future__ import annotations

import gzip
import re
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson
import typer

from streams.worker.settings import Settings

_DUR_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*$")


def parse_duration(text: str) -> float:
    """'90', '90s', '15m', '6h', '2d' -> seconds."""
    m = _DUR_RE.match(text)
    if not m:
        raise typer.BadParameter(f"not a duration: {text!r} (use e.g. 90s, 15m, 6h, 2d)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _domain_of(ev: dict[str, Any]) -> bytes:
    d = ev.get("recipient_domain")
    if not d:
        r = str(ev.get("recipient", ""))
        d = r.rpartition("@")[2]
    return str(d).lower().encode()


def paced(
    chunks: Iterator[list[dict[str, Any]]], speedup: float, t0_event: float
) -> Iterator[dict[str, Any]]:
    """Yield events so that event time advances ``speedup`` times faster than the wall clock."""
    wall0 = time.monotonic()
    for chunk in chunks:
        for ev in chunk:
            if speedup > 0:
                due = wall0 + (float(ev["timestamp"]) - t0_event) / speedup
                delay = due - time.monotonic()
                if delay > 0.002:
                    time.sleep(delay)
            yield ev


def open_out(path: Path) -> IO[bytes]:
    if str(path) == "-":
        return sys.stdout.buffer
    if path.suffix == ".gz":
        return gzip.open(path, "wb", compresslevel=5)  # type: ignore[return-value]
    return path.open("wb")


def register(app: typer.Typer) -> None:
    @app.command("simulate")
    def simulate(
        scenario: str = typer.Option("baseline", "--scenario", "-s", help="scenario name"),
        seed: int = typer.Option(1, "--seed", help="random seed (same seed, same events)"),
        rate: float = typer.Option(50.0, "--rate", help="mean 'sent' events per simulated second"),
        duration: str = typer.Option(
            "6h", "--duration", help="simulated time span, e.g. 30m, 6h, 2d"
        ),
        speedup: float = typer.Option(
            0.0,
            "--speedup",
            help="event time runs this many times faster than the wall clock (1 = real time, 0 = as fast as possible)",
        ),
        start: float = typer.Option(
            None,
            "--start",
            help="event-time start (epoch s). Default: so that the run ends now (never in the future)",
        ),
        out: Path = typer.Option(
            None, "--out", "-o", help="write JSONL (.gz ok; '-' = stdout) instead of Kafka"
        ),
        truth: Path = typer.Option(
            None, "--truth", help="write the scenario's ground truth (JSON) here"
        ),
        bootstrap: str = typer.Option(
            None, "--bootstrap", help="Kafka bootstrap (default REPMON_KAFKA_BOOTSTRAP)"
        ),
        topic: str = typer.Option(None, "--topic", help="topic (default REPMON_TOPIC_EVENTS)"),
        max_events: int = typer.Option(
            0, "--max-events", help="stop after this many events (0 = no limit)"
        ),
        list_scenarios: bool = typer.Option(False, "--list", help="list the scenarios and exit"),
    ) -> None:
        """Produce realistic mail events: consumer providers, B2B domains, named scenarios."""
        from models.sim.simulator import SCENARIOS, SimConfig, Simulator

        if list_scenarios:
            for name in SCENARIOS:
                typer.echo(name)
            raise typer.Exit(0)
        if scenario not in SCENARIOS:
            raise typer.BadParameter(
                f"unknown scenario {scenario!r}; one of {', '.join(SCENARIOS)}"
            )
        span = parse_duration(duration)
        if start is None:
            # never produce events in the future of the wall clock when paced faster than real time
            start = time.time() - (span if speedup != 1 else 0.0)
        sim = Simulator(
            SimConfig(seed=seed, start=start, duration_s=span, rate=rate, scenario=scenario)
        )
        if truth is not None:
            truth.write_bytes(
                orjson.dumps(
                    [
                        {
                            "type": t.type,
                            "scopes": list(t.scopes),
                            "act_scope": t.act_scope,
                            "onset": t.onset,
                            "end": t.end,
                        }
                        for t in sim.truth
                    ],
                    option=orjson.OPT_INDENT_2,
                )
            )
        events = paced(sim.chunks(60.0), speedup, start)
        n = 0
        t_begin = time.monotonic()
        if out is not None:
            fh = open_out(out)
            try:
                for ev in events:
                    fh.write(orjson.dumps(ev))
                    fh.write(b"\n")
                    n += 1
                    if max_events and n >= max_events:
                        break
            finally:
                if fh is not sys.stdout.buffer:
                    fh.close()
                else:
                    fh.flush()
        else:
            from kafka import KafkaProducer

            from streams.worker.topics import ensure_topics

            settings = Settings()
            if bootstrap:
                settings.kafka_bootstrap = bootstrap
            if topic:
                settings.topic_events = topic
            ensure_topics(settings)
            producer = KafkaProducer(
                bootstrap_servers=settings.kafka_bootstrap,
                linger_ms=20,
                batch_size=256 * 1024,
                acks=1,
            )
            try:
                for ev in events:
                    producer.send(settings.topic_events, key=_domain_of(ev), value=orjson.dumps(ev))
                    n += 1
                    if max_events and n >= max_events:
                        break
            except KeyboardInterrupt:
                pass
            finally:
                producer.flush(timeout=30)
                producer.close(timeout=30)
        took = time.monotonic() - t_begin
        typer.echo(
            f"simulate: {n} events ({scenario}, seed {seed}) in {took:.1f} s "
            f"({n / took if took > 0 else 0:.0f}/s)",
            err=True,
        )
