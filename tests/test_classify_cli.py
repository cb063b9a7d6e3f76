"""CLI contract of `repmon classify` (streams/cli/classify.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from streams.cli.classify import register

REPO = Path(__file__).resolve().parent.parent


def _app() -> typer.Typer:
    app = typer.Typer()
    register(app)

    @app.command("noop")  # a second command keeps typer in multi-command mode
    def noop() -> None:
        pass

    return app


def _run(
    stdin: str, *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, object]], str]:
    runner = CliRunner()
    res = runner.invoke(_app(), ["classify", *args], input=stdin, env=env or {"REPMON_RULES": ""})
    lines = [json.loads(x) for x in res.stdout.splitlines() if x.strip()]
    return res.exit_code, lines, res.stdout


def test_json_lines_and_plain_lines() -> None:
    stdin = "\n".join(
        [
            json.dumps(
                {
                    "smtp_code": 550,
                    "enhanced_code": "5.1.1",
                    "response": "550 5.1.1 <x@y.com>: User unknown",
                }
            ),
            "550 5.1.1 <x@y>: User unknown",
            json.dumps(
                {
                    "response": "421-4.7.28 Gmail has detected an unusual rate of unsolicited mail - gsmtp"
                }
            ),
            json.dumps(
                {
                    "smtp_code": "451",
                    "response": "[TSS04] Messages from 1.2.3.4 temporarily deferred",
                    "mx_host": "mta6.am0.yahoodns.net",
                }
            ),
        ]
    )
    code, out, _ = _run(stdin + "\n")
    assert code == 0
    assert [o["line"] for o in out] == [1, 2, 3, 4]
    assert out[0]["reason"] == "userunknown" and out[0]["class"] == "hard"
    assert out[0]["smtp_code"] == 550 and out[0]["enhanced_code"] == "5.1.1"
    assert out[1]["reason"] == "userunknown"
    assert out[1]["smtp_code"] == 550 and out[1]["enhanced_code"] == "5.1.1"
    assert "@" not in str(out[1]["evidence"])
    assert out[2]["smtp_code"] == 421 and out[2]["enhanced_code"] == "4.7.28"
    assert (out[2]["reason"], out[2]["class"], out[2]["rule"]) == (
        "blocked",
        "throttle",
        "google.rate_limit_4728",
    )
    assert out[3]["provider"] == "yahoo" and out[3]["class"] == "throttle"
    for o in out:
        assert {"reason", "class", "rule", "smtp_code", "enhanced_code"} <= set(o)


def test_bad_lines_get_error_and_order_is_kept() -> None:
    lines = [
        "550 5.1.1 user unknown",
        "{not json",
        "[1, 2]",
        json.dumps({"smtp_code": 999, "response": "x"}),
        json.dumps({"smtp_code": 550, "enhanced_code": "5.1", "response": "x"}),
        json.dumps({"response": 12}),
        json.dumps({}),
        "",
        "   ",
        "452 4.2.2 mailbox full",
    ]
    code, out, _ = _run("\n".join(lines) + "\n")
    assert code == 0
    assert [o["line"] for o in out] == [1, 2, 3, 4, 5, 6, 7, 10]  # blank lines: no output
    assert "error" not in out[0] and out[0]["reason"] == "userunknown"
    for o in out[1:7]:
        assert "error" in o and "reason" not in o, o
    assert "invalid JSON" in str(out[1]["error"])
    assert "object" in str(out[2]["error"])
    assert "smtp_code" in str(out[3]["error"])
    assert "enhanced_code" in str(out[4]["error"])
    assert "response" in str(out[5]["error"])
    assert out[7]["reason"] == "mailboxfull" and out[7]["class"] == "soft"


def test_invalid_utf8_is_an_error_line() -> None:
    runner = CliRunner()
    res = runner.invoke(_app(), ["classify"], input=b"\xff\xfe bad\n550 5.1.1 user unknown\n")
    out = [json.loads(x) for x in res.stdout.splitlines()]
    assert out[0]["line"] == 1 and "UTF-8" in out[0]["error"]
    assert out[1]["reason"] == "userunknown"


def test_rules_option_and_env_precedence(tmp_path: Path) -> None:
    mine = tmp_path / "mine.toml"
    mine.write_text(
        '[[rule]]\nid = "mine.vmt"\npattern = \'\\bvirtual mailbox table\'\nreason = "filtered"\n'
    )
    env_file = tmp_path / "env.toml"
    env_file.write_text(
        '[[rule]]\nid = "env.vmt"\npattern = \'\\bvirtual mailbox\'\nreason = "suspend"\n'
    )
    line = "550 5.1.1 <a@b.c>: Recipient address rejected: User unknown in virtual mailbox table\n"
    _, out, _ = _run(line)
    assert out[0]["reason"] == "userunknown"
    _, out, _ = _run(line, "--rules", str(mine))
    assert (out[0]["reason"], out[0]["rule"]) == ("filtered", "mine.vmt")
    _, out, _ = _run(line, env={"REPMON_RULES": str(env_file)})
    assert out[0]["rule"] == "env.vmt"
    # --rules files come before REPMON_RULES files
    _, out, _ = _run(
        line, "--rules", str(mine), env={"REPMON_RULES": os.pathsep.join([str(env_file)])}
    )
    assert out[0]["rule"] == "mine.vmt"


def test_bad_rules_file_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rule]]\nid = "bad.one"\npattern = "("\nreason = "blocked"\n')
    runner = CliRunner()
    res = runner.invoke(_app(), ["classify", "--rules", str(bad)], input="550 x\n")
    assert res.exit_code == 2
    assert "bad.toml" in res.output and "bad.one" in res.output and "bad regex" in res.output


def test_console_script_subprocess() -> None:
    exe = REPO / ".venv" / "bin" / "repmon"
    cmd = (
        [str(exe), "classify"]
        if exe.exists()
        else [sys.executable, "-m", "streams.cli", "classify"]
    )
    stdin = "421 4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume or user complaints\n{oops\n"
    env = {k: v for k, v in os.environ.items() if k != "REPMON_RULES"}
    p = subprocess.run(
        cmd, input=stdin.encode(), capture_output=True, cwd=REPO, env=env, timeout=120
    )
    assert p.returncode == 0, p.stderr
    out = [json.loads(x) for x in p.stdout.decode().splitlines()]
    assert out[0]["class"] == "throttle" and out[0]["rule"] == "yahoo.tss04"
    assert "error" in out[1]


def test_multiline_reply_is_one_verdict() -> None:
    lines = [
        "550-5.7.26 This mail has been blocked because the sender is",
        "550-5.7.26 unauthenticated. Gmail requires all senders to authenticate with",
        "550 5.7.26 either SPF or DKIM. - gsmtp",
        "550 5.1.1 user unknown",
    ]
    code, out, _ = _run("\n".join(lines) + "\n")
    assert code == 0
    assert [(o["line"], o.get("last_line")) for o in out] == [(1, 3), (4, None)]
    assert (out[0]["reason"], out[0]["class"], out[0]["enhanced_code"]) == (
        "authfailure",
        "config",
        "5.7.26",
    )
    # the continuation prefixes are dropped, so phrases over line ends stay whole
    assert "sender is unauthenticated. Gmail" in str(out[0]["evidence"])
    assert out[1]["reason"] == "userunknown"


def test_interrupted_multiline_reply_ends_where_the_next_starts() -> None:
    lines = [
        "421-4.7.0 first line of a reply whose last line never comes",
        "",
        "450-4.2.0 <a@b.c>: Recipient address rejected: Greylisted,",
        "550 5.1.1 user unknown",
        '{"response": "452 4.2.2 mailbox full"}',
    ]
    _, out, _ = _run("\n".join(lines) + "\n")
    assert [o["line"] for o in out] == [1, 3, 4, 5]
    assert "last_line" not in out[0] and out[1]["reason"] == "greylisting"
    assert out[2]["reason"] == "userunknown" and out[3]["reason"] == "mailboxfull"


def test_action_field_follows_the_class() -> None:
    from models.classify.classifier import CLASS_ACTIONS

    _, out, _ = _run("550 5.1.1 user unknown\n421 4.7.28 unusual rate of unsolicited mail\n")
    assert out[0]["action"] == CLASS_ACTIONS["hard"]
    assert out[1]["class"] == "throttle" and out[1]["action"] == CLASS_ACTIONS["throttle"]


def test_context_fields_and_options() -> None:
    lines = [
        json.dumps({"response": "550 Unknown user x@y.jp", "smtp_command": "DATA"}),
        json.dumps({"response": "550 Unknown user x@y.jp", "smtp_command": "rcpt to"}),
        json.dumps({"response": "451 4.4.1 No answer from host", "dsn_action": "expired"}),
        "550 <a@b.c>: User unknown (in reply to end of DATA command)",
        json.dumps({"response": "x", "smtp_command": "BOGUS"}),
        json.dumps({"response": "x", "dsn_action": "maybe"}),
    ]
    _, out, _ = _run("\n".join(lines) + "\n")
    assert (out[0]["reason"], out[0]["smtp_command"]) == ("filtered", "DATA")
    assert (out[1]["reason"], out[1]["smtp_command"]) == ("userunknown", "RCPT")
    assert (out[2]["reason"], out[2]["dsn_action"]) == ("expired", "expired")
    assert (out[3]["reason"], out[3]["smtp_command"]) == ("filtered", "END-OF-DATA")
    assert "smtp_command" in str(out[4]["error"]) and "dsn_action" in str(out[5]["error"])
    # options apply to lines that do not say
    _, out, _ = _run("550 Unknown user x@y.jp\n", "--smtp-command", "DATA")
    assert out[0]["reason"] == "filtered"
    _, out, _ = _run("451 4.4.1 No answer from host\n", "--dsn-action", "expired")
    assert out[0]["reason"] == "expired"
    runner = CliRunner()
    res = runner.invoke(_app(), ["classify", "--smtp-command", "NOPE"], input="550 x\n")
    assert res.exit_code == 2 and "smtp-command" in res.output
    res = runner.invoke(_app(), ["classify", "--dsn-action", "NOPE"], input="550 x\n")
    assert res.exit_code == 2 and "dsn-action" in res.output


def test_reply_flattened_into_one_line_stays_alone() -> None:
    lines = [
        "550-5.7.1 [192.0.2.1] Our system has detected that this message is 550-5.7.1 likely "
        "unsolicited mail. 550 5.7.1 https://support.google.com/mail/?p=UnsolicitedMessageError - gsmtp",
        "550-5.7.26 This mail has been blocked because the sender is",
        "550 5.7.26 unauthenticated. - gsmtp",
    ]
    _, out, _ = _run("\n".join(lines) + "\n")
    assert [(o["line"], o.get("last_line")) for o in out] == [(1, None), (2, 3)]
    assert out[0]["reason"] == "spamdetected" and out[1]["reason"] == "authfailure"
