"""A private Postfix instance on loopback that relays to scripted fake providers (aiosmtpd).

Used by tests/test_integration_postfix.py. Postfix (Debian package ``postfix``; ``./dev test``
installs it) runs from its own configuration directory under a temporary directory: its own
queue, its own SMTP port on 127.0.0.1, its log in its own ``maillog_file`` (Postfix 3.4+,
written by ``postlogd``), no chroot, no TLS, and nothing reaches the network: every recipient
domain is routed by ``transport_maps`` to a fake provider on another loopback address.

Each fake provider is an aiosmtpd server whose answer to ``RCPT TO`` follows a mutable script
(:class:`Script`): accept, ``421 4.4.2`` (an outage), ``550 5.1.1`` for some users, or
``550 5.7.1`` (a block). The test changes the script while Postfix sends.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session

POSTFIX = "/usr/sbin/postfix"

#: reply codes of the fake providers' modes (at RCPT TO)
REPLIES = {
    "outage": "421 4.4.2 Service temporarily unavailable, try again later",
    "unknown": "550 5.1.1 The email account that you tried to reach does not exist",
    "block": "550 5.7.1 Service unavailable; client host blocked using the provider's list",
}


@dataclass
class Script:
    """What a fake provider answers: ``mode`` for every recipient (``accept``, ``outage``,
    ``block``), and ``unknown_users`` (local parts answered ``550 5.1.1`` in ``accept`` mode)."""

    mode: str = "accept"
    unknown_users: set[str] = field(default_factory=set)
    #: recipients accepted (DATA completed), for the test's own bookkeeping
    delivered: int = 0


class _Handler:
    def __init__(self, script: Script) -> None:
        self.script = script

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: Any
    ) -> str:
        s = self.script
        if s.mode in ("outage", "block"):
            return REPLIES[s.mode]
        if address.partition("@")[0] in s.unknown_users:
            return REPLIES["unknown"]
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.script.delivered += len(envelope.rcpt_tos)
        return "250 2.0.0 OK queued"


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class FakeProvider:
    domain: str
    host: str
    port: int
    script: Script
    controller: Controller


@contextlib.contextmanager
def fake_providers(domains: dict[str, str]) -> Iterator[dict[str, FakeProvider]]:
    """One aiosmtpd server per recipient domain, ``domains``: domain -> loopback address."""
    out: dict[str, FakeProvider] = {}
    try:
        for dom, host in domains.items():
            script = Script()
            port = free_port(host)
            c = Controller(_Handler(script), hostname=host, port=port, ready_timeout=10.0)
            c.start()
            out[dom] = FakeProvider(dom, host, port, script, c)
        yield out
    finally:
        for p in out.values():
            with contextlib.suppress(Exception):
                p.controller.stop()


MASTER_CF = """\
{listen} inet  n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


class PostfixLab:
    """A private Postfix under ``root``: :meth:`start`, :meth:`send`, :meth:`stop`."""

    def __init__(self, root: Path, routes: dict[str, tuple[str, int]]) -> None:
        if not Path(POSTFIX).exists():
            raise RuntimeError(
                f"{POSTFIX} not found: apt-get install postfix (./dev test installs it)"
            )
        self.root = root
        self.conf = root / "conf"
        self.queue = root / "queue"
        self.data = root / "data"
        self.maillog = root / "maillog"
        self.port = free_port()
        self.routes = routes
        self.syslog_name = "postfix-lab"

    def write_config(self) -> None:
        for d in (self.conf, self.queue, self.data):
            d.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data, "postfix")
        transport = "".join(
            f"{dom} smtp:[{host}]:{port}\n" for dom, (host, port) in self.routes.items()
        )
        (self.conf / "transport").write_text(transport)
        domains = " ".join(self.routes)
        main = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue),
            "data_directory": str(self.data),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mta.repmon.test",
            "mydomain": "repmon.test",
            "myorigin": "$mydomain",
            "mydestination": "",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": domains,
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "smtpd_recipient_restrictions": "permit_mynetworks, reject",
            "transport_maps": f"texthash:{self.conf / 'transport'}",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "smtp_connect_timeout": "5s",
            "smtp_helo_timeout": "10s",
            # retry deferred mail soon: the test sees the retries of an outage
            "queue_run_delay": "5s",
            "minimal_backoff_time": "5s",
            "maximal_backoff_time": "10s",
            "syslog_name": self.syslog_name,
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.root),
            "smtputf8_enable": "no",
            "biff": "no",
            "append_dot_mydomain": "no",
            "default_destination_concurrency_limit": "10",
            "default_process_limit": "20",
            "shlib_directory": "/usr/lib/postfix",
            "daemon_directory": "/usr/lib/postfix/sbin",
            "meta_directory": "/etc/postfix",
            "command_directory": "/usr/sbin",
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main.items()))
        (self.conf / "master.cf").write_text(MASTER_CF.format(listen=f"127.0.0.1:{self.port}"))

    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        # TZ: the log's traditional time stamps are read as UTC (the parser's default)
        env = {**os.environ, "MAIL_CONFIG": str(self.conf), "TZ": "UTC"}
        return subprocess.run(
            [POSTFIX, "-c", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=check,
        )

    def start(self) -> None:
        self.write_config()
        r = self._postfix("start", check=False)
        if r.returncode != 0:
            raise RuntimeError(f"postfix start failed: {r.stdout}{r.stderr}")
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as s,
            ):
                if s.recv(100).startswith(b"220"):
                    return
            time.sleep(0.2)
        raise RuntimeError("the private postfix did not answer on its SMTP port")

    def stop(self) -> None:
        self._postfix("stop", check=False)
        # wait for the master to go away (its pid file under the queue directory)
        pid_file = self.queue / "pid" / "master.pid"
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            try:
                pid = int(pid_file.read_text().strip())
                os.kill(pid, 0)
            except (ValueError, ProcessLookupError, FileNotFoundError):
                break
            time.sleep(0.2)

    def queue_size(self) -> int:
        """Messages still in the queue (active, incoming, deferred, maildrop)."""
        n = 0
        for sub in ("incoming", "active", "deferred", "maildrop", "hold"):
            d = self.queue / sub
            if d.exists():
                n += sum(1 for p in d.rglob("*") if p.is_file())
        return n

    def send(self, recipients: list[str], sender: str = "news@mail.example.com") -> None:
        """One message per recipient, submitted over SMTP on the private port."""
        import smtplib
        from email.message import EmailMessage

        with smtplib.SMTP("127.0.0.1", self.port, timeout=30) as smtp:
            for i, rcpt in enumerate(recipients):
                msg = EmailMessage()
                msg["From"] = sender
                msg["To"] = rcpt
                msg["Subject"] = f"repmon lab {i}"
                msg["Message-ID"] = f"<lab-{time.time_ns()}-{i}@mail.example.com>"
                msg.set_content("hello from the repmon postfix lab\n")
                smtp.send_message(msg, from_addr=sender, to_addrs=[rcpt])
