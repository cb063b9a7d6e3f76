"""Dead letters of ``repmon gateway`` without a clear address, in linear time.

:func:`redact_keyed` gives what ``streams.cli.ingest.redact_keyed`` gives (the same addresses
replaced by ``redacted@<domain>``, the recipient key of each, in order: ``repmon dlq redrive``
restores them from ``address_keys``) but finds the addresses from their ``@`` instead of with
one regular expression over the whole record: that expression restarts at every byte of a long
run of local-part characters with no ``@`` after it, which makes a 1 MiB record of letters take
hours (quadratic). Here every byte is looked at a bounded number of times.

An address is what ingest's expression matches: one or more local-part characters
(``A-Za-z0-9.!#$%&'*+/=?^_`{|}~-`` and any byte >= 0x80, for SMTPUTF8), ``@``, and a domain
``[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?``; leftmost first, none overlapping.
"""

from __future__ import annotations

import re

from models.ingest.validate import Rejection, recipient_key
from streams.worker.wire import dlq_record

_LOCAL = frozenset(
    b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789.!#$%&'*+/=?^_`{|}~-"
) | frozenset(range(0x80, 0x100))
_DOMAIN = re.compile(rb"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?")
#: a dead letter keeps at most this much of its original (as dlq_record does) and this many
#: address keys, so that it stays far below the dead-letter topic's 4 MiB message limit
MAX_ORIGINAL_BYTES = 1 << 20
MAX_ADDRESS_KEYS = 10_000
#: an @ that may start a domain
_AT = re.compile(rb"@(?=[A-Za-z0-9])")


def address_spans(raw: bytes) -> list[tuple[int, int, int]]:
    """(start, position of the @, end) of every address in ``raw``, left to right."""
    spans: list[tuple[int, int, int]] = []
    done = 0  # the bytes before it belong to an earlier address or to none
    local = _LOCAL
    for at in _AT.finditer(raw):
        i = at.start()
        if i < done:
            continue
        j = i
        while j > done and raw[j - 1] in local:
            j -= 1
        if j == i:  # no local part: not an address, and nothing scanned
            continue
        m = _DOMAIN.match(raw, i + 1)
        assert m is not None  # the lookahead saw a letter or digit
        spans.append((j, i, m.end()))
        done = m.end()
    return spans


def redact_keyed(raw: bytes) -> tuple[bytes, list[str]]:
    """``raw`` with every address replaced by ``redacted@<its domain>``, and the recipient key
    (docs/events.md) of each address replaced, in order."""
    spans = address_spans(raw)
    if not spans:
        return raw, []
    out: list[bytes] = []
    keys: list[str] = []
    pos = 0
    for start, at, end in spans:
        out.append(raw[pos:start])
        out.append(b"redacted@" + raw[at + 1 : end])
        keys.append(recipient_key(raw[start:end].decode("utf-8", "replace")))
        pos = end
    out.append(raw[pos:])
    return b"".join(out), keys


def redact_bounded(raw: bytes, max_bytes: int, max_keys: int) -> tuple[bytes, list[str], bool]:
    """:func:`redact_keyed` of at most the first ``max_bytes`` of the result and ``max_keys``
    addresses, cut before an address, never inside one (no clear piece of a local part is
    left); and whether anything was cut."""
    out = bytearray()
    keys: list[str] = []
    pos = 0
    for start, at, end in address_spans(raw):
        if len(keys) >= max_keys or len(out) + (start - pos) + 9 + (end - at - 1) > max_bytes:
            out += raw[pos : min(start, pos + max(0, max_bytes - len(out)))]
            return bytes(out), keys, True
        out += raw[pos:start]
        out += b"redacted@"
        out += raw[at + 1 : end]
        keys.append(recipient_key(raw[start:end].decode("utf-8", "replace")))
        pos = end
    tail = raw[pos:]
    if len(out) + len(tail) > max_bytes:
        out += tail[: max(0, max_bytes - len(out))]
        return bytes(out), keys, True
    out += tail
    return bytes(out), keys, False


def redact(raw: bytes) -> bytes:
    """``raw`` with every address replaced by ``redacted@<its domain>``."""
    return redact_keyed(raw)[0]


def dead_letter(
    rej: Rejection, rec: bytes, source: str, number: int, fmt: str, **extra: object
) -> bytes:
    """The dead-letter value of a refused record or batch item, as ``repmon ingest`` writes it
    (``streams.worker.wire.dlq_record``: reason, detail and original redacted, the redacted
    addresses' keys in ``address_keys``, ``offset`` the record's number in the request). The
    original is cut at 1 MiB or 10,000 addresses, before an address (``original_truncated``,
    ``original_bytes`` the whole record's size)."""
    raw, keys, cut = redact_bounded(rec, MAX_ORIGINAL_BYTES, MAX_ADDRESS_KEYS)
    clean = Rejection(rej.reason, redact(rej.detail.encode()).decode("utf-8", "replace"))
    return dlq_record(
        clean,
        raw,
        source,
        -1,
        number,
        format=fmt,
        offset_unit="record",
        redacted=len(keys),
        address_keys=keys,
        original_truncated=cut,
        original_bytes=len(rec),
        **extra,
    )
