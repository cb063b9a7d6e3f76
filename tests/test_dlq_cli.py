"""``repmon dlq``: list, show and re-drive dead letters (private topics on the real broker), and
the pure parts (``--since``, restoring redacted recipients' keys) without one."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ingest.formats import make_parser, parse_records
from models.ingest.validate import Rejection, recipient_key
from streams.cli.dlq import INTENT, MARKER_HEADER, REDRIVE_HEADER, parse_since, restore_keys
from streams.redaction import ADDRESS_PATTERN, redact, redact_keyed
from streams.worker.wire import dlq_record
from tests.conftest import REPO, private_topics
from tests.test_ingest_follow import CLEAR, read_topic

KUMO = REPO / "tests" / "data" / "formats" / "kumomta" / "records.jsonl"
NOW = 1_796_000_000.0


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("90s", NOW - 90),
        ("15m", NOW - 900),
        ("2h", NOW - 7200),
        ("1.5d", NOW - 1.5 * 86400),
        ("1w", NOW - 7 * 86400),
        ("1795000000", 1_795_000_000.0),
        ("2026-11-22T00:00:00Z", 1795305600.0),
        ("2026-11-22T01:00:00+01:00", 1795305600.0),
        ("2026-11-22 00:00:00", 1795305600.0),  # no offset: UTC
    ],
)
def test_parse_since(text: str, want: float) -> None:
    assert parse_since(text, now=NOW) == pytest.approx(want)


def test_parse_since_refuses_nonsense() -> None:
    import typer

    with pytest.raises(typer.BadParameter):
        parse_since("yesterday-ish", now=NOW)


@pytest.mark.parametrize(
    "raw",
    [
        b"to=<Jane.Doe@Example.ORG>, orig_to=<jd@example.org>, status=bounced",
        b"to=<Jane.Doe@Example.ORG>, said: 550 <jane.doe@example.org> unknown",
        b'{"recipient": "bob@mail.example.net", "sender": "x@y.example"}',
        "to=<jöe@example.org>".encode(),
        b"no address",
    ],
)
def test_restore_keys_maps_placeholders_to_the_true_keys(raw: bytes) -> None:
    redacted, keys = redact_keyed(raw)
    addrs = re.findall(rb"[^\s<>\"=,]+@[A-Za-z0-9.-]+[A-Za-z0-9]", raw)
    assert keys == [recipient_key(a.decode()) for a in addrs]
    restored = restore_keys(redacted, keys)
    assert restored is not None
    text, mapping = restored
    phs = re.findall(rb"redacted\+[0-9]+@[A-Za-z0-9.-]+[A-Za-z0-9]", text)
    assert len(phs) == len(keys)
    assert {recipient_key(p.decode()): k for p, k in zip(phs, keys, strict=True)} == mapping
    assert len({p.lower() for p in phs}) == len(set(keys))  # one placeholder per address
    assert restore_keys(redacted, [*keys, "0" * 64]) is None  # counts disagree


_ALPHABET = b"ab.-!_@@ \x80\xc3\xa9Z9<>;"


@given(st.lists(st.sampled_from(list(_ALPHABET)), max_size=60).map(bytes))
@settings(max_examples=3000, deadline=None)
def test_redaction_finds_what_the_pattern_finds(raw: bytes) -> None:
    """The linear scan gives the reference pattern's matches: the same text, the same keys."""
    want = ADDRESS_PATTERN.sub(rb"redacted@\1", raw)
    keys = [recipient_key(m.group(0).decode("utf-8", "replace"))
            for m in ADDRESS_PATTERN.finditer(raw)]  # fmt: skip
    assert redact_keyed(raw) == (want, keys)
    assert redact(raw) == want


@pytest.mark.parametrize(
    "raw",
    [b"a" * (1 << 20), (b"x" * 999 + b"@") * 1000, b"-" + b"a@b" + b"-" * (1 << 20)],
)
def test_redaction_is_linear(raw: bytes) -> None:
    """A 1 MiB record (the largest a parser reads) full of local-part bytes: the reference
    pattern backtracks for a quarter of an hour on the first one, the scan takes milliseconds."""
    t0 = time.process_time()
    redact_keyed(raw)
    assert time.process_time() - t0 < 5.0


# -- with the broker ---------------------------------------------------------------------------


class Dlq:
    """Private topics and the ``repmon`` command on them."""

    def __init__(self, bootstrap: str) -> None:
        from streams.worker.settings import Settings
        from streams.worker.topics import ensure_topics

        tag = uuid.uuid4().hex[:8]
        self.topics = private_topics(tag)
        self.env = dict(os.environ)
        self.env.update(REPMON_KAFKA_BOOTSTRAP=bootstrap, **self.topics)
        self.bootstrap = bootstrap
        self.events = self.topics["REPMON_TOPIC_EVENTS"]
        self.dlq = self.topics["REPMON_TOPIC_DLQ"]
        ensure_topics(
            Settings(_env_file=None, kafka_bootstrap=bootstrap, topic_events=self.events,
                     topic_dlq=self.dlq, **{k.removeprefix("REPMON_").lower(): v
                                            for k, v in self.topics.items()
                                            if k not in ("REPMON_TOPIC_EVENTS", "REPMON_TOPIC_DLQ")})
        )  # fmt: skip

    def run(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        res = subprocess.run(
            [sys.executable, "-m", "streams.cli", *args],
            env=self.env, cwd=REPO, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        if ok:
            assert res.returncode == 0, res.stdout + res.stderr
        return res

    def json(self, *args: str) -> Any:
        return orjson.loads(self.run(*args, "--json").stdout)

    def put(self, values: list[bytes], headers: list[tuple[str, bytes]] | None = None) -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        try:
            for v in values:
                p.send(self.dlq, value=v, headers=headers or []).get(timeout=60)
        finally:
            p.close()

    def letters(self) -> list[dict[str, Any]]:
        return [orjson.loads(v) for _, v, h in read_topic(self.bootstrap, self.dlq)
                if MARKER_HEADER not in h]  # fmt: skip


@pytest.fixture
def dlq(kafka_bootstrap: str) -> Dlq:
    return Dlq(kafka_bootstrap)


def worker_letter(reason: str, value: bytes, topic: str, part: int, off: int) -> bytes:
    """A dead letter as the worker writes it (its own function, the original not redacted)."""
    return dlq_record(Rejection(reason, f"test: {reason}"), value, topic, part, off)


POSTFIX_LINE = (
    b"2026-11-27T11:00:02.5+00:00 mx1 postfix/smtp[200]: 4BC1D2E3F4: to=<Pat.Lee@Example.net>, "
    b"relay=mx.example.net[192.0.2.7]:25, delay=1, delays=0/0/0/1, dsn=2.0.0, status=sent "
    b"(250 2.0.0 OK)"
)


def canonical(ts: float | str, rcpt: str, event: str = "bounced") -> bytes:
    return orjson.dumps(
        {"event": event, "timestamp": ts, "recipient": rcpt, "message_id": f"m-{rcpt}",
         "smtp_code": 550, "enhanced_code": "5.1.1", "response": "550 5.1.1 user unknown"}
    )  # fmt: skip


def sorted_json(ev: dict[str, Any]) -> bytes:
    return orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)


@pytest.mark.kafka
def test_list_and_show(dlq: Dlq) -> None:
    clear = "Jane.Doe@Example.org"
    fine_now = canonical(time.time() - 60, clear)
    dlq.put(
        [
            worker_letter("bad_json", POSTFIX_LINE, dlq.events, 2, 41),
            worker_letter("bad_timestamp", fine_now, dlq.events, 0, 7),
            worker_letter("bad_json", b"\x00\xff\xfe binary \x01", dlq.events, 1, 3),
        ]
    )
    dlq.run("ingest", "-q", "-f", "postfix", str(KUMO))  # JSON read as Postfix: unparseable
    doc = dlq.json("dlq", "list")
    assert doc["total"] == 3 + 18 and doc["redriven"] == 0
    assert doc["by_reason"] == {
        "unparseable": {"count": 18, "redriven": 0},
        "bad_json": {"count": 2, "redriven": 0},
        "bad_timestamp": {"count": 1, "redriven": 0},
    }
    assert len(doc["latest"]) == 20 and doc["latest"][-1]["id"] == "0:20"
    assert doc["latest"][-1]["source"] == f"{KUMO} record 17 (postfix)"
    assert set(doc["latest"][0]) == {"id", "reason", "detail", "source", "received_at",
                                     "format", "redriven"}  # fmt: skip
    text = dlq.run("dlq", "list", "--limit", "50").stdout
    assert "mail.events" not in text and f"{dlq.events}[0]@7" in text
    assert clear not in text and "original" not in text and "Pat.Lee" not in text
    only = dlq.json("dlq", "list", "--reason", "bad_json", "--limit", "5")
    assert only["total"] == 2 and [e["id"] for e in only["latest"]] == ["0:0", "0:2"]

    shown = dlq.json("dlq", "show", "0:1")
    assert shown["original"] == fine_now.decode() and shown["reason"] == "bad_timestamp"
    assert "original_b64" not in shown
    binary = dlq.json("dlq", "show", "2")
    assert base64.b64decode(binary["original_b64"]) == b"\x00\xff\xfe binary \x01"
    plain = dlq.run("dlq", "show", "0:3").stdout
    assert "unparseable" in plain and "redacted@" in plain and "(postfix)" in plain
    missing = dlq.run("dlq", "show", "0:999", ok=False)
    assert missing.returncode == 1 and "no record" in missing.stderr


@pytest.mark.kafka
def test_redrive_checks_sends_once_and_restores_keys(dlq: Dlq) -> None:
    fine_now = canonical(time.time() - 60, "Jane.Doe@Example.org")
    broken = canonical("2026-12-02T06:34:12", "a@b.example")  # no offset: still bad_timestamp
    dlq.put(
        [
            worker_letter("bad_json", POSTFIX_LINE, dlq.events, 2, 41),
            worker_letter("bad_timestamp", fine_now, dlq.events, 0, 7),
            worker_letter("bad_timestamp", broken, dlq.events, 0, 8),
        ]
    )
    dlq.run("ingest", "-q", "-f", "postfix", str(KUMO))  # 18 unparseable, addresses redacted

    dry = dlq.json("dlq", "redrive", "--dry-run", "--reason", "bad_timestamp")
    assert (dry["selected"], dry["resent_letters"], dry["resent_events"]) == (2, 1, 1)
    assert dry["still_rejected"] == {"bad_timestamp": 1}
    assert read_topic(dlq.bootstrap, dlq.events) == [], "a dry run sent something"

    # the worker's letters: re-checked, the fixed one sent pseudonymised, the broken one not
    res = dlq.json("dlq", "redrive", "--reason", "bad_timestamp")
    assert (res["resent_letters"], res["resent_events"], res["still_rejected"]) == (
        1, 1, {"bad_timestamp": 1},
    )  # fmt: skip
    [(key, value, headers)] = read_topic(dlq.bootstrap, dlq.events)
    ev = orjson.loads(value)
    jane = hashlib.sha256(b"jane.doe@example.org").hexdigest()
    assert ev["recipient_key"] == jane and key == jane.encode() and "recipient" not in ev
    assert headers[REDRIVE_HEADER] == b"0:1:0"

    # a raw Postfix line the worker could not decode, re-parsed as Postfix
    res = dlq.json("dlq", "redrive", "--reason", "bad_json", "--fix-format", "postfix")
    assert (res["resent_letters"], res["resent_events"]) == (1, 1)
    want = [e for _, evs, _ in parse_records("postfix", POSTFIX_LINE) for e in evs]
    got = [orjson.loads(v) for _, v, h in read_topic(dlq.bootstrap, dlq.events)
           if h[REDRIVE_HEADER] == b"0:0:0"]  # fmt: skip
    assert got == want

    # ingest's letters (read with the wrong format): as KumoMTA, with the true recipient keys
    res = dlq.json("dlq", "redrive", "--reason", "unparseable", "--fix-format", "kumomta")
    clean = [(ev, rj) for _, ev, rj in parse_records("kumomta", KUMO.read_bytes(),
                                                     make_parser("kumomta"))]  # fmt: skip
    n_ok = sum(1 for ev, rj in clean if not rj)
    assert res["resent_letters"] == n_ok and res["not_resent"] == {"still_rejected": 18 - n_ok}
    assert res["no_events"] == sum(1 for ev, rj in clean if not rj and not ev) > 0
    redriven = [orjson.loads(v) for _, v, h in read_topic(dlq.bootstrap, dlq.events)
                if not h[REDRIVE_HEADER].startswith((b"0:0:", b"0:1:"))]  # fmt: skip
    expect = [e for ev, rj in clean if not rj for e in ev]
    assert Counter(e["recipient_key"] for e in redriven) == Counter(
        e["recipient_key"] for e in expect
    )
    by_key = {(e["recipient_key"], e["event"], e["timestamp"]): e for e in expect}
    for e in redriven:  # every field sent is the clean parse's; some were lost to redaction
        full = by_key[(e["recipient_key"], e["event"], e["timestamp"])]
        assert {k: full[k] for k in e} == e
        assert "redacted+" not in orjson.dumps(e).decode()
        assert not CLEAR.search(orjson.dumps(e))
    assert set(res["fields_lost"]) == {"tenant"}  # from queues campaign:tenant@domain
    assert sum(res["fields_lost"].values()) == sum(len(by_key[(e["recipient_key"], e["event"],
        e["timestamp"])]) - len(e) for e in redriven)  # fmt: skip

    # a second run sends nothing again; the listing counts what was re-driven
    n = len(read_topic(dlq.bootstrap, dlq.events))
    again = dlq.json("dlq", "redrive")
    assert again["resent_events"] == 0 and again["already_redriven"] == 1 + 1 + n_ok
    assert len(read_topic(dlq.bootstrap, dlq.events)) == n
    doc = dlq.json("dlq", "list")
    assert doc["redriven"] == 2 + n_ok and doc["by_reason"]["bad_timestamp"]["redriven"] == 1
    later = dlq.json("dlq", "redrive", "--since", str(time.time() + 3600))
    assert later["selected"] == 0


@pytest.mark.kafka
def test_redrive_after_a_crash_between_events_and_done(dlq: Dlq) -> None:
    from kafka import KafkaProducer

    a, b = canonical(time.time() - 30, "a@x.example"), canonical(time.time() - 30, "b@x.example")
    dlq.put([worker_letter("bad_timestamp", v, dlq.events, 0, i) for i, v in enumerate((a, b))])
    # what a re-drive that died after its intent and its first event leaves behind
    intent = {"kind": INTENT, "run": "crashed", "batch": 0, "at": time.time(),
              "letters": [[0, 0], [0, 1]],
              "scan_from": {f"{dlq.events}:{p}": 0 for p in range(6)}}  # fmt: skip
    dlq.put([orjson.dumps(intent)], headers=[(MARKER_HEADER, INTENT.encode())])
    p = KafkaProducer(bootstrap_servers=dlq.bootstrap, acks="all")
    try:
        ev = {**orjson.loads(a), "recipient_key": recipient_key("a@x.example")}
        ev["recipient_domain"] = "x.example"
        del ev["recipient"]
        p.send(dlq.events, key=ev["recipient_key"].encode(), value=orjson.dumps(ev),
               headers=[(REDRIVE_HEADER, b"0:0:0")]).get(timeout=60)  # fmt: skip
    finally:
        p.close()
    res = dlq.json("dlq", "redrive")
    assert (res["resent_letters"], res["resent_events"], res["found_in_kafka"]) == (2, 1, 1)
    marks = Counter(h[REDRIVE_HEADER] for _, _, h in read_topic(dlq.bootstrap, dlq.events))
    assert marks == {b"0:0:0": 1, b"0:1:0": 1}
    again = dlq.json("dlq", "redrive")
    assert (again["selected"], again["already_redriven"]) == (0, 2)
    assert dlq.json("dlq", "list")["redriven"] == 2
