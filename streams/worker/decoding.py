"""Decoding of canonical events (docs/events.md) for the ingest Pipeline.

``ingest_pipeline`` builds the Pipeline the worker and ``repmon replay`` use: orjson for the
general path, and a strict msgspec decoder for ``Pipeline.feed_many``'s fast path. The strict
decoder turns a message straight into a ``CanonicalEvent`` with one slot per field and checks
the JSON type of every field while parsing (in C). It refuses an unknown field, a wrong type, or
a missing event or timestamp; the Pipeline then takes the general path for that chunk, which
counts unknown fields and names each rejection. Values of the right JSON type are the
Pipeline's to judge on either path: blank strings, and ``smtp_code`` as a string (three digits
are a code, anything else is refused by the Pipeline with the same verdict as on the general
path); so are the spellings of the reply context (``smtp_command``, ``dsn_action``), which
the Pipeline ignores and counts, never rejects, when it does not recognise them. models/ stays
free of msgspec: it only sees a decode function and objects with attributes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import orjson

from models.ingest.pipeline import Pipeline


class CanonicalEvent(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fields of docs/events.md with their JSON types; absent optional fields are None."""

    event: str
    timestamp: float | str
    message_id: str | None = None
    recipient: str | None = None
    recipient_key: str | None = None
    recipient_domain: str | None = None
    sender_domain: str | None = None
    sending_ip: str | None = None
    pool: str | None = None
    tenant: str | None = None
    campaign: str | None = None
    mx_host: str | None = None
    smtp_code: int | str | None = None  # a string: digits or blank, checked by the Pipeline
    enhanced_code: str | None = None
    response: str | None = None
    feedback_type: str | None = None
    # the reply context: any string, made canonical (or ignored and counted) by the Pipeline;
    # another JSON type sends the chunk down the general path, which ignores and counts it
    smtp_command: str | None = None
    dsn_action: str | None = None


def typed_loads() -> Callable[[bytes], Any]:
    """A strict decoder of one message into a CanonicalEvent (raises on anything else)."""
    return msgspec.json.Decoder(CanonicalEvent).decode


def ingest_pipeline(*args: Any, **kwargs: Any) -> Pipeline:
    """A Pipeline with orjson and the strict fast-path decoder (other arguments passed on)."""
    kwargs.setdefault("loads", orjson.loads)
    kwargs.setdefault("typed_loads", typed_loads())
    return Pipeline(*args, **kwargs)
