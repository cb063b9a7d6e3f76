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

The Kafka side (the thread, the catch-up, health, reconnection) is
:class:`streams.fleet.follower.CompactedTopicFollower`, shared with the suppression client.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Unpack

from models.act.throttle_record import (
    RecordError,
    ThrottleRecord,
    message_scopes,
    most_restrictive,
)
from streams.fleet.follower import CompactedTopicFollower, FollowOptions

log = logging.getLogger("repmon.fleet")

DEFAULT_TOPIC = "repmon.throttle"
_INF = math.inf

#: a cache entry: (factor, valid_from, valid_until, record or None)
_Entry = tuple[float, float, float, ThrottleRecord | None]
_Key = tuple[str | None, ...]


class ThrottleClient(CompactedTopicFollower[tuple[str, ThrottleRecord | None]]):
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
        clock: Callable[[], float] = time.time,
        cache_max_entries: int = 100_000,
        **follow: Unpack[FollowOptions],
    ) -> None:
        # the worker writes the topic in transactions (with its snapshots): records of an
        # aborted transaction (a fenced owner) are never obeyed
        super().__init__(bootstrap, topic, isolation_level="read_committed", **follow)
        self.clock = clock
        self.cache_max_entries = cache_max_entries
        # the table and the cache are replaced, never mutated in place, by the writer: readers
        # take a reference without a lock (the writer swaps the table first, then the cache)
        self._decisions: dict[str, ThrottleRecord] = {}
        self._cache: dict[_Key, _Entry] = {}
        self._scope_cache: dict[tuple[str, ...], _Entry] = {}
        self._write = threading.Lock()
        self._staged: list[tuple[str, ThrottleRecord | None]] = []

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
        self._note_change()

    def prune(self, now: float | None = None) -> int:
        """Drop the expired decisions from the table (lookups ignore them anyway)."""
        t = self.clock() if now is None else now
        with self._write:
            dead = [s for s, r in self._decisions.items() if not r.live(t)]
            if dead:
                table = {s: r for s, r in self._decisions.items() if s not in dead}
                self._publish(table)
        return len(dead)

    # ------------------------------------------------------------------ follower hooks
    # (streams/fleet/follower.py: the thread, health, fallback and catch-up are shared)
    _what = "throttle topic"
    _thread_name = "repmon-throttle"

    def _stage(self, items: list[tuple[str, ThrottleRecord | None]]) -> None:
        self._staged.extend(items)

    def _publish_staged(self) -> None:
        staged, self._staged = self._staged, []
        self.apply(staged)

    def _drop_staged(self) -> None:
        self._staged = []

    def _apply_live(self, items: list[tuple[str, ThrottleRecord | None]]) -> None:
        self.apply(items)

    def _housekeeping(self) -> None:
        self.prune()


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
