"""End to end against the real broker: kafka-python producer -> `repmon worker` -> /metrics, DLQ.

These tests fail (never skip) when no broker answers (see conftest.kafka_bootstrap).
"""

from __future__ import annotations

import base64
import json
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from models.schema import EVENT_KINDS
from tests.conftest import WorkerProc

pytestmark = pytest.mark.kafka

BASE_TS = time.time() - 3600.0
DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "icloud.com", "acme-logistics.de", "globex.fr"]
MX = {
    "gmail.com": "gmail-smtp-in.l.google.com",
    "outlook.com": "outlook-com.olc.protection.outlook.com",
    "yahoo.com": "mta5.am0.yahoodns.net",
    "icloud.com": "mx01.mail.icloud.com",
    "acme-logistics.de": "eu-smtp-inbound-1.mimecast.com",
    "globex.fr": "mx0a-00123401.pphosted.com",
}
REPLIES = {
    "deferred": (
        421,
        "4.7.28",
        "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your IP address. gsmtp",
    ),
    "bounced": (
        550,
        "5.1.1",
        "550 5.1.1 <someone@example.org>: Recipient address rejected: User unknown",
    ),
    "rejected": (
        554,
        "5.7.1",
        "554 5.7.1 Service unavailable; Client host [192.0.2.10] blocked using zen.spamhaus.org",
    ),
}


def good_events(n: int, seed: int) -> list[dict[str, object]]:
    rng = random.Random(seed)
    kinds = list(EVENT_KINDS)
    weights = [40, 38, 6, 3, 1, 1, 6, 3, 2]
    out = []
    for i in range(n):
        kind = rng.choices(kinds, weights)[0]
        dom = rng.choice(DOMAINS)
        ev: dict[str, object] = {
            "event": kind,
            "timestamp": BASE_TS + i * 0.05,
            "message_id": f"it-{seed}-{i}",
            "recipient": f"user{rng.randrange(5000)}@{dom}",
            "sender_domain": "news.example.com",
            "sending_ip": f"192.0.2.{rng.randrange(1, 5)}",
            "pool": "shared-1",
            "tenant": "acme",
            "campaign": "acme-it",
            "mx_host": MX[dom],
        }
        if kind in REPLIES:
            code, enh, text = REPLIES[kind]
            ev.update(smtp_code=code, enhanced_code=enh, response=text)
        if kind == "complained":
            ev["feedback_type"] = "abuse"
        out.append(ev)
    return out


BAD: list[tuple[bytes, str]] = [
    (b"{not json", "bad_json"),
    (b"[1, 2, 3]", "not_an_object"),
    (json.dumps({"event": "delivered", "recipient": "a@gmail.com"}).encode(), "missing_field"),
    (
        json.dumps(
            {
                "event": "delivered",
                "timestamp": BASE_TS,
                "recipient": "a@gmail.com",
                "smtp_code": "two-fifty",  # a digit string like "250" is accepted
            }
        ).encode(),
        "wrong_type",
    ),
    (
        json.dumps(
            {"event": "teleported", "timestamp": BASE_TS, "recipient": "a@gmail.com"}
        ).encode(),
        "unknown_event",
    ),
    (
        json.dumps(
            {"event": "delivered", "timestamp": time.time() + 86400, "recipient": "a@gmail.com"}
        ).encode(),
        "bad_timestamp",
    ),
    (
        json.dumps(
            {"event": "delivered", "timestamp": BASE_TS, "recipient": "nobody-at-nowhere"}
        ).encode(),
        "bad_domain",
    ),
    (
        b'{"event": "delivered", "timestamp": 1, "response": "' + b"x" * (1 << 20) + b'"}',
        "too_large",
    ),
]


def produce(bootstrap: str, topic: str, values: list[bytes], keys: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 << 20, linger_ms=5)
    try:
        for k, v in zip(keys, values, strict=True):
            producer.send(topic, key=k, value=v)
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=30)


def metric_values(text: str, name: str, label: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in re.finditer(rf'^{name}\{{{label}="([^"]+)"\}} ([0-9.e+]+)$', text, re.M):
        out[m.group(1)] = float(m.group(2))
    return out


def wait_for(pred, timeout_s: float, what: str, worker: WorkerProc):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last is True:
            return
        assert worker.proc is not None and worker.proc.poll() is None, (
            f"worker died while waiting for {what}:\n{worker.log_tail()}"
        )
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}; last: {last}\n{worker.log_tail()}")


def read_incidents_until(
    bootstrap: str,
    worker: WorkerProc,
    done: Callable[[list[dict[str, Any]]], bool],
    what: str,
    timeout_s: float = 120.0,
    topic: str = "incidents",
) -> list[dict[str, Any]]:
    """Read the incidents topic (or another of the worker's ``topics``) from the start until
    ``done(records so far)``."""
    consumer = KafkaConsumer(
        worker.topics[topic],
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=1000,
        # incident changes are written in the owner's transactions (with its snapshot)
        isolation_level="read_committed",
    )
    found: list[dict[str, Any]] = []

    def pred() -> bool | int:
        found.extend(orjson.loads(m.value) for m in consumer)
        return True if done(found) else len(found)

    try:
        wait_for(pred, timeout_s, what, worker)
    finally:
        consumer.close()
    return found


def replay_opened(evs: list[dict[str, object]]) -> dict[tuple[str, str], float]:
    """``repmon replay``'s loop with its defaults over the same events: first opening per
    (type, scope)."""
    from models.detect.monitor import Monitor
    from streams.cli.replay import replay_lines
    from streams.worker.decoding import ingest_pipeline

    changes: list = []  # type: ignore[type-arg]
    replay_lines((orjson.dumps(e) for e in evs), Monitor(), ingest_pipeline(), changes=changes)
    out: dict[tuple[str, str], float] = {}
    for c in changes:
        rec = c.to_json()
        if rec["action"] == "opened":
            out.setdefault((str(rec["type"]), str(rec["scope"])), float(rec["opened_at"]))
    return out


def test_counts_dlq_and_survival(worker: WorkerProc, kafka_bootstrap: str) -> None:
    worker.start()
    first = good_events(3000, seed=1)
    second = good_events(2000, seed=2)
    # interleave the bad messages between good ones, across partitions
    values: list[bytes] = []
    keys: list[bytes] = []
    bad_at = {300 * (i + 1): b for i, b in enumerate(BAD)}
    assert max(bad_at) < len(first)
    for i, ev in enumerate(first):
        if i in bad_at:
            values.append(bad_at[i][0])
            keys.append(str(ev["recipient"]).split("@")[1].encode())
        values.append(orjson.dumps(ev))
        keys.append(str(ev["recipient"]).split("@")[1].encode())
    produce(kafka_bootstrap, worker.topics["events"], values, keys)

    # the worker keeps running after the bad inputs and counts the neighbours; send more
    time.sleep(1.0)
    assert worker.proc is not None and worker.proc.poll() is None, worker.log_tail()
    produce(
        kafka_bootstrap,
        worker.topics["events"],
        [orjson.dumps(e) for e in second],
        [str(e["recipient"]).split("@")[1].encode() for e in second],
    )
    expected = Counter(str(e["event"]) for e in first + second)
    expected_rej = Counter(reason for _, reason in BAD)

    def counted() -> bool | dict[str, float]:
        text = worker.get("/metrics").decode()
        got = metric_values(text, "repmon_events_total", "kind")
        rej = metric_values(text, "repmon_events_rejected_total", "reason")
        ok = all(got.get(k, 0) == v for k, v in expected.items()) and all(
            rej.get(k, 0) == v for k, v in expected_rej.items()
        )
        return True if ok else {**got, **{f"rej:{k}": v for k, v in rej.items() if v}}

    wait_for(counted, 90, "all events counted", worker)
    text = worker.get("/metrics").decode()
    got = metric_values(text, "repmon_events_total", "kind")
    assert sum(got.values()) == len(first) + len(second), "events lost or double counted"
    # per-provider counts are exported with bounded labels
    assert 'repmon_provider_events_total{outcome="sent",provider="google"}' in text
    assert "@" not in text, "an address leaked into /metrics"

    # every bad message is in the DLQ with its reason and original bytes
    consumer = KafkaConsumer(
        worker.topics["dlq"],
        bootstrap_servers=kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        fetch_max_bytes=8 << 20,
        max_partition_fetch_bytes=8 << 20,
    )
    records = [orjson.loads(m.value) for m in consumer]
    consumer.close()
    assert Counter(r["reason"] for r in records) == expected_rej
    originals = {r["reason"]: base64.b64decode(r["original_b64"]) for r in records}
    for raw, reason in BAD:
        assert originals[reason] == raw[: 1 << 20]
        assert all(r["detail"] for r in records)

    # /status reflects the same counts; the worker is alive and healthy
    status = orjson.loads(worker.get("/status"))
    assert status["ingest"]["accepted"] == len(first) + len(second)
    assert worker.proc is not None and worker.proc.poll() is None
    assert orjson.loads(worker.get("/healthz"))["status"] == "ready"
    leaked = re.findall(r"[\w.+-]+@[\w-]+\.[\w.-]+", worker.log_path.read_text(errors="replace"))
    assert not leaked, f"recipient addresses leaked into the worker log: {leaked[:3]}"


def test_worker_detects_a_simulated_outage(worker: WorkerProc, kafka_bootstrap: str) -> None:
    """Simulator -> Kafka -> worker: the detectors run per tick and publish the incident."""
    from models.sim.simulator import SimConfig, Simulator

    worker.start()
    start = time.time() - 4 * 3600
    sim = Simulator(
        SimConfig(seed=3, start=start, duration_s=2 * 3600, rate=15.0, scenario="provider-outage")
    )
    truth = sim.truth[0]
    evs = [e for chunk in sim.chunks(600.0) for e in chunk]
    produce(
        kafka_bootstrap,
        worker.topics["events"],
        [orjson.dumps(e) for e in evs],
        [str(e["recipient_domain"]).encode() for e in evs],
    )

    def opened(found: list[dict[str, Any]]) -> bool:
        return any(
            r["action"] == "opened" and r["type"] == truth.type and r["scope"] in truth.scopes
            for r in found
        )

    found = read_incidents_until(
        kafka_bootstrap, worker, opened, f"{truth.type} at {truth.scopes} on the incidents topic"
    )
    hit = next(r for r in found if r["action"] == "opened" and r["scope"] in truth.scopes)
    opened_at = float(hit["opened_at"])  # type: ignore[arg-type]
    assert truth.onset <= opened_at <= truth.onset + 600
    # the live worker catching up a backlog detects at the event time a replay of the same
    # events does (the worker runs the detectors every detect_every_s = replay's --tick)
    replayed = replay_opened(evs)
    assert (hit["type"], hit["scope"]) in replayed
    assert abs(opened_at - replayed[(hit["type"], hit["scope"])]) <= 61.0, (opened_at, replayed)
    status = orjson.loads(worker.get("/status"))
    assert status["monitor"]["active_scopes"] > 0
    text = worker.get("/metrics").decode()
    assert 'repmon_incidents_opened_total{type="provider_outage"}' in text


def test_health_and_guarded_status(kafka_bootstrap: str, tmp_path: Any) -> None:
    """/livez and /readyz (= /healthz) answer; /status takes the bearer token and checks `top`."""
    import urllib.error
    import urllib.request

    w = WorkerProc(kafka_bootstrap, tmp_path)
    w.env["REPMON_API_TOKEN"] = "s3cret-token"
    try:
        w.start()  # waits for /healthz 200: the consumer runs and a tick completed

        def get(path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
            req = urllib.request.Request(w.url + path)
            if token is not None:
                req.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, orjson.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, orjson.loads(e.read())

        assert get("/livez")[0] == 200
        code, body = get("/readyz")
        assert code == 200 and body["status"] == "ready", body
        assert get("/healthz")[0] == 200
        assert get("/status")[0] == 401
        assert get("/status", "wrong")[0] == 401
        code, body = get("/status?top=5", "s3cret-token")
        assert code == 200 and "monitor" in body
        for bad in ("abc", "0", "-1", "1000000", "1e3"):
            code, body = get(f"/status?top={bad}", "s3cret-token")
            assert code == 400 and "top" in body["error"], (bad, code, body)
        assert worker_alive(w)
    finally:
        w.stop()


def worker_alive(w: WorkerProc) -> bool:
    return w.proc is not None and w.proc.poll() is None
