"""The "repmon / Pipeline health" dashboard (pipeline.json): is the monitor itself healthy."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from grafana.panels import (
    DS,
    GREEN,
    RED,
    RI,
    UID_PIPELINE,
    YELLOW,
    Board,
    timeline,
    ts,
    value_map,
)


def pipeline() -> Board:
    b = Board(
        UID_PIPELINE,
        "repmon / Pipeline health",
        "Is the monitor itself healthy: workers scraped, ticks, lag, dead letters, rollup, "
        "snapshots and restores, rolling-state limits.",
    )
    b.var(
        db.QueryVariable("job")
        .label("Job")
        .description("Prometheus scrape job of the repmon workers.")
        .datasource(DS)
        .query("label_values(repmon_events_total, job)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    ).var(
        db.QueryVariable("instance")
        .label("Worker")
        .datasource(DS)
        .query('label_values(repmon_events_total{job="$job"}, instance)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dm.VariableOption(text=["All"], value=["$__all"]))
    )
    w = 'job="$job", instance=~"$instance"'
    b.row("Workers").add(
        timeline(
            "Scraped (up)",
            "Prometheus could scrape the worker's /metrics. The worker's readiness (/readyz) is "
            "not exported as a metric; the panels of this row show its inputs: ticks completing, "
            "ingest and owner failures.",
            [(f"up{{{w}}}", "{{instance}}")],
            steps=((None, RED), (1, GREEN)),
            mappings=[value_map([("0", "down", RED), ("1", "up", GREEN)])],
            w=12,
            h=6,
        ),
        ts(
            "Ticks per second",
            "Completed ticks per second per worker (repmon_tick_duration_seconds_count). Zero: "
            "no tick completes, the worker is not ready.",
            [
                (
                    f"sum by (instance) (rate(repmon_tick_duration_seconds_count{{{w}}}[{RI}]))",
                    "{{instance}}",
                )
            ],
            unit="hertz",
            w=6,
            h=6,
        ),
        ts(
            "Ingest and owner failures",
            "Input consumer restarts (repmon_ingest_restarts_total) and failed rollup consumer "
            "or snapshot transactions (repmon_owner_failures_total) per interval; each makes the "
            "worker unready for 10 s.",
            [
                (
                    f"sum by (instance) (increase(repmon_ingest_restarts_total{{{w}}}[{RI}]))",
                    "ingest {{instance}}",
                ),
                (
                    f"sum by (instance) (increase(repmon_owner_failures_total{{{w}}}[{RI}]))",
                    "owner {{instance}}",
                ),
            ],
            unit="short",
            w=6,
            h=6,
            bars=True,
        ),
    )
    b.row("Lag").add(
        ts(
            "Consumer lag by input partition",
            "Input messages not yet ingested per assigned partition "
            "(repmon_consumer_lag_messages). Growing for 30 ticks makes the worker unready.",
            [
                (
                    f"sum by (partition) (repmon_consumer_lag_messages{{{w}}})",
                    "partition {{partition}}",
                )
            ],
            unit="short",
            w=8,
            stack=True,
        ),
        ts(
            "Processing lag",
            "Wall clock minus the newest event time ingested, per worker "
            "(repmon_processing_lag_seconds).",
            [(f"max by (instance) (repmon_processing_lag_seconds{{{w}}})", "{{instance}}")],
            unit="s",
            w=8,
        ),
        ts(
            "Watermark behind the wall clock",
            "Wall clock minus the event-time watermark of the rolling state (the slowest active "
            "source; repmon_watermark_timestamp_seconds). Detection runs at the watermark.",
            [
                (
                    f"time() - max by (instance) (repmon_watermark_timestamp_seconds{{{w}}} > 0)",
                    "{{instance}}",
                )
            ],
            unit="s",
            w=8,
        ),
    )
    b.row("Ticks").add(
        ts(
            "Tick duration quantiles",
            "Time per tick (flush, rollup send, commit, detectors) from the histogram "
            "repmon_tick_duration_seconds, all selected workers.",
            [
                (
                    f"histogram_quantile({q}, sum by (le) "
                    f"(rate(repmon_tick_duration_seconds_bucket{{{w}}}[{RI}])))",
                    f"p{int(q * 100)}",
                )
                for q in (0.5, 0.9, 0.99)
            ],
            unit="s",
        ),
        ts(
            "Mean tick duration per worker",
            "Average time per tick per worker (_sum / _count of repmon_tick_duration_seconds).",
            [
                (
                    f"sum by (instance) (rate(repmon_tick_duration_seconds_sum{{{w}}}[{RI}]))"
                    f" / sum by (instance) (rate(repmon_tick_duration_seconds_count{{{w}}}[{RI}]))",
                    "{{instance}}",
                )
            ],
            unit="s",
        ),
    )
    b.row("Inputs and dead letters").add(
        ts(
            "Accepted events",
            "Canonical events accepted per second by kind (repmon_events_total).",
            [(f"sum by (kind) (rate(repmon_events_total{{{w}}}[{RI}]))", "{{kind}}")],
            unit="cps",
            w=8,
            stack=True,
        ),
        ts(
            "Dead-lettered by reason",
            "Inputs sent to the DLQ topic per second by rejection reason "
            "(repmon_events_rejected_total; docs/events.md).",
            [
                (
                    f"sum by (reason) (rate(repmon_events_rejected_total{{{w}}}[{RI}]))",
                    "{{reason}}",
                )
            ],
            unit="cps",
            w=8,
            stack=True,
        ),
        ts(
            "Dead-lettered share",
            "Rejected / (accepted + rejected). RepmonDeadLettersHigh alerts on this share.",
            [
                (
                    f"sum(rate(repmon_events_rejected_total{{{w}}}[{RI}]))"
                    f" / (sum(rate(repmon_events_total{{{w}}}[{RI}]))"
                    f" + sum(rate(repmon_events_rejected_total{{{w}}}[{RI}])))",
                    "dead-lettered",
                )
            ],
            unit="percentunit",
            w=8,
            steps=((None, GREEN), (0.01, YELLOW), (0.05, RED)),
        ),
        ts(
            "Duplicates and unknown fields",
            "Valid events dropped as repeats (repmon_events_duplicate_total) and unknown fields "
            "ignored (repmon_events_unknown_fields_total), per second.",
            [
                (f"sum(rate(repmon_events_duplicate_total{{{w}}}[{RI}]))", "duplicates"),
                (f"sum(rate(repmon_events_unknown_fields_total{{{w}}}[{RI}]))", "unknown fields"),
            ],
            unit="cps",
        ),
        ts(
            "Rollup messages",
            "Delta messages summed, dropped as redeliveries, and undecodable, per second "
            "(repmon_rollup_*_total).",
            [
                (f"sum(rate(repmon_rollup_messages_total{{{w}}}[{RI}]))", "summed"),
                (f"sum(rate(repmon_rollup_duplicates_total{{{w}}}[{RI}]))", "redeliveries"),
                (f"sum(rate(repmon_rollup_undecodable_total{{{w}}}[{RI}]))", "undecodable"),
            ],
            unit="cps",
        ),
    )
    b.row("Snapshots and restores").add(
        ts(
            "Snapshots written",
            "Snapshots written per second by kind (owner: a rollup partition's Monitor; ingest: "
            "an input partition's memories; repmon_snapshots_written_total).",
            [
                (
                    f"sum by (kind) (rate(repmon_snapshots_written_total{{{w}}}[{RI}]))",
                    "{{kind}}",
                )
            ],
            unit="cps",
            w=8,
        ),
        ts(
            "Snapshot duration p90",
            "90th percentile time to encode and write one snapshot, by kind "
            "(repmon_snapshot_duration_seconds).",
            [
                (
                    "histogram_quantile(0.9, sum by (le, kind) "
                    f"(rate(repmon_snapshot_duration_seconds_bucket{{{w}}}[{RI}])))",
                    "{{kind}}",
                )
            ],
            unit="s",
            w=8,
        ),
        ts(
            "Newest snapshot size",
            "Compressed size of the newest snapshot per worker and kind "
            "(repmon_snapshot_size_bytes).",
            [
                (
                    f"max by (instance, kind) (repmon_snapshot_size_bytes{{{w}}})",
                    "{{kind}} {{instance}}",
                )
            ],
            unit="bytes",
            w=8,
        ),
        ts(
            "Partitions taken over",
            "Partitions taken over per interval by kind and result: restored from a snapshot, "
            "cold (none), failed (unreadable, started empty) (repmon_state_restores_total).",
            [
                (
                    f"sum by (kind, result) (increase(repmon_state_restores_total{{{w}}}[{RI}]))",
                    "{{kind}} {{result}}",
                )
            ],
            unit="short",
            bars=True,
            stack=True,
        ),
        ts(
            "Warm-up reads",
            "Input records read again (not counted) to bring restored ingest memories up to the "
            "committed offset, per second (repmon_state_warmup_events_total).",
            [(f"sum(rate(repmon_state_warmup_events_total{{{w}}}[{RI}]))", "warm-up reads")],
            unit="cps",
        ),
    )
    b.row("Rolling state").add(
        ts(
            "Active scopes",
            "Scopes held in the rolling state per worker (repmon_active_scopes; capped by "
            "REPMON_MAX_SCOPES).",
            [(f"max by (instance) (repmon_active_scopes{{{w}}})", "{{instance}}")],
            unit="short",
            w=8,
        ),
        ts(
            "Dropped or evicted (running totals)",
            "Running totals of the rolling state since it was started or restored: late events "
            "dropped, early events dropped (buffer full), scopes evicted for room.",
            [
                (f"sum(repmon_late_events_dropped{{{w}}})", "late dropped"),
                (f"sum(repmon_early_events_dropped{{{w}}})", "early dropped"),
                (f"sum(repmon_scopes_evicted_for_room{{{w}}})", "evicted for room"),
            ],
            unit="short",
            w=8,
        ),
        ts(
            "Late and early events (running totals)",
            "Complaints counted later than the lateness (repmon_late_complaints) and events "
            "held until the watermark reached them (repmon_early_events): counted, not lost.",
            [
                (f"sum(repmon_late_complaints{{{w}}})", "late complaints"),
                (f"sum(repmon_early_events{{{w}}})", "early events"),
            ],
            unit="short",
            w=8,
        ),
        ts(
            "Rows held ahead of the watermark",
            "Delta rows waiting for the watermark now (repmon_early_rows_held).",
            [(f"sum by (instance) (repmon_early_rows_held{{{w}}})", "{{instance}}")],
            unit="short",
        ),
        ts(
            "Kafka log lines held back",
            "Repeated Kafka client warnings held back by the 30 s log limit since start "
            "(repmon_log_lines_held_back): rises while the broker is unreachable.",
            [(f"max by (instance) (repmon_log_lines_held_back{{{w}}})", "{{instance}}")],
            unit="short",
        ),
    )
    return b
