"""``repmon suppressions export`` (streams/cli/suppressions.py): the CSV and KumoMTA outputs'
shape, the address mapping, the options and their errors without a broker; and on the real
broker (marked kafka: fails without one) exports of fresh topics: the last value per key,
tombstones, malformed records, aborted transactions, records written during the read, and the
errors of an unknown topic."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from models.ingest.recipients import recipient_digest
from streams.cli.main import app
from streams.cli.suppressions import (
    CSV_HEADER,
    DEFAULT_STATES,
    KUMO_BATCH,
    ExportError,
    csv_lines,
    kumo_lines,
    map_addresses,
    parse_states,
    read_topic,
)
from streams.fleet import SuppressionClient, SuppressionTable
from streams.fleet.suppressions import Staging, parse_message
from tests.conftest import REPO, free_port
from tests.test_fleet_suppressions import Topic, record, rkey, wire

NOW = 1_800_000_000.0
D = 86_400
KUMO_KEYS = {"recipient", "type", "source", "description"}


def table_of(recs: list[tuple[str, dict[str, Any] | None]]) -> SuppressionTable:
    t = SuppressionTable()
    s = Staging()
    s.add([parse_message(rkey(a), wire(r)) for a, r in recs])
    t.load_staged(s)
    return t


SAMPLE = [
    ("a@example.org", record("a@example.org", "suppressed")),
    ("b@example.org", record("b@example.org", "suspended", reason="mailboxfull", until=NOW + D)),
    ("c@example.org", record("c@example.org", "quarantined", incident="block/ip:1.2.3.4|x,y/1")),
    ("d@example.org", record("d@example.org", "suppressed", reason="complaint", until=NOW + D)),
    ("e@example.org", record("e@example.org", "suppressed", reason="unsubscribe")),
    ("f@example.org", record("f@example.org", "suppressed", reason="manual")),
    ("g@example.org", record("g@example.org", "active", reason="mailboxfull")),
    ("h@example.org", None),
]


# ---------------------------------------------------------------------------- CSV
def test_csv_shape() -> None:
    out = "".join(csv_lines(table_of(SAMPLE).entries(DEFAULT_STATES["csv"])))
    rows = list(csv.reader(io.StringIO(out)))
    assert (
        rows[0]
        == list(CSV_HEADER)
        == [
            "recipient_key",
            "state",
            "reason",
            "count",
            "until",
            "permanent",
            "incident",
            "at",
        ]
    )
    body = rows[1:]
    assert [r[0] for r in body] == sorted(rkey(a) for a, _ in SAMPLE[:6])  # key order
    by_key = {r[0]: r for r in body}
    want = {
        "a@example.org": ["suppressed", "userunknown", "1", "", "true", "", "1800000000.0"],
        "b@example.org": ["suspended", "mailboxfull", "1", str(int(NOW + D)), "false", "", "1800000000.0"],
        "c@example.org": ["quarantined", "userunknown", "1", "", "false", "block/ip:1.2.3.4|x,y/1",
                          "1800000000.0"],
        "d@example.org": ["suppressed", "complaint", "1", str(int(NOW + D)), "false", "", "1800000000.0"],
        "e@example.org": ["suppressed", "unsubscribe", "1", "", "true", "", "1800000000.0"],
        "f@example.org": ["suppressed", "manual", "1", "", "true", "", "1800000000.0"],
    }  # fmt: skip
    assert {k: v[1:] for k, v in by_key.items()} == {rkey(a): w for a, w in want.items()}
    assert '"block/ip:1.2.3.4|x,y/1"' in out  # quoted: it has a comma
    assert "example.org" not in out  # no address anywhere (keys only)


def test_csv_of_nothing_is_the_header() -> None:
    assert "".join(csv_lines(SuppressionTable().entries())) == ",".join(CSV_HEADER) + "\n"


# ---------------------------------------------------------------------------- KumoMTA
@pytest.mark.parametrize(
    ("address", "source", "desc"),
    [
        ("a@example.org", "bounce", "repmon: suppressed permanently (userunknown, count 1)"),
        ("b@example.org", "bounce", "repmon: suspended until 2027-01-16T08:00:00Z (mailboxfull, "
         "count 1); remove the entry then"),
        ("c@example.org", "bounce", "repmon: quarantined by block/ip:1.2.3.4|x,y/1 (userunknown, "
         "1 held); hold the mail, do not drop the address; remove the entry when the incident "
         "closes"),
        ("d@example.org", "complaint", "repmon: suppressed until 2027-01-16T08:00:00Z "
         "(complaint, count 1); remove the entry then"),
        ("e@example.org", "list_unsubscribe", "repmon: suppressed permanently (unsubscribe, "
         "count 1)"),
        ("f@example.org", "manual", "repmon: suppressed permanently (manual, count 1)"),
    ],
)  # fmt: skip
def test_kumomta_mapping(address: str, source: str, desc: str) -> None:
    t = table_of(SAMPLE)
    lines = list(kumo_lines(t.entries(), {recipient_digest(address): address}))
    assert len(lines) == 1 and lines[0].endswith("\n")
    body = json.loads(lines[0])
    assert set(body) == {"recipients"}
    got = body["recipients"]
    assert all(set(e) == KUMO_KEYS for e in got)
    assert [(e["recipient"], e["type"], e["source"], e["description"]) for e in got] == [
        (address, "transactional", source, desc),
        (address, "non_transactional", source, desc),
    ]


def test_kumomta_without_addresses_carries_the_key() -> None:
    t = table_of(SAMPLE)
    lines = list(kumo_lines(t.entries(["suppressed"]), None))
    got = [e for ln in lines for e in json.loads(ln)["recipients"]]
    want_keys = sorted(rkey(f"{who}@example.org") for who in "adef")
    assert [e["recipient"] for e in got[::2]] == want_keys
    assert all(e["recipient"] == f["recipient"] for e, f in zip(got[::2], got[1::2], strict=True))
    assert "@" not in "".join(lines)


def test_kumomta_bodies_are_batched() -> None:
    n = 1203  # 2 406 entries: 1000, 1000, 406
    addrs = [f"user{i}@example.net" for i in range(n)]
    t = table_of([(a, record(a, "suppressed")) for a in addrs])
    mapping = {recipient_digest(a): a for a in addrs[:-3]}  # three not in the sender's list
    lines = list(kumo_lines(t.entries(), mapping))
    sizes = [len(json.loads(ln)["recipients"]) for ln in lines]
    assert sizes == [KUMO_BATCH, KUMO_BATCH, 2 * (n - 3) - 2 * KUMO_BATCH]
    sent = {e["recipient"] for ln in lines for e in json.loads(ln)["recipients"]}
    assert sent == set(addrs[:-3])


# ---------------------------------------------------------------------------- addresses
def test_map_addresses(tmp_path: Path) -> None:
    import numpy as np

    listed = ["Jane.Doe@Example.org", "bob@example.org", "  carol@example.org  "]
    exported = np.sort(np.array([recipient_digest(a) for a in listed], dtype="S32"))
    f = tmp_path / "addresses.txt"
    f.write_bytes(
        b"\n".join(
            [
                b"jane.doe@example.org",  # another spelling of the first: the first one wins
                b"JANE.DOE@EXAMPLE.ORG",
                b"",
                b"nobody@example.org",
                b"\xff\xfe not utf-8",
                b"carol@example.org\r",
                b"   ",
                *[f"filler{i}@example.org".encode() for i in range(10)],
                b"bob@example.org",
            ]
        )
    )
    for chunk in (1, 3, 1 << 16):
        m = map_addresses(f, exported, chunk=chunk)
        assert m.lines == 15 and m.not_utf8 == 1
        assert m.by_key == {
            recipient_digest("jane.doe@example.org"): "jane.doe@example.org",
            recipient_digest("carol@example.org"): "carol@example.org",
            recipient_digest("bob@example.org"): "bob@example.org",
        }
    assert map_addresses(f, np.zeros(0, dtype="S32")).by_key == {}


# ---------------------------------------------------------------------------- options
@pytest.mark.parametrize(
    ("values", "fmt", "want"),
    [
        (None, "csv", ("suspended", "quarantined", "suppressed")),
        (None, "kumomta", ("suppressed",)),
        (["suppressed", "suspended"], "csv", ("suspended", "suppressed")),
        (["quarantined,suppressed"], "kumomta", ("quarantined", "suppressed")),
        ([" suspended , "], "csv", ("suspended",)),
    ],
)
def test_parse_states(values: list[str] | None, fmt: str, want: tuple[str, ...]) -> None:
    assert parse_states(values, fmt) == want


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--format", "xml"], "csv, kumomta"),
        (["-f", "csv", "--state", "active"], "not an exported state"),
        (["-f", "csv", "--state", "suppressed,nope"], "nope"),
        (["-f", "csv", "--addresses", "{file}"], "only with --format kumomta"),
        (["-f", "kumomta", "--addresses", "/nonexistent/addresses.txt"], "does not exist"),
        ([], "--format"),
    ],
)
def test_usage_errors(args: list[str], needle: str, tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("a@example.org\n")
    args = [a.replace("{file}", str(f)) for a in args]
    r = CliRunner().invoke(
        app, ["suppressions", "export", "--bootstrap", f"127.0.0.1:{free_port()}", *args]
    )
    assert r.exit_code == 2, r.output
    text = " ".join(re.sub(r"[│╭╮╰╯─]", " ", r.output).split())  # rich's error box
    assert needle in text
    assert "Traceback" not in r.output


def run_cli(*args: str, bootstrap: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if bootstrap is not None:
        env["REPMON_KAFKA_BOOTSTRAP"] = bootstrap
    return subprocess.run(
        [sys.executable, "-m", "streams.cli", "suppressions", "export", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_an_unreachable_broker_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "out.csv"
    r = run_cli("-f", "csv", "-o", str(out), bootstrap=f"127.0.0.1:{free_port()}")
    assert r.returncode == 1
    assert "cannot reach the Kafka broker at 127.0.0.1:" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing half-written


# ---------------------------------------------------------------------------- real broker
@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[Topic]:
    t = Topic(kafka_bootstrap)
    try:
        yield t
    finally:
        t.close()


ADDRS = [f"person{i}@example.com" for i in range(60)]
STATES = ("suspended", "quarantined", "suppressed", "active")


def fill(topic: Topic) -> dict[str, dict[str, Any] | None]:
    """Records as the worker writes them, with superseded values, tombstones and junk; returns
    the last record per address."""
    now = time.time()
    last: dict[str, dict[str, Any] | None] = {}
    for i, a in enumerate(ADDRS):
        s = STATES[i % 4]
        topic.send(a, record(a, "suspended", reason="mailboxfull", until=now + 60))  # superseded
        rec = record(
            a,
            s,
            reason=("userunknown", "complaint", "mailboxfull")[i % 3],
            until=now + (i + 1) * D if s == "suspended" or i % 8 == 2 else None,
            incident=f"false_hard_bounces/mx:mimecast/{i}",
            at=now - i,
        )
        topic.send(a, rec)
        last[a] = rec
    for a in ADDRS[:8]:
        topic.send(a, None)
        last[a] = None
    topic.send_raw(b"not-a-key", wire(record(ADDRS[10], "suppressed")))
    topic.send_raw(rkey(ADDRS[11]).encode(), b'{"kind": "suppression", "state": "gone"}')
    return last


def expected_csv(
    last: dict[str, dict[str, Any] | None], states: tuple[str, ...]
) -> list[list[str]]:
    rows = []
    for r in last.values():
        if r is None or r["state"] not in states:
            continue
        rows.append(
            [
                r["recipient_key"],
                r["state"],
                r["reason"] or "",
                str(r["count"]),
                "" if r["until"] is None else str(r["until"]),
                "true" if r["permanent"] else "false",
                r["incident"] or "",
                repr(r["at"]),
            ]
        )
    return sorted(rows)


@pytest.mark.kafka
def test_export_csv_and_kumomta(topic: Topic, tmp_path: Path) -> None:
    last = fill(topic)
    out = tmp_path / "list.csv"
    r = run_cli("-f", "csv", "--topic", topic.name, "-o", str(out), bootstrap=topic.bootstrap)
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == list(CSV_HEADER)
    assert rows[1:] == expected_csv(last, ("suspended", "quarantined", "suppressed"))
    assert "2 malformed skipped" in r.stderr and "3 partitions" in r.stderr
    assert "example.com" not in r.stderr + out.read_text()  # no address, anywhere

    # the export is the list the fleet client holds
    client = SuppressionClient(topic.bootstrap, topic.name, health_every_s=0.5, poll_timeout_s=0.2)
    client.start()
    try:
        assert client.wait_ready(60)
        assert [row[0] for row in rows[1:]] == [e.recipient_key for e in client.entries()]
    finally:
        assert client.stop(15)

    # --state, stdout
    r = run_cli(
        "-f",
        "csv",
        "--topic",
        topic.name,
        "--state",
        "quarantined,suspended",
        bootstrap=topic.bootstrap,
    )
    assert r.returncode == 0, r.stderr
    assert list(csv.reader(io.StringIO(r.stdout)))[1:] == expected_csv(
        last, ("suspended", "quarantined")
    )

    # kumomta with the sender's own addresses (other spellings, some not on the list)
    listing = tmp_path / "addresses.txt"
    listing.write_text("\n".join([a.upper() for a in ADDRS[::2]] + ["stranger@example.com"]))
    out = tmp_path / "kumo.jsonl"
    r = run_cli(
        "-f",
        "kumomta",
        "--topic",
        topic.name,
        "--addresses",
        str(listing),
        "-o",
        str(out),
        bootstrap=topic.bootstrap,
    )
    assert r.returncode == 0, r.stderr
    entries = [e for ln in out.read_text().splitlines() for e in json.loads(ln)["recipients"]]
    suppressed = {a for a, rec in last.items() if rec is not None and rec["state"] == "suppressed"}
    want = sorted(a.upper() for a in ADDRS[::2] if a in suppressed)
    assert sorted(e["recipient"] for e in entries[::2]) == want
    assert all(set(e) == {"recipient", "type", "source", "description"} for e in entries)
    assert f"{len(want)} of the" in r.stderr
    assert "example.com" not in r.stderr

    # kumomta without addresses: the keys
    r = run_cli("-f", "kumomta", "--topic", topic.name, bootstrap=topic.bootstrap)
    assert r.returncode == 0, r.stderr
    entries = [e for ln in r.stdout.splitlines() for e in json.loads(ln)["recipients"]]
    assert sorted(e["recipient"] for e in entries[::2]) == sorted(
        k
        for k, v in ((rkey(a), rec) for a, rec in last.items())
        if v is not None and v["state"] == "suppressed"
    )


@pytest.mark.kafka
def test_export_reads_to_the_end_offsets_taken_at_start(topic: Topic) -> None:
    """Records written while the export reads do not keep it reading: it ends, with at least
    everything written before it started."""
    before = ADDRS[:30]
    for a in before:
        topic.send(a, record(a, "suppressed"))
    stop = threading.Event()
    sent: list[str] = []  # appended before the send: a record on the topic is in here
    acked = [0]  # how many of them the broker acknowledged

    def writer() -> None:
        from kafka import KafkaProducer

        p = KafkaProducer(bootstrap_servers=topic.bootstrap, linger_ms=1)
        try:
            i = 0
            while not stop.is_set():
                a = f"late{i}@example.com"
                sent.append(a)
                p.send(topic.name, key=rkey(a).encode(), value=wire(record(a, "suppressed")))
                p.flush()
                acked[0] = i + 1
                i += 1
        finally:
            p.close(timeout=10)

    th = threading.Thread(target=writer)
    th.start()
    try:
        deadline = time.monotonic() + 30
        while acked[0] < 50 and time.monotonic() < deadline:  # the writer is under way
            time.sleep(0.01)
        acked_before = acked[0]
        assert acked_before >= 50
        t0 = time.monotonic()
        table, stats = read_topic(topic.bootstrap, topic.name)
        assert time.monotonic() - t0 < 60
        seen = len(sent)
    finally:
        stop.set()
        th.join(30)
    assert acked[0] > acked_before  # records were written while the export read
    keys = {e.recipient_key for e in table.entries()}
    assert {rkey(a) for a in before} <= keys
    assert {rkey(a) for a in sent[:acked_before]} <= keys  # on the topic before the read
    assert keys <= {rkey(a) for a in before + sent[:seen]}
    assert stats.records == len(keys) and stats.skipped == 0


@pytest.mark.kafka
def test_export_skips_aborted_transactions(topic: Topic) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=topic.bootstrap, transactional_id=f"it-{uuid.uuid4().hex}")
    try:
        p.init_transactions()
        p.begin_transaction()
        for a in ADDRS[:5]:
            p.send(topic.name, key=rkey(a).encode(), value=wire(record(a, "suppressed")))
        p.commit_transaction()
        p.begin_transaction()
        for a in ADDRS[5:10]:
            p.send(topic.name, key=rkey(a).encode(), value=wire(record(a, "suppressed")))
        p.flush()
        p.abort_transaction()
    finally:
        p.close(timeout=10)
    r = run_cli("-f", "csv", "--topic", topic.name, bootstrap=topic.bootstrap)
    assert r.returncode == 0, r.stderr
    got = sorted(row[0] for row in list(csv.reader(io.StringIO(r.stdout)))[1:])
    assert got == sorted(rkey(a) for a in ADDRS[:5])


@pytest.mark.kafka
def test_an_empty_topic_and_an_unknown_topic(topic: Topic, kafka_bootstrap: str) -> None:
    r = run_cli("-f", "csv", "--topic", topic.name, bootstrap=kafka_bootstrap)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ",".join(CSV_HEADER) + "\n"
    assert "0 entries" in r.stderr
    missing = f"it-missing-{uuid.uuid4().hex[:8]}"
    r = run_cli("-f", "kumomta", "--topic", missing, bootstrap=kafka_bootstrap)
    assert r.returncode == 1
    assert f"topic '{missing}' does not exist on {kafka_bootstrap}" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    with pytest.raises(ExportError, match="does not exist"):
        read_topic(kafka_bootstrap, missing)
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    try:
        assert missing not in admin.list_topics()  # the export did not create it
    finally:
        admin.close()
