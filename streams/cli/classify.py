"""``repmon classify``: classify SMTP replies read from stdin, one JSON line out per reply.

Input lines are either JSON objects ``{"smtp_code": 550, "enhanced_code": "5.1.1", "response":
"...", "provider": "google", "mx_host": "...", "smtp_command": "RCPT", "dsn_action": "failed"}``
(every key optional, but at least one of the codes or a response must be present) or plain reply
lines such as ``550 5.1.1 <x@y>: User unknown``. The continuation lines of one multi-line reply
(``550-5.7.26 ...`` lines up to the final ``550 5.7.26 ...``) are joined into one reply and one
verdict. Output, in input order: ``{"line": n, "smtp_code": ..., "enhanced_code": ..., "reason":
..., "class": ..., "action": ..., "rule": ..., "evidence": ...}`` (``action``: what the sender
should do) or ``{"line": n, "error": "..."}`` for a line that cannot be classified. Blank lines
produce no output (docs/classification.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
import typer

from models.classify.classifier import (
    CLASS_ACTIONS,
    DSN_ACTIONS,
    SMTP_PHASES,
    Classifier,
    RuleError,
    normalize_reply,
    parse_codes,
    phase_from_text,
)
from models.classify.classifier import dsn_action as canonical_action
from models.classify.classifier import smtp_phase as canonical_phase
from models.ingest.providers import ProviderResolver

MAX_LINE = 8192 + 1024
MAX_RESPONSE = 8192
_RE_ENH = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class BadLine(ValueError):
    pass


def _canonical_or_exit(
    value: str | None, canon: Callable[[str], str | None], option: str, allowed: Iterable[str]
) -> str | None:
    """The canonical form of an option's value; exit 2 with a clear message if it has none."""
    if not value:
        return None
    out = canon(value)
    if out is None:
        typer.echo(
            f"repmon classify: {option} {value!r} is not one of {', '.join(allowed)}", err=True
        )
        raise typer.Exit(2)
    return out


def rule_files_from_env(cli_files: list[Path] | None) -> list[Path]:
    """User rule files: ``REPMON_RULES`` (os.pathsep-separated) first, then ``--rules``.

    Later files take precedence over earlier ones only through rule order (the first matching
    user rule wins), so ``--rules`` files given on the command line are tried before the ones
    from the environment.
    """
    env = os.environ.get("REPMON_RULES", "")
    from_env = [Path(p) for p in env.split(os.pathsep) if p.strip()]
    return [*(cli_files or []), *from_env]


def _smtp_code(v: Any) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool):
        raise BadLine("smtp_code must be an integer")
    if isinstance(v, str) and v.strip().isdigit():
        v = int(v.strip())
    if not isinstance(v, int):
        raise BadLine("smtp_code must be an integer")
    if not 200 <= v <= 599:
        raise BadLine(f"smtp_code {v} outside 200..599")
    return v


def _enhanced(v: Any) -> str | None:
    if v is None or v == "":
        return None
    if not isinstance(v, str) or not _RE_ENH.match(v.strip()):
        raise BadLine(f"enhanced_code {v!r} is not of the form class.subject.detail")
    return v.strip()


def _opt_str(obj: dict[str, Any], key: str) -> str | None:
    v = obj.get(key)
    if v is None:
        return None
    if not isinstance(v, str):
        raise BadLine(f"{key} must be a string")
    return v.strip() or None


def _context(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """The ``smtp_command`` and ``dsn_action`` fields of a JSON line, canonical, or BadLine."""
    cmd = _opt_str(obj, "smtp_command")
    act = _opt_str(obj, "dsn_action")
    phase = canonical_phase(cmd) if cmd else None
    if cmd and phase is None:
        raise BadLine(f"smtp_command {cmd!r} is not one of {', '.join(SMTP_PHASES)}")
    action = canonical_action(act) if act else None
    if act and action is None:
        raise BadLine(f"dsn_action {act!r} is not one of {', '.join(DSN_ACTIONS)}")
    return phase, action


Parsed = tuple[int | None, str | None, str, str | None, str | None, str | None, str | None]


def parse_line(text: str, resolver: ProviderResolver) -> Parsed:
    """Return (smtp_code, enhanced_code, response, provider, operator, smtp_command,
    dsn_action) or raise BadLine."""
    s = text.strip()
    if s.startswith(("{", "[")):
        try:
            obj = orjson.loads(s)
        except orjson.JSONDecodeError as exc:
            raise BadLine(f"invalid JSON: {exc}") from None
        if not isinstance(obj, dict):
            raise BadLine("JSON line must be an object")
        smtp = _smtp_code(obj.get("smtp_code"))
        enh = _enhanced(obj.get("enhanced_code"))
        resp = obj.get("response", "")
        if resp is None:
            resp = ""
        if not isinstance(resp, str):
            raise BadLine("response must be a string")
        if len(resp) > MAX_RESPONSE:
            raise BadLine("response longer than 8192 characters")
        provider = _opt_str(obj, "provider")
        operator = _opt_str(obj, "operator")
        mx_host = _opt_str(obj, "mx_host")
        domain = _opt_str(obj, "recipient_domain") or ""
        phase, action = _context(obj)
        if mx_host or domain:
            p, o = resolver.resolve(domain.lower(), mx_host or "")
            provider = provider or (p if p != "other" else None)
            operator = operator or (o if o != "other" else None)
        if smtp is None and enh is None and not resp.strip():
            raise BadLine("no smtp_code, enhanced_code or response")
        smtp, enh = parse_codes(smtp, enh, resp)
        return smtp, enh, resp, provider, operator, phase, action
    if len(s) > MAX_RESPONSE:
        raise BadLine("reply line longer than 8192 characters")
    smtp, enh = parse_codes(None, None, s)
    if smtp is not None and not 200 <= smtp <= 599:
        raise BadLine(f"smtp_code {smtp} outside 200..599")
    return smtp, enh, s, None, None, None, None


#: a plain reply line's code and separator: "550-..." continues, "550 ..." ends (RFC 5321 4.2.1)
_RE_REPLY_LINE = re.compile(r"\s*([245]\d\d)([- ]|$)")
_RE_ENH_PREFIX = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?:\s+|$)")


def _ends_reply(line: str, code: str) -> bool:
    """Whether a ``550-`` line also holds the last line of its reply (``... 550 5.7.1 ...``)."""
    return re.search(rf"\s{code}(?:\s|$)", line[4:]) is not None


def _join_continuation(lines: list[str]) -> str:
    """One reply from its lines: the first line whole, the others without their code prefix
    (``550-5.7.26 ``), so the phrases that run over line ends stay whole."""
    parts = [lines[0].strip()]
    for ln in lines[1:]:
        t = ln.strip()
        t = t[4:] if len(t) > 3 else ""
        m = _RE_ENH_PREFIX.match(t)
        if m:
            t = t[m.end() :]
        if t:
            parts.append(t)
    return " ".join(parts)


class _Runner:
    """Reads lines, joins multi-line replies, classifies, and buffers the JSON output."""

    def __init__(
        self,
        classifier: Classifier,
        out: BinaryIO,
        smtp_command: str | None = None,
        dsn_action: str | None = None,
    ) -> None:
        self.classifier = classifier
        self.resolver = ProviderResolver()
        self.out = out
        self.buf: list[bytes] = []
        self.n_ok = 0
        self.n_err = 0
        self.default_phase = smtp_command
        self.default_action = dsn_action
        #: (first line number, code, lines) of a multi-line reply still open
        self.pending: tuple[int, str, list[str]] | None = None
        self.pending_last = 0

    def emit(self, rec: dict[str, Any]) -> None:
        self.buf.append(orjson.dumps(rec) + b"\n")
        if len(self.buf) >= 256:
            self.flush()

    def flush(self) -> None:
        self.out.write(b"".join(self.buf))
        self.buf.clear()

    def error(self, lineno: int, msg: str) -> None:
        self.emit({"line": lineno, "error": msg})
        self.n_err += 1

    def classify_text(self, lineno: int, text: str, last: int = 0) -> None:
        try:
            smtp, enh, resp, provider, operator, phase, action = parse_line(text, self.resolver)
        except BadLine as exc:
            self.error(lineno, str(exc))
            return
        phase = phase or self.default_phase
        action = action or self.default_action
        res = self.classifier.classify(
            smtp, enh, resp, provider, operator, smtp_command=phase, dsn_action=action
        )
        evidence = normalize_reply(resp)
        rec: dict[str, Any] = {"line": lineno}
        if last > lineno:
            rec["last_line"] = last
        rec.update(
            {
                "smtp_code": smtp,
                "enhanced_code": enh,
                "reason": res.reason,
                "class": res.cls,
                "action": CLASS_ACTIONS[res.cls],
                "rule": res.rule,
                "evidence": evidence,
            }
        )
        if provider:
            rec["provider"] = provider
        if operator:
            rec["operator"] = operator
        phase = phase or phase_from_text(evidence.lower())
        if phase:
            rec["smtp_command"] = phase
        if action:
            rec["dsn_action"] = action
        self.emit(rec)
        self.n_ok += 1

    def close_pending(self) -> None:
        if self.pending is None:
            return
        first, _, lines = self.pending
        self.pending = None
        text = _join_continuation(lines)
        if len(text) > MAX_RESPONSE:
            self.error(first, "reply longer than 8192 characters")
            return
        self.classify_text(first, text, self.pending_last)

    def line(self, lineno: int, raw: bytes) -> None:
        if len(raw) > MAX_LINE:
            self.close_pending()
            self.error(lineno, "line too long")
            return
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.close_pending()
            self.error(lineno, "line is not valid UTF-8")
            return
        s = text.strip()
        if not s:
            self.close_pending()  # blank lines: no output
            return
        m = None if s.startswith(("{", "[")) else _RE_REPLY_LINE.match(s)
        # a line that holds its own last line ("550-5.7.1 a 550-5.7.1 b 550 5.7.1 c", a reply a
        # log flattened into one line) is a whole reply
        ends = m is not None and (m.group(2) != "-" or _ends_reply(s, m.group(1)))
        if self.pending is not None:
            if m is not None and m.group(1) == self.pending[1]:
                self.pending[2].append(s)
                self.pending_last = lineno
                if ends:
                    self.close_pending()  # "550 ..." (or a bare "550"): the last line
                return
            self.close_pending()  # another reply starts: the open one ends incomplete
        if m is not None and not ends:
            self.pending = (lineno, m.group(1), [s])
            self.pending_last = lineno
            return
        self.classify_text(lineno, s)


def run(
    classifier: Classifier,
    inp: BinaryIO,
    out: BinaryIO,
    *,
    smtp_command: str | None = None,
    dsn_action: str | None = None,
) -> tuple[int, int]:
    """Classify every reply of ``inp`` into ``out``; return (replies classified, error lines).

    ``smtp_command`` / ``dsn_action`` apply to every reply whose JSON line does not name its own.
    """
    r = _Runner(classifier, out, smtp_command, dsn_action)
    for lineno, raw in enumerate(inp, start=1):
        r.line(lineno, raw)
    r.close_pending()
    r.flush()
    out.flush()
    return r.n_ok, r.n_err


def register(app: typer.Typer) -> None:
    @app.command("classify")
    def classify(
        rules: Annotated[
            list[Path] | None,
            typer.Option(
                "--rules",
                help="User rules file (TOML, repeatable); wins over the default rules. "
                "Also read from REPMON_RULES (os.pathsep-separated).",
            ),
        ] = None,
        smtp_command: Annotated[
            str | None,
            typer.Option(
                "--smtp-command",
                help="SMTP phase the replies answered, for lines that do not say: CONNECT, "
                "HELO (or EHLO), MAIL, RCPT, DATA, END-OF-DATA. Also the JSON field smtp_command.",
            ),
        ] = None,
        dsn_action_opt: Annotated[
            str | None,
            typer.Option(
                "--dsn-action",
                help="DSN Action of the replies, for lines that do not say: failed, delayed, "
                "expired, delivered, relayed, expanded. Also the JSON field dsn_action.",
            ),
        ] = None,
    ) -> None:
        """Classify SMTP replies (JSON lines or plain reply lines) from stdin to JSON lines."""
        phase = _canonical_or_exit(smtp_command, canonical_phase, "--smtp-command", SMTP_PHASES)
        action = _canonical_or_exit(dsn_action_opt, canonical_action, "--dsn-action", DSN_ACTIONS)
        try:
            classifier = Classifier(rule_files_from_env(rules))
        except RuleError as exc:
            typer.echo(f"repmon classify: {exc}", err=True)
            raise typer.Exit(2) from None
        inp = typer.get_binary_stream("stdin")
        out = typer.get_binary_stream("stdout")
        try:
            run(classifier, inp, out, smtp_command=phase, dsn_action=action)
        except BrokenPipeError:  # e.g. `| head`
            with contextlib.suppress(Exception):
                sys.stdout.close()
