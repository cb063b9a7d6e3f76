"""What every native-format parser shares: the Parser interface, its statistics, the reasons of
its rejections, and the one place where a canonical event is built (:class:`Builder`).

A parser turns one native record (a log line, a JSON document, a whole mail message) into zero or
more canonical events (docs/events.md) and zero or more rejections. The events it builds carry
``recipient_key`` (the documented hash of the address, :func:`models.ingest.validate.recipient_key`)
and ``recipient_domain`` (normalised), never the clear address. Every optional field is checked
here as ingest checks it (lengths, codes, domains, reply context), so that an event a parser
produces is never refused by the pipeline for something the parser could have seen; what the
parser cannot know (the worker's clock) is left to ingest.

Pure logic: standard library, plus the validation rules of :mod:`models.ingest.validate` and the
SMTP phase and DSN Action spellings of :mod:`models.classify.context`.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

from models.classify.context import dsn_action as canonical_action
from models.classify.context import phase_from_text, smtp_phase
from models.ingest.validate import (
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_RESPONSE_CHARS,
    MIN_TIMESTAMP,
    DomainCache,
    Rejection,
    recipient_key,
)
from models.schema import EVENT_KIND_CODE

#: one canonical event, as a JSON-ready dict
Event = dict[str, Any]
#: what :meth:`Parser.feed` returns for one record
Result = tuple[list[Event], list[Rejection]]

#: Why a parser refuses a record (or one item of a batch). All but ``unparseable`` are reasons of
#: ingest too (docs/events.md), with the same meaning; the ``canonical`` pass-through may also
#: give ingest's ``wrong_type`` and ``field_too_long``.
FORMAT_REJECTION_REASONS = (
    "too_large",  # the record is longer than the parser's limit (not parsed)
    "bad_json",  # a JSON format whose record does not decode
    "not_an_object",  # a JSON document (or batch item) that is not an object
    "unparseable",  # not a record of this format at all (not a syslog line, not a DSN, ...)
    "unknown_event",  # a record type the format does not define (a new one: map it first)
    "missing_field",  # no timestamp, or no recipient, where the format requires one
    "bad_timestamp",  # a timestamp that does not parse, or before 2000-01-01
    "bad_domain",  # the recipient address has no @domain, or not a valid domain name
)

_ENH_RE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}\Z")
#: a reply as written: basic code, then an enhanced code, both optional (ASCII digits only)
_REPLY_RE = re.compile(
    r"\s*([2-5][0-9][0-9])(?:[ \-]|\Z)\s*(?:([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.]))?"
)
_LEADING_ENH_RE = re.compile(r"\s*([245]\.[0-9]{1,3}\.[0-9]{1,3})(?![0-9.])")
_ADDRESS_TYPE_RE = re.compile(r"\s*(?:rfc822|utf-8)\s*;\s*", re.IGNORECASE)


def reject(reason: str, detail: str) -> Rejection:
    """A parser's rejection (``reason`` one of FORMAT_REJECTION_REASONS); the detail is kept
    short and never holds a clear address."""
    return Rejection(reason, detail[:200])


# -- values ----------------------------------------------------------------------------------


def safe_str(value: str) -> str:
    """``value`` as text that encodes to UTF-8 (a lone surrogate, which a JSON decoder lets
    through, becomes U+FFFD); the same object when it already does."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return value


def reply_codes(text: str) -> tuple[int | None, str | None]:
    """The basic and enhanced codes at the front of a reply text (``550 5.1.1 ...``,
    ``421-4.7.0 ...``, ``5.7.1 ...`` without basic code); None where there is none."""
    m = _REPLY_RE.match(text)
    if m is not None:
        return int(m.group(1)), m.group(2)
    m = _LEADING_ENH_RE.match(text)
    return None, m.group(1) if m is not None else None


def status_code(value: object) -> str | None:
    """An RFC 3463 status (``5.1.1``) from a DSN ``Status`` or a log field, its comment dropped
    (``5.0.0 (permanent failure)``), or None."""
    if not isinstance(value, str):
        return None
    m = _LEADING_ENH_RE.match(value)
    return m.group(1) if m is not None else None


def diagnostic_text(value: str) -> str:
    """The text of a DSN-style diagnostic (``smtp; 550 5.1.1 ...``, ``X-Postfix; ...``): the
    type before the first ``;`` dropped when it is one word, folding undone."""
    text = " ".join(value.split())
    head, sep, tail = text.partition(";")
    if sep and head and " " not in head.strip() and len(head) <= 40:
        return tail.strip()
    return text


def mta_name(value: object) -> str | None:
    """A host name from a DSN ``Remote-MTA`` (``dns; mx.example.com``), a log field
    (``mx.example.com (192.0.2.1)``, ``mx.example.com[192.0.2.1]:25``), or None."""
    if not isinstance(value, str):
        return None
    v = value.strip()
    head, sep, tail = v.partition(";")
    if sep and head.strip().lower() in ("dns", "x-local-hostname", "smtp"):
        v = tail.strip()
    v = v.split(None, 1)[0] if v else v
    v = v.split("[", 1)[0].rstrip(".").strip("<>()")
    return v or None


def host_ip(value: object) -> str | None:
    """An IP address without port: ``192.0.2.1:53210`` -> ``192.0.2.1``, ``[2001:db8::1]:25``
    -> ``2001:db8::1``; a bare IPv6 address is kept whole."""
    if not isinstance(value, str):
        return None
    v = value.strip()
    if v.startswith("["):
        return v[1 : v.find("]")] if "]" in v else None
    if v.count(":") == 1:
        v = v.split(":", 1)[0]
    return v or None


def clean_address(value: str) -> str:
    """An address as logged (``<a@b>``, ``rfc822; a@b``, ``"Name" <a@b>``) reduced to the
    addr-spec that is hashed."""
    v = value.strip()
    if "<" not in v and ";" not in v:  # a bare address, the common case
        return v
    m = _ADDRESS_TYPE_RE.match(v)
    if m is not None:
        v = v[m.end() :]
    lt = v.rfind("<")
    if lt >= 0:
        gt = v.find(">", lt)
        v = v[lt + 1 : gt] if gt > lt else v[lt + 1 :]
    return v.strip()


def address_domain(value: object) -> str | None:
    """The domain of an address-ish string (``Name <a@b.example>``, ``b.example``), or None."""
    if not isinstance(value, str) or not value:
        return None
    v = clean_address(value[:MAX_FIELD_CHARS])
    return v[v.rfind("@") + 1 :] if v else None


def epoch(value: object) -> float | None:
    """Epoch seconds from a number, an ISO 8601 / RFC 3339 date-time with an offset, or an
    RFC 5322 date; None when it is none of these (a date-time without offset included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:
            return None
        return ts if math.isfinite(ts) else None
    if not isinstance(value, str) or not value or len(value) > 100:
        return None
    v = value.strip()
    try:
        if v[:1].isdigit() and v[:4].isdigit():
            d = datetime.fromisoformat(v)
        else:
            d = parsedate_to_datetime(v)
            if d.tzinfo is None:  # RFC 5322 "-0000": UTC, local time unknown
                d = d.replace(tzinfo=UTC)
        if d.tzinfo is None or d.utcoffset() is None:
            return None
        return d.timestamp()
    except Exception:  # a malformed date: the stdlib raises ValueError, TypeError, ...
        return None


def first_str(value: object) -> str | None:
    """A string, or the first string of a list of them (JSON tags, categories), or None."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and value and isinstance(value[0], str):
        return value[0]
    return None


# -- the event --------------------------------------------------------------------------------


class Builder:
    """Builds canonical events: checks and normalises every field the way ingest will, hashes
    the recipient. Holds a bounded cache of normalised domain names."""

    __slots__ = ("_domain",)

    def __init__(self, max_domains: int = 100_000) -> None:
        self._domain = DomainCache(max_domains)

    def domain(self, raw: str) -> str | None:
        """A normalised domain name (lower case, no trailing dot, IDNA), or None."""
        if not raw or len(raw) > 253 * 4:
            return None
        return self._domain(raw)

    def sender_domain(self, value: object) -> str | None:
        """The normalised domain of an address or domain (``Name <a@b.example>``), or None."""
        d = address_domain(value)
        return self.domain(d) if d else None

    def event(
        self,
        kind: str,
        ts: float | None,
        address: object,
        *,
        message_id: object = None,
        sender_domain: str | None = None,
        sending_ip: object = None,
        pool: object = None,
        tenant: object = None,
        campaign: object = None,
        mx_host: object = None,
        smtp_code: int | None = None,
        enhanced_code: str | None = None,
        response: object = None,
        feedback_type: object = None,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> Event | Rejection:
        """One event of ``kind`` (a canonical kind) at ``ts`` (epoch seconds) for the recipient
        ``address`` (cleaned with :func:`clean_address`). ``sender_domain`` must already be
        normalised (:meth:`sender_domain`). Optional values that ingest would refuse are left
        out (a code out of range, a string too long, a blank); a response is cut at
        MAX_RESPONSE_CHARS, and the recipient's address, where the reply quotes it, is replaced
        by ``recipient@<its domain>`` (an address still, for the classifier). Rejections:
        ``missing_field`` (no timestamp or no recipient), ``bad_timestamp`` (before 2000-01-01
        or not finite), ``bad_domain``."""
        assert kind in EVENT_KIND_CODE, kind
        if ts is None:
            return reject("missing_field", "timestamp")
        if not math.isfinite(ts) or ts < MIN_TIMESTAMP:
            return reject("bad_timestamp", "timestamp before 2000-01-01 or not finite")
        if not isinstance(address, str) or not address or address.isspace():
            return reject("missing_field", "recipient")
        addr = clean_address(address)
        if len(addr) > MAX_FIELD_CHARS:
            return reject("bad_domain", "recipient longer than 4096 characters")
        at = addr.rfind("@")
        if at < 0:
            return reject("bad_domain", "recipient has no @domain")
        dom = self.domain(addr[at + 1 :])
        if dom is None:
            return reject("bad_domain", "recipient domain is not a valid domain name")
        ev: Event = {
            "event": kind,
            "timestamp": ts,
            "recipient_key": recipient_key(addr),
            "recipient_domain": dom,
        }
        if type(message_id) is str and message_id[:1] == "<" and message_id[-1:] == ">":
            message_id = message_id[1:-1]
        for name, value in (
            ("message_id", message_id),
            ("sending_ip", sending_ip),
            ("pool", pool),
            ("tenant", tenant),
            ("campaign", campaign),
            ("mx_host", mx_host),
            ("feedback_type", feedback_type),
        ):
            if value is None:
                continue
            if (  # the common case, checked inline: a short ASCII string, not blank
                type(value) is str
                and value
                and len(value) <= MAX_FIELD_CHARS
                and value.isascii()
                and not value.isspace()
            ):
                ev[name] = value
            else:
                _put(ev, name, value)
        if sender_domain is not None:
            ev["sender_domain"] = sender_domain
        if smtp_code is not None and 200 <= smtp_code <= 599:
            ev["smtp_code"] = smtp_code
        if enhanced_code is not None and _ENH_RE.match(enhanced_code):
            ev["enhanced_code"] = enhanced_code
        if isinstance(response, str) and response and not response.isspace():
            text = response[:MAX_RESPONSE_CHARS]
            if "@" in text:  # the address stays here
                text = _scrub(text, addr, f"recipient@{dom}")
            ev["response"] = safe_str(text)
        if smtp_command is not None:
            phase = _canonical(_PHASES, smtp_phase, smtp_command)
            if phase is not None:
                ev["smtp_command"] = phase
        if dsn_action is not None:
            action = _canonical(_ACTIONS, canonical_action, dsn_action)
            if action is not None:
                ev["dsn_action"] = action
        return ev


def _scrub(text: str, addr: str, placeholder: str) -> str:
    """``text`` with every occurrence of ``addr`` (in any case) replaced by ``placeholder``."""
    low, a = text.lower(), addr.lower()
    if a not in low:
        return text
    if not (text.isascii() and addr.isascii()):  # lower() may change lengths: use re
        out = re.sub(re.escape(addr), placeholder, text, flags=re.IGNORECASE)
        return out[:MAX_RESPONSE_CHARS]
    parts = []
    i = 0
    while (j := low.find(a, i)) >= 0:
        parts.append(text[i:j])
        parts.append(placeholder)
        i = j + len(a)
    parts.append(text[i:])
    return "".join(parts)[:MAX_RESPONSE_CHARS]


#: canonical spellings of the reply context already looked up (few distinct values)
_PHASES: dict[str, str | None] = {}
_ACTIONS: dict[str, str | None] = {}


def _canonical(
    cache: dict[str, str | None], canon: Callable[[str | None], str | None], value: str
) -> str | None:
    """``canon(value)`` (an SMTP phase or DSN action in canonical form), through ``cache``."""
    try:
        return cache[value]
    except KeyError:
        pass
    out = canon(value[:100])
    if len(cache) < 1_000:
        cache[value] = out
    return out


def _put(ev: Event, name: str, value: object) -> None:
    """Set an optional string field when ingest would keep it (a string, not blank, within
    MAX_FIELD_CHARS); numbers (ids, jobs) are written as strings."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        value = str(value)
    if isinstance(value, str) and value and len(value) <= MAX_FIELD_CHARS and not value.isspace():
        ev[name] = safe_str(value)


def phase_in_text(text: str) -> str | None:
    """The SMTP phase a reply text names (Postfix "in reply to RCPT TO command", "refused to
    talk to me"), in canonical form, or None."""
    return phase_from_text(text.lower())


# -- the parser -------------------------------------------------------------------------------


@dataclass(slots=True)
class ParserStats:
    """What a parser saw: records fed, events made, rejections by reason, records (or items)
    skipped because they carry nothing to count (by native type), and records that raised in
    the parser (a bug: each is also returned as an ``unparseable`` rejection)."""

    records: int = 0
    events: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    errors: int = 0


class Parser:
    """One native format's parser: ``feed(record)`` -> (events, rejections).

    ``record`` is one record as cut by the format's ``split`` function (a line without its
    newline, one JSON document, one whole message). A parser may keep bounded state between
    records (Postfix's queue ids, PowerMTA's header); feed records in log order. ``feed`` never
    raises: an exception inside the parser is turned into an ``unparseable`` rejection and
    counted in ``stats.errors``.
    """

    #: the format name (a key of ``FORMATS``)
    name: str = ""
    #: records longer than this are rejected as ``too_large`` without being parsed
    max_record_bytes: int = MAX_EVENT_BYTES

    def __init__(self, *, max_record_bytes: int | None = None) -> None:
        if max_record_bytes is not None:
            self.max_record_bytes = max_record_bytes
        self.stats = ParserStats()
        self.build = Builder()

    def feed(self, record: bytes) -> Result:
        """The canonical events of one native record, and the rejections of what could not be
        turned into events (a whole record, or items of a batch)."""
        st = self.stats
        st.records += 1
        if len(record) > self.max_record_bytes:
            rej = reject("too_large", f"{len(record)} bytes > {self.max_record_bytes}")
            st.rejected[rej.reason] += 1
            return [], [rej]
        events: list[Event] = []
        rejections: list[Rejection] = []
        try:
            self.parse(record, events, rejections)
        except Exception as exc:  # a bug in a parser must not stop the stream
            st.errors += 1
            rejections.append(reject("unparseable", f"parser error: {type(exc).__name__}"))
        st.events += len(events)
        for r in rejections:
            st.rejected[r.reason] += 1
        return events, rejections

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        """Append the events and rejections of ``record`` (implemented by each format)."""
        raise NotImplementedError

    def skip(self, what: str) -> None:
        """Count a record (or item) that carries nothing to count, by native type."""
        self.stats.skipped[what[:60]] += 1

    @staticmethod
    def add(
        made: Event | Rejection, events: list[Event], rejections: list[Rejection], where: str = ""
    ) -> None:
        """Append an event, or a rejection (its detail prefixed with ``where``)."""
        if isinstance(made, Rejection):
            rejections.append(reject(made.reason, f"{where}{made.detail}") if where else made)
        else:
            events.append(made)


class JsonParser(Parser):
    """A parser of JSON documents: a record is one object, or an array of them (a batch; each
    item is parsed on its own and its rejections name it, ``item 3: ...``).

    ``loads``: the JSON decoder (default :func:`json.loads`; the CLI may pass a faster one
    such as ``orjson.loads``: anything that raises ValueError on bad input).
    """

    def __init__(
        self, *, loads: Callable[[bytes], Any] | None = None, max_record_bytes: int | None = None
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.loads = loads if loads is not None else json.loads

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        try:
            doc = self.loads(record)
        except (ValueError, RecursionError) as exc:
            rejections.append(reject("bad_json", str(exc)))
            return
        if type(doc) is list:
            for i, item in enumerate(doc):
                self.item(item, events, rejections, f"item {i}: ")
        else:
            self.item(doc, events, rejections, "")

    def item(self, doc: Any, events: list[Event], rejections: list[Rejection], where: str) -> None:
        """Append the events and rejections of one JSON document (``where`` prefixes the
        details of its rejections)."""
        raise NotImplementedError


def pick(obj: Mapping[str, Any], names: Iterable[str]) -> Any:
    """The first of ``names`` present in ``obj`` with a non-blank value (a list: its first
    string), or None."""
    for n in names:
        v = obj.get(n)
        if isinstance(v, list):
            v = first_str(v)
        if v is not None and v != "" and not (isinstance(v, str) and v.isspace()):
            return v
    return None


#: a field name -> the native names read for it, in order (a configurable mapping)
FieldMap = Mapping[str, tuple[str, ...]]


def field_map(defaults: FieldMap, given: Mapping[str, Iterable[str] | str] | None) -> FieldMap:
    """``defaults`` overridden by ``given`` (a name or a list of names per canonical field; an
    empty list turns the field off)."""
    out = dict(defaults)
    for k, v in (given or {}).items():
        out[k] = (v,) if isinstance(v, str) else tuple(v)
    return out


Splitter = Callable[[bytes, bool], tuple[list[bytes], int]]
