"""The fleet's suppression client (streams/fleet/suppressions.py): the answers equal
``models.act.suppression.may_send`` on the recipient's current record in every state, addresses
are hashed the pipeline's way, tombstones and malformed messages, the compact table (delta,
folds, bulk loads), the follower over a fake consumer (catch-up at once, outage, resume), and on
the real broker (marked kafka: fails without one): a fresh compacted topic followed live,
transactions (read_committed) and compaction."""

from __future__ import annotations

import itertools
import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.act.suppression import (
    ACTIVE,
    QUARANTINED,
    STATE_CODE,
    SUPPRESSED,
    SUSPENDED,
    RecipientState,
    Suppressor,
    incident_hash,
    may_send,
    reason_code,
    record_of,
    state_from_record,
)
from models.ingest.recipients import recipient_digest
from models.ingest.validate import recipient_key
from streams.fleet import SuppressionClient, SuppressionEntry, SuppressionTable
from streams.fleet.suppressions import (
    ABSENT,
    NO_UNTIL,
    ROW_BYTES,
    MalformedRecord,
    Staging,
    keys_of,
    merge,
    parse_message,
)
from tests.conftest import free_port
from tests.test_suppression_policy import (
    FHB,
    E,
    Inc,
    bounce,
    inc,
    key,
    rows_of,
    streams,
)

NOW = 1_800_000_000.0
D = 86_400


def rkey(address: str) -> str:
    return recipient_digest(address).hex()


def record(
    address: str,
    state: str,
    *,
    reason: str | None = "userunknown",
    count: int = 1,
    until: float | None = None,
    incident: str | None = None,
    at: float = NOW,
    tombstone: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """A record as docs/suppression.md "Record" writes it (the policy's own record_of)."""
    st_code = STATE_CODE[state]
    r = RecipientState(
        key=recipient_digest(address),
        state=st_code,
        reason=reason_code(reason),
        count=count,
        until=int(until) if until is not None else 0,
        first_seen=int(at),
        last_seen=int(at),
    )
    name = None
    if st_code == QUARANTINED:
        r.base_state, r.base_reason, r.base_count = ACTIVE, reason_code(None), 0
        if incident is not None and incident.startswith("#"):
            r.incident = int(incident[1:], 16)
        elif incident is not None:
            r.incident, name = incident_hash(incident), incident
    rec = record_of(r, at, "bounce", tombstone, name)
    rec.update(extra)
    return rec


def wire(rec: dict[str, Any] | None) -> bytes | None:
    return None if rec is None else json.dumps(rec).encode()


def msg(address: str, rec: dict[str, Any] | None) -> tuple[bytes, bytes | None]:
    return rkey(address).encode(), wire(rec)


# ---------------------------------------------------------------------------- hashing
@pytest.mark.parametrize(
    "address",
    [
        "jane.doe@example.org",
        "Jane.Doe@Example.ORG",
        "  jane.doe@example.org\t\n",
        "JÖRG@Bücher.example",
        "\u0130stanbul@example.com",  # İ lower-cases to two code points
        "user+tag@sub.example.co.uk",
        "\ud800lone@example.org",  # a lone surrogate, as the pipeline keeps it
        "",
    ],
)
def test_addresses_are_hashed_as_the_pipeline_does(address: str) -> None:
    want = recipient_key(address)  # the documented pseudonym (models/ingest/validate.py)
    assert recipient_digest(address).hex() == want
    c = SuppressionClient(clock=lambda: NOW)
    assert c.feed(want.encode(), wire(record(address, "suppressed")))
    assert not c.may_send(address)
    assert not c.may_send(recipient_key=want)
    assert not c.may_send(recipient_key=want.upper())
    assert not c.may_send(recipient_key=bytes.fromhex(want))
    e = c.lookup(address)
    assert e is not None and e.recipient_key == want
    assert keys_of([address]).tolist() == [bytes.fromhex(want).rstrip(b"\x00")]
    assert c.may_send_many([address, "someone.else@example.org"]).tolist() == [False, True]


@given(st.text(max_size=40))
@settings(max_examples=300, deadline=None)
def test_hashing_equals_the_pipeline_on_any_text(address: str) -> None:
    c = SuppressionClient(clock=lambda: NOW)
    c.feed(recipient_key(address).encode(), wire(record(address, "suppressed")))
    assert not c.may_send(address)
    assert c.lookup(address) == c.lookup(recipient_key=recipient_key(address))


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({}, "either"),
        ({"address": "a@b", "recipient_key": "0" * 64}, "either"),
        ({"recipient_key": "0" * 63}, "64 hex"),
        ({"recipient_key": "z" * 64}, "64 hex"),
        ({"recipient_key": b"\x00" * 31}, "64 hex"),
    ],
)
def test_a_lookup_needs_one_address_or_key(kwargs: dict[str, Any], error: str) -> None:
    c = SuppressionClient()
    with pytest.raises(ValueError, match=error):
        c.may_send(**kwargs)


# ---------------------------------------------------------------------------- every state
A = "jane@example.org"
U = NOW + 3 * D  # an until


class Case(NamedTuple):
    name: str
    rec: dict[str, Any] | None  # None: a tombstone (null value)
    entry: tuple[str, str | None, int, int | None, bool, str | None] | None


STATE_CASES = [
    Case("no record (tombstone)", None, None),
    Case(
        "tombstone record",
        record(A, "active", reason=None, count=0, tombstone=True, cause="forgotten"),
        None,
    ),
    Case("active with a count", record(A, "active", reason="mailboxfull", count=2), None),
    Case(
        "suspended until U",
        record(A, "suspended", reason="mailboxfull", until=U),
        ("suspended", "mailboxfull", 1, int(U), False, None),
    ),
    Case(
        "suspended without until",
        record(A, "suspended", reason="mailboxfull", until=None),
        ("suspended", "mailboxfull", 1, None, False, None),
    ),
    Case(
        "quarantined",
        record(A, "quarantined", count=3, incident=f"false_hard_bounces/mx:mimecast/{int(NOW)}"),
        (
            "quarantined",
            "userunknown",
            3,
            None,
            False,
            f"false_hard_bounces/mx:mimecast/{int(NOW)}",
        ),
    ),
    Case(
        "quarantined by an incident this worker forgot",
        record(A, "quarantined", incident="#0badcafe"),
        ("quarantined", "userunknown", 1, None, False, "#0badcafe"),
    ),
    Case(
        "suppressed permanently",
        record(A, "suppressed"),
        ("suppressed", "userunknown", 1, None, True, None),
    ),
    Case(
        "suppressed until U",
        record(A, "suppressed", reason="complaint", until=U),
        ("suppressed", "complaint", 1, int(U), False, None),
    ),
    Case(
        "suppressed, manual",
        record(A, "suppressed", reason="manual"),
        ("suppressed", "manual", 1, None, True, None),
    ),
    Case(
        "suppressed, a reason code this version does not know",
        record(A, "suppressed", reason="#77", count=2),
        ("suppressed", "#77", 2, None, True, None),
    ),
]
TIMES = [NOW - D, NOW, U - 1, U - 0.001, U, U + 0.5, U + 10 * D, NOW + 30 * 365 * D]


@pytest.mark.parametrize("case", STATE_CASES, ids=[c.name for c in STATE_CASES])
@pytest.mark.parametrize("path", ["delta", "folded", "loaded"])
def test_every_state_answers_as_the_policy(case: Case, path: str) -> None:
    """The client's answer equals models.act.suppression.may_send on the record, whatever path
    the record took into the table (a live change, folded into the columns, a bulk load)."""
    c = SuppressionClient(clock=lambda: NOW)
    other = "other@example.org"
    c.feed(*msg(other, record(other, "suppressed")))
    c.feed(*msg(A, record(A, "suppressed", reason="hasmoved")))  # replaced by the case's
    if path == "loaded":
        staged = Staging()
        staged.add([parse_message(*msg(A, case.rec))])
        c.table.load_staged(staged)
    else:
        c.feed(*msg(A, case.rec))
        if path == "folded":
            c.table.fold()
    for t in TIMES:
        want = may_send(case.rec, t)
        assert c.may_send(A, now=t) is want, t
        assert c.may_send_many([A, other], now=t).tolist() == [want, False], t
    e = c.lookup(A)
    if case.entry is None:
        assert e is None
        assert len(c) == 1
    else:
        assert e is not None
        assert (e.state, e.reason, e.count, e.until, e.permanent, e.incident) == case.entry
        assert e.at == NOW
        assert len(c) == 2
        # the entry is the record's own fields
        assert case.rec is not None
        assert {k: case.rec[k] for k in ("state", "reason", "count", "until", "permanent")} == {
            "state": e.state,
            "reason": e.reason,
            "count": e.count,
            "until": e.until,
            "permanent": e.permanent,
        }
        if case.rec["state"] == "quarantined":
            assert e.incident == case.rec["incident"]


# ---------------------------------------------------------------------------- malformed
GOOD = record(A, "suppressed")
BAD_CASES: list[tuple[str, bytes | str | None, bytes | None, str]] = [
    ("not JSON", rkey(A), b"{not json", "not JSON"),
    ("a list", rkey(A), b"[]", "object"),
    ("NaN", rkey(A), b'{"kind": "suppression", "at": NaN}', "not JSON"),
    ("another kind", rkey(A), wire({**GOOD, "kind": "incident"}), "kind"),
    ("no kind", rkey(A), wire({k: v for k, v in GOOD.items() if k != "kind"}), "kind"),
    ("key is not the record's", rkey("b@example.org"), wire(GOOD), "not the message key"),
    ("no key", None, wire(GOOD), "64-hex"),
    ("key not hex", "z" * 64, wire(GOOD), "64-hex"),
    ("key upper-case", rkey(A).upper(), wire(GOOD), "64-hex"),
    ("key not UTF-8", b"\xff" * 64, wire(GOOD), "64-hex"),
    ("recipient_key missing", rkey(A), wire({**GOOD, "recipient_key": None}), "message key"),
    ("unknown state", rkey(A), wire({**GOOD, "state": "frozen"}), "state"),
    ("state not a string", rkey(A), wire({**GOOD, "state": 3}), "state"),
    ("reason not a string", rkey(A), wire({**GOOD, "reason": 7}), "reason"),
    ("count not an integer", rkey(A), wire({**GOOD, "count": "1"}), "count"),
    ("count a fraction", rkey(A), wire({**GOOD, "count": 1.5}), "count"),
    ("count a boolean", rkey(A), wire({**GOOD, "count": True}), "count"),
    ("until a string", rkey(A), wire({**GOOD, "until": "soon"}), "until"),
    ("until a boolean", rkey(A), wire({**GOOD, "until": True}), "until"),
    ("at a string", rkey(A), wire({**GOOD, "at": "now"}), "at"),
    (
        "incident not a string",
        rkey(A),
        wire({**record(A, "quarantined", incident="x"), "incident": 5}),
        "incident",
    ),
]


@pytest.mark.parametrize(("name", "k", "v", "why"), BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_malformed_messages_are_skipped_and_counted(
    name: str, k: bytes | str | None, v: bytes | None, why: str
) -> None:
    c = SuppressionClient(clock=lambda: NOW)
    c.feed(*msg(A, record(A, "suspended", reason="mailboxfull", until=U)))
    with pytest.raises(MalformedRecord, match=why):
        parse_message(k, v)
    version = c.version
    assert not c.feed(k, v)
    assert c.stats["skipped"] == 1
    assert c.version == version
    e = c.lookup(A)  # the previous entry stands
    assert e is not None and e.state == "suspended"


def test_the_follower_skips_malformed_messages_without_dying() -> None:
    fake = FakeConsumer("t")
    fake.log += [(b"junk", b"junk"), (rkey(A).encode(), b"{"), msg(A, record(A, "suppressed"))]
    c = SuppressionClient("fake:9092", "t", health_every_s=0.02, poll_timeout_s=0.01)
    c._connect = lambda: fake  # type: ignore[method-assign]
    c.start()
    try:
        assert c.wait_ready(10)
        assert not c.may_send(A)
        assert c.stats["skipped"] == 2 and c.stats["records"] == 1
        assert c._thread is not None and c._thread.is_alive()
    finally:
        assert c.stop(10)


ODD_CASES: list[tuple[str, dict[str, Any], tuple[str, str | None, int, int | None]]] = [
    (
        "unknown keys are ignored",
        {**GOOD, "new_field": {"x": 1}, "cause": "from-the-future"},
        ("suppressed", "userunknown", 1, None),
    ),
    (
        "a reason name of a newer vocabulary is kept by name",
        {**GOOD, "reason": "mailbox_gone"},
        ("suppressed", "mailbox_gone", 1, None),
    ),
    (
        "a fractional until is rounded up (mail held a fraction longer, never sent earlier)",
        {**record(A, "suspended", until=U), "until": U + 0.25},
        ("suspended", "userunknown", 1, int(U) + 1),
    ),
    (
        "an until past 2106 holds forever",
        {**record(A, "suspended", until=U), "until": 2**40},
        ("suspended", "userunknown", 1, NO_UNTIL - 1),
    ),
    (
        "a negative until has passed",
        {**record(A, "suspended", until=U), "until": -5},
        ("suspended", "userunknown", 1, 0),
    ),
    ("count clamped", {**GOOD, "count": 10**6}, ("suppressed", "userunknown", 65535, None)),
    ("count as 2.0", {**GOOD, "count": 2.0}, ("suppressed", "userunknown", 2, None)),
    ("no at", {k: v for k, v in GOOD.items() if k != "at"}, ("suppressed", "userunknown", 1, None)),
    (
        "a bare minimum",
        {"kind": "suppression", "recipient_key": rkey(A), "state": "suppressed"},
        ("suppressed", None, 0, None),
    ),
]


@pytest.mark.parametrize(("name", "rec", "want"), ODD_CASES, ids=[c[0] for c in ODD_CASES])
def test_records_read_leniently_where_it_is_safe(
    name: str, rec: dict[str, Any], want: tuple[str, str | None, int, int | None]
) -> None:
    c = SuppressionClient(clock=lambda: NOW)
    assert c.feed(rkey(A).encode(), wire(rec))
    e = c.lookup(A)
    assert e is not None and (e.state, e.reason, e.count, e.until) == want
    for t in [*TIMES, U + 0.25, U + 0.75, U + 1]:
        got = c.may_send(A, now=t)
        if "fractional" in name:  # never earlier than the record says; from the next second on
            assert not got or may_send(rec, t), t
            assert got is (t >= U + 1), t
        else:
            assert got is may_send(rec, t), t


# ---------------------------------------------------------------------------- the policy's records
H = 3600.0
T0 = 1_800_000_000.0


def _policy_records(events: list[E], incident: bool) -> list[dict[str, Any]]:
    """Every record the policy writes for ``events`` (with a false-bounce incident open on the
    B2B domain's MX from the start when ``incident``, closed at the end)."""
    sup = Suppressor()
    opened: list[Inc] = [inc(FHB, "mx:mimecast", -1)] if incident else []
    out = []
    for e in events:
        out += sup.expire(T0 + e.t)
        out += sup.observe(rows_of([e]), opened)
    if incident:
        out += sup.incident_closed(opened[0], T0 + (events[-1].t if events else 0) + 1)
    out += sup.expire(T0 + 400 * D)
    return [c.to_json() for c in out]


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
@given(streams(), st.booleans(), st.integers(1, 5), st.integers(1, 8), st.booleans())
def test_the_policy_records_answer_as_the_policy(
    events: list[E], incident: bool, cuts: int, delta_max: int, as_flag: bool
) -> None:
    """The records the policy itself writes (every cause: bounces, deliveries, consent,
    quarantine and release, expiry, forgetting), as the worker publishes them (a tombstone as
    a null value, or ``as_flag``: the record with ``"tombstone": true``), fed in batches
    through the live path (tiny delta: folds) or the bulk path: every answer at every time
    equals may_send on the last record of the key, and the entry is that record's."""
    recs = _policy_records(events, incident)
    msgs = [
        (r["recipient_key"].encode(), None if r["tombstone"] and not as_flag else wire(r))
        for r in recs
    ]
    live = SuppressionClient(clock=lambda: T0, delta_max=delta_max)
    bulk = SuppressionClient(clock=lambda: T0)
    staged = Staging()
    bounds = np.linspace(0, len(msgs), cuts + 1).astype(int).tolist()
    for lo, hi in itertools.pairwise(bounds):
        part = msgs[lo:hi]
        live.apply(parse_message(k, v) for k, v in part)
        staged.add([parse_message(k, v) for k, v in part])
    bulk.table.load_staged(staged)
    last: dict[str, dict[str, Any]] = {}
    for r in recs:
        last[r["recipient_key"]] = r
    times = sorted({T0, T0 + 1, *(float(r["until"]) for r in recs if r["until"] is not None)})
    times += [t + 0.5 for t in times] + [t - 1 for t in times]
    for who in ("a", "b", "c", "g1", "g2"):
        k = key(who).hex()
        rec = last.get(k)
        for t in times:
            want = may_send(rec, t)
            assert live.may_send(recipient_key=k, now=t) is want
            assert bulk.may_send(recipient_key=k, now=t) is want
        for c in (live, bulk):
            e = c.lookup(recipient_key=k)
            if rec is None or rec["tombstone"] or rec["state"] == "active":
                assert e is None
                continue
            assert state_from_record(rec) is not None  # a record the worker could rebuild from
            assert e == SuppressionEntry(
                k,
                rec["state"],
                rec["reason"],
                rec["count"],
                rec["until"],
                rec["permanent"],
                rec["incident"],
                rec["at"],
            )
    ks = np.array([key(w) for w in ("a", "b", "c", "g1", "g2")], dtype="S32")
    for t in times:
        want_many = [may_send(last.get(key(w).hex()), t) for w in ("a", "b", "c", "g1", "g2")]
        assert live.may_send_many(recipient_keys=ks, now=t).tolist() == want_many
        assert bulk.may_send_many(recipient_keys=ks, now=t).tolist() == want_many
    assert list(live.entries()) == list(bulk.entries())


def test_a_quarantine_is_held_then_released_as_the_policy_says() -> None:
    """A B2B false-bounce wave: the policy quarantines, the client holds; the incident closes,
    the policy releases, the client answers yes again."""
    sup = Suppressor()
    opened = [inc(FHB, "mx:mimecast", -1)]
    c = SuppressionClient(clock=lambda: T0)
    ch = sup.observe(rows_of([bounce(0, "a", "userunknown", "m1")]), opened)
    for r in (x.to_json() for x in ch):
        c.feed(r["recipient_key"], None if r["tombstone"] else wire(r))
    e = c.lookup(recipient_key=key("a").hex())
    assert e is not None and e.state == "quarantined" and e.incident == opened[0].id
    assert not c.may_send(recipient_key=key("a"))
    for r in (x.to_json() for x in sup.incident_closed(opened[0], T0 + 60)):
        c.feed(r["recipient_key"], None if r["tombstone"] else wire(r))
    assert c.may_send(recipient_key=key("a"))


# ---------------------------------------------------------------------------- the table
def _rows(n: int, seed: int) -> list[tuple[bytes, int, int, int, int, float, None, None]]:
    rng = np.random.default_rng(seed)
    keys = rng.integers(0, 256, size=(n, 32), dtype=np.uint8)
    keys[: n // 8, -1] = 0  # trailing NULs, which numpy's S arrays drop
    states = rng.choice([ABSENT, SUSPENDED, QUARANTINED, SUPPRESSED], size=n)
    until = rng.integers(int(NOW) - D, int(NOW) + D, size=n)
    return [
        (bytes(keys[i]), int(states[i]), 3, 1, int(until[i]), NOW, None, None) for i in range(n)
    ]


@given(st.integers(0, 2**32 - 1), st.integers(0, 300), st.integers(1, 64))
@settings(max_examples=60, deadline=None)
def test_the_table_equals_a_dict(seed: int, n: int, delta_max: int) -> None:
    """Random rows (with repeated keys, deletions, keys ending in NULs) applied in batches with
    folds, against a plain dict of the last row per key."""
    rows = _rows(n, seed)
    rng = np.random.default_rng(seed)
    again = rng.integers(0, max(n, 1), size=2 * (n // 3)) if n else []
    for j, i in enumerate(again):
        k = rows[int(i)][0]
        if j % 2:
            rows.append((k, ABSENT, 255, 0, NO_UNTIL, NOW, None, None))
        else:
            rows.append((k, SUPPRESSED, 1, 2, NO_UNTIL, NOW, None, None))
    t = SuppressionTable(delta_max=delta_max)
    ref: dict[bytes, tuple[int, int]] = {}
    for lo in range(0, len(rows), 17):
        batch = rows[lo : lo + 17]
        t.apply(batch)
        for r in batch:
            if r[1] == ABSENT:
                ref.pop(r[0], None)
            else:
                ref[r[0]] = (r[1], r[4])
    assert len(t) == len(ref)
    by_state = {"suspended": SUSPENDED, "quarantined": QUARANTINED, "suppressed": SUPPRESSED}
    assert t.counts() == {
        name: sum(1 for v in ref.values() if v[0] == code) for name, code in by_state.items()
    }
    probe = [r[0] for r in rows] + [b"\x00" * 32, b"\xff" * 32]
    for now in (NOW - 2 * D, NOW, NOW + 2 * D):
        many = t.may_send_many(np.array(probe, dtype="S32"), now).tolist()
        for k, got_many in zip(probe, many, strict=True):
            v = ref.get(k)
            want = v is None or (
                v[0] in (SUSPENDED, SUPPRESSED) and v[1] != NO_UNTIL and now >= v[1]
            )
            assert t.may_send(k, now) is want
            assert got_many is want
    assert [bytes.fromhex(e.recipient_key) for e in t.entries()] == sorted(ref)
    t.fold()
    assert t.nbytes == len(ref) * ROW_BYTES
    assert sorted(ref) == [bytes.fromhex(e.recipient_key) for e in t.entries()]


def test_merge_replaces_deletes_and_inserts() -> None:
    k1, k2, k3 = b"\x01" * 32, b"\x02" * 31 + b"\x00", b"\x03" * 32
    base = Staging()
    base.add(
        [
            (k1, SUPPRESSED, 1, 1, NO_UNTIL, NOW, None, None),
            (k2, SUSPENDED, 2, 1, int(U), NOW, None, None),
        ]
    )
    b = merge(SuppressionTable().columns(), base.finish())
    upd = Staging()
    upd.add(
        [
            (k1, ABSENT, 255, 0, NO_UNTIL, NOW, None, None),
            (k2, SUPPRESSED, 3, 2, NO_UNTIL, NOW, None, None),
            (k3, QUARANTINED, 1, 1, NO_UNTIL, NOW, None, None),
            (b"\x04" * 32, ABSENT, 255, 0, NO_UNTIL, NOW, None, None),
        ]
    )
    out = merge(b, upd.finish())
    assert [bytes(k).ljust(32, b"\x00") for k in out.key] == [k2, k3]
    assert out.state.tolist() == [SUPPRESSED, QUARANTINED]
    assert out.reason.tolist() == [3, 1] and out.count.tolist() == [2, 1]
    assert merge(out, Staging().finish()) is out


def test_row_bytes_and_counts() -> None:
    assert ROW_BYTES == 48
    t = SuppressionTable()
    s = Staging()
    s.add(_rows(1000, 7))
    t.load_staged(s)
    counts = t.counts()
    assert sum(counts.values()) == len(t)
    assert t.nbytes == len(t) * ROW_BYTES
    assert set(counts) == {"suspended", "quarantined", "suppressed"}
    assert [e.state for e in t.entries(["quarantined"])] == ["quarantined"] * counts["quarantined"]


def test_concurrent_readers_and_a_writer_that_folds() -> None:
    c = SuppressionClient(clock=lambda: NOW, delta_max=8)
    others = [f"user{i}@example.org" for i in range(200)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert c.may_send(A) in (True, False)
                assert c.may_send_many(others[:50]).shape == (50,)
                c.lookup(A)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for i, who in enumerate(others * 3):
        state = ("suppressed", "suspended", "active")[i % 3]
        c.feed(*msg(who, record(who, state, until=U if state == "suspended" else None)))
        c.feed(*msg(A, record(A, "suppressed") if i % 2 else None))
    c.feed(*msg(A, record(A, "suppressed")))
    stop.set()
    for th in threads:
        th.join(10)
    assert not errors
    assert not c.may_send(A)
    final = [("suppressed", "suspended", "active")[(400 + j) % 3] for j in range(len(others))]
    want = [
        may_send(record(w, s, until=U if s == "suspended" else None), NOW)
        for w, s in zip(others, final, strict=True)
    ]
    assert c.may_send_many(others).tolist() == want


# ---------------------------------------------------------------------------- the follower
class _Msg(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int


class FakeConsumer:
    """The part of kafka.KafkaConsumer the follower uses, over an in-memory partition; ``down``
    makes it behave like an unreachable broker (no data, offset requests time out)."""

    def __init__(self, topic: str) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition(topic, 0)
        self.log: list[tuple[bytes | None, bytes | None]] = []
        self.pos: dict[Any, int] = {}
        self.assigned: list[Any] = []
        self.down = False

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def assign(self, tps: list[Any]) -> None:
        self.assigned = list(tps)

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[tp] = offset

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.pos[tp] = 0

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        if self.down:
            raise TimeoutError("no broker")
        return {tp: len(self.log) for tp in tps}

    def position(self, tp: Any, timeout_ms: int | None = None) -> int:
        return self.pos[tp]

    def poll(self, timeout_ms: int = 0) -> dict[Any, list[_Msg]]:
        at = self.pos.get(self.tp, 0)
        if self.down or at >= len(self.log):
            time.sleep(timeout_ms / 1000)
            return {}
        k, v = self.log[at]  # one message per poll: the catch-up takes several polls
        self.pos[self.tp] = at + 1
        return {self.tp: [_Msg(k, v, at)]}

    def close(self, **kw: Any) -> None:
        pass


def _eventually(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_follower_catches_up_at_once_keeps_the_list_through_an_outage_and_resumes() -> None:
    B, C = "b@example.org", "c@example.org"
    fake = FakeConsumer("t")
    fake.log += [
        msg(A, record(A, "suspended", reason="mailboxfull", until=U)),
        msg(A, record(A, "suppressed")),  # the history of A: only this one is ever answered
        msg(B, record(B, "suppressed")),
        msg(B, None),
        msg(C, record(C, "suspended", reason="mailboxfull", until=U)),
    ]
    now = [NOW]
    c = SuppressionClient(
        "fake:9092",
        "t",
        clock=lambda: now[0],
        health_every_s=0.02,
        health_timeout_s=0.3,
        poll_timeout_s=0.01,
    )
    c._connect = lambda: fake  # type: ignore[method-assign]
    assert c.may_send(A)  # nothing read yet: nothing known
    c.start()
    try:
        assert c.wait_ready(10) and c.ready
        assert c.version == 1  # the whole history published as one change
        assert (c.may_send(A), c.may_send(B), c.may_send(C)) == (False, True, False)
        assert _eventually(lambda: c.healthy)

        fake.log.append(msg(B, record(B, "suppressed", reason="complaint")))
        assert c.wait_until(lambda: not c.may_send(B), timeout=10)

        fake.down = True  # the broker is gone: not healthy; the list it has stays in force
        assert _eventually(lambda: not c.healthy)
        assert (c.may_send(A), c.may_send(B), c.may_send(C)) == (False, False, False)
        now[0] = U  # a suspension still ends on time without any record
        assert (c.may_send(A), c.may_send(B), c.may_send(C)) == (False, False, True)

        fake.log.append(msg(A, None))
        fake.down = False  # back: it resumes where it was (no replay) and is healthy again
        assert c.wait_until(lambda: c.may_send(A), timeout=10)
        assert _eventually(lambda: c.healthy)
        assert c.stats["tombstones"] == 2 and c.stats["records"] == 5
    finally:
        assert c.stop(timeout=10)
    assert not c.healthy


def test_unreachable_broker_keeps_what_it_has() -> None:
    """No broker at the address: start() returns at once, lookups never block, the entries
    held stay in force; healthy stays False; stop() is clean."""
    c = SuppressionClient(
        f"127.0.0.1:{free_port()}",
        clock=lambda: NOW,
        connect_timeout_s=0.5,
        retry_backoff_s=0.1,
    )
    c.feed(*msg(A, record(A, "suppressed")))
    t0 = time.monotonic()
    c.start()
    assert time.monotonic() - t0 < 0.5
    t0 = time.perf_counter()
    for _ in range(10_000):
        assert not c.may_send(A)
    assert time.perf_counter() - t0 < 1.0  # never waits for the broker
    assert not c.healthy and not c.ready
    assert not c.wait_ready(0.2)
    assert not c.may_send(A)
    assert c.stop(timeout=10)


def test_start_needs_bootstrap_servers() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        SuppressionClient().start()
    assert SuppressionClient().stop()


# ---------------------------------------------------------------------------- real broker
class Topic:
    """A fresh compacted topic on the real broker and a producer keyed as the worker keys."""

    def __init__(self, bootstrap: str, partitions: int = 3, **configs: str) -> None:
        from kafka import KafkaAdminClient, KafkaProducer
        from kafka.admin import NewTopic

        self.bootstrap = bootstrap
        self.name = f"it-suppressions-{uuid.uuid4().hex[:8]}"
        self.admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
        cfg = {"cleanup.policy": "compact", **configs}
        self.admin.create_topics([NewTopic(self.name, partitions, 1, topic_configs=cfg)])
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=2)

    def send(self, address: str, rec: dict[str, Any] | None) -> None:
        k, v = msg(address, rec)
        self.producer.send(self.name, key=k, value=v).get(30)

    def send_raw(self, k: bytes | None, v: bytes | None) -> None:
        self.producer.send(self.name, key=k, value=v).get(30)

    def close(self) -> None:
        self.producer.close(timeout=10)
        try:
            self.admin.delete_topics([self.name])
        finally:
            self.admin.close()


@pytest.fixture
def topic(kafka_bootstrap: str) -> Iterator[Topic]:
    t = Topic(kafka_bootstrap)
    try:
        yield t
    finally:
        t.close()


ADDRS = [f"rcpt{i}@example.org" for i in range(40)]


@pytest.mark.kafka
def test_follows_a_compacted_topic(topic: Topic) -> None:
    now = time.time()
    want: dict[str, dict[str, Any] | None] = {}
    for i, a in enumerate(ADDRS):
        kind = ("suspended", "quarantined", "suppressed", "active")[i % 4]
        rec = record(a, kind, until=now + D if kind == "suspended" else None, incident="inc/x/1")
        topic.send(a, record(a, "suppressed", reason="hasmoved"))  # superseded
        topic.send(a, rec)
        want[a] = rec
    for a in ADDRS[:5]:
        topic.send(a, None)
        want[a] = None
    topic.send_raw(rkey("junk@example.org").encode(), b"{broken")
    client = SuppressionClient(topic.bootstrap, topic.name, health_every_s=0.5, poll_timeout_s=0.2)
    client.start()
    try:
        assert client.wait_ready(60), "the client did not catch up with the topic"
        assert client.healthy and client.last_update is not None
        assert client.stats["skipped"] == 1
        for a in ADDRS:
            assert client.may_send(a) is may_send(want[a], time.time()), a
        assert client.may_send_many(ADDRS).tolist() == [
            may_send(want[a], time.time()) for a in ADDRS
        ]
        assert len(client) == sum(
            1 for r in want.values() if r is not None and r["state"] != "active"
        )
        # live: a suppression, a release (tombstone), a suspension ending by the clock
        fresh = "fresh@example.org"
        topic.send(fresh, record(fresh, "suppressed", reason="complaint"))
        assert client.wait_until(lambda: not client.may_send(fresh), timeout=30)
        released = ADDRS[6]  # suppressed
        topic.send(released, None)
        assert client.wait_until(lambda: client.may_send(released), timeout=30)
        e = client.lookup(fresh)
        assert e is not None and (e.state, e.reason, e.permanent) == (
            "suppressed",
            "complaint",
            True,
        )
        assert client.healthy
    finally:
        assert client.stop(timeout=15), "the follower thread did not stop"
    assert not client.healthy


@pytest.mark.kafka
def test_read_committed_skips_aborted_transactions(topic: Topic) -> None:
    """Records of an aborted transaction are never answered, and the catch-up ends although
    each partition ends with a transaction marker, not a record."""
    from kafka import KafkaProducer

    p = KafkaProducer(
        bootstrap_servers=topic.bootstrap, transactional_id=f"it-{uuid.uuid4().hex[:8]}"
    )
    try:
        p.init_transactions()
        p.begin_transaction()
        for a in ADDRS[:10]:
            p.send(topic.name, key=rkey(a).encode(), value=wire(record(a, "suppressed")))
        p.commit_transaction()
        p.begin_transaction()
        for a in ADDRS[10:20]:
            p.send(topic.name, key=rkey(a).encode(), value=wire(record(a, "suppressed")))
        p.send(topic.name, key=rkey(ADDRS[0]).encode(), value=None)
        p.flush()  # on the broker, then aborted
        p.abort_transaction()
    finally:
        p.close(timeout=10)
    client = SuppressionClient(topic.bootstrap, topic.name, health_every_s=0.5, poll_timeout_s=0.2)
    client.start()
    try:
        assert client.wait_ready(60)
        assert client.may_send_many(ADDRS[:20]).tolist() == [False] * 10 + [True] * 10
        assert len(client) == 10
    finally:
        assert client.stop(timeout=15)


def _records_on_partition(bootstrap: str, name: str) -> list[int]:
    """Offsets of the records partition 0 holds now, read from its start."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False)
    try:
        tp = TopicPartition(name, 0)
        end = c.end_offsets([tp])[tp]
        c.assign([tp])
        c.seek_to_beginning(tp)
        out: list[int] = []
        deadline = time.monotonic() + 30
        while c.position(tp) < end and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=200).values():
                out += [r.offset for r in recs if r.offset < end]
        return out
    finally:
        c.close()


@pytest.mark.kafka
def test_compaction_leaves_the_same_list(kafka_bootstrap: str) -> None:
    """The log cleaner drops superseded values (and, after delete.retention.ms, tombstones): a
    client that reads the compacted topic from scratch has the list a client that followed
    every record has."""
    t = Topic(
        kafka_bootstrap,
        partitions=1,
        **{
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.0001",
            "delete.retention.ms": "100",
            "min.compaction.lag.ms": "0",
        },
    )
    follower = SuppressionClient(kafka_bootstrap, t.name, health_every_s=0.5, poll_timeout_s=0.2)
    try:
        follower.start()  # follows every record as it is written
        assert follower.wait_ready(60)
        for a in ADDRS[:20]:
            t.send(a, record(a, "suppressed", reason="hasmoved"))
        for a in ADDRS[:10]:
            t.send(a, None)  # released: tombstones
        for a in ADDRS[10:15]:
            t.send(a, record(a, "suspended", reason="mailboxfull", until=time.time() + D))
        assert follower.wait_until(
            lambda: (
                follower.may_send_many(ADDRS[:20]).tolist() == [True] * 10 + [False] * 10
                and (e := follower.lookup(ADDRS[14])) is not None
                and e.state == "suspended"
            ),
            timeout=30,
        )
        # the cleaner only compacts closed segments: new records roll the active one; the
        # superseded values (offsets 0-14) are gone once a cleaner pass ran (every 15 s) after
        # the segments of the values that replace them closed
        deadline = time.monotonic() + 240
        filler = "filler@example.org"
        offsets: list[int] = []
        while time.monotonic() < deadline:
            t.send(filler, record(filler, "suppressed"))
            offsets = _records_on_partition(kafka_bootstrap, t.name)
            if not any(o < 15 for o in offsets):
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"the topic was not compacted in 240 s: {offsets[:40]}")
        assert {o for o in offsets if o < 35} >= set(range(15, 20)) | set(range(30, 35))
        fresh = SuppressionClient(kafka_bootstrap, t.name, health_every_s=0.5, poll_timeout_s=0.2)
        fresh.start()
        try:
            assert fresh.wait_ready(60)
            assert follower.wait_until(lambda: not follower.may_send(filler), timeout=30)
            assert list(fresh.entries()) == list(follower.entries())
            assert fresh.may_send_many(ADDRS[:20]).tolist() == [True] * 10 + [False] * 10
            assert len(fresh) == 11
        finally:
            assert fresh.stop(timeout=15)
    finally:
        assert follower.stop(timeout=15)
        t.close()
