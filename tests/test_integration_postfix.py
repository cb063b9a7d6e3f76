"""A real MTA end to end (issue 12): a private Postfix relays a few hundred messages to scripted
fake providers on loopback (accept, ``421 4.4.2`` outage, ``550 5.1.1`` unknown users);
``repmon ingest --format postfix --follow`` follows Postfix's own log into Kafka while it is
written; the worker counts and detects. Asserts: the canonical events in Kafka equal Postfix's
log line for line (per kind and per recipient domain), no address in clear, and the worker opens
``provider_outage`` on Microsoft (outlook.com's provider) during the outage.

Fails, never skips, when Postfix (Debian ``postfix``; ``./dev test`` installs it) or the broker
is missing.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer

from tests.conftest import WorkerProc
from tests.postfix_lab import PostfixLab, fake_providers
from tests.test_integration_kafka import read_incidents_until

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

#: recipient domains -> loopback address of their fake provider; the sender's domain gets
#: Postfix's bounce notices (delivered to a sink, never to the network)
DOMAINS = {
    "gmail.com": "127.0.0.2",
    "yahoo.com": "127.0.0.3",
    "outlook.com": "127.0.0.4",
    "mail.example.com": "127.0.0.5",
}

_STATUS_RE = re.compile(r" ([0-9A-F]{6,20}): to=<[^@>]*@([^>]+)>, .*? status=([a-z]+)")
_NULL_SENDER_RE = re.compile(r" ([0-9A-F]{6,20}): from=<>,")
_KIND = {"sent": "delivered", "deferred": "deferred", "bounced": "bounced"}


def log_counts(maillog: Path) -> collections.Counter[tuple[str, str]]:
    """(kind, recipient domain) counts of Postfix's own delivery lines, without the deliveries
    of the notices Postfix itself sends (null sender), which ingest skips."""
    text = maillog.read_text(errors="replace")
    notices = set(_NULL_SENDER_RE.findall(text))
    out: collections.Counter[tuple[str, str]] = collections.Counter()
    for qid, dom, status in _STATUS_RE.findall(text):
        if qid not in notices and status in _KIND:
            out[(_KIND[status], dom)] += 1
    return out


def kafka_events(bootstrap: str, topic: str, want: int, timeout_s: float) -> list[dict[str, Any]]:
    """Every event on ``topic``, once at least ``want`` have arrived and no more come for 3 s."""
    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", consumer_timeout_ms=500
    )
    got: list[dict[str, Any]] = []
    last_new = time.monotonic()
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            before = len(got)
            got.extend(orjson.loads(m.value) for m in consumer)
            if len(got) > before:
                last_new = time.monotonic()
            elif len(got) >= want and time.monotonic() - last_new > 3.0:
                return got
    finally:
        consumer.close()
    raise AssertionError(f"{len(got)} events on {topic} after {timeout_s} s, expected {want}")


def wait_queue_empty(lab: PostfixLab, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if lab.queue_size() == 0:
            return
        time.sleep(0.5)
    raise AssertionError(f"Postfix still has {lab.queue_size()} messages queued")


def test_postfix_to_kafka_to_incident(kafka_bootstrap: str, tmp_path: Path) -> None:
    w = WorkerProc(kafka_bootstrap, tmp_path / "worker")
    # live mail: no hours of history to warm the baselines up with
    w.env["REPMON_WARMUP_S"] = "0"
    follower: subprocess.Popen[bytes] | None = None
    follow_log = tmp_path / "follow.log"
    with fake_providers(DOMAINS) as fakes:
        # Postfix's daemons run as the postfix user: its directories must be reachable by it
        # (pytest's tmp_path is private to root)
        lab_root = Path(tempfile.mkdtemp(prefix="repmon-postfix-"))
        lab_root.chmod(0o755)
        lab = PostfixLab(lab_root, {d: (p.host, p.port) for d, p in fakes.items()})
        try:
            w.start()
            lab.start()
            env = {**w.env, "TZ": "UTC"}
            with follow_log.open("wb") as out:
                follower = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        "streams.cli.main",
                        "ingest",
                        "--format",
                        "postfix",
                        "--follow",
                        "--state",
                        str(tmp_path / "follow.state"),
                        str(lab.maillog),
                    ],
                    env=env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                )
            # healthy traffic, a few unknown users at Yahoo
            fakes["yahoo.com"].script.unknown_users = {f"gone{i}" for i in range(12)}
            healthy = [
                f"{local}{i}@{dom}"
                for i in range(70)
                for dom, local in (("gmail.com", "g"), ("yahoo.com", "y"), ("outlook.com", "o"))
            ] + [f"gone{i}@yahoo.com" for i in range(12)]
            lab.send(healthy)
            wait_queue_empty(lab, 60)
            # Microsoft's outage: every attempt at outlook.com answered 421 4.4.2 and retried
            fakes["outlook.com"].script.mode = "outage"
            lab.send(
                [f"late{i}@outlook.com" for i in range(140)]
                + [f"g2-{i}@gmail.com" for i in range(60)]
            )

            def opened(found: list[dict[str, Any]]) -> bool:
                return any(
                    r.get("action") == "opened"
                    and r.get("type") == "provider_outage"
                    and r.get("scope") in ("provider:microsoft", "domain:outlook.com")
                    for r in found
                )

            # the retries every 5-10 s keep event time moving, so the detectors run
            found = read_incidents_until(
                kafka_bootstrap, w, opened, "provider_outage at Microsoft", timeout_s=180
            )
            inc = next(r for r in found if opened([r]))
            assert inc["evidence"]["count"] >= 25, inc
            # the provider recovers: Postfix delivers what it deferred
            fakes["outlook.com"].script.mode = "accept"
            wait_queue_empty(lab, 90)
            want = log_counts(lab.maillog)
            assert want[("deferred", "outlook.com")] >= 140, want
            assert want[("bounced", "yahoo.com")] == 12, want
            events = kafka_events(kafka_bootstrap, w.topics["events"], sum(want.values()), 120)
            got = collections.Counter(
                (e["event"], e["recipient_domain"])
                for e in events
                if e["recipient_domain"] != "mail.example.com"
            )
            assert got == want
            # pseudonymised: a recipient key, never the address
            assert all("recipient" not in e and len(e["recipient_key"]) == 64 for e in events)
            assert not any(b"@gmail.com" in orjson.dumps(e) for e in events)
            unknown = [e for e in events if e["event"] == "bounced"]
            assert {e.get("enhanced_code") for e in unknown} == {"5.1.1"}
            assert {e.get("smtp_command") for e in unknown} == {"RCPT"}
            # nothing dead-lettered by the worker
            status = orjson.loads(w.get("/status"))
            assert not status["ingest"]["rejected"], status["ingest"]
        finally:
            if follower is not None:
                follower.send_signal(signal.SIGTERM)
                try:
                    follower.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    follower.kill()
            lab.stop()
            w.stop()
            if os.environ.get("REPMON_TEST_ARTIFACTS"):
                art = Path(os.environ["REPMON_TEST_ARTIFACTS"])
                art.mkdir(parents=True, exist_ok=True)
                for p in (lab.maillog, follow_log, w.log_path):
                    if p.exists():
                        (art / f"postfix-e2e-{p.name}").write_bytes(p.read_bytes())
            shutil.rmtree(lab_root, ignore_errors=True)
