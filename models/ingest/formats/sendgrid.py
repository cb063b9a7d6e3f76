"""SendGrid Event Webhook batches (SendGrid docs, "Event Webhook Reference"): each POST body is a
JSON array of event objects (a single object is accepted too).

| ``event`` | event | notes |
|---|---|---|
| ``processed`` | ``sent`` | |
| ``delivered`` | ``delivered`` | ``response`` (``250 OK``) |
| ``deferred`` | ``deferred`` | ``response`` |
| ``bounce`` (``type`` ``bounce`` or ``blocked``) | ``bounced`` | ``reason`` -> ``response``, ``status`` -> ``enhanced_code`` |
| ``dropped`` | ``rejected`` | SendGrid did not send (``reason``: ``Bounced Address``, ...) |
| ``spamreport`` | ``complained`` | ``feedback_type`` ``abuse`` |
| ``unsubscribe``, ``group_unsubscribe`` | ``unsubscribed`` | |
| ``open``, ``click`` | ``opened``, ``clicked`` | |
| ``group_resubscribe`` | none | skipped |

Fields: ``email`` -> the recipient, ``timestamp`` (epoch seconds; a digit string and epoch
milliseconds are accepted, as two documented examples send them) -> ``timestamp``, ``sg_message_id`` (else ``smtp-id``) ->
``message_id``, ``ip`` -> ``sending_ip`` for delivery events (for opens and clicks it is the
reader's address: not used), ``pool.name`` -> ``pool``. Custom and unique arguments arrive as
top-level keys: ``fields`` maps ``tenant``, ``campaign`` and ``sender_domain`` to them (defaults:
``tenant``; ``campaign``, ``marketing_campaign_name``, ``singlesend_name``, ``category`` (its
first value); none).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from models.ingest.formats.base import (
    Event,
    FieldMap,
    JsonParser,
    epoch,
    field_map,
    pick,
    reject,
    reply_codes,
    status_code,
)
from models.ingest.validate import Rejection

DEFAULT_FIELDS: FieldMap = {
    "tenant": ("tenant",),
    "campaign": ("campaign", "marketing_campaign_name", "singlesend_name", "category"),
    "sender_domain": (),
}

_KIND = {
    "processed": "sent",
    "delivered": "delivered",
    "deferred": "deferred",
    "bounce": "bounced",
    "blocked": "bounced",
    "dropped": "rejected",
    "spamreport": "complained",
    "unsubscribe": "unsubscribed",
    "group_unsubscribe": "unsubscribed",
    "open": "opened",
    "click": "clicked",
}
_SKIPPED = frozenset({"group_resubscribe"})
#: a timestamp this large is in milliseconds (as seconds it would be after the year 33000)
_MS_THRESHOLD = 1e12
#: events whose ``ip`` is the sending IP (for opens and clicks it is the reader's)
_SENDING_IP_KINDS = frozenset({"sent", "delivered", "deferred", "bounced", "rejected"})


class SendGridParser(JsonParser):
    """SendGrid Event Webhook batches -> canonical events (see the module docstring).

    ``fields``: canonical field (``tenant``, ``campaign``, ``sender_domain``) -> the event keys
    (custom arguments) read for it, first non-empty wins.
    """

    name = "sendgrid"

    def __init__(
        self,
        *,
        fields: Mapping[str, Iterable[str] | str] | None = None,
        loads: Callable[[bytes], Any] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(loads=loads, max_record_bytes=max_record_bytes)
        self.fields = field_map(DEFAULT_FIELDS, fields)

    def item(self, ev: Any, events: list[Event], rejections: list[Rejection], where: str) -> None:
        if not isinstance(ev, dict):
            rejections.append(reject("not_an_object", f"{where}{type(ev).__name__}"))
            return
        name = ev.get("event")
        if not isinstance(name, str) or not name:
            rejections.append(reject("missing_field", f"{where}event"))
            return
        low = name.lower()
        kind = _KIND.get(low)
        if kind is None:
            if low in _SKIPPED:
                self.skip(low)
            else:
                rejections.append(reject("unknown_event", f"{where}event {name[:40]!r}"))
            return
        raw_ts = ev.get("timestamp")
        if isinstance(raw_ts, str) and raw_ts.isascii() and raw_ts.isdigit():
            raw_ts = int(raw_ts)
        if isinstance(raw_ts, int | float) and raw_ts >= _MS_THRESHOLD:
            raw_ts = raw_ts / 1000  # milliseconds, as in the documented Single Send example
        ts = epoch(raw_ts)
        if ts is None and raw_ts is not None:
            rejections.append(reject("bad_timestamp", f"{where}timestamp"))
            return
        text = ev.get("response") if kind in ("delivered", "deferred") else ev.get("reason")
        code: int | None = None
        enh: str | None = None
        if isinstance(text, str):
            code, enh = reply_codes(text)
        else:
            text = None
        pool = ev.get("pool")
        b = self.build
        made = b.event(
            kind,
            ts,
            ev.get("email"),
            message_id=ev.get("sg_message_id") or ev.get("smtp-id"),
            sender_domain=b.sender_domain(pick(ev, self.fields.get("sender_domain", ()))),
            sending_ip=ev.get("ip") if kind in _SENDING_IP_KINDS else None,
            pool=pool.get("name") if isinstance(pool, dict) else None,
            tenant=pick(ev, self.fields.get("tenant", ())),
            campaign=pick(ev, self.fields.get("campaign", ())),
            smtp_code=code,
            enhanced_code=status_code(ev.get("status")) or enh,
            response=text,
            feedback_type="abuse" if kind == "complained" else None,
        )
        self.add(made, events, rejections, where)
