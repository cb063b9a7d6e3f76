"""Following a compacted topic from its beginning in a daemon thread, for the fleet clients.

:class:`CompactedTopicFollower` is the Kafka side both :class:`~streams.fleet.client.ThrottleClient`
(``repmon.throttle``) and :class:`~streams.fleet.suppressions.SuppressionClient`
(``repmon.suppressions``) share; the subclass says what a message means and where it goes:

* ``_parse(key, value)`` turns one message into an item, or None (malformed: the subclass counts
  it and says why; never raises);
* ``_stage(items)``: items read **before** the first catch-up (the topic's history): keep them
  aside, nothing is answered from a half-read history;
* ``_publish_staged()``: the catch-up is reached, publish everything staged as one change;
* ``_drop_staged()``: the connection was lost before the catch-up: what was staged is dropped
  and the history is read again from the start;
* ``_apply_live(items)``: after the catch-up, one poll batch (never empty);
* ``_housekeeping()``: every ``housekeeping_every_s`` (the throttle client prunes expired
  decisions).

The follower uses kafka-python without a consumer group: every process reads every partition
from the beginning (``auto_offset_reset=earliest``, nothing committed, topics never
auto-created). The first time it connects it notes the partitions' end offsets and stages what it
reads until every partition's position reaches them (a partition whose end is 0 is reached at
once), then publishes. Later poll batches are applied as they come. After a reconnection it
continues from the offsets it had reached (no replay of older values). New partitions are
picked up every ``metadata_every_s``.

**Health**: :attr:`healthy` is true when the thread runs, the client caught up once, and the
broker answered an end-offsets request (every ``health_every_s``) within ``health_timeout_s``.
Connection and poll errors are counted in ``stats`` and retried every ``retry_backoff_s``; the
thread never dies of them, and lookups (the subclass's, from memory) never wait for Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Generic, Self, TypedDict, TypeVar

log = logging.getLogger("repmon.fleet")

T = TypeVar("T")


class FollowOptions(TypedDict, total=False):
    """The following options a client built on :class:`CompactedTopicFollower` passes on."""

    consumer_config: Mapping[str, Any] | None
    poll_timeout_s: float
    health_every_s: float
    health_timeout_s: float
    connect_timeout_s: float
    retry_backoff_s: float
    metadata_every_s: float


class CompactedTopicFollower(Generic[T]):
    """Follows one compacted topic in a daemon thread (see the module's docstring).

    ``bootstrap``: Kafka bootstrap servers (None: no broker; the subclass is fed directly).
    ``consumer_config``: extra ``kafka.KafkaConsumer`` settings (TLS, SASL, ``client_id``).
    ``isolation_level``: ``"read_committed"`` to skip records of aborted transactions (None:
    kafka-python's default, ``read_uncommitted``)."""

    #: names the topic in log lines ("throttle topic: ...") and the thread
    _what = "topic"
    _thread_name = "repmon-follower"
    housekeeping_every_s = 60.0

    def __init__(
        self,
        bootstrap: str | list[str] | None,
        topic: str,
        *,
        consumer_config: Mapping[str, Any] | None = None,
        poll_timeout_s: float = 0.5,
        health_every_s: float = 5.0,
        health_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        retry_backoff_s: float = 2.0,
        metadata_every_s: float = 60.0,
        isolation_level: str | None = None,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer_config = dict(consumer_config or {})
        self.poll_timeout_s = poll_timeout_s
        self.health_every_s = health_every_s
        self.health_timeout_s = health_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.metadata_every_s = metadata_every_s
        self.isolation_level = isolation_level
        self._changed = threading.Condition()
        self._version = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._positions: dict[Any, int] = {}
        self._last_ok: float | None = None  # monotonic time the broker last answered
        self._last_update: float | None = None  # wall time of the last applied change
        self._caught_up = False
        self.stats: dict[str, int] = {
            "records": 0,
            "tombstones": 0,
            "skipped": 0,
            "connect_errors": 0,
            "poll_errors": 0,
        }

    # ------------------------------------------------------------------ hooks
    def _parse(self, key: bytes | str | None, value: bytes | str | None) -> T | None:
        raise NotImplementedError

    def _stage(self, items: list[T]) -> None:
        raise NotImplementedError

    def _publish_staged(self) -> None:
        raise NotImplementedError

    def _drop_staged(self) -> None:
        raise NotImplementedError

    def _apply_live(self, items: list[T]) -> None:
        raise NotImplementedError

    def _housekeeping(self) -> None:
        return None

    # ------------------------------------------------------------------ changes
    def _note_change(self) -> None:
        """Called by the subclass after each change of what it answers."""
        self._last_update = time.time()
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    @property
    def version(self) -> int:
        """Incremented on every change of the table (see :meth:`wait_for_change`)."""
        return self._version

    def wait_for_change(self, version: int, timeout: float) -> bool:
        """Block until :attr:`version` differs from ``version`` (True) or ``timeout`` s pass."""
        with self._changed:
            return self._changed.wait_for(lambda: self._version != version, timeout)

    def wait_until(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Block until ``predicate()`` holds, re-checking on every change (and every second,
        for expiries); False when ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        while True:
            v = self._version
            if predicate():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.wait_for_change(v, min(left, 1.0))

    # ------------------------------------------------------------------ health
    @property
    def healthy(self) -> bool:
        """Following the topic: the broker answered within ``health_timeout_s``, the topic's
        partitions are assigned and the client caught up with the topic once."""
        ok = self._last_ok
        return (
            self._caught_up
            and ok is not None
            and time.monotonic() - ok <= self.health_timeout_s
            and self._thread is not None
            and self._thread.is_alive()
        )

    @property
    def ready(self) -> bool:
        """Caught up with the topic once (stays True through later outages)."""
        return self._ready.is_set()

    @property
    def last_update(self) -> float | None:
        """Wall time (epoch seconds) of the last change applied, or None."""
        return self._last_update

    def wait_ready(self, timeout: float) -> bool:
        """Block until the client caught up with the topic as it was when it connected."""
        return self._ready.wait(timeout)

    # ------------------------------------------------------------------ the follower thread
    def start(self) -> Self:
        """Start following in a daemon thread; returns at once (``self``)."""
        if self.bootstrap is None:
            raise ValueError("no bootstrap servers: feed records with feed() / apply()")
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=self._thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop following (the table stays as it is); True when the thread ended in time."""
        self._stop.set()
        t = self._thread
        if t is None:
            return True
        t.join(timeout)
        return not t.is_alive()

    def close(self, timeout: float = 10.0) -> bool:
        return self.stop(timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stop.is_set():
            consumer = None
            try:
                consumer = self._connect()
            except Exception as exc:
                self.stats["connect_errors"] += 1
                log.warning("%s: cannot connect to %s: %s", self._what, self.bootstrap, exc)
            if consumer is not None:
                try:
                    self._follow(consumer)
                except Exception as exc:
                    self.stats["poll_errors"] += 1
                    log.warning("%s: follower error, reconnecting: %s", self._what, exc)
                finally:
                    with contextlib.suppress(Exception):
                        consumer.close(autocommit=False, timeout_ms=2000)
            self._stop.wait(self.retry_backoff_s)

    def _connect(self) -> Any:
        from kafka import KafkaConsumer

        cfg: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "group_id": None,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "request_timeout_ms": max(int(self.health_timeout_s * 1000), 5000),
            "client_id": "repmon-fleet",
        }
        if self.isolation_level is not None:
            cfg["isolation_level"] = self.isolation_level
        known = KafkaConsumer.DEFAULT_CONFIG  # kafka-python 2.x rejects keys it does not know
        if "allow_auto_create_topics" in known:
            cfg["allow_auto_create_topics"] = False
        for k in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):  # 3.x, 2.x
            if k in known:
                cfg[k] = int(self.connect_timeout_s * 1000)
                break
        cfg.update(self.consumer_config)
        consumer = KafkaConsumer(**cfg)
        self._last_ok = time.monotonic()
        return consumer

    def _assign(self, consumer: Any) -> list[Any]:
        from kafka import TopicPartition

        parts = consumer.partitions_for_topic(self.topic) or set()  # may answer from its cache
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        if set(tps) != set(consumer.assignment()):
            consumer.assign(tps)
            fresh = []
            for tp in tps:
                pos = self._positions.get(tp)
                if pos is None:
                    fresh.append(tp)
                else:  # a reconnect continues where it was: no replay of older values
                    consumer.seek(tp, pos)
            if fresh:
                consumer.seek_to_beginning(*fresh)
            if tps:
                log.info("%s %s: following %d partition(s)", self._what, self.topic, len(tps))
        return tps

    def _follow(self, consumer: Any) -> None:
        timeout_ms = int(self.health_timeout_s * 1000)
        if not self._caught_up:  # the staged history of a lost connection is gone: read it again
            self._positions.clear()
            self._drop_staged()
        tps: list[Any] = []
        next_meta = next_health = 0.0
        next_housekeeping = 0.0
        target: dict[Any, int] | None = None  # end offsets to reach before the first answers
        while not self._stop.is_set():
            mono = time.monotonic()
            if mono >= next_meta:
                tps = self._assign(consumer)
                next_meta = mono + (self.metadata_every_s if tps else self.health_every_s)
            if not tps:  # the topic does not exist (yet): ask again later
                self._stop.wait(min(self.poll_timeout_s, max(0.0, next_meta - mono)))
                continue
            if mono >= next_health:
                next_health = mono + self.health_every_s
                try:
                    ends = consumer.end_offsets(tps, timeout_ms=timeout_ms)
                except Exception as exc:
                    log.warning("%s: broker not answering: %s", self._what, exc)
                else:
                    self._last_ok = time.monotonic()
                    if target is None and not self._caught_up:
                        target = dict(ends)
            batch = consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000))
            items: list[T] = []
            for tp, msgs in batch.items():
                for m in msgs:
                    parsed = self._parse(m.key, m.value)
                    if parsed is not None:
                        items.append(parsed)
                if msgs:
                    self._positions[tp] = msgs[-1].offset + 1
            if self._caught_up:
                if items:
                    self._apply_live(items)
                if mono >= next_housekeeping:
                    next_housekeeping = mono + self.housekeeping_every_s
                    self._housekeeping()
                continue
            if items:
                self._stage(items)
            if target is not None and all(
                consumer.position(tp, timeout_ms=timeout_ms) >= end for tp, end in target.items()
            ):
                # publish the history read so far at once: no half-read state is answered
                self._publish_staged()
                self._caught_up = True
                self._ready.set()
                log.info("%s %s: caught up", self._what, self.topic)


__all__ = ["CompactedTopicFollower"]
