"""Shared fixtures. Tests that need Kafka FAIL (never skip) when no broker answers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bootstrap() -> str:
    return os.environ.get("REPMON_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """Address of a live broker. Fails the test when none answers: start it with
    `deploy/kafka/local-kafka start` (./dev test does this for you)."""
    from streams.worker.topics import wait_for_broker

    addr = _bootstrap()
    try:
        wait_for_broker(addr, timeout_s=30.0)
    except TimeoutError as exc:
        pytest.fail(f"Kafka broker required but not reachable at {addr}: {exc}")
    return addr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def private_topics(tag: str) -> dict[str, str]:
    """``REPMON_TOPIC_*`` settings naming topics of this test alone (``it-<tag>.*``)."""
    return {
        "REPMON_TOPIC_EVENTS": f"it-{tag}.events",
        "REPMON_TOPIC_DLQ": f"it-{tag}.events.dlq",
        "REPMON_TOPIC_ROLLUP": f"it-{tag}.rollup",
        "REPMON_TOPIC_INCIDENTS": f"it-{tag}.incidents",
        "REPMON_TOPIC_THROTTLE": f"it-{tag}.throttle",
        "REPMON_TOPIC_THROTTLE_OVERRIDES": f"it-{tag}.throttle.overrides",
        "REPMON_TOPIC_STATE": f"it-{tag}.state",
        "REPMON_TOPIC_INGEST_STATE": f"it-{tag}.state.ingest",
        "REPMON_TOPIC_SUPPRESSIONS": f"it-{tag}.suppressions",
        "REPMON_TOPIC_WORKERS": f"it-{tag}.workers",
    }


class PrivateBroker:
    """A broker of our own, to stop and start under a test: deploy/kafka/local-kafka on two free
    ports (client and controller) with its state under ``tmp`` (the suite's shared broker is
    never touched). ``run("start")`` / ``run("stop")``; clients connect to :attr:`bootstrap`."""

    def __init__(self, tmp: Path) -> None:
        port, cport = free_port(), free_port()
        while cport == port:  # two calls may give the same port; local-kafka refuses it
            cport = free_port()
        self.bootstrap = f"127.0.0.1:{port}"
        self.env = dict(os.environ)
        self.env.pop("REPMON_KAFKA_BOOTSTRAP", None)
        self.env.update(
            REPMON_KAFKA_PORT=str(port),
            REPMON_KAFKA_CONTROLLER_PORT=str(cport),
            REPMON_KAFKA_STATE_DIR=str(tmp / "kafka"),
            # the readiness probe imports kafka-python: this interpreter has it
            REPMON_PYTHON=sys.executable,
        )

    def run(self, verb: str) -> None:
        """``local-kafka <verb>``; fails the test with the tool's output when the tool fails."""
        r = subprocess.run(
            [str(REPO / "deploy/kafka/local-kafka"), verb],
            env=self.env,
            capture_output=True,
            timeout=180,
        )
        assert r.returncode == 0, f"local-kafka {verb}: {r.stdout.decode()}{r.stderr.decode()}"

    def reachable(self) -> bool:
        """Whether the broker's client port accepts a connection."""
        host, _, port = self.bootstrap.partition(":")
        with socket.socket() as s:
            s.settimeout(0.5)
            return s.connect_ex((host, int(port))) == 0


class WorkerProc:
    """`repmon worker` as a subprocess on private topics and a private port."""

    def __init__(self, bootstrap: str, tmp: Path, partitions: int = 3) -> None:
        tag = uuid.uuid4().hex[:8]
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.env = dict(os.environ)
        self.env.update(
            REPMON_KAFKA_BOOTSTRAP=bootstrap,
            REPMON_APP_ID=f"repmon-it-{tag}",
            **private_topics(tag),
            REPMON_TOPIC_PARTITIONS=str(partitions),
            REPMON_WEB_PORT=str(self.port),
            REPMON_DATA_DIR=str(tmp / "faust"),
            REPMON_TICK_S="0.5",
        )
        self.topics = {
            k: self.env[f"REPMON_TOPIC_{k.upper()}"]
            for k in (
                "events",
                "dlq",
                "rollup",
                "incidents",
                "throttle",
                "throttle_overrides",
                "state",
                "ingest_state",
                "suppressions",
                "workers",
            )
        }
        self.log_path = tmp / "worker.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def sibling(self, tmp: Path) -> WorkerProc:
        """Another worker of the same group, on the same topics (its own port and data dir)."""
        other = WorkerProc.__new__(WorkerProc)
        other.port = free_port()
        other.env = dict(self.env)
        other.env.update(REPMON_WEB_PORT=str(other.port), REPMON_DATA_DIR=str(tmp / "faust"))
        other.topics = dict(self.topics)
        tmp.mkdir(parents=True, exist_ok=True)
        other.log_path = tmp / "worker.log"
        other.proc = None
        return other

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 90.0) -> None:
        from streams.worker.settings import Settings
        from streams.worker.topics import ensure_topics

        # create the topics first, so the producer and the worker agree on partitions
        ensure_topics(Settings(_env_file=None, **self.settings_kwargs()))
        log = self.log_path.open("ab")  # a restarted worker appends
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited early:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.3)
        raise AssertionError(f"worker not healthy within {timeout_s} s:\n{self.log_tail()}")

    def settings_kwargs(self) -> dict[str, object]:
        return {
            "kafka_bootstrap": self.env["REPMON_KAFKA_BOOTSTRAP"],
            "app_id": self.env["REPMON_APP_ID"],
            "topic_events": self.topics["events"],
            "topic_dlq": self.topics["dlq"],
            "topic_rollup": self.topics["rollup"],
            "topic_incidents": self.topics["incidents"],
            "topic_throttle": self.topics["throttle"],
            "topic_throttle_overrides": self.topics["throttle_overrides"],
            "topic_state": self.topics["state"],
            "topic_ingest_state": self.topics["ingest_state"],
            "topic_suppressions": self.topics["suppressions"],
            "topic_workers": self.topics["workers"],
            "topic_partitions": int(self.env["REPMON_TOPIC_PARTITIONS"]),
        }

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            return bytes(r.read())

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def worker(kafka_bootstrap: str, tmp_path: Path) -> Iterator[WorkerProc]:
    w = WorkerProc(kafka_bootstrap, tmp_path)
    try:
        yield w
    finally:
        w.stop()
