"""Amazon SES sending events: event publishing records (``eventType``; Amazon SES Developer
Guide, "Contents of event data that Amazon SES publishes to Amazon SNS / Firehose") and
identity notifications (``notificationType``; "Amazon SNS notification contents"), raw (JSON
Lines from Firehose, SNS raw message delivery), inside an SNS envelope (``"Type":
"Notification"`` whose ``Message`` is the record as a JSON string), or inside an EventBridge
event (``detail``). A JSON array of any of these is a batch.

| type | event | recipients | time |
|---|---|---|---|
| ``Send`` | ``sent`` | ``mail.destination`` | ``mail.timestamp`` |
| ``Delivery`` | ``delivered`` | ``delivery.recipients`` | ``delivery.timestamp`` |
| ``DeliveryDelay`` | ``deferred`` | ``deliveryDelay.delayedRecipients`` | its ``timestamp`` |
| ``Bounce`` | ``bounced`` (``rejected`` for the subtypes ``Suppressed`` and ``OnAccountSuppressionList``: SES did not send) | ``bounce.bouncedRecipients`` | ``bounce.timestamp`` |
| ``Complaint`` | ``complained`` | ``complaint.complainedRecipients`` | ``complaint.timestamp`` |
| ``Reject`` | ``rejected`` | ``mail.destination`` | ``mail.timestamp`` |
| ``Open``, ``Click`` | ``opened``, ``clicked`` | ``mail.destination`` | its ``timestamp`` |
| ``Subscription`` | ``unsubscribed`` when ``unsubscribeAll`` or a topic is ``OptOut`` | ``mail.destination`` | its ``timestamp`` |
| ``Rendering Failure``, SNS ``SubscriptionConfirmation`` | none | | |

Per recipient: ``status`` -> ``enhanced_code``, ``diagnosticCode`` (``smtp; 550 5.1.1 ...``)
-> ``response`` and ``smtp_code``, ``action`` -> ``dsn_action`` (``delayed`` for delays).
``delivery.smtpResponse`` -> ``response``; ``mail.messageId`` -> ``message_id``; the tag
``ses:outgoing-ip`` -> ``sending_ip`` (``ses:source-ip`` is the caller's address, not used);
``ses:from-domain`` (else ``commonHeaders.from``, else ``mail.source``) -> ``sender_domain``;
``complaintFeedbackType`` -> ``feedback_type``; the tags named in ``tags`` (default ``tenant``,
``campaign``, ``pool``) -> those fields. Open and click events of a message with several
recipients cannot tell which one acted: each destination gets the event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

from models.ingest.formats.base import (
    Event,
    FieldMap,
    JsonParser,
    diagnostic_text,
    epoch,
    field_map,
    first_str,
    pick,
    reject,
    reply_codes,
    status_code,
)
from models.ingest.validate import Rejection

DEFAULT_TAGS: FieldMap = {"tenant": ("tenant",), "campaign": ("campaign",), "pool": ("pool",)}

#: type -> (event, the key of its object)
_TYPES = {
    "Send": ("sent", "send"),
    "Delivery": ("delivered", "delivery"),
    "DeliveryDelay": ("deferred", "deliveryDelay"),
    "Bounce": ("bounced", "bounce"),
    "Complaint": ("complained", "complaint"),
    "Reject": ("rejected", "reject"),
    "Open": ("opened", "open"),
    "Click": ("clicked", "click"),
    "Subscription": ("unsubscribed", "subscription"),
}
_SKIPPED = frozenset({"Rendering Failure", "RenderingFailure", "AmazonSnsSubscriptionSucceeded"})
_SUPPRESSED = frozenset({"Suppressed", "OnAccountSuppressionList"})
_SNS_SKIPPED = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


def _addresses(items: object, key: str | None = "emailAddress") -> list[tuple[str, dict[str, Any]]]:
    """(address, its object) of a list of recipient objects (or of plain strings when ``key``
    is None)."""
    out: list[tuple[str, dict[str, Any]]] = []
    if not isinstance(items, list):
        return out
    for it in items:
        if key is None and isinstance(it, str):
            out.append((it, {}))
        elif key is not None and isinstance(it, dict) and isinstance(it.get(key), str):
            out.append((it[key], it))
    return out


class SesParser(JsonParser):
    """Amazon SES events -> canonical events (see the module docstring).

    ``tags``: canonical field (``tenant``, ``campaign``, ``pool``) -> the message tag names read
    for it (set with the ``X-SES-MESSAGE-TAGS`` header or the API's ``Tags``).
    """

    name = "ses"

    def __init__(
        self,
        *,
        tags: Mapping[str, Iterable[str] | str] | None = None,
        loads: Callable[[bytes], Any] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(loads=loads, max_record_bytes=max_record_bytes)
        self.tags = field_map(DEFAULT_TAGS, tags)

    def item(self, doc: Any, events: list[Event], rejections: list[Rejection], where: str) -> None:
        if not isinstance(doc, dict):
            rejections.append(reject("not_an_object", f"{where}{type(doc).__name__}"))
            return
        sns_type = doc.get("Type")
        if isinstance(sns_type, str) and "TopicArn" in doc:  # an SNS envelope
            if sns_type in _SNS_SKIPPED:
                self.skip(f"SNS {sns_type}")
                return
            message = doc.get("Message")
            if not isinstance(message, str):
                rejections.append(reject("missing_field", f"{where}SNS Message"))
                return
            try:
                doc = self.loads(message.encode("utf-8", "surrogatepass"))
            except (ValueError, RecursionError) as exc:
                rejections.append(reject("bad_json", f"{where}SNS Message: {exc}"))
                return
            if not isinstance(doc, dict):
                rejections.append(reject("not_an_object", f"{where}SNS Message"))
                return
        elif isinstance(doc.get("detail"), dict) and "detail-type" in doc:  # EventBridge
            doc = doc["detail"]
        self._event(doc, events, rejections, where)

    def _event(
        self, doc: dict[str, Any], events: list[Event], rejections: list[Rejection], where: str
    ) -> None:
        etype = doc.get("eventType", doc.get("notificationType"))
        if not isinstance(etype, str):
            rejections.append(reject("missing_field", f"{where}eventType"))
            return
        spec = _TYPES.get(etype)
        if spec is None:
            if etype in _SKIPPED:
                self.skip(etype)
            else:
                rejections.append(reject("unknown_event", f"{where}eventType {etype[:40]!r}"))
            return
        kind, key = spec
        mail = doc.get("mail")
        if not isinstance(mail, dict):
            rejections.append(reject("missing_field", f"{where}mail"))
            return
        obj = doc.get(key)
        obj = obj if isinstance(obj, dict) else {}
        b = self.build
        tags = mail.get("tags")
        tags = tags if isinstance(tags, dict) else {}
        common = mail.get("commonHeaders")
        common = common if isinstance(common, dict) else {}
        sender = b.sender_domain(first_str(tags.get("ses:from-domain")))
        if sender is None:
            sender = b.sender_domain(first_str(common.get("from")) or mail.get("source"))
        raw_ts = obj.get("timestamp") if kind not in ("sent", "rejected") else None
        if raw_ts is None:
            raw_ts = mail.get("timestamp")
        ts = epoch(raw_ts)
        if ts is None and raw_ts is not None:
            rejections.append(reject("bad_timestamp", f"{where}timestamp"))
            return
        response = None
        code: int | None = None
        enh: str | None = None
        feedback_type = None
        action = None
        if kind == "delivered":
            recipients = _addresses(obj.get("recipients"), None)
            response = obj.get("smtpResponse")
        elif kind == "deferred":
            recipients = _addresses(obj.get("delayedRecipients"))
            action = "delayed"
            delay_type = obj.get("delayType")
            response = delay_type if isinstance(delay_type, str) else None
        elif kind == "bounced":
            recipients = _addresses(obj.get("bouncedRecipients"))
            subtype = obj.get("bounceSubType")
            if isinstance(subtype, str) and subtype in _SUPPRESSED:
                kind = "rejected"
        elif kind == "complained":
            recipients = _addresses(obj.get("complainedRecipients"))
            ft = obj.get("complaintFeedbackType")
            feedback_type = ft.lower() if isinstance(ft, str) else None
        else:
            recipients = _addresses(mail.get("destination"), None)
            if kind == "rejected":
                response = obj.get("reason")
            elif kind == "unsubscribed" and not _unsubscribes(obj):
                self.skip("Subscription (not an opt-out)")
                return
        if isinstance(response, str):
            code, enh = reply_codes(response)
        if not recipients:
            rejections.append(reject("missing_field", f"{where}recipient"))
            return
        engagement = kind in ("opened", "clicked", "unsubscribed")
        ip = None if engagement else first_str(tags.get("ses:outgoing-ip"))
        tenant = pick(tags, self.tags.get("tenant", ()))
        campaign = pick(tags, self.tags.get("campaign", ()))
        pool = pick(tags, self.tags.get("pool", ()))
        for address, r in recipients:
            r_response, r_code, r_enh = response, code, enh
            diag = r.get("diagnosticCode")
            if isinstance(diag, str) and diag.strip():
                r_response = diagnostic_text(diag)
                r_code, r_enh = reply_codes(r_response)
            r_action = r.get("action")
            made = b.event(
                kind,
                ts,
                address,
                message_id=mail.get("messageId"),
                sender_domain=sender,
                sending_ip=ip,
                pool=pool,
                tenant=tenant,
                campaign=campaign,
                smtp_code=r_code,
                enhanced_code=status_code(r.get("status")) or r_enh,
                response=r_response,
                feedback_type=feedback_type,
                dsn_action=r_action if isinstance(r_action, str) else action,
            )
            self.add(made, events, rejections, where)


def _unsubscribes(sub: dict[str, Any]) -> bool:
    """Whether a Subscription event is an opt-out: from all topics, or from one."""
    prefs = sub.get("newTopicPreferences")
    if not isinstance(prefs, dict):
        return False
    if prefs.get("unsubscribeAll") is True:
        return True
    topics = prefs.get("topicSubscriptionStatus")
    return isinstance(topics, list) and any(
        isinstance(t, dict) and t.get("subscriptionStatus") == "OptOut" for t in topics
    )
