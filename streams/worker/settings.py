"""Configuration from environment variables (pydantic-settings), documented in docs/configuration.md."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.detect.config import DETECT_EVERY_S, MonitorConfig


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="REPMON_", extra="ignore")

    #: host:port[,host:port] of the Kafka cluster (default: the local broker of deploy/kafka).
    kafka_bootstrap: str = "127.0.0.1:9092"
    app_id: str = "repmon"
    topic_events: str = "mail.events"
    topic_dlq: str = "mail.events.dlq"
    topic_rollup: str = "repmon.rollup"
    topic_incidents: str = "repmon.incidents"
    #: compacted topic of the detection owners' snapshots (one owner per rollup partition)
    topic_state: str = "repmon.state"
    #: compacted topic of the ingest memories' snapshots (one per input partition)
    topic_ingest_state: str = "repmon.state.ingest"
    #: compacted, keyed by scope: the throttle decisions the sending fleet follows
    #: (docs/throttle.md); one partition, so that a fleet client reads it in order
    topic_throttle: str = "repmon.throttle"
    #: compacted, keyed by scope: manual overrides (PUT /throttle/{scope}); every worker follows it
    topic_throttle_overrides: str = "repmon.throttle.overrides"
    #: compacted, keyed by recipient key: the suppression changelog the fleet follows
    #: (docs/suppression.md); as many partitions as topic_events (partition p: input partition p's)
    topic_suppressions: str = "repmon.suppressions"
    #: compacted: which worker reads which input partition, with its web address
    topic_workers: str = "repmon.workers"
    #: run the recipient suppression policy (docs/suppression.md)
    suppression: bool = True
    #: suppression policy TOML over the defaults (docs/suppression.md, "Configuration")
    suppression_config: str = ""
    #: the URL other workers reach this worker's web server at (GET /suppressions/{key} is
    #: forwarded to the worker reading the key's partition); empty: http://web_host:web_port
    web_url: str = ""
    #: throttle policy TOML over the defaults (docs/throttle.md, "Configuration"); empty: defaults
    throttle_config: str = ""
    #: the repmon -> KumoMTA mapping (egress sources, destinations, normal rates; docs/throttle.md,
    #: "KumoMTA"); empty: the KumoMTA endpoints are off
    kumo_config: str = ""
    #: partitions of mail.events and repmon.rollup when repmon creates them
    topic_partitions: int = Field(default=6, ge=1, le=1024)
    #: partitions of repmon.rollup: the number of detection owners. 1 (the default) puts every
    #: scope in one Monitor, so attribution (related scopes, one incident explaining another) sees
    #: every scope, and several workers open exactly the incidents one worker does; ingest (the
    #: heavy part) still scales out over topic_partitions. More owners split the rolling state,
    #: but incidents whose scopes have different owners are then attributed per owner.
    rollup_partitions: int = Field(default=1, ge=1, le=1024)
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=6066, ge=1, le=65535)
    #: seconds between two flushes of the in-memory counters (a "tick")
    tick_s: float = Field(default=1.0, gt=0.0, le=60.0)
    #: event-time seconds between two detector runs: the detectors run at every multiple, as
    #: ``repmon replay --tick`` does (a backlog step by step); the counts follow the watermark
    detect_every_s: float = Field(default=DETECT_EVERY_S, gt=0.0, le=3600.0)
    #: no incident opens before this much event time has been seen (the baselines warm up;
    #: ``repmon replay --warmup``). A worker restored from its snapshots is warm already
    warmup_s: float = Field(default=MonitorConfig().warmup_s, ge=0.0, le=7 * 86400.0)
    #: event-time bucket width of the counts (seconds)
    bucket_s: int = Field(default=60, ge=1, le=3600)
    #: events further in the future of the worker clock than this are dead-lettered
    max_future_skew_s: float = Field(default=300.0, ge=0.0)
    #: extra classifier rule files (os.pathsep-separated), they take precedence
    rules: str = ""
    #: Faust data directory
    data_dir: Path = Path("var/faust")
    log_level: str = "info"
    #: where consumption starts when the group has no committed offset
    auto_offset_reset: str = "earliest"
    #: active scopes held at most (about 2 KiB each): least recently active ones are evicted
    max_scopes: int = Field(default=500_000, ge=1000)
    #: bearer token for the data endpoints (/status); empty: open (bind to loopback then)
    api_token: str = ""
    #: wall-clock seconds between two snapshots of an owner's Monitor or of an input partition's
    #: memories (an owner also writes one with every incident change, in the same transaction)
    snapshot_every_s: float = Field(default=30.0, gt=0.0, le=3600.0)
    #: a stable name for this worker (e.g. the pod name): turns on static group membership, so
    #: a restarted worker gets its partitions back at once instead of after the session timeout
    instance_id: str = ""
    #: Kafka consumer group session timeout: a worker that died is replaced after this long
    session_timeout_s: float = Field(default=10.0, ge=1.0, le=300.0)
    #: not ready when the input lag grew in each of this many consecutive ticks (0: never)
    ready_lag_ticks: int = Field(default=30, ge=0, le=64 - 1)
    #: per-scope rate series for this many sending IPs and pools (the most traffic in the last
    #: hour, per kind); set it to the size of the fleet to have every IP and pool
    metrics_top_scopes: int = Field(default=20, ge=0, le=1000)
    #: open incidents exported one series each (with their scope); the rest as scope="other"
    metrics_max_incidents: int = Field(default=50, ge=1, le=1000)
    #: an input partition whose reader is caught up and has read nothing for this long stops
    #: holding the event-time watermark back (an empty or quiet partition)
    source_idle_s: float = Field(default=30.0, gt=0.0)
    #: an input partition that has sent no report for this long stops holding the watermark back
    #: (its reader died and nobody took over); longer than a rebalance, so that a partition that
    #: is only moving to another reader holds time back meanwhile
    source_silent_s: float = Field(default=60.0, gt=0.0)

    @property
    def rule_files(self) -> list[Path]:
        return [Path(p) for p in self.rules.split(os.pathsep) if p.strip()]

    @property
    def advertised_url(self) -> str:
        return (self.web_url or f"http://{self.web_host}:{self.web_port}").rstrip("/")

    @property
    def broker_url(self) -> str:
        return ";".join(
            f"kafka://{h.strip()}" for h in self.kafka_bootstrap.split(",") if h.strip()
        )


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
