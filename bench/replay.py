"""Replay throughput: simulator output in a temp JSONL file through ``repmon replay``'s loop.

    .venv/bin/python bench/replay.py                  # 2 h of 'mixed' traffic at 50 msgs/s
    .venv/bin/python bench/replay.py --hours 4 --rate 100 --scenario baseline

Reports events/s of the whole replay loop (read + JSON decode + Pipeline + Monitor, as
``repmon replay`` runs it, stdout discarded) as a ratio to the 100,000 events/s target, for the
in-process loop and for ``--jobs N`` (N ingest processes sharded by recipient, Deltas merged per
tick into one Monitor), plus a breakdown: Pipeline alone (feed + flush) and Monitor alone (add +
advance on the same Deltas). Lines go to the Pipeline in batches (``Pipeline.feed_many``), as
``repmon replay`` does.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from models.detect.monitor import Monitor
from models.sim.simulator import SimConfig, Simulator
from models.state.deltas import Deltas
from streams.cli.replay import TickLoop, replay_lines, replay_parallel
from streams.worker.decoding import ingest_pipeline

TARGET = 100_000.0


def write_events(path: Path, scenario: str, hours: float, rate: float, seed: int) -> int:
    sim = Simulator(SimConfig(seed=seed, scenario=scenario, duration_s=hours * 3600, rate=rate))
    n = 0
    with path.open("wb") as fh:
        for chunk in sim.chunks(300.0):
            fh.write(b"".join(orjson.dumps(ev) + b"\n" for ev in chunk))
            n += len(chunk)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenario", default="mixed")
    ap.add_argument("--hours", type=float, default=2.0)
    ap.add_argument("--rate", type=float, default=50.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=3, help="best of N timed runs")
    ap.add_argument("--jobs", type=int, default=2, help="also time `repmon replay --jobs N`")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "events.jsonl"
        t = time.perf_counter()
        n = write_events(path, args.scenario, args.hours, args.rate, args.seed)
        size = os.path.getsize(path)
        print(
            f"wrote {n:,} events ({size / 1e6:.0f} MB) of '{args.scenario}' "
            f"({args.hours:g} h at {args.rate:g} msgs/s) in {time.perf_counter() - t:.1f} s"
        )
        best = float("inf")
        opened = 0
        for _ in range(args.repeat):
            mon, pipe = Monitor(), ingest_pipeline()
            sink = io.BytesIO()
            t = time.perf_counter()
            with path.open("rb") as fh:
                stats = replay_lines(fh, mon, pipe, out=sink)
            best = min(best, time.perf_counter() - t)
            opened = sum(stats.opened.values())
        best_par = float("inf")
        if args.jobs > 1:
            for _ in range(args.repeat):
                t = time.perf_counter()
                replay_parallel([path], Monitor(), args.jobs, out=io.BytesIO())
                best_par = min(best_par, time.perf_counter() - t)
        # breakdown on the same data: the same batched loop, Deltas kept, then the Monitor alone
        deltas: list[Deltas] = []
        loop = TickLoop(ingest_pipeline(), lambda d, _b: deltas.append(d))
        t = time.perf_counter()
        with path.open("rb") as fh:
            loop.run(fh)
        loop.finish()
        t_pipe = time.perf_counter() - t
        mon = Monitor()
        t = time.perf_counter()
        for d in deltas:
            mon.add(d)
            mon.advance(d.watermark)
        t_mon = time.perf_counter() - t
    rate = n / best
    print(
        f"replay loop: {rate:,.0f} events/s (best of {args.repeat}: {best:.2f} s), {opened} incidents"
    )
    print(f"ratio to target ({TARGET:,.0f}/s): {rate / TARGET:.2f}")
    if args.jobs > 1:
        prate = n / best_par
        print(
            f"replay --jobs {args.jobs}: {prate:,.0f} events/s (best of {args.repeat}: "
            f"{best_par:.2f} s) on {os.cpu_count()} CPUs; ratio to target {prate / TARGET:.2f}"
        )
    print(
        f"breakdown: Pipeline feed+flush {n / t_pipe:,.0f} events/s ({t_pipe:.2f} s); "
        f"Monitor add+advance {t_mon:.2f} s for {len(deltas)} ticks "
        f"({t_mon / len(deltas) * 1000:.2f} ms/tick, {mon.metrics()['active_scopes']} scopes)"
    )


if __name__ == "__main__":
    main()
