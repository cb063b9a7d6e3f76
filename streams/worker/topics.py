"""Topic administration with kafka-python's admin client."""

from __future__ import annotations

import contextlib
import time

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from streams.worker.settings import Settings


def wait_for_broker(bootstrap: str, timeout_s: float = 60.0) -> None:
    """Block until a metadata request to ``bootstrap`` succeeds, or raise TimeoutError."""
    connect_admin(bootstrap, timeout_s).close()


def connect_admin(bootstrap: str, timeout_s: float = 60.0) -> KafkaAdminClient:
    """An admin client whose metadata request succeeded (retried until ``timeout_s``)."""
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=15000)
            try:
                admin.list_topics()
            except BaseException:
                admin.close()
                raise
            return admin
        except (KafkaError, OSError, ValueError) as exc:
            last = exc
            time.sleep(0.5)
    raise TimeoutError(f"no Kafka metadata from {bootstrap} within {timeout_s:.0f} s: {last}")


#: configuration of the snapshot topics: compacted, and compacted soon (a snapshot's pieces are
#: rewritten every snapshot_every_s), with room for one piece per message
_STATE = {
    "cleanup.policy": "compact",
    "max.message.bytes": "4194304",
    "min.cleanable.dirty.ratio": "0.1",
    "segment.ms": "600000",
    "delete.retention.ms": "600000",
}


def ensure_topics(settings: Settings, timeout_s: float = 60.0) -> None:
    """Create repmon's topics if they do not exist (existing ones are left as they are)."""
    admin = connect_admin(settings.kafka_bootstrap, timeout_s)
    try:
        existing = set(admin.list_topics())
        p = settings.topic_partitions
        # the suppression changelog has a partition per input partition: as many as the input
        # topic really has (it may predate this setting)
        n_events = p
        if settings.topic_events in existing:
            described = admin.describe_topics([settings.topic_events])
            n_events = len(described[0]["partitions"]) or p
        wanted = [
            # 4 MiB: inputs over 1 MiB must reach the worker to be dead-lettered as too_large
            NewTopic(settings.topic_events, p, 1, topic_configs={"max.message.bytes": "4194304"}),
            # a dead letter carries up to 1 MiB of original bytes, base64-encoded
            NewTopic(settings.topic_dlq, 1, 1, topic_configs={"max.message.bytes": "4194304"}),
            NewTopic(
                settings.topic_rollup,
                settings.rollup_partitions,
                1,
                topic_configs={"max.message.bytes": "4194304"},
            ),
            NewTopic(settings.topic_incidents, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(settings.topic_throttle, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            NewTopic(
                settings.topic_throttle_overrides, 1, 1, topic_configs={"cleanup.policy": "compact"}
            ),
            NewTopic(
                settings.topic_suppressions,
                n_events,
                1,
                topic_configs={"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.1"},
            ),
            NewTopic(settings.topic_workers, 1, 1, topic_configs={"cleanup.policy": "compact"}),
            # snapshots (streams/worker/snapstore.py): compacted, pieces of up to 1 MiB
            NewTopic(settings.topic_state, settings.rollup_partitions, 1, topic_configs=_STATE),
            NewTopic(settings.topic_ingest_state, p, 1, topic_configs=_STATE),
        ]
        missing = [t for t in wanted if t.name not in existing]
        if missing:
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
        # metadata for new topics propagates asynchronously: wait until all are listed
        deadline = time.monotonic() + timeout_s
        names = {t.name for t in wanted}
        while not names.issubset(set(admin.list_topics())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"topics {sorted(names)} not visible after creation")
            time.sleep(0.2)
    finally:
        admin.close()
