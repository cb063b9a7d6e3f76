"""Dead letters of ``repmon gateway``: a refused record or batch item, redacted as
``repmon ingest`` redacts its own (:mod:`streams.redaction`: every address ``redacted@<domain>``,
the recipient key of each, in order, for ``repmon dlq redrive``), and cut at 1 MiB or 10,000
addresses, before an address."""

from __future__ import annotations

from models.ingest.validate import Rejection
from streams.redaction import redact, redact_bounded
from streams.worker.wire import dlq_record

#: a dead letter keeps at most this much of its original (as dlq_record does) and this many
#: address keys, so that it stays far below the dead-letter topic's 4 MiB message limit
MAX_ORIGINAL_BYTES = 1 << 20
MAX_ADDRESS_KEYS = 10_000


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
