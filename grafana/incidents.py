"""The "repmon / Incidents timeline" dashboard (incidents.json): when incidents opened and how
long they stayed open, with the provider rates behind them.
"""

from __future__ import annotations

from grafana.panels import (
    GREEN,
    RATE_DESC,
    RED,
    UID_INCIDENTS,
    Board,
    PromAnnotationBuilder,
    incident_type_var,
    tbl,
    timeline,
    ts,
    value_map,
)


def incidents() -> Board:
    b = (
        Board(
            UID_INCIDENTS,
            "repmon / Incidents timeline",
            "When incidents opened and how long they stayed open, with the provider rates "
            "behind them. Annotations mark open incidents and openings on every panel.",
        )
        .var(incident_type_var())
        .annotate(
            PromAnnotationBuilder(
                "Open incidents",
                'sum by (type, severity) (repmon_incidents_open{type=~"$type"}) > 0',
                color="red",
                title="{{type}} open ({{severity}})",
                tags="type,severity",
                text="repmon_incidents_open: scope and evidence in /status monitor.open_incidents",
            )
        )
        .annotate(
            PromAnnotationBuilder(
                "Incidents opened",
                'sum by (type) (increase(repmon_incidents_opened_total{type=~"$type"}[2m])) > 0',
                color="orange",
                title="{{type}} opened",
                tags="type",
                text="repmon_incidents_opened_total increased",
            )
        )
    )
    b.row("Incidents").add(
        timeline(
            "Open incidents by type",
            "Each row is an incident type; coloured while at least one incident of the type is "
            "open (repmon_incidents_open).",
            [('sum by (type) (repmon_incidents_open{type=~"$type"})', "{{type}}")],
            steps=((None, GREEN), (1, RED)),
            mappings=[value_map([("0", "none open", GREEN)])],
        ),
        ts(
            "Open incidents by type and severity",
            "Incidents open at each moment (repmon_incidents_open).",
            [
                (
                    'sum by (type, severity) (repmon_incidents_open{type=~"$type"})',
                    "{{type}} ({{severity}})",
                )
            ],
            unit="short",
            stack=True,
        ),
        ts(
            "Incidents opened per hour",
            "Incidents opened per type and hour (repmon_incidents_opened_total).",
            [
                (
                    'sum by (type) (increase(repmon_incidents_opened_total{type=~"$type"}[1h]))',
                    "{{type}}",
                )
            ],
            unit="short",
            bars=True,
            stack=True,
            interval="1h",
        ),
        tbl(
            "Opened in the selected range",
            "Incidents opened per type over the dashboard's time range.",
            [
                (
                    "sum by (type) (increase(repmon_incidents_opened_total"
                    '{type=~"$type"}[$__range]))',
                    "",
                )
            ],
        ),
        ts(
            "Open critical incidents",
            "Open incidents whose own severity is critical: these page (docs/runbook.md).",
            [
                (
                    'sum by (type) (repmon_incidents_open{type=~"$type", severity="critical"})',
                    "{{type}}",
                )
            ],
            unit="short",
            stack=True,
        ),
    )
    b.row("Throttles").add(
        ts(
            "Rate factor per throttled scope",
            "The share of its normal rate each throttled scope may send (1 = normal; a paused "
            "scope keeps only the probe share). repmon_throttle_factor_ratio, docs/throttle.md.",
            [("min by (scope) (repmon_throttle_factor_ratio)", "{{scope}}")],
            unit="percentunit",
            max_val=1,
            w=12,
        ),
        ts(
            "Throttled scopes by state",
            "Scopes with a decision in force, by state and scope kind (repmon_throttled_scopes).",
            [("sum by (state, scope_kind) (repmon_throttled_scopes)", "{{state}} {{scope_kind}}")],
            unit="short",
            stack=True,
            w=6,
        ),
        ts(
            "Throttle records per hour",
            "Decisions published on repmon.throttle per hour, by state and reason "
            "(repmon_throttle_records_total): changes and refreshes.",
            [
                (
                    "sum by (state, reason) (increase(repmon_throttle_records_total[1h]))",
                    "{{state}} ({{reason}})",
                )
            ],
            unit="short",
            bars=True,
            stack=True,
            interval="1h",
            w=6,
        ),
    )
    b.row("Context: provider rates (rolling 15 min)")
    for rate, title in (
        ("deferral", "Deferral rate"),
        ("bounce", "Bounce rate"),
        ("block", "Block rate"),
        ("complaint", "Complaint rate"),
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
                provider_links=True,
            )
        )
    return b
