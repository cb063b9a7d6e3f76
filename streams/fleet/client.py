"""The fleet client: follow ``repmon.throttle`` and answer "how fast may I send this message".

A sending fleet (an MTA's policy hook, a campaign scheduler) creates one :class:`ThrottleClient`
per process::

    from streams.fleet import ThrottleClient, RateLimiter

    client = ThrottleClient("kafka-1:9092").start()       # returns at once, follows in a thread
    f = client.factor(domain="gmail.com", provider="google", ip="203.0.113.6", pool="shared",
                      sender="news.example.com", tenant="acme", campaign="spring-sale")
    d = client.decision(...)                              # the ThrottleRecord that applies, or None

    limiter = RateLimiter(client, normal_rate={"provider:google": 200.0}, default_rate=50.0)
    wait = limiter.acquire(domain="gmail.com", provider="google", ip="203.0.113.6")
    # 0.0: send now (a token was taken); > 0: defer the message by that many seconds

The client reads the compacted topic from the beginning (no consumer group: every process reads
every partition), keeps ``scope -> ThrottleRecord`` (a tombstone or a ``normal`` record removes
the scope) and answers from memory: a lookup never touches Kafka and never blocks. The answer is
:func:`models.act.throttle_record.most_restrictive` over the message's scopes
(:func:`~models.act.throttle_record.message_scopes`), cached per message tuple; a cached answer
carries the interval over which it holds (until the earliest expiry among the decisions it
looked at) and every update of the table drops the cache.

**Fallback** (docs/throttle.md, "Signals"): when the broker or the topic is unreachable the
client keeps the decisions it has until each expires (``expires_at``, repmon re-issues live ones
every ``refresh_s``), after which the scope is back to normal: a stalled repmon never blocks
mail for longer than ``expire_s``. ``healthy`` tells whether the client is following (broker
answered within ``health_timeout_s``, topic assigned, caught up once); ``last_update`` is the wall
time of the last record applied. Before the first catch-up the answers are "normal".
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from models.act.throttle_record import (
    RecordError,
    ThrottleRecord,
    message_scopes,
    most_restrictive,
)

log = logging.getLogger("repmon.fleet")

DEFAULT_TOPIC = "repmon.throttle"
_INF = math.inf

#: a cache entry: (factor, valid_from, valid_until, record or None)
_Entry = tuple[float, float, float, ThrottleRecord | None]
_Key = tuple[str | None, ...]


class ThrottleClient:
    """Follows the compacted ``repmon.throttle`` topic and answers per-message lookups.

    ``bootstrap``: Kafka bootstrap servers (None: no broker; feed records with :meth:`feed` /
    :meth:`apply`, as the unit tests and the bench do). ``consumer_config``: extra
    ``kafka.KafkaConsumer`` settings (security, client_id, ...). ``clock``: the wall clock the
    decisions' ``expires_at`` is compared with (epoch seconds)."""

    def __init__(
        self,
        bootstrap: str | list[str] | None = None,
        topic: str = DEFAULT_TOPIC,
        *,
        consumer_config: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        poll_timeout_s: float = 0.5,
        health_every_s: float = 5.0,
        health_timeout_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        retry_backoff_s: float = 2.0,
        metadata_every_s: float = 60.0,
        cache_max_entries: int = 100_000,
    ) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer_config = dict(consumer_config or {})
        self.clock = clock
        self.poll_timeout_s = poll_timeout_s
        self.health_every_s = health_every_s
        self.health_timeout_s = health_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.retry_backoff_s = retry_backoff_s
        self.metadata_every_s = metadata_every_s
        self.cache_max_entries = cache_max_entries
        # the table and the cache are replaced, never mutated in place, by the writer: readers
        # take a reference without a lock (the writer swaps the table first, then the cache)
        self._decisions: dict[str, ThrottleRecord] = {}
        self._cache: dict[_Key, _Entry] = {}
        self._scope_cache: dict[tuple[str, ...], _Entry] = {}
        self._write = threading.Lock()
        self._changed = threading.Condition()
        self._version = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._positions: dict[Any, int] = {}
        self._last_ok: float | None = None  # monotonic time the broker last answered
        self._last_update: float | None = None  # wall time of the last applied record
        self._caught_up = False
        self.stats: dict[str, int] = {
            "records": 0,
            "tombstones": 0,
            "skipped": 0,
            "connect_errors": 0,
            "poll_errors": 0,
        }

    # ------------------------------------------------------------------ lookups (hot path)
    def factor(
        self,
        *,
        domain: str | None = None,
        provider: str | None = None,
        mx: str | None = None,
        ip: str | None = None,
        pool: str | None = None,
        sender: str | None = None,
        tenant: str | None = None,
        campaign: str | None = None,
        now: float | None = None,
    ) -> float:
        """The share of its normal rate this message's traffic may use now (1.0: normal; 0.0:
        hold it). Values as the events carry them (lower-case domains; ``provider`` the mailbox
        provider, ``mx`` the MX operator). ``now``: epoch seconds (default: ``clock()``)."""
        if now is None:
            now = self.clock()
        key = (domain, provider, mx, ip, pool, sender, tenant, campaign)
        e = self._cache.get(key)
        if e is not None and e[1] <= now < e[2]:
            return e[0]
        return self._miss(key, now)[0]

    def decision(
        self,
        *,
        domain: str | None = None,
        provider: str | None = None,
        mx: str | None = None,
        ip: str | None = None,
        pool: str | None = None,
        sender: str | None = None,
        tenant: str | None = None,
        campaign: str | None = None,
        now: float | None = None,
    ) -> ThrottleRecord | None:
        """The decision in force for this message (the most restrictive over its scopes), or
        None (send normally). Its ``scope`` names the traffic the factor applies to."""
        if now is None:
            now = self.clock()
        key = (domain, provider, mx, ip, pool, sender, tenant, campaign)
        e = self._cache.get(key)
        if e is not None and e[1] <= now < e[2]:
            return e[3]
        return self._miss(key, now)[3]

    def decision_for(
        self, scopes: Iterable[str], now: float | None = None
    ) -> ThrottleRecord | None:
        """As :meth:`decision` for a ready list of scope names (cached per tuple)."""
        if now is None:
            now = self.clock()
        key = tuple(scopes)
        cache = self._scope_cache
        e = cache.get(key)
        if e is not None and e[1] <= now < e[2]:
            return e[3]
        decisions = self._decisions
        e = _evaluate(key, decisions, now)
        if len(cache) >= self.cache_max_entries:
            cache.clear()
        cache[key] = e
        return e[3]

    def factor_for(self, scopes: Iterable[str], now: float | None = None) -> float:
        d = self.decision_for(scopes, now)
        return 1.0 if d is None else d.rate_factor

    def _miss(self, key: _Key, now: float) -> _Entry:
        cache = self._cache  # read the cache before the table (see __init__)
        decisions = self._decisions
        domain, provider, mx, ip, pool, sender, tenant, campaign = key
        scopes = message_scopes(
            domain=domain,
            provider=provider,
            mx=mx,
            ip=ip,
            pool=pool,
            sender=sender,
            tenant=tenant,
            campaign=campaign,
        )
        e = _evaluate(scopes, decisions, now)
        if len(cache) >= self.cache_max_entries:
            cache.clear()
        cache[key] = e
        return e

    # ------------------------------------------------------------------ the table
    def decisions(self, now: float | None = None) -> dict[str, ThrottleRecord]:
        """A copy of the decisions in force at ``now`` (not expired)."""
        t = self.clock() if now is None else now
        return {s: r for s, r in self._decisions.items() if r.live(t)}

    @property
    def version(self) -> int:
        """Incremented on every change of the table (see :meth:`wait_for_change`)."""
        return self._version

    def apply(self, records: Iterable[tuple[str, ThrottleRecord | None]]) -> int:
        """Apply ``(scope, record)`` pairs in order (None or a ``normal`` record: the scope is
        back to normal) as one change; returns the number of pairs applied."""
        n = 0
        with self._write:
            table = dict(self._decisions)
            for scope, rec in records:
                n += 1
                if rec is None or rec.state == "normal":
                    table.pop(scope, None)
                else:
                    table[scope] = rec
            if n:
                self._publish(table)
        return n

    def feed(self, key: bytes | str | None, value: bytes | str | None) -> bool:
        """Apply one topic message (key: the scope, UTF-8; value: the JSON record, or None for a
        tombstone). A malformed one is logged and skipped (False)."""
        parsed = self._parse(key, value)
        if parsed is None:
            return False
        self.apply([parsed])
        return True

    def _parse(
        self, key: bytes | str | None, value: bytes | str | None
    ) -> tuple[str, ThrottleRecord | None] | None:
        try:
            scope = key.decode("utf-8") if isinstance(key, bytes) else key
        except UnicodeDecodeError:
            scope = None
        if not scope:
            self.stats["skipped"] += 1
            log.warning("throttle topic: message without a valid key skipped")
            return None
        if value is None:
            self.stats["tombstones"] += 1
            return scope, None
        try:
            rec = ThrottleRecord.from_json(json.loads(value))
        except (ValueError, RecordError, TypeError) as exc:
            self.stats["skipped"] += 1
            log.warning("throttle topic: bad record for %r skipped: %s", scope, exc)
            return None
        if rec.scope != scope:
            self.stats["skipped"] += 1
            log.warning("throttle topic: record for %r under key %r skipped", rec.scope, scope)
            return None
        self.stats["records"] += 1
        return scope, rec

    def _publish(self, table: dict[str, ThrottleRecord]) -> None:
        # table first, then fresh caches: a reader that got a new cache also sees the new table
        self._decisions = table
        self._cache = {}
        self._scope_cache = {}
        self._last_update = time.time()
        with self._changed:
            self._version += 1
            self._changed.notify_all()

    def prune(self, now: float | None = None) -> int:
        """Drop the expired decisions from the table (lookups ignore them anyway)."""
        t = self.clock() if now is None else now
        with self._write:
            dead = [s for s, r in self._decisions.items() if not r.live(t)]
            if dead:
                table = {s: r for s, r in self._decisions.items() if s not in dead}
                self._publish(table)
        return len(dead)

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
    def last_update(self) -> float | None:
        """Wall time (epoch seconds) of the last change applied, or None."""
        return self._last_update

    def wait_ready(self, timeout: float) -> bool:
        """Block until the client caught up with the topic as it was when it connected."""
        return self._ready.wait(timeout)

    # ------------------------------------------------------------------ the follower thread
    def start(self) -> ThrottleClient:
        """Start following in a daemon thread; returns at once."""
        if self.bootstrap is None:
            raise ValueError("no bootstrap servers: feed records with feed() / apply()")
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="repmon-throttle", daemon=True)
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

    close = stop

    def __enter__(self) -> ThrottleClient:
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
                log.warning("throttle topic: cannot connect to %s: %s", self.bootstrap, exc)
            if consumer is not None:
                try:
                    self._follow(consumer)
                except Exception as exc:
                    self.stats["poll_errors"] += 1
                    log.warning("throttle topic: follower error, reconnecting: %s", exc)
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
                log.info("throttle topic %s: following %d partition(s)", self.topic, len(tps))
        return tps

    def _follow(self, consumer: Any) -> None:
        timeout_ms = int(self.health_timeout_s * 1000)
        if not self._caught_up:  # the staged history of a lost connection is gone: read it again
            self._positions.clear()
        tps: list[Any] = []
        next_meta = next_health = next_prune = 0.0
        target: dict[Any, int] | None = None  # end offsets to reach before the first answers
        staged: list[tuple[str, ThrottleRecord | None]] = []
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
                    log.warning("throttle topic: broker not answering: %s", exc)
                else:
                    self._last_ok = time.monotonic()
                    if target is None and not self._caught_up:
                        target = dict(ends)
            batch = consumer.poll(timeout_ms=int(self.poll_timeout_s * 1000))
            pairs: list[tuple[str, ThrottleRecord | None]] = []
            for tp, msgs in batch.items():
                for m in msgs:
                    parsed = self._parse(m.key, m.value)
                    if parsed is not None:
                        pairs.append(parsed)
                if msgs:
                    self._positions[tp] = msgs[-1].offset + 1
            if self._caught_up:
                if pairs:
                    self.apply(pairs)
                if mono >= next_prune:
                    next_prune = mono + 60.0
                    self.prune()
                continue
            staged.extend(pairs)
            if target is not None and all(
                consumer.position(tp, timeout_ms=timeout_ms) >= end for tp, end in target.items()
            ):
                # publish the history read so far at once: no half-read state is answered
                self.apply(staged)
                staged = []
                self._caught_up = True
                self._ready.set()
                log.info("throttle topic %s: caught up", self.topic)


def _evaluate(
    scopes: tuple[str, ...], decisions: Mapping[str, ThrottleRecord], now: float
) -> _Entry:
    """Most restrictive decision over ``scopes`` at ``now`` and the interval over which that
    answer holds: from ``now`` until the earliest expiry among the live decisions looked at
    (a decision that is not live at ``now`` stays so for later times)."""
    best = most_restrictive(scopes, decisions, now)
    until = _INF
    if decisions:
        get = decisions.get
        for s in scopes:
            d = get(s)
            if d is not None and d.state != "normal" and now < d.expires_at < until:
                until = d.expires_at
    return (1.0 if best is None else best.rate_factor, now, until, best)


# ---------------------------------------------------------------------------- token buckets
class TokenBucket:
    """``rate`` tokens per second, at most ``capacity`` stored (the burst). Not thread-safe on
    its own (:class:`RateLimiter` locks around it)."""

    __slots__ = ("capacity", "rate", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float) -> None:
        self.rate = max(0.0, rate)
        self.capacity = max(1.0, capacity)
        self.tokens = self.capacity if self.rate > 0.0 else 0.0
        self.stamp = now

    def _refill(self, now: float) -> None:
        if now > self.stamp:
            self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now

    def set_rate(self, rate: float, capacity: float, now: float) -> None:
        """Change the rate (tokens accrued so far are kept, up to the new capacity)."""
        self._refill(now)
        self.rate = max(0.0, rate)
        self.capacity = max(1.0, capacity)
        self.tokens = min(self.tokens, self.capacity)

    def try_take(self, n: float, now: float) -> float:
        """Take ``n`` tokens and return 0.0, or take nothing and return the seconds until ``n``
        are available (``inf`` at rate 0)."""
        self._refill(now)
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        if self.rate <= 0.0:
            return _INF
        return (n - self.tokens) / self.rate


class RateLimiter:
    """A token bucket per throttled scope, at that scope's normal rate x the decision's factor.

    ``normal_rate``: messages per second of a scope's traffic in normal times: a mapping (scope
    -> rate, ``default_rate`` for the others) or a function of the scope. :meth:`acquire` finds
    the decision that applies to the message (``client.decision``); with none it returns 0.0 at
    once (repmon does not limit normal traffic; the fleet's own shaping does). Otherwise it takes
    a token from the bucket of the decision's scope (so every message of that scope shares one
    budget: e.g. all of IP 203.0.113.6 to Google) and returns 0.0, or the seconds to defer the
    message (``inf`` while paused with no probes; defer it and ask again later, do not bounce).
    Never blocks. Thread-safe. ``burst_s``: a bucket holds at most this many seconds of its
    rate (at least one message)."""

    def __init__(
        self,
        client: ThrottleClient,
        normal_rate: Mapping[str, float] | Callable[[str], float],
        *,
        default_rate: float = 10.0,
        burst_s: float = 1.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        if callable(normal_rate):
            self._normal: Callable[[str], float] = normal_rate
        else:
            table = dict(normal_rate)
            self._normal = lambda scope: table.get(scope, default_rate)
        self.burst_s = burst_s
        self.monotonic = monotonic
        self._buckets: dict[str, tuple[float, TokenBucket]] = {}
        self._lock = threading.Lock()

    def rate_for(self, decision: ThrottleRecord) -> float:
        """Messages per second allowed for the decision's scope."""
        return self._normal(decision.scope) * decision.rate_factor

    def acquire(
        self,
        n: float = 1.0,
        *,
        domain: str | None = None,
        provider: str | None = None,
        mx: str | None = None,
        ip: str | None = None,
        pool: str | None = None,
        sender: str | None = None,
        tenant: str | None = None,
        campaign: str | None = None,
        now: float | None = None,
    ) -> float:
        d = self.client.decision(
            domain=domain,
            provider=provider,
            mx=mx,
            ip=ip,
            pool=pool,
            sender=sender,
            tenant=tenant,
            campaign=campaign,
            now=now,
        )
        if d is None:
            return 0.0
        return self.acquire_for(d, n)

    def acquire_for(self, decision: ThrottleRecord, n: float = 1.0) -> float:
        """Take ``n`` tokens from the bucket of ``decision.scope`` (0.0) or return the wait."""
        mono = self.monotonic()
        factor = decision.rate_factor
        if factor <= 0.0:  # paused without probes: nothing flows
            return _INF
        with self._lock:
            held = self._buckets.get(decision.scope)
            if held is None or held[0] != factor:
                rate = self.rate_for(decision)
                cap = max(1.0, rate * self.burst_s)
                if held is None:
                    bucket = TokenBucket(rate, cap, mono)
                else:
                    bucket = held[1]
                    bucket.set_rate(rate, cap, mono)
                self._buckets[decision.scope] = (factor, bucket)
            else:
                bucket = held[1]
            return bucket.try_take(n, mono)

    def forget(self, scopes: Iterable[str] | None = None) -> None:
        """Drop the buckets of ``scopes`` (all when None), e.g. of scopes back to normal."""
        with self._lock:
            if scopes is None:
                self._buckets.clear()
            else:
                for s in scopes:
                    self._buckets.pop(s, None)


__all__ = ["DEFAULT_TOPIC", "RateLimiter", "ThrottleClient", "TokenBucket"]
