"""Redaction of e-mail addresses in dead letters, in linear time: what ``repmon ingest`` (its
file records, ``--follow``, ``--rejects``) and ``repmon gateway`` (webhook records) write to the
dead-letter topic, and what ``repmon dlq`` shows of a detail. No recipient leaves the host in
clear: every address becomes ``redacted@<its domain>``, and the recipient key (docs/events.md)
of each replaced address is kept, in order, so that ``repmon dlq redrive`` can give re-driven
events their true keys.

An address is a match of :data:`ADDRESS_PATTERN`: one or more local-part bytes
(``A-Za-z0-9.!#$%&'*+/=?^_`{|}~-`` and any byte >= 0x80, for SMTPUTF8: no clear tail of a local
part is left behind), ``@``, and a domain ``[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?``; leftmost
first, none overlapping. The pattern is the reference only: it backtracks quadratically over a
long run of local-part bytes without ``@`` (2 s for 40 kB, a quarter of an hour for a 1 MiB
record), so :func:`address_spans` finds the same matches with a bounded number of looks at
every byte.
"""

from __future__ import annotations

import re

from models.ingest.validate import recipient_key

#: the reference definition of an address in a raw record (tests compare the scan with it)
ADDRESS_PATTERN = re.compile(
    rb"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~\x80-\xff-]+@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
)
_LOCAL_BYTES = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-"
)
_LOCAL_BYTES |= frozenset(range(0x80, 0x100))
_DOMAIN_BYTES = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.-")
_ALNUM = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
#: byte -> b"L" (local part) or b" "; byte -> b"D" (domain) or b" "
_LOCAL_TABLE = bytes(0x4C if c in _LOCAL_BYTES else 0x20 for c in range(256))
_DOMAIN_TABLE = bytes(0x44 if c in _DOMAIN_BYTES else 0x20 for c in range(256))
#: what replaces an address's local part
_REDACTED = b"redacted"


def address_spans(raw: bytes) -> list[tuple[int, int, int]]:
    """(start, ``@``, end) of every match of :data:`ADDRESS_PATTERN` in ``raw``, left to right,
    in linear time: from each ``@`` back over the local part (never before the previous match's
    end), and forward over the domain (trailing dots and hyphens dropped)."""
    at = raw.find(b"@")
    if at < 0:
        return []
    local, domain = raw.translate(_LOCAL_TABLE), raw.translate(_DOMAIN_TABLE)
    n = len(raw)
    out: list[tuple[int, int, int]] = []
    pos = 0
    while at >= 0:
        start = max(pos, local.rfind(b" ", pos, at) + 1)
        if start < at and at + 1 < n and raw[at + 1] in _ALNUM:
            end = domain.find(b" ", at + 1)
            end = n if end < 0 else end
            end = at + 1 + len(raw[at + 1 : end].rstrip(b".-"))
            out.append((start, at, end))
            pos = end
            at = raw.find(b"@", end)
        else:
            at = raw.find(b"@", at + 1)
    return out


def _key(raw: bytes, start: int, end: int) -> str:
    return recipient_key(raw[start:end].decode("utf-8", "replace"))


def _redacted(raw: bytes, spans: list[tuple[int, int, int]]) -> bytes:
    parts: list[bytes] = []
    last = 0
    for start, at, end in spans:
        parts += [raw[last:start], _REDACTED, raw[at:end]]
        last = end
    parts.append(raw[last:])
    return b"".join(parts)


def redact(raw: bytes) -> bytes:
    """``raw`` with every e-mail address replaced by ``redacted@<its domain>``: a dead letter
    keeps the record's shape and reason, never a recipient in clear (the original is still in
    the sender's own log)."""
    spans = address_spans(raw)
    return _redacted(raw, spans) if spans else raw


def redact_keyed(raw: bytes) -> tuple[bytes, list[str]]:
    """:func:`redact`, and the recipient key (docs/events.md) of each address replaced, in order:
    what ``repmon dlq redrive`` needs to give re-driven events their true keys (a key is what
    the events topic carries anyway, never the address)."""
    spans = address_spans(raw)
    if not spans:
        return raw, []
    return _redacted(raw, spans), [_key(raw, start, end) for start, _, end in spans]


def redact_bounded(raw: bytes, max_bytes: int, max_keys: int) -> tuple[bytes, list[str], bool]:
    """:func:`redact_keyed` of at most the first ``max_bytes`` of the result and ``max_keys``
    addresses, cut before an address, never inside one (no clear piece of a local part is
    left); and whether anything was cut."""
    out = bytearray()
    keys: list[str] = []
    pos = 0
    for start, at, end in address_spans(raw):
        size = len(out) + (start - pos) + len(_REDACTED) + (end - at)
        if len(keys) >= max_keys or size > max_bytes:
            out += raw[pos : min(start, pos + max(0, max_bytes - len(out)))]
            return bytes(out), keys, True
        out += raw[pos:start]
        out += _REDACTED
        out += raw[at:end]
        keys.append(_key(raw, start, end))
        pos = end
    tail = raw[pos:]
    if len(out) + len(tail) > max_bytes:
        out += tail[: max(0, max_bytes - len(out))]
        return bytes(out), keys, True
    out += tail
    return bytes(out), keys, False
