"""Drawing of the replay report (``repmon replay --report``; the page is
:mod:`streams.cli.report`): its palettes and chart thresholds, the formatting of values, the time
axis and SVG wrapper shared by every plot, the y-axis scale of the rate charts, the rate charts
themselves (:class:`_Chart`, :data:`_CHARTS`) and the page's stylesheet.

Pure: strings in, strings out; nothing here knows the Timeline or the incidents.
:mod:`streams.cli.report` imports from this module (never the reverse) and re-exports the public
names, so ``from streams.cli.report import TYPE_COLOURS`` keeps working.
"""

from __future__ import annotations

import html
import math
import time
from dataclasses import dataclass
from typing import Final, NamedTuple

#: Incident type -> colour of its lanes, its throttle areas, its shading and its swatches.
#: Fixed (a type has the same colour in every report) and disjoint from the provider colours.
TYPE_COLOURS: Final[dict[str, str]] = {
    "provider_outage": "#e66100",  # orange
    "rate_limited": "#d4a20b",  # mustard
    "block": "#b2182b",  # crimson
    "false_hard_bounces": "#7b3294",  # purple
    "hard_bounce_spike": "#8c510a",  # brown
    "complaint_spike": "#e7298a",  # magenta
    "auth_failure": "#525252",  # dark grey
}
#: a type this module does not know yet (a newer detector)
UNKNOWN_TYPE_COLOUR: Final[str] = "#a6a6a6"

#: Provider line colours, in order of the providers' attempts; the last four are dashed.
PROVIDER_COLOURS: Final[tuple[str, ...]] = (
    "#1f77b4",  # blue
    "#2ca02c",  # green
    "#17becf",  # cyan
    "#3b3b98",  # indigo
    "#1f77b4",  # blue, dashed
    "#2ca02c",  # green, dashed
    "#17becf",  # cyan, dashed
    "#3b3b98",  # indigo, dashed
)
#: the ``other`` provider (domains outside the provider table)
OTHER_PROVIDER_COLOUR: Final[str] = "#8f8f8f"

MAX_PROVIDERS: Final[int] = len(PROVIDER_COLOURS)
#: at most this many points per line: long replays merge buckets
MAX_POINTS: Final[int] = 720
#: a rate per attempt is drawn for a bucket with at least this many attempts
MIN_ATTEMPTS: Final[int] = 20
#: the trailing complaint rate is drawn with at least this many deliveries in the window
MIN_DELIVERED: Final[int] = 200
#: window of the complaint rate
COMPLAINT_WINDOW_S: Final[int] = 3600
#: reference lines of the complaint chart: Gmail's 0.1 % and the 0.3 % enforcement level
COMPLAINT_LIMITS: Final[tuple[float, ...]] = (0.001, 0.003)


# --- formatting -----------------------------------------------------------------------------


def _esc(s: object) -> str:
    return html.escape(str(s), quote=True)


def _scope_html(scope: str) -> str:
    """A scope, escaped, with a break opportunity after ``|`` (copying keeps it whole); a part
    too long for the label column breaks anywhere (CSS)."""
    return _esc(scope).replace("|", "|<wbr>")


def _pct(v: float | None) -> str:
    """A rate as a percentage with two significant digits (at most three decimals)."""
    if v is None or not math.isfinite(v):
        return "n/a"
    p = v * 100
    if p <= 0:
        return "0\u00a0%"
    digits = min(3, max(0, 1 - math.floor(math.log10(p))))
    return f"{p:.{digits}f}\u00a0%"


def _factor(f: float) -> str:
    return f"{f:.2g}"


def _ratio(r: float) -> str:
    """A ratio to the baseline: ``3.1x``, ``45x``, ``3,370x``."""
    return f"{r:,.0f}\u00d7" if r >= 10 else f"{r:.1f}\u00d7"


def _hhmm(t: float) -> str:
    return time.strftime("%H:%M", time.gmtime(t))


def _when(t: float) -> str:
    return time.strftime("%d %b %H:%M", time.gmtime(t))


def _duration(s: float) -> str:
    m = max(0, round(s / 60))
    if m < 60:
        return f"{m} min"
    h, m = divmod(m, 60)
    if h < 48:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def _type_colour(type_: str) -> str:
    return TYPE_COLOURS.get(type_, UNKNOWN_TYPE_COLOUR)


def _provider_style(name: str, i: int) -> tuple[str, str]:
    """(colour, stroke-dasharray) of the i-th provider."""
    if name == "other":
        return OTHER_PROVIDER_COLOUR, "2 3"
    return PROVIDER_COLOURS[i % len(PROVIDER_COLOURS)], ("" if i < 4 else "7 4")


def _swatch(colour: str, dash: str = "") -> str:
    if dash:
        return (
            f'<svg class="sw line" viewBox="0 0 20 4" aria-hidden="true"><line x1="0" y1="2" '
            f'x2="20" y2="2" stroke="{colour}" stroke-width="2.5" stroke-dasharray="{dash}"/></svg>'
        )
    return f'<span class="sw" style="background:{colour}"></span>'


# --- geometry --------------------------------------------------------------------------------

#: plot coordinates: x in [0, W], y in [0, H] (the SVG is stretched to its box)
W: Final[int] = 1000
H: Final[int] = 100


@dataclass
class _Axis:
    t0: float
    t1: float

    def x(self, t: float) -> float:
        return min(W, max(0.0, (t - self.t0) / max(self.t1 - self.t0, 1e-9) * W))

    def ticks(self) -> list[float]:
        span = max(self.t1 - self.t0, 1)
        steps = (300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800)
        step = next((s for s in steps if span / s <= 8), 2_419_200)
        t = math.ceil(self.t0 / step) * step
        out = []
        while t <= self.t1:
            out.append(float(t))
            t += step
        return out

    def grid_lines(self) -> str:
        return "".join(
            f'<line class="vg" x1="{self.x(t):.2f}" x2="{self.x(t):.2f}" y1="0" y2="{H}"/>'
            for t in self.ticks()
        )

    def labels(self) -> str:
        out = []
        last_day = None
        for t in self.ticks():
            day = time.gmtime(t)[:3]
            txt = _hhmm(t)
            if day != last_day:
                txt += "<br>" + time.strftime("%d %b", time.gmtime(t))
                last_day = day
            pos = self.x(t) / W * 100
            # the last label ends at the plot's edge instead of running over the page's
            right = ";transform:translateX(-100%);text-align:right" if pos > 97 else ""
            out.append(f'<span style="left:{pos:.3f}%{right}">{txt}</span>')
        return "".join(out)


def _svg(body: str, label: str) -> str:
    return (
        f'<svg viewBox="0 0 {W} {H}" preserveAspectRatio="none" role="img" '
        f'aria-label="{_esc(label)}">{body}</svg>'
    )


def _nice_ceiling(v: float) -> tuple[float, float]:
    """(ymax, step): a round step (1, 2, 2.5, 5 x 10^k) with ymax = 4 or 5 steps >= v."""
    v = max(v, 1e-9)
    raw = v / 4
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    return step * math.ceil(v / step - 1e-9), step


def _tick_pct(v: float, step: float) -> str:
    """A tick label with as many decimals as the step needs (0.25 % steps: two)."""
    s = step * 100
    digits = next((d for d in range(4) if abs(round(s, d) - s) < 1e-9), 3)
    return f"{v * 100:.{digits}f}%"


# --- the page --------------------------------------------------------------------------------


class _Series(NamedTuple):
    name: str
    colour: str
    dash: str
    points: list[tuple[float, float] | None]  # (t, rate) or None for a gap


@dataclass
class _Chart:
    key: str
    title: str
    sub: str
    num: str
    den: str
    min_den: int
    band_types: tuple[str, ...]
    trailing_s: int = 0
    fixed_max: float | None = None
    floor_max: float = 0.01
    limits: tuple[float, ...] = ()


_CHARTS: Final[tuple[_Chart, ...]] = (
    _Chart(
        "delivery",
        "Delivery rate",
        "delivered per attempt",
        "delivered",
        "attempts",
        MIN_ATTEMPTS,
        ("provider_outage",),
        fixed_max=1.0,
    ),
    _Chart(
        "deferral",
        "Deferral rate",
        "deferred per attempt",
        "deferred",
        "attempts",
        MIN_ATTEMPTS,
        ("provider_outage", "rate_limited"),
    ),
    _Chart(
        "bounce",
        "Bounce rate",
        "bounced or rejected per attempt",
        "failed",
        "attempts",
        MIN_ATTEMPTS,
        ("false_hard_bounces", "hard_bounce_spike", "auth_failure"),
    ),
    _Chart(
        "block",
        "Block rate",
        "replies classified block per attempt",
        "block",
        "attempts",
        MIN_ATTEMPTS,
        ("block",),
    ),
    _Chart(
        "complaint",
        "Complaint rate",
        f"complaints per delivered over the trailing hour (a gap: under {MIN_DELIVERED} "
        "delivered); dashed: 0.1\u00a0% and 0.3\u00a0%",
        "complained",
        "delivered",
        MIN_DELIVERED,
        ("complaint_spike",),
        trailing_s=COMPLAINT_WINDOW_S,
        floor_max=0.004,
        limits=COMPLAINT_LIMITS,
    ),
)


_CSS = """
*{box-sizing:border-box}
body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d1d1d;
 background:#fff;margin:0 auto;padding:16px 24px 40px;max-width:2000px}
h1{font-size:1.35rem;margin:0 0 .2rem;overflow-wrap:anywhere}
h2{font-size:1.1rem;margin:1.4rem 0 .2rem}
p{margin:.2rem 0 .4rem}
.meta{color:#444}
.mono,.scope{font-family:ui-monospace,"DejaVu Sans Mono","Liberation Mono",Menlo,monospace;font-size:12px}
.grid{display:grid;grid-template-columns:max-content 3.4em minmax(0,1fr);column-gap:0;
 align-items:stretch}
.grid>.head{grid-column:1/-1}
.grid>.head h2{margin-top:1.2rem}
.grid>.head p{color:#444;font-size:13px;max-width:60rem}
.lbl{max-width:min(24rem,34vw);font-size:12.5px;padding:3px 12px 3px 0;overflow-wrap:anywhere}
.lbl.chart{max-width:13.5rem;padding-top:0}
.lbl.chart b{font-size:13.5px}
.lbl .sub{display:block;color:#555;font-size:11.5px;margin-bottom:3px}
.legend{list-style:none;margin:0;padding:0;font-size:12px;line-height:1.35}
.legend li{white-space:nowrap}
.sw{display:inline-block;width:11px;height:11px;border-radius:2px;margin-right:5px;vertical-align:-1px}
.sw.line{width:20px;height:4px;border-radius:0;vertical-align:middle}
.yax{position:relative;font-size:11px;color:#555;margin-right:6px}
.yax span{position:absolute;right:0;transform:translateY(-50%);white-space:nowrap}
.plot{position:relative;border-left:1px solid #999;border-bottom:1px solid #999}
.plot svg{position:absolute;left:0;top:0;width:100%;height:100%;overflow:visible;display:block}
.plot.chart,.yax.chart{height:170px;margin-top:6px;align-self:start}
.plot.lane{min-height:30px;border-bottom-color:#e4e4e4}
.plot.thr,.yax.thr{min-height:50px;margin-top:10px}
.plot.thr{border-bottom-color:#ccc}
.alt{background:#f5f6f8}
.xax{position:relative;height:2.9em;font-size:11px;color:#555}
.xax span{position:absolute;top:3px;transform:translateX(-50%);white-space:nowrap;text-align:center;
 line-height:1.2}
.vg{stroke:#e3e3e3;stroke-width:1;vector-effect:non-scaling-stroke}
.hg{stroke:#e3e3e3;stroke-width:1;vector-effect:non-scaling-stroke}
.ref{stroke:#555;stroke-width:1;stroke-dasharray:5 4;vector-effect:non-scaling-stroke}
.series{fill:none;stroke-width:1.6;stroke-linejoin:round;stroke-linecap:round;
 vector-effect:non-scaling-stroke}
.band{opacity:.13}
.bar{stroke:none}
.bar.open{stroke:#000;stroke-width:1;stroke-dasharray:3 2;vector-effect:non-scaling-stroke}
a:hover .bar{opacity:.75}
.step{fill:none;stroke:#222;stroke-width:1.4;vector-effect:non-scaling-stroke}
.one{stroke:#999;stroke-width:1;stroke-dasharray:3 3;vector-effect:non-scaling-stroke}
.hit{fill:transparent}
.hit:hover{fill:rgba(0,0,0,.06)}
.type{font-weight:600;white-space:nowrap}
.nw{white-space:nowrap}
.sev{display:inline-block;font-size:10.5px;padding:0 5px;border-radius:8px;margin-left:4px;
 border:1px solid #999;color:#333;vertical-align:1px}
.sev.critical{background:#b2182b;border-color:#b2182b;color:#fff}
.sev.warning{background:#fff3c4;border-color:#c9a227;color:#5a4500}
.small{font-size:11.5px;color:#555}
.types{list-style:none;padding:0;margin:.3rem 0;display:flex;flex-wrap:wrap;gap:4px 16px;font-size:12.5px}
.tablewrap{overflow-x:auto}
table.ev{border-collapse:collapse;width:100%;font-size:12.5px;min-width:720px}
.ev th,.ev td{border-top:1px solid #ddd;padding:6px 8px;vertical-align:top;text-align:left}
.ev th{background:#f1f2f4;font-weight:600;border-top:none}
.ev td{overflow-wrap:anywhere}
.ev tr:target td{background:#fff4cc}
.ev ol{margin:0;padding-left:1.4em}
.ev li{margin-bottom:2px}
.ev .n{width:2.2em;color:#555}
.ev .cnt{color:#555;white-space:nowrap}
.empty{color:#555;font-style:italic}
@media (max-width:640px){
 body{padding:10px}
 .grid{grid-template-columns:3em minmax(0,1fr)}
 .lbl{grid-column:1/-1;max-width:none}
 .lbl.chart{max-width:none}
 .legend li{display:inline-block;margin-right:10px}
 .nolbl{display:none}
}
"""
