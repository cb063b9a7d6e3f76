"""Events per second through ``repmon gateway`` with acks=all on the local broker (issue 12:
target >= 5,000 events/s).

Run from the repository root, with the broker up (``deploy/kafka/local-kafka start``):

    .venv/bin/python bench/gateway.py                  # --events 40000 --concurrency 16

It starts ``repmon gateway`` as its own process on private topics (``bench-gw-<tag>.*``, deleted
at the end) and posts, from one aiohttp client with ``--concurrency`` requests in flight:

* ``sendgrid``: SendGrid Event Webhook batches of 100 events, signed (the gateway verifies every
  signature), the records of bench/ingest.py (delivered, deferred, bounce);
* ``kumomta``: KumoMTA batched log hooks (``batch_size = 100``: a JSON array of 100 records of
  about 1 kB, Delivery / TransientFailure / Bounce, as bench/ingest.py makes them);
* ``ses``: SNS notifications of SES Delivery events, one event per request (as SNS sends them).

Every recipient is distinct. A request counts once the gateway answered 200, which it does only
after the broker acknowledged each of its events (acks=all, idempotent producer). At the end the
events topic must hold exactly the acknowledged events (its end offsets), or the bench fails.
Printed per source: requests, events, wall seconds, events/s, request latency (p50, p99) and the
gateway process's CPU seconds per 1,000 events (the client and the broker share the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import platform
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
import orjson  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402

from bench.ingest import kumomta_log, sendgrid_bodies, ses_bodies  # noqa: E402

TARGET = 5_000
TOKEN = "bench-token"


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bodies(
    source: str, n_events: int, batch: int, priv: ec.EllipticCurvePrivateKey
) -> list[tuple[str, bytes, dict[str, str], int]]:
    """(path, body, headers, events in it) of every request of a source."""
    out: list[tuple[str, bytes, dict[str, str], int]] = []
    auth = {"Authorization": f"Bearer {TOKEN}"}
    if source == "sendgrid":
        now = str(int(time.time()))
        for line in sendgrid_bodies(n_events, batch).splitlines():
            sig = priv.sign(now.encode() + line, ec.ECDSA(hashes.SHA256()))
            h = {
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": now,
            }
            out.append(("/ingest/sendgrid", line, h, len(orjson.loads(line))))
    elif source == "kumomta":
        lines = kumomta_log(n_events).splitlines()
        for i in range(0, len(lines), batch):
            chunk = lines[i : i + batch]
            out.append(("/ingest/kumomta", b"[" + b",".join(chunk) + b"]", auth, len(chunk)))
    elif source == "ses":
        for line in ses_bodies(n_events).splitlines():
            h = {**auth, "x-amz-sns-message-type": "Notification"}
            out.append(("/ingest/ses", line, h, 1))
    return out


async def post_all(
    url: str, reqs: list[tuple[str, bytes, dict[str, str], int]], concurrency: int
) -> tuple[int, list[float]]:
    """Post every request with ``concurrency`` in flight; (events acknowledged, latencies)."""
    queue: asyncio.Queue[tuple[str, bytes, dict[str, str], int]] = asyncio.Queue()
    for r in reqs:
        queue.put_nowait(r)
    acked = 0
    lat: list[float] = []
    conn = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=conn) as session:

        async def worker() -> None:
            nonlocal acked
            while True:
                try:
                    path, body, headers, n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                t0 = time.perf_counter()
                async with session.post(path, data=body, headers=headers) as resp:
                    doc = await resp.json(content_type=None)
                    if resp.status != 200 or doc["events"] != n:
                        raise RuntimeError(f"{path}: {resp.status} {doc}")
                lat.append(time.perf_counter() - t0)
                acked += n

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return acked, lat


def end_offsets(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        parts = c.partitions_for_topic(topic) or set()
        return int(sum(c.end_offsets([TopicPartition(topic, p) for p in parts]).values()))
    finally:
        c.close()


def delete_topics(bootstrap: str, topics: list[str]) -> None:
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        existing = set(admin.list_topics())
        mine = [t for t in topics if t in existing]
        if mine:
            admin.delete_topics(mine)
    finally:
        admin.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=40_000, help="events per batched source")
    ap.add_argument("--ses-events", type=int, default=5_000, help="SES notifications")
    ap.add_argument("--batch", type=int, default=100, help="events per SendGrid/KumoMTA body")
    ap.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    ap.add_argument("--source", action="append", help="only these (sendgrid, kumomta, ses)")
    args = ap.parse_args()
    bootstrap = os.environ.get("REPMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    tag = uuid.uuid4().hex[:8]
    # every topic the gateway makes sure of (ensure_topics) is private, and deleted at the end
    topics = {
        f"REPMON_TOPIC_{k.upper()}": f"bench-gw-{tag}.{k}"
        for k in (
            "events",
            "dlq",
            "rollup",
            "incidents",
            "throttle",
            "throttle_overrides",
            "state",
            "ingest_state",
        )
    }
    priv = ec.generate_private_key(ec.SECP256R1())
    pub = base64.b64encode(
        priv.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    ).decode()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ)
    env.update(
        REPMON_KAFKA_BOOTSTRAP=bootstrap,
        REPMON_GATEWAY_PORT=str(port),
        REPMON_GATEWAY_TOKEN=TOKEN,
        REPMON_GATEWAY_SENDGRID_PUBLIC_KEY=pub,
        REPMON_LOG_LEVEL="warning",
        **topics,
    )
    sources = args.source or ["sendgrid", "kumomta", "ses"]
    plan = {
        s: bodies(s, args.ses_events if s == "ses" else args.events, args.batch, priv)
        for s in sources
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "streams.cli", "gateway"], env=env, cwd=ROOT, stderr=sys.stderr
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("the gateway did not become ready")
            time.sleep(0.2)
        cmd = "  ".join(
            [".venv/bin/python bench/gateway.py", *map(shlex.quote, sys.argv[1:])]
        ).rstrip()
        print(f"# {cmd}")
        print(
            f"# {platform.python_implementation()} {platform.python_version()}, "
            f"{platform.machine()}, {os.cpu_count()} cores shared by the client, the gateway "
            f"and the broker; acks=all, idempotent; concurrency {args.concurrency}"
        )
        print(
            f"{'source':<9} {'requests':>8} {'events':>8} {'seconds':>8} {'events/s':>9} "
            f"{'req/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'gw CPU s/1k ev':>15}"
        )
        total = 0
        rates: list[float] = []
        for source, reqs in plan.items():
            c0, t0 = cpu_seconds(proc.pid), time.perf_counter()
            acked, lat = asyncio.run(post_all(url, reqs, args.concurrency))
            wall, cpu = time.perf_counter() - t0, cpu_seconds(proc.pid) - c0
            total += acked
            lat.sort()
            rate = acked / wall
            if source != "ses":
                rates.append(rate)
            print(
                f"{source:<9} {len(reqs):>8,} {acked:>8,} {wall:>8.2f} {rate:>9,.0f} "
                f"{len(reqs) / wall:>7,.0f} {lat[len(lat) // 2] * 1e3:>7.1f} "
                f"{lat[int(len(lat) * 0.99)] * 1e3:>7.1f} {cpu / acked * 1e3:>15.3f}"
            )
        in_kafka = end_offsets(bootstrap, topics["REPMON_TOPIC_EVENTS"])
        print(f"events acknowledged {total:,}; in the events topic {in_kafka:,}")
        if in_kafka != total:
            print("FAILED: the topic does not hold exactly the acknowledged events")
            return 1
        worst = min(rates) if rates else 0.0
        verdict = "met" if worst >= TARGET else "MISSED"
        print(f"batched sources: >= {worst:,.0f} events/s (target >= {TARGET:,}: {verdict})")
        return 0 if worst >= TARGET else 1
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        delete_topics(bootstrap, list(topics.values()))


if __name__ == "__main__":
    sys.exit(main())
