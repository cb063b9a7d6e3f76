"""deploy/kafka/local-kafka itself: its own broker on private ports and a private state dir.

The suite's shared broker (127.0.0.1:9092, started before pytest) is never touched: every command
here runs with REPMON_KAFKA_PORT/REPMON_KAFKA_CONTROLLER_PORT set to free ports, its own
REPMON_KAFKA_STATE_DIR under tmp_path, and REPMON_KAFKA_BOOTSTRAP removed from the environment.
The jars come from the usual cache (~/.m2 and ~/.cache/repmon/kafka), so this costs one broker
start and stop (about 10 to 20 s), not a download.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "deploy" / "kafka" / "local-kafka"


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def _alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


class Tool:
    def __init__(self, state_dir: Path) -> None:
        port, cport = _free_ports(2)
        self.port = port
        self.state_dir = state_dir
        self.env = {k: v for k, v in os.environ.items() if k != "REPMON_KAFKA_BOOTSTRAP"}
        self.env.update(
            REPMON_KAFKA_PORT=str(port),
            REPMON_KAFKA_CONTROLLER_PORT=str(cport),
            REPMON_KAFKA_STATE_DIR=str(state_dir),
            REPMON_PYTHON=sys.executable,
            REPMON_KAFKA_START_TIMEOUT="120",
        )

    def run(self, *args: str, timeout: float = 240.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TOOL), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def pid(self) -> int | None:
        try:
            return int((self.state_dir / "kafka.pid").read_text().strip())
        except (OSError, ValueError):
            return None


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[Tool]:
    t = Tool(tmp_path / "kafka")
    try:
        yield t
    finally:
        pid = t.pid()
        t.run("stop", timeout=60)
        # Belt and braces: never leave this test's JVM behind (and never kill anything else).
        if pid is not None and _alive(pid) and str(t.state_dir) in _cmdline(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _out(cp: subprocess.CompletedProcess[str]) -> str:
    return f"exit {cp.returncode}\nstdout:\n{cp.stdout}\nstderr:\n{cp.stderr}"


def test_bootstrap_address(tool: Tool) -> None:
    cp = tool.run("bootstrap")
    assert cp.returncode == 0, _out(cp)
    assert cp.stdout.strip() == f"127.0.0.1:{tool.port}"
    tool.env["REPMON_KAFKA_BOOTSTRAP"] = "broker-a:9092,broker-b:9092"
    cp = tool.run("bootstrap")
    assert cp.stdout.strip() == "broker-a:9092,broker-b:9092"


def test_status_and_stop_when_not_running(tool: Tool) -> None:
    cp = tool.run("status")
    assert cp.returncode == 3, _out(cp)
    cp = tool.run("stop")
    assert cp.returncode == 0, _out(cp)


def test_usage_error(tool: Tool) -> None:
    cp = tool.run("frobnicate")
    assert cp.returncode == 2
    assert "start" in cp.stderr


@pytest.mark.slow
def test_lifecycle_on_private_ports(tool: Tool) -> None:
    from kafka.admin import KafkaAdminClient

    addr = f"127.0.0.1:{tool.port}"

    t0 = time.monotonic()
    cp = tool.run("start")
    assert cp.returncode == 0, _out(cp)
    assert f"ready at {addr}" in cp.stdout, _out(cp)
    first_start = time.monotonic() - t0
    pid = tool.pid()
    assert pid is not None

    # A real broker answers on the private port: create a topic and see it.
    admin = KafkaAdminClient(bootstrap_servers=addr)
    try:
        admin.create_topics({"tool-test": {"num_partitions": 2, "replication_factor": 1}})
        assert "tool-test" in admin.list_topics()
    finally:
        admin.close()

    # start is idempotent, status reports the same pid
    cp = tool.run("start")
    assert cp.returncode == 0, _out(cp)
    assert "already running" in cp.stdout
    assert tool.pid() == pid
    cp = tool.run("status")
    assert cp.returncode == 0, _out(cp)
    assert f"pid {pid}" in cp.stdout

    # logs shows the broker log
    cp = tool.run("logs", "20")
    assert cp.returncode == 0, _out(cp)
    assert cp.stdout.count("\n") >= 1

    # stop, and stop again
    cp = tool.run("stop")
    assert cp.returncode == 0, _out(cp)
    assert "stopped" in cp.stdout
    assert not (tool.state_dir / "kafka.pid").exists()
    assert not _alive(pid)
    cp = tool.run("stop")
    assert cp.returncode == 0, _out(cp)
    cp = tool.run("status")
    assert cp.returncode == 3, _out(cp)

    # a restart reuses the formatted data dir: the topic is still there
    cp = tool.run("start")
    assert cp.returncode == 0, _out(cp)
    assert "formatted" not in cp.stdout, _out(cp)
    admin = KafkaAdminClient(bootstrap_servers=addr)
    try:
        assert "tool-test" in admin.list_topics()
    finally:
        admin.close()
    cp = tool.run("stop")
    assert cp.returncode == 0, _out(cp)
    assert first_start < 240
