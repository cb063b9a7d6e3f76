"""What the DSN and ARF parsers share: reading a whole message with the standard library's
``email`` package, finding its report parts, the fields of a report block, and the headers of
the original message (which carry the sender, the message id, and the sender's own campaign and
tenant headers, configurable)."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from email import message_from_bytes
from email.message import Message
from email.parser import HeaderParser
from typing import Any

from models.ingest.formats.base import FieldMap, Parser, epoch, field_map
from models.ingest.validate import Rejection

#: the default mapping of canonical fields to the original message's headers (first found wins)
DEFAULT_HEADERS: FieldMap = {
    "tenant": ("X-Tenant", "X-Tenant-Id"),
    "campaign": ("X-Campaign", "X-Campaign-Id"),
    "pool": (),
    "sending_ip": (),
}
#: headers that may hold a KumoMTA supplemental trace (base64 JSON with the "_@_" marker)
TRACE_HEADERS = ("X-KumoRef",)
_MAX_HEADER = 4096
#: how many MIME parts are looked at, at most (a report has three)
_MAX_PARTS = 200


class MailParser(Parser):
    """A parser of whole messages: the default size limit is larger (a DSN may return the
    whole original message), and ``headers`` maps canonical fields to the original message's
    headers."""

    max_record_bytes = 10 << 20

    def __init__(
        self,
        *,
        headers: Mapping[str, Iterable[str] | str] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.headers = field_map(DEFAULT_HEADERS, headers)


def parse_message(raw: bytes) -> Message | Rejection:
    """The message of ``raw`` (never raises: a failure is an ``unparseable`` rejection)."""
    try:
        return message_from_bytes(raw)
    except Exception as exc:  # the stdlib parser is lenient, but not for everything
        return Rejection("unparseable", f"MIME: {type(exc).__name__}")


def parts(msg: Message) -> list[Message]:
    """The message and its MIME parts, depth first (at most _MAX_PARTS of them; the parts of a
    returned original message are not entered)."""
    out: list[Message] = []
    stack = [msg]
    while stack and len(out) < _MAX_PARTS:
        m = stack.pop()
        out.append(m)
        if m.get_content_type() in ("message/rfc822", "message/global"):
            continue
        payload = m.get_payload()
        if isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))
    return out


def find_part(msg: Message, types: tuple[str, ...]) -> Message | None:
    """The first part whose content type is one of ``types``."""
    for p in parts(msg):
        if p.get_content_type() in types:
            return p
    return None


def part_text(part: Message) -> str:
    """The decoded text of a non-multipart part (transfer encoding undone, bytes as UTF-8 with
    replacement); a parsed payload (a list of messages) is written back out."""
    payload = part.get_payload()
    if isinstance(payload, list):
        return "\n".join(_as_text(p) for p in payload if isinstance(p, Message))
    raw = part.get_payload(decode=True)
    if isinstance(raw, bytes):
        return raw.decode("utf-8", "replace")
    return payload if isinstance(payload, str) else ""


def _as_text(m: Message) -> str:
    lines = [f"{k}: {v}" for k, v in m.items()]
    return "\n".join(lines) + "\n"


def blocks(text: str) -> list[Message]:
    """The header blocks of a ``message/delivery-status`` or ``message/feedback-report`` body,
    separated by blank lines."""
    out = []
    norm = text.replace("\r\n", "\n").replace("\r", "\n")
    for chunk in norm.split("\n\n"):
        if chunk.strip():
            out.append(HeaderParser().parsestr(chunk.lstrip("\n") + "\n"))
    return out


def field(block: Message, name: str) -> str | None:
    """A field of a block (or header of a message) as one line of text, or None."""
    v = block.get(name)
    if v is None:
        return None
    s = str(v)[:_MAX_HEADER]
    s = " ".join(s.split())
    return s or None


def fields(block: Message, name: str) -> list[str]:
    """Every value of a repeated field."""
    return [" ".join(str(v)[:_MAX_HEADER].split()) for v in block.get_all(name) or []]


def original_headers(msg: Message) -> Message | None:
    """The headers of the original message a report returns: a ``message/rfc822`` (or
    ``message/global``) part, or ``text/rfc822-headers``."""
    for p in parts(msg)[1:]:
        ctype = p.get_content_type()
        if ctype in ("message/rfc822", "message/global"):
            payload = p.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            text = part_text(p)
            return HeaderParser().parsestr(text) if text else None
        if ctype in ("text/rfc822-headers", "message/global-headers"):
            return HeaderParser().parsestr(part_text(p))
    return None


def kumo_trace(original: Message | None) -> dict[str, Any]:
    """The decoded KumoMTA supplemental trace header of the original message (``recipient``,
    and ``tenant``/``campaign`` when configured in KumoMTA), or {}."""
    if original is None:
        return {}
    for name in TRACE_HEADERS:
        v = field(original, name)
        if not v:
            continue
        b64 = v.replace(" ", "")
        try:
            data = json.loads(base64.b64decode(b64 + "=" * (-len(b64) % 4)))
        except (ValueError, binascii.Error, RecursionError):
            continue
        if isinstance(data, dict) and data.get("_@_") == "\\_/":
            return data
    return {}


def mapped(original: Message | None, trace: Mapping[str, Any], names: FieldMap) -> dict[str, Any]:
    """The canonical fields (``tenant``, ``campaign``, ``pool``, ``sending_ip``) read from the
    original message's headers as mapped by ``names``, else from the KumoMTA trace."""
    out: dict[str, Any] = {}
    for f, hdrs in names.items():
        v = None
        if original is not None:
            for h in hdrs:
                v = field(original, h)
                if v:
                    break
        if not v:
            t = trace.get(f)
            v = t if isinstance(t, str) else None
        out[f] = v
    return out


def report_time(*candidates: str | None) -> float | None:
    """The first of ``candidates`` (RFC 5322 dates) that parses, as epoch seconds."""
    for c in candidates:
        if c:
            ts = epoch(c)
            if ts is not None:
                return ts
    return None


def message_id(original: Message | None) -> str | None:
    """The original message's Message-ID without its angle brackets."""
    if original is None:
        return None
    mid = field(original, "Message-ID")
    if mid and mid.startswith("<") and mid.endswith(">"):
        mid = mid[1:-1]
    return mid or None
