"""KumoMTA log records (docs/reference/log_record.md of KumoMTA): one JSON object per line of
its local logs (``kumo.configure_local_logs``, zstd-compressed segments), one object per log
hook request, or a JSON array of them (batched log hooks, ``batch_size`` > 1).

| ``type`` | event | notes |
|---|---|---|
| ``Reception`` | ``sent`` | the message was accepted for delivery |
| ``Delivery`` | ``delivered`` | |
| ``TransientFailure`` | ``deferred`` | |
| ``Bounce`` | ``bounced`` | |
| ``Expiration`` | ``bounced`` | ``dsn_action`` ``expired`` |
| ``OOB`` | ``bounced`` (``deferred`` for a 4xx) | an out-of-band DSN, one record per recipient |
| ``Feedback`` | ``complained`` | recipient from the report's trace header or ``original_rcpto_to`` |
| ``Rejection`` | ``rejected`` | KumoMTA refused an injection (records without recipient skipped) |
| ``AdminBounce``, ``AdminRebind``, ``DeferredInjectionRebind``, ``Delayed``, ``XferOut``, ``XferIn`` | none | counted as skipped: no receiver verdict |

Fields: ``recipient`` (a string, or a list since 2025.12: one event each), ``id`` ->
``message_id``, ``queue`` (``campaign:tenant@domain!routing_domain``) -> ``campaign`` and
``tenant`` (``meta.tenant`` / ``meta.campaign`` win when logged), ``egress_pool`` -> ``pool``,
``source_address.address`` (or ``source_ips[egress_source]`` from the configuration) ->
``sending_ip``, ``peer_address.name`` -> ``mx_host`` (delivery side only), ``response.code``,
``response.enhanced_code``, ``response.content`` -> ``smtp_code``, ``enhanced_code``,
``response`` (``"<code> <x.y.z> <content>"``), ``response.command`` -> ``smtp_command``,
``headers.From`` (when the logger records it) else ``sender`` -> ``sender_domain``,
``event_time`` (else ``timestamp``) -> ``timestamp``.
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
    first_str,
    host_ip,
    pick,
    reject,
)
from models.ingest.validate import Rejection

_KIND = {
    "Reception": "sent",
    "Delivery": "delivered",
    "TransientFailure": "deferred",
    "Bounce": "bounced",
    "Expiration": "bounced",
    "OOB": "bounced",
    "Feedback": "complained",
    "Rejection": "rejected",
}
_SKIPPED = frozenset(
    {
        "AdminBounce",
        "AdminRebind",
        "DeferredInjectionRebind",
        "Delayed",
        "XferOut",
        "XferIn",
        "Any",
    }
)
#: the records written by the delivery side: their peer is the receiving MX and their
#: response is the receiver's
_DELIVERY_SIDE = frozenset({"Delivery", "TransientFailure", "Bounce", "Expiration", "OOB"})

DEFAULT_META: FieldMap = {"tenant": ("tenant",), "campaign": ("campaign",)}


def parse_queue(queue: object) -> tuple[str | None, str | None]:
    """(campaign, tenant) of a scheduled queue name ``campaign:tenant@domain!routing_domain``
    (KumoMTA docs/reference/queues.md); None where the name has no such part."""
    if not isinstance(queue, str) or "@" not in queue:
        return None, None
    q = queue.split("!", 1)[0]
    left = q[: q.rfind("@")]
    if ":" in left:
        campaign, tenant = left.rsplit(":", 1)
        return campaign or None, tenant or None
    return None, left or None


def _response(resp: object) -> tuple[int | None, str | None, str | None, str | None]:
    """(code, enhanced code, text, command) of a KumoMTA ``response`` object."""
    if not isinstance(resp, dict):
        return None, None, None, None
    code = resp.get("code")
    if not isinstance(code, int) or isinstance(code, bool):
        code = None
    enh = None
    e = resp.get("enhanced_code")
    if isinstance(e, dict):
        c, s, d = e.get("class"), e.get("subject"), e.get("detail")
        if all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in (c, s, d)):
            enh = f"{c}.{s}.{d}"
    content = resp.get("content")
    text = None
    if isinstance(content, str):
        parts = [str(code)] if code is not None else []
        if enh is not None:
            parts.append(enh)
        parts.append(content)
        text = " ".join(parts)
    command = resp.get("command")
    return code, enh, text, command if isinstance(command, str) else None


class KumoMtaParser(JsonParser):
    """KumoMTA JSON log records -> canonical events (see the module docstring).

    ``source_ips``: egress source name -> IP, for records without ``source_address`` (before
    2024.09); ``meta``: canonical field (``tenant``, ``campaign``, ``pool``) -> the ``meta``
    keys read for it (the logger's ``meta`` list must include them).
    """

    name = "kumomta"

    def __init__(
        self,
        *,
        source_ips: Mapping[str, str] | None = None,
        meta: Mapping[str, Iterable[str] | str] | None = None,
        loads: Callable[[bytes], Any] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(loads=loads, max_record_bytes=max_record_bytes)
        self.source_ips = dict(source_ips or {})
        self.meta = field_map(DEFAULT_META, meta)

    def item(self, rec: Any, events: list[Event], rejections: list[Rejection], where: str) -> None:
        if not isinstance(rec, dict):
            rejections.append(reject("not_an_object", f"{where}{type(rec).__name__}"))
            return
        rtype = rec.get("type")
        if not isinstance(rtype, str):
            rejections.append(reject("missing_field", f"{where}type"))
            return
        kind = _KIND.get(rtype)
        if kind is None:
            if rtype in _SKIPPED:
                self.skip(rtype)
            else:
                rejections.append(reject("unknown_event", f"{where}type {rtype[:40]!r}"))
            return
        ts = epoch(rec.get("event_time"))
        if ts is None:
            raw_ts = rec.get("timestamp")
            ts = epoch(raw_ts)
            if ts is None and raw_ts is not None:
                rejections.append(reject("bad_timestamp", f"{where}timestamp"))
                return
        b = self.build
        meta = rec.get("meta")
        meta = meta if isinstance(meta, dict) else {}
        campaign, tenant = parse_queue(rec.get("queue"))
        tenant = pick(meta, self.meta.get("tenant", ())) or tenant
        campaign = pick(meta, self.meta.get("campaign", ())) or campaign
        pool = pick(meta, self.meta.get("pool", ())) or rec.get("egress_pool")
        headers = rec.get("headers")
        sender = None
        if isinstance(headers, dict):
            sender = b.sender_domain(first_str(headers.get("From")))
        if sender is None:
            sender = b.sender_domain(rec.get("sender"))
        delivery_side = rtype in _DELIVERY_SIDE
        ip = None
        mx = None
        if delivery_side:
            src = rec.get("source_address")
            if isinstance(src, dict):
                ip = host_ip(src.get("address"))
            if ip is None:
                source = rec.get("egress_source")
                ip = self.source_ips.get(source) if isinstance(source, str) else None
            peer = rec.get("peer_address")
            if isinstance(peer, dict):
                name = peer.get("name")
                mx = name.rstrip(".") if isinstance(name, str) else None
        code = enh = text = command = None
        if rtype not in ("Reception", "Feedback"):  # those responses are KumoMTA's own 250
            code, enh, text, command = _response(rec.get("response"))
        action = None
        if rtype == "Expiration":
            action = "expired"
        elif rtype == "OOB" and code is not None and 400 <= code < 500:
            kind = "deferred"
        feedback_type = None
        recipients: Any = rec.get("recipient")
        if rtype == "Feedback":
            # the record's own sender, recipient, queue and meta are the feedback loop's
            # message's; what counts is in the report about the original message
            recipients, feedback_type, tenant, campaign, ip, sender = self._feedback(
                rec.get("feedback_report")
            )
            pool = None
        if isinstance(recipients, str):
            recipients = [recipients]
        elif not isinstance(recipients, list):
            recipients = []
        recipients = [r for r in recipients if isinstance(r, str) and r and not r.isspace()]
        if not recipients:
            if rtype == "Rejection":  # refused before RCPT TO: nothing to count
                self.skip("Rejection without recipient")
            else:
                rejections.append(reject("missing_field", f"{where}recipient"))
            return
        for r in recipients:
            made = b.event(
                kind,
                ts,
                r,
                message_id=rec.get("id"),
                sender_domain=sender,
                sending_ip=ip,
                pool=pool,
                tenant=tenant,
                campaign=campaign,
                mx_host=mx,
                smtp_code=code,
                enhanced_code=enh,
                response=text,
                feedback_type=feedback_type,
                smtp_command=command,
                dsn_action=action,
            )
            self.add(made, events, rejections, where)

    def _feedback(
        self, report: object
    ) -> tuple[list[str], str | None, Any, Any, str | None, str | None]:
        """(recipients, feedback type, tenant, campaign, source IP, sender domain) of a
        Feedback record's ``feedback_report``. The complaining recipient is the original
        message's: from the decoded trace header (``supplemental_trace.recipient``, with its
        ``tenant`` and ``campaign`` when the listener's ``include_meta_names`` put them
        there), else ``original_rcpto_to`` (the field's spelling in KumoMTA), else the
        ``removal-recipient`` extension. The sender is ``original_mail_from``."""
        tenant = campaign = None
        if not isinstance(report, dict):
            return [], None, None, None, None, None
        recipients: list[str] = []
        trace = report.get("supplemental_trace")
        if isinstance(trace, dict):
            r = trace.get("recipient")
            if isinstance(r, str):
                recipients = [r]
            tenant = trace.get("tenant")
            campaign = trace.get("campaign")
        if not recipients:
            for key in ("original_rcpto_to", "original_rcpt_to"):
                v = report.get(key)
                if isinstance(v, list):
                    recipients = [x for x in v if isinstance(x, str)]
                if recipients:
                    break
        if not recipients:
            ext = report.get("extensions")
            if isinstance(ext, dict):
                v = ext.get("removal-recipient")
                if isinstance(v, list):
                    recipients = [x for x in v if isinstance(x, str)]
        ft = report.get("feedback_type")
        ip = host_ip(report.get("source_ip"))
        sender = self.build.sender_domain(report.get("original_mail_from"))
        feedback_type = ft.lower() if isinstance(ft, str) else None
        return recipients, feedback_type, tenant, campaign, ip, sender
