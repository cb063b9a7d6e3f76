"""The fleet client (streams/fleet/): lookups over records fed directly (most restrictive wins,
expiry, tombstones, the cache), the fallback without a broker, the token buckets, and
integration tests that follow a real compacted topic, written plainly and in transactions as
the worker writes it (marked kafka: fail without a broker)."""

from __future__ import annotations

import json
import threading
import time
import uuid
from typing import Any, NamedTuple

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.act.throttle_record import ThrottleRecord, effective_factor, message_scopes
from streams.fleet import RateLimiter, ThrottleClient, TokenBucket
from tests.conftest import free_port

NOW = 1_794_794_760.0
MSG = {"domain": "gmail.com", "provider": "google", "ip": "203.0.113.6", "pool": "shared"}


def rec(
    scope: str,
    factor: float,
    state: str = "throttled",
    *,
    at: float = NOW,
    ttl: float = 3600.0,
    reason: str = "opened",
) -> ThrottleRecord:
    if state == "normal":
        return ThrottleRecord(scope, "normal", 1.0, "recovered", None, at, at)
    return ThrottleRecord(scope, state, factor, reason, None, at, at + ttl)


def wire(r: ThrottleRecord) -> bytes:
    return json.dumps(r.to_json()).encode()


def client_with(*records: ThrottleRecord) -> ThrottleClient:
    c = ThrottleClient(clock=lambda: NOW)
    c.apply((r.scope, r) for r in records)
    return c


# ---------------------------------------------------------------------------- lookups
def test_no_decision_is_normal() -> None:
    c = ThrottleClient(clock=lambda: NOW)
    assert c.factor(**MSG) == 1.0
    assert c.decision(**MSG) is None


def test_most_restrictive_over_the_message_scopes_wins() -> None:
    c = client_with(
        rec("provider:google", 0.5),
        rec("ip:203.0.113.6|provider:google", 0.25),
        rec("ip:203.0.113.6|provider:yahoo", 0.0, "paused"),  # another provider: not this mail
        rec("pool:other", 0.1),
    )
    d = c.decision(**MSG)
    assert d is not None and d.scope == "ip:203.0.113.6|provider:google"
    assert c.factor(**MSG) == 0.25
    assert c.factor(domain="yahoo.com", provider="yahoo", ip="203.0.113.6") == 0.0
    assert c.factor(domain="gmail.com", provider="google", ip="203.0.113.7") == 0.5
    assert c.factor(domain="example.org", provider="other", pool="other") == 0.1


def test_a_tie_goes_to_the_more_restrictive_state_then_the_smaller_scope() -> None:
    c = client_with(
        rec("provider:google", 0.1, "recovering"),
        rec("sender:news.example.com|provider:google", 0.1, "paused"),
        rec("ip:203.0.113.6", 0.1, "throttled"),
    )
    d = c.decision(**MSG, sender="news.example.com")
    assert d is not None and d.state == "paused"
    d = c.decision(**MSG)
    assert d is not None and d.scope == "ip:203.0.113.6"


def test_a_decision_expires_even_when_the_answer_was_cached() -> None:
    c = client_with(rec("provider:google", 0.5, ttl=600), rec("ip:203.0.113.6", 0.25, ttl=60))
    assert c.factor(**MSG, now=NOW) == 0.25  # cached until the IP's decision expires
    assert c.factor(**MSG, now=NOW + 59.9) == 0.25
    assert c.factor(**MSG, now=NOW + 60) == 0.5  # the IP's expired: the provider's holds
    assert c.factor(**MSG, now=NOW + 599) == 0.5
    assert c.factor(**MSG, now=NOW + 600) == 1.0  # both expired: normal
    # an earlier time after a later lookup still gets the right answer
    assert c.factor(**MSG, now=NOW + 30) == 0.25
    assert c.decisions(NOW + 100).keys() == {"provider:google"}
    assert c.prune(NOW + 100) == 1 and set(c.decisions(NOW)) == {"provider:google"}


def test_updates_invalidate_the_cache() -> None:
    c = client_with(rec("provider:google", 0.5))
    assert c.factor(**MSG) == 0.5
    v = c.version
    c.feed(b"provider:google", wire(rec("provider:google", 0.1, reason="persists")))
    assert c.version == v + 1
    assert c.factor(**MSG) == 0.1
    c.feed("ip:203.0.113.6|provider:google", wire(rec("ip:203.0.113.6|provider:google", 0.05)))
    assert c.factor(**MSG) == 0.05
    assert c.decision_for(message_scopes(**MSG)) == c.decision(**MSG)
    assert c.factor_for(message_scopes(**MSG)) == 0.05


def test_tombstones_and_normal_records_remove_the_scope() -> None:
    c = client_with(rec("provider:google", 0.5), rec("ip:203.0.113.6", 0.25))
    assert c.factor(**MSG) == 0.25
    assert c.feed(b"ip:203.0.113.6", None)  # tombstone
    assert c.factor(**MSG) == 0.5
    assert c.feed(b"provider:google", wire(rec("provider:google", 1.0, "normal")))
    assert c.factor(**MSG) == 1.0
    assert c.decisions() == {}
    assert c.stats["tombstones"] == 1


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"provider:google", b"{not json"),
        (b"provider:google", b'{"kind": "incident", "scope": "provider:google"}'),
        (
            b"provider:google",
            json.dumps({**rec("provider:google", 0.1).to_json(), "rate_factor": 2}).encode(),
        ),
        (
            b"provider:yahoo",
            json.dumps(rec("provider:google", 0.1).to_json()).encode(),  # key != scope
        ),
        (None, json.dumps(rec("provider:google", 0.1).to_json()).encode()),
        (b"\xff\xfe", json.dumps(rec("provider:google", 0.1).to_json()).encode()),
        (b"provider:google", b"[]"),
    ],
)
def test_malformed_messages_are_skipped(key: bytes | None, value: bytes) -> None:
    c = client_with(rec("provider:google", 0.5))
    assert not c.feed(key, value)
    assert c.stats["skipped"] == 1
    assert c.factor(**MSG) == 0.5


def test_unknown_fields_and_reasons_are_accepted() -> None:
    c = ThrottleClient(clock=lambda: NOW)
    d = {**rec("provider:google", 0.3).to_json(), "reason": "from-the-future", "extra": [1]}
    assert c.feed(b"provider:google", json.dumps(d).encode())
    assert c.factor(**MSG) == 0.3


def test_the_cache_is_bounded() -> None:
    c = ThrottleClient(clock=lambda: NOW, cache_max_entries=50)
    c.apply([("provider:google", rec("provider:google", 0.5))])
    for i in range(500):
        assert c.factor(**MSG, campaign=f"c{i}") == 0.5
    assert len(c._cache) <= 50


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                [
                    "provider:google",
                    "ip:203.0.113.6",
                    "ip:203.0.113.6|provider:google",
                    "pool:shared|provider:google",
                    "domain:gmail.com",
                    "campaign:c1|provider:google",
                ]
            ),
            st.sampled_from(["throttled", "paused", "recovering", "normal", None]),
            st.sampled_from([0.0, 0.05, 0.1, 0.25, 0.5]),
            st.integers(0, 600),
            st.integers(0, 900),
        ),
        max_size=25,
    )
)
def test_cached_answers_equal_the_direct_computation(ops: list[tuple[Any, ...]]) -> None:
    """Interleaved updates, tombstones and lookups at moving times: the cached answer is always
    effective_factor over the current table."""
    c = ThrottleClient(clock=lambda: NOW)
    table: dict[str, ThrottleRecord] = {}
    msgs = [dict(MSG), {**MSG, "campaign": "c1"}, {"domain": "gmail.com", "provider": "google"}]
    for scope, state, factor, ttl, dt in ops:
        if state is None:
            c.feed(scope.encode(), None)
            table.pop(scope, None)
        else:
            r = rec(scope, factor if state != "normal" else 1.0, state, ttl=ttl)
            c.feed(scope.encode(), wire(r))
            if state == "normal":
                table.pop(scope, None)
            else:
                table[scope] = r
        for m in msgs:
            for t in (NOW + dt, NOW + dt / 2, NOW + dt):
                want = effective_factor(message_scopes(**m), table, t)
                assert c.factor(**m, now=t) == want


def test_concurrent_readers_and_a_writer() -> None:
    c = ThrottleClient(clock=lambda: NOW)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                f = c.factor(**MSG)
                assert f in (1.0, 0.5, 0.25)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    for i in range(2000):
        f = (0.5, 0.25)[i % 2]
        c.apply([("provider:google", rec("provider:google", f))])
    c.apply([("provider:google", rec("provider:google", 0.25))])
    stop.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert c.factor(**MSG) == 0.25  # the last write wins, whatever was cached meanwhile


def test_wait_until_wakes_on_a_change() -> None:
    c = ThrottleClient(clock=lambda: NOW)
    t = threading.Timer(0.05, lambda: c.apply([("provider:google", rec("provider:google", 0.5))]))
    t.start()
    try:
        assert c.wait_until(lambda: c.factor(**MSG) == 0.5, timeout=10)
    finally:
        t.cancel()
    assert not c.wait_until(lambda: c.factor(**MSG) == 0.1, timeout=0.05)


# ---------------------------------------------------------------------------- fallback
def test_unreachable_broker_keeps_the_decisions_until_they_expire() -> None:
    """No broker at the address: start() returns at once, lookups never block, the decisions
    held stay in force until they expire, then normal; healthy stays False; stop() is clean."""
    now = [time.time()]
    c = ThrottleClient(
        f"127.0.0.1:{free_port()}",
        topic="repmon.throttle",
        clock=lambda: now[0],
        connect_timeout_s=0.5,
        retry_backoff_s=0.1,
    )
    c.apply([("provider:google", rec("provider:google", 0.5, at=now[0], ttl=120))])
    t0 = time.monotonic()
    c.start()
    assert time.monotonic() - t0 < 0.5
    t0 = time.perf_counter()
    for _ in range(10_000):
        assert c.factor(**MSG) == 0.5
    assert time.perf_counter() - t0 < 1.0  # never waits for the broker
    assert not c.healthy
    assert not c.wait_ready(0.2)
    now[0] += 120  # the decision expired: back to normal
    assert c.factor(**MSG) == 1.0
    assert c.stop(timeout=10)
    assert not c.healthy


class _Msg(NamedTuple):
    key: bytes | None
    value: bytes | None
    offset: int


class FakeConsumer:
    """The part of kafka.KafkaConsumer the follower uses, over an in-memory partition; ``down``
    makes it behave like an unreachable broker (no data, offset requests time out)."""

    def __init__(self, topic: str) -> None:
        from kafka import TopicPartition

        self.tp = TopicPartition(topic, 0)
        self.log: list[tuple[bytes, bytes | None]] = []
        self.pos: dict[Any, int] = {}
        self.assigned: list[Any] = []
        self.down = False
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int]:
        return {0}

    def assignment(self) -> set[Any]:
        return set(self.assigned)

    def assign(self, tps: list[Any]) -> None:
        self.assigned = list(tps)

    def seek(self, tp: Any, offset: int) -> None:
        self.pos[tp] = offset

    def seek_to_beginning(self, *tps: Any) -> None:
        for tp in tps:
            self.pos[tp] = 0

    def end_offsets(self, tps: list[Any], timeout_ms: int | None = None) -> dict[Any, int]:
        if self.down:
            raise TimeoutError("no broker")
        return {tp: len(self.log) for tp in tps}

    def position(self, tp: Any, timeout_ms: int | None = None) -> int:
        return self.pos[tp]

    def poll(self, timeout_ms: int = 0) -> dict[Any, list[_Msg]]:
        at = self.pos.get(self.tp, 0)
        if self.down or at >= len(self.log):
            time.sleep(timeout_ms / 1000)
            return {}
        k, v = self.log[at]  # one message per poll: the catch-up takes several polls
        self.pos[self.tp] = at + 1
        return {self.tp: [_Msg(k, v, at)]}

    def close(self, **kw: Any) -> None:
        self.closed = True


def _eventually(cond: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.01)
    return bool(cond())


def test_follower_catches_up_at_once_survives_an_outage_and_resumes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = time.time()
    fake = FakeConsumer("t")
    for f in (0.75, 0.5):  # the history of one scope: only its last record may ever be answered
        fake.log.append((b"provider:google", wire(rec("provider:google", f, at=now, ttl=600))))
    fake.log.append((b"provider:yahoo", wire(rec("provider:yahoo", 0.25, at=now, ttl=600))))
    fake.log.append((b"provider:yahoo", None))
    c = ThrottleClient(
        "fake:9092", "t", health_every_s=0.02, health_timeout_s=0.3, poll_timeout_s=0.01
    )
    monkeypatch.setattr(c, "_connect", lambda: fake)
    c.start()
    try:
        assert c.wait_ready(10)
        assert c.version == 1  # the whole history was published as one change
        assert c.decisions().keys() == {"provider:google"}
        assert c.factor(**MSG) == 0.5
        assert _eventually(lambda: c.healthy)

        fake.log.append((b"provider:google", wire(rec("provider:google", 0.1, at=now, ttl=600))))
        assert c.wait_until(lambda: c.factor(**MSG) == 0.1, timeout=10)

        fake.down = True  # the broker is gone: not healthy, the decisions held stay in force
        assert _eventually(lambda: not c.healthy)
        assert c.factor(**MSG) == 0.1
        assert c.factor(**MSG, now=now + 600) == 1.0  # until they expire

        fake.log.append((b"provider:google", None))
        fake.down = False  # back: it resumes where it was and is healthy again
        assert c.wait_until(lambda: c.factor(**MSG) == 1.0, timeout=10)
        assert _eventually(lambda: c.healthy)
    finally:
        assert c.stop(timeout=10)
    assert not c.healthy


def test_start_needs_bootstrap_servers() -> None:
    with pytest.raises(ValueError, match="bootstrap"):
        ThrottleClient().start()
    assert ThrottleClient().stop()


# ---------------------------------------------------------------------------- token buckets
def test_token_bucket() -> None:
    b = TokenBucket(rate=2.0, capacity=2.0, now=0.0)
    assert b.try_take(1, 0.0) == 0.0
    assert b.try_take(1, 0.0) == 0.0
    assert b.try_take(1, 0.0) == pytest.approx(0.5)
    assert b.try_take(1, 0.5) == 0.0
    b.set_rate(0.0, 1.0, 0.5)
    assert b.try_take(1, 100.0) == float("inf")


def test_rate_limiter_runs_each_scope_at_normal_rate_times_factor() -> None:
    clock = [0.0]
    c = client_with(
        rec("ip:203.0.113.6|provider:google", 0.5), rec("provider:yahoo", 0.0, "paused")
    )
    lim = RateLimiter(
        c,
        {"ip:203.0.113.6|provider:google": 10.0},
        default_rate=100.0,
        burst_s=1.0,
        monotonic=lambda: clock[0],
    )
    # 10/s x 0.5 = 5/s with a one-second burst: 5 at once, then one every 0.2 s
    assert [lim.acquire(**MSG) for _ in range(5)] == [0.0] * 5
    assert lim.acquire(**MSG) == pytest.approx(0.2)
    clock[0] += 0.2
    assert lim.acquire(**MSG) == 0.0
    # another message of the same scope shares the budget
    assert lim.acquire(**MSG, campaign="other") == pytest.approx(0.2)
    # no decision: repmon does not limit
    assert lim.acquire(domain="example.org", provider="other") == 0.0
    # paused without probes: defer until further notice
    assert lim.acquire(domain="yahoo.com", provider="yahoo") == float("inf")
    # the factor changes: the bucket follows
    c.apply([("ip:203.0.113.6|provider:google", rec("ip:203.0.113.6|provider:google", 1.0))])
    clock[0] += 1.0  # the tokens saved so far carry over; the new rate applies from now
    assert [lim.acquire(**MSG) for _ in range(5)] == [0.0] * 5
    assert lim.acquire(**MSG) == pytest.approx(0.1)
    clock[0] += 1.0
    assert [lim.acquire(**MSG) for _ in range(10)] == [0.0] * 10
    assert lim.acquire(**MSG) == pytest.approx(0.1)
    lim.forget()


def test_rate_limiter_takes_a_function_for_normal_rates() -> None:
    c = client_with(rec("provider:google", 0.25))
    lim = RateLimiter(c, lambda scope: 8.0 if scope == "provider:google" else 1.0)
    d = c.decision(**MSG)
    assert d is not None and lim.rate_for(d) == 2.0


# ---------------------------------------------------------------------------- real broker
@pytest.mark.kafka
def test_follows_a_compacted_topic(kafka_bootstrap: str) -> None:
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    topic = f"it-throttle-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
    admin.create_topics([NewTopic(topic, 2, 1, topic_configs={"cleanup.policy": "compact"})])
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, acks="all")
    client: ThrottleClient | None = None
    now = time.time()

    def send(scope: str, r: ThrottleRecord | None) -> None:
        producer.send(topic, key=scope.encode(), value=None if r is None else wire(r)).get(30)

    try:
        old = rec("provider:google", 0.75, at=now - 60, ttl=3600)
        send("provider:google", old)
        send("provider:google", rec("provider:google", 0.5, at=now, ttl=3600))
        send("ip:203.0.113.6|provider:google", rec("ip:203.0.113.6|provider:google", 0.35, at=now))
        send("provider:yahoo", rec("provider:yahoo", 0.25, at=now))
        producer.send(topic, key=b"provider:apple", value=b"{broken").get(30)
        client = ThrottleClient(kafka_bootstrap, topic, health_every_s=0.5, poll_timeout_s=0.2)
        client.start()
        assert client.wait_ready(60), "the client did not catch up with the topic"
        assert client.healthy
        assert client.last_update is not None
        # the history was applied in order: the later provider:google record replaced the first
        assert client.decisions().keys() == {
            "provider:google",
            "ip:203.0.113.6|provider:google",
            "provider:yahoo",
        }
        d = client.decision(**MSG)
        assert d is not None and (d.scope, d.rate_factor) == (
            "ip:203.0.113.6|provider:google",
            0.35,
        )
        assert client.factor(domain="gmail.com", provider="google") == 0.5
        assert client.stats["skipped"] == 1

        # an update: the decision tightens
        send(
            "ip:203.0.113.6|provider:google", rec("ip:203.0.113.6|provider:google", 0.1, at=now + 1)
        )
        assert client.wait_until(lambda: client.factor(**MSG) == 0.1, timeout=30)
        # back to normal by a normal record, then by a tombstone
        send("ip:203.0.113.6|provider:google", rec("ip:203.0.113.6|provider:google", 1.0, "normal"))
        assert client.wait_until(lambda: client.factor(**MSG) == 0.5, timeout=30)
        send("provider:google", None)
        assert client.wait_until(lambda: client.factor(**MSG) == 1.0, timeout=30)
        assert client.factor(domain="yahoo.com", provider="yahoo") == 0.25
        assert client.healthy
    finally:
        if client is not None:
            assert client.stop(timeout=15), "the follower thread did not stop"
            assert not client.healthy
        producer.close(timeout=10)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()


@pytest.mark.kafka
def test_records_of_an_aborted_transaction_are_never_obeyed(kafka_bootstrap: str) -> None:
    """The worker writes throttle records in the transaction of its snapshot; a fenced owner's
    aborted transaction must not throttle the fleet (read_committed), and the catch-up ends
    although the partition ends with a transaction marker."""
    from kafka import KafkaAdminClient, KafkaProducer
    from kafka.admin import NewTopic

    topic = f"it-throttle-tx-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, request_timeout_ms=15000)
    admin.create_topics([NewTopic(topic, 1, 1, topic_configs={"cleanup.policy": "compact"})])
    now = time.time()
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap, transactional_id=f"it-{uuid.uuid4().hex}")
    client: ThrottleClient | None = None
    try:
        p.init_transactions()
        p.begin_transaction()
        p.send(topic, key=b"provider:google", value=wire(rec("provider:google", 0.5, at=now)))
        p.commit_transaction()
        p.begin_transaction()
        p.send(
            topic, key=b"provider:google", value=wire(rec("provider:google", 0.0, "paused", at=now))
        )
        p.send(topic, key=b"provider:yahoo", value=wire(rec("provider:yahoo", 0.1, at=now)))
        p.flush()  # on the broker, then aborted
        p.abort_transaction()
        client = ThrottleClient(kafka_bootstrap, topic, health_every_s=0.5, poll_timeout_s=0.2)
        client.start()
        assert client.wait_ready(60), "the client did not catch up with the topic"
        assert client.decisions().keys() == {"provider:google"}
        assert client.factor(domain="gmail.com", provider="google") == 0.5
        assert client.factor(domain="yahoo.com", provider="yahoo") == 1.0
    finally:
        if client is not None:
            assert client.stop(timeout=15), "the follower thread did not stop"
        p.close(timeout=10)
        try:
            admin.delete_topics([topic])
        finally:
            admin.close()
