"""Throughput of the worker against raw Kafka consumption, measured in one run on one topic.

(a) raw aiokafka ``getmany`` + orjson decode (the floor any Python consumer pays),
(b) a bare Faust agent that only iterates (what Faust itself costs),
(c) the repmon worker end to end (ingest, classify, aggregate, tick flush, rollup, detectors,
    the recipient suppression policy), and (c') the same without the suppression policy.

All three read the same pre-filled topic on the same broker. (b) and (c) run in their own
processes, started fresh, and time the span from their first to their last processed event with
the same 50 ms in-process timer, so group join and start-up are excluded from both alike.

Usage (the broker must run: deploy/kafka/local-kafka start):
    .venv/bin/python bench/throughput.py [--events 300000] [--partitions 6]
Targets (issue 2): c >= 0.7 x b and c >= 15,000 events/s per worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def fill_topic(bootstrap: str, topic: str, partitions: int, n: int, seed: int) -> int:
    import orjson
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    from models.sim.simulator import SimConfig, Simulator

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(topic, partitions, 1)])
    admin.close()
    # a recent baseline scenario: realistic mix of kinds, providers, B2B domains and replies
    start = time.time() - 6 * 3600
    sim = Simulator(
        SimConfig(seed=seed, start=start, duration_s=6 * 3600, rate=40.0, scenario="mixed")
    )
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024)
    sent = 0
    for chunk in sim.chunks(300.0):
        for ev in chunk:
            dom = str(ev.get("recipient", "")).rpartition("@")[2].encode()
            producer.send(topic, key=dom, value=orjson.dumps(ev))
            sent += 1
            if sent >= n:
                break
        if sent >= n:
            break
    producer.flush()
    producer.close()
    return sent


async def raw_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    import orjson
    from aiokafka import AIOKafkaConsumer

    c = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_partition_fetch_bytes=4 << 20,
    )
    await c.start()
    got = 0
    t0 = None
    try:
        while got < n:
            batch = await c.getmany(timeout_ms=1000, max_records=10_000)
            for recs in batch.values():
                if t0 is None and recs:
                    t0 = time.perf_counter()
                for r in recs:
                    orjson.loads(r.value)
                got += sum(1 for _ in recs)
        t1 = time.perf_counter()
    finally:
        await c.stop()
    assert t0 is not None
    return n / (t1 - t0)


def run_faust_mode(mode: str, bootstrap: str, topic: str, n: int, out: Path) -> None:
    """Child process: run a Faust worker in `mode` (bare|repmon) until n events are processed."""
    import faust

    from streams.worker.settings import Settings

    tag = uuid.uuid4().hex[:6]
    marks: dict[str, float] = {}
    if mode == "bare":
        app = faust.App(
            f"bench-bare-{tag}",
            broker=f"kafka://{bootstrap}",
            value_serializer="raw",
            key_serializer="raw",
            web_enabled=False,
            store="memory://",
            consumer_auto_offset_reset="earliest",
            stream_buffer_maxsize=16384,
            broker_commit_every=10_000,
            datadir=tempfile.mkdtemp(),
        )
        t = app.topic(topic, value_type=bytes, value_serializer="raw")
        count = [0]

        @app.agent(t)
        async def bare(stream: faust.StreamT[bytes]) -> None:
            async for _ in stream:
                count[0] += 1

        def processed() -> int:
            return count[0]
    else:
        from streams.worker.app import create_app
        from streams.worker.topics import ensure_topics

        settings = Settings(
            kafka_bootstrap=bootstrap,
            app_id=f"bench-repmon-{tag}",
            topic_events=topic,
            topic_dlq=f"{topic}.dlq",
            topic_rollup=f"bench-{tag}.rollup",
            topic_incidents=f"bench-{tag}.incidents",
            topic_state=f"bench-{tag}.state",
            topic_ingest_state=f"bench-{tag}.state.ingest",
            topic_suppressions=f"bench-{tag}.suppressions",
            topic_workers=f"bench-{tag}.workers",
            suppression=mode == "repmon",
            web_port=int(os.environ.get("BENCH_WEB_PORT", "6099")),
            data_dir=Path(tempfile.mkdtemp()),
            log_level="warning",
        )
        ensure_topics(settings)
        app, state = create_app(settings)

        def processed() -> int:
            return sum(
                p.stats.accepted + sum(p.stats.rejected.values()) for p in state.pipelines.values()
            )

    @app.timer(interval=0.05)
    async def watch() -> None:
        k = processed()
        if k > 0 and "first" not in marks:
            marks["first"] = time.perf_counter()
            marks["first_count"] = k
        if k >= n and "last" not in marks:
            marks["last"] = time.perf_counter()
            rate = (n - marks["first_count"]) / max(1e-9, marks["last"] - marks["first"])
            out.write_text(json.dumps({"events_per_s": rate}))
            os._exit(0)

    worker = faust.Worker(app, loglevel="warning", quiet=True)
    sys.argv = [sys.argv[0]]
    worker.execute_from_commandline()


def child(mode: str, bootstrap: str, topic: str, n: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                mode,
                "--bootstrap",
                bootstrap,
                "--topic",
                topic,
                "--events",
                str(n),
                "--result",
                str(out),
            ],
            timeout=900,
            capture_output=True,
            text=True,
        )
        if not out.exists():
            raise RuntimeError(
                f"{mode} run failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return float(json.loads(out.read_text())["events_per_s"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--bootstrap", default=os.environ.get("REPMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    )
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--partitions", type=int, default=6)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--child", choices=["bare", "repmon", "repmon-nosup"])
    ap.add_argument("--topic")
    ap.add_argument("--result", type=Path)
    args = ap.parse_args()
    if args.child:
        run_faust_mode(args.child, args.bootstrap, args.topic, args.events, args.result)
        return

    topic = f"bench-{uuid.uuid4().hex[:8]}.events"
    t = time.perf_counter()
    n = fill_topic(args.bootstrap, topic, args.partitions, args.events, args.seed)
    print(
        f"filled {topic}: {n} events, {args.partitions} partitions in {time.perf_counter() - t:.1f} s"
    )
    a = asyncio.run(raw_aiokafka(args.bootstrap, topic, n))
    print(f"(a) raw aiokafka getmany + decode : {a:10,.0f} events/s")
    b = child("bare", args.bootstrap, topic, n)
    print(f"(b) bare Faust agent              : {b:10,.0f} events/s")
    c = child("repmon", args.bootstrap, topic, n)
    print(f"(c) repmon worker end to end      : {c:10,.0f} events/s")
    c2 = child("repmon-nosup", args.bootstrap, topic, n)
    print(f"(c') the same, no suppression     : {c2:10,.0f} events/s  (c/c' = {c / c2:.3f})")
    print(
        f"c/a = {c / a:.3f}   c/b = {c / b:.3f}  (target c/b >= 0.70: {'met' if c / b >= 0.7 else 'NOT met'})"
    )
    print(
        f"c = {c:,.0f}/s vs target 15,000/s: ratio {c / 15000:.2f} ({'met' if c >= 15000 else 'NOT met'})"
    )
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}"
    )


if __name__ == "__main__":
    main()
