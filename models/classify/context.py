"""Context of a reply beside its text: the SMTP phase and the DSN Action (docs/classification.md).

The phase is the SMTP command the reply answered. Sending MTAs write it into their logs and
bounces: Postfix "(in reply to RCPT TO command)", "(in reply to end of DATA command)" and, for a
refused greeting, "host x refused to talk to me" (src/smtp/smtp_proto.c, smtp_connect.c); Exim
"SMTP error from remote mail server after RCPT TO:<x>" / "after end of data" (transports/smtp.c).
The DSN Action is the ``Action:`` field of RFC 3464 (section 2.3.3: failed, delayed, delivered,
relayed, expanded), plus ``expired``, which MTA logs use for a message given up after its queue
lifetime (Postfix ``status=expired``).
"""

from __future__ import annotations

import re
from typing import Final

#: Canonical SMTP phases, in protocol order. ``HELO`` stands for HELO, EHLO and LHLO;
#: ``END-OF-DATA`` is the reply to the final "." (after the message content was sent), ``DATA``
#: the reply to the DATA command itself.
SMTP_PHASES: Final[tuple[str, ...]] = ("CONNECT", "HELO", "MAIL", "RCPT", "DATA", "END-OF-DATA")

_PHASE_ALIASES: Final[dict[str, str]] = {
    "CONNECT": "CONNECT",
    "CONN": "CONNECT",
    "CONNECTION": "CONNECT",
    "GREETING": "CONNECT",
    "BANNER": "CONNECT",
    "HELO": "HELO",
    "EHLO": "HELO",
    "LHLO": "HELO",
    "HELO/EHLO": "HELO",
    "MAIL": "MAIL",
    "MAIL FROM": "MAIL",
    "RCPT": "RCPT",
    "RCPT TO": "RCPT",
    "DATA": "DATA",
    "END-OF-DATA": "END-OF-DATA",
    "END OF DATA": "END-OF-DATA",
    "AFTER DATA": "END-OF-DATA",
    "AFTER-DATA": "END-OF-DATA",
    "DATA-END": "END-OF-DATA",
    ".": "END-OF-DATA",
}

#: RFC 3464 Action values plus ``expired`` (MTA logs)
DSN_ACTIONS: Final[tuple[str, ...]] = (
    "failed",
    "delayed",
    "delivered",
    "relayed",
    "expanded",
    "expired",
)


def smtp_phase(value: str | None) -> str | None:
    """The canonical phase of a command name ("EHLO" -> "HELO", "rcpt to" -> "RCPT"), or None."""
    if not value:
        return None
    return _PHASE_ALIASES.get(" ".join(value.upper().replace(":", " ").split()))


def dsn_action(value: str | None) -> str | None:
    """The canonical DSN Action ("Failed" -> "failed"; RFC 3464 allows comments), or None."""
    if not value:
        return None
    v = value.strip().lower().split(" ", 1)[0].split("(", 1)[0]
    return v if v in DSN_ACTIONS else None


_TEXT_PHASE: Final[dict[str, str]] = {
    "end of data": "END-OF-DATA",
    "data": "DATA",
    "rcpt to": "RCPT",
    "rcpt": "RCPT",
    "pipelined rcpt to": "RCPT",
    "mail from": "MAIL",
    "mail": "MAIL",
    "pipelined mail from": "MAIL",
    "helo": "HELO",
    "ehlo": "HELO",
    "lhlo": "HELO",
    "initial connection": "CONNECT",
    "initial greeting": "CONNECT",
    "initial server greeting": "CONNECT",
    "refused to talk to me": "CONNECT",
}

#: Postfix "in reply to X command" and "refused to talk to me" (the greeting); Exim "SMTP error
#: from remote (mail) server after X"
_RE_TEXT_PHASE: Final = re.compile(
    r"\bin reply to (?:the )?(end of data|data|rcpt to|mail from|helo|ehlo|lhlo"
    r"|initial (?:server )?greeting)\b"
    r"|\bremote (?:mail )?server after (end of data|pipelined rcpt to|pipelined mail from"
    r"|rcpt to|mail from|rcpt|mail|data|initial connection|helo|ehlo|lhlo)\b"
    r"|\b(refused to talk to me)\b"
)


def phase_from_text(low: str) -> str | None:
    """The phase a lower-cased reply text names (see the module docstring), or None."""
    if "reply to" not in low and "server after" not in low and "talk to me" not in low:
        return None
    m = _RE_TEXT_PHASE.search(low)
    if m is None:
        return None
    return _TEXT_PHASE[m.group(m.lastindex or 1)]
