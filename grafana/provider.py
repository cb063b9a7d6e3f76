"""The "repmon / Provider" dashboard (provider.json): one mailbox provider's rolling rates, the
event counters behind them and the reply classes.
"""

from __future__ import annotations

from grafana.panels import (
    ATTEMPT_OUTCOMES,
    GREEN,
    RED,
    RI,
    UID_PROVIDER,
    YELLOW,
    Board,
    provider_var,
    st,
    tbl,
    ts,
)


def provider() -> Board:
    b = Board(
        UID_PROVIDER,
        "repmon / Provider",
        "One mailbox provider: the monitor's rolling rates, the event counters behind them and "
        "the reply classes.",
    ).var(provider_var())
    sel = 'provider="$provider"'
    b.row("$provider now (rolling 15 min)").add(
        st(
            "Attempts (15 min)",
            "Attempts in the rolling 15-minute window (repmon_provider_attempts_15m).",
            [(f"max(repmon_provider_attempts_15m{{{sel}}})", "")],
            unit="short",
            w=4,
        ),
        st(
            "Rates (15 min)",
            "The monitor's rolling 15-minute rates for this provider (repmon_provider_rate_ratio).",
            [(f"max by (rate) (repmon_provider_rate_ratio{{{sel}}})", "{{rate}}")],
            unit="percentunit",
            w=20,
            graph=False,
        ),
    )
    b.row("Rates over time").add(
        ts(
            "Delivery and deferral",
            "Rolling 15-minute delivery and deferral rates (repmon_provider_rate_ratio).",
            [
                (
                    f'max by (rate) (repmon_provider_rate_ratio{{{sel}, rate=~"delivery|deferral"}})',
                    "{{rate}}",
                )
            ],
            unit="percentunit",
            w=8,
            max_val=1,
        ),
        ts(
            "Bounces, blocks and authentication failures",
            "Rolling 15-minute bounce, hard bounce, block and authentication failure rates.",
            [
                (
                    "max by (rate) (repmon_provider_rate_ratio"
                    f'{{{sel}, rate=~"bounce|hard_bounce|block|auth_failure"}})',
                    "{{rate}}",
                )
            ],
            unit="percentunit",
            w=8,
        ),
        ts(
            "Complaints",
            "Rolling 15-minute complaint rate; dashed lines at 0.1 % and 0.3 % (the mailbox "
            "providers' published spam-rate limits).",
            [
                (
                    f'max by (rate) (repmon_provider_rate_ratio{{{sel}, rate="complaint"}})',
                    "{{rate}}",
                )
            ],
            unit="percentunit",
            w=8,
            steps=((None, GREEN), (0.001, YELLOW), (0.003, RED)),
        ),
    )
    b.row("Event counters").add(
        ts(
            "Outcomes",
            "Events per second by outcome for this provider (repmon_provider_events_total).",
            [
                (
                    "sum by (outcome) (rate(repmon_provider_events_total"
                    f'{{{sel}, outcome=~"sent|delivered|deferred|bounced|rejected|complained"}}[{RI}]))',
                    "{{outcome}}",
                )
            ],
            unit="cps",
            w=8,
        ),
        ts(
            "Share of attempts by outcome",
            "Delivered, deferred, bounced and rejected as a share of attempts, from the counters "
            "over the rate window (a cross-check of the rolling rates).",
            [
                (
                    "sum by (outcome) (rate(repmon_provider_events_total"
                    f'{{{sel}, outcome=~"{ATTEMPT_OUTCOMES}"}}[{RI}]))'
                    " / ignoring (outcome) group_left"
                    " sum(rate(repmon_provider_events_total"
                    f'{{{sel}, outcome=~"{ATTEMPT_OUTCOMES}"}}[{RI}]))',
                    "{{outcome}}",
                )
            ],
            unit="percentunit",
            w=8,
            max_val=1,
            stack=True,
        ),
        ts(
            "Reply classes",
            "Deferred, bounced and rejected replies per second by class (hard, soft, block, "
            "throttle, transient, config; docs/classification.md) and authentication failures.",
            [
                (
                    "sum by (outcome) (rate(repmon_provider_events_total"
                    f'{{{sel}, outcome=~"class_.+|auth_failure"}}[{RI}]))',
                    "{{outcome}}",
                )
            ],
            unit="cps",
            w=8,
            stack=True,
        ),
    )
    b.row("Incidents and throttles at $provider").add(
        tbl(
            "Open incidents at $provider",
            "Open incidents whose scope is at this provider: the provider itself, its domains "
            "and MX, or an IP, pool, sender, campaign or tenant at it "
            "(repmon_incident_open_info; evidence in /incidents).",
            [
                (
                    "max by (type, severity, scope_kind, scope) "
                    f"(repmon_incident_open_info{{{sel}}})",
                    "",
                )
            ],
        ),
        ts(
            "Rate factor of throttled scopes at $provider",
            "The share of its normal rate each throttled scope at this provider may send "
            "(repmon_throttle_factor_ratio; docs/throttle.md).",
            [(f"min by (scope) (repmon_throttle_factor_ratio{{{sel}}})", "{{scope}}")],
            unit="percentunit",
            max_val=1,
        ),
    )
    return b
