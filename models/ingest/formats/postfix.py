"""Postfix syslog lines (or its own ``maillog_file``, Postfix 3.4+), correlated by queue id.

A delivery is logged by the delivery agent (``postfix/smtp``, ``postfix/lmtp``, ``postfix/error``,
``postfix/retry``) as one line per recipient (``src/global/log_adhoc.c``)::

    QID: to=<rcpt>, [orig_to=<...>, ]relay=host[ip]:port, [conn_use=n, ]delay=.., delays=..,
        [tls=.., ]dsn=x.y.z, status=sent|deferred|bounced|SOFTBOUNCE (text)

The sender and the message id are on earlier lines of the same queue id: ``postfix/qmgr``
``QID: from=<sender>, size=.., nrcpt=.. (queue active)`` and ``postfix/cleanup``
``QID: message-id=<...>``. A message given up after the queue lifetime is one ``postfix/qmgr``
line, ``QID: from=<sender>, status=expired, returned to sender`` (``src/qmgr/qmgr_active.c``),
without recipients: the parser remembers each queue id's deferred recipients and turns them into
``bounced`` events with ``dsn_action`` ``expired`` (and the last deferral's reply) when that line
comes. ``QID: removed`` ends a queue id.

| ``status=`` | event |
|---|---|
| ``sent`` | ``delivered`` |
| ``deferred``, ``SOFTBOUNCE`` (``soft_bounce = yes``) | ``deferred`` |
| ``bounced`` | ``bounced`` |
| qmgr ``expired``, ``force-expired`` | ``bounced``, ``dsn_action`` ``expired``, per deferred recipient |
| ``deliverable``, ``undeliverable`` (address probes), trace statuses | none (skipped) |

The reply text: ``host H[ip] said: <reply> (in reply to RCPT TO command)`` gives ``mx_host``
H, ``response`` <reply>, ``smtp_command`` ``RCPT`` (``end of DATA`` -> ``END-OF-DATA``);
``host H[ip] refused to talk to me: <reply>`` gives ``CONNECT``; ``dsn=`` gives
``enhanced_code``; ``relay=`` gives ``mx_host`` when the text does not. Errors without a reply
(``connect to ...: Connection timed out``) keep their text as ``response``, without code.

Time stamps: RFC 3339 (``2026-11-23T07:44:58.123456+01:00``, rsyslog's high-precision format
and ``journalctl -o short-iso``) or the traditional ``Nov 23 07:44:58`` (syslog, and Postfix's
``maillog_file``), which has neither year nor zone: those come from the configuration (``year``,
``tz``; the year defaults to the current one, a line more than two days in the future taken as
last year's, and advances when the month wraps from December to January).

Several Postfix instances (``MULTI_INSTANCE_README``) log under their ``syslog_name``
(``postfix-out1/smtp``): ``instances`` maps ``host/syslog_name``, ``syslog_name`` or ``host``
to the canonical ``pool``, ``sending_ip``, ``tenant`` and ``campaign`` of what it sends.

Memory is bounded: at most ``max_queue_ids`` queue ids (the oldest forgotten first, counted in
``evicted``) with at most ``max_deferred`` remembered deferred recipients each; a queue id with
one deferred recipient holds about 1.5 kB (its message id, sender, and the last deferral), so
the default bound is about 75 MB. Forgetting a queue id loses its message id and, if it later
expires, its expiry events; ``qmgr`` logs the sender again at every retry.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Any

from models.ingest.formats.base import Event, Parser, reject, reply_codes, status_code
from models.ingest.validate import Rejection

_SYSLOG_RE = re.compile(
    r"(?:<[0-9]{1,3}>)?"
    r"(?:(?P<mon>[A-Z][a-z]{2}) {1,2}(?P<day>[0-9]{1,2}) (?P<hms>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:\.[0-9]{1,9})?"
    r"|(?P<iso>[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,9})?"
    r"(?:[Zz]|[+-][0-9]{2}:?[0-9]{2})))"
    r" (?P<host>\S+) (?P<prog>[^\s\[:]+)(?:\[[0-9]+\])?: (?P<msg>.*)",
    re.DOTALL,
)
_QID_RE = re.compile(r"([0-9A-Za-z]{5,20}): ")
_DELIVERY_RE = re.compile(
    r"to=<(?P<to>.*?)>, (?:orig_to=<.*?>, )?relay=(?P<relay>[^,]*), "
    r".*?dsn=(?P<dsn>[^,]*), status=(?P<status>[A-Za-z-]+)(?: (?P<text>.*))?\Z",
    re.DOTALL,
)
_FROM_RE = re.compile(r"from=<(?P<from>.*?)>(?:, (?P<rest>.*))?\Z", re.DOTALL)
_HOST_SAID_RE = re.compile(r"host (\S+?)\[[^\]]*\] said: ")
_REFUSED_RE = re.compile(r"host (\S+?)\[[^\]]*\] refused to talk to me: ")
_IN_REPLY_RE = re.compile(r"\s*\(in reply to (.+?) command\)\s*\Z")
_NOTICE_RE = re.compile(r"(?:sender|postmaster) [a-z ]*notification: ([0-9A-Za-z]{5,20})\Z")
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1
    )
}
_STATUS_KIND = {
    "sent": "delivered",
    "deferred": "deferred",
    "SOFTBOUNCE": "deferred",
    "bounced": "bounced",
    "expired": "bounced",
    "force-expired": "bounced",
}
#: statuses that are not a delivery to count: address verification probes
#: (``src/global/verify.c``) and the trace of ``sendmail -bv`` / DSN success reports
_STATUS_SKIPPED = frozenset(
    {"deliverable", "undeliverable", "delivered", "relayed", "expanded", "failed", "delayed"}
)
DEFAULT_AGENTS = frozenset({"smtp", "lmtp", "error", "retry"})


@dataclass(slots=True)
class _Queued:
    """What the log said about one queue id before its deliveries."""

    #: normalised sender domain; "" for the null sender (a Postfix notification), None unknown
    sender: str | None = None
    message_id: str | None = None
    #: a bounce, delay or success notice Postfix generated (``postfix/bounce``)
    notice: bool = False
    #: recipient key -> its last ``deferred`` event, until it is delivered, bounced or expires
    deferred: dict[str, Event] | None = None


def _relay_host(relay: str) -> str | None:
    """The MX host of ``relay=`` (``mx.example.net[192.0.2.1]:25``); None for ``none``,
    ``local``, sockets."""
    lb = relay.find("[")
    if lb <= 0 or relay.startswith(("private/", "public/"), lb + 1):  # a local socket
        return None
    return relay[:lb]


def reason_parts(text: str) -> tuple[str | None, str | None, str]:
    """(mx host, SMTP phase, reply) of a Postfix status text (without its parentheses)."""
    mx = phase = None
    if text.startswith("host "):
        m = _HOST_SAID_RE.match(text)
        if m is not None:
            mx = m.group(1)
            text = text[m.end() :]
        else:
            m = _REFUSED_RE.match(text)
            if m is not None:
                mx, phase = m.group(1), "CONNECT"
                text = text[m.end() :]
    if "(in reply to " in text:
        m = _IN_REPLY_RE.search(text)
        if m is not None:
            phase = m.group(1)
            text = text[: m.start()]
    return mx, phase, text


class PostfixParser(Parser):
    """Postfix log lines -> canonical events (see the module docstring). Feed the lines in log
    order; one parser per log stream (a parser keeps the queue ids of the lines it saw).

    ``year``/``tz``: the year and zone of traditional syslog time stamps (default: the current
    year as of ``now``, UTC); ``instances``: ``host/syslog_name``, ``syslog_name`` or ``host``
    -> canonical ``pool``/``sending_ip``/``tenant``/``campaign``; ``syslog_prefixes``: which
    syslog names are Postfix's (default ``postfix``, which covers ``postfix-out1``; the names in
    ``instances`` count too); ``agents``: the delivery agents whose lines count (default smtp,
    lmtp, error, retry; add ``local``, ``virtual``, ``pipe`` for local deliveries);
    ``skip_notifications``: drop the deliveries of bounce and delay notices Postfix itself sends
    (null sender), default False (every delivery line counts, as in Postfix's own totals).
    """

    name = "postfix"

    def __init__(
        self,
        *,
        year: int | None = None,
        tz: tzinfo = UTC,
        now: float | None = None,
        instances: Mapping[str, Mapping[str, str]] | None = None,
        syslog_prefixes: Iterable[str] = ("postfix",),
        agents: Iterable[str] = DEFAULT_AGENTS,
        skip_notifications: bool = False,
        max_queue_ids: int = 50_000,
        max_deferred: int = 1_000,
        max_record_bytes: int | None = None,
    ) -> None:
        super().__init__(max_record_bytes=max_record_bytes)
        self.tz = tz
        self._now = time.time() if now is None else now
        self._year = year
        self._last_month: int | None = None
        self._stamps: dict[tuple[str, str, str], float | None] = {}
        self.instances = {k: dict(v) for k, v in (instances or {}).items()}
        self.syslog_prefixes = tuple(syslog_prefixes)
        self.agents = frozenset(agents)
        self.skip_notifications = skip_notifications
        self.max_queue_ids = max(1, max_queue_ids)
        self.max_deferred = max(1, max_deferred)
        self.queue: dict[tuple[str, str, str], _Queued] = {}
        #: queue ids forgotten to keep the bound (their later lines lack sender and message id)
        self.evicted = 0
        #: expired messages whose deferred recipients were not (or no longer) known
        self.expired_unknown = 0
        self._instance_cache: dict[tuple[str, str], dict[str, str]] = {}

    # -- time ----------------------------------------------------------------------------------

    def _bsd_time(self, mon: str, day: str, hms: str) -> float | None:
        key = (mon, day, hms)
        ts = self._stamps.get(key, -1.0)
        if ts != -1.0:
            return ts
        month = _MONTHS.get(mon)
        if month is None:
            return None
        year = self._year
        if year is None:
            year = datetime.fromtimestamp(self._now, self.tz).year
            first = self._to_epoch(year, month, day, hms)
            if first is not None and first > self._now + 2 * 86400:
                year -= 1
            self._year = year
        last = self._last_month
        if last is not None and month < last - 6:  # December -> January: a new year
            year += 1
            self._year = year
            self._stamps.clear()
        elif last is not None and month > last + 6:  # a late line of the year before
            return self._to_epoch(year - 1, month, day, hms)
        self._last_month = month
        ts = self._to_epoch(year, month, day, hms)
        if len(self._stamps) >= 100_000:
            self._stamps.clear()
        self._stamps[key] = ts
        return ts

    def _to_epoch(self, year: int, month: int, day: str, hms: str) -> float | None:
        try:
            h, m, s = int(hms[0:2]), int(hms[3:5]), int(hms[6:8])
            return datetime(year, month, int(day), h, m, s, tzinfo=self.tz).timestamp()
        except (ValueError, OverflowError):
            return None

    # -- lines ---------------------------------------------------------------------------------

    def parse(self, record: bytes, events: list[Event], rejections: list[Rejection]) -> None:
        line = record.decode("utf-8", "replace")
        m = _SYSLOG_RE.match(line)
        if m is None:
            rejections.append(reject("unparseable", "not a syslog line"))
            return
        prog = m.group("prog")
        slash = prog.rfind("/")
        if slash <= 0:
            self.skip("not postfix")
            return
        syslog_name = prog[:slash]
        if not syslog_name.startswith(self.syslog_prefixes) and syslog_name not in self.instances:
            self.skip("not postfix")
            return
        service = prog[slash + 1 :]
        msg = m.group("msg")
        q = _QID_RE.match(msg)
        if q is None:  # warnings, connects, NOQUEUE rejects, statistics
            self.skip(f"{service} without queue id")
            return
        rest = msg[q.end() :]
        key = (m.group("host"), syslog_name, q.group(1))
        if service in self.agents:
            if rest.startswith("to=<"):
                self._delivery(m, key, rest, events, rejections)
            else:
                self.skip(f"{service} other")
        elif service == "qmgr" or service == "oqmgr":
            self._qmgr(m, key, rest, events, rejections)
        elif service == "cleanup":
            if rest.startswith("message-id="):
                mid = rest[11:].strip()
                if mid.startswith("<") and mid.endswith(">"):
                    mid = mid[1:-1]
                self._entry(key).message_id = mid or None
            else:
                self.skip("cleanup other")
        elif service == "bounce":
            n = _NOTICE_RE.search(rest)
            if n is not None:
                self._entry((key[0], key[1], n.group(1))).notice = True
            self.skip("bounce")
        else:
            self.skip(service)

    def _time(self, m: re.Match[str]) -> float | None:
        iso = m.group("iso")
        if iso is not None:
            try:
                d = datetime.fromisoformat(iso)
            except ValueError:
                return None
            if d.tzinfo is None:
                d = d.replace(tzinfo=self.tz)
            return d.timestamp()
        return self._bsd_time(m.group("mon"), m.group("day"), m.group("hms"))

    def _entry(self, key: tuple[str, str, str]) -> _Queued:
        """The queue id's entry, created (and the oldest forgotten) when new; moved to the end of
        the eviction order either way."""
        q = self.queue
        e = q.pop(key, None)
        if e is None:
            e = _Queued()
            if len(q) >= self.max_queue_ids:
                del q[next(iter(q))]
                self.evicted += 1
        q[key] = e
        return e

    def _instance(self, host: str, syslog_name: str) -> dict[str, str]:
        ik = (host, syslog_name)
        conf = self._instance_cache.get(ik)
        if conf is None:
            inst = self.instances
            conf = inst.get(f"{host}/{syslog_name}") or inst.get(syslog_name) or inst.get(host)
            conf = conf or {}
            if len(self._instance_cache) < 10_000:
                self._instance_cache[ik] = conf
        return conf

    def _qmgr(
        self,
        m: re.Match[str],
        key: tuple[str, str, str],
        rest: str,
        events: list[Event],
        rejections: list[Rejection],
    ) -> None:
        if rest == "removed":
            self.queue.pop(key, None)
            self.skip("qmgr removed")
            return
        f = _FROM_RE.match(rest)
        if f is None:
            self.skip("qmgr other")
            return
        sender = f.group("from")
        tail = f.group("rest") or ""
        e = self._entry(key)
        e.sender = self.build.sender_domain(sender) if sender else ""
        if not tail.startswith(("status=expired", "status=force-expired")):
            self.skip("qmgr from")
            return
        deferred = e.deferred
        e.deferred = None
        if not deferred:
            self.expired_unknown += 1
            self.skip("qmgr expired, recipients unknown")
            return
        ts = self._time(m)
        if ts is None:
            rejections.append(reject("bad_timestamp", "syslog time stamp"))
            return
        if self.skip_notifications and (e.notice or e.sender == ""):
            self.skip("notification")
            return
        for ev in deferred.values():
            out = dict(ev)
            out["event"] = "bounced"
            out["timestamp"] = ts
            out["dsn_action"] = "expired"
            events.append(out)

    def _delivery(
        self,
        m: re.Match[str],
        key: tuple[str, str, str],
        rest: str,
        events: list[Event],
        rejections: list[Rejection],
    ) -> None:
        d = _DELIVERY_RE.match(rest)
        if d is None:
            rejections.append(reject("unparseable", "delivery line without to=, relay=, status="))
            return
        status = d.group("status")
        kind = _STATUS_KIND.get(status)
        if kind is None:
            if status in _STATUS_SKIPPED:
                self.skip(f"status={status}")
            else:
                rejections.append(reject("unknown_event", f"status={status[:40]}"))
            return
        e = self.queue.get(key)
        if e is not None and self.skip_notifications and (e.notice or e.sender == ""):
            self.skip("notification")
            return
        text = d.group("text") or ""
        if text.startswith("(") and text.endswith(")"):
            text = text[1:-1]
        mx, phase, reply = reason_parts(text)
        code, enh = reply_codes(reply)
        dsn = status_code(d.group("dsn")) or enh
        conf = self._instance(key[0], key[1])
        made = self.build.event(
            kind,
            self._time(m),
            d.group("to"),
            message_id=e.message_id if e is not None else None,
            sender_domain=(e.sender or None) if e is not None else None,
            sending_ip=conf.get("sending_ip"),
            pool=conf.get("pool"),
            tenant=conf.get("tenant"),
            campaign=conf.get("campaign"),
            mx_host=mx or _relay_host(d.group("relay")),
            smtp_code=code,
            enhanced_code=dsn,
            response=reply,
            smtp_command=phase,
            dsn_action="expired" if status.endswith("expired") else None,
        )
        if isinstance(made, Rejection):
            rejections.append(made)
            return
        events.append(made)
        rk = made["recipient_key"]
        if kind == "deferred":
            e = e if e is not None else self._entry(key)
            if e.deferred is None:
                e.deferred = {}
            if rk in e.deferred or len(e.deferred) < self.max_deferred:
                e.deferred[rk] = dict(made)  # a copy: the caller owns the event it gets
        elif e is not None and e.deferred:
            e.deferred.pop(rk, None)

    def state(self) -> dict[str, Any]:
        """Sizes of the correlation state (for metrics and tests)."""
        return {
            "queue_ids": len(self.queue),
            "deferred": sum(len(e.deferred or ()) for e in self.queue.values()),
            "evicted": self.evicted,
            "expired_unknown": self.expired_unknown,
        }
