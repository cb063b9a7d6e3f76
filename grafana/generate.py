#!/usr/bin/env python3
"""Generates repmon's Grafana dashboards (grafana/dashboards/*.json) with grafana-foundation-sdk.

    python grafana/generate.py           # write grafana/dashboards/*.json
    python grafana/generate.py --check   # exit 1 if regenerating would change a committed file

The JSON is committed: deploy/compose.yaml mounts grafana/ at /etc/grafana/dashboards and
deploy/grafana/provisioning/dashboards/repmon.yml loads every *.json under it (docs/dashboards.md).
Edit this file, never the JSON. Only metrics of streams/worker/metrics.py (docs/metrics.md) are
used; tests/test_dashboards.py checks every query against the worker's registry.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, text, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models.text import TextMode

OUT_DIR = Path(__file__).resolve().parent / "dashboards"

#: the data source variable every dashboard has; its default is the provisioned data source
#: (deploy/grafana/provisioning/datasources/prometheus.yml: name Prometheus, uid prometheus)
DS_VAR = "datasource"
DS_DEFAULT_UID = "prometheus"
DS_DEFAULT_NAME = "Prometheus"
DS = dm.DataSourceRef(type_val="prometheus", uid="${" + DS_VAR + "}")

TAGS = ["repmon"]
UID_OVERVIEW = "repmon-overview"
UID_PROVIDER = "repmon-provider"
UID_IP_POOL = "repmon-ip-pool"
UID_INCIDENTS = "repmon-incidents"
UID_PIPELINE = "repmon-pipeline"

RI = "$__rate_interval"
#: the outcome columns that make up a delivery attempt (models/state/rolling.py, "attempts")
ATTEMPT_OUTCOMES = "delivered|deferred|bounced|rejected"
#: incident types whose scope is usually an IP or a pool (docs/incidents.md)
IP_POOL_INCIDENTS = "block|rate_limited"

GREEN, YELLOW, ORANGE, RED, BLUE = "green", "yellow", "orange", "red", "blue"


# --------------------------------------------------------------------------------------------
# SDK extensions


class PromAnnotation(dm.AnnotationQuery):
    """A Prometheus annotation query: the SDK's AnnotationQuery lacks the Prometheus fields
    (step, titleFormat, tagKeys, textFormat) that Grafana's Prometheus annotation support reads."""

    def __init__(self, step: str, title_format: str, tag_keys: str, text_format: str) -> None:
        super().__init__()
        self.step = step
        self.title_format = title_format
        self.tag_keys = tag_keys
        self.text_format = text_format

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update(
            step=self.step,
            titleFormat=self.title_format,
            tagKeys=self.tag_keys,
            textFormat=self.text_format,
        )
        return payload


class PromAnnotationBuilder(cogbuilder.Builder[dm.AnnotationQuery]):
    def __init__(
        self,
        name: str,
        expr: str,
        *,
        color: str,
        title: str,
        tags: str,
        text: str = "",
        step: str = "60s",
    ) -> None:
        a = PromAnnotation(step=step, title_format=title, tag_keys=tags, text_format=text)
        a.name = name
        a.datasource = DS
        a.enable = True
        a.hide = False
        a.icon_color = color
        a.expr = expr
        self._internal = a

    def build(self) -> dm.AnnotationQuery:
        return self._internal


# --------------------------------------------------------------------------------------------
# helpers

Target = tuple[str, str]  # (expr, legend)


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def queries(
    panel: typing.Any, targets: Sequence[Target], *, instant: bool = False, table_fmt: bool = False
) -> None:
    for i, (expr, legend) in enumerate(targets):
        q = prom.Dataquery().expr(expr).ref_id(chr(ord("A") + i)).datasource(DS)
        if legend:
            q = q.legend_format(legend)
        if instant:
            q = q.instant()
        if table_fmt:
            q = q.format(pm.PromQueryFormat.TABLE)
        panel.with_target(q)


def link_provider() -> db.DashboardLink:
    """Data link from a series with a ``provider`` label to the provider drill-down."""
    return (
        db.DashboardLink("Provider ${__field.labels.provider}")
        .type(dm.DashboardLinkType.LINK)
        .url(
            f"/d/{UID_PROVIDER}/repmon-provider?var-provider=${{__field.labels.provider}}"
            f"&var-{DS_VAR}=${{{DS_VAR}}}&${{__url_time_range}}"
        )
        .target_blank(False)
    )


def ts(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    bars: bool = False,
    min_val: float | None = 0,
    max_val: float | None = None,
    steps: Sequence[tuple[float | None, str]] = (),
    provider_links: bool = False,
    interval: str | None = None,
) -> timeseries.Panel:
    p = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(h)
        .span(w)
        .line_width(1)
        .fill_opacity(25 if stack or bars else 10)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(
            cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING)
        )
    )
    if min_val is not None:
        p = p.min(min_val)
    if max_val is not None:
        p = p.max(max_val)
    if stack:
        p = p.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if bars:
        p = p.draw_style(cm.GraphDrawStyle.BARS)
    if steps:
        p = p.thresholds(thresholds(*steps)).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.DASHED)
        )
    if provider_links:
        p = p.data_links([link_provider()])
    if interval:
        p = p.interval(interval)
    queries(p, targets)
    return p


def st(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    w: int = 4,
    h: int = 4,
    steps: Sequence[tuple[float | None, str]] = ((None, GREEN),),
    decimals: int | None = None,
    graph: bool = True,
) -> stat.Panel:
    p = (
        stat.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(h)
        .span(w)
        .thresholds(thresholds(*steps))
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.AREA if graph else cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    if decimals is not None:
        p = p.decimals(decimals)
    queries(p, targets)
    return p


def bars(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    unit: str,
    w: int = 12,
    h: int = 8,
) -> bargauge.Panel:
    """Instant values per series as horizontal bars (e.g. totals over the selected range)."""
    p = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(h)
        .span(w)
        .min(0)
        .orientation(cm.VizOrientation.HORIZONTAL)
        .display_mode(cm.BarGaugeDisplayMode.BASIC)
        .thresholds(thresholds((None, BLUE)))
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    )
    queries(p, targets, instant=True)
    return p


def timeline(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    steps: Sequence[tuple[float | None, str]],
    mappings: Sequence[dm.ValueMapping] = (),
    w: int = 24,
    h: int = 8,
    unit: str = "short",
) -> statetimeline.Panel:
    p = (
        statetimeline.Panel()
        .title(title)
        .description(description)
        .datasource(DS)
        .unit(unit)
        .height(h)
        .span(w)
        .thresholds(thresholds(*steps))
        .color_scheme(db.FieldColor().mode(dm.FieldColorModeId.THRESHOLDS))
        .show_value(cm.VisibilityMode.AUTO)
        .merge_values(True)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
    )
    if mappings:
        p = p.mappings(list(mappings))
    queries(p, targets)
    return p


def tbl(
    title: str,
    description: str,
    targets: Sequence[Target],
    *,
    w: int = 12,
    h: int = 8,
    unit: str | None = None,
) -> table.Panel:
    p = table.Panel().title(title).description(description).datasource(DS).height(h).span(w)
    if unit is not None:
        p = p.unit(unit)
    p = p.with_transformation(
        dm.DataTransformerConfig(id_val="merge", options={})
    ).with_transformation(
        dm.DataTransformerConfig(
            id_val="organize", options={"excludeByName": {"Time": True}, "renameByName": {}}
        )
    )
    queries(p, targets, instant=True, table_fmt=True)
    return p


def note(title: str, content: str, *, w: int = 24, h: int = 5) -> text.Panel:
    return text.Panel().title(title).mode(TextMode.MARKDOWN).content(content).height(h).span(w)


def value_map(pairs: Iterable[tuple[str, str, str]]) -> dm.ValueMap:
    return dm.ValueMap(options={v: dm.ValueMappingResult(text=t, color=c) for v, t, c in pairs})


class Board:
    """A dashboard being built: assigns stable panel ids in the order panels are added."""

    def __init__(self, uid: str, title: str, description: str) -> None:
        self.uid = uid
        self._next_id = 1
        self.d = (
            db.Dashboard(title)
            .uid(uid)
            .description(description)
            .tags(TAGS)
            .editable()
            .tooltip(dm.DashboardCursorSync.CROSSHAIR)
            .time("now-6h", "now")
            .refresh("30s")
            .timezone("browser")
            .timepicker(db.TimePicker().refresh_intervals(["10s", "30s", "1m", "5m", "15m"]))
            .with_variable(
                db.DatasourceVariable(DS_VAR)
                .label("Data source")
                .type("prometheus")
                .current(dm.VariableOption(text=DS_DEFAULT_NAME, value=DS_DEFAULT_UID))
            )
            .link(
                db.DashboardLink("repmon")
                .type(dm.DashboardLinkType.DASHBOARDS)
                .tags(TAGS)
                .as_dropdown(True)
                .include_vars(False)
                .keep_time(True)
            )
        )

    def _id(self) -> int:
        i = self._next_id
        self._next_id += 1
        return i

    def row(self, title: str) -> Board:
        self.d = self.d.with_row(db.Row(title).id(self._id()))
        return self

    def add(self, *panels: typing.Any) -> Board:
        for p in panels:
            self.d = self.d.with_panel(p.id(self._id()))
        return self

    def var(self, v: cogbuilder.Builder[dm.VariableModel]) -> Board:
        self.d = self.d.with_variable(v)
        return self

    def annotate(self, a: PromAnnotationBuilder) -> Board:
        self.d = self.d.annotation(a)
        return self

    def build(self) -> dm.Dashboard:
        return self.d.build()


def provider_var() -> db.QueryVariable:
    return (
        db.QueryVariable("provider")
        .label("Provider")
        .description("Mailbox provider (the provider table plus 'other').")
        .datasource(DS)
        .query("label_values(repmon_provider_events_total, provider)")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
    )


def incident_type_var() -> db.CustomVariable:
    from models.schema import INCIDENT_TYPES  # the detectors' closed vocabulary

    return (
        db.CustomVariable("type")
        .label("Incident type")
        .values(",".join(INCIDENT_TYPES))
        .multi(True)
        .include_all(True)
        .current(dm.VariableOption(text=["All"], value=["$__all"]))
    )


# --------------------------------------------------------------------------------------------
# dashboards

RATE_DESC = (
    "The monitor's own rolling 15-minute rate per provider (repmon_provider_rate_ratio, "
    "0..1): the numbers the detectors compare with the baseline. Several workers: each "
    "provider has one owner; max over workers. Click a series for the provider drill-down."
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


#: file name (without .json) -> dashboard
DASHBOARDS = {
    "overview": overview,
    "provider": provider,
    "ip-pool": ip_pool,
    "incidents": incidents,
    "pipeline": pipeline,
}


def render(board: Board) -> str:
    return json.dumps(board.build(), cls=JSONEncoder, indent=2, sort_keys=True) + "\n"


def generate() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {f"{name}.json": render(make()) for name, make in DASHBOARDS.items()}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if a dashboard JSON differs from what would be generated",
    )
    ap.add_argument("--out", type=Path, default=OUT_DIR, help="output directory")
    args = ap.parse_args(argv)
    out: Path = args.out
    want = generate()
    present = {p.name for p in out.glob("*.json")} if out.is_dir() else set()
    if args.check:
        stale = sorted(
            name
            for name, body in want.items()
            if not (out / name).is_file() or (out / name).read_text() != body
        )
        extra = sorted(present - set(want))
        for name in stale:
            print(f"{out / name}: out of date", file=sys.stderr)
        for name in extra:
            print(f"{out / name}: not generated by grafana/generate.py", file=sys.stderr)
        if stale or extra:
            print("run: python grafana/generate.py", file=sys.stderr)
            return 1
        print(f"{len(want)} dashboards up to date in {out}")
        return 0
    out.mkdir(parents=True, exist_ok=True)
    for name, body in want.items():
        path = out / name
        if not path.is_file() or path.read_text() != body:
            path.write_text(body)
            print(f"wrote {path}")
    for name in sorted(present - set(want)):
        (out / name).unlink()
        print(f"removed {out / name}")
    return 0


if __name__ == "__main__":
    # `python grafana/generate.py` from anywhere: models/ (the incident vocabulary) is in the repo
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
