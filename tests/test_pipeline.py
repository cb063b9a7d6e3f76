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
    """A test double: decides by a keyword, so tests control the class of every reply; the
    reply context as models.classify does for its two main rules (an expired action, a user
    unknown after DATA)."""

    def __init__(self) -> None:
        self.calls = 0

    def classify_normalized(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        text: str,
        provider: str | None = None,
        operator: str | None = None,
        *,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> Verdict:
        self.calls += 1
        t = text.lower()
        if dsn_action == "expired":
            return Verdict(REASON_CODE["expired"], CLASS_CODE["transient"])
        if "unknown" in t and smtp_command in ("DATA", "END-OF-DATA"):
            return Verdict(REASON_CODE["filtered"], CLASS_CODE["block"])
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
        (ev("bounced", smtp_code="55O"), "wrong_type"),
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
        ("2026-11-22 00:00:00Z", BASE),
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
        # each sending dimension at the provider (models/schema.py COMBINED_KINDS)
        "ip:192.0.2.10|provider:google",
        "pool:shared-1|provider:google",
        "sender:news.example.com|provider:google",
        "tenant:acme|provider:google",
        "campaign:nov|provider:google",
    }
    for scope in d.scopes:
        t = d.totals(scope)
        assert t[COL["sent"]] == 1 and t[COL["delivered"]] == 1
        assert t[COL["deferred"]] == 1 and t[COL["class_throttle"]] == 1
        assert t[COL["bounced"]] == 1 and t[COL["class_config"]] == 1
        assert t[COL["auth_failure"]] == 1
    assert d.watermark == BASE + 1
    # the IP and the pool it sent in (Deltas.members), for attribution
    assert d.members == [("ip:192.0.2.10", "pool:shared-1")]


def test_a_bar_inside_a_value_does_not_make_a_combined_scope() -> None:
    """``|`` joins the halves of a combined scope, so inside a pool, tenant or campaign value
    it is written ``¦`` in the scope's name (docs/events.md, "Scopes")."""
    p = make()
    fields = {"sending_ip": "192.0.2.10", "pool": "a|b", "campaign": "Sale | Dec"}
    assert p.feed(ev("delivered", **fields)) is None
    d = p.flush()
    assert {
        "pool:a\u00a6b",
        "campaign:Sale \u00a6 Dec",
        "campaign:Sale \u00a6 Dec|provider:google",
    } <= set(d.scopes)
    assert not [s for s in d.scopes if s.count("|") > 1 or ("|" in s and "|provider:" not in s)]
    assert d.members == [("ip:192.0.2.10", "pool:a\u00a6b")]


def test_members_are_the_distinct_ip_pool_pairs_of_the_tick() -> None:
    """An IP that moved pools within the tick reports both pairs; an event without a pool, or
    without an IP, reports none."""
    p = make()
    for ip, pool in [
        ("192.0.2.1", "a"),
        ("192.0.2.1", "a"),
        ("192.0.2.2", "a"),
        ("192.0.2.3", "b"),
        ("192.0.2.3", "c"),
        ("192.0.2.4", None),
        (None, "d"),
    ]:
        fields = {k: v for k, v in (("sending_ip", ip), ("pool", pool)) if v is not None}
        assert p.feed(ev("delivered", **fields)) is None
    d = p.flush()
    assert sorted(d.members) == [
        ("ip:192.0.2.1", "pool:a"),
        ("ip:192.0.2.2", "pool:a"),
        ("ip:192.0.2.3", "pool:b"),
        ("ip:192.0.2.3", "pool:c"),
    ]
    assert p.flush().members == []


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


def test_combined_scopes_have_their_top_replies() -> None:
    """An incident on one IP at one provider shows what that provider answered that IP."""
    p = make()
    for i in range(3):
        p.feed(ev("deferred", ts=BASE + i, response="421 rate limited", sending_ip="192.0.2.7"))
    p.feed(ev("deferred", ts=BASE + 5, response="451 other ip", sending_ip="192.0.2.8"))
    p.feed(
        ev(
            "deferred",
            ts=BASE + 6,
            rcpt="x@yahoo.com",
            response="421 yahoo",
            sending_ip="192.0.2.7",
        )
    )
    d = p.flush()
    by_scope: dict[str, list[tuple[str, int]]] = {}
    for i, t, c in d.replies:
        by_scope.setdefault(d.scopes[i], []).append((t, c))
    assert by_scope["ip:192.0.2.7|provider:google"] == [("421 rate limited", 3)]
    assert by_scope["ip:192.0.2.8|provider:google"] == [("451 other ip", 1)]
    assert by_scope["ip:192.0.2.7|provider:yahoo"] == [("421 yahoo", 1)]
    assert sorted(by_scope["ip:192.0.2.7"]) == [("421 rate limited", 3), ("421 yahoo", 1)]


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

    def dim_total(prefix: str, combined: bool = False) -> np.ndarray:
        rows = [
            i for i, s in enumerate(d.scopes) if s.startswith(prefix) and ("|" in s) == combined
        ]
        mask = np.isin(d.scope_idx, rows)
        return d.counts[mask].sum(axis=0) if len(d) else np.zeros(len(COLUMNS), dtype=np.int64)

    for prefix in ("domain:", "provider:", "mx:"):
        tot = dim_total(prefix)
        for k in EVENT_KINDS:
            assert tot[COL[k]] == want.get(k, 0)
    ip_tot = dim_total("ip:")
    assert ip_tot[COL["sent"]] == sum(1 for k, _, _, ip, *_ in events if k == "sent" and ip)
    # the combined scopes split the same events by provider: same totals (every event here
    # has a provider)
    for prefix in ("ip:", "campaign:"):
        np.testing.assert_array_equal(dim_total(prefix, combined=True), dim_total(prefix))
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
    # blank optional fields are absent; digit-string codes are codes; recipient's domain wins
    {"event": "bounced", "recipient": "h@gmail.com", "smtp_code": "451", "enhanced_code": ""},
    {"event": "sent", "recipient": "i@gmail.com", "pool": " ", "tenant": "", "campaign": "\t"},
    {"event": "sent", "recipient": "j@gmail.com", "recipient_domain": "", "message_id": " "},
    {"event": "sent", "recipient": "k@Gmail.com", "recipient_domain": "yahoo.com"},
    {"event": "deferred", "recipient_domain": "corp.example", "recipient": "", "smtp_code": ""},
    # the known-good memory: a delivery, its own DSN, another message's bounce
    {"event": "delivered", "recipient": "kg@corp.example", "message_id": "m-kg1"},
    {
        "event": "bounced",
        "recipient": "kg@corp.example",
        "message_id": "m-kg1",
        "response": "550 5.1.1 unknown",
    },
    {
        "event": "bounced",
        "recipient": "kg@corp.example",
        "message_id": "m-kg2",
        "response": "550 5.1.1 unknown",
    },
    # the reply context: canonical spellings; not recognised is ignored and counted
    {
        "event": "bounced",
        "recipient": "l@corp.example",
        "response": "unknown",
        "smtp_command": "DATA",
    },
    {
        "event": "bounced",
        "recipient": "l@corp.example",
        "response": "unknown",
        "smtp_command": "rcpt to",
        "dsn_action": "Failed",
    },
    {"event": "deferred", "recipient": "m@gmail.com", "response": "x", "dsn_action": "EXPIRED"},
    {"event": "bounced", "recipient": "n@gmail.com", "smtp_command": "STARTTLS", "dsn_action": ""},
    {"event": "delivered", "recipient": "n@gmail.com", "smtp_command": " ", "dsn_action": "nope"},
    {
        "event": "bounced",
        "recipient": "o@gmail.com",
        "response": "unknown",
        "x_vendor": 2,  # with the context of a wrong JSON type: the general path only
        "smtp_command": ["DATA"],
        "dsn_action": 4.5,
    },
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
    {"event": "bounced", "smtp_code": "55O"},
    {"event": "bounced", "smtp_code": " 451 "},
    {"event": "bounced", "smtp_code": "999"},
    {"event": "bounced", "smtp_code": True},
    {"event": "bounced", "smtp_code": 0},
    {"event": "bounced", "smtp_code": 999},
    {"event": "bounced", "smtp_code": 550.0},
    {"event": "bounced", "enhanced_code": "5.1"},
    {"event": "bounced", "enhanced_code": "5.1.1\n"},
    {"event": "bounced", "enhanced_code": "5.\u0661.1"},
    {"event": "bounced", "enhanced_code": 5},
    {"event": "bounced", "response": "x" * 9000},
    {"event": "sent", "message_id": {"a": 1}},
    {"event": "sent", "recipient": None},
    {"event": "sent", "recipient": "no-domain"},
    {"event": "sent", "recipient": "x@bad domain.com"},
    {"event": "sent", "sender_domain": "not a domain"},
    {"event": "sent", "recipient_domain": 5},
    {"event": "sent", "recipient": " ", "recipient_domain": ""},
    {"event": "", "recipient": "a@gmail.com"},
    {"event": "sent", "timestamp": ""},
    {"event": "sent", "timestamp": "2026-11-22 00:20:00"},
    {"event": "sent", "timestamp": "1795305600"},
    {"event": "sent", "recipient": "x@bad domain.com", "recipient_domain": "gmail.com"},
    {"event": "sent", "mx_host": {"a": 1}, "response": "x" * 9000},
    {"event": "bounced", "smtp_code": 0, "smtp_command": "nope", "dsn_action": "expired"},
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
                st.sampled_from(
                    [
                        int(ts),
                        "2026-11-22T00:10:00Z",
                        "2026-11-22 00:20:00.5+01:00",
                        "2026-11-22t00:30:00z",
                        "2026-11-22T00:59:60Z",
                        "2026-11-22 00:20:00",  # no offset: rejected
                    ]
                )
            )
        if "recipient" not in base and "recipient_domain" not in base and draw(st.booleans()):
            base["recipient"] = f"u{draw(st.integers(0, 5))}@gmail.com"
        if pick > 1 and draw(st.booleans()):
            base["response"] = f"421 4.7.0 try later [{draw(st.integers(0, 3))}]"
        if pick > 1 and "message_id" not in base and draw(st.booleans()):
            base["message_id"] = draw(st.sampled_from(["m-1", "m-2", "m-3", "", " "]))
        out.append(json.dumps(base).encode())
        if out and draw(st.integers(0, 4)) == 0:  # a producer's redelivery of a line
            out.append(draw(st.sampled_from(out)))
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


# ------------------------------------------------------------ the input contract, rule by rule


def _both_ways(msgs: list[bytes], **kw: Any) -> tuple[Pipeline, list[tuple[int, Any]]]:
    """Feed ``msgs`` one at a time and as one batch (with the strict typed decoder); both must
    agree. Returns the one-at-a-time pipeline (not flushed) and its rejections."""
    one = make(clock=lambda: BASE + 7200, **kw)
    many = make(clock=lambda: BASE + 7200, typed_loads=typed_loads(), **kw)
    want = [(i, r) for i, m in enumerate(msgs) if (r := one.feed(m)) is not None]
    assert many.feed_many(msgs) == want
    assert many.stats == one.stats
    probe = make(clock=lambda: BASE + 7200, **kw)
    probe.feed_many(msgs)
    _deltas_equal(many.flush(), probe.flush())
    return one, want


def _raw(**fields: Any) -> bytes:
    return json.dumps({"timestamp": BASE + 1, **fields}).encode()


# rule 1: a blank optional string is exactly an absent field
_BLANKS = ["", " ", "\t\n", "\u3000"]


@pytest.mark.parametrize("blank", _BLANKS, ids=repr)
@pytest.mark.parametrize(
    ("field", "base"),
    [
        ("message_id", {"event": "sent", "recipient": "a@gmail.com"}),
        ("recipient_domain", {"event": "sent", "recipient": "a@gmail.com"}),
        ("recipient", {"event": "sent", "recipient_domain": "gmail.com"}),
        ("sender_domain", {"event": "sent", "recipient": "a@gmail.com"}),
        ("sending_ip", {"event": "sent", "recipient": "a@gmail.com"}),
        ("pool", {"event": "sent", "recipient": "a@gmail.com"}),
        ("tenant", {"event": "sent", "recipient": "a@gmail.com"}),
        ("campaign", {"event": "sent", "recipient": "a@gmail.com"}),
        ("mx_host", {"event": "sent", "recipient": "a@gmail.com"}),
        ("smtp_code", {"event": "bounced", "recipient": "a@gmail.com", "response": "unknown"}),
        ("enhanced_code", {"event": "bounced", "recipient": "a@gmail.com", "response": "x"}),
        (
            "enhanced_code",  # then taken from the reply text, as when absent
            {"event": "bounced", "recipient": "a@gmail.com", "response": "550 5.1.1 unknown"},
        ),
        ("response", {"event": "deferred", "recipient": "a@gmail.com", "smtp_code": 451}),
        ("feedback_type", {"event": "complained", "recipient": "a@gmail.com"}),
    ],
)
def test_a_blank_optional_field_is_an_absent_one(
    field: str, base: dict[str, Any], blank: str
) -> None:
    with_blank, _ = _both_ways([_raw(**base, **{field: blank})])
    without, _ = _both_ways([_raw(**base)])
    assert with_blank.stats == without.stats
    assert with_blank.stats.accepted == 1
    a, b = with_blank.flush(), without.flush()
    _deltas_equal(a, b)
    assert all(s.partition(":")[2] for s in a.scopes)  # no "tenant:", "pool:", ...


def test_whitespace_tenant_pool_campaign_make_no_scope() -> None:
    p, rej = _both_ways(
        [_raw(event="sent", recipient="a@gmail.com", tenant="  ", pool="\t", campaign=" \n ")]
    )
    assert not rej
    scopes = set(p.flush().scopes)
    assert scopes == {"domain:gmail.com", "provider:google", "mx:google"}


def test_blank_long_strings_are_absent_not_too_long() -> None:
    p, rej = _both_ways(
        [_raw(event="sent", recipient="a@gmail.com", campaign=" " * 5000, response=" " * 9000)]
    )
    assert not rej and p.stats.accepted == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"event": "", "recipient": "a@gmail.com"}, "missing_field"),
        ({"event": "  ", "recipient": "a@gmail.com"}, "missing_field"),
        ({"event": "sent", "recipient": "a@gmail.com", "timestamp": ""}, "missing_field"),
        ({"event": "sent", "recipient": "a@gmail.com", "timestamp": " "}, "missing_field"),
        ({"event": "sent", "recipient": ""}, "missing_field"),
        ({"event": "sent", "recipient": " ", "recipient_domain": "\t"}, "missing_field"),
        ({"event": "sent", "recipient_domain": ""}, "missing_field"),
    ],
)
def test_required_fields_stay_required_when_blank(fields: dict[str, Any], reason: str) -> None:
    _, rej = _both_ways([_raw(**fields)])
    assert [r.reason for _, r in rej] == [reason]


# rule 1: recipient_domain and recipient
@pytest.mark.parametrize(
    ("recipient", "rdom", "scope", "mismatch"),
    [
        ("a@gmail.com", "gmail.com", "domain:gmail.com", 0),
        ("a@Gmail.COM", "gmail.com.", "domain:gmail.com", 0),
        (" a@gmail.com ", "GMAIL.com", "domain:gmail.com", 0),
        ("a@bücher.de", "xn--bcher-kva.de", "domain:xn--bcher-kva.de", 0),
        ("a@gmail.com", "yahoo.com", "domain:gmail.com", 1),  # the recipient's wins
        ("a@gmail.com", "not a domain", "domain:gmail.com", 1),
        ("a@x@gmail.com", "x@gmail.com", "domain:gmail.com", 1),
        ("postmaster", "corp.example", "domain:corp.example", 0),  # no @: the field
        ("", "corp.example", "domain:corp.example", 0),
        ("a@gmail.com", "", "domain:gmail.com", 0),
    ],
)
def test_the_recipient_domain_is_the_recipients_own(
    recipient: str, rdom: str, scope: str, mismatch: int
) -> None:
    p, rej = _both_ways([_raw(event="sent", recipient=recipient, recipient_domain=rdom)])
    assert not rej
    assert p.stats.domain_mismatch == mismatch
    d = p.flush()
    assert [s for s in d.scopes if s.startswith("domain:")] == [scope]


def test_a_recipient_with_a_bad_domain_is_rejected_even_with_recipient_domain() -> None:
    _, rej = _both_ways(
        [_raw(event="sent", recipient="x@bad domain.com", recipient_domain="a.com")]
    )
    assert [r.reason for _, r in rej] == ["bad_domain"]


def test_a_blank_recipient_is_not_hashed() -> None:
    p = make()
    assert p.feed(_raw(event="delivered", recipient="  ", recipient_domain="corp.example")) is None
    assert p._cols.rkey == [0]


# rule 2: smtp_code as a digit string
@pytest.mark.parametrize(
    ("code", "reason", "seen"),
    [
        (451, None, 451),
        ("451", None, 451),
        ("250", None, 250),
        ("", None, None),
        ("  ", None, None),
        ("999", "bad_code", None),
        ("099", "bad_code", None),
        (" 451 ", "wrong_type", None),
        ("451\n", "wrong_type", None),
        ("45", "wrong_type", None),
        ("4510", "wrong_type", None),
        ("4.5", "wrong_type", None),
        ("\u0664\u0665\u0661", "wrong_type", None),  # Arabic-Indic digits
        ("abc", "wrong_type", None),
        (451.0, "wrong_type", None),
        (True, "wrong_type", None),
    ],
    ids=repr,
)
def test_smtp_code_integer_or_three_digits(code: Any, reason: str | None, seen: Any) -> None:
    got: list[Any] = []

    class Spy(TableClassifier):
        def classify_normalized(self, smtp_code, enhanced_code, text, provider=None, operator=None):  # type: ignore[no-untyped-def]
            got.append(smtp_code)
            return super().classify_normalized(smtp_code, enhanced_code, text, provider, operator)

    msg = _raw(event="deferred", recipient="a@gmail.com", smtp_code=code, response="try later")
    _, rej = _both_ways([msg])
    assert [r.reason for _, r in rej] == ([reason] if reason else [])
    p = make(Spy())
    p.feed(msg)
    assert got == ([] if reason else [seen])


# rule 3: timestamps
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11-22T00:00:00Z", BASE),
        ("2026-11-22t00:00:00z", BASE),
        ("2026-11-22 00:00:00Z", BASE),  # RFC 3339 section 5.6, by agreement
        ("2026-11-22T00:00:00.25Z", BASE + 0.25),
        ("2026-11-22T00:00:00.123456789Z", BASE + 0.123456),
        ("2026-11-22T01:00:00+01:00", BASE),
        ("2026-11-21T19:00:00-05:00", BASE),
        ("2026-11-22T00:00:00-00:00", BASE),
        ("2026-11-21T23:59:60Z", BASE - 1 + 0.999999),  # a leap second
        ("2026-11-21T23:59:60.5Z", BASE - 1 + 0.999999),
        (BASE, BASE),
        (int(BASE), BASE),
    ],
)
def test_rfc3339_timestamps_accepted(value: Any, expected: float) -> None:
    assert parse_timestamp(value) == pytest.approx(expected, abs=1e-6)
    p, rej = _both_ways([_raw(event="sent", recipient="a@gmail.com", timestamp=value)])
    assert not rej
    assert p.pending_timestamps()[0] == pytest.approx(expected, abs=1e-6)


@pytest.mark.parametrize(
    "value",
    [
        "2026-11-22",  # a date alone
        "20261122T000000Z",  # ISO 8601 basic format
        "2026-W47-7T00:00:00Z",  # an ISO week date
        "2026-326T00:00:00Z",  # an ordinal date
        "2026-11-22T00:00:00",  # no offset: ambiguous
        "2026-11-22 00:00:00",
        "2026-11-22T00:00Z",  # no seconds
        "2026-11-22T00:00:00+0100",  # offset without colon
        "2026-11-22T00:00:00+01",
        "2026-11-22T00:00:00+24:00",
        "2026-11-22T00:00:00+01:60",
        "2026-11-22T24:00:00Z",
        "2026-11-22T00:60:00Z",
        "2026-11-22T00:00:61Z",
        "2026-02-30T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "2026-11-22T00:00:00.Z",
        " 2026-11-22T00:00:00Z",
        "2026-11-22T00:00:00Z\n",
        "2026-11-22T00:00:00\u0660Z",
        "1795305600",  # a number in a string
        "1795305600.5",
        "yesterday",
    ],
)
def test_other_timestamp_strings_are_bad_timestamp(value: str) -> None:
    _, rej = _both_ways([_raw(event="sent", recipient="a@gmail.com", timestamp=value)])
    assert [r.reason for _, r in rej] == ["bad_timestamp"]


def test_timestamp_range_and_skew_still_apply_to_strings() -> None:
    _, rej = _both_ways(
        [
            _raw(event="sent", recipient="a@gmail.com", timestamp="1999-12-31T23:59:59Z"),
            _raw(event="sent", recipient="a@gmail.com", timestamp="2026-12-22T00:00:00Z"),
        ]
    )
    assert [(i, r.reason) for i, r in rej] == [(0, "bad_timestamp"), (1, "bad_timestamp")]


# rule 4: enhanced codes
@pytest.mark.parametrize(
    ("code", "ok"),
    [
        ("5.1.1", True),
        ("4.7.28", True),
        ("2.0.0", True),
        ("5.123.123", True),
        ("5.1.1\n", False),
        ("5.1.1 ", False),
        (" 5.1.1", False),
        ("5.\u0661.1", False),  # an Arabic-Indic digit
        ("5.\uff11.1", False),  # a full-width digit
        ("6.1.1", False),
        ("5.1", False),
        ("5.1234.1", False),
    ],
    ids=repr,
)
def test_enhanced_codes_are_ascii_and_whole(code: str, ok: bool) -> None:
    _, rej = _both_ways([_raw(event="bounced", recipient="a@gmail.com", enhanced_code=code)])
    assert [r.reason for _, r in rej] == ([] if ok else ["bad_code"])


def test_enhanced_code_from_the_reply_text_is_ascii() -> None:
    seen: list[Any] = []

    class Spy(TableClassifier):
        def classify_normalized(self, smtp_code, enhanced_code, text, provider=None, operator=None):  # type: ignore[no-untyped-def]
            seen.append(enhanced_code)
            return super().classify_normalized(smtp_code, enhanced_code, text, provider, operator)

    p = make(Spy())
    p.feed(_raw(event="bounced", recipient="a@gmail.com", response="550 5.\u0661.1 unknown"))
    p.feed(_raw(event="bounced", recipient="b@gmail.com", response="550 5.1.1 unknown"))
    assert seen == [None, "5.1.1"]


# rule 5: duplicates
_DUP = {
    "event": "deferred",
    "recipient": "a@gmail.com",
    "message_id": "m-1",
    "smtp_code": 451,
    "enhanced_code": "4.7.1",
    "response": "451 4.7.1 try later",
}


@pytest.mark.parametrize(
    ("second", "dropped"),
    [
        ({}, True),  # the same event again
        ({"smtp_code": "451"}, True),  # the same code, spelled as a string
        ({"timestamp": "2026-11-22T00:00:01Z"}, True),  # the same time, spelled as RFC 3339
        ({"tenant": "other", "x_vendor": 1}, True),  # fields outside the key do not matter
        ({"event": "delivered", "smtp_code": 250, "response": "250 ok"}, False),  # a retry
        ({"event": "bounced"}, False),  # another kind
        ({"timestamp": BASE + 2}, False),
        ({"smtp_code": 452}, False),
        ({"enhanced_code": "4.7.0"}, False),
        ({"enhanced_code": None}, False),
        ({"response": "451 4.7.1 try again later"}, False),
        ({"message_id": "m-2"}, False),
    ],
    ids=repr,
)
def test_duplicates_are_counted_once(second: dict[str, Any], dropped: bool) -> None:
    first = _raw(**_DUP)
    again = json.dumps(
        {k: v for k, v in {"timestamp": BASE + 1, **_DUP, **second}.items() if v is not None}
    ).encode()
    for msgs in ([first, again], [first, _raw(event="sent", recipient="b@gmail.com"), again]):
        p, rej = _both_ways(msgs)
        assert not rej
        assert p.stats.duplicates == int(dropped)
        assert p.stats.accepted == len(msgs) - int(dropped)
        assert p.pending() == p.stats.accepted
    # across batches and flushes too
    q = make(typed_loads=typed_loads())
    q.feed_many([first])
    q.flush()
    q.feed_many([again])
    assert q.stats.duplicates == int(dropped)


@pytest.mark.parametrize("mid", [None, "", "  "], ids=repr)
def test_events_without_message_id_are_never_duplicates(mid: Any) -> None:
    fields = {k: v for k, v in {**_DUP, "message_id": mid}.items() if v is not None}
    p, _ = _both_ways([_raw(**fields)] * 3)
    assert p.stats.duplicates == 0 and p.stats.accepted == 3


def test_retries_and_the_dsn_after_a_250_are_not_duplicates() -> None:
    """One message: deferred twice (a retry), delivered, then bounced by a DSN."""
    mid = {"recipient": "a@corp.example", "message_id": "m-9"}
    msgs = [
        _raw(event="sent", **mid),
        _raw(event="deferred", smtp_code=451, response="451 4.7.1 later", **mid),
        json.dumps(
            {"event": "deferred", "timestamp": BASE + 301, "smtp_code": 451, **mid}
            | {"response": "451 4.7.1 later"}
        ).encode(),
        json.dumps(
            {"event": "delivered", "timestamp": BASE + 900, "smtp_code": 250, **mid}
        ).encode(),
        json.dumps(
            {"event": "bounced", "timestamp": BASE + 960, "response": "550 5.1.1 unknown", **mid}
        ).encode(),
    ]
    p, rej = _both_ways(msgs + msgs)  # and the whole log redelivered
    assert not rej
    assert p.stats.accepted == 5 and p.stats.duplicates == 5
    t = p.flush().totals("domain:corp.example")
    assert t[COL["deferred"]] == 2 and t[COL["delivered"]] == 1 and t[COL["bounced"]] == 1


def test_the_duplicate_window_is_bounded() -> None:
    """At most ``dedupe_keys`` keys are held; a repeat within 7/8 of them is still caught."""
    p = make(dedupe_keys=16)

    def msg(i: int) -> bytes:
        return _raw(event="sent", recipient="a@gmail.com", message_id=f"m-{i}")

    for i in range(14):
        p.feed(msg(i))
    p.feed(msg(0))
    assert p.stats.duplicates == 1  # 13 keys later: remembered
    for i in range(14, 100):
        p.feed(msg(i))
    assert len(p.dedupe) <= 16
    p.feed(msg(1))
    assert p.stats.duplicates == 1  # 98 keys later: forgotten, counted again
    off = make(dedupe_keys=0)
    off.feed(msg(0))
    off.feed(msg(0))
    assert off.stats.duplicates == 0 and off.stats.accepted == 2


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.integers(0, 40))),
    st.integers(1, 40),
    st.integers(0, 50),
)
def test_recent_keys_batched_equals_one_at_a_time(
    keys: list[int | None], batch: int, capacity: int
) -> None:
    from models.ingest.recent import RecentKeys

    a, b = RecentKeys(capacity), RecentKeys(capacity)
    one = [i for i, k in enumerate(keys) if a.seen([k])]
    many = []
    for s in range(0, len(keys), batch):
        many += [s + j for j in b.seen(keys[s : s + batch])]
    assert one == many
    assert len(a) == len(b) <= -(-capacity // 8) * 8  # capacity, rounded up to generations
    # without forgetting (a window larger than the input) it is exactly "seen before"
    c = RecentKeys(8 * (len(keys) + 1))
    firsts: set[int] = set()
    want = []
    for i, k in enumerate(keys):
        if k is not None:
            if k in firsts:
                want.append(i)
            firsts.add(k)
    assert c.seen(keys) == want


def test_duplicates_are_exported_and_shown() -> None:
    from prometheus_client import generate_latest

    from streams.worker.metrics import Metrics

    m = Metrics()
    p = make()
    p.feed_many([_raw(**_DUP)] * 3)
    m.observe_pipeline(0, p, p.flush())
    m.observe_pipeline(0, p, p.flush())  # cumulative: counted once
    text = generate_latest(m.registry).decode()
    assert "repmon_events_duplicate_total 2.0" in text
    # and in /status
    from models.classify.classifier import Classifier
    from streams.worker.app import WorkerState, status_document
    from streams.worker.settings import Settings

    state = WorkerState(settings=Settings(), classifier=Classifier(), metrics=m)
    state.pipeline(0).feed_many([_raw(**_DUP)] * 2)
    state.pipeline(1).feed_many([_raw(**_DUP)] * 3)
    ingest = status_document(state)["ingest"]
    assert ingest["duplicates"] == 3 and ingest["accepted"] == 2


# rule 6: known good means delivered in an earlier, other message
def _uu(kind: str, rcpt: str, mid: str | None, ts: float) -> bytes:
    fields: dict[str, Any] = {"event": kind, "timestamp": ts, "recipient": rcpt}
    if mid is not None:
        fields["message_id"] = mid
    if kind == "bounced":
        fields["response"] = "550 5.1.1 user unknown"
    return json.dumps(fields).encode()


R = "bob@corp.example"


@pytest.mark.parametrize(
    ("events", "known_good"),
    [
        # the same message's DSN after its 250: not known good
        ([("delivered", R, "A"), ("bounced", R, "A")], 0),
        # delivered in A, then user unknown in B: known good
        ([("delivered", R, "A"), ("bounced", R, "B")], 1),
        # the bounce before the delivery: the later delivery vouches for nothing before it
        ([("bounced", R, "B"), ("delivered", R, "A")], 0),
        ([("bounced", R, "A"), ("delivered", R, "A"), ("bounced", R, "A")], 0),
        # delivered in A and in B: B's DSN is known good (A was delivered)
        ([("delivered", R, "A"), ("delivered", R, "B"), ("bounced", R, "B")], 1),
        ([("delivered", R, "A"), ("delivered", R, "A"), ("bounced", R, "A")], 0),
        # without message ids: another message than every other
        ([("delivered", R, None), ("bounced", R, "A")], 1),
        ([("delivered", R, "A"), ("bounced", R, None)], 1),
        ([("delivered", R, None), ("bounced", R, None)], 1),
        # another recipient's delivery vouches for nothing
        ([("delivered", "eve@corp.example", "A"), ("bounced", R, "B")], 0),
        # two bounces after one delivery: only the other message's
        ([("delivered", R, "A"), ("bounced", R, "A"), ("bounced", R, "B")], 1),
    ],
)
@pytest.mark.parametrize("flush_after", ["never", "each", "first"])
def test_known_good_means_delivered_in_another_earlier_message(
    events: list[tuple[str, str, str | None]], known_good: int, flush_after: str
) -> None:
    msgs = [_uu(k, r, m, BASE + 10 * i) for i, (k, r, m) in enumerate(events)]
    totals = np.zeros(len(COLUMNS), dtype=np.int64)
    for path in ("one", "many"):
        p = make(typed_loads=typed_loads())
        totals[:] = 0
        for i, m in enumerate(msgs):
            if path == "one":
                assert p.feed(m) is None
            if flush_after == "each" or (flush_after == "first" and i == 0):
                if path == "many":
                    p.feed_many(msgs[i : i + 1])
                totals += p.flush().totals("domain:corp.example")
        if path == "many" and flush_after == "never":
            assert p.feed_many(msgs) == []
        elif path == "many" and flush_after == "first":
            p.feed_many(msgs[1:])
        totals += p.flush().totals("domain:corp.example")
        assert totals[COL["user_unknown_known_good"]] == known_good, path
        assert totals[COL["user_unknown"]] == sum(k == "bounced" for k, _, _ in events)


def test_known_good_survives_the_move_to_the_bloom_filter() -> None:
    """A delivery that leaves the recent map (full) still vouches for other messages; the
    documented limit: by then the same message's DSN counts as known good too."""
    p = make(recent_deliveries=8)
    p.feed(_uu("delivered", R, "A", BASE))
    p.flush()
    for i in range(200):  # push it out of the 8-entry map
        p.feed(_uu("delivered", f"u{i}@corp.example", f"X{i}", BASE + 1))
    p.flush()
    assert p.recent.lookup(np.asarray([_rkey(R)], dtype=np.uint64))[0].tolist() == [False]
    p.feed(_uu("bounced", R, "B", BASE + 2))
    p.feed(_uu("bounced", R, "A", BASE + 3))
    t = p.flush().totals("domain:corp.example")
    assert t[COL["user_unknown_known_good"]] == 2


def _rkey(address: str) -> int:
    return int.from_bytes(hashlib.sha256(address.strip().lower().encode()).digest()[:8], "little")


def test_recent_deliveries_table() -> None:
    from models.ingest.recent import ANY_MESSAGE, WAYS, RecentDeliveries

    r = RecentDeliveries(64)
    assert r.capacity == 64
    keys = np.asarray([5, 5, 7, 9], dtype=np.uint64)
    out = r.add(keys, np.asarray([11, 11, 12, 0], dtype=np.uint32))
    assert len(out) == 0
    found, val = r.lookup(np.asarray([5, 7, 9, 13], dtype=np.uint64))
    assert found.tolist() == [True, True, True, False]
    assert val[:3].tolist() == [11, 12, ANY_MESSAGE]
    r.add(np.asarray([7], dtype=np.uint64), np.asarray([13], dtype=np.uint32))
    assert r.lookup(np.asarray([7], dtype=np.uint64))[1].tolist() == [ANY_MESSAGE]
    # one set full: the oldest way goes out first
    sets = r.capacity // WAYS
    same_set = [np.uint64(1 + sets * i) for i in range(1, WAYS + 2)]
    evicted = []
    for k in same_set:
        evicted += r.add(np.asarray([k], dtype=np.uint64), np.ones(1, dtype=np.uint32)).tolist()
    assert evicted == [same_set[0]]


# recipient_key: adapters send the documented hash instead of the address
_KEY = recipient_key("Alice@Corp.example")


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"recipient_key": _KEY}, None),
        ({"recipient_key": _KEY.upper()}, None),  # hex in capitals: the same digest
        ({"recipient_key": " " + _KEY + " "}, None),
        ({"recipient_key": ""}, None),  # blank is absent
        ({"recipient_key": "  "}, None),
        ({"recipient_key": _KEY, "recipient": "alice@corp.example"}, None),
        ({"recipient_key": _KEY, "recipient": "bob@corp.example"}, "bad_recipient_key"),
        ({"recipient_key": _KEY[:-1]}, "bad_recipient_key"),
        ({"recipient_key": _KEY + "0"}, "bad_recipient_key"),
        ({"recipient_key": "g" * 64}, "bad_recipient_key"),
        ({"recipient_key": 12}, "wrong_type"),
        ({"recipient_key": "a" * 5000}, "field_too_long"),
    ],
    ids=repr,
)
def test_recipient_key_is_checked(fields: dict[str, Any], reason: str | None) -> None:
    msg = _raw(event="delivered", recipient_domain="corp.example", **fields)
    _, rej = _both_ways([msg, _raw(event="sent", recipient="b@gmail.com")])
    assert [r.reason for _, r in rej] == ([] if reason is None else [reason])


def test_a_recipient_key_counts_like_its_address() -> None:
    """The same stream with addresses, and with their keys and domains only (what the format
    adapters send), gives the same counts, known-good recipients included."""
    from models.sim.simulator import SimConfig, Simulator

    sim = Simulator(
        SimConfig(seed=4, scenario="b2b-false-bounces", duration_s=5 * 3600, rate=6.0, params={})
    )
    evs = [e for ch in sim.chunks(60.0) for e in ch]
    keyed = []
    for e in evs:
        k = dict(e)
        rcpt = k.pop("recipient")
        k["recipient_key"] = recipient_key(rcpt)
        k["recipient_domain"] = rcpt.rpartition("@")[2]
        keyed.append(k)
    outs = []
    for stream in (evs, keyed):
        p = Pipeline(typed_loads=typed_loads())  # the real classifier: userunknown
        assert not p.feed_many([json.dumps(e).encode() for e in stream])
        d = p.flush()
        outs.append({s: d.totals(s).tolist() for s in d.scopes})
    assert outs[0] == outs[1]
    kg = sum(v[COL["user_unknown_known_good"]] for v in outs[0].values())
    assert kg > 0, "the scenario bounced no known-good recipient: the test would prove little"


def test_two_recipients_of_one_message_are_not_duplicates() -> None:
    """A multi-recipient message bounced for two recipients at the same second with the same
    reply is two events (the duplicate key includes the recipient)."""
    same = {"event": "bounced", "message_id": "m-7", "smtp_code": 550, "response": "550 5.1.1 no"}
    msgs = [
        _raw(recipient="a@corp.example", **same),
        _raw(recipient="b@corp.example", **same),
        _raw(
            recipient_key=recipient_key("c@corp.example"), recipient_domain="corp.example", **same
        ),
        _raw(recipient="a@corp.example", **same),  # this one is a repeat
    ]
    p, rej = _both_ways(msgs)
    assert not rej
    assert p.stats.duplicates == 1 and p.stats.accepted == 3


def test_recipient_rows_are_the_events_a_recipient_decision_needs() -> None:
    """keep_recipients: per flush, one row per delivery, bounce, rejection, complaint or
    unsubscription with a recipient, in feed order, with the identity, the whole key (where a
    decision may need it), the message hash and the recipient's scopes, computed independently
    here from the events (models/ingest/recipients.py's helpers)."""
    from models.ingest.recipients import (
        RECIPIENT_KINDS,
        idents_of,
        message_hash,
        recipient_digest,
    )
    from models.schema import EVENT_KIND_CODE
    from models.sim.simulator import SimConfig, Simulator

    sim = Simulator(
        SimConfig(seed=4, scenario="b2b-false-bounces", duration_s=5 * 3600, rate=4.0, params={})
    )
    evs = [e for ch in sim.chunks(60.0) for e in ch]
    p = Pipeline(typed_loads=typed_loads(), keep_recipients=True)
    kg = 0
    for i in range(0, len(evs), 5000):  # several flushes, concatenated
        assert not p.feed_many([json.dumps(e).encode() for e in evs[i : i + 5000]])
        d = p.flush()
        dom = np.array([s.startswith("domain:") for s in d.scopes], dtype=bool)[d.scope_idx]
        kg += int(d.counts[dom, COL["user_unknown_known_good"]].sum())  # one scope per event
    rows = p.take_recipients()
    assert len(p.take_recipients()) == 0  # taken
    keyed = {EVENT_KIND_CODE[k] for k in ("bounced", "rejected", "complained", "unsubscribed")}
    want = [e for e in evs if EVENT_KIND_CODE[e["event"]] in RECIPIENT_KINDS and e.get("recipient")]
    assert len(rows) == len(want) > 1000
    assert rows.ts.tolist() == [float(e["timestamp"]) for e in want]
    assert rows.kind.tolist() == [EVENT_KIND_CODE[e["event"]] for e in want]
    digests = [recipient_digest(e["recipient"]) for e in want]
    assert rows.ident.tolist() == idents_of(digests).tolist()
    # S32 drops trailing NUL bytes on the way to Python bytes: compare the raw 32 bytes
    raw = rows.key.tobytes()
    assert [raw[32 * i : 32 * i + 32] for i in range(len(rows))] == [
        dg if EVENT_KIND_CODE[e["event"]] in keyed else bytes(32)
        for dg, e in zip(digests, want, strict=True)
    ]
    assert rows.mid.tolist() == [message_hash(e.get("message_id")) for e in want]
    assert [rows.scope_key(i, "domain_idx") for i in range(len(rows))] == [
        "domain:" + e["recipient"].rpartition("@")[2].lower() for e in want
    ]
    provs = {rows.scope_key(i, "provider_idx") for i in range(len(rows))}
    assert {"provider:google", "provider:yahoo", "provider:microsoft"} <= provs
    assert "mx:mimecast" in {rows.scope_key(i, "mx_idx") for i in range(len(rows))}
    assert int(rows.known_good.sum()) == kg > 0
    assert set(rows.reason[rows.known_good].tolist()) == {REASON_CODE["userunknown"]}
