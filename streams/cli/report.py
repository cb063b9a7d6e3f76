"""The ``repmon replay --report FILE.html`` page: what a replay saw, for a person to read.

One self-contained HTML file (inline CSS and SVG; no JavaScript, no fonts, images or scripts
fetched from anywhere). From top to bottom:

* **Rates per provider** (the top :data:`MAX_PROVIDERS` by attempts, one colour per provider,
  the same in every chart): delivery, deferral, bounce (bounced + rejected) and block (replies
  classified ``block``) per attempt, and complaints per delivered message over a trailing hour
  (complaints are few: a 5 minute rate is noise) with Gmail's 0.1 % and the 0.3 % enforcement
  level drawn as dashed lines. Buckets are the replay's 5 minutes, merged for long replays so
  that a chart has at most :data:`MAX_POINTS` points; a rate needs :data:`MIN_ATTEMPTS` attempts
  (:data:`MIN_DELIVERED` deliveries for complaints) in its bucket, otherwise the line has a gap.
  Incidents of the types a chart shows are shaded behind its lines.
* **Incidents**: one lane per (type, scope), lanes in the order their first incident opened, the
  bar coloured by the incident type (:data:`TYPE_COLOURS`); hovering a bar shows its evidence,
  clicking it jumps to its row in the table.
* **Throttle**: per throttled scope, the rate factor over time as a step chart (1 = the scope's
  normal rate, 0 = nothing sent), from the throttle records the replay produced; the area is
  coloured by the type of the incident that drove the decision.
* **Evidence**: a table, one row per incident: type, severity, scope and related scopes, opened
  and closed, the rate that opened it against the scope's baseline, the top replies, and what
  the throttle did.

Palettes. Incident types have fixed colours (:data:`TYPE_COLOURS`: warm hues, a purple and a
grey); providers take :data:`PROVIDER_COLOURS` in order of volume (cool hues; the last four
dashed), so a lane never looks like a provider's line. ``other`` (domains outside the provider
table) is always grey and dotted.

Layout. Every row of the page is one CSS grid: a label column as wide as the longest label
(capped, longer labels wrap after ``|``, never cut), a y-axis column and the plot
column, so all charts share one time axis. Plots are SVGs with a ``viewBox`` stretched to the
column (``width: 100 %``; strokes do not scale), text is HTML, so it keeps its size at any
window width; below 640 px the labels go above their plots. All text from the data (scopes,
replies, file names) is HTML-escaped.

:class:`Timeline` collects what the page needs while the replay runs: counts per provider and
5 minute bucket, and per throttled scope the change points of its decision (a handful per
incident, not every refresh).

The drawing lives in :mod:`streams.cli.report_charts`: the palettes and chart thresholds named
above, the formatting of values, the time axis and SVG wrapper, the rate charts' specs and
y-axis scale, and the stylesheet. This module collects the data and lays out the page; it
re-exports the public constants, so they are still importable from here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

import numpy as np

from models.act.throttle_record import ThrottleRecord
from models.schema import COL, N_COLUMNS
from streams.cli.report_charts import (
    _CHARTS,
    _CSS,
    COMPLAINT_LIMITS,
    COMPLAINT_WINDOW_S,
    MAX_POINTS,
    MAX_PROVIDERS,
    MIN_ATTEMPTS,
    MIN_DELIVERED,
    OTHER_PROVIDER_COLOUR,
    PROVIDER_COLOURS,
    TYPE_COLOURS,
    UNKNOWN_TYPE_COLOUR,
    H,
    W,
    _Axis,
    _Chart,
    _duration,
    _esc,
    _factor,
    _hhmm,
    _nice_ceiling,
    _pct,
    _provider_style,
    _ratio,
    _scope_html,
    _Series,
    _svg,
    _swatch,
    _tick_pct,
    _type_colour,
    _when,
)

__all__ = [
    "COMPLAINT_LIMITS",
    "COMPLAINT_WINDOW_S",
    "MAX_POINTS",
    "MAX_PROVIDERS",
    "MIN_ATTEMPTS",
    "MIN_DELIVERED",
    "OTHER_PROVIDER_COLOUR",
    "PROVIDER_COLOURS",
    "TYPE_COLOURS",
    "UNKNOWN_TYPE_COLOUR",
    "ThrottlePoint",
    "Timeline",
    "render_report",
]

#: Timeline columns (sums of models.schema columns)
_COLUMNS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("attempts", ("delivered", "deferred", "bounced", "rejected")),
    ("delivered", ("delivered",)),
    ("deferred", ("deferred",)),
    ("failed", ("bounced", "rejected")),
    ("complained", ("complained",)),
    ("block", ("class_block",)),
)
_C: Final[dict[str, int]] = {name: j for j, (name, _) in enumerate(_COLUMNS)}


def _pick() -> np.ndarray:
    """[N_COLUMNS, len(_COLUMNS)] 0/1: Deltas counts @ this = the Timeline columns."""
    m = np.zeros((N_COLUMNS, len(_COLUMNS)), dtype=np.int64)
    for j, (_, cols) in enumerate(_COLUMNS):
        for c in cols:
            m[COL[c], j] = 1
    return m


_PICK: Final[np.ndarray] = _pick()


class ThrottlePoint(NamedTuple):
    """One change of a scope's throttle decision."""

    at: float
    rate_factor: float
    state: str
    reason: str
    incident: str | None


@dataclass
class Timeline:
    """What the report needs, collected during a replay: per provider and ``bucket_s`` bucket of
    event time the counts of :data:`_COLUMNS`; per throttled scope the change points of its
    decision (a refresh, the same decision with a later expiry, is not a change)."""

    bucket_s: int = 300
    counts: dict[str, dict[int, list[int]]] = field(default_factory=dict)  # provider -> b -> cnt
    throttle: dict[str, list[ThrottlePoint]] = field(default_factory=dict)
    #: per throttled scope, the expiry of its latest record (refreshes move it)
    throttle_expires: dict[str, float] = field(default_factory=dict)

    def add(self, d: Any) -> None:
        """Count one tick's Deltas (their ``provider:`` rows)."""
        prov = [i for i, s in enumerate(d.scopes) if s.startswith("provider:")]
        if not prov or not len(d):
            return
        rows = np.flatnonzero(np.isin(d.scope_idx, np.asarray(prov)))
        if not rows.size:
            return
        vals = (np.asarray(d.counts)[rows] @ _PICK).tolist()
        sidx = d.scope_idx[rows].tolist()
        starts = d.bucket_start[rows].tolist()
        for si, start, v in zip(sidx, starts, vals, strict=True):
            name = d.scopes[si].partition(":")[2]
            slot = self.counts.setdefault(name, {}).setdefault(
                int(start) // self.bucket_s, [0] * len(_COLUMNS)
            )
            for j, n in enumerate(v):
                slot[j] += n

    def add_throttle(self, records: Iterable[ThrottleRecord]) -> None:
        """Keep the records that change a scope's decision."""
        for rec in records:
            self.throttle_expires[rec.scope] = rec.expires_at
            pts = self.throttle.setdefault(rec.scope, [])
            last = pts[-1] if pts else None
            if last is not None and (last.state, last.rate_factor, last.reason, last.incident) == (
                rec.state,
                rec.rate_factor,
                rec.reason,
                rec.incident,
            ):
                continue
            pts.append(ThrottlePoint(rec.at, rec.rate_factor, rec.state, rec.reason, rec.incident))


# --- incidents and their throttle ------------------------------------------------------------


@dataclass
class _Inc:
    n: int  # row number in the table (1-based), in order of opening
    d: dict[str, Any]
    throttle: list[tuple[str, ThrottlePoint]] = field(default_factory=list)

    @property
    def type(self) -> str:
        return str(self.d.get("type", "?"))

    @property
    def scope(self) -> str:
        return str(self.d.get("scope", "?"))

    @property
    def opened(self) -> float:
        return float(self.d.get("opened_at") or 0.0)

    @property
    def closed(self) -> float | None:
        c = self.d.get("closed_at")
        return None if c is None else float(c)

    @property
    def ev(self) -> dict[str, Any]:
        e = self.d.get("evidence")
        return e if isinstance(e, dict) else {}

    def span_text(self, end: float) -> str:
        closed = self.closed
        if closed is None:
            return f"opened {_when(self.opened)} UTC, still open at the end ({_duration(end - self.opened)} so far)"
        same_day = time.gmtime(closed)[:3] == time.gmtime(self.opened)[:3]
        shut = _hhmm(closed) if same_day else _when(closed)
        return f"opened {_when(self.opened)} UTC, closed {shut} ({_duration(closed - self.opened)})"

    def rate_text(self) -> str:
        ev = self.ev
        rate, base = ev.get("rate"), ev.get("baseline")
        if not isinstance(rate, int | float):
            return "no rate in the evidence"
        out = f"{ev.get('signal', 'rate')} {_pct(float(rate))}"
        if isinstance(base, int | float):
            out += f" vs baseline {_pct(float(base))}"
            if base > 0:
                out += f" ({_ratio(float(rate) / float(base))} the baseline)"
        return out

    def rate_html(self) -> str:
        """The table's rate cell: the rate, the baseline, the ratio, then the counts."""
        ev = self.ev
        rate, base = ev.get("rate"), ev.get("baseline")
        if not isinstance(rate, int | float):
            return '<span class="empty">no rate in the evidence</span>'
        out = f"<b>{_pct(float(rate))}</b>"
        if isinstance(base, int | float):
            out += f" vs baseline {_pct(float(base))}"
            if base > 0:
                out += (
                    f'<br><span class="nw">{_ratio(float(rate) / float(base))} the baseline</span>'
                )
        signal = _esc(ev.get("signal", "rate")).replace("_", "_<wbr>")
        vol = self.volume_text()
        return (
            out + f'<br><span class="small"><span class="mono">{signal}</span>: {_esc(vol)}</span>'
        )

    def volume_text(self) -> str:
        ev = self.ev
        parts = []
        if "count" in ev and "volume" in ev:
            win = ev.get("window_s")
            within = f" in {_duration(float(win))}" if isinstance(win, int | float) else ""
            parts.append(f"{ev['count']:,} of {ev['volume']:,} {ev.get('denominator', '')}{within}")
        if isinstance(ev.get("peak_rate"), int | float):
            parts.append(f"peak {_pct(float(ev['peak_rate']))}")
        if isinstance(ev.get("z"), int | float):
            parts.append(f"z {float(ev['z']):.3g}")
        return ", ".join(parts)

    def replies(self) -> list[tuple[str, int | None]]:
        out: list[tuple[str, int | None]] = []
        for r in self.ev.get("top_replies") or []:
            if isinstance(r, list | tuple) and r:
                cnt = r[1] if len(r) > 1 and isinstance(r[1], int) else None
                out.append((str(r[0]), cnt))
            else:
                out.append((str(r), None))
        return out

    def related(self) -> list[str]:
        rel = self.ev.get("related_scopes") or []
        return [str(s) for s in rel] if isinstance(rel, list) else []

    def throttle_text(self, ran: bool, sep: str = " \u00b7 ") -> str:
        """What the throttle did for this incident: its decisions, consecutive ones of one state
        merged (``08:37 throttled x0.25->0.1 · 08:46 paused x0.05 · 09:18 normal``), joined
        by ``sep``."""
        return sep.join(self.throttle_lines(ran))

    def throttle_lines(self, ran: bool) -> list[str]:
        if not self.throttle:
            return ["none" if ran else "throttle not run (--no-throttle)"]
        by_scope: dict[str, list[ThrottlePoint]] = {}
        for scope, p in self.throttle:
            by_scope.setdefault(scope, []).append(p)
        texts: list[str] = []
        for scope, pts in by_scope.items():
            segs: list[list[Any]] = []  # state, first factor, last factor, at
            for p in pts:
                if segs and segs[-1][0] == p.state:
                    segs[-1][2] = p.rate_factor
                else:
                    segs.append([p.state, p.rate_factor, p.rate_factor, p.at])
            words = []
            for state, f0, f1, at in segs:
                if state == "normal":
                    words.append(f"{_hhmm(at)} normal")
                    continue
                f = f"\u00d7{_factor(f0)}" + (f"\u2192{_factor(f1)}" if f1 != f0 else "")
                words.append(f"{_hhmm(at)} {state} {f}")
            low = min(p.rate_factor for p in pts)
            words.append(f"lowest \u00d7{_factor(low)}")
            if scope != self.scope:
                words[0] = f"{scope}: {words[0]}"
            texts += words
        return texts

    def tooltip(self, end: float, ran: bool) -> str:
        lines = [
            f"{self.type} \u00b7 {self.scope} \u00b7 {self.d.get('severity', '?')}",
            self.span_text(end),
            self.rate_text(),
        ]
        if vol := self.volume_text():
            lines.append(vol)
        if rel := self.related():
            lines.append("related: " + ", ".join(rel))
        reps = self.replies()
        if reps:
            lines.append("top replies:")
            lines += [f"  {c:,}\u00d7 {t}" if c is not None else f"  {t}" for t, c in reps[:5]]
        lines.append("throttle: " + self.throttle_text(ran))
        return "\n".join(lines)


def _attach_throttle(incs: list[_Inc], throttle: dict[str, list[ThrottlePoint]]) -> None:
    """Give each incident the throttle points its id drove; a point without an id belongs to the
    scope's previous incident."""
    by_id = {str(i.d.get("id")): i for i in incs}
    for scope, pts in throttle.items():
        cur: _Inc | None = None
        for p in pts:
            if p.incident is not None:
                cur = by_id.get(p.incident)
            if cur is not None:
                cur.throttle.append((scope, p))


def render_report(
    timeline: Timeline,
    incidents: Sequence[dict[str, Any]],
    title: str,
    *,
    throttle_ran: bool = True,
) -> str:
    """The self-contained HTML page of a replay: ``timeline`` as collected, ``incidents`` the
    last JSON record of each incident (``IncidentChange.to_json()``), ``throttle_ran`` whether
    the throttle policy ran (no throttle chart, and the table says so, when not)."""
    page = _Page(timeline, list(incidents), title, throttle_ran)
    return page.render()


class _Page:
    def __init__(
        self, tl: Timeline, incidents: list[dict[str, Any]], title: str, throttle_ran: bool
    ) -> None:
        self.tl = tl
        self.title = title
        self.ran = throttle_ran
        ordered = sorted(
            incidents,
            key=lambda d: (
                float(d.get("opened_at") or 0.0),
                str(d.get("type")),
                str(d.get("scope")),
            ),
        )
        self.incs = [_Inc(n, d) for n, d in enumerate(ordered, 1)]
        _attach_throttle(self.incs, tl.throttle)
        buckets = [b for p in tl.counts.values() for b in p]
        times = [i.opened for i in self.incs] + [c for i in self.incs if (c := i.closed)]
        times += [p.at for pts in tl.throttle.values() for p in pts]
        if buckets:
            t0, t1 = min(buckets) * tl.bucket_s, (max(buckets) + 1) * tl.bucket_s
        elif times:
            t0, t1 = min(times), max(times)
        else:
            t0 = t1 = 0.0
        if times:
            t0, t1 = min(t0, min(times)), max(t1, max(times))
        if t1 <= t0:
            t1 = t0 + tl.bucket_s
        self.axis = _Axis(t0, t1)
        self.empty = not buckets and not self.incs

    # -- rows of the grid --

    def _axis_row(self) -> str:
        return (
            '<div class="lbl nolbl"></div><div></div>'
            f'<div class="xax" aria-hidden="true">{self.axis.labels()}</div>'
        )

    def _providers(self) -> list[tuple[str, int]]:
        vols = [
            (p, sum(v[_C["attempts"]] for v in bs.values())) for p, bs in self.tl.counts.items()
        ]
        vols.sort(key=lambda pv: (-pv[1], pv[0]))
        return vols[:MAX_PROVIDERS]

    def _dense(self, provs: list[tuple[str, int]]) -> tuple[dict[str, np.ndarray], int, int]:
        """Per provider an array [plot bucket, column] of counts; (arrays, merge factor, b0)."""
        tl = self.tl
        b0 = math.floor(self.axis.t0 / tl.bucket_s)
        b1 = math.ceil(self.axis.t1 / tl.bucket_s)
        nb = max(1, b1 - b0)
        k = max(1, math.ceil(nb / MAX_POINTS))
        out = {}
        for p, _ in provs:
            arr = np.zeros((math.ceil(nb / k), len(_COLUMNS)), dtype=np.int64)
            for b, v in tl.counts[p].items():
                i = (b - b0) // k
                if 0 <= i < arr.shape[0]:
                    arr[i] += v
            out[p] = arr
        return out, k, b0

    def _chart_rows(self) -> str:
        provs = self._providers()
        if not provs:
            return '<div class="head"><p class="empty">No events with a known provider.</p></div>'
        dense, k, b0 = self._dense(provs)
        width = self.tl.bucket_s * k
        styles = {p: _provider_style(p, i) for i, (p, _) in enumerate(provs)}
        rows = [
            '<div class="head"><h2 id="rates">Rates per provider</h2><p>'
            f"{len(provs)} provider(s) with the most attempts, {_duration(width)} buckets "
            f"(a gap: fewer than {MIN_ATTEMPTS} attempts in the bucket). Shaded: incidents of "
            "the types the chart shows (colours as in the incident lanes).</p></div>"
        ]
        for ch in _CHARTS:
            win = max(1, round(ch.trailing_s / width)) if ch.trailing_s else 1
            series = []
            ymax_data = 0.0
            for p, _ in provs:
                arr = dense[p]
                num, den = arr[:, _C[ch.num]], arr[:, _C[ch.den]]
                if win > 1:
                    num = np.convolve(num, np.ones(win, dtype=np.int64))[: len(num)]
                    den = np.convolve(den, np.ones(win, dtype=np.int64))[: len(den)]
                pts: list[tuple[float, float] | None] = []
                for i, (a, b) in enumerate(zip(num.tolist(), den.tolist(), strict=True)):
                    if b >= ch.min_den:
                        r = a / b
                        ymax_data = max(ymax_data, r)
                        pts.append(((b0 + i * k) * self.tl.bucket_s + width / 2, r))
                    else:
                        pts.append(None)
                col, dash = styles[p]
                series.append(_Series(p, col, dash, pts))
            rows.append(self._line_chart(ch, series, ymax_data))
            rows.append(self._axis_row())
        return "".join(rows)

    def _line_chart(self, ch: _Chart, series: list[_Series], ymax_data: float) -> str:
        if ch.fixed_max is not None:
            ymax, step = ch.fixed_max, ch.fixed_max / 4
        else:
            ymax, step = _nice_ceiling(max(ymax_data * 1.08, ch.floor_max))
        ax = self.axis

        def y(r: float) -> float:
            return H - min(r, ymax) / ymax * H

        body = [ax.grid_lines()]
        ticks = []
        v = 0.0
        while v <= ymax + 1e-12:
            body.append(f'<line class="hg" x1="0" x2="{W}" y1="{y(v):.2f}" y2="{y(v):.2f}"/>')
            ticks.append(
                f'<span style="top:{(1 - v / ymax) * 100:.2f}%">{_tick_pct(v, step)}</span>'
            )
            v += step
        for lim in ch.limits:
            if lim <= ymax:
                body.append(
                    f'<line class="ref" x1="0" x2="{W}" y1="{y(lim):.2f}" y2="{y(lim):.2f}">'
                    f"<title>{_pct(lim)}</title></line>"
                )
        for inc in self.incs:
            if inc.type in ch.band_types:
                a = ax.x(inc.opened)
                b = ax.x(inc.closed if inc.closed is not None else ax.t1)
                body.append(
                    f'<rect class="band" x="{a:.2f}" y="0" width="{max(b - a, 1.5):.2f}" '
                    f'height="{H}" fill="{_type_colour(inc.type)}"><title>'
                    f"{_esc(inc.type)} {_esc(inc.scope)} ({_esc(inc.span_text(ax.t1))})"
                    "</title></rect>"
                )
        legend = []
        for s in series:
            segs: list[list[str]] = [[]]  # runs of points between gaps
            for pt in s.points:
                if pt is None:
                    if segs[-1]:
                        segs.append([])
                    continue
                segs[-1].append(f"{ax.x(pt[0]):.2f} {y(pt[1]):.2f}")
            # a lone point between two gaps is drawn as a dot (round cap of a tiny stroke)
            path = " ".join(
                "M" + " L".join(g) + (" h0.01" if len(g) == 1 else "") for g in segs if g
            )
            dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
            if path:
                body.append(
                    f'<path class="series" d="{path}" stroke="{s.colour}"{dash}>'
                    f"<title>{_esc(s.name)}: {_esc(ch.title.lower())}</title></path>"
                )
            peak = max((pt[1] for pt in s.points if pt is not None), default=None)
            legend.append(
                f"<li>{_swatch(s.colour, s.dash)}{_esc(s.name)}"
                f' <span class="small">max {_pct(peak)}</span></li>'
            )
        return (
            f'<div class="lbl chart" id="chart-{ch.key}"><b>{_esc(ch.title)}</b>'
            f'<span class="sub">{_esc(ch.sub)}</span><ul class="legend">{"".join(legend)}</ul></div>'
            f'<div class="yax chart" aria-hidden="true">{"".join(ticks)}</div>'
            f'<div class="plot chart">{_svg("".join(body), ch.title)}</div>'
        )

    def _lanes(self) -> list[tuple[str, str, list[_Inc]]]:
        lanes: dict[tuple[str, str], list[_Inc]] = {}
        for inc in self.incs:  # already in order of opening
            lanes.setdefault((inc.type, inc.scope), []).append(inc)
        return [(t, s, incs) for (t, s), incs in lanes.items()]

    def _type_legend(self) -> str:
        known = list(TYPE_COLOURS)
        present = sorted(
            {i.type for i in self.incs},
            key=lambda t: (known.index(t) if t in known else len(known), t),
        )
        counts = {t: sum(1 for i in self.incs if i.type == t) for t in present}
        items = "".join(
            f"<li>{_swatch(_type_colour(t))}<span class='type'>{_esc(t)}</span> {counts[t]}</li>"
            for t in present
        )
        return f'<ul class="types">{items}</ul>'

    def _lane_rows(self) -> str:
        ax = self.axis
        rows = [
            '<div class="head"><h2 id="incidents">Incidents</h2>'
            "<p>One lane per type and scope, in the order they opened. Hover a bar for its "
            "evidence, click it for its row in the table. A dashed outline: still open at the end "
            "of the input.</p>"
            f"{self._type_legend() if self.incs else ''}</div>"
        ]
        if not self.incs:
            rows.append('<div class="head"><p class="empty">No incident opened.</p></div>')
            return "".join(rows)
        for n, (type_, scope, incs) in enumerate(self._lanes()):
            alt = " alt" if n % 2 else ""
            col = _type_colour(type_)
            sev = {str(i.d.get("severity")) for i in incs}
            sev_html = "".join(f'<span class="sev {_esc(s)}">{_esc(s)}</span>' for s in sorted(sev))
            still = ' <span class="small">still open</span>' if incs[-1].closed is None else ""
            rows.append(
                f'<div class="lbl lane{alt}" data-type="{_esc(type_)}">'
                f'<a href="#inc-{incs[0].n}">{_swatch(col)}</a><span class="type">{_esc(type_)}</span>'
                f"{sev_html}{still}<br>"
                f'<span class="scope">{_scope_html(scope)}</span></div>'
                f'<div class="mid{alt}"></div>'
            )
            body = [ax.grid_lines()]
            for inc in incs:
                a = ax.x(inc.opened)
                b = ax.x(inc.closed if inc.closed is not None else ax.t1)
                cls = "bar open" if inc.closed is None else "bar"
                body.append(
                    f'<a href="#inc-{inc.n}"><rect class="{cls}" x="{a:.2f}" y="14" '
                    f'width="{max(b - a, 2.0):.2f}" height="72" fill="{col}">'
                    f"<title>{_esc(inc.tooltip(ax.t1, self.ran))}</title></rect></a>"
                )
            rows.append(
                f'<div class="plot lane{alt}">{_svg("".join(body), f"{type_} {scope}")}</div>'
            )
        rows.append(self._axis_row())
        return "".join(rows)

    def _throttle_rows(self) -> str:
        tl, ax = self.tl, self.axis
        head = '<div class="head"><h2 id="throttle">Throttle</h2>'
        if not self.ran:
            return head + "<p>The throttle policy did not run (--no-throttle).</p></div>"
        if not tl.throttle:
            return head + "<p>No scope was throttled.</p></div>"
        rows = [
            head + "<p>Rate factor per throttled scope: the share of the scope's normal send "
            "rate the fleet may use (1 = unrestricted, 0 = nothing sent), as the throttle records "
            "set it; coloured by the type of the incident behind the decision. Hover a step for "
            "its state and reason.</p></div>"
        ]
        order = sorted(tl.throttle.items(), key=lambda sp: (sp[1][0].at, sp[0]))
        for scope, pts in order:  # lanes apart (a margin), no stripes
            body = [ax.grid_lines(), f'<line class="one" x1="0" x2="{W}" y1="2" y2="2"/>']
            step = []
            restricted = 0.0
            expires = tl.throttle_expires.get(scope, ax.t1)
            for i, p in enumerate(pts):
                end = pts[i + 1].at if i + 1 < len(pts) else ax.t1
                if i + 1 == len(pts) and p.state != "normal":
                    end = min(end, max(expires, p.at))
                a, b = ax.x(p.at), ax.x(end)
                yv = 2 + (1 - p.rate_factor) * (H - 4)
                if not step:  # down from the normal rate
                    step.append(f"M{a:.2f} 2 L{a:.2f} {yv:.2f}")
                step.append(f"L{a:.2f} {yv:.2f} L{b:.2f} {yv:.2f}")
                kind = p.incident.split("/", 1)[0] if p.incident else ""
                if p.state != "normal":
                    restricted += end - p.at
                    body.append(
                        f'<rect x="{a:.2f}" y="{yv:.2f}" width="{max(b - a, 0.5):.2f}" '
                        f'height="{H - yv:.2f}" fill="{_type_colour(kind)}" opacity=".45"/>'
                        # a strip at the bottom: a restriction shows even at rate factor 0
                        f'<rect x="{a:.2f}" y="{H - 8}" width="{max(b - a, 0.5):.2f}" height="8" '
                        f'fill="{_type_colour(kind)}"/>'
                    )
                tip = (
                    f"{scope}\n{_hhmm(p.at)}\u2013{_hhmm(end)} UTC: {p.state}, rate factor "
                    f"{_factor(p.rate_factor)} (reason: {p.reason})"
                    + (f"\nincident: {p.incident}" if p.incident else "")
                )
                body.append(
                    f'<rect class="hit" x="{a:.2f}" y="0" width="{max(b - a, 0.5):.2f}" '
                    f'height="{H}"><title>{_esc(tip)}</title></rect>'
                )
            body.append(f'<path class="step" d="{" ".join(step)}"/>')
            low = min(pts, key=lambda p: p.rate_factor)
            last = pts[-1]
            now = (
                "normal again " + _hhmm(last.at)
                if last.state == "normal"
                else f"still {last.state} \u00d7{_factor(last.rate_factor)} at the end"
            )
            rows.append(
                f'<div class="lbl thr"><span class="scope">{_scope_html(scope)}</span><br>'
                f'<span class="small">lowest \u00d7{_factor(low.rate_factor)} ({_esc(low.state)}), '
                f"restricted {_duration(restricted)}; {_esc(now)}</span></div>"
                f'<div class="yax thr" aria-hidden="true"><span style="top:2%">1</span>'
                f'<span style="top:98%">0</span></div>'
                f'<div class="plot thr">{_svg("".join(body), f"rate factor {scope}")}</div>'
            )
        rows.append(self._axis_row())
        return "".join(rows)

    def _table(self) -> str:
        if not self.incs:
            return ""
        end = self.axis.t1
        rows = []
        for inc in self.incs:
            reps = inc.replies()
            reps_html = (
                "<ol>"
                + "".join(
                    f'<li><span class="cnt">{c:,}\u00d7</span> <span class="mono">{_esc(t)}</span></li>'
                    if c is not None
                    else f'<li><span class="mono">{_esc(t)}</span></li>'
                    for t, c in reps
                )
                + "</ol>"
                if reps
                else '<span class="empty">none in the evidence</span>'
            )
            rel = inc.related()
            rel_list = ", ".join(f'<span class="scope">{_scope_html(s)}</span>' for s in rel)
            if len(rel) > 3:  # a long list folds (no script: <details>)
                rel_html = (
                    f'<details class="small"><summary>{len(rel)} related scopes</summary>'
                    f"{rel_list}</details>"
                )
            elif rel:
                rel_html = f'<br><span class="small">related: {rel_list}</span>'
            else:
                rel_html = ""
            sev = str(inc.d.get("severity", "?"))
            closed = inc.closed
            when = f'<span class="nw">{_esc(_when(inc.opened))}</span><br>'
            if closed is None:
                when += f'<span class="small">still open ({_duration(end - inc.opened)} at the end)</span>'
            else:
                same_day = time.gmtime(closed)[:3] == time.gmtime(inc.opened)[:3]
                shut = _hhmm(closed) if same_day else _when(closed)
                when += (
                    f'<span class="nw">\u2192 {_esc(shut)}</span><br>'
                    f'<span class="small">{_duration(closed - inc.opened)}</span>'
                )
            rows.append(
                f'<tr id="inc-{inc.n}"><td class="n">{inc.n}</td>'
                f"<td><span class='type'>{_swatch(_type_colour(inc.type))}{_esc(inc.type)}</span>"
                f'<span class="sev {_esc(sev)}">{_esc(sev)}</span><br>'
                f'<span class="scope">{_scope_html(inc.scope)}</span>{rel_html}</td>'
                f"<td>{when}</td>"
                f"<td>{inc.rate_html()}</td><td>{reps_html}</td><td>{'<br>'.join(_esc(t) for t in inc.throttle_lines(self.ran))}</td></tr>"
            )
        return (
            '<h2 id="evidence">Evidence</h2><p class="meta">One row per incident, in the order '
            "they opened (times UTC, event time). Rate: the signal's rate in the window that "
            "opened the incident against the scope's own baseline.</p>"
            '<div class="tablewrap"><table class="ev"><thead><tr><th class="n">#</th>'
            '<th style="width:22%">Incident and scope</th><th style="width:9%">Opened / closed</th>'
            '<th style="width:16%">Rate vs baseline</th><th>Top replies</th>'
            '<th style="width:17%">Throttle</th></tr></thead><tbody>'
            + "".join(rows)
            + "</tbody></table></div>"
        )

    def _summary(self) -> str:
        ax = self.axis
        start = time.strftime("%d %b %Y %H:%M", time.gmtime(ax.t0))
        end = time.strftime("%d %b %Y %H:%M", time.gmtime(ax.t1))
        n_open = sum(1 for i in self.incs if i.closed is None)
        thr = (
            f"{len(self.tl.throttle)} scope(s) throttled" if self.ran else "throttle policy not run"
        )
        return (
            f'<p class="meta">Event time {start} \u2013 {end} UTC ({_duration(ax.t1 - ax.t0)}). '
            f"{len(self.incs)} incident(s), {n_open} still open at the end; {thr}.</p>"
        )

    def render(self) -> str:
        head = (
            "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width,initial-scale=1'>"
            f"<title>{_esc(self.title)}</title><style>{_CSS}</style></head><body>"
            f"<h1>{_esc(self.title)}</h1>"
        )
        if self.empty:
            return head + '<p class="empty">No data.</p></body></html>'
        grid = (
            '<div class="grid">'
            + self._chart_rows()
            + self._lane_rows()
            + self._throttle_rows()
            + "</div>"
        )
        return head + self._summary() + grid + self._table() + "</body></html>"
