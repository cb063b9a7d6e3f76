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
