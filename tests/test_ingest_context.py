"""The reply context of the canonical event (docs/events.md, "Reply context"): ``smtp_command``
and ``dsn_action`` reach the classifier through the ingest Pipeline, and a value ingest does not
recognise is ignored and counted, never a rejection."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from models.classify.classifier import Classifier
from models.classify.context import DSN_ACTIONS, SMTP_PHASES
from models.ingest.pipeline import CONTEXT_FIELDS, Pipeline
from models.ingest.validate import IGNORED, MAX_FIELD_CHARS, reply_context, reply_contexts
from models.schema import CLASSES, COL, REASONS
from streams.worker.decoding import ingest_pipeline, typed_loads

BASE = 1_795_305_600.0  # 2026-11-22T00:00:00Z
CLF = Classifier()  # shared: building the rule plans is the costly part, verdicts are pure


def _raw(**fields: Any) -> bytes:
    d: dict[str, Any] = {"timestamp": BASE + 1, "recipient": "bob@corp.example", **fields}
    return json.dumps(d).encode()


def _pipelines() -> list[Pipeline]:
    """The paths an event can take: one at a time (json), batched with orjson dicts, batched
    through the strict typed decoder of the worker."""
    return [
        Pipeline(CLF, clock=lambda: BASE + 600),
        Pipeline(CLF, clock=lambda: BASE + 600, loads=orjson.loads),
        ingest_pipeline(CLF, clock=lambda: BASE + 600),
    ]


def _feed_all_ways(msgs: list[bytes]) -> list[Pipeline]:
    """Feed ``msgs`` one at a time and as batches; every path must agree on the verdicts, the
    statistics and the classification of every event."""
    one, *batched = _pipelines()
    want = [(i, r) for i, m in enumerate(msgs) if (r := one.feed(m)) is not None]
    for p in batched:
        assert p.feed_many(msgs) == want
        assert p.stats == one.stats
        assert p._cols.reason == one._cols.reason and p._cols.cls == one._cols.cls
    return [one, *batched]


def _verdicts(p: Pipeline) -> list[tuple[str, str]]:
    """(reason, class) of every accepted event, in feed order (non-replies included)."""
    return [
        (REASONS[r] if r < len(REASONS) else "-", CLASSES[c] if c < len(CLASSES) else "-")
        for r, c in zip(p._cols.reason, p._cols.cls, strict=True)
    ]


# ----------------------------------------------------------------- one value, canonical form


@pytest.mark.parametrize(
    ("name", "value", "want"),
    [
        # SMTP phases: any case, common spellings, colons and runs of white space
        ("smtp_command", "RCPT", "RCPT"),
        ("smtp_command", "rcpt", "RCPT"),
        ("smtp_command", "RCPT TO", "RCPT"),
        ("smtp_command", " rcpt  to: ", "RCPT"),
        ("smtp_command", "MAIL FROM:", "MAIL"),
        ("smtp_command", "ehlo", "HELO"),
        ("smtp_command", "LHLO", "HELO"),
        ("smtp_command", "greeting", "CONNECT"),
        ("smtp_command", "DATA", "DATA"),
        ("smtp_command", "end of DATA", "END-OF-DATA"),
        ("smtp_command", "after DATA", "END-OF-DATA"),
        ("smtp_command", "End-Of-Data", "END-OF-DATA"),
        ("smtp_command", ".", "END-OF-DATA"),
        # DSN actions: any case, a comment after a space or "("
        ("dsn_action", "failed", "failed"),
        ("dsn_action", "Failed (permanent)", "failed"),
        ("dsn_action", "EXPIRED", "expired"),
        ("dsn_action", " delayed ", "delayed"),
        # blank is absent: not ignored, not counted
        ("smtp_command", "", None),
        ("smtp_command", " \t", None),
        ("dsn_action", "", None),
        ("dsn_action", None, None),
        # not recognised: ignored (and counted by the column function)
        ("smtp_command", "STARTTLS", IGNORED),
        ("smtp_command", "BDAT", IGNORED),
        ("smtp_command", "RCPT TO:<bob@corp.example>", IGNORED),
        ("smtp_command", ":", IGNORED),
        ("smtp_command", "RCPT" + " " * MAX_FIELD_CHARS, IGNORED),  # too long
        ("smtp_command", 5, IGNORED),
        ("smtp_command", True, IGNORED),
        ("smtp_command", ["RCPT"], IGNORED),
        ("dsn_action", "bounced", IGNORED),
        ("dsn_action", "failure", IGNORED),
        ("dsn_action", {"action": "failed"}, IGNORED),
        ("dsn_action", 4.5, IGNORED),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_reply_context_value(name: str, value: Any, want: Any) -> None:
    got = reply_context(name, value)
    assert got is want if want is None or want is IGNORED else got == want
    # the column function agrees, in a column of strings as in a mixed one
    col = [None, value, "", value]
    rows = reply_contexts(name, col)
    canon = None if want is IGNORED else want
    assert col == [None, canon, None, canon]
    assert rows == ([1, 3] if want is IGNORED else [])


def test_every_canonical_value_is_its_own_spelling() -> None:
    for phase in SMTP_PHASES:
        assert reply_context("smtp_command", phase) == phase
        assert reply_context("smtp_command", phase.lower()) == phase
    for action in DSN_ACTIONS:
        assert reply_context("dsn_action", action) == action
        assert reply_context("dsn_action", action.upper()) == action


# ------------------------------------------------------------- the classification it changes

_POSTFIX_EOD = "550 User unknown (in reply to end of DATA command)"

#: (smtp_command, dsn_action, smtp_code, enhanced_code, response, reason, class): the context
#: rules of docs/classification.md ("Context: SMTP phase and DSN Action"), through ingest
CASES: list[tuple[Any, Any, Any, Any, str, str, str]] = [
    # a user unknown without X.1.1: where it was said decides
    (None, None, 550, None, "550 User unknown", "userunknown", "hard"),
    ("RCPT", None, 550, None, "550 User unknown", "userunknown", "hard"),
    ("rcpt to", None, 550, None, "550 User unknown", "userunknown", "hard"),
    ("DATA", None, 550, None, "550 User unknown", "filtered", "block"),
    ("end of DATA", None, 550, None, "550 User unknown", "filtered", "block"),
    ("after DATA", None, 550, None, "550 User unknown", "filtered", "block"),
    ("MAIL FROM:", None, 550, None, "550 User unknown", "rejected", "block"),
    # with X.1.1 (the field, or the front of the text) the mailbox does not exist, even after DATA
    ("DATA", None, 550, None, "550 5.1.1 <bob@corp.example>: user unknown", "userunknown", "hard"),
    ("DATA", None, 550, "5.1.1", "550 User unknown", "userunknown", "hard"),
    ("RCPT", None, 550, None, "550 5.1.1 <bob@corp.example>: user unknown", "userunknown", "hard"),
    ("MAIL", None, 550, None, "550 5.1.1 user unknown", "rejected", "block"),
    # a bare refusal at MAIL FROM refuses the sender; a stock text at the greeting, the client
    ("MAIL", None, 550, None, "550 5.7.1 Access denied", "rejected", "block"),
    ("RCPT", None, 550, None, "550 5.7.1 Access denied", "blocked", "block"),
    ("CONNECT", None, 421, None, "421 Service not available", "blocked", "block"),
    ("EHLO", None, 421, None, "421 Service not available", "blocked", "block"),
    (None, None, 421, None, "421 Service not available", "systemerror", "transient"),
    # the phase written in the text, and a given smtp_command winning over it
    (None, None, 550, None, _POSTFIX_EOD, "filtered", "block"),
    ("RCPT", None, 550, None, _POSTFIX_EOD, "userunknown", "hard"),
    # DSN actions
    (None, "expired", 451, "4.4.1", "451 4.4.1 No answer from host", "expired", "transient"),
    (None, "Expired", 550, None, "550 User unknown", "expired", "transient"),
    ("DATA", "expired", 550, None, "550 User unknown", "expired", "transient"),
    (None, "delayed", 421, None, "Deferred: 421", "expired", "transient"),
    (None, "delayed", 451, "4.4.1", "451 4.4.1 No answer from host", "networkerror", "transient"),
    (None, "failed", 550, None, "550 User unknown", "userunknown", "hard"),
    # not recognised or blank: as if absent
    ("STARTTLS", None, 550, None, "550 User unknown", "userunknown", "hard"),
    ("", "", 550, None, "550 User unknown", "userunknown", "hard"),
    (7, ["expired"], 550, None, "550 User unknown", "userunknown", "hard"),
    ("DATA", "bounced", 550, None, "550 User unknown", "filtered", "block"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("command", "action", "code", "enh", "response", "reason", "cls"),
    CASES,
    ids=[f"{c[0]!r}-{c[1]!r}-{c[4][:24]}" for c in CASES],
)
@pytest.mark.parametrize("kind", ["bounced", "rejected", "deferred"])
def test_context_reaches_the_classifier(
    kind: str,
    command: Any,
    action: Any,
    code: Any,
    enh: Any,
    response: str,
    reason: str,
    cls: str,
) -> None:
    fields: dict[str, Any] = {"event": kind, "smtp_code": code, "response": response}
    if enh is not None:
        fields["enhanced_code"] = enh
    if command is not None:
        fields["smtp_command"] = command
    if action is not None:
        fields["dsn_action"] = action
    for p in _feed_all_ways([_raw(**fields)]):
        assert p.stats.accepted == 1
        assert _verdicts(p) == [(reason, cls)]
        # the classifier gets the same verdict directly (the pipeline adds nothing of its own)
        direct = CLF.classify(
            code,
            enh,
            response,
            p._scopes.combo_provider[p._cols.combo[0]][0],
            p._scopes.combo_provider[p._cols.combo[0]][1],
            smtp_command=command if isinstance(command, str) else None,
            dsn_action=action if isinstance(action, str) else None,
        )
        assert (direct.reason, direct.cls) == (reason, cls)


def test_after_data_user_unknown_is_not_a_user_unknown_for_the_detectors() -> None:
    """filtered must not suppress the recipient: it leaves the user_unknown column."""
    msgs = [
        _raw(event="bounced", smtp_code=550, response="550 User unknown", smtp_command=cmd)
        for cmd in ("RCPT", "DATA", "end of DATA")
    ]
    for p in _feed_all_ways(msgs):
        t = p.flush().totals("domain:corp.example")
        assert t[COL["bounced"]] == 3
        assert t[COL["user_unknown"]] == 1 and t[COL["class_hard"]] == 1
        assert t[COL["class_block"]] == 2


def test_provider_rules_keep_their_verdict_in_any_phase() -> None:
    text = (
        "421-4.7.28 Our system has detected an unusual rate of unsolicited mail originating "
        "from your IP address. gsmtp"
    )
    msgs = [
        _raw(event="deferred", recipient="a@gmail.com", smtp_code=421, response=text, **kw)
        for kw in ({}, {"smtp_command": "CONNECT"}, {"smtp_command": "DATA"})
    ]
    for p in _feed_all_ways(msgs):
        assert _verdicts(p) == [("blocked", "throttle")] * 3


def test_the_same_reply_in_different_phases_is_cached_apart() -> None:
    """The reply cache key holds the context: one text, three phases, three verdicts in one
    batch and across batches, and one reply id (the top replies count it once)."""
    phases = [None, "DATA", "RCPT", "DATA", None, "end of DATA", "MAIL"]
    msgs = []
    for i, cmd in enumerate(phases):
        f: dict[str, Any] = {"event": "bounced", "smtp_code": 550, "response": "550 User unknown"}
        if cmd is not None:
            f["smtp_command"] = cmd
        msgs.append(_raw(recipient=f"u{i}@corp.example", **f))
    want = [
        ("userunknown", "hard"),
        ("filtered", "block"),
        ("userunknown", "hard"),
        ("filtered", "block"),
        ("userunknown", "hard"),
        ("filtered", "block"),
        ("rejected", "block"),
    ]
    for p in _feed_all_ways(msgs):
        assert _verdicts(p) == want
        assert len(set(p._cols.reply)) == 1
        for m in msgs:  # again, from the caches
            p.feed(m)
        assert _verdicts(p) == want + want


def test_a_reply_without_context_is_classified_without_the_keywords() -> None:
    """A ClassifierLike without the context keywords still works for events without context."""
    calls: list[tuple[Any, ...]] = []

    class Old:
        def classify_normalized(self, code, enh, text, provider=None, operator=None):  # type: ignore[no-untyped-def]
            calls.append((code, enh, text))
            return CLF.classify_normalized(code, enh, text, provider, operator)

    p = Pipeline(Old(), clock=lambda: BASE + 600)
    assert p.feed(_raw(event="bounced", smtp_code=550, response="550 User unknown")) is None
    assert p.feed(_raw(event="bounced", smtp_code=550, response="x", smtp_command="")) is None
    assert len(calls) == 2


# ------------------------------------------------------- ignored and counted, never rejected


@pytest.mark.parametrize(
    ("fields", "ignored"),
    [
        ({"smtp_command": "STARTTLS"}, {"smtp_command": 1, "dsn_action": 0}),
        ({"smtp_command": "RCPT TO:<x@y>"}, {"smtp_command": 1, "dsn_action": 0}),
        ({"smtp_command": "x" * (MAX_FIELD_CHARS + 1)}, {"smtp_command": 1, "dsn_action": 0}),
        ({"dsn_action": "bounced"}, {"smtp_command": 0, "dsn_action": 1}),
        ({"smtp_command": "bdat", "dsn_action": "nope"}, {"smtp_command": 1, "dsn_action": 1}),
        ({"smtp_command": 550}, {"smtp_command": 1, "dsn_action": 0}),
        ({"smtp_command": ["RCPT"], "dsn_action": {"a": 1}}, {"smtp_command": 1, "dsn_action": 1}),
        ({"dsn_action": False}, {"smtp_command": 0, "dsn_action": 1}),
        # blank or null is absent: not counted
        ({"smtp_command": "", "dsn_action": " "}, {"smtp_command": 0, "dsn_action": 0}),
        ({"smtp_command": None, "dsn_action": None}, {"smtp_command": 0, "dsn_action": 0}),
        # recognised: not counted
        ({"smtp_command": "rcpt to", "dsn_action": "Failed"}, {"smtp_command": 0, "dsn_action": 0}),
    ],
    ids=lambda v: json.dumps(v)[:40],
)
@pytest.mark.parametrize("kind", ["bounced", "delivered", "sent"])
def test_unrecognised_context_is_ignored_and_counted(
    fields: dict[str, Any], ignored: dict[str, int], kind: str
) -> None:
    good = _raw(event="delivered", recipient="ok@corp.example")
    msgs = [good, _raw(event=kind, response="550 User unknown", **fields), good]
    for p in _feed_all_ways(msgs):
        assert p.stats.accepted == 3
        assert sum(p.stats.rejected.values()) == 0
        assert p.stats.ignored_fields == ignored
        if kind == "bounced":  # classified as if the field were absent
            assert _verdicts(p)[1] == ("userunknown", "hard")


def test_a_rejected_event_does_not_count_its_context() -> None:
    """The event is dead-lettered whole for its own fault; its context is not counted."""
    bad = _raw(event="bounced", smtp_code=999, smtp_command="STARTTLS", dsn_action="x")
    ok = _raw(event="bounced", smtp_code=550, smtp_command="STARTTLS")
    for p in _feed_all_ways([bad, ok]):
        assert p.stats.rejected["bad_code"] == 1 and p.stats.accepted == 1
        assert p.stats.ignored_fields == {"smtp_command": 1, "dsn_action": 0}


def test_ignored_counts_add_up_over_batches() -> None:
    msgs = [
        _raw(event="bounced", response="550 User unknown", smtp_command=c, timestamp=BASE + i)
        for i, c in enumerate(["DATA", "nope", "", "RCPT", "nope", "data", 7, None] * 80)
    ]
    for p in _feed_all_ways(msgs):
        assert p.stats.accepted == len(msgs)
        assert p.stats.ignored_fields == {"smtp_command": 3 * 80, "dsn_action": 0}


def test_context_fields_are_known_fields() -> None:
    """Not counted as unknown fields, and decoded by the strict decoder (the fast path)."""
    p = Pipeline(CLF, clock=lambda: BASE + 600, typed_loads=typed_loads())
    msg = _raw(event="bounced", response="550 User unknown", smtp_command="DATA", dsn_action="x")
    assert p.feed_many([msg] * 4) == []
    assert p.stats.unknown_fields == 0
    assert p.stats.ignored_fields == {"smtp_command": 0, "dsn_action": 4}
    assert p._typed_failures == 0
    assert set(CONTEXT_FIELDS) == {"smtp_command", "dsn_action"}
