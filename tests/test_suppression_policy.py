"""Suppression policy (models/act/suppression/): the schedule per reason, quarantine and
release, expiry, the record format, the packed value, the configuration, and the vectorised path
against a naive per-event reference (hypothesis)."""

from __future__ import annotations

import hashlib
import itertools
import json
import tomllib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.act.suppression import (
    ACTIVE,
    EXTRA_KEYS,
    QUARANTINED,
    RECORD_BYTES,
    RECORD_KEYS,
    STATES,
    SUPPRESSED,
    SUSPENDED,
    Event,
    MemoryStore,
    Policy,
    RecipientState,
    RecordError,
    SuppressionChange,
    Suppressor,
    incident_hash,
    may_send,
    quarantine_scopes,
    reason_name,
    state_from_record,
    step,
)
from models.act.suppression_config import (
    DAY,
    DEFAULTS,
    SuppressionConfig,
    SuppressionConfigError,
    default_config,
    load_config,
    loads_config,
    parse_config,
)
from models.ingest.recipients import (
    RecipientRows,
    idents_of,
    message_hash,
    message_hashes,
    recipient_digest,
)
from models.schema import CLASS_CODE, EVENT_KIND_CODE, NO_CLASS, NO_REASON, REASON_CODE, REASONS
from models.state.snapshot import decode, encode
from tests.conftest import REPO

T0 = 1_800_000_000.0
H = 3600.0
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)

#: two recipient groups: a B2B domain behind Mimecast, and a Gmail address
SCOPES = [
    "domain:corp.example",
    "mx:mimecast",
    "provider:other",
    "domain:gmail.com",
    "mx:google",
    "provider:google",
    "ip:192.0.2.1",
    "ip:192.0.2.2",
    "pool:shared-1",
    "sender:news.example",
]


def addr(who: str) -> str:
    return f"{who}@gmail.com" if who.startswith("g") else f"{who}@corp.example"


def key(who: str) -> bytes:
    return recipient_digest(addr(who))


@dataclass(frozen=True)
class E:
    """One event of a table: time offset (s), recipient, kind, class, reason, message."""

    t: float
    who: str
    kind: str
    cls: str | None = None
    reason: str | None = None
    msg: str | None = None
    kg: bool = False
    ip: int = 1  #: sent from 192.0.2.<ip>


def rows_of(events: list[E]) -> RecipientRows:
    n = len(events)
    keys = np.array([key(e.who) for e in events], dtype="S32") if n else np.zeros(0, "S32")
    grp = np.array([3 if e.who.startswith("g") else 0 for e in events], dtype=np.int32)
    return RecipientRows(
        ts=np.array([T0 + e.t for e in events], dtype=np.float64),
        kind=np.array([EVENT_KIND_CODE[e.kind] for e in events], dtype=np.uint8),
        cls=np.array([CLASS_CODE[e.cls] if e.cls else NO_CLASS for e in events], dtype=np.uint8),
        reason=np.array(
            [REASON_CODE[e.reason] if e.reason else NO_REASON for e in events], dtype=np.uint8
        ),
        ident=idents_of(keys),
        key=keys,
        mid=message_hashes(e.msg for e in events),
        known_good=np.array([e.kg for e in events], dtype=np.bool_),
        scope_keys=list(SCOPES),
        domain_idx=grp,
        mx_idx=grp + 1,
        provider_idx=grp + 2,
        ip_idx=np.array([5 + e.ip for e in events], dtype=np.int32),
        pool_idx=np.full(n, 8, dtype=np.int32),
        sender_idx=np.full(n, 9, dtype=np.int32),
    )


@dataclass
class Inc:
    """An incident as the policy reads it."""

    id: str
    type: str
    scope: str
    opened_at: float
    related: list[str] = field(default_factory=list)


def inc(type_: str, scope: str, t: float, related: list[str] | None = None) -> Inc:
    return Inc(f"{type_}/{scope}/{int(T0 + t)}", type_, scope, T0 + t, related or [])


def bounce(t: float, who: str, reason: str, msg: str, cls: str = "hard", kg: bool = False) -> E:
    return E(t, who, "bounced", cls, reason, msg, kg)


def state_of(sup: Suppressor, who: str) -> RecipientState | None:
    raw = sup.store.get_many(np.asarray([int.from_bytes(key(who)[:8], "little")], np.uint64))[0]
    return None if raw is None else RecipientState.unpack(raw)


def feed(sup: Suppressor, events: list[E], incidents: list[Inc] | None = None) -> list[Any]:
    """Each event in its own call, expiring timers at its time first (as a worker ticking per
    event would)."""
    out: list[Any] = []
    for e in events:
        out += sup.expire(T0 + e.t)
        out += sup.observe(rows_of([e]), incidents)
    return out


def summary(r: RecipientState | None) -> tuple[str, str | None, int, float | None]:
    if r is None:
        return ("none", None, 0, None)
    reason = reason_name(r.reason)
    until = r.until - T0 if r.until and r.state in (SUSPENDED, SUPPRESSED) else None
    return (STATES[r.state], reason, r.count, until)


# ------------------------------------------------------------------------------ the schedule
D = DAY
SCHEDULE_CASES: list[tuple[str, list[E], tuple[str, str | None, int, float | None]]] = [
    (
        "mailboxfull: first hit suspends 1 d",
        [bounce(0, "a", "mailboxfull", "m1", "soft")],
        ("suspended", "mailboxfull", 1, D),
    ),
    (
        "mailboxfull: 1 d, 3 d, 7 d, then suppressed at the 4th",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(2 * D, "a", "mailboxfull", "m2", "soft"),
            bounce(6 * D, "a", "mailboxfull", "m3", "soft"),
            bounce(14 * D, "a", "mailboxfull", "m4", "soft"),
        ],
        ("suppressed", "mailboxfull", 4, None),
    ),
    (
        "mailboxfull: the 3rd hit suspends 7 d",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(2 * D, "a", "mailboxfull", "m2", "soft"),
            bounce(6 * D, "a", "mailboxfull", "m3", "soft"),
        ],
        ("suspended", "mailboxfull", 3, 13 * D),
    ),
    (
        "mailboxfull: the same message again does not count",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(60, "a", "mailboxfull", "m1", "soft"),
        ],
        ("suspended", "mailboxfull", 1, D),
    ),
    (
        "mailboxfull: a hit while suspended escalates from now",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(3600, "a", "mailboxfull", "m2", "soft"),
        ],
        ("suspended", "mailboxfull", 2, 3600 + 3 * D),
    ),
    (
        "userunknown: suppressed at the first hit",
        [bounce(0, "a", "userunknown", "m1")],
        ("suppressed", "userunknown", 1, None),
    ),
    (
        "hostunknown: suppressed at the first hit",
        [bounce(0, "a", "hostunknown", "m1")],
        ("suppressed", "hostunknown", 1, None),
    ),
    (
        "hasmoved (class default hard): suppressed at the first hit",
        [bounce(0, "a", "hasmoved", "m1")],
        ("suppressed", "hasmoved", 1, None),
    ),
    (
        "userunknown, known good: suspended 1 d at the first hit",
        [bounce(0, "a", "userunknown", "m1", kg=True)],
        ("suspended", "userunknown", 1, D),
    ),
    (
        "userunknown, known good: suppressed at a second hit in another message",
        [
            bounce(0, "a", "userunknown", "m1", kg=True),
            bounce(600, "a", "userunknown", "m2", kg=True),
        ],
        ("suppressed", "userunknown", 2, None),
    ),
    (
        "userunknown, known good: a second hit in the same message does not count",
        [
            bounce(0, "a", "userunknown", "m1", kg=True),
            E(1, "a", "rejected", "hard", "userunknown", "m1", True),
        ],
        ("suspended", "userunknown", 1, D),
    ),
    (
        "userunknown without message ids: each hit is a message of its own",
        [
            bounce(0, "a", "userunknown", None, kg=True),  # type: ignore[arg-type]
            bounce(1, "a", "userunknown", None, kg=True),  # type: ignore[arg-type]
        ],
        ("suppressed", "userunknown", 2, None),
    ),
    (
        "suspend (disabled account) escalates 3 d, 14 d, then suppressed",
        [
            bounce(0, "a", "suspend", "m1", "soft"),
            bounce(4 * D, "a", "suspend", "m2", "soft"),
        ],
        ("suspended", "suspend", 2, 18 * D),
    ),
    (
        "suspend: the 3rd hit suppresses",
        [
            bounce(0, "a", "suspend", "m1", "soft"),
            bounce(4 * D, "a", "suspend", "m2", "soft"),
            bounce(19 * D, "a", "suspend", "m3", "soft"),
        ],
        ("suppressed", "suspend", 3, None),
    ),
    (
        "userunknown on a 4xx (class soft): the soft schedule",
        [bounce(0, "a", "userunknown", "m1", "soft")],
        ("suspended", "userunknown", 1, D),
    ),
    (
        "exceedlimit: the message is at fault, never the recipient",
        [bounce(0, "a", "exceedlimit", "m1", "soft")],
        ("none", None, 0, None),
    ),
    *[
        (
            f"class {cls}: never penalises",
            [bounce(0, "a", reason, "m1", cls), bounce(60, "a", reason, "m2", cls)],
            ("none", None, 0, None),
        )
        for cls, reason in (
            ("block", "blocked"),
            ("block", "filtered"),
            ("throttle", "speeding"),
            ("transient", "expired"),
            ("config", "authfailure"),
            ("other", "undefined"),
        )
    ],
    (
        "a bounce without a class: nothing",
        [E(0, "a", "bounced", None, None, "m1")],
        ("none", None, 0, None),
    ),
    (
        "rejected counts like a bounce",
        [E(0, "a", "rejected", "hard", "userunknown", "m1")],
        ("suppressed", "userunknown", 1, None),
    ),
    (
        "complaint: suppressed at once, permanent",
        [E(0, "a", "complained", msg="m1")],
        ("suppressed", "complaint", 1, None),
    ),
    (
        "unsubscribe: suppressed at once, permanent",
        [E(0, "a", "unsubscribed", msg="m1")],
        ("suppressed", "unsubscribe", 1, None),
    ),
    (
        "complaint of a suspended recipient: suppressed",
        [bounce(0, "a", "mailboxfull", "m1", "soft"), E(60, "a", "complained", msg="m2")],
        ("suppressed", "complaint", 1, None),
    ),
    (
        "a delivery in another message resets soft counters (nothing left: no record)",
        [bounce(0, "a", "mailboxfull", "m1", "soft"), E(60, "a", "delivered", msg="m2")],
        ("none", None, 0, None),
    ),
    (
        "a delivery resets the escalation: the next hit suspends 1 d again",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(2 * D, "a", "mailboxfull", "m2", "soft"),
            E(6 * D, "a", "delivered", msg="m3"),
            bounce(7 * D, "a", "mailboxfull", "m4", "soft"),
        ],
        ("suspended", "mailboxfull", 1, 8 * D),
    ),
    (
        "a delivery of the hit's own message (250, then a DSN) resets nothing",
        [bounce(0, "a", "mailboxfull", "m1", "soft"), E(60, "a", "delivered", msg="m1")],
        ("suspended", "mailboxfull", 1, D),
    ),
    (
        "a delivery does not undo a hard suppression",
        [bounce(0, "a", "userunknown", "m1"), E(60, "a", "delivered", msg="m2")],
        ("suppressed", "userunknown", 1, None),
    ),
    (
        "a delivery does not undo a complaint",
        [E(0, "a", "complained", msg="m1"), E(60, "a", "delivered", msg="m2")],
        ("suppressed", "complaint", 1, None),
    ),
    (
        "a delivery resets a pending hard hit (known good)",
        [bounce(0, "a", "userunknown", "m1", kg=True), E(60, "a", "delivered", msg="m2")],
        ("none", None, 0, None),
    ),
    (
        "a delivery of a recipient without state: nothing",
        [E(0, "a", "delivered", msg="m1")],
        ("none", None, 0, None),
    ),
    (
        "expiry: back to active, the count kept for the next escalation",
        [bounce(0, "a", "mailboxfull", "m1", "soft"), E(2 * D, "b", "delivered", msg="x")],
        ("active", "mailboxfull", 1, None),
    ),
    (
        "after expiry the next hit escalates (3 d)",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(5 * D, "a", "mailboxfull", "m2", "soft"),
        ],
        ("suspended", "mailboxfull", 2, 8 * D),
    ),
    (
        "an active record is forgotten forget_after_days after its suspension ended",
        [bounce(0, "a", "mailboxfull", "m1", "soft"), E(32 * D, "b", "delivered", msg="x")],
        ("none", None, 0, None),
    ),
    (
        "another reason starts its own count",
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(2 * D, "a", "suspend", "m2", "soft"),
        ],
        ("suspended", "suspend", 1, 5 * D),
    ),
]


@pytest.mark.parametrize(
    ("events", "want"), [(c[1], c[2]) for c in SCHEDULE_CASES], ids=[c[0] for c in SCHEDULE_CASES]
)
def test_schedule(events: list[E], want: tuple[str, str | None, int, float | None]) -> None:
    sup = Suppressor()
    feed(sup, events)
    assert summary(state_of(sup, "a")) == want


def test_unknown_reason_code_gets_its_class_schedule() -> None:
    """A reason code outside models.schema.REASONS (a newer classifier) and NO_REASON: the
    class's schedule; NO_CLASS: never."""
    for cls, want in (("hard", SUPPRESSED), ("soft", SUSPENDED)):
        for code in (200, NO_REASON):
            sup = Suppressor()
            r = rows_of([bounce(0, "a", "userunknown", "m1", cls)])
            r.reason[:] = code
            sup.observe(r)
            got = state_of(sup, "a")
            assert got is not None and got.state == want and got.reason == code
    sup = Suppressor()
    r = rows_of([bounce(0, "a", "userunknown", "m1")])
    r.cls[:] = NO_CLASS
    assert sup.observe(r) == [] and state_of(sup, "a") is None


def test_configured_variants() -> None:
    # rejected ignored
    sup = Suppressor(parse_config({"suppression": {"count_rejected": False}}))
    feed(sup, [E(0, "a", "rejected", "hard", "userunknown", "m1")])
    assert state_of(sup, "a") is None
    # userunknown suppressed only at the second hit in separate messages
    cfg = parse_config({"classes": {"hard": {"reasons": {"userunknown": {"suppress_after": 2}}}}})
    sup = Suppressor(cfg)
    feed(sup, [bounce(0, "a", "userunknown", "m1"), bounce(60, "a", "userunknown", "m1")])
    assert summary(state_of(sup, "a")) == ("suspended", "userunknown", 1, D)
    feed(sup, [bounce(120, "a", "userunknown", "m2")])
    assert summary(state_of(sup, "a"))[:3] == ("suppressed", "userunknown", 2)
    # unsubscribes ignored, complaints for 365 days
    cfg = parse_config(
        {"unsubscribe": {"action": "ignore"}, "complaint": {"suppressed_days": 365.0}}
    )
    sup = Suppressor(cfg)
    feed(sup, [E(0, "a", "unsubscribed", msg="m1"), E(0, "b", "complained", msg="m1")])
    assert state_of(sup, "a") is None
    rec = state_of(sup, "b")
    assert rec is not None and rec.until == int(T0 + 365 * D)
    ch = sup.expire(T0 + 366 * D)
    assert [(c.cause, c.tombstone) for c in ch] == [("expired", True)]
    assert state_of(sup, "b") is None


# ------------------------------------------------------------------------------ expiry
def test_expire_uses_the_index_not_the_store() -> None:
    class Counting(MemoryStore):
        scans = 0

        def items(self) -> Any:
            Counting.scans += 1
            return super().items()

    store = Counting()
    sup = Suppressor(store=store)
    sup.observe(rows_of([bounce(0, f"r{i}", "mailboxfull", "m1", "soft") for i in range(50)]))
    sup.observe(rows_of([bounce(0, "x", "userunknown", "m1")]))  # permanent: no timer
    reads = store.reads
    assert sup.expire(T0 + 3600) == []
    assert store.reads == reads  # nothing due: nothing read
    ch = sup.expire(T0 + D + 1)
    assert len(ch) == 50 and {c.cause for c in ch} == {"expired"}
    assert {c.to_json()["state"] for c in ch} == {"active"}
    assert all(c.at == float(int(T0 + D)) for c in ch)  # the time the suspension ended
    assert store.reads - reads == 50 and Counting.scans == 0
    # then forgotten: tombstones
    ch = sup.expire(T0 + 40 * D)
    assert len(ch) == 50 and all(c.tombstone and c.cause == "forgotten" for c in ch)
    assert len(store) == 1  # the suppressed one


def test_expiry_happens_at_the_next_event_without_expire() -> None:
    sup = Suppressor()
    sup.observe(rows_of([bounce(0, "a", "mailboxfull", "m1", "soft")]))
    ch = sup.observe(rows_of([bounce(2 * D, "a", "mailboxfull", "m2", "soft")]))
    assert [c.cause for c in ch] == ["expired", "bounce"]
    assert summary(state_of(sup, "a")) == ("suspended", "mailboxfull", 2, 5 * D)


# ------------------------------------------------------------------------------ quarantine
FHB = "false_hard_bounces"


def test_quarantine_while_open_and_release() -> None:
    sup = Suppressor()
    i1 = inc(FHB, "mx:mimecast", 0)
    ch = feed(
        sup,
        [
            bounce(60, "a", "userunknown", "m1"),
            bounce(120, "a", "userunknown", "m2"),
            bounce(60, "g1", "userunknown", "m1"),  # gmail: not held
            bounce(180, "b", "mailboxfull", "m3", "soft"),  # soft: counted as usual
        ],
        [i1],
    )
    a = state_of(sup, "a")
    assert a is not None and a.state == QUARANTINED and a.count == 2 and a.held == 2
    assert summary(state_of(sup, "g1"))[0] == "suppressed"
    assert summary(state_of(sup, "b"))[0] == "suspended"
    rec = [c.to_json() for c in ch if c.key == key("a")][-1]
    assert rec["incident"] == i1.id and rec["state"] == "quarantined"
    assert rec["resume"] == {"state": "active", "reason": None, "count": 0, "until": None}
    assert may_send(rec, T0 + 200) is False
    out = sup.incident_closed(i1, T0 + 2 * H)
    assert [(c.cause, c.key) for c in out] == [("release", key("a"))]
    rec = out[0].to_json()
    assert rec["state"] == "active" and rec["incident"] is None
    assert rec["last_incident"] == i1.id and rec["held"] == 2  # evidence kept
    assert rec["forget_at"] == int(T0 + 2 * H + 30 * D) and not rec["tombstone"]
    # released: a later hard bounce outside any incident suppresses
    feed(sup, [bounce(3 * H, "a", "userunknown", "m9")])
    assert summary(state_of(sup, "a"))[:2] == ("suppressed", "userunknown")


def test_release_returns_to_the_previous_state() -> None:
    sup = Suppressor()
    feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft")])
    i1 = inc("provider_outage", "provider:other", 600)
    feed(sup, [bounce(900, "a", "userunknown", "m2")], [i1])
    a = state_of(sup, "a")
    assert a is not None and a.state == QUARANTINED and a.base_state == SUSPENDED
    sup.incident_closed(i1, T0 + H)
    assert summary(state_of(sup, "a")) == ("suspended", "mailboxfull", 1, D)
    # the resumed suspension still expires through the index
    assert [c.cause for c in sup.expire(T0 + D + 1)] == ["expired"]
    # released after the suspension's end: active
    sup2 = Suppressor()
    feed(sup2, [bounce(0, "a", "mailboxfull", "m1", "soft")])
    feed(sup2, [bounce(900, "a", "userunknown", "m2")], [i1])
    sup2.incident_closed(i1, T0 + 2 * D)
    assert summary(state_of(sup2, "a"))[:3] == ("active", "mailboxfull", 1)


def test_retroactive_quarantine_when_the_incident_opens() -> None:
    sup = Suppressor()
    feed(
        sup,
        [
            bounce(0, "old", "userunknown", "m1"),  # 2 h before: stays suppressed
            bounce(H + 1800, "a", "userunknown", "m2"),  # 30 min before
            bounce(H + 2000, "b", "userunknown", "m3", kg=True),
            bounce(H + 2100, "g1", "userunknown", "m4"),  # another scope
            bounce(H + 2200, "c", "userunknown", "m5"),
            E(H + 2300, "c", "complained", msg="m6"),  # changed since: not undone
        ],
    )
    assert summary(state_of(sup, "a"))[0] == "suppressed"
    i1 = inc(FHB, "domain:corp.example", 2 * H, related=["mx:mimecast"])
    ch = sup.observe(rows_of([]), [i1])
    assert sorted(c.key for c in ch) == sorted([key("a"), key("b")])
    assert all(c.cause == "quarantine" and c.at == T0 + 2 * H for c in ch)
    assert summary(state_of(sup, "old"))[0] == "suppressed"
    assert summary(state_of(sup, "g1"))[0] == "suppressed"
    assert summary(state_of(sup, "c"))[:2] == ("suppressed", "complaint")
    assert sup.observe(rows_of([]), [i1]) == []  # known: nothing twice
    sup.incident_closed(i1.id, T0 + 3 * H)
    assert state_of(sup, "a") is not None and summary(state_of(sup, "a"))[0] == "active"
    assert summary(state_of(sup, "b"))[0] == "active"


def test_lookback_only_for_false_bounces() -> None:
    """A block's or an outage's signal is not the hard bounces: those before it stay."""
    for type_, scope in (
        ("provider_outage", "provider:other"),
        ("block", "ip:192.0.2.1|provider:other"),
    ):
        sup = Suppressor()
        feed(sup, [bounce(0, "a", "userunknown", "m1")])
        assert sup.observe(rows_of([]), [inc(type_, scope, 600)]) == []
        assert summary(state_of(sup, "a"))[0] == "suppressed"
    cfg = parse_config({"quarantine": {"lookback_types": ["provider_outage"]}})
    sup = Suppressor(cfg)
    feed(sup, [bounce(0, "a", "userunknown", "m1")])
    assert [
        c.cause for c in sup.observe(rows_of([]), [inc("provider_outage", "provider:other", 600)])
    ] == ["quarantine"]


def test_two_incidents_hold_one_recipient() -> None:
    sup = Suppressor()
    i1 = inc(FHB, "mx:mimecast", 0)
    i2 = inc("block", "ip:192.0.2.1|provider:other", 10)
    feed(sup, [bounce(60, "a", "userunknown", "m1")], [i1, i2])
    ch = sup.incident_closed(i1, T0 + H)
    assert [c.cause for c in ch] == ["quarantine"] and ch[0].to_json()["incident"] == i2.id
    ch = sup.incident_closed(i2, T0 + 2 * H)
    assert [c.cause for c in ch] == ["release"]
    assert summary(state_of(sup, "a"))[0] == "active"


def test_what_quarantines() -> None:
    cfg = default_config()
    assert quarantine_scopes(cfg, inc("hard_bounce_spike", "campaign:x", 0)) == frozenset()
    assert quarantine_scopes(cfg, inc("block", "ip:192.0.2.1", 0)) == frozenset()
    assert quarantine_scopes(cfg, inc("block", "ip:192.0.2.1|provider:google", 0)) == {
        "ip:192.0.2.1|provider:google"
    }
    assert quarantine_scopes(cfg, inc("block", "campaign:c|provider:google", 0)) == frozenset()
    # related scopes show the same events elsewhere: not held by default
    assert quarantine_scopes(cfg, inc(FHB, "mx:mimecast", 0, ["domain:a.example"])) == {
        "mx:mimecast"
    }
    one_ip = inc("block", "ip:192.0.2.1|provider:google", 0, ["provider:google", "ip:192.0.2.1"])
    assert quarantine_scopes(cfg, one_ip) == {"ip:192.0.2.1|provider:google"}
    assert quarantine_scopes(cfg, inc("provider_outage", "provider:yahoo", 0)) == {"provider:yahoo"}
    wide = parse_config({"quarantine": {"related": True}})
    assert quarantine_scopes(wide, inc(FHB, "mx:m", 0, ["domain:a.example"])) == {
        "mx:m",
        "domain:a.example",
    }
    assert quarantine_scopes(wide, one_ip) == {"ip:192.0.2.1|provider:google", "provider:google"}
    narrow = parse_config({"quarantine": {"combined": False}})
    assert quarantine_scopes(narrow, inc("block", "ip:1|provider:google", 0)) == frozenset()
    # a block of one IP at one provider holds the hard hits of that IP's mail there only
    sup = Suppressor()
    blk = inc("block", "ip:192.0.2.1|provider:other", 0)
    feed(
        sup,
        [
            bounce(60, "a", "userunknown", "m1"),
            E(60, "b", "bounced", "hard", "userunknown", "m2", ip=2),
            bounce(60, "g1", "userunknown", "m3"),
        ],
        [blk],
    )
    assert [summary(state_of(sup, w))[0] for w in ("a", "b", "g1")] == [
        "quarantined",
        "suppressed",
        "suppressed",
    ]
    # a bad-list incident does not hold anything: its bounces suppress
    sup = Suppressor()
    feed(sup, [bounce(60, "a", "userunknown", "m1")], [inc("hard_bounce_spike", "mx:mimecast", 0)])
    assert summary(state_of(sup, "a"))[0] == "suppressed"


def test_sync_incidents_closes_the_missing_ones() -> None:
    sup = Suppressor()
    i1 = inc(FHB, "mx:mimecast", 0)
    feed(sup, [bounce(60, "a", "userunknown", "m1")], [i1])
    assert sup.sync_incidents([i1], T0 + 100) == []
    ch = sup.sync_incidents([], T0 + H)
    assert [c.cause for c in ch] == ["release"]


def test_delivery_while_quarantined_resets_what_it_resumes() -> None:
    sup = Suppressor()
    feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft")])
    i1 = inc(FHB, "mx:mimecast", 10)
    feed(sup, [bounce(60, "a", "userunknown", "m2"), E(120, "a", "delivered", msg="m3")], [i1])
    a = state_of(sup, "a")
    assert a is not None and a.state == QUARANTINED and a.base_state == ACTIVE
    sup.incident_closed(i1, T0 + H)
    assert summary(state_of(sup, "a")) == ("active", None, 0, None)


# ------------------------------------------------------------------------------ state
def test_snapshot_restore_keeps_the_indexes() -> None:
    store = MemoryStore()
    sup = Suppressor(store=store)
    feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft"), bounce(0, "b", "userunknown", "m1")])
    i1 = inc(FHB, "mx:mimecast", 3000)
    feed(sup, [bounce(3100, "c", "userunknown", "m2")], [i1])
    back = Suppressor.restore(decode(encode(sup.snapshot())), store=store)
    assert back.metrics()["timers"] == sup.metrics()["timers"]
    # b (50 min before the opening, retroactively) and c (while open)
    got = back.incident_closed(i1, T0 + H)
    assert sorted((c.cause, c.key) for c in got) == sorted(
        [("release", key("b")), ("release", key("c"))]
    )
    assert [c.key for c in back.expire(T0 + D + 1)] == [key("a")]
    # the recent hard hits too: b (t=0) is quarantined by an incident opening 30 min later
    back2 = Suppressor.restore(decode(encode(sup.snapshot())), store=MemoryStore())
    back2.store.put_many(list(store.items()))
    assert back2.metrics()["recent_hard_hits"] == sup.metrics()["recent_hard_hits"] > 0


def test_rebuild_indexes_from_the_store() -> None:
    store = MemoryStore()
    sup = Suppressor(store=store)
    i1 = inc(FHB, "mx:mimecast", 0)
    feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft")])
    feed(sup, [bounce(60, "b", "userunknown", "m1")], [i1])
    fresh = Suppressor(store=store)
    assert fresh.rebuild_indexes() == 2
    assert [c.key for c in fresh.expire(T0 + D + 1)] == [key("a")]
    ch = fresh.sync_incidents([], T0 + H)  # the incident is no longer open
    assert [(c.cause, c.key) for c in ch] == [("release", key("b"))]


def test_write_through_off_hands_over_the_writes() -> None:
    store = MemoryStore()
    sup = Suppressor(store=store, write_through=False)
    feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft"), E(60, "b", "complained", msg="m")])
    assert len(store) == 0
    feed(sup, [bounce(120, "a", "mailboxfull", "m2", "soft")])  # reads its own pending write
    writes = sup.take_writes()
    assert sup.take_writes() == []
    store.put_many(writes)
    assert summary(state_of(sup, "a"))[:3] == ("suspended", "mailboxfull", 2)
    assert summary(state_of(sup, "b"))[:2] == ("suppressed", "complaint")


def test_manual() -> None:
    sup = Suppressor()
    ch = sup.manual(key("a"), T0)
    assert ch[0].to_json()["reason"] == "manual" and ch[0].to_json()["permanent"]
    feed(sup, [E(60, "a", "delivered", msg="m")])
    assert summary(state_of(sup, "a"))[:2] == ("suppressed", "manual")
    ch = sup.manual(key("a"), T0 + 120, suppress=False)
    assert ch[0].tombstone and state_of(sup, "a") is None


def test_identity_collision_is_skipped() -> None:
    store = MemoryStore()
    sup = Suppressor(store=store)
    feed(sup, [bounce(0, "a", "userunknown", "m1")])
    r = rows_of([bounce(60, "b", "mailboxfull", "m2", "soft")])
    r.ident[:] = idents_of([key("a")])  # b's row claims a's identity
    assert sup.observe(r) == [] and sup.stats.collisions == 1
    assert summary(state_of(sup, "a"))[:2] == ("suppressed", "userunknown")


# ------------------------------------------------------------------------------ the record
def test_record_format() -> None:
    sup = Suppressor()
    ch = feed(sup, [bounce(0, "a", "mailboxfull", "m1", "soft")])
    rec = sup.record(ch[0])
    assert list(rec) == [*RECORD_KEYS, *EXTRA_KEYS]
    assert rec["kind"] == "suppression"
    assert rec["recipient_key"] == hashlib.sha256(b"a@corp.example").hexdigest()
    assert rec["state"] == "suspended" and rec["reason"] == "mailboxfull" and rec["count"] == 1
    assert rec["until"] == int(T0 + D) and rec["permanent"] is False and rec["incident"] is None
    assert rec["at"] == T0 and rec["cause"] == "bounce" and rec["tombstone"] is False
    assert json.loads(json.dumps(rec)) == rec
    assert may_send(rec, T0 + 60) is False and may_send(rec, T0 + D) is True
    ch = feed(sup, [E(60, "a", "delivered", msg="m2")])
    tomb = ch[0].to_json()
    assert tomb["tombstone"] is True and tomb["state"] == "active" and tomb["count"] == 0
    assert ch[0].value is None and may_send(tomb, T0)
    assert state_from_record(tomb) is None
    ch = feed(sup, [bounce(120, "x", "userunknown", "m3")])
    rec = ch[0].to_json()
    assert rec["permanent"] is True and rec["until"] is None and not may_send(rec, T0 + 1e9)
    with pytest.raises(RecordError):
        state_from_record({**rec, "state": "gone"})
    with pytest.raises(RecordError):
        state_from_record({**rec, "recipient_key": "abc"})


def test_records_read_back_to_the_stored_value() -> None:
    """What a worker rebuilding its store from the topic writes is the policy's own value."""
    sup = Suppressor()
    i1 = inc(FHB, "mx:mimecast", 0)
    ch = feed(
        sup,
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(60, "a", "userunknown", "m2"),
            bounce(60, "b", "userunknown", "m3", kg=True),
            E(70, "c", "unsubscribed", msg="m4"),
        ],
        [i1],
    )
    ch += sup.incident_closed(i1, T0 + H)
    ch += sup.expire(T0 + 60 * D)
    assert {c.cause for c in ch} >= {"bounce", "quarantine", "release", "expired", "unsubscribe"}
    for c in ch:
        back = state_from_record(json.loads(json.dumps(c.to_json())))
        assert (back.pack() if back is not None else None) == c.value


_u32 = st.integers(0, 0xFFFF_FFFF)
_u16 = st.integers(0, 0xFFFF)
_codes = st.sampled_from([*range(len(REASONS)), 250, 251, 252, 255])
states = st.builds(
    RecipientState,
    key=st.binary(min_size=32, max_size=32),
    state=st.integers(0, 3),
    reason=_codes,
    count=_u16,
    until=_u32,
    base_state=st.integers(0, 3),
    base_reason=_codes,
    base_count=_u16,
    held=_u16,
    first_seen=_u32,
    last_seen=_u32,
    message=_u32,
    incident=_u32,
)


@SETTINGS
@given(states)
def test_pack_unpack_round_trip(r: RecipientState) -> None:
    raw = r.pack()
    assert len(raw) == RECORD_BYTES <= 64
    assert RecipientState.unpack(raw) == r


def test_unpack_refuses_damage() -> None:
    raw = RecipientState(key=b"k" * 32).pack()
    with pytest.raises(ValueError):
        RecipientState.unpack(raw[:-1])
    with pytest.raises(ValueError):
        RecipientState.unpack(b"\x09" + raw[1:])


# ------------------------------------------------------------------------------ config
def test_shipped_toml_equals_the_defaults() -> None:
    with (REPO / "models/act/data/suppression.toml").open("rb") as fh:
        doc = tomllib.load(fh)
    assert doc == DEFAULTS
    assert load_config(REPO / "models/act/data/suppression.toml") == default_config()


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("[suppression]\nforget_after_days = 0\n", "suppression.forget_after_days"),
        ("[suppression]\nbogus = 1\n", "unknown key"),
        ("[complaint]\naction = 'later'\n", "complaint.action"),
        ("[classes.block]\naction = 'schedule'\n", "never penalise"),
        ("[classes.hard.reasons.nosuch]\nsuppress_after = 1\n", "unknown reason"),
        ("[classes.soft]\nsuspend_days = [1, -2]\n", "classes.soft.suspend_days[1]"),
        ("[classes.hard]\nsuppress_after = 2\nknown_good_suppress_after = 1\n", "at least"),
        ("[classes.hard]\nsuppress_after = 0\nsuspend_days = []\n", "does nothing"),
        ("[quarantine]\ntypes = ['complaint_spike', 'nope']\n", "quarantine.types"),
        ("[quarantine]\nscope_kinds = ['ip']\n", "quarantine.scope_kinds"),
        ("[quarantine]\nlookback_s = -1\n", "quarantine.lookback_s"),
        ("[quarantine]\nlookback_types = ['x']\n", "quarantine.lookback_types"),
        ("[nope]\n", "unknown top-level"),
        ("not toml [", "not valid TOML"),
    ],
)
def test_config_errors(text: str, needle: str) -> None:
    with pytest.raises(SuppressionConfigError, match=r"user\.toml") as ei:
        loads_config(text, "user.toml")
    assert needle in str(ei.value)


def test_config_layers() -> None:
    cfg = loads_config("[classes.soft]\nsuspend_days = [2.0]\nsuppress_after = 2\n")
    s = cfg.schedule("soft", "mailboxfull")
    assert s is not None and s.suspend_days == (1.0, 3.0, 7.0)  # the reason's own table wins
    s = cfg.schedule("soft", "userunknown")
    assert s is not None and s.suspend_days == (2.0,) and s.suppress_after == 2
    assert cfg.schedule("soft", "exceedlimit") is None
    assert cfg.schedule("block", "blocked") is None
    assert isinstance(cfg, SuppressionConfig)
    with pytest.raises(SuppressionConfigError, match="cannot read"):
        load_config(REPO / "no-such-file.toml")


# ------------------------------------------------------------------------------ rows
def test_recipient_rows_helpers_match_the_pipeline() -> None:
    from models.ingest.pipeline import _stable_hashes, recipient_key

    for a in ("Alice@Example.com ", "bob@b.example", "ünï@x.example"):
        assert recipient_digest(a).hex() == recipient_key(a)
    ids = ["m-000000001", "x", "ü-1"]
    assert [message_hash(m) for m in ids] == [h & (2**64 - 1) for h in _stable_hashes(ids)]
    assert message_hash(None) == message_hash("  ") == 0
    k = recipient_digest("a@b.example")
    assert idents_of([k])[0] == int.from_bytes(k[:8], "little")


def test_recipient_rows_concat_take_empty() -> None:
    a = rows_of([bounce(0, "a", "userunknown", "m1"), E(1, "g1", "delivered", msg="m2")])
    b = RecipientRows.concat([a.take(np.array([1])), RecipientRows.empty(), a])
    assert len(b) == 3 and len(RecipientRows.empty()) == 0
    assert [b.scope_key(i, "domain_idx") for i in range(3)] == [
        "domain:gmail.com",
        "domain:corp.example",
        "domain:gmail.com",
    ]
    assert sorted(b.scope_keys) == sorted(SCOPES)  # each name once
    with pytest.raises(TypeError):
        RecipientRows(**{**_fields(a), "ts": a.ts.astype(np.float32)})
    with pytest.raises(ValueError):
        RecipientRows(**{**_fields(a), "mx_idx": np.array([0, 99], dtype=np.int32)})
    with pytest.raises(ValueError):
        RecipientRows(**{**_fields(a), "mid": a.mid[:1]})


def _fields(r: RecipientRows) -> dict[str, Any]:
    return {f: getattr(r, f) for f in r.__dataclass_fields__}


# ------------------------------------------------------------------------------ vectorised
WHO = ["a", "b", "c", "g1", "g2"]
KINDS = ["delivered", "bounced", "rejected", "complained", "unsubscribed"]
REPLIES = [
    ("hard", "userunknown"),
    ("hard", "hostunknown"),
    ("soft", "mailboxfull"),
    ("soft", "suspend"),
    ("soft", "exceedlimit"),
    ("block", "filtered"),
    ("transient", "expired"),
    (None, None),
]


@st.composite
def streams(draw: Any) -> list[E]:
    n = draw(st.integers(1, 60))
    t = 0.0
    out = []
    for _ in range(n):
        t += draw(st.sampled_from([0.0, 1.0, 600.0, 3 * H, D, 5 * D]))
        who = draw(st.sampled_from(WHO))
        kind = draw(st.sampled_from(KINDS))
        cls, reason = (
            draw(st.sampled_from(REPLIES)) if kind in ("bounced", "rejected") else (None, None)
        )
        msg = draw(st.sampled_from(["m1", "m2", "m3", None]))
        out.append(E(t, who, kind, cls, reason, msg, draw(st.booleans())))
    return out


def naive(
    policy: Policy, events: list[E], holders: dict[str, tuple[int, ...]]
) -> tuple[dict[int, bytes], list[tuple[str, bytes | None]]]:
    """Every event through the transition, one at a time, with no filtering at all."""
    recs: dict[int, RecipientState] = {}
    changes: list[tuple[str, bytes | None]] = []
    for e in events:
        k = key(e.who)
        ident = int.from_bytes(k[:8], "little")
        cls = CLASS_CODE[e.cls] if e.cls else NO_CLASS
        hs = holders.get(e.who[0], ()) if cls == CLASS_CODE["hard"] else ()
        ev = Event(
            T0 + e.t,
            EVENT_KIND_CODE[e.kind],
            cls,
            REASON_CODE[e.reason] if e.reason else NO_REASON,
            message_hash(e.msg) & 0xFFFF_FFFF,
            e.kg,
            hs,
        )
        new, trans = step(policy, recs.get(ident), k, ev)
        changes += [(c, None if r is None else r.pack()) for c, r in trans]
        if new is None:
            recs.pop(ident, None)
        else:
            recs[ident] = new
    return {i: r.pack() for i, r in recs.items()}, changes


def _changes(ch: list[SuppressionChange]) -> list[tuple[str, bytes | None]]:
    return [(c.cause, c.value) for c in ch]


@SETTINGS
@given(streams(), st.booleans(), st.integers(1, 7))
def test_vectorised_equals_naive_reference(events: list[E], incident: bool, batches: int) -> None:
    """The filters, the batch lookup and the per-row loop of observe give exactly what the
    transition gives applied to every event alone."""
    opened = [inc(FHB, "mx:mimecast", -1)] if incident else []
    store = MemoryStore()
    sup = Suppressor(store=store)
    got: list[SuppressionChange] = []
    cuts = np.linspace(0, len(events), batches + 1).astype(int)
    for lo, hi in itertools.pairwise(cuts.tolist()):
        got += sup.observe(rows_of(events[lo:hi]), opened)
    got = [c for c in got if c.at >= T0]  # retroactive changes at opening: none here
    holders = {"a": (incident_hash(opened[0].id),)} if incident else {}
    holders = {"a": holders["a"], "b": holders["a"], "c": holders["a"]} if incident else {}
    want_store, want_changes = naive(sup.policy, events, {k[0]: v for k, v in holders.items()})
    assert _changes(got) == want_changes
    assert dict(store.items()) == want_store
    assert sup.stats.examined <= len(events)


@SETTINGS
@given(streams(), st.lists(st.integers(0, 60), max_size=4), st.integers(0, 2**32 - 1))
def test_batching_does_not_change_anything(events: list[E], cut_at: list[int], seed: int) -> None:
    """Incidents opening and closing between calls: one row per call and random batches give
    the same changes and the same store, expiring at the same times."""
    rng = np.random.default_rng(seed)
    i1 = inc(FHB, "mx:mimecast", 0)
    plan: list[tuple[int, str]] = sorted(
        (min(c, len(events)), rng.choice(["open", "close", "expire"])) for c in cut_at
    )

    def run(split: bool) -> tuple[list[tuple[str, bytes | None]], dict[int, bytes]]:
        store = MemoryStore()
        sup = Suppressor(store=store)
        out: list[SuppressionChange] = []
        open_: list[Inc] = []
        pos = 0
        for at, action in [*plan, (len(events), "end")]:
            chunk = events[pos:at]
            parts = [[e] for e in chunk] if split else [chunk]
            for p in parts:
                out += sup.observe(rows_of(p), open_)
            pos = at
            t = T0 + (events[at - 1].t if at else 0)
            if action == "open" and not open_:
                open_ = [i1]
                out += sup.observe(rows_of([]), open_)
            elif action == "close" and open_:
                out += sup.incident_closed(i1, t)
                open_ = []
            elif action == "expire":
                out += sup.expire(t)
        return _changes(out), dict(store.items())

    assert run(True) == run(False)


def test_keys_ending_in_nul_bytes() -> None:
    """numpy's S32 items drop trailing NUL bytes: the policy must use the raw 32 bytes."""
    r = rows_of(
        [
            bounce(0, "a", "mailboxfull", "m1", "soft"),
            bounce(D + 10, "a", "mailboxfull", "m2", "soft"),
        ]
    )
    k = b"\x07" * 24 + b"\x00" * 8
    key_col = np.array([k, k], dtype="S32")
    r = RecipientRows(**{**_fields(r), "key": key_col, "ident": idents_of(key_col)})
    sup = Suppressor()
    ch = sup.observe(r)
    assert [c.cause for c in ch] == ["bounce", "expired", "bounce"] and sup.stats.collisions == 0
    assert ch[-1].key == k and ch[-1].to_json()["count"] == 2


def test_a_timer_fired_by_an_event_happened_at_its_due_time() -> None:
    sup = Suppressor()
    sup.observe(rows_of([bounce(0, "a", "mailboxfull", "m1", "soft")]))
    ch = sup.observe(rows_of([bounce(2 * D, "a", "mailboxfull", "m2", "soft")]))
    assert [(c.cause, c.at) for c in ch] == [
        ("expired", float(int(T0 + D))),
        ("bounce", T0 + 2 * D),
    ]


def test_a_delivery_from_the_pipeline_clears_a_soft_hit() -> None:
    """The pipeline digests only the kinds that can create a record: its delivery rows carry no
    key and must still act on their identity's record (not be taken for a collision)."""
    import orjson

    from streams.worker.decoding import ingest_pipeline

    def ev(kind: str, i: int, t: float, reply: str | None = None) -> bytes:
        e: dict[str, Any] = {
            "event": kind,
            "timestamp": T0 + t,
            "message_id": f"m{i}",
            "recipient": "full@gmail.com",
            "mx_host": "gmail-smtp-in.l.google.com",
        }
        if reply:
            e.update(smtp_code=552, enhanced_code="5.2.2", response=reply)
        return orjson.dumps(e)

    pipe = ingest_pipeline(keep_recipients=True, clock=lambda: T0 + H)
    sup = Suppressor()
    full = "552 5.2.2 The email account that you tried to reach is over quota"
    out = []
    for batch in ([ev("delivered", 1, 0), ev("bounced", 2, 10, full)], [ev("delivered", 3, 60)]):
        assert pipe.feed_many(batch) == []
        pipe.flush()
        out += sup.observe(pipe.take_recipients())
    assert [(c.cause, c.to_json()["state"], c.tombstone) for c in out] == [
        ("bounce", "suspended", False),
        ("delivery", "active", True),
    ]
    assert sup.stats.collisions == 0
