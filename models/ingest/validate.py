"""The validation rules of the canonical event (docs/events.md), each written once.

Both ingest paths run the same code: :meth:`Pipeline.feed_many` hands chunks of up to
``BATCH_ROWS`` decoded events to :func:`check_rows`, and :meth:`Pipeline.feed` /
:meth:`Pipeline.feed_obj` hand it a chunk of one. :func:`check_rows` applies the rules column by
column, in the order of docs/events.md, and gives every rejected row the rejection of the first
rule it fails.

Every rule is a function of one value (``event_kind``, ``check_timestamp``, ``check_string``,
``smtp_code``, ``check_enhanced_code``, ``event_domain``, ``check_combo``, ``reply_context``;
``is_blank`` for "an empty or whitespace-only string is absent"), and that function alone
decides whether the value passes, why not, and what it becomes. The column functions beside them
(``event_kinds``, ``event_times``, ...) ask it about every value that is not plainly fine (a
string within the limit, a number within the time range, a recipient ending in ``@`` and its
recipient_domain, ...), and skip the per-value calls when a whole column is plainly fine.
Whether a value is plainly fine depends on that value alone, so a row's verdict never depends
on the rows beside it: a chunk of one decides exactly like a chunk of 512.

Pure logic: standard library, plus the vocabulary of ``models.schema`` and the SMTP phase and
DSN Action spellings of ``models.classify.context``.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, compress, repeat
from operator import attrgetter, itemgetter, methodcaller, not_
from typing import Any

from models.classify.context import dsn_action, smtp_phase
from models.schema import EVENT_KIND_CODE

MAX_EVENT_BYTES = 1 << 20
MAX_FIELD_CHARS = 4096
MAX_RESPONSE_CHARS = 8192
MIN_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z

#: optional string fields of docs/events.md
STR_FIELDS = (
    "message_id",
    "recipient",
    "recipient_key",
    "recipient_domain",
    "sender_domain",
    "sending_ip",
    "pool",
    "tenant",
    "campaign",
    "mx_host",
    "enhanced_code",
    "response",
    "feedback_type",
)
#: optional context of a reply (docs/events.md, "Reply context"): an unrecognised value is
#: ignored and counted, never a rejection
CONTEXT_FIELDS = ("smtp_command", "dsn_action")
KNOWN_FIELDS = frozenset({"event", "timestamp", "smtp_code", *STR_FIELDS, *CONTEXT_FIELDS})
#: the fields that make up a scope combination (checked once per distinct combination)
COMBO_FIELDS = (
    "recipient_domain",
    "mx_host",
    "sending_ip",
    "pool",
    "sender_domain",
    "tenant",
    "campaign",
)
#: string fields checked on every event
EVENT_STR_FIELDS = tuple(f for f in STR_FIELDS if f not in COMBO_FIELDS)

REJECTION_REASONS = (
    "too_large",
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_event",
    "bad_timestamp",
    "bad_domain",
    "bad_code",
    "field_too_long",
    "bad_recipient_key",
)

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)+$"
)
#: RFC 3463 enhanced status code: ASCII digits, nothing after (``$`` would allow a newline)
_ENH_RE = re.compile(r"\A[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
_LEADING_ENH_RE = re.compile(r"\A\s*(?:[2-5][0-9][0-9][ -])?\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})\b")
#: an RFC 3339 date-time (section 5.6): full date, ``T``/``t`` or a space, full time with
#: optional fraction, and ``Z``/``z`` or a numeric offset; nothing before or after
_RFC3339_RE = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)
#: where a leap second (``:60``) is counted: the end of the second before it
_LEAP_FRACTION = 0.999999
_SMTP_CODE_RE = re.compile(r"[0-9]{3}")

_NUMBER_TYPES = frozenset({float, int})
_OPT_STR_TYPES = frozenset({str, type(None)})
_OPT_INT_TYPES = frozenset({int, type(None)})
_NONE_TYPE = type(None)
_STR_TYPE = frozenset({str})
_INT_TYPE = frozenset({int})
#: the fields of EVENT_STR_FIELDS whose blank values check_rows replaces with None here
#: (enhanced codes: per distinct value; recipients: with their domain; feedback_type: unused,
#: a blank one passes like an absent one)
_CLEARED_FIELDS = ("message_id", "response", "recipient_key")
#: the fields of EVENT_STR_FIELDS limited to MAX_FIELD_CHARS
_SHORT_STR_FIELDS = tuple(f for f in EVENT_STR_FIELDS if f != "response")
_LIMIT = {
    name: MAX_RESPONSE_CHARS if name == "response" else MAX_FIELD_CHARS for name in STR_FIELDS
}
_FLOAT_MAX = float.fromhex("0x1.fffffffffffffp+1023")
#: attribute getters of the fields, for objects from a typed decoder
_ATTR = {name: attrgetter(name) for name in KNOWN_FIELDS}
_ENCODE = methodcaller("encode", "utf-8", "surrogatepass")


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was not accepted; ``reason`` is one of REJECTION_REASONS."""

    reason: str
    detail: str


class InvalidEvent(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.rejection = Rejection(reason, detail)


# -- decoding -------------------------------------------------------------------------------


def too_large(raw: bytes) -> Rejection | None:
    """``too_large`` for a message over MAX_EVENT_BYTES (it is not parsed)."""
    if len(raw) > MAX_EVENT_BYTES:
        return Rejection("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
    return None


def bad_json(exc: Exception) -> Rejection:
    return Rejection("bad_json", str(exc)[:200])


def not_an_object(obj: object) -> Rejection:
    return Rejection("not_an_object", f"top-level JSON {type(obj).__name__}")


def unknown_fields(obj: Mapping[str, Any]) -> int:
    """How many fields of ``obj`` docs/events.md does not know (counted, never rejected)."""
    if len(obj) > len(KNOWN_FIELDS) or not KNOWN_FIELDS.issuperset(obj):
        return len(set(obj) - KNOWN_FIELDS)
    return 0


def count_unknown_fields(objs: list[Any]) -> int:
    """:func:`unknown_fields` summed over a chunk of dicts."""
    if KNOWN_FIELDS.issuperset(chain.from_iterable(objs)):
        return 0
    return sum(map(unknown_fields, objs))


# -- the rules ------------------------------------------------------------------------------
#
# Each rule is a function of one value, then the same rule over a column: ``rejected`` maps
# the rows rejected so far to their rejection; a column function asks the per-value function
# about the rows not rejected yet that it cannot rule out cheaply, and records the rejections.


def _ask(
    rejected: dict[int, Rejection], rows: Iterable[int], verdict: Callable[[int], Any]
) -> None:
    """Ask ``verdict`` about each of ``rows`` not rejected yet; keep the Rejections."""
    for j in rows:
        if j not in rejected:
            r = verdict(j)
            if type(r) is Rejection:
                rejected[j] = r


def event_kind(value: object) -> int | Rejection:
    """The kind code of an ``event`` value."""
    if value is None or is_blank(value):
        return Rejection("missing_field", "event")
    if not isinstance(value, str):
        return Rejection("wrong_type", "event must be a string")
    kind = EVENT_KIND_CODE.get(value)
    if kind is None:
        return Rejection("unknown_event", f"event {value[:40]!r} is not a canonical kind")
    return kind


def event_kinds(events: list[Any], rejected: dict[int, Rejection]) -> list[Any]:
    """:func:`event_kind` of a column (None on rejected rows)."""
    if set(map(type, events)) <= _STR_TYPE:
        kinds: list[Any] = list(map(EVENT_KIND_CODE.get, events))
    else:
        kinds = [EVENT_KIND_CODE.get(e) if type(e) is str else None for e in events]
    if None in kinds:
        for j in [j for j, k in enumerate(kinds) if k is None]:
            if j not in rejected:
                kind = event_kind(events[j])
                if type(kind) is Rejection:
                    rejected[j] = kind
                else:
                    kinds[j] = kind
    return kinds


def parse_rfc3339(value: str) -> float:
    """Epoch seconds of an RFC 3339 date-time (docs/events.md); raises InvalidEvent.

    Exactly RFC 3339 section 5.6: ``T`` or ``t`` (or, by the agreement the section allows, a
    space) between date and time, an optional fraction of a second, ``Z``/``z`` or a numeric
    offset. A leap second (``:60``) counts at the end of the second before it. Refused: no
    offset (ambiguous), a date alone, the ISO 8601 basic format and week dates, surrounding
    whitespace, a number in a string. The pattern decides the form; ``fromisoformat`` (given
    only strings of that form) the ranges and the arithmetic.
    """
    if _RFC3339_RE.fullmatch(value) is None:
        raise InvalidEvent(
            "bad_timestamp", "timestamp is not an RFC 3339 date-time with Z or an offset"
        )
    leap = value[17:19] == "60"
    if leap:
        value = value[:17] + "59" + value[19:]
    try:
        ts = datetime.fromisoformat(value.upper()).timestamp()
    except ValueError:
        raise InvalidEvent("bad_timestamp", "timestamp date, time or offset out of range") from None
    # a leap second counts at the end of the second before it
    return math.floor(ts) + _LEAP_FRACTION if leap else ts


def parse_timestamp(value: object) -> float:
    """Epoch seconds from a number or an RFC 3339 string (:func:`parse_rfc3339`); raises
    InvalidEvent. A number in a string (``"1795305600"``) is not a timestamp."""
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "timestamp must be a number or an RFC 3339 string")
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:
            raise InvalidEvent("bad_timestamp", "timestamp out of range") from None
    elif isinstance(value, str):
        ts = parse_rfc3339(value)
    else:
        raise InvalidEvent("wrong_type", "timestamp must be a number or an RFC 3339 string")
    if not math.isfinite(ts):
        raise InvalidEvent("bad_timestamp", "timestamp is not finite")
    return ts


def check_timestamp(value: object, max_ts: float | None, skew: float) -> float | Rejection:
    """The event time of a ``timestamp`` value: present, parseable, not before 2000-01-01 and
    not after ``max_ts`` (the clock plus ``skew``; None: no clock)."""
    if value is None or is_blank(value):
        return Rejection("missing_field", "timestamp")
    try:
        ts = parse_timestamp(value)
    except InvalidEvent as exc:
        return exc.rejection
    if ts < MIN_TIMESTAMP:
        return Rejection("bad_timestamp", "timestamp before 2000-01-01")
    if max_ts is not None and ts > max_ts:
        return Rejection("bad_timestamp", f"timestamp more than {skew:g} s in the future")
    return ts


def _overflows(v: int) -> bool:
    try:
        float(v)
    except OverflowError:
        return True
    return False


def event_times(
    tsv: list[Any], rejected: dict[int, Rejection], max_ts: float | None, skew: float
) -> tuple[list[Any], bool]:
    """:func:`check_timestamp` of a column: numbers as given, anything else parsed
    (placeholders on rejected rows); and whether some int in it (of any row) is too large
    for a float."""
    if not set(map(type, tsv)) <= _NUMBER_TYPES:
        fixed: list[Any] = []
        for j, v in enumerate(tsv):
            if type(v) not in _NUMBER_TYPES:
                if j not in rejected:
                    t = check_timestamp(v, max_ts, skew)
                    if type(t) is Rejection:
                        rejected[j] = t
                    else:
                        v = t
                if j in rejected:
                    v = MIN_TIMESTAMP
            fixed.append(v)
        tsv = fixed
    # a number can fail only outside [MIN_TIMESTAMP, max_ts] (compared exactly: NaN, an
    # infinity and an int too large for a float are outside)
    upper = _FLOAT_MAX if max_ts is None else max_ts
    try:
        inside = math.isfinite(sum(tsv)) and min(tsv) >= MIN_TIMESTAMP and max(tsv) <= upper
    except OverflowError:
        inside = False
    if inside:
        return tsv, False
    _ask(
        rejected,
        [j for j, v in enumerate(tsv) if not MIN_TIMESTAMP <= v <= upper],
        lambda j: check_timestamp(tsv[j], max_ts, skew),
    )
    return tsv, any(type(v) is int and _overflows(v) for v in tsv)


def is_blank(value: object) -> bool:
    """An empty or whitespace-only string: treated exactly like an absent field."""
    return isinstance(value, str) and (not value or value.isspace())


def check_string(name: str, value: object) -> Rejection | None:
    """An optional string field (of EVENT_STR_FIELDS): a string within its length limit, or
    blank (absent)."""
    if value is None:
        return None
    if not isinstance(value, str):
        return Rejection("wrong_type", f"{name} must be a string")
    limit = _LIMIT[name]
    if len(value) > limit and not value.isspace():
        return Rejection("field_too_long", f"{name} longer than {limit} characters")
    return None


def clear_blanks(col: list[Any], *, all_str: bool) -> None:
    """Replace the blank strings of a column (:func:`is_blank`) with None, in place.
    ``all_str``: its values are all strings or null (then one C-level pass decides)."""
    if all_str and "" not in col and not any(map(str.isspace, filter(None, col))):
        return
    for j, v in enumerate(col):
        if is_blank(v):
            col[j] = None


def _all_str(cols: Iterable[list[Any]]) -> bool:
    """Whether the values of these columns are all strings or null."""
    return set(map(type, chain.from_iterable(cols))) <= _OPT_STR_TYPES


def _longest(cols: Iterable[list[Any]]) -> int:
    """The length of the longest value of these columns of strings and nulls."""
    return max(map(len, filter(None, chain.from_iterable(cols))), default=0)


def check_strings(
    cols: Mapping[str, list[Any]], rejected: dict[int, Rejection], *, typed: bool, short: bool
) -> set[str]:
    """:func:`check_string` of the EVENT_STR_FIELDS columns, field by field in that order;
    returns the fields whose values are all strings or null. ``short``: no value can be
    longer than MAX_FIELD_CHARS."""
    if (typed or _all_str(list(map(cols.__getitem__, EVENT_STR_FIELDS)))) and (
        short
        or (
            _longest(list(map(cols.__getitem__, _SHORT_STR_FIELDS))) <= MAX_FIELD_CHARS
            and _longest([cols["response"]]) <= MAX_RESPONSE_CHARS
        )
    ):
        return set(EVENT_STR_FIELDS)
    strings = set()
    for name in EVENT_STR_FIELDS:
        col = cols[name]
        lim = _LIMIT[name]
        if typed or _all_str([col]):
            strings.add(name)
            if short or _longest([col]) <= lim:
                continue
        for j, v in enumerate(col):
            if v is not None and (type(v) is not str or len(v) > lim) and j not in rejected:
                r = check_string(name, v)
                if r is not None:
                    rejected[j] = r
    return strings


def smtp_code(value: object) -> int | Rejection | None:
    """The basic reply code of a ``smtp_code`` value: an integer or a string of exactly three
    ASCII digits, in 200..599; a blank string is absent (None)."""
    if value is None:
        return None
    if isinstance(value, str):
        if _SMTP_CODE_RE.fullmatch(value):
            value = int(value)
        elif is_blank(value):
            return None
    if isinstance(value, bool) or not isinstance(value, int):
        return Rejection("wrong_type", "smtp_code must be an integer or a 3-digit string")
    if not 200 <= value <= 599:
        return Rejection("bad_code", f"smtp_code {value} outside 200..599")
    return value


def check_smtp_codes(codes: list[Any], rejected: dict[int, Rejection]) -> None:
    """:func:`smtp_code` of a column: every value becomes an int or None (in place, on the
    rows not rejected)."""
    if set(map(type, codes)) <= _OPT_INT_TYPES:
        present = list(filter(None, codes))
        if not (present and (min(present) < 200 or max(present) > 599)) and 0 not in codes:
            return
    for j, v in enumerate(codes):
        if v is not None and (type(v) is not int or not 200 <= v <= 599) and j not in rejected:
            code = smtp_code(v)
            if type(code) is Rejection:
                rejected[j] = code
            else:
                codes[j] = code


def check_enhanced_code(value: str) -> Rejection | None:
    """An ``enhanced_code`` that passed :func:`check_string` and is not blank."""
    if not _ENH_RE.match(value):
        return Rejection("bad_code", "enhanced_code is not class.subject.detail")
    return None


def check_enhanced_codes(enhs: list[Any], rejected: dict[int, Rejection], *, all_str: bool) -> None:
    """:func:`check_enhanced_code` of a column, once per distinct value, blank values None (in
    place); ``all_str``: the values are all strings or null."""
    if all_str:
        distinct = set(enhs)
        distinct.discard(None)
    else:
        distinct = {v for v in enhs if isinstance(v, str)}
    if any(map(is_blank, distinct)):
        clear_blanks(enhs, all_str=False)
        distinct = {v for v in distinct if not is_blank(v)}
    wrong = {v: r for v in distinct if (r := check_enhanced_code(v)) is not None}
    if wrong:
        _ask(
            rejected,
            [j for j, v in enumerate(enhs) if isinstance(v, str) and v in wrong],
            lambda j: wrong[enhs[j]],
        )


class Ignored:
    """The verdict of :func:`reply_context` on a value it does not recognise."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "IGNORED"


IGNORED = Ignored()


#: the canonical spelling of a context field's value (None: not recognised)
_CONTEXT_CANONICAL: dict[str, Callable[[str], str | None]] = {
    "smtp_command": smtp_phase,
    "dsn_action": dsn_action,
}


def reply_context(name: str, value: object) -> str | Ignored | None:
    """The canonical value of a context field (of CONTEXT_FIELDS): ``smtp_command`` one of
    ``models.classify.context.SMTP_PHASES`` ("rcpt to" -> "RCPT", "after DATA" ->
    "END-OF-DATA"), ``dsn_action`` one of ``DSN_ACTIONS`` ("Failed" -> "failed"). Blank is
    absent (None). Anything else (an unrecognised spelling, a string over MAX_FIELD_CHARS, not
    a string) is :data:`IGNORED`: the field is treated as absent and counted, the event kept."""
    if value is None or is_blank(value):
        return None
    if type(value) is not str or len(value) > MAX_FIELD_CHARS:
        return IGNORED
    canonical = _CONTEXT_CANONICAL[name](value)
    return IGNORED if canonical is None else canonical


def reply_contexts(name: str, col: list[Any]) -> list[int]:
    """:func:`reply_context` of a column, once per distinct value: every value becomes its
    canonical spelling or None (in place); returns the rows whose value was ignored."""
    n = len(col)
    if col.count(None) == n:  # the common case: the field is absent from the whole chunk
        return []
    if set(map(type, col)) <= _OPT_STR_TYPES:
        verdicts = {v: reply_context(name, v) for v in set(col)}
        if IGNORED not in verdicts.values():
            col[:] = map(verdicts.__getitem__, col)
            return []
        got: list[Any] = list(map(verdicts.__getitem__, col))
    else:  # some value is not a string (a number, a list ...): ignored, value by value
        got = [reply_context(name, v) for v in col]
    ignored = [j for j, v in enumerate(got) if v is IGNORED]
    for j in ignored:
        got[j] = None
    col[:] = got
    return ignored


def event_domain(
    rdom: object, recipient: str | None, domain: Callable[[str], str | None]
) -> tuple[Any, bool] | Rejection:
    """The raw recipient domain an event is counted under, and whether its ``recipient_domain``
    disagrees with it.

    The recipient's own domain (what follows its last @) is the truth. ``recipient_domain`` is
    used when the recipient is absent or blank or has no @. When both are given and differ after
    normalisation (``domain``: :func:`normalise_domain` or a cache of it), the recipient's
    wins and the second value is True (counted, never rejected). ``recipient`` passed
    :func:`check_string`; ``rdom`` is checked with the scope combination (:func:`check_combo`),
    so a non-string or too long one is returned as it is, to be rejected there.
    """
    if (
        isinstance(recipient, str)
        and isinstance(rdom, str)
        and recipient.endswith("@" + rdom)
        and "@" not in rdom
    ):
        return rdom, False
    if is_blank(rdom):
        rdom = None
    if recipient is None or is_blank(recipient):
        if rdom is None:
            return Rejection("missing_field", "recipient or recipient_domain")
        return rdom, False
    at = recipient.rfind("@")
    if at < 0:
        if rdom is None:
            return Rejection("bad_domain", "recipient has no @domain")
        return rdom, False
    own = recipient[at + 1 :]
    if rdom is None:
        return own, False
    if not isinstance(rdom, str) or len(rdom) > MAX_FIELD_CHARS:
        return rdom, False
    normalised = domain(own)
    if normalised is None:  # rejected as bad_domain with the combination
        return own, False
    return own, domain(rdom) != normalised


_RPARTITION_AT = methodcaller("rpartition", "@")
_THIRD = itemgetter(2)


def recipient_domains(
    rdoms: list[Any],
    recipients: list[Any],
    rejected: dict[int, Rejection],
    domain: Callable[[str], str | None],
    *,
    typed: bool,
    strings: bool,
) -> list[int]:
    """:func:`event_domain` of a column: ``rdoms`` (the recipient_domain column) becomes the
    domain each row is counted under, blank recipients None (both in place); returns the rows
    whose recipient_domain disagreed with the recipient. ``typed``: both columns hold strings
    and nulls only; ``strings``: the recipients do."""
    n = len(rdoms)
    rows: Iterable[int] = range(n)
    if None not in recipients and (strings or set(map(type, recipients)) <= _STR_TYPE):
        rtypes = {str} if typed and None not in rdoms else set(map(type, rdoms))
        if rtypes <= _STR_TYPE and "@" not in "".join(rdoms):
            # both given: the plain case is a recipient ending in "@" + recipient_domain
            ok = list(map(str.endswith, recipients, map("@".__add__, rdoms)))
            if all(ok):
                return []
            rows = list(compress(range(n), map(not_, ok)))
        elif rtypes == {_NONE_TYPE}:
            # recipients alone: their domains, except where there is no @
            parts = list(map(_RPARTITION_AT, recipients))
            rdoms[:] = map(_THIRD, parts)
            rows = [j for j, p in enumerate(parts) if not p[1]]
            for j in rows:
                rdoms[j] = None
    mismatched = []
    for j in rows:
        if j in rejected:
            continue
        r = event_domain(rdoms[j], recipients[j], domain)
        if isinstance(r, Rejection):
            rejected[j] = r
            continue
        rdoms[j], differs = r
        if differs:
            mismatched.append(j)
        if is_blank(recipients[j]):
            recipients[j] = None
    return mismatched


def normalise_domain(raw: str) -> str | None:
    """Lower-case, strip the trailing dot, IDNA-encode; None when not a valid domain name.
    A name already in that form is returned as the same object (interning tables then hold
    one copy of it, not two)."""
    d = raw.strip().lower().rstrip(".")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    elif d == raw:
        d = raw
    return d if _DOMAIN_RE.match(d) else None


class DomainCache:
    """:func:`normalise_domain`, cached (a stream has far fewer domains than events); at most
    ``max_entries`` of them (the cache is emptied when it would hold more)."""

    __slots__ = ("_domains", "max_entries")

    def __init__(self, max_entries: int = 100_000) -> None:
        self._domains: dict[str, str | None] = {}
        self.max_entries = max(1, max_entries)

    def __len__(self) -> int:
        return len(self._domains)

    def __call__(self, raw: str) -> str | None:
        try:
            return self._domains[raw]
        except KeyError:
            pass
        if len(self._domains) >= self.max_entries:
            self._domains.clear()
        d = self._domains[raw] = normalise_domain(raw)
        return d

    def clear(self) -> None:
        self._domains.clear()


def _first_bad_type(key: tuple[Any, ...]) -> str:
    """'<field> must be a string' for the first non-string scope field, else ''."""
    for name, v in zip(COMBO_FIELDS, key, strict=True):
        if v is not None and not isinstance(v, str):
            return f"{name} must be a string"
    return ""


def check_combo(
    key: tuple[Any, ...], domain: Callable[[str], str | None]
) -> tuple[tuple[str | None, ...], str, str | None] | Rejection:
    """A scope combination (the values of COMBO_FIELDS, the recipient domain that of
    :func:`event_domain`): strings within the length limit or blank (absent), valid recipient
    and sender domains. Returns the combination with blank values as None, and the normalised
    recipient and sender domains; ``domain`` is :func:`normalise_domain` or a cache of it."""
    if not set(map(type, key)) <= _OPT_STR_TYPES:
        return Rejection("wrong_type", _first_bad_type(key))
    for v in key:
        if v is not None and (not v or v.isspace()):  # some value is blank: it is absent
            key = tuple(None if not v or v.isspace() else v for v in key)
            break
    if max(map(len, filter(None, key)), default=0) > MAX_FIELD_CHARS:
        too_long = next(
            n for n, v in zip(COMBO_FIELDS, key, strict=True) if v and len(v) > MAX_FIELD_CHARS
        )
        return Rejection("field_too_long", f"{too_long} longer than {MAX_FIELD_CHARS} characters")
    rdomain, sender = key[0], key[4]
    dom = domain(rdomain) if rdomain is not None else None
    if dom is None:
        return Rejection("bad_domain", "recipient domain is not a valid domain name")
    sdom = None
    if sender is not None:
        sdom = domain(sender)
        if sdom is None:
            return Rejection("bad_domain", "sender_domain is not a valid domain name")
    return key, dom, sdom


def combo_ids(
    keys: list[tuple[Any, ...]],
    rejected: dict[int, Rejection],
    cache: dict[tuple[Any, ...], int | Rejection],
    resolve: Callable[[tuple[Any, ...]], int | Rejection],
) -> list[Any]:
    """The ids of a column of scope combinations: from ``cache``, else from ``resolve`` (which
    checks a new one with :func:`check_combo` and caches its id or rejection), only for rows
    not rejected yet, in row order."""
    try:
        combos: list[Any] = list(map(cache.get, keys))
    except TypeError:  # an unhashable value (a list, an object) somewhere: find it
        combos = []
        for j, k in enumerate(keys):
            try:
                combos.append(cache.get(k))
            except TypeError:
                combos.append(None)
                if j not in rejected:
                    rejected[j] = Rejection("wrong_type", _first_bad_type(k))
    if None in combos:
        for j, c in enumerate(combos):
            if c is None and j not in rejected:
                c = cache.get(keys[j])  # resolved by an earlier row of this chunk
                combos[j] = c if c is not None else resolve(keys[j])
    if set(map(type, combos)) != _INT_TYPE:
        _ask(rejected, range(len(combos)), combos.__getitem__)
    return combos


# -- normalisation and pseudonymisation of accepted events ----------------------------------


def reply_enhanced_code(enhanced_code: str | None, response: str) -> str | None:
    """The enhanced code of a reply: the field, else one at the front of the text
    (``550 5.1.1 ...``)."""
    if enhanced_code is None and response:
        m = _LEADING_ENH_RE.match(response)
        if m:
            return m.group(1)
    return enhanced_code


_KEY_RE = re.compile(r"[0-9a-f]{64}")


def check_recipient_keys(
    keys: list[Any], recipients: list[Any], rejected: dict[int, Rejection]
) -> None:
    """``recipient_key`` values (in place): 64 hex digits, lower-cased; with a ``recipient``
    as well, the key must be that address's (:func:`recipient_key`). A bad or disagreeing key
    rejects the row (``bad_recipient_key``): the suppression state and the known-good memory
    of another recipient would be touched otherwise."""
    for j, k in enumerate(keys):
        if k is None or j in rejected:
            continue
        if not _KEY_RE.fullmatch(k):
            low = k.strip().lower()
            if not _KEY_RE.fullmatch(low):
                rejected[j] = Rejection(
                    "bad_recipient_key", "recipient_key must be 64 hex digits (SHA-256)"
                )
                continue
            keys[j] = k = low
        r = recipients[j]
        if r is not None and recipient_key(r) != k:
            rejected[j] = Rejection(
                "bad_recipient_key", "recipient_key is not the SHA-256 of the recipient"
            )


def recipient_bytes(addresses: Iterable[str]) -> Iterator[bytes]:
    """The bytes hashed for each recipient: the trimmed, lower-cased address in UTF-8 (a lone
    surrogate, which some JSON decoders let through, is kept as its code point, never an
    error). C-level ``map`` calls, for whole columns."""
    return map(_ENCODE, map(str.lower, map(str.strip, addresses)))


def recipient_key(address: str) -> str:
    """The documented pseudonym of a recipient: hex SHA-256 of the trimmed, lower-cased address."""
    return hashlib.sha256(next(recipient_bytes((address,)))).hexdigest()


# -- a chunk --------------------------------------------------------------------------------


@dataclass(slots=True)
class Checked:
    """The verdicts and values of a checked chunk (rejected rows hold placeholders). Blank
    optional strings are None in every column here."""

    #: row -> the rejection of the first rule it failed
    rejected: dict[int, Rejection]
    kinds: list[Any]
    #: event times: numbers as given, RFC 3339 strings parsed
    ts: list[Any]
    #: basic reply codes as ints (digit strings converted)
    codes: list[Any]
    enhs: list[Any]
    responses: list[Any]
    recipients: list[Any]
    #: ``recipient_key`` (64 lower-hex digits) where given, else None
    recipient_keys: list[Any]
    message_ids: list[Any]
    #: scope combination ids (from ``resolve``)
    combos: list[Any]
    #: rows counted under their recipient's domain although recipient_domain named another
    domain_mismatch: list[int]
    #: unknown fields over all rows
    unknown_fields: int
    #: some timestamp of the chunk is an int too large for a float (see Pipeline._ingest)
    ts_overflow: bool
    #: the SMTP phase (``SMTP_PHASES``) and DSN Action (``DSN_ACTIONS``) of each row, or None
    commands: list[Any]
    actions: list[Any]
    #: field -> how many rows not rejected had its value ignored (see :func:`reply_context`)
    ignored: dict[str, int]


def check_rows(
    objs: list[Any],
    *,
    typed: bool,
    longest: int | None,
    max_ts: float | None,
    skew: float,
    combo_cache: dict[tuple[Any, ...], int | Rejection],
    resolve: Callable[[tuple[Any, ...]], int | Rejection],
    domain: Callable[[str], str | None] = normalise_domain,
) -> Checked:
    """Check decoded events column by column, the rules in the order of docs/events.md; a
    rejected row gets the rejection of the first rule it fails.

    ``objs`` are dicts, or (``typed``) objects from a strict decoder whose fields all have
    their JSON types already (``smtp_code`` an int or a string) and none unknown. ``longest``
    is the length in bytes of the longest message the chunk was decoded from (None: not
    known); no string of a message that short is longer. ``max_ts`` is the clock plus ``skew``
    (None: no clock). Scope combinations: see :func:`combo_ids`; ``domain`` normalises domain
    names (:func:`normalise_domain` or a cache of it). The reply context (CONTEXT_FIELDS) is
    made canonical last (:func:`reply_contexts`): it never rejects a row.
    """
    n = len(objs)
    if typed:
        cols = {name: list(map(_ATTR[name], objs)) for name in KNOWN_FIELDS}
    elif n == 1:
        get = objs[0].get
        cols = {name: [get(name)] for name in KNOWN_FIELDS}
    else:
        cols = {name: list(map(dict.get, objs, repeat(name, n))) for name in KNOWN_FIELDS}
    rejected: dict[int, Rejection] = {}
    extra = 0 if typed else count_unknown_fields(objs)  # counted on every row
    kinds = event_kinds(cols["event"], rejected)
    ts, ts_overflow = event_times(cols["timestamp"], rejected, max_ts, skew)
    short = longest is not None and longest <= MAX_FIELD_CHARS
    # the scope fields are checked per combination, in combo_ids
    strings = check_strings(cols, rejected, typed=typed, short=short)
    for name in _CLEARED_FIELDS:  # blank is absent (recipients: in recipient_domains)
        clear_blanks(cols[name], all_str=name in strings)
    check_smtp_codes(cols["smtp_code"], rejected)
    check_enhanced_codes(cols["enhanced_code"], rejected, all_str="enhanced_code" in strings)
    rdoms = cols["recipient_domain"]
    mismatch = recipient_domains(
        rdoms,
        cols["recipient"],
        rejected,
        domain,
        typed=typed,
        strings="recipient" in strings,
    )
    rkeys = cols["recipient_key"]
    if rkeys.count(None) < n:
        check_recipient_keys(rkeys, cols["recipient"], rejected)
    keys = list(zip(rdoms, *[cols[f] for f in COMBO_FIELDS[1:]], strict=True))
    combos = combo_ids(keys, rejected, combo_cache, resolve)
    if mismatch and rejected:
        mismatch = [j for j in mismatch if j not in rejected]
    # the reply context never rejects: its ignored values count on the rows kept
    ignored: dict[str, int] = {}
    for name in CONTEXT_FIELDS:
        rows = reply_contexts(name, cols[name])
        if rows:
            ignored[name] = sum(1 for j in rows if j not in rejected)
    return Checked(
        rejected,
        kinds,
        ts,
        cols["smtp_code"],
        cols["enhanced_code"],
        cols["response"],
        cols["recipient"],
        rkeys,
        cols["message_id"],
        combos,
        mismatch,
        extra,
        ts_overflow,
        cols["smtp_command"],
        cols["dsn_action"],
        ignored,
    )
