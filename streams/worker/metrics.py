"""Prometheus metrics of a worker (docs/metrics.md).

Label sets are bounded: ``kind`` and ``outcome`` come from models.schema, ``reason`` from the
rejection reasons, ``provider`` from the provider table (plus "other"), ``type`` from the incident
vocabulary. Scope names appear only where the number of series is capped by configuration: the
sending IPs and pools with the most traffic (``REPMON_METRICS_TOP_SCOPES``) and the open incidents
(``REPMON_METRICS_MAX_INCIDENTS``, the rest as ``scope="other"``). No recipient address or
recipient domain is ever a label: those live in /status.
Counters are advanced once per tick from the pipelines' cumulative statistics, not per event.
The process (CPU, memory, file descriptors), platform and GC collectors are on; the ``_created``
series of counters are off (they doubled the series count and nobody graphs them).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
)

from models.act.throttle_record import REASONS, STATES
from models.ingest.pipeline import CONTEXT_FIELDS, REJECTION_REASONS, Pipeline
from models.ingest.providers import OTHER, default_table
from models.schema import COL, EVENT_KINDS, INCIDENT_TYPES
from models.state.deltas import Deltas

disable_created_metrics()

#: outcome columns exported per provider
PROVIDER_OUTCOMES = (
    "sent",
    "delivered",
    "deferred",
    "bounced",
    "rejected",
    "complained",
    "class_hard",
    "class_soft",
    "class_block",
    "class_throttle",
    "class_transient",
    "class_config",
    "auth_failure",
)
#: rolling rates exported per provider (from the Monitor's status, 15 min window)
PROVIDER_RATES = (
    "delivery",
    "deferral",
    "bounce",
    "hard_bounce",
    "block",
    "complaint",
    "auth_failure",
)


#: Monitor.metrics() key -> (gauge name, help): values the rolling state keeps as running totals
MONITOR_GAUGES: dict[str, tuple[str, str]] = {
    "active_scopes": ("repmon_active_scopes", "Scopes held in the rolling state."),
    "late_dropped": (
        "repmon_late_events_dropped",
        "Events dropped for arriving after the lateness.",
    ),
    "evicted_for_room": (
        "repmon_scopes_evicted_for_room",
        "Scopes evicted (least recently active first) to stay under REPMON_MAX_SCOPES.",
    ),
    "late_complaints": (
        "repmon_late_complaints",
        "Complaints later than the lateness (feedback loops stamp the send time) that were "
        "counted in the current bucket instead of dropped.",
    ),
    "early_events": (
        "repmon_early_events",
        "Events that arrived ahead of the event-time watermark and were held until it reached "
        "their bucket (counted, not lost).",
    ),
    "early_dropped": (
        "repmon_early_events_dropped",
        "Events ahead of the watermark dropped because the early buffer was full.",
    ),
    "early_rows_held": ("repmon_early_rows_held", "Delta rows held ahead of the watermark now."),
}


#: scope kinds with per-scope rate series (the sender's own, a small known set)
SCOPE_SERIES_KINDS = ("ip", "pool")


def incident_labels(scope: str) -> tuple[str, str]:
    """(scope_kind, provider) of an incident's scope: ``ip:X|provider:P`` -> (``ip|provider``,
    ``P``); ``provider:P`` -> (``provider``, ``P``); a scope without a provider -> provider
    ``any`` (the incident is about every provider)."""
    single, bar, prov = scope.partition("|")
    kind = single.partition(":")[0]
    if bar:
        return f"{kind}|{prov.partition(':')[0]}", prov.partition(":")[2]
    if kind == "provider":
        return kind, single.partition(":")[2]
    return kind, "any"


class Metrics:
    def __init__(self, top_scopes: int = 20, max_incidents: int = 50) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self.top_scopes = top_scopes
        self.max_incidents = max_incidents
        self.providers = frozenset(default_table().providers) | {OTHER}
        self.events = Counter(
            "repmon_events_total", "Accepted canonical events by kind.", ["kind"], registry=r
        )
        self.rejected = Counter(
            "repmon_events_rejected_total",
            "Inputs dead-lettered to the DLQ topic, by reason.",
            ["reason"],
            registry=r,
        )
        self.unknown_fields = Counter(
            "repmon_events_unknown_fields_total",
            "Unknown fields seen (and ignored) in accepted or rejected events.",
            registry=r,
        )
        self.ignored_fields = Counter(
            "repmon_events_ignored_fields_total",
            "Optional context fields (smtp_command, dsn_action) with a value ingest does not "
            "recognise: the field is ignored, the event kept (docs/events.md).",
            ["field"],
            registry=r,
        )
        self.duplicates = Counter(
            "repmon_events_duplicate_total",
            "Valid events dropped as repeats of one accepted shortly before (same message id, "
            "kind, time, codes and reply).",
            registry=r,
        )
        self.provider_events = Counter(
            "repmon_provider_events_total",
            "Events per mailbox provider and outcome column.",
            ["provider", "outcome"],
            registry=r,
        )
        self.provider_rate = Gauge(
            "repmon_provider_rate_ratio",
            "Rolling 15-minute rates per mailbox provider (0..1).",
            ["provider", "rate"],
            registry=r,
        )
        self.provider_volume = Gauge(
            "repmon_provider_attempts_15m",
            "Delivery attempts per provider in the rolling 15-minute window (the rates' volume).",
            ["provider"],
            registry=r,
        )
        self.event_lag = Gauge(
            "repmon_processing_lag_seconds",
            "Wall-clock time minus the newest event time ingested by this worker.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "repmon_consumer_lag_messages",
            "Messages of the input topic not yet ingested, per assigned input partition.",
            ["partition"],
            registry=r,
        )
        self.watermark = Gauge(
            "repmon_watermark_timestamp_seconds",
            "Event-time watermark of the rolling state (slowest active source).",
            registry=r,
        )
        self.tick_seconds = Histogram(
            "repmon_tick_duration_seconds",
            "Time spent in one tick (flush, rollup send, detectors).",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.rollup_messages = Counter(
            "repmon_rollup_messages_total", "Delta messages summed by this worker.", registry=r
        )
        self.rollup_duplicates = Counter(
            "repmon_rollup_duplicates_total",
            "Delta messages dropped as redeliveries (same source and sequence).",
            registry=r,
        )
        self.ingest_restarts = Counter(
            "repmon_ingest_restarts_total",
            "Times the input consumer failed and was restarted.",
            registry=r,
        )
        self.snapshots = Counter(
            "repmon_snapshots_written_total",
            "Snapshots written to the state topics, by kind (owner: a rollup partition's "
            "Monitor; ingest: an input partition's duplicate window and known-good memory).",
            ["kind"],
            registry=r,
        )
        self.snapshot_bytes = Gauge(
            "repmon_snapshot_size_bytes",
            "Size of the newest snapshot written, by kind (compressed).",
            ["kind"],
            registry=r,
        )
        self.snapshot_seconds = Histogram(
            "repmon_snapshot_duration_seconds",
            "Time to encode and write one snapshot, by kind.",
            ["kind"],
            buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            registry=r,
        )
        self.restores = Counter(
            "repmon_state_restores_total",
            "Partitions taken over, by kind and result (restored from a snapshot; cold: no "
            "snapshot; failed: a snapshot that could not be read, started empty).",
            ["kind", "result"],
            registry=r,
        )
        self.warmup_events = Counter(
            "repmon_state_warmup_events_total",
            "Input records read again (not counted) to bring restored ingest memories up to the "
            "committed offset.",
            registry=r,
        )
        self.owner_failures = Counter(
            "repmon_owner_failures_total",
            "Failures of the rollup consumer or of an owner's snapshot transaction (retried).",
            registry=r,
        )
        self.log_lines_held = Gauge(
            "repmon_log_lines_held_back",
            "Repeated Kafka client warnings held back by the 30 s log limit since start.",
            registry=r,
        )
        self.rollup_bad = Counter(
            "repmon_rollup_undecodable_total", "Undecodable delta messages dropped.", registry=r
        )
        self.incidents_open = Gauge(
            "repmon_incidents_open",
            "Open incidents by type and severity (the incident's own; docs/runbook.md).",
            ["type", "severity"],
            registry=r,
        )
        self.incidents_opened = Counter(
            "repmon_incidents_opened_total", "Incidents opened, by type.", ["type"], registry=r
        )
        self.incident_info = Gauge(
            "repmon_incident_open_info",
            "One series per open incident (1), with the scope to act on: type, severity, "
            "scope_kind, provider (any: all providers) and scope. Capped at "
            'REPMON_METRICS_MAX_INCIDENTS; the rest count in one scope="other" series.',
            ["type", "severity", "scope_kind", "provider", "scope"],
            registry=r,
        )
        self.incident_rate = Gauge(
            "repmon_incident_rate_ratio",
            "An open incident's signal rate at opening (rate) and its baseline (baseline), 0..1; "
            "same labels as repmon_incident_open_info.",
            ["type", "severity", "scope_kind", "provider", "scope", "value"],
            registry=r,
        )
        self.scope_rate = Gauge(
            "repmon_scope_rate_ratio",
            "Rolling 15-minute rates of the sending IPs and pools with the most traffic in the "
            "last hour (REPMON_METRICS_TOP_SCOPES per kind), 0..1.",
            ["kind", "scope", "rate"],
            registry=r,
        )
        self.scope_volume = Gauge(
            "repmon_scope_attempts_15m",
            "Delivery attempts in the rolling 15-minute window of the IPs and pools of "
            "repmon_scope_rate_ratio.",
            ["kind", "scope"],
            registry=r,
        )
        self.throttle_records = Counter(
            "repmon_throttle_records_total",
            "Throttle records published (changes and refreshes), by state and reason "
            "(docs/throttle.md).",
            ["state", "reason"],
            registry=r,
        )
        self.throttled_scopes = Gauge(
            "repmon_throttled_scopes",
            "Scopes with a throttle decision in force, by state and scope kind.",
            ["state", "scope_kind"],
            registry=r,
        )
        self.throttle_factor = Gauge(
            "repmon_throttle_factor_ratio",
            "Rate factor in force per throttled scope (0..1; the probe share while paused). "
            "Capped at REPMON_METRICS_MAX_INCIDENTS scopes, the most restrictive first.",
            ["state", "scope_kind", "provider", "scope"],
            registry=r,
        )
        self.suppression_changes = Counter(
            "repmon_suppression_changes_total",
            "Recipient suppression changes published on repmon.suppressions, by the state after "
            "the change and its cause (docs/suppression.md).",
            ["state", "cause"],
            registry=r,
        )
        self.suppression_quarantined = Gauge(
            "repmon_suppression_quarantined_recipients",
            "Recipients held in quarantine by an open incident, over the input partitions read.",
            registry=r,
        )
        self.suppression_unpublished = Gauge(
            "repmon_suppression_unpublished_changes",
            "Suppression changes waiting for the changelog's acknowledgement (grows while the "
            "broker refuses them).",
            registry=r,
        )
        self.suppression_changelog_read = Counter(
            "repmon_suppression_changelog_records_read_total",
            "Changelog records read to bring a partition's suppression store up to date "
            "(catch-up after a restart, or a rebuild).",
            registry=r,
        )
        self.suppression_lookups = Counter(
            "repmon_suppression_lookups_total",
            "GET /suppressions/{key} answers, by result (local: this worker reads the key's "
            "partition; forwarded: to the worker that does; unavailable: 503).",
            ["result"],
            registry=r,
        )
        self.ready = Gauge(
            "repmon_ready",
            "1 when /readyz answers 200 (assigned, restored, ticking, lag not growing), else 0.",
            registry=r,
        )
        #: gauges that mirror Monitor.metrics() values, one line each
        self.monitor_gauges = {
            key: Gauge(name, doc, registry=r) for key, (name, doc) in MONITOR_GAUGES.items()
        }
        self._seen_pipe: dict[int, Pipeline] = {}
        self._seen_kind: dict[int, list[int]] = {}
        self._seen_rej: dict[int, dict[str, int]] = {}
        self._seen_unknown: dict[int, int] = {}
        self._seen_dup: dict[int, int] = {}
        self._seen_ignored: dict[int, dict[str, int]] = {}
        for k in EVENT_KINDS:
            self.events.labels(k)
        for reason in REJECTION_REASONS:
            self.rejected.labels(reason)
        for fld in CONTEXT_FIELDS:
            self.ignored_fields.labels(fld)
        # counters that dashboards take increase() of exist from the start at 0: a series born
        # at its first increment shows no increase for that first incident or record
        for typ in INCIDENT_TYPES:
            self.incidents_opened.labels(typ)
        for state in STATES:
            for reason in REASONS:
                self.throttle_records.labels(state, reason)
        for kind in ("owner", "ingest"):  # take-overs after this process's first scrape show
            for result in ("restored", "cold", "failed"):
                self.restores.labels(kind, result)
        for result in ("restored", "rebuilt", "failed"):
            self.restores.labels("suppression", result)
        for result in ("local", "forwarded", "unavailable"):
            self.suppression_lookups.labels(result)

    def provider_label(self, name: str) -> str:
        return name if name in self.providers else OTHER

    def observe_pipeline(self, partition: int, pipe: Pipeline, d: Deltas) -> None:
        st = pipe.stats
        if self._seen_pipe.get(partition) is not pipe:
            # a partition revoked and assigned again gets a fresh Pipeline whose statistics
            # start at zero: count from there (it crashed on negative increments before)
            self._seen_pipe[partition] = pipe
            self._seen_kind.pop(partition, None)
            self._seen_rej.pop(partition, None)
            self._seen_unknown.pop(partition, None)
            self._seen_dup.pop(partition, None)
            self._seen_ignored.pop(partition, None)
        seen = self._seen_kind.setdefault(partition, [0] * len(EVENT_KINDS))
        for i, k in enumerate(EVENT_KINDS):
            diff = st.by_kind[i] - seen[i]
            if diff:
                self.events.labels(k).inc(diff)
                seen[i] = st.by_kind[i]
        seen_r = self._seen_rej.setdefault(partition, {})
        for reason, v in st.rejected.items():
            diff = v - seen_r.get(reason, 0)
            if diff:
                self.rejected.labels(reason).inc(diff)
                seen_r[reason] = v
        diff = st.unknown_fields - self._seen_unknown.get(partition, 0)
        if diff:
            self.unknown_fields.inc(diff)
            self._seen_unknown[partition] = st.unknown_fields
        seen_i = self._seen_ignored.setdefault(partition, {})
        for fld, v in st.ignored_fields.items():
            diff = v - seen_i.get(fld, 0)
            if diff:
                self.ignored_fields.labels(fld).inc(diff)
                seen_i[fld] = v
        diff = st.duplicates - self._seen_dup.get(partition, 0)
        if diff:
            self.duplicates.inc(diff)
            self._seen_dup[partition] = st.duplicates
        if pipe.watermark > 0:
            self.event_lag.set(max(0.0, time.time() - pipe.watermark))
        for i, scope in enumerate(d.scopes):
            if not scope.startswith("provider:"):
                continue
            label = self.provider_label(scope.partition(":")[2])
            tot = d.counts[d.scope_idx == i].sum(axis=0)
            for outcome in PROVIDER_OUTCOMES:
                v = int(tot[COL[outcome]])
                if v:
                    self.provider_events.labels(label, outcome).inc(v)

    def observe_monitor(self, monitor: Any, watermark: float) -> None:
        self.watermark.set(watermark)
        mm = monitor.metrics()
        for key, gauge in self.monitor_gauges.items():
            gauge.set(mm.get(key, 0))
        for typ, by_sev in mm.get("incidents_open_by_severity", {}).items():
            for sev, n in by_sev.items():
                self.incidents_open.labels(typ, sev).set(n)
        status = monitor.status(top=max(len(self.providers), self.top_scopes))
        scopes = status.get("scopes", {})
        # the series of what this worker holds now, and nothing else: a provider or an IP whose
        # rollup partition moved to another worker must not keep its last value here
        self.provider_rate.clear()
        self.provider_volume.clear()
        for row in scopes.get("provider", []):
            label = self.provider_label(str(row.get("scope", "")).partition(":")[2])
            m15 = row.get("m15", {})
            self._rates(self.provider_rate, (label,), m15.get("rates", {}))
            self.provider_volume.labels(label).set(float(m15.get("counts", {}).get("attempts", 0)))
        self.scope_rate.clear()
        self.scope_volume.clear()
        for kind in SCOPE_SERIES_KINDS:
            for row in scopes.get(kind, [])[: self.top_scopes]:
                name = str(row.get("scope", "")).partition(":")[2]
                m15 = row.get("m15", {})
                self._rates(self.scope_rate, (kind, name), m15.get("rates", {}))
                attempts = float(m15.get("counts", {}).get("attempts", 0))
                self.scope_volume.labels(kind, name).set(attempts)
        self.observe_incidents(status.get("open_incidents", []))

    def _rates(self, gauge: Gauge, labels: tuple[str, ...], rates: dict[str, Any]) -> None:
        for rate in PROVIDER_RATES:
            v = rates.get(rate)
            if v is not None and np.isfinite(v):
                gauge.labels(*labels, rate).set(float(v))

    def observe_incidents(self, incidents: list[dict[str, Any]]) -> None:
        """One info series per open incident (the most severe and newest first), capped."""
        self.incident_info.clear()
        self.incident_rate.clear()
        ordered = sorted(
            incidents,
            key=lambda i: (i.get("severity") != "critical", -float(i.get("opened_at", 0.0))),
        )
        other: dict[tuple[str, str], int] = {}
        for k, inc in enumerate(ordered):
            typ, sev = str(inc.get("type")), str(inc.get("severity"))
            if k >= self.max_incidents:
                other[(typ, sev)] = other.get((typ, sev), 0) + 1
                continue
            scope = str(inc.get("scope"))
            kind, prov = incident_labels(scope)
            labels = (typ, sev, kind, prov, scope)
            self.incident_info.labels(*labels).set(1)
            ev = inc.get("evidence", {})
            for value in ("rate", "baseline"):
                if isinstance(ev.get(value), int | float):
                    self.incident_rate.labels(*labels, value).set(float(ev[value]))
        for (typ, sev), n in other.items():
            self.incident_info.labels(typ, sev, "other", "other", "other").set(n)

    def throttle_record(self, rec: Any) -> None:
        self.throttle_records.labels(rec.state, rec.reason).inc()

    def observe_throttle(self, controllers: list[Any]) -> None:
        """The decisions in force of every owned rollup partition (``ThrottleController``)."""
        self.throttled_scopes.clear()
        self.throttle_factor.clear()
        live = [rec for c in controllers for rec in c.live.values()]
        counts: dict[tuple[str, str], int] = {}
        for rec in live:
            kind, _ = incident_labels(rec.scope)
            counts[(rec.state, kind)] = counts.get((rec.state, kind), 0) + 1
        for (state, kind), n in counts.items():
            self.throttled_scopes.labels(state, kind).set(n)
        for rec in sorted(live, key=lambda r: (r.rate_factor, r.scope))[: self.max_incidents]:
            kind, prov = incident_labels(rec.scope)
            self.throttle_factor.labels(rec.state, kind, prov, rec.scope).set(rec.rate_factor)

    def observe_suppression(self, parts: list[Any]) -> None:
        """After a tick: the changes the partitions' policies made (``PartitionSuppression``),
        their quarantined recipients and unpublished changes."""
        held = unpublished = 0
        for ps in parts:
            for (state, cause), n in ps.stats.changes.items():
                self.suppression_changes.labels(state, cause).inc(n)
            ps.stats.changes.clear()
            held += int(ps.sup.metrics()["held_recipients"])
            unpublished += len(ps.outbox)
        self.suppression_quarantined.set(held)
        self.suppression_unpublished.set(unpublished)

    def snapshot_written(self, kind: str, size: int, seconds: float) -> None:
        self.snapshots.labels(kind).inc()
        self.snapshot_bytes.labels(kind).set(size)
        self.snapshot_seconds.labels(kind).observe(seconds)

    def restore(self, kind: str, result: str) -> None:
        self.restores.labels(kind, result).inc()

    def incident_change(self, rec: dict[str, Any]) -> None:
        if rec.get("action") == "opened":
            self.incidents_opened.labels(str(rec.get("type"))).inc()
