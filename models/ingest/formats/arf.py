"""Abuse feedback reports (ARF, RFC 5965): the complaints a mailbox provider's feedback loop
sends back, one message per record (a Maildir file, one message of an mbox, stdin).

An ARF report is a ``multipart/report; report-type=feedback-report`` message whose
``message/feedback-report`` part holds ``Feedback-Type``, ``User-Agent``, ``Version`` and the
optional ``Original-Mail-From``, ``Original-Rcpt-To``, ``Arrival-Date``, ``Source-IP``,
``Reported-Domain`` ...; its third part is the original message (``message/rfc822``) or its
headers (``text/rfc822-headers``). Each report is one ``complained`` event per complaining
recipient, with ``feedback_type`` (``abuse``, ``fraud``, ``not-spam``, ...).

The complaining recipient is often redacted (RFC 6590) or left out: it is taken from the first
of ``Original-Rcpt-To``, the original message's KumoMTA trace header (``X-KumoRef``), the
original message's ``recipient_headers`` (configurable, e.g. a header the sender adds with the
recipient), ``Removal-Recipient``, and the original message's ``To`` when it names one address
(``use_original_to``). A report without any is rejected as ``missing_field``.

Time: ``Arrival-Date`` (``Received-Date`` in early drafts), else the report's ``Date``. The
original message gives ``sender_domain`` (its ``From``, the DMARC identity; else
``Original-Mail-From``), ``message_id``, and through ``headers`` the ``tenant``, ``campaign``,
``pool`` (default headers ``X-Tenant``, ``X-Campaign``); ``Source-IP`` is the ``sending_ip``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from email.message import Message
from email.utils import getaddresses
from typing import Any

from models.ingest.formats.base import Event, reject
from models.ingest.formats.mail import (
    MailParser,
    blocks,
    field,
    fields,
    find_part,
    kumo_trace,
    mapped,
    message_id,
    original_headers,
    parse_message,
    part_text,
    report_time,
)
from models.ingest.validate import Rejection

_REPORT_TYPES = ("message/feedback-report",)


class ArfParser(MailParser):
    """RFC 5965 feedback reports -> ``complained`` events (see the module docstring).

    ``headers``: canonical field -> the original message's headers read for it;
    ``recipient_headers``: original message headers that carry the recipient's address;
    ``use_original_to``: take the original ``To`` when it is one address (default True).
    """

    name = "arf"

    def __init__(
        self,
        *,
        headers: Mapping[str, Iterable[str] | str] | None = None,
        recipient_headers: Iterable[str] = (),
        use_original_to: bool = True,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(headers=headers, max_record_bytes=max_record_bytes)
        self.recipient_headers = tuple(recipient_headers)
        self.use_original_to = use_original_to

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        msg = parse_message(record)
        if isinstance(msg, Rejection):
            rejections.append(msg)
            return
        part = find_part(msg, _REPORT_TYPES)
        if part is None:
            rejections.append(reject("unparseable", "no message/feedback-report part"))
            return
        report_blocks = blocks(part_text(part))
        if not report_blocks:
            rejections.append(reject("unparseable", "empty feedback report"))
            return
        report = report_blocks[0]
        original = original_headers(msg)
        trace = kumo_trace(original)
        recipients = self._recipients(report, original, trace)
        if not recipients:
            rejections.append(reject("missing_field", "recipient (none in the report)"))
            return
        arrival = field(report, "Arrival-Date") or field(report, "Received-Date")
        date = field(msg, "Date")
        ts = report_time(arrival, date)
        if ts is None and (arrival or date):
            rejections.append(reject("bad_timestamp", "Arrival-Date, Date"))
            return
        extra = mapped(original, trace, self.headers)
        b = self.build
        sender = b.sender_domain(field(original, "From")) if original is not None else None
        if sender is None:
            sender = b.sender_domain(field(report, "Original-Mail-From"))
        ftype = field(report, "Feedback-Type")
        mid = message_id(original)
        for address in recipients:
            made = b.event(
                "complained",
                ts,
                address,
                message_id=mid,
                sender_domain=sender,
                sending_ip=extra.get("sending_ip") or field(report, "Source-IP"),
                pool=extra.get("pool"),
                tenant=extra.get("tenant"),
                campaign=extra.get("campaign"),
                feedback_type=ftype.lower() if ftype else None,
            )
            self.add(made, events, rejections)

    def _recipients(
        self, report: Message, original: Message | None, trace: dict[str, Any]
    ) -> list[str]:
        """The complaining recipients, from the first source that names one."""
        found = [r for r in fields(report, "Original-Rcpt-To") if r]
        if found:
            return found
        r = trace.get("recipient")
        if isinstance(r, str) and r:
            return [r]
        if original is not None:
            for h in self.recipient_headers:
                v = field(original, h)
                if v:
                    return [v]
        found = [r for r in fields(report, "Removal-Recipient") if r]
        if found:
            return found
        if self.use_original_to and original is not None:
            to = field(original, "To")
            if to:
                addrs = [a for _, a in getaddresses([to]) if "@" in a]
                if len(addrs) == 1:
                    return addrs
        return []
