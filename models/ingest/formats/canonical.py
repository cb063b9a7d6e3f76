"""Canonical events (docs/events.md) passed through: one JSON object per record (JSON Lines, or
a pretty-printed object), or a JSON array of them.

The events are not validated here (the worker does, with the rules of docs/events.md); they
are pseudonymised, so that the address does not leave the sender's host in clear: a
``recipient`` is replaced by ``recipient_key`` (the documented hash) and ``recipient_domain``
(the recipient's own domain, which wins over a given ``recipient_domain`` as in ingest).
Rejected here, as ingest would: a ``recipient`` that is not a string (``wrong_type``), longer
than 4,096 characters (``field_too_long``), or without ``@`` when no ``recipient_domain`` is
given (``bad_domain``). A blank ``recipient`` is dropped (blank is absent). Every other field,
known or not, is passed as it is.
"""

from __future__ import annotations

from typing import Any

from models.ingest.formats.base import Event, JsonParser, reject
from models.ingest.validate import MAX_FIELD_CHARS, Rejection, recipient_key


class CanonicalParser(JsonParser):
    """Canonical JSON events -> the same events, pseudonymised (see the module docstring)."""

    name = "canonical"

    def item(self, obj: Any, events: list[Event], rejections: list[Rejection], where: str) -> None:
        if not isinstance(obj, dict):
            rejections.append(reject("not_an_object", f"{where}{type(obj).__name__}"))
            return
        if "recipient" not in obj:
            events.append(obj)
            return
        rec = obj.pop("recipient")
        if rec is None or (isinstance(rec, str) and (not rec or rec.isspace())):
            events.append(obj)
            return
        if not isinstance(rec, str):
            rejections.append(reject("wrong_type", f"{where}recipient must be a string"))
            return
        if len(rec) > MAX_FIELD_CHARS:
            rejections.append(reject("field_too_long", f"{where}recipient longer than 4096"))
            return
        at = rec.rfind("@")
        if at >= 0:
            own = rec[at + 1 :].strip()
            if not own:
                rejections.append(reject("bad_domain", f"{where}recipient has no domain"))
                return
            obj["recipient_domain"] = own
        else:
            rdom = obj.get("recipient_domain")
            if not isinstance(rdom, str) or not rdom or rdom.isspace():
                rejections.append(reject("bad_domain", f"{where}recipient has no @domain"))
                return
        key = recipient_key(rec)
        given = obj.get("recipient_key")
        if isinstance(given, str) and given.strip() and given.strip().lower() != key:
            # as ingest would: the event names two recipients
            rejections.append(
                reject("bad_recipient_key", f"{where}recipient_key is not the recipient's")
            )
            return
        obj["recipient_key"] = key
        events.append(obj)
