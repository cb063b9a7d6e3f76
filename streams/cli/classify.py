"""``repmon classify``: classify SMTP replies read from stdin, one JSON line out per line in.

Input lines are either JSON objects ``{"smtp_code": 550, "enhanced_code": "5.1.1", "response":
"...", "provider": "google", "mx_host": "..."}`` (every key optional, but at least one of the
codes or a response must be present) or plain reply lines such as ``550 5.1.1 <x@y>: User
unknown``. Output, in input order: ``{"line": n, "smtp_code": ..., "enhanced_code": ...,
"reason": ..., "class": ..., "rule": ..., "evidence": ...}`` or ``{"line": n, "error": "..."}``
for a line that cannot be classified. Blank lines produce no output (docs/classification.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from pathlib import Path
from typing import Annotated, Any, BinaryIO

import orjson
import typer

from models.classify.classifier import Classifier, RuleError, normalize_reply, parse_codes
from models.ingest.providers import ProviderResolver

MAX_LINE = 8192 + 1024
MAX_RESPONSE = 8192
_RE_ENH = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")


class BadLine(ValueError):
    pass


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


def parse_line(
    text: str, resolver: ProviderResolver
) -> tuple[int | None, str | None, str, str | None, str | None]:
    """Return (smtp_code, enhanced_code, response, provider, operator) or raise BadLine."""
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
        if mx_host or domain:
            p, o = resolver.resolve(domain.lower(), mx_host or "")
            provider = provider or (p if p != "other" else None)
            operator = operator or (o if o != "other" else None)
        if smtp is None and enh is None and not resp.strip():
            raise BadLine("no smtp_code, enhanced_code or response")
        smtp, enh = parse_codes(smtp, enh, resp)
        return smtp, enh, resp, provider, operator
    if len(s) > MAX_RESPONSE:
        raise BadLine("reply line longer than 8192 characters")
    smtp, enh = parse_codes(None, None, s)
    if smtp is not None and not 200 <= smtp <= 599:
        raise BadLine(f"smtp_code {smtp} outside 200..599")
    return smtp, enh, s, None, None


def run(classifier: Classifier, inp: BinaryIO, out: BinaryIO) -> tuple[int, int]:
    """Classify every line of ``inp`` into ``out``; return (lines classified, error lines)."""
    resolver = ProviderResolver()
    n_ok = n_err = 0
    buf: list[bytes] = []
    for lineno, raw in enumerate(inp, start=1):
        rec: dict[str, Any]
        try:
            if len(raw) > MAX_LINE:
                raise BadLine("line too long")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadLine("line is not valid UTF-8") from None
            if not text.strip():
                continue  # blank lines: no output
            smtp, enh, resp, provider, operator = parse_line(text, resolver)
            res = classifier.classify(smtp, enh, resp, provider, operator)
            rec = {
                "line": lineno,
                "smtp_code": smtp,
                "enhanced_code": enh,
                "reason": res.reason,
                "class": res.cls,
                "rule": res.rule,
                "evidence": normalize_reply(resp),
            }
            if provider:
                rec["provider"] = provider
            if operator:
                rec["operator"] = operator
            n_ok += 1
        except BadLine as exc:
            rec = {"line": lineno, "error": str(exc)}
            n_err += 1
        buf.append(orjson.dumps(rec) + b"\n")
        if len(buf) >= 256:
            out.write(b"".join(buf))
            buf.clear()
    out.write(b"".join(buf))
    out.flush()
    return n_ok, n_err


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
    ) -> None:
        """Classify SMTP replies (JSON lines or plain reply lines) from stdin to JSON lines."""
        try:
            classifier = Classifier(rule_files_from_env(rules))
        except RuleError as exc:
            typer.echo(f"repmon classify: {exc}", err=True)
            raise typer.Exit(2) from None
        inp = typer.get_binary_stream("stdin")
        out = typer.get_binary_stream("stdout")
        try:
            run(classifier, inp, out)
        except BrokenPipeError:  # e.g. `| head`
            with contextlib.suppress(Exception):
                sys.stdout.close()
