"""Readiness probe for deploy/kafka/local-kafka: does a Kafka metadata request succeed?

Usage: python kafka_probe.py BOOTSTRAP [--timeout SECONDS] [--pid PID]

Polls ``KafkaAdminClient(...).list_topics()`` (a Metadata request) until it succeeds or the
timeout passes. With ``--pid`` it gives up as soon as that process is gone (the broker died).
A timeout of 0 means a single attempt. Uses only kafka-python (2.x or 3.x), which the project
depends on; run it with the project's virtualenv python.

Exit codes: 0 reachable, 1 not reachable before the timeout, 2 the --pid process exited,
4 kafka-python is not importable by this interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import time

EXIT_OK = 0
EXIT_UNREACHABLE = 1
EXIT_DIED = 2
EXIT_NO_CLIENT = 4


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    # A zombie (exited, not yet reaped by its parent) still answers kill(0).
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def _attempt(admin_cls: type, bootstrap: str, budget_s: float) -> tuple[bool, str]:
    budget_ms = max(500, int(budget_s * 1000))
    wanted = {
        "bootstrap_servers": bootstrap,
        "client_id": "repmon-local-kafka-probe",
        "request_timeout_ms": max(budget_ms, 2000),
        "bootstrap_timeout_ms": budget_ms,  # kafka-python 3.x
        "api_version_auto_timeout_ms": budget_ms,  # kafka-python 2.x
        "reconnect_backoff_max_ms": 1000,
    }
    known = getattr(admin_cls, "DEFAULT_CONFIG", wanted)
    config = {k: v for k, v in wanted.items() if k in known}
    admin = None
    try:
        admin = admin_cls(**config)
        topics = admin.list_topics()
    except Exception as exc:  # any failure means "not ready yet"
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        if admin is not None:
            with contextlib.suppress(Exception):
                admin.close()
    return True, f"{len(topics)} topic(s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap")
    parser.add_argument("--timeout", type=float, default=0.0)
    parser.add_argument("--pid", type=int, default=None)
    parser.add_argument("--attempt-timeout", type=float, default=3.0)
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args(argv)

    # kafka-python logs every refused connection at WARNING/ERROR; the caller prints the outcome.
    logging.disable(logging.CRITICAL)
    try:
        from kafka.admin import KafkaAdminClient
    except ImportError as exc:
        print(
            f"kafka-python is not importable by {sys.executable} ({exc}); "
            "set REPMON_PYTHON to the project's virtualenv python",
            file=sys.stderr,
        )
        return EXIT_NO_CLIENT

    deadline = time.monotonic() + max(0.0, args.timeout)
    last = "no attempt"
    while True:
        if args.pid is not None and not _alive(args.pid):
            print(f"broker process {args.pid} exited", file=sys.stderr)
            return EXIT_DIED
        budget = min(args.attempt_timeout, max(0.5, deadline - time.monotonic()))
        ok, last = _attempt(KafkaAdminClient, args.bootstrap, budget)
        if ok:
            if args.verbose:
                print(f"{args.bootstrap}: metadata ok ({last})")
            return EXIT_OK
        if time.monotonic() >= deadline:
            print(f"{args.bootstrap}: not reachable ({last})", file=sys.stderr)
            return EXIT_UNREACHABLE
        time.sleep(0.25)


if __name__ == "__main__":
    sys.exit(main())
