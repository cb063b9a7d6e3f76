"""The building blocks of repmon's Grafana dashboards (grafana/generate.py): constants, panel and
query helpers, Board and the template variables several dashboards share.
"""

from __future__ import annotations

import typing
from collections.abc import Iterable, Sequence

from grafana_foundation_sdk.builders import bargauge, stat, statetimeline, table, text, timeseries
from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus as prom
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import prometheus as pm
from grafana_foundation_sdk.models.text import TextMode

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


#: the rolling-rate panels' description (overview and incidents)
RATE_DESC = (
    "The monitor's own rolling 15-minute rate per provider (repmon_provider_rate_ratio, "
    "0..1): the numbers the detectors compare with the baseline. Several workers: each "
    "provider has one owner; max over workers. Click a series for the provider drill-down."
)
