"""PowerMTA accounting files in CSV (PowerMTA User's Guide, "Accounting records" and "The CSV
accounting file format"): RFC 4180 CSV whose first line names the columns (``type,timeLogged,
orig,rcpt,...``), one record per recipient, the first column always the record type. The parser
is driven by that header: columns are found by name, whatever the ``record-fields``
configuration wrote, and a header line met later (a rotated file) replaces it.

| ``type`` | event | notes |
|---|---|---|
| ``d`` (delivered) | ``delivered`` | |
| ``b`` (bounced) | ``bounced`` | ``bounceCat`` ``message-expired``: ``dsn_action`` ``expired`` |
| ``t`` (transient) | ``deferred`` | |
| ``r`` (received) | ``sent`` | |
| ``f`` (feedback loop) | ``complained`` | ``feedbackType`` -> ``feedback_type`` |
| ``rb`` (remote bounce) | ``bounced`` | an asynchronous DSN PowerMTA processed |
| ``rs`` (remote status) | by ``dsnAction``: failed -> ``bounced``, delayed -> ``deferred`` | others skipped |
| ``tq`` (transient queue) | none | a queue-level record without recipient |

Columns: ``timeLogged`` -> ``timestamp`` (``YYYY-MM-DD HH:MM:SS+ZZZZ``, ISO 8601, or epoch
seconds), ``rcpt`` -> the recipient, ``dsnStatus`` -> ``enhanced_code`` (``5.1.1 (bad
destination mailbox address)``), ``dsnDiag`` (``smtp;550 5.1.1 ...``) -> ``response`` and
``smtp_code``, ``dsnMta`` -> ``mx_host``, ``dsnAction`` -> ``dsn_action``, ``dlvSourceIp`` ->
``sending_ip``, ``vmtaPool`` (else ``vmta``) -> ``pool``, ``jobId`` -> ``campaign``,
``header_From`` (else ``orig``) -> ``sender_domain``, ``header_Message-Id`` -> ``message_id``;
``columns`` in the configuration changes any of these (``tenant`` has no default).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from typing import Any

from models.ingest.formats.base import (
    Event,
    FieldMap,
    Parser,
    diagnostic_text,
    epoch,
    field_map,
    mta_name,
    reject,
    reply_codes,
    status_code,
)
from models.ingest.validate import Rejection

#: the columns PowerMTA writes for d and b records by default (used until a header is read)
DEFAULT_HEADER = (
    "type",
    "timeLogged",
    "timeQueued",
    "orig",
    "rcpt",
    "orcpt",
    "dsnAction",
    "dsnStatus",
    "dsnDiag",
    "dsnMta",
    "bounceCat",
    "srcType",
    "srcMta",
    "dlvType",
    "dlvSourceIp",
    "dlvDestinationIp",
    "dlvEsmtpAvailable",
    "dlvSize",
    "vmta",
    "jobId",
    "envId",
    "queue",
    "vmtaPool",
)

DEFAULT_COLUMNS: FieldMap = {
    "timestamp": ("timeLogged",),
    "recipient": ("rcpt",),
    "sender_domain": ("header_From", "orig"),
    "message_id": ("header_Message-Id", "header_Message-ID", "header_message-id"),
    "sending_ip": ("dlvSourceIp",),
    "pool": ("vmtaPool", "vmta"),
    "campaign": ("jobId",),
    "tenant": (),
    "mx_host": ("dsnMta",),
    "enhanced_code": ("dsnStatus",),
    "response": ("dsnDiag",),
    "dsn_action": ("dsnAction",),
    "bounce_category": ("bounceCat",),
    "feedback_type": ("feedbackType",),
}

_KIND = {
    "d": "delivered",
    "delivery": "delivered",
    "b": "bounced",
    "bounce": "bounced",
    "t": "deferred",
    "transient": "deferred",
    "r": "sent",
    "receive": "sent",
    "received": "sent",
    "f": "complained",
    "feedback": "complained",
    "feedback-loop": "complained",
    "rb": "bounced",
    "remote-bounce": "bounced",
}
_SKIPPED = frozenset({"tq", "transient-queue"})
_RS_ACTION = {"failed": "bounced", "delayed": "deferred"}


class PowerMtaParser(Parser):
    """PowerMTA CSV accounting records -> canonical events (see the module docstring).

    ``columns``: canonical field -> the CSV columns read for it, first non-empty wins
    (``{"tenant": "header_X-Tenant"}``); ``header``: the column names to assume until the file's
    own header line is read (default: PowerMTA's default d/b columns).
    """

    name = "powermta"

    def __init__(
        self,
        *,
        columns: Mapping[str, Iterable[str] | str] | None = None,
        header: Iterable[str] | None = None,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.columns = field_map(DEFAULT_COLUMNS, columns)
        self._set_header(list(header if header is not None else DEFAULT_HEADER))

    def _set_header(self, names: list[str]) -> None:
        self.header = [n.strip() for n in names]
        index: dict[str, int] = {}
        for i, n in enumerate(self.header):  # column names compare without case
            index.setdefault(n.lower(), i)
        #: canonical field -> column indexes, in preference order
        self._idx: dict[str, tuple[int, ...]] = {
            f: tuple(index[c.lower()] for c in cols if c.lower() in index)
            for f, cols in self.columns.items()
        }

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        line = record.decode("utf-8", "replace")
        if '"' in line:
            try:
                row = next(csv.reader([line]), [])
            except csv.Error as exc:
                rejections.append(reject("unparseable", f"CSV: {exc}"))
                return
        else:
            row = line.split(",")
        if not row:
            rejections.append(reject("unparseable", "empty CSV record"))
            return
        rtype = row[0].strip()
        if rtype.lower() == "type":  # a header line (every accounting file starts with one)
            self._set_header(row)
            self.skip("header")
            return
        kind = _KIND.get(rtype) or _KIND.get(rtype.lower())
        if kind is None and rtype.lower() not in ("rs", "remote-status"):
            if rtype.lower() in _SKIPPED:
                self.skip(rtype)
            elif not rtype or len(row) == 1:
                rejections.append(reject("unparseable", "not a CSV accounting record"))
            else:
                rejections.append(reject("unknown_event", f"record type {rtype[:20]!r}"))
            return
        idx = self._idx
        n = len(row)

        def col(f: str) -> str | None:
            for i in idx.get(f, ()):
                if i < n:
                    v = row[i].strip()
                    if v:
                        return v
            return None

        action = col("dsn_action")
        if kind is None:  # remote status: the DSN's action decides
            kind = _RS_ACTION.get((action or "").lower().split(" ", 1)[0])
            if kind is None:
                self.skip(f"rs {(action or '')[:20]}")
                return
        bounce_cat = col("bounce_category")
        if kind == "bounced" and bounce_cat == "message-expired":
            action = "expired"
        diag = col("response")
        text = diagnostic_text(diag) if diag else None
        code, enh = reply_codes(text) if text else (None, None)
        feedback_type = col("feedback_type") if kind == "complained" else None
        ts_raw: Any = col("timestamp")
        if ts_raw is not None and ts_raw.isdigit():
            ts_raw = int(ts_raw)
        ts = epoch(ts_raw) if ts_raw is not None else None
        if ts is None and ts_raw is not None:
            rejections.append(reject("bad_timestamp", "timeLogged"))
            return
        made = self.build.event(
            kind,
            ts,
            col("recipient"),
            message_id=col("message_id"),
            sender_domain=self.build.sender_domain(col("sender_domain")),
            sending_ip=col("sending_ip"),
            pool=col("pool"),
            tenant=col("tenant"),
            campaign=col("campaign"),
            mx_host=mta_name(col("mx_host")),
            smtp_code=code,
            enhanced_code=status_code(col("enhanced_code")) or enh,
            response=text,
            feedback_type=feedback_type.lower() if feedback_type else None,
            dsn_action=action,
        )
        self.add(made, events, rejections)
