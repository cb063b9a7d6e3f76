"""Recipient suppression in the live worker, on the real broker (docs/suppression.md, "In the
worker"): the compacted `repmon.suppressions` topic, `GET /suppressions/{key}` (bearer token,
forwarded between workers), and the state surviving kill -9 and the loss of the local store.

Fails (never skips) without a broker (conftest.kafka_bootstrap).
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from models.ingest.recipients import recipient_digest
from tests.conftest import REPO, WorkerProc

pytestmark = pytest.mark.kafka

TOKEN = "it-suppression-token"
BASE_TS = time.time() - 3600.0
MX = "gmail-smtp-in.l.google.com"
UNKNOWN = "550 5.1.1 The email account that you tried to reach does not exist"
FULL = "552 5.2.2 The email account that you tried to reach is over quota"


def rkey(address: str) -> str:
    return recipient_digest(address).hex()


def event(kind: str, i: int, who: str, t: float, reply: str | None = None) -> dict[str, Any]:
    ev: dict[str, Any] = {
        "event": kind,
        "timestamp": t,
        "message_id": f"sup-{i}",
        "recipient": who,
        "sender_domain": "news.example.com",
        "sending_ip": "192.0.2.7",
        "mx_host": MX,
    }
    if reply:
        ev.update(smtp_code=int(reply[:3]), enhanced_code=reply.split()[1], response=reply)
    if kind == "complained":
        ev["feedback_type"] = "abuse"
    return ev


def send(bootstrap: str, topic: str, evs: list[dict[str, Any]]) -> None:
    """Keyed by recipient key, as `repmon ingest` does (docs/events.md)."""
    prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    try:
        for ev in evs:
            prod.send(topic, key=rkey(str(ev["recipient"])).encode(), value=orjson.dumps(ev))
        prod.flush(timeout=60)
    finally:
        prod.close(timeout=30)


def changelog(bootstrap: str, topic: str) -> tuple[dict[str, dict[str, Any] | None], int]:
    """The topic read from its start: the last value per key (None: tombstone), and the number
    of records; every value is checked for a clear address."""
    c = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, isolation_level="read_committed"
    )
    try:
        parts = c.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in parts]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        last: dict[str, dict[str, Any] | None] = {}
        n = 0
        deadline = time.monotonic() + 30
        while any(c.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500).values():
                for r in recs:
                    n += 1
                    assert r.value is None or b"@" not in r.value, "a clear address on the topic"
                    last[r.key.decode()] = None if r.value is None else json.loads(r.value)
        return last, n
    finally:
        c.close()


def lookup(w: WorkerProc, key: str, token: str | None = TOKEN) -> tuple[int, dict[str, Any]]:
    req = urllib.request.Request(f"{w.url}/suppressions/{key}")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=15) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except OSError as e:
        return 0, {"error": repr(e)}


def wait_for(pred: Any, what: str, workers: list[WorkerProc], timeout_s: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        ok, last = pred()
        if ok:
            return last
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, (
                f"worker died while waiting for {what}:\n{w.log_tail()}"
            )
        time.sleep(0.5)
    raise AssertionError(
        f"timed out waiting for {what}; last: {str(last)[:2000]}\n"
        + "\n".join(w.log_tail(40) for w in workers)
    )


def answers(w: WorkerProc, want: dict[str, str], by: set[str] | None = None) -> tuple[bool, Any]:
    """Every key's GET answers 200 with the wanted state (``by``: collects the instances that
    answered)."""
    got = {}
    for k, state in want.items():
        status, body = lookup(w, k)
        got[k[:8]] = (status, body.get("state"), body.get("error"))
        if status != 200 or body.get("state") != state:
            return False, got
        if by is not None:
            by.add(str(body.get("instance")))
    return True, got


def test_suppressions_published_served_and_surviving_kill9(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    w = WorkerProc(kafka_bootstrap, tmp_path / "a", partitions=3)
    w.env["REPMON_INSTANCE_ID"] = f"it-{uuid.uuid4().hex[:6]}"
    w.env["REPMON_API_TOKEN"] = TOKEN
    bad = [f"gone{i}@gmail.com" for i in range(8)]
    full = [f"full{i}@gmail.com" for i in range(6)]
    angry = [f"angry{i}@gmail.com" for i in range(4)]
    fine = [f"fine{i}@gmail.com" for i in range(40)]
    evs: list[dict[str, Any]] = []
    t = BASE_TS
    for i, who in enumerate(fine + angry + full):
        evs.append(event("delivered", len(evs), who, t + i))
    for who in bad:
        evs.append(event("bounced", len(evs), who, t + 100, UNKNOWN))
    for who in full:
        evs.append(event("bounced", len(evs), who, t + 110, FULL))
    for who in angry:
        evs.append(event("complained", len(evs), who, t + 120))
    want = (
        {rkey(a): "suppressed" for a in bad + angry}
        | {rkey(a): "suspended" for a in full}
        | {rkey(fine[0]): "active", rkey("never.seen@gmail.com"): "active"}
    )
    sibling: WorkerProc | None = None
    try:
        w.start()
        send(kafka_bootstrap, w.topics["events"], evs)

        def published() -> tuple[bool, Any]:
            last, _ = changelog(kafka_bootstrap, w.topics["suppressions"])
            states = {k: (v or {}).get("state") for k, v in last.items()}
            ok = all(states.get(k) == s for k, s in want.items() if s != "active")
            return ok and len(last) == len(bad + angry + full), states

        wait_for(published, "the suppression records on the topic", [w])
        last, _ = changelog(kafka_bootstrap, w.topics["suppressions"])
        for a in bad:
            assert (last[rkey(a)] or {})["reason"] == "userunknown"
        for a in full:
            rec = last[rkey(a)] or {}
            assert (rec["reason"], rec["count"]) == ("mailboxfull", 1)
            assert rec["until"] == pytest.approx(BASE_TS + 110 + 86400, abs=2)
        for a in angry:
            assert (last[rkey(a)] or {})["reason"] == "complaint"

        # the CLI contract: the export is the topic's current list, on the worker's own records
        out = subprocess.run(
            [sys.executable, "-m", "streams.cli", "suppressions", "export", "--format", "csv",
             "--bootstrap", kafka_bootstrap, "--topic", w.topics["suppressions"]],
            capture_output=True, check=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        rows = list(csv.DictReader(io.StringIO(out.stdout.decode())))
        assert {r["recipient_key"]: r["state"] for r in rows} == {
            k: s for k, s in want.items() if s != "active"
        }
        listed = tmp_path / "addresses.txt"
        listed.write_text("\n".join(bad + fine) + "\n")
        out = subprocess.run(
            [sys.executable, "-m", "streams.cli", "suppressions", "export", "--format", "kumomta",
             "--bootstrap", kafka_bootstrap, "--topic", w.topics["suppressions"],
             "--addresses", str(listed)],
            capture_output=True, check=True, timeout=120, cwd=REPO,
        )  # fmt: skip
        pushed = out.stdout.decode()
        # the sender's own addresses come back for its suppressed recipients, no others
        assert all(a in pushed for a in bad) and not any(a in pushed for a in fine + angry)

        # the HTTP contract
        wait_for(lambda: answers(w, want), "GET /suppressions answers", [w])
        status, body = lookup(w, rkey(bad[0]))
        assert (status, body["may_send"], body["record"]["reason"]) == (200, False, "userunknown")
        assert lookup(w, rkey(fine[0]))[1]["may_send"] is True
        assert lookup(w, rkey(bad[0]), token=None)[0] == 401
        assert lookup(w, rkey(bad[0]), token="wrong")[0] == 401
        assert lookup(w, "not-a-key")[0] == 400
        assert lookup(w, bad[0].replace("@", "%40"))[0] == 400  # an address is refused

        # kill -9: the store and the changelog agree after the restart, and the policy goes on
        # from the restored records: a delivery in a new message clears a full mailbox
        assert w.proc is not None
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(timeout=10)
        w.start()
        wait_for(lambda: answers(w, want), "the same answers after kill -9", [w])
        send(
            kafka_bootstrap,
            w.topics["events"],
            [event("delivered", 1000 + i, a, t + 300 + i) for i, a in enumerate(full)],
        )
        cleared = want | {rkey(a): "active" for a in full}

        def tombstoned() -> tuple[bool, Any]:
            last, _ = changelog(kafka_bootstrap, w.topics["suppressions"])
            return all(last.get(rkey(a), 0) is None for a in full), {
                k[:8]: v and v["state"] for k, v in last.items()
            }

        wait_for(tombstoned, "tombstones for the cleared recipients", [w])
        wait_for(lambda: answers(w, cleared), "the cleared recipients active", [w])

        # a new machine: the local store is gone; rebuilt from the changelog
        w.proc.send_signal(signal.SIGKILL)
        w.proc.wait(timeout=10)
        shutil.rmtree(Path(w.env["REPMON_DATA_DIR"]) / "suppressions")
        w.start()
        wait_for(lambda: answers(w, cleared), "the same answers from a rebuilt store", [w])
        assert "suppression store rebuild" in w.log_tail(400)

        # two workers: each answers every key, forwarding to the one reading its partition
        sibling = w.sibling(tmp_path / "b")
        sibling.env["REPMON_INSTANCE_ID"] = f"it-{uuid.uuid4().hex[:6]}"
        sibling.start()

        def both() -> tuple[bool, Any]:
            # the partitions are split: each worker answers some keys itself and forwards the
            # others (3 partitions, 2 workers)
            by1: set[str] = set()
            by2: set[str] = set()
            ok1, got1 = answers(w, cleared, by1)
            ok2, got2 = answers(sibling, cleared, by2)
            return ok1 and ok2 and len(by1) == 2 and by1 == by2, (got1, got2, by1, by2)

        wait_for(both, "both workers answer every key", [w, sibling])
        metrics = w.get("/metrics").decode() + sibling.get("/metrics").decode()
        forwarded = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith('repmon_suppression_lookups_total{result="forwarded"}')
        )
        assert forwarded > 0, "no lookup was forwarded between the two workers"
    finally:
        if sibling is not None:
            sibling.stop()
        w.stop()
