"""Delivery status notifications (RFC 3464): the asynchronous bounces a receiver sends back
after it accepted a message, as they arrive in a bounce mailbox (one message per record: a
Maildir file, one message of an mbox, stdin).

A DSN is a ``multipart/report; report-type=delivery-status`` message whose
``message/delivery-status`` part holds one block of per-message fields (``Reporting-MTA``,
``Arrival-Date``) and one block per recipient (RFC 3464 section 2.3): ``Final-Recipient`` (else
``Original-Recipient``), ``Action``, ``Status``, ``Remote-MTA``, ``Diagnostic-Code``,
``Last-Attempt-Date``. Each recipient whose ``Action`` is ``failed`` becomes a ``bounced`` event,
``delayed`` a ``deferred`` one (``delivered``, ``relayed`` and ``expanded`` are skipped: no
failure to count), with ``dsn_action``, ``enhanced_code`` from ``Status``, ``response`` and
``smtp_code`` from ``Diagnostic-Code`` (its type, ``smtp;``, dropped), ``mx_host`` from
``Remote-MTA``, the phase when the text names it (``in reply to RCPT TO command``).

The time is the recipient's ``Last-Attempt-Date``, else the DSN's ``Date``. The returned
original message (``message/rfc822`` or ``text/rfc822-headers``) gives ``sender_domain`` (its
``From``), ``message_id`` (its ``Message-ID``) and, through ``headers``, ``tenant``,
``campaign``, ``pool`` and ``sending_ip`` (a KumoMTA ``X-KumoRef`` trace header is decoded too).
``message/global-delivery-status`` (RFC 6533) is read the same way.
"""

from __future__ import annotations

from models.ingest.formats.base import (
    Event,
    diagnostic_text,
    mta_name,
    phase_in_text,
    reject,
    reply_codes,
    status_code,
)
from models.ingest.formats.mail import (
    MailParser,
    blocks,
    field,
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

_STATUS_TYPES = ("message/delivery-status", "message/global-delivery-status")
_KIND = {"failed": "bounced", "delayed": "deferred"}
#: per-recipient fields: a block without any of them is the per-message block
_RECIPIENT_FIELDS = ("Final-Recipient", "Original-Recipient", "Action")


class DsnParser(MailParser):
    """RFC 3464 delivery status notifications -> one event per failed or delayed recipient (see
    the module docstring). ``headers``: canonical field -> the original message's headers read
    for it (default ``X-Tenant``, ``X-Campaign``)."""

    name = "dsn"

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        msg = parse_message(record)
        if isinstance(msg, Rejection):
            rejections.append(msg)
            return
        part = find_part(msg, _STATUS_TYPES)
        if part is None:
            rejections.append(reject("unparseable", "no message/delivery-status part"))
            return
        groups = blocks(part_text(part))
        per_message = None
        recipients = []
        for blk in groups:
            if any(blk.get(f) is not None for f in _RECIPIENT_FIELDS):
                recipients.append(blk)
            elif per_message is None:
                per_message = blk
        if not recipients:
            rejections.append(reject("missing_field", "no per-recipient block"))
            return
        original = original_headers(msg)
        trace = kumo_trace(original)
        extra = mapped(original, trace, self.headers)
        b = self.build
        sender = b.sender_domain(field(original, "From")) if original is not None else None
        mid = message_id(original)
        dsn_date = field(msg, "Date")
        for i, blk in enumerate(recipients):
            action_raw = field(blk, "Action") or ""
            action = action_raw.lower().split(" ", 1)[0].split("(", 1)[0]
            kind = _KIND.get(action)
            if kind is None:
                self.skip(f"Action: {action[:20] or 'none'}")
                continue
            last_attempt = field(blk, "Last-Attempt-Date")
            ts = report_time(last_attempt, dsn_date)
            if ts is None and (last_attempt or dsn_date):
                rejections.append(
                    reject("bad_timestamp", f"recipient {i}: Last-Attempt-Date, Date")
                )
                continue
            address = field(blk, "Final-Recipient") or field(blk, "Original-Recipient")
            diag = field(blk, "Diagnostic-Code")
            text = diagnostic_text(diag) if diag else None
            code, enh = reply_codes(text) if text else (None, None)
            made = b.event(
                kind,
                ts,
                address,
                message_id=mid,
                sender_domain=sender,
                sending_ip=extra.get("sending_ip"),
                pool=extra.get("pool"),
                tenant=extra.get("tenant"),
                campaign=extra.get("campaign"),
                mx_host=mta_name(field(blk, "Remote-MTA")),
                smtp_code=code,
                enhanced_code=status_code(field(blk, "Status")) or enh,
                response=text,
                smtp_command=phase_in_text(text) if text else None,
                dsn_action=action,
            )
            self.add(made, events, rejections, f"recipient {i}: ")
