"""The "repmon / IPs and pools" dashboard (ip-pool.json) and its IP/pool template variables."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.models import dashboard as dm

from grafana.panels import (
    DS,
    GREEN,
    IP_POOL_INCIDENTS,
    RED,
    RI,
    UID_IP_POOL,
    YELLOW,
    Board,
    bars,
    tbl,
    ts,
)


def scope_kind_var() -> db.CustomVariable:
    return (
        db.CustomVariable("kind")
        .label("IP or pool")
        .values("ip,pool")
        .current(dm.VariableOption(text="ip", value="ip"))
    )


def scope_var() -> db.QueryVariable:
    return (
        db.QueryVariable("scope")
        .label("Scope")
        .description(
            "The top sending IPs or pools of the worker (REPMON_METRICS_TOP_SCOPES, by attempts "
            "in the rolling 15 minutes)."
        )
        .datasource(DS)
        .query('label_values(repmon_scope_attempts_15m{kind="$kind"}, scope)')
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(dm.VariableOption(text=["All"], value=["$__all"]))
    )


#: the scope kinds of incidents and throttles that act on IPs and pools
IP_POOL_KINDS = r"ip|pool|ip\\|provider|pool\\|provider"


def ip_pool() -> Board:
    b = (
        Board(
            UID_IP_POOL,
            "repmon / IPs and pools",
            "Rolling rates of the top sending IPs and pools, the incidents and throttles scoped "
            "to them (alone or at one provider), and the block, throttle and authentication "
            "signals per provider.",
        )
        .var(scope_kind_var())
        .var(scope_var())
    )
    sel = 'kind="$kind", scope=~"$scope"'
    b.row("Per IP or pool (rolling 15 min)").add(
        ts(
            "Attempts in the rolling 15 min window",
            "Delivery attempts behind the rates, per IP or pool (repmon_scope_attempts_15m): a "
            "rate on little volume is noisy.",
            [(f"max by (scope) (repmon_scope_attempts_15m{{{sel}}})", "{{scope}}")],
            unit="short",
            w=8,
        ),
    )
    for rate, title, steps in (
        ("deferral", "Deferral rate", ((None, GREEN), (0.2, YELLOW), (0.5, RED))),
        ("block", "Block rate", ((None, GREEN), (0.01, YELLOW), (0.05, RED))),
        ("bounce", "Bounce rate", ((None, GREEN), (0.05, YELLOW), (0.1, RED))),
        ("complaint", "Complaint rate", ((None, GREEN), (0.001, YELLOW), (0.003, RED))),
    ):
        b.add(
            ts(
                title,
                f"Rolling 15-minute {rate} rate per IP or pool (repmon_scope_rate_ratio, 0..1), "
                "all providers together; an incident on one IP at one provider is in the table "
                "below.",
                [
                    (
                        f'max by (scope) (repmon_scope_rate_ratio{{{sel}, rate="{rate}"}})',
                        "{{scope}}",
                    )
                ],
                unit="percentunit",
                steps=steps,
                w=8 if rate in ("deferral", "block") else 12,
            )
        )
    b.row("Incidents and throttles on IPs and pools").add(
        tbl(
            "Open incidents on IPs and pools",
            "Open incidents whose scope is an IP or a pool, alone or at one provider "
            "(repmon_incident_open_info).",
            [
                (
                    "max by (type, severity, scope_kind, provider, scope) "
                    f'(repmon_incident_open_info{{scope_kind=~"{IP_POOL_KINDS}"}})',
                    "",
                )
            ],
        ),
        ts(
            "Rate factor of throttled IPs and pools",
            "The share of its normal rate each throttled IP or pool (alone or at one provider) "
            "may send (repmon_throttle_factor_ratio; docs/throttle.md).",
            [
                (
                    "min by (scope) (repmon_throttle_factor_ratio"
                    f'{{scope_kind=~"{IP_POOL_KINDS}"}})',
                    "{{scope}}",
                )
            ],
            unit="percentunit",
            max_val=1,
        ),
        ts(
            "Open block and rate-limit incidents",
            "Open incidents of the types that act on IPs and pools (repmon_incidents_open).",
            [
                (
                    f'sum by (type, severity) (repmon_incidents_open{{type=~"{IP_POOL_INCIDENTS}"}})',
                    "{{type}} ({{severity}})",
                )
            ],
            unit="short",
            stack=True,
        ),
        bars(
            "Block and rate-limit incidents opened in the selected range",
            "Incidents opened over the dashboard's time range (repmon_incidents_opened_total).",
            [
                (
                    "sum by (type) (increase(repmon_incidents_opened_total"
                    f'{{type=~"{IP_POOL_INCIDENTS}"}}[$__range]))',
                    "{{type}}",
                )
            ],
            unit="short",
        ),
    )
    b.row("Signals at the providers").add(
        ts(
            "Block rate by provider",
            "Rolling 15-minute share of attempts answered with a block (policy or blocklist) "
            "reply (repmon_provider_rate_ratio, rate block).",
            [('max by (provider) (repmon_provider_rate_ratio{rate="block"})', "{{provider}}")],
            unit="percentunit",
            steps=((None, GREEN), (0.01, YELLOW), (0.05, RED)),
            provider_links=True,
        ),
        ts(
            "Authentication failure rate by provider",
            "Rolling 15-minute share of attempts rejected for SPF, DKIM or DMARC "
            "(repmon_provider_rate_ratio, rate auth_failure).",
            [
                (
                    'max by (provider) (repmon_provider_rate_ratio{rate="auth_failure"})',
                    "{{provider}}",
                )
            ],
            unit="percentunit",
            provider_links=True,
        ),
        ts(
            "Block replies by provider",
            "Replies classified as block per second (repmon_provider_events_total, class_block).",
            [
                (
                    "sum by (provider) (rate(repmon_provider_events_total"
                    f'{{outcome="class_block"}}[{RI}]))',
                    "{{provider}}",
                )
            ],
            unit="cps",
            stack=True,
            provider_links=True,
        ),
        ts(
            "Throttle replies by provider",
            "Replies classified as throttle (rate limit, 421 4.7.x) per second "
            "(repmon_provider_events_total, class_throttle).",
            [
                (
                    "sum by (provider) (rate(repmon_provider_events_total"
                    f'{{outcome="class_throttle"}}[{RI}]))',
                    "{{provider}}",
                )
            ],
            unit="cps",
            stack=True,
            provider_links=True,
        ),
    )
    return b
