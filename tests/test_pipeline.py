"""models.ingest.pipeline: validation, normalisation, pseudonymisation and per-tick aggregation."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ingest.pipeline import (
    KNOWN_FIELDS,
    Pipeline,
    normalise_domain,
    parse_timestamp,
    recipient_key,
)
from models.schema import CLASS_CODE, COL, COLUMNS, EVENT_KINDS, REASON_CODE
from streams.worker.decoding import CanonicalEvent, typed_loads

BASE = 1_795_305_600.0  # 2026-11-22T00:00:00Z


@dataclass(frozen=True)
class Verdict:
    reason_code: int
    class_code: int


class TableClassifier:
    """A test double: decides by a keyword, so tests control the class of every reply."""

    def __init__(self) -> None:
        self.calls = 0

    def classify_normalized(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        text: str,
        provider: str | None = None,
        operator: str | None = None,
    ) -> Verdict:
        self.calls += 1
        t = text.lower()
        if "unknown" in t:
            return Verdict(REASON_CODE["userunknown"], CLASS_CODE["hard"])
        if "dmarc" in t:
            return Verdict(REASON_CODE["authfailure"], CLASS_CODE["config"])
        if "blocked" in t:
            return Verdict(REASON_CODE["blocked"], CLASS_CODE["block"])
        return Verdict(REASON_CODE["speeding"], CLASS_CODE["throttle"])


def make(classifier: Any = None, **kw: Any) -> Pipeline:
    return Pipeline(classifier or TableClassifier(), normalize=lambda s: s.lower(), **kw)


def ev(kind: str, ts: float = BASE + 1, rcpt: str = "alice@gmail.com", **kw: Any) -> bytes:
    d: dict[str, Any] = {"event": kind, "timestamp": ts, "recipient": rcpt, **kw}
    return json.dumps(d).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{oops", "bad_json"),
        (b'"a string"', "not_an_object"),
        (b"\xff\xfe", "bad_json"),
        (json.dumps({"timestamp": BASE, "recipient": "a@b.com"}).encode(), "missing_field"),
        (json.dumps({"event": "sent", "recipient": "a@b.com"}).encode(), "missing_field"),
        (json.dumps({"event": "sent", "timestamp": BASE}).encode(), "missing_field"),
        (
            json.dumps({"event": 3, "timestamp": BASE, "recipient": "a@b.com"}).encode(),
            "wrong_type",
        ),
        (
            json.dumps({"event": "sent", "timestamp": True, "recipient": "a@b.com"}).encode(),
            "wrong_type",
        ),
        (
            json.dumps({"event": "sent", "timestamp": [1], "recipient": "a@b.com"}).encode(),
            "wrong_type",
        ),
        (ev("sent", tenant=7), "wrong_type"),
        (ev("bounced", smtp_code="550"), "wrong_type"),
        (ev("bounced", smtp_code=True), "wrong_type"),
        (
            json.dumps({"event": "exploded", "timestamp": BASE, "recipient": "a@b.com"}).encode(),
            "unknown_event",
        ),
        (ev("sent", ts="yesterday"), "bad_timestamp"),
        (ev("sent", ts=12.0), "bad_timestamp"),
        (ev("sent", ts=BASE + 10 * 86400), "bad_timestamp"),
        (ev("sent", rcpt="no-domain"), "bad_domain"),
        (ev("sent", rcpt="x@bad domain.com"), "bad_domain"),
        (ev("sent", sender_domain="not a domain"), "bad_domain"),
        (ev("bounced", smtp_code=999), "bad_code"),
        (ev("bounced", enhanced_code="5.1"), "bad_code"),
        (ev("sent", campaign="c" * 5000), "field_too_long"),
        (b" " * ((1 << 20) + 1), "too_large"),
    ],
)
def test_rejections_name_their_reason(raw: bytes, reason: str) -> None:
    p = make(clock=lambda: BASE + 100)
    rej = p.feed(raw)
    assert rej is not None and rej.reason == reason, rej
    assert rej.detail
    assert p.stats.rejected[reason] == 1
    assert p.stats.accepted == 0
    # a good neighbour right after is still accepted and counted
    assert p.feed(ev("sent")) is None
    d = p.flush()
    assert d.totals("domain:gmail.com")[COL["sent"]] == 1


def test_feed_obj_takes_any_mapping() -> None:
    p = make()
    event = {"event": "sent", "timestamp": BASE, "recipient": "a@gmail.com", "x_vendor": 1}
    assert p.feed_obj(MappingProxyType(event)) is None
    assert p.stats.accepted == 1 and p.stats.unknown_fields == 1


def test_unknown_fields_are_counted_not_rejected() -> None:
    p = make()
    assert p.feed(ev("sent", x_vendor="y", other=1)) is None
    assert p.stats.unknown_fields == 2
    assert p.stats.accepted == 1


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (BASE, BASE),
        (int(BASE), BASE),
        ("2026-11-22T00:00:00Z", BASE),
        ("2026-11-22T01:00:00+01:00", BASE),
        ("2026-11-22T00:00:00.500Z", BASE + 0.5),
        ("2026-11-22 00:00:00", BASE),
    ],
)
def test_timestamps(value: object, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("raw", "norm"),
    [
        ("Gmail.COM.", "gmail.com"),
        (" example.org ", "example.org"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("localhost", None),
        ("a..b", None),
        ("-bad.com", None),
    ],
)
def test_domain_normalisation(raw: str, norm: str | None) -> None:
    assert normalise_domain(raw) == norm


def test_recipient_key_is_documented_sha256() -> None:
    assert recipient_key(" Alice@Example.COM ") == hashlib.sha256(b"alice@example.com").hexdigest()


def test_scopes_and_columns() -> None:
    p = make()
    common = {
        "sender_domain": "News.Example.com",
        "sending_ip": "192.0.2.10",
        "pool": "shared-1",
        "tenant": "acme",
        "campaign": "nov",
        "mx_host": "gmail-smtp-in.l.google.com",
    }
    assert p.feed(ev("sent", **common)) is None
    assert p.feed(ev("delivered", **common)) is None
    assert p.feed(ev("deferred", response="421 4.7.28 rate", smtp_code=421, **common)) is None
    assert (
        p.feed(ev("bounced", response="550 5.7.26 DMARC policy", smtp_code=550, **common)) is None
    )
    d = p.flush()
    assert set(d.scopes) == {
        "domain:gmail.com",
        "provider:google",
        "mx:google",
        "ip:192.0.2.10",
        "pool:shared-1",
        "sender:news.example.com",
        "tenant:acme",
        "campaign:nov",
    }
    for scope in d.scopes:
        t = d.totals(scope)
        assert t[COL["sent"]] == 1 and t[COL["delivered"]] == 1
        assert t[COL["deferred"]] == 1 and t[COL["class_throttle"]] == 1
        assert t[COL["bounced"]] == 1 and t[COL["class_config"]] == 1
        assert t[COL["auth_failure"]] == 1
    assert d.watermark == BASE + 1


def test_enhanced_code_taken_from_response_text() -> None:
    seen: list[tuple[int | None, str | None]] = []

    class Spy(TableClassifier):
        def classify_normalized(self, smtp_code, enhanced_code, text, provider=None, operator=None):  # type: ignore[no-untyped-def]
            seen.append((smtp_code, enhanced_code))
            return super().classify_normalized(smtp_code, enhanced_code, text, provider, operator)

    p = make(Spy())
    p.feed(ev("bounced", response="550 5.1.1 <bob@x.org>: user unknown"))
    assert seen == [(None, "5.1.1")]


def test_buckets_split_by_event_time() -> None:
    p = make(bucket_s=60)
    for ts in (BASE + 1, BASE + 59, BASE + 61, BASE + 3600):
        p.feed(ev("sent", ts=ts))
    d = p.flush()
    rows = d.scope_rows("domain:gmail.com")
    got = {
        int(b): int(c)
        for b, c in zip(d.bucket_start[rows], d.counts[rows, COL["sent"]], strict=True)
    }
    assert got == {int(BASE): 2, int(BASE) + 60: 1, int(BASE) + 3600: 1}


def test_known_good_recipients_are_detected() -> None:
    p = make()
    p.feed(ev("delivered", rcpt="good@corp.example"))
    p.flush()  # the delivery is remembered across ticks
    p.feed(ev("bounced", ts=BASE + 90, rcpt="Good@corp.example", response="550 5.1.1 User unknown"))
    p.feed(
        ev("bounced", ts=BASE + 91, rcpt="never@corp.example", response="550 5.1.1 User unknown")
    )
    d = p.flush()
    t = d.totals("domain:corp.example")
    assert t[COL["user_unknown"]] == 2
    assert t[COL["user_unknown_known_good"]] == 1


def test_no_clear_address_is_kept() -> None:
    p = make()
    p.feed(ev("delivered", rcpt="secret.person@gmail.com"))
    p.feed(ev("bounced", rcpt="secret.person@gmail.com", response="550 user unknown"))
    d = p.flush()
    blob = repr(p.stats) + repr(d.scopes) + repr(d.replies) + repr(p._scopes.combos)
    blob += repr(p._replies.texts)
    assert "secret.person" not in blob


def test_replies_are_top_per_scope() -> None:
    p = make()
    for i in range(5):
        p.feed(ev("deferred", ts=BASE + i, response="421 try again later"))
    p.feed(ev("deferred", ts=BASE + 9, response="451 greylisted"))
    for i in range(4):
        p.feed(ev("deferred", ts=BASE + 10 + i, response=f"452 too many {i}"))
    d = p.flush()
    top = [(t, c) for i, t, c in d.replies if d.scopes[i] == "domain:gmail.com"]
    assert top[0] == ("421 try again later", 5)
    assert len(top) == 3


def test_classifier_cache_hits_on_repeated_replies() -> None:
    c = TableClassifier()
    p = make(c)
    for i in range(50):
        p.feed(ev("deferred", ts=BASE + i, response="421 4.7.0 try later", mx_host="mx.gmail.com"))
    assert c.calls == 1


KINDS = st.sampled_from(EVENT_KINDS)
EVENTS = st.lists(
    st.tuples(
        KINDS,
        st.floats(min_value=0, max_value=7200, allow_nan=False),
        st.sampled_from(["gmail.com", "yahoo.com", "corp.example", "b2b.example.de"]),
        st.sampled_from([None, "192.0.2.1", "192.0.2.2"]),
        st.sampled_from([None, "c1", "c2"]),
        st.sampled_from(["421 slow down", "550 user unknown", "554 blocked", "550 DMARC fail"]),
    ),
    max_size=200,
)


@settings(max_examples=60, deadline=None)
@given(EVENTS, st.sampled_from([1, 60, 300]))
def test_totals_equal_inputs_in_every_dimension(
    events: list[tuple[Any, ...]], bucket_s: int
) -> None:
    """Invariant: every accepted event is counted exactly once per scope dimension it has."""
    p = make(bucket_s=bucket_s)
    for kind, dt, dom, ip, camp, resp in events:
        fields: dict[str, Any] = {"response": resp}
        if ip:
            fields["sending_ip"] = ip
        if camp:
            fields["campaign"] = camp
        assert p.feed(ev(kind, ts=BASE + dt, rcpt=f"u@{dom}", **fields)) is None
    d = p.flush()
    want = Counter(k for k, *_ in events)

    def dim_total(prefix: str) -> np.ndarray:
        rows = [i for i, s in enumerate(d.scopes) if s.startswith(prefix)]
        mask = np.isin(d.scope_idx, rows)
        return d.counts[mask].sum(axis=0) if len(d) else np.zeros(len(COLUMNS), dtype=np.int64)

    for prefix in ("domain:", "provider:", "mx:"):
        tot = dim_total(prefix)
        for k in EVENT_KINDS:
            assert tot[COL[k]] == want.get(k, 0)
    ip_tot = dim_total("ip:")
    assert ip_tot[COL["sent"]] == sum(1 for k, _, _, ip, *_ in events if k == "sent" and ip)
    # every bucket start is aligned and every count is non-negative
    assert np.all(d.bucket_start % bucket_s == 0)
    assert np.all(d.counts >= 0)
    # flushing again yields nothing new
    assert len(p.flush()) == 0


def test_with_the_real_classifier() -> None:
    """The default classifier is wired in: a Gmail rate limit is throttle, user unknown is hard."""
    p = Pipeline()
    p.feed(
        ev(
            "deferred",
            mx_host="gmail-smtp-in.l.google.com",
            smtp_code=421,
            response="421-4.7.28 Our system has detected an unusual rate of unsolicited mail "
            "originating from your IP address. To protect our users from spam, mail sent from "
            "your IP address has been temporarily rate limited. gsmtp",
        )
    )
    p.feed(ev("bounced", smtp_code=550, response="550 5.1.1 <alice@gmail.com>: user unknown"))
    d = p.flush()
    t = d.totals("provider:google")
    assert t[COL["class_throttle"]] == 1
    assert t[COL["class_hard"]] == 1 and t[COL["user_unknown"]] == 1
    assert all("alice@" not in text for _, text, _ in d.replies)


def test_classify_normalized_equals_classify_on_the_corpus() -> None:
    """The pipeline's single-normalisation path decides exactly like Classifier.classify."""
    from pathlib import Path

    from models.classify.classifier import Classifier, normalize_reply

    c1, c2 = Classifier(), Classifier()
    n = 0
    for f in sorted((Path(__file__).parent / "data" / "replies").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            r = json.loads(line)
            args = (r.get("smtp_code"), r.get("enhanced_code"))
            text, prov = r["response"], r.get("provider")
            assert c1.classify(*args, text, prov) == c2.classify_normalized(
                *args, normalize_reply(text), prov
            ), text
            n += 1
    assert n >= 250


# ------------------------------------------------------- batch path == event-by-event path

_GOOD = [
    {"event": "sent", "recipient": "a@gmail.com", "campaign": "c1", "sending_ip": "192.0.2.1"},
    {"event": "delivered", "recipient": "A@Gmail.com ", "mx_host": "gmail-smtp-in.l.google.com"},
    {"event": "delivered", "recipient_domain": "corp.example", "tenant": "t1"},
    {"event": "bounced", "recipient": "b@yahoo.com", "smtp_code": 550, "response": "user unknown"},
    {"event": "deferred", "recipient": "c@x.example", "response": "421 4.7.0 blocked, try later"},
    {
        "event": "rejected",
        "recipient": "d@x.example",
        "enhanced_code": "5.7.26",
        "response": "DMARC",
    },
    {"event": "complained", "recipient": "e@gmail.com", "feedback_type": "abuse", "pool": "p1"},
    {"event": "opened", "recipient": "f@b2b.example.de", "sender_domain": "news.example.com"},
    {"event": "delivered", "recipient": "g@gmail.com", "x_vendor": 1, "other": [1, 2]},
]
_BAD = [
    {"event": 3},
    {"event": "exploded"},
    {"timestamp": BASE},
    {"event": "sent", "timestamp": True},
    {"event": "sent", "timestamp": [1]},
    {"event": "sent", "timestamp": None},
    {"event": "sent", "timestamp": "yesterday"},
    {"event": "sent", "timestamp": 12.0},
    {"event": "sent", "timestamp": 10**400},
    {"event": "sent", "timestamp": float("inf")},
    {"event": "sent", "timestamp": float("nan")},
    {"event": "sent", "timestamp": BASE + 30 * 86400},
    {"event": "sent", "tenant": 7},
    {"event": "sent", "campaign": ["a"]},
    {"event": "sent", "campaign": "c" * 5000},
    {"event": "bounced", "smtp_code": "550"},
    {"event": "bounced", "smtp_code": True},
    {"event": "bounced", "smtp_code": 0},
    {"event": "bounced", "smtp_code": 999},
    {"event": "bounced", "smtp_code": 550.0},
    {"event": "bounced", "enhanced_code": "5.1"},
    {"event": "bounced", "enhanced_code": ""},
    {"event": "bounced", "enhanced_code": 5},
    {"event": "bounced", "response": "x" * 9000},
    {"event": "sent", "message_id": {"a": 1}},
    {"event": "sent", "recipient": None},
    {"event": "sent", "recipient": "no-domain"},
    {"event": "sent", "recipient": "x@bad domain.com"},
    {"event": "sent", "sender_domain": "not a domain"},
    {"event": "sent", "recipient_domain": 5},
    {"event": "sent", "recipient_domain": ""},
    {"event": "sent", "mx_host": {"a": 1}, "response": "x" * 9000},
]
_RAW_BAD = [b"{oops", b'"a string"', b"[1, 2]", b"\xff\xfe", b"", b"   ", b" " * ((1 << 20) + 1)]


@st.composite
def _messages(draw: st.DrawFn) -> list[bytes]:
    out = []
    for _ in range(draw(st.integers(0, 60))):
        pick = draw(st.integers(0, 5))
        ts = BASE + draw(st.floats(0, 3600, allow_nan=False))
        if pick == 0:
            out.append(draw(st.sampled_from(_RAW_BAD)))
            continue
        base = dict(draw(st.sampled_from(_BAD if pick == 1 else _GOOD)))
        if "timestamp" not in base and draw(st.booleans()):
            base["timestamp"] = ts
        elif "timestamp" not in base:
            base["timestamp"] = draw(
                st.sampled_from([int(ts), "2026-11-22T00:10:00Z", "2026-11-22 00:20:00"])
            )
        if "recipient" not in base and "recipient_domain" not in base and draw(st.booleans()):
            base["recipient"] = f"u{draw(st.integers(0, 5))}@gmail.com"
        if pick > 1 and draw(st.booleans()):
            base["response"] = f"421 4.7.0 try later [{draw(st.integers(0, 3))}]"
        out.append(json.dumps(base).encode())
    return out


def _deltas_equal(a: Any, b: Any) -> None:
    assert a.scopes == b.scopes
    assert np.array_equal(a.scope_idx, b.scope_idx)
    assert np.array_equal(a.bucket_start, b.bucket_start)
    assert np.array_equal(a.counts, b.counts)
    assert a.replies == b.replies
    assert a.watermark == b.watermark


@pytest.mark.parametrize("typed", [False, True], ids=["dict", "typed"])
@pytest.mark.parametrize("bad", _BAD, ids=lambda b: json.dumps(b)[:40])
@pytest.mark.parametrize("with_recipient", [True, False])
def test_feed_many_rejects_each_bad_event_like_feed(
    bad: dict[str, Any], with_recipient: bool, typed: bool
) -> None:
    """Every bad event, otherwise complete, between good ones: the same verdicts both ways."""
    ev_ = {"timestamp": BASE + 5, **({"recipient": "z@gmail.com"} if with_recipient else {}), **bad}
    # the typed variant leaves out the event with vendor fields, which the strict decoder
    # refuses: otherwise every chunk would take the general path
    goods = [g for g in _GOOD if not typed or KNOWN_FIELDS.issuperset(g)]
    msgs = [json.dumps({**g, "timestamp": BASE + i}).encode() for i, g in enumerate(goods)]
    msgs.insert(3, json.dumps(ev_).encode())
    one = make(clock=lambda: BASE + 7200)
    many = make(clock=lambda: BASE + 7200, typed_loads=typed_loads() if typed else None)
    want = [(i, r) for i, m in enumerate(msgs) if (r := one.feed(m)) is not None]
    assert [i for i, _ in want] == [3]  # the bad one, and only it
    assert many.feed_many(msgs) == want
    assert many.stats == one.stats
    _deltas_equal(many.flush(), one.flush())


@settings(max_examples=200, deadline=None)
@given(
    _messages(),
    st.integers(1, 40),
    st.sampled_from([json.loads, orjson.loads]),
    st.booleans(),
)
def test_feed_many_equals_feed_one_by_one(
    msgs: list[bytes], batch: int, loads: Any, typed: bool
) -> None:
    """Same rejections (index, reason, detail), statistics, watermark and Deltas, with and
    without the strict typed decoder of streams/worker/decoding.py."""
    one = make(loads=loads, clock=lambda: BASE + 7200)
    many = make(
        loads=loads, clock=lambda: BASE + 7200, typed_loads=typed_loads() if typed else None
    )
    want = [(i, r) for i, m in enumerate(msgs) if (r := one.feed(m)) is not None]
    got = []
    for s in range(0, len(msgs), batch):
        got += [(s + i, r) for i, r in many.feed_many(msgs[s : s + batch])]
    assert got == want
    assert many.stats == one.stats
    assert many.watermark == one.watermark
    assert many.pending() == one.pending()
    assert list(many.pending_timestamps()) == list(one.pending_timestamps())
    _deltas_equal(many.flush(), one.flush())


@settings(max_examples=100, deadline=None)
@given(_messages(), st.data())
def test_partial_flush_equals_flushing_at_that_event(
    msgs: list[bytes], data: st.DataObject
) -> None:
    """flush(upto=k) after a batch == flushing right after the k-th accepted event."""
    ref = make(clock=lambda: BASE + 7200)
    batched = make(clock=lambda: BASE + 7200)
    batched.feed_many(msgs)
    k = data.draw(st.integers(0, batched.pending()))
    i = 0
    while ref.pending() < k:
        ref.feed(msgs[i])
        i += 1
    head = ref.flush()
    for m in msgs[i:]:
        ref.feed(m)
    assert list(batched.pending_timestamps(k)) == list(ref.pending_timestamps())
    _deltas_equal(batched.flush(upto=k), head)
    _deltas_equal(batched.flush(), ref.flush())


def test_typed_decoder_covers_exactly_the_known_fields() -> None:
    assert set(CanonicalEvent.__struct_fields__) == KNOWN_FIELDS


def test_typed_path_is_taken_for_clean_chunks_and_rests_after_refusals() -> None:
    calls = 0
    strict = typed_loads()

    def counting(raw: bytes) -> Any:
        nonlocal calls
        calls += 1
        return strict(raw)

    p = make(typed_loads=counting)
    clean = [ev("delivered", ts=BASE + i, rcpt=f"u{i}@gmail.com") for i in range(10)]
    assert p.feed_many(clean) == []
    assert calls == 10 and p.stats.accepted == 10
    vendor = [ev("sent", ts=BASE + 20, x_vendor=1), *clean]  # refused by the strict decoder
    for _ in range(3):
        assert p.feed_many(vendor) == []
    assert p.stats.unknown_fields == 3  # counted by the general path
    calls = 0
    for _ in range(64):  # resting: the strict decoder is not asked
        p.feed_many(clean)
    assert calls == 0
    p.feed_many(clean)
    assert calls == 10
    assert p.stats.accepted == 10 + 3 * 11 + 65 * 10
