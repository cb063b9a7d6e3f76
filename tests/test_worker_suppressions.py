"""The worker's suppression plumbing without a broker (streams/worker/suppressions.py): the
incident follower, the changelog's record codec, key -> partition, and one partition's tick
(outbox first, store after the acknowledgement)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from models.act.suppression import RecordError, Suppressor
from streams.worker.suppression_store import RocksRecipientStore
from streams.worker.suppressions import (
    Directory,
    IncidentFollower,
    PartitionSuppression,
    decode_change,
    ident_of,
    key_partition,
)
from tests.test_suppression_policy import T0, E, bounce, key, rows_of


def incident_record(action: str, type_: str, scope: str, t: float, **extra: object) -> bytes:
    rec = {
        "kind": "incident",
        "action": action,
        "id": f"{type_}/{scope}/{int(t)}",
        "type": type_,
        "scope": scope,
        "opened_at": t,
        "closed_at": extra.pop("closed_at", None),
        "severity": "critical",
        "evidence": extra.pop("evidence", {}),
    }
    return orjson.dumps(rec)


@pytest.mark.parametrize("partitions", [1, 3, 6, 12, 64])
def test_key_partition_is_kafkas_default_partitioner(partitions: int) -> None:
    part = DefaultPartitioner()
    every = list(range(partitions))
    for i in range(300):
        k = key(f"user{i}").hex()
        assert key_partition(k, partitions) == part(k.encode(), every, every)


def test_follower_keeps_the_open_incidents_and_the_close_times() -> None:
    f = IncidentFollower("unused:9092", "t")
    opened = incident_record(
        "opened",
        "false_hard_bounces",
        "mx:mimecast",
        T0,
        evidence={"related_scopes": ["domain:corp.example"]},
    )
    f.apply(opened)
    f.apply(incident_record("opened", "block", "ip:192.0.2.1|provider:other", T0 + 60))
    assert set(f.open) == {
        f"false_hard_bounces/mx:mimecast/{int(T0)}",
        f"block/ip:192.0.2.1|provider:other/{int(T0 + 60)}",
    }
    inc = f.open[f"false_hard_bounces/mx:mimecast/{int(T0)}"]
    assert (inc.type, inc.scope, inc.related, inc.opened_at) == (
        "false_hard_bounces",
        "mx:mimecast",
        ["domain:corp.example"],
        T0,
    )
    f.apply(incident_record("closed", "false_hard_bounces", "mx:mimecast", T0, closed_at=T0 + 900))
    assert f"false_hard_bounces/mx:mimecast/{int(T0)}" not in f.open
    assert f.closed[f"false_hard_bounces/mx:mimecast/{int(T0)}"] == T0 + 900
    # override audits share the topic; damaged records are counted, never raised
    f.apply(orjson.dumps({"kind": "override", "action": "set", "scope": "provider:yahoo"}))
    f.apply(b"{not json")
    f.apply(orjson.dumps({"kind": "incident", "action": "opened"}))
    f.apply(None)
    assert (len(f.open), f.bad) == (1, 2)


def test_follower_readiness_waits_for_the_catch_up_at_most_a_while() -> None:
    f = IncidentFollower("unused:9092", "t")
    assert not f.ready()
    f.started = time.monotonic() - 3600.0
    assert f.ready() and not f.caught_up


def test_directory_follows_the_readers() -> None:
    d = Directory("unused:9092", "w")
    d.apply(b"ev/0", orjson.dumps({"url": "http://a:1", "instance": "a"}))
    d.apply(b"ev/1", orjson.dumps({"url": "http://b:1", "instance": "b"}))
    d.apply(b"ev/0", orjson.dumps({"url": "http://c:1", "instance": "c"}))
    d.apply(b"ev/1", None)
    d.apply(b"ev/2", b"garbage")
    assert d.reader("ev", 0) == {"url": "http://c:1", "instance": "c"}
    assert d.reader("ev", 1) is None and d.reader("ev", 2) is None


def test_changelog_records_decode_to_the_stored_value() -> None:
    sup = Suppressor()
    changes = sup.observe(rows_of([bounce(0, "alice", "mailboxfull", "m1", "soft")]))
    assert changes
    for ch in changes:
        k = ch.key.hex().encode()
        assert decode_change(k, orjson.dumps(ch.to_json())) == (ident_of(ch.key), ch.value)
    assert decode_change(key("bob").hex().encode(), None) == (ident_of(key("bob")), None)
    for bad in (b"zz", b"", None, b"ab" * 31):
        with pytest.raises(RecordError):
            decode_change(bad, None)


def _part(tmp_path: Path) -> PartitionSuppression:
    store = RocksRecipientStore(tmp_path / "s")
    return PartitionSuppression(2, store, Suppressor(None, store, write_through=False))


def _ready() -> IncidentFollower:
    f = IncidentFollower("unused:9092", "t")
    f.caught_up = True
    return f


def test_a_tick_fills_the_outbox_and_the_ack_writes_the_store(tmp_path: Path) -> None:
    ps = _part(tmp_path)
    try:
        n = ps.step(rows_of([bounce(0, "alice", "userunknown", "m1")]), _ready(), T0)
        assert n == 1
        k = key("alice").hex().encode()
        rec = orjson.loads(ps.outbox[k] or b"null")
        assert (rec["state"], rec["reason"], rec["cause"]) == (
            "suppressed",
            "userunknown",
            "bounce",
        )
        assert ps.stats.changes == {("suppressed", "bounce"): 1}
        # not acknowledged yet: the store has nothing, the policy answers from its pending writes
        assert ps.store.get_many(np.asarray([ident_of(key("alice"))], np.uint64)) == [None]
        assert (ps.lookup(key("alice")) or {})["state"] == "suppressed"
        ps.applied(41)
        assert ps.outbox == {} and ps.store.applied_offsets() == {2: 41}
        assert (ps.lookup(key("alice")) or {})["state"] == "suppressed"
    finally:
        ps.close()


def test_a_failed_send_keeps_the_outbox_for_the_next_tick(tmp_path: Path) -> None:
    ps = _part(tmp_path)
    try:
        f = _ready()
        ps.step(rows_of([bounce(0, "alice", "mailboxfull", "m1", "soft")]), f, T0)
        # the send failed (no applied()): the next tick adds to the same outbox
        ps.step(rows_of([bounce(60, "bob", "userunknown", "m2")]), f, T0 + 60)
        assert set(ps.outbox) == {key("alice").hex().encode(), key("bob").hex().encode()}
        ps.applied(7)
        assert ps.store.applied_offsets() == {2: 7}
        assert len(list(ps.store.items())) == 2
    finally:
        ps.close()


def test_rows_wait_for_the_incident_follower(tmp_path: Path) -> None:
    """Before the follower caught up, a hard bounce of a recipient behind an open false-bounce
    incident must not be judged: it waits, and is quarantined once the incident is known."""
    ps = _part(tmp_path)
    try:
        f = IncidentFollower("unused:9092", "t")
        assert ps.step(rows_of([bounce(0, "alice", "userunknown", "m1")]), f, T0) == 0
        assert ps.outbox == {} and len(ps.waiting) == 1
        f.apply(incident_record("opened", "false_hard_bounces", "mx:mimecast", T0 - 60))
        f.caught_up = True
        ps.step(rows_of([]), f, T0 + 1)
        rec = orjson.loads(ps.outbox[key("alice").hex().encode()] or b"null")
        assert rec["state"] == "quarantined"
        assert rec["incident"] == f"false_hard_bounces/mx:mimecast/{int(T0 - 60)}"
        # the incident closes: released at its close time, back to active (nothing counted)
        f.apply(
            incident_record(
                "closed", "false_hard_bounces", "mx:mimecast", T0 - 60, closed_at=T0 + 600
            )
        )
        ps.applied(0)
        ps.step(rows_of([]), f, T0 + 700)
        rec = orjson.loads(ps.outbox[key("alice").hex().encode()] or b"null")
        assert (rec["state"], rec["cause"], rec["at"]) == ("active", "release", T0 + 600)
    finally:
        ps.close()


def test_a_close_without_a_time_releases_at_the_watermark(tmp_path: Path) -> None:
    ps = _part(tmp_path)
    try:
        f = _ready()
        f.apply(incident_record("opened", "provider_outage", "provider:other", T0))
        ps.step(rows_of([bounce(10, "carol", "userunknown", "m1")]), f, T0 + 10)
        f.apply(incident_record("closed", "provider_outage", "provider:other", T0))
        assert math.isnan(f.closed[f"provider_outage/provider:other/{int(T0)}"])
        ps.step(rows_of([E(20, "dave", "delivered")]), f, T0 + 30)
        rec = orjson.loads(ps.outbox[key("carol").hex().encode()] or b"null")
        assert (rec["state"], rec["cause"], rec["at"]) == ("active", "release", T0 + 30)
    finally:
        ps.close()
