"""The "repmon / Overview" dashboard (overview.json): volume, delivery outcome rates by provider
and open incidents.
"""

from __future__ import annotations

from grafana.panels import (
    ATTEMPT_OUTCOMES,
    GREEN,
    ORANGE,
    RATE_DESC,
    RED,
    RI,
    UID_OVERVIEW,
    YELLOW,
    Board,
    bars,
    st,
    tbl,
    ts,
)


def overview() -> Board:
    b = Board(
        UID_OVERVIEW,
        "repmon / Overview",
        "Volume, delivery outcome rates by provider and open incidents. "
        "Drill down with the provider dashboard; scopes and evidence are in the worker's /status.",
    )
    b.row("Now").add(
        st(
            "Accepted events",
            "Canonical events accepted per second, all workers (repmon_events_total).",
            [(f"sum(rate(repmon_events_total[{RI}]))", "")],
            unit="cps",
        ),
        st(
            "Delivery attempts",
            "Attempts per second (delivered + deferred + bounced + rejected) over all providers "
            "(repmon_provider_events_total).",
            [
                (
                    f'sum(rate(repmon_provider_events_total{{outcome=~"{ATTEMPT_OUTCOMES}"}}[{RI}]))',
                    "",
                )
            ],
            unit="cps",
        ),
        st(
            "Open incidents",
            "Incidents open now, all types and severities (repmon_incidents_open).",
            [("sum(repmon_incidents_open)", "")],
            unit="short",
            decimals=0,
            steps=((None, GREEN), (1, ORANGE)),
        ),
        st(
            "Critical incidents",
            "Open incidents whose own severity is critical (docs/runbook.md, Severities): they page.",
            [('sum(repmon_incidents_open{severity="critical"})', "")],
            unit="short",
            decimals=0,
            steps=((None, GREEN), (1, RED)),
        ),
        st(
            "Throttled scopes",
            "Scopes the fleet is told to slow down or pause now (repmon_throttled_scopes; "
            "docs/throttle.md).",
            [("sum(repmon_throttled_scopes)", "")],
            unit="short",
            decimals=0,
            steps=((None, GREEN), (1, ORANGE)),
        ),
        st(
            "Dead-lettered share",
            "Share of inputs dead-lettered to the DLQ topic (rejected / (accepted + rejected)).",
            [
                (
                    f"sum(rate(repmon_events_rejected_total[{RI}]))"
                    f" / (sum(rate(repmon_events_total[{RI}]))"
                    f" + sum(rate(repmon_events_rejected_total[{RI}])))",
                    "",
                )
            ],
            unit="percentunit",
            steps=((None, GREEN), (0.01, YELLOW), (0.05, RED)),
        ),
        st(
            "Processing lag",
            "Wall clock minus the newest event time ingested, worst worker "
            "(repmon_processing_lag_seconds).",
            [("max(repmon_processing_lag_seconds)", "")],
            unit="s",
            steps=((None, GREEN), (300, YELLOW), (900, RED)),
        ),
    )
    b.row("Volume").add(
        ts(
            "Accepted events by kind",
            "Canonical events accepted per second by event kind (repmon_events_total).",
            [(f"sum by (kind) (rate(repmon_events_total[{RI}]))", "{{kind}}")],
            unit="cps",
            w=8,
            stack=True,
        ),
        ts(
            "Delivery attempts by provider",
            "Attempts per second (delivered + deferred + bounced + rejected) by provider, from "
            "the event counters (repmon_provider_events_total).",
            [
                (
                    "sum by (provider) (rate(repmon_provider_events_total"
                    f'{{outcome=~"{ATTEMPT_OUTCOMES}"}}[{RI}]))',
                    "{{provider}}",
                )
            ],
            unit="cps",
            w=8,
            stack=True,
            provider_links=True,
        ),
        ts(
            "Attempts in the rolling 15 min window",
            "Attempts behind the rates below, per provider (repmon_provider_attempts_15m): a "
            "rate on little volume is noisy.",
            [("max by (provider) (repmon_provider_attempts_15m)", "{{provider}}")],
            unit="short",
            w=8,
            provider_links=True,
        ),
    )
    b.row("Outcome rates by provider (rolling 15 min)")
    for rate, title, steps in (
        ("delivery", "Delivery rate", ()),
        ("deferral", "Deferral rate", ((None, GREEN), (0.2, YELLOW), (0.5, RED))),
        ("bounce", "Bounce rate", ((None, GREEN), (0.05, YELLOW), (0.1, RED))),
        ("complaint", "Complaint rate", ((None, GREEN), (0.001, YELLOW), (0.003, RED))),
    ):
        b.add(
            ts(
                title,
                RATE_DESC,
                [
                    (
                        f'max by (provider) (repmon_provider_rate_ratio{{rate="{rate}"}})',
                        "{{provider}}",
                    )
                ],
                unit="percentunit",
                steps=steps,
                provider_links=True,
            )
        )
    b.row("Incidents").add(
        ts(
            "Open incidents by type and severity",
            "Incidents open now (repmon_incidents_open), all workers. The scope (IP, pool, "
            "sender, provider) is in /status monitor.open_incidents.",
            [("sum by (type, severity) (repmon_incidents_open)", "{{type}} ({{severity}})")],
            unit="short",
            stack=True,
        ),
        bars(
            "Incidents opened in the selected range",
            "Incidents opened per type over the dashboard's time range "
            "(repmon_incidents_opened_total).",
            [
                (
                    "sum by (type) (increase(repmon_incidents_opened_total[$__range]))",
                    "{{type}}",
                )
            ],
            unit="short",
        ),
        tbl(
            "Open incidents: the scope to act on",
            "One row per open incident with its scope, scope kind and provider "
            "(repmon_incident_open_info; evidence in /incidents and /status).",
            [
                (
                    "max by (type, severity, scope_kind, provider, scope) "
                    "(repmon_incident_open_info)",
                    "",
                )
            ],
            w=12,
        ),
        tbl(
            "Throttles in force",
            "One row per throttled or paused scope with the rate factor the fleet is told to "
            "use (repmon_throttle_factor_ratio; 0 = paused but for the probe share).",
            [
                (
                    "min by (state, scope_kind, provider, scope) (repmon_throttle_factor_ratio)",
                    "",
                )
            ],
            w=12,
            unit="percentunit",
        ),
    )
    return b
