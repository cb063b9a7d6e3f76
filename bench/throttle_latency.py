"""Wall-clock latency from the first failing event of an outage to its throttle record on the
throttle topic, on the real broker and a real worker (docs/performance.md).

    REPMON_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python bench/throttle_latency.py

A simulated provider outage is produced in real time: two hours of history first (stamped in the
past, read as a backlog so that the baselines exist), then live traffic stamped with the wall
clock, the outage starting ``--lead`` seconds in. The bench notes the wall time at which the
first failing attempt of the outage's scope was sent, and the wall time at which a consumer
following the throttle topic (read_committed: the owner writes in transactions) sees the
outage's scope restricted. The difference is the fleet's reaction time: the detector's step
(``DETECT_EVERY_S``, 60 s) and the volume it needs, the worker's tick, the transaction. Nothing
is asserted: it prints the figures of one run.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from models.ingest.providers import default_table  # noqa: E402
from models.sim.simulator import SimConfig, Simulator  # noqa: E402

ATTEMPT_FAIL = ("deferred", "bounced", "rejected")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=30.0, help="simulated sends per second")
    ap.add_argument("--lead", type=float, default=45.0, help="live seconds before the outage")
    ap.add_argument("--timeout", type=float, default=600.0)
    args = ap.parse_args()
    bootstrap = os.environ.get("REPMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    from kafka import KafkaConsumer, KafkaProducer

    from streams.worker.settings import Settings
    from streams.worker.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    tmp = Path(tempfile.mkdtemp(prefix="repmon-lat-"))
    env = dict(os.environ)
    topics = {
        "events": f"lat-{tag}.events",
        "dlq": f"lat-{tag}.events.dlq",
        "rollup": f"lat-{tag}.rollup",
        "incidents": f"lat-{tag}.incidents",
        "throttle": f"lat-{tag}.throttle",
        "throttle_overrides": f"lat-{tag}.throttle.overrides",
        "state": f"lat-{tag}.state",
        "ingest_state": f"lat-{tag}.state.ingest",
    }
    env.update({f"REPMON_TOPIC_{k.upper()}": v for k, v in topics.items()})
    env.update(
        REPMON_KAFKA_BOOTSTRAP=bootstrap,
        REPMON_APP_ID=f"repmon-lat-{tag}",
        REPMON_WEB_PORT=str(free_port()),
        REPMON_DATA_DIR=str(tmp / "faust"),
    )
    ensure_topics(
        Settings(
            _env_file=None,  # type: ignore[call-arg]
            kafka_bootstrap=bootstrap,
            **{f"topic_{k}": v for k, v in topics.items()},
        )
    )
    now = time.time()
    history = 2 * 3600.0
    sim = Simulator(
        SimConfig(
            seed=11,
            start=now - history,
            duration_s=history + args.lead + 900.0,
            rate=args.rate,
            scenario="provider-outage",
            params={"onset_s": history + args.lead, "length_s": 900.0},
        )
    )
    truth = sim.truth[0]
    table = default_table().domain_provider
    events = [e for chunk in sim.chunks(10.0) for e in chunk]
    log = (tmp / "worker.log").open("wb")
    worker = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "worker"],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    seen: dict[str, float] = {}
    stop = threading.Event()

    def follow() -> None:
        c = KafkaConsumer(
            topics["throttle"],
            bootstrap_servers=bootstrap,
            auto_offset_reset="earliest",
            isolation_level="read_committed",
            consumer_timeout_ms=200,
        )
        try:
            while not stop.is_set():
                for m in c:
                    rec: dict[str, Any] = orjson.loads(m.value)
                    if rec["scope"] in truth.scopes and rec["state"] != "normal":
                        seen.setdefault("record", time.time())
                        seen.setdefault("scope_" + rec["scope"], time.time())
        finally:
            c.close()

    t = threading.Thread(target=follow, daemon=True)
    t.start()
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    first_fail: float | None = None
    try:
        i = 0
        while i < len(events) and "record" not in seen:
            ev = events[i]
            ts = float(ev["timestamp"])
            wait = ts - time.time()
            if wait > 0:
                prod.flush()
                time.sleep(min(wait, 0.5))
                if time.time() - now > args.timeout:
                    break
                continue
            ev = {**ev, "timestamp": ts}
            prod.send(
                topics["events"],
                key=str(ev["recipient_domain"]).encode(),
                value=orjson.dumps(ev),
            )
            if (
                first_fail is None
                and ts >= truth.onset
                and ev["event"] in ATTEMPT_FAIL
                and f"provider:{table.get(str(ev.get('recipient_domain')))}" in truth.scopes
            ):
                prod.flush()
                first_fail = time.time()
            i += 1
        deadline = time.time() + 120.0
        while "record" not in seen and time.time() < deadline:
            time.sleep(0.2)
    finally:
        stop.set()
        prod.close(timeout=10)
        worker.terminate()
        try:
            worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            worker.kill()
        t.join(timeout=10)
    print(f"outage scope(s): {sorted(truth.scopes)[:3]}")
    if first_fail is None or "record" not in seen:
        print(f"no throttle record seen (first failing event sent: {first_fail is not None})")
        print(f"worker log: {tmp / 'worker.log'}")
        sys.exit(1)
    scopes = sorted(k[6:] for k in seen if k.startswith("scope_"))
    print(f"throttle record for {scopes} after {seen['record'] - first_fail:.1f} s")
    print(
        f"(rate {args.rate:g} sends/s, detector step 60 s of event time, worker tick 1 s; "
        f"the live traffic is stamped with the wall clock)"
    )


if __name__ == "__main__":
    main()
