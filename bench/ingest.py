"""Parser throughput on this machine: records/s per native format (models/ingest/formats).

Run from the repository root: ``.venv/bin/python bench/ingest.py`` (``--n``, ``--repeat``,
``--format``). Target (issue 12): >= 50,000 lines/s per core for the log formats (kumomta,
postfix, powermta), measured the way ``repmon ingest`` runs them: the format's splitter over a
buffer of synthetic but realistic records, then the parser on each record, on one core (one
process, no threads). Every record is distinct (its own recipient, queue id, message id), so
the figure is not helped by caches: the recipient hash, the domain check and the reply parsing
run for every event. The webhook and mail formats are measured too (records/s and events/s),
without a target here (their target is the gateway's, with the broker).

The mixes: Postfix logs as a busy relay writes them (per message cleanup, qmgr, one delivery
line per recipient, removed; 85 % sent, 10 % deferred, 5 % bounced; plus smtpd noise); KumoMTA
records of about 1 kB like the documented one (Delivery / TransientFailure / Bounce); PowerMTA
rows with the default columns (d / t / b, quoted diagnostics).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import orjson  # noqa: E402  (bench/ may use the I/O libraries; models/ may not)

from models.ingest.formats import FORMATS, make_parser  # noqa: E402

TARGET_LOG_LINES = 50_000
LOG_FORMATS = ("kumomta", "postfix", "powermta")
DOMAINS = ("gmail.com", "yahoo.com", "outlook.com", "example.org", "mail.example.net", "aol.com")
BASE_TS = 1_795_420_800  # 2026-11-24T08:00:00Z


def _outcome(i: int) -> str:
    r = i % 20
    return "bounced" if r == 0 else "deferred" if r in (1, 2) else "sent"


def postfix_log(n_lines: int) -> bytes:
    """About ``n_lines`` Postfix lines: per message cleanup, qmgr from=, one or two delivery
    lines, removed, and a little smtpd noise."""
    out: list[str] = []
    i = 0
    while len(out) < n_lines:
        t = BASE_TS + i // 50
        stamp = time.strftime("%b %e %H:%M:%S", time.gmtime(t))
        qid = f"{0x4B000000 + i:08X}{i % 997:03d}"
        dom = DOMAINS[i % len(DOMAINS)]
        out.append(f"{stamp} mx1 postfix/smtpd[2{i % 1000:03d}]: connect from app01[10.1.2.3]")
        out.append(
            f"{stamp} mx1 postfix/cleanup[3{i % 1000:03d}]: {qid}: message-id=<m-{i}@acme.example>"
        )
        out.append(
            f"{stamp} mx1 postfix/qmgr[1999]: {qid}: from=<bounces+{i}@mail.acme.example>,"
            f" size={4000 + i % 3000}, nrcpt=1 (queue active)"
        )
        mx = f"mx{i % 4}.{dom}"
        what = _outcome(i)
        if what == "sent":
            tail = f"dsn=2.0.0, status=sent (250 2.0.0 OK {t} x{i:x}si{i % 9999}.{i % 7} - gsmtp)"
        elif what == "deferred":
            tail = (
                f"dsn=4.7.28, status=deferred (host {mx}[192.0.2.{i % 250}] said: 421-4.7.28"
                f" Our system has detected an unusual rate of unsolicited mail originating from"
                f" your IP address. (in reply to end of DATA command))"
            )
        else:
            tail = (
                f"dsn=5.1.1, status=bounced (host {mx}[192.0.2.{i % 250}] said: 550 5.1.1"
                f" <user{i}@{dom}>: Recipient address rejected: User unknown in virtual mailbox"
                f" table (in reply to RCPT TO command))"
            )
        out.append(
            f"{stamp} mx1 postfix/smtp[4{i % 1000:03d}]: {qid}: to=<user{i}@{dom}>,"
            f" relay={mx}[192.0.2.{i % 250}]:25, delay=0.{i % 9 + 1}, delays=0.1/0/0.2/0.3,"
            f" {tail}"
        )
        if what != "deferred":
            out.append(f"{stamp} mx1 postfix/qmgr[1999]: {qid}: removed")
        out.append(f"{stamp} mx1 postfix/smtpd[2{i % 1000:03d}]: disconnect from app01[10.1.2.3]")
        i += 1
    return ("\n".join(out[:n_lines]) + "\n").encode()


def postfix_deliveries(n_lines: int) -> bytes:
    """The worst case: every line a delivery line (``to=``), no qmgr or noise lines."""
    lines = [ln for ln in postfix_log(n_lines * 7 // 2).split(b"\n") if b" to=<" in ln]
    return b"\n".join(lines[:n_lines]) + b"\n"


def kumomta_log(n_lines: int) -> bytes:
    out = []
    for i in range(n_lines):
        dom = DOMAINS[i % len(DOMAINS)]
        what = _outcome(i)
        rtype, code, enh, content, cmd = {
            "sent": ("Delivery", 250, (2, 0, 0), f"OK ids={i:032x}", "."),
            "deferred": (
                "TransientFailure",
                421,
                (4, 7, 28),
                "Our system has detected an unusual rate of unsolicited mail originating from"
                " your IP address.",
                "RCPT TO",
            ),
            "bounced": ("Bounce", 550, (5, 1, 1), "The email account does not exist", "RCPT TO"),
        }[what]
        rec = {
            "type": rtype,
            "id": f"{i:032x}",
            "sender": f"bounces+{i}@mail.acme.example",
            "recipient": f"user{i}@{dom}",
            "queue": f"acme-2026-11:acme@{dom}",
            "site": f"source{i % 8}->mx.{dom}",
            "size": 4000 + i % 3000,
            "response": {
                "code": code,
                "enhanced_code": {"class": enh[0], "subject": enh[1], "detail": enh[2]},
                "content": content,
                "command": cmd,
            },
            "peer_address": {"name": f"mx{i % 4}.{dom}.", "addr": f"192.0.2.{i % 250}"},
            "timestamp": BASE_TS + i // 50,
            "event_time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(BASE_TS + i // 50))
            + f".{i % 1000:03d}123456Z",
            "created": BASE_TS + i // 50 - 3,
            "created_time": "2026-11-24T08:00:00.000000000Z",
            "num_attempts": i % 3,
            "bounce_classification": "Uncategorized",
            "egress_pool": f"pool{i % 4}",
            "egress_source": f"source{i % 8}",
            "source_address": {"address": f"198.51.100.{i % 8}:{40000 + i % 20000}"},
            "feedback_report": None,
            "meta": {},
            "headers": {},
            "delivery_protocol": "ESMTP",
            "reception_protocol": "ESMTP",
            "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173",
            "tls_cipher": "TLS_AES_256_GCM_SHA384",
            "tls_protocol_version": "TLSv1.3",
            "tls_peer_subject_name": [f"CN=mx.{dom}"],
            "session_id": f"9bcd689e-23d9-41b7-a015-{i:012x}",
        }
        out.append(json.dumps(rec, separators=(",", ":")))
    return ("\n".join(out) + "\n").encode()


def powermta_log(n_lines: int) -> bytes:
    header = (
        "type,timeLogged,timeQueued,orig,rcpt,orcpt,dsnAction,dsnStatus,dsnDiag,dsnMta,bounceCat,"
        "srcType,srcMta,dlvType,dlvSourceIp,dlvDestinationIp,dlvEsmtpAvailable,dlvSize,vmta,"
        "jobId,envId,queue,vmtaPool"
    )
    out = [header]
    for i in range(n_lines - 1):
        dom = DOMAINS[i % len(DOMAINS)]
        t = time.strftime("%Y-%m-%d %H:%M:%S+0000", time.gmtime(BASE_TS + i // 50))
        what = _outcome(i)
        kind, action, status, diag, cat = {
            "sent": ("d", "relayed", "2.0.0 (success)", f"smtp;250 2.0.0 OK {i}", ""),
            "deferred": (
                "t",
                "delayed",
                "4.7.0 (other or undefined security status)",
                '"smtp;421 4.7.0 [TSS04] Messages from 192.0.2.10 temporarily deferred due to'
                ' unexpected volume or user complaints - 4.16.55.1; see https://postmaster.yahooinc.com/error-codes"',
                "",
            ),
            "bounced": (
                "b",
                "failed",
                "5.1.1 (bad destination mailbox address)",
                f'"smtp;550 5.1.1 <user{i}@{dom}>: Recipient address rejected: User unknown, try again"',
                "bad-mailbox",
            ),
        }[what]
        out.append(
            f"{kind},{t},{t},bounces@mail.acme.example,user{i}@{dom},,{action},{status},{diag},"
            f"mx{i % 4}.{dom} (192.0.2.{i % 250}),{cat},smtp,app01.acme.example,smtp,"
            f'192.0.2.{10 + i % 8},192.0.2.{i % 250},"PIPELINING,8BITMIME,SIZE,STARTTLS",'
            f"{4000 + i % 3000},vmta-{i % 8},acme-2026-11,,{dom}/vmta-{i % 8},pool-{i % 2}"
        )
    return ("\r\n".join(out) + "\r\n").encode()


def ses_bodies(n: int) -> bytes:
    doc = json.loads((ROOT / "tests/data/formats/ses/event-delivery.json").read_text())
    out = []
    for i in range(n):
        doc["mail"]["messageId"] = f"0100{i:012x}-example-000000"
        doc["mail"]["destination"] = [f"user{i}@{DOMAINS[i % len(DOMAINS)]}"]
        doc["delivery"]["recipients"] = doc["mail"]["destination"]
        env = {
            "Type": "Notification",
            "TopicArn": "arn:aws:sns:us-east-1:1:ses",
            "Message": json.dumps(doc),
        }
        out.append(json.dumps(env))
    return ("\n".join(out) + "\n").encode()


def sendgrid_bodies(n_events: int, batch: int = 100) -> bytes:
    out = []
    for b in range(0, n_events, batch):
        items = []
        for i in range(b, min(n_events, b + batch)):
            what = _outcome(i)
            e = {
                "email": f"user{i}@{DOMAINS[i % len(DOMAINS)]}",
                "timestamp": BASE_TS + i // 50,
                "smtp-id": f"<{i:x}.dfd.64b469@ismtpd-555>",
                "event": {"sent": "delivered", "deferred": "deferred", "bounced": "bounce"}[what],
                "category": ["acme-2026-11"],
                "sg_event_id": f"ev{i:020x}",
                "sg_message_id": f"{i:x}.dfd.64b469.filter0001.16648.5515E0B88.0",
                "ip": "192.0.2.100",
                "tls": 1,
            }
            if what == "bounced":
                e |= {"reason": "550 5.1.1 user unknown", "status": "5.1.1", "type": "bounce"}
            else:
                e["response"] = "250 OK" if what == "sent" else "421 4.7.0 try again later"
            items.append(e)
        out.append(json.dumps(items))
    return ("\n".join(out) + "\n").encode()


def mbox(path: str, n: int) -> bytes:
    msg = (ROOT / "tests/data/formats" / path).read_bytes()
    parts = []
    for i in range(n):
        parts.append(b"From MAILER-DAEMON Tue Nov 24 08:00:03 2026\n")
        parts.append(msg.replace(b"Nobody@Example.org", f"user{i}@example.org".encode()))
        parts.append(b"\n")
    return b"".join(parts)


def canonical_log(n: int) -> bytes:
    out = []
    for i in range(n):
        out.append(
            json.dumps(
                {
                    "event": "delivered",
                    "timestamp": BASE_TS + i / 50,
                    "message_id": f"m-{i}",
                    "recipient": f"user{i}@{DOMAINS[i % len(DOMAINS)]}",
                    "sender_domain": "acme.example",
                    "sending_ip": "192.0.2.10",
                    "smtp_code": 250,
                }
            )
        )
    return ("\n".join(out) + "\n").encode()


def measure(fmt: str, data: bytes, repeat: int, **config: object) -> tuple[int, int, float, float]:
    """(records, events, CPU seconds, wall seconds) of splitting ``data`` and parsing every
    record with a fresh parser, the best of ``repeat`` runs. The CPU time of this process is
    the per-core figure: the machine is shared, so the wall time also counts the time other
    processes held the core."""
    f = FORMATS[fmt]
    best_cpu = best_wall = float("inf")
    n_rec = n_ev = 0
    for _ in range(repeat):
        p = make_parser(fmt, **config)
        w0, c0 = time.perf_counter(), time.process_time()
        records, _ = f.split(data, True)
        feed = p.feed
        n_ev = 0
        for rec in records:
            n_ev += len(feed(rec)[0])
        best_cpu = min(best_cpu, time.process_time() - c0)
        best_wall = min(best_wall, time.perf_counter() - w0)
        n_rec = len(records)
        assert p.stats.errors == 0 and not p.stats.rejected, (fmt, p.stats)
    return n_rec, n_ev, best_cpu, best_wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="log lines per log format")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--format", action="append", help="only these formats")
    args = ap.parse_args()
    n = args.n
    fast = {"loads": orjson.loads}
    cases: list[tuple[str, str, Callable[[], bytes], dict[str, object]]] = [
        ("postfix", "", lambda: postfix_log(n), {"year": 2026}),
        ("postfix", "to= only", lambda: postfix_deliveries(n), {"year": 2026}),
        ("kumomta", "json", lambda: kumomta_log(n), {}),
        ("kumomta", "orjson", lambda: kumomta_log(n), fast),
        ("powermta", "", lambda: powermta_log(n), {}),
        ("canonical", "json", lambda: canonical_log(n), {}),
        ("canonical", "orjson", lambda: canonical_log(n), fast),
        ("ses", "orjson", lambda: ses_bodies(max(1, n // 10)), fast),
        ("sendgrid", "orjson", lambda: sendgrid_bodies(n), fast),
        ("dsn", "", lambda: mbox("dsn/postfix-bounce.eml", max(1, n // 50)), {}),
        ("arf", "", lambda: mbox("arf/fbl-headers-only.eml", max(1, n // 50)), {}),
    ]
    print(f"# bench/ingest.py: {platform.python_implementation()} {platform.python_version()},")
    print(f"# {platform.machine()}, {os.cpu_count()} cores, one core used, best of {args.repeat};")
    print("# rates per CPU second of this process (wall-clock rate in parentheses)")
    head = f"{'format':<10} {'variant':<8} {'records':>9} {'events':>9} {'records/s':>20}"
    print(f"{head} {'events/s':>11}  target")
    ok = True
    for fmt, decoder, make, config in cases:
        if args.format and fmt not in args.format:
            continue
        data = make()
        recs, evs, cpu, wall = measure(fmt, data, args.repeat, **config)
        rate = recs / cpu
        target = ""
        if fmt in LOG_FORMATS:
            passed = rate >= TARGET_LOG_LINES
            if decoder != "json":  # the CLI decodes with orjson, as the worker does
                ok &= passed
            target = f">= {TARGET_LOG_LINES:,} lines/s {'ok' if passed else 'MISSED'}"
        rates = f"{rate:,.0f} ({recs / wall:,.0f})"
        print(
            f"{fmt:<10} {decoder or '-':<8} {recs:>9,} {evs:>9,} {rates:>20} {evs / cpu:>11,.0f}"
            f"  {target}"
        )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
