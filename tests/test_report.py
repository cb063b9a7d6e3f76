"""The replay report (streams/cli/report.py): complete labels, lanes in order of opening, one colour
per incident type, escaped text, the complaint, block and throttle charts, the evidence table; and
a real replay's report rendered by headless Chromium (screenshots kept as test artifacts).

The screenshot test FAILS (never skips) without Chromium: ``apt-get install chromium``
(``./dev test`` installs it). Screenshots go to the test's tmp_path and, when
``$REPMON_TEST_ARTIFACTS`` is set, are copied to ``$REPMON_TEST_ARTIFACTS/report/``.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import struct
import subprocess
import zlib
from collections import Counter
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from typer.testing import CliRunner

from models.act.throttle_record import ThrottleRecord
from models.schema import COL, INCIDENT_TYPES, N_COLUMNS
from models.state.deltas import Deltas
from streams.cli.main import app
from streams.cli.report import (
    OTHER_PROVIDER_COLOUR,
    PROVIDER_COLOURS,
    TYPE_COLOURS,
    Timeline,
    render_report,
)

T0 = 1_795_420_800  # a whole day, UTC
HOSTILE_SCOPE = 'sender:<script>alert("x")</script>&co|provider:o\'brien"'
HOSTILE_REPLY = "550 <img src=x onerror=alert(1)> & \"quoted\" 'single' </title></svg>"
LONG_SCOPE = "campaign:umbrella-2026-11-23-flash-sale-for-returning-customers|provider:microsoft"


def _timeline(providers: tuple[str, ...] = ("google", "microsoft", "other")) -> Timeline:
    """Two hours of 5 minute buckets; google has complaints and blocks in the second hour."""
    tl = Timeline()
    for i, p in enumerate(providers):
        for b in range(24):
            att = 400 - 50 * i
            complained = 3 if (p == "google" and b >= 12) else 0
            block = 40 if (p == "google" and 12 <= b < 18) else 1
            tl.counts.setdefault(p, {})[T0 // 300 + b] = [att, att - 30, 20, 10, complained, block]
    return tl


def _incident(
    type_: str,
    scope: str,
    opened: float,
    closed: float | None,
    replies: list[list[Any]] | None = None,
    severity: str = "critical",
) -> dict[str, Any]:
    return {
        "kind": "incident",
        "action": "closed" if closed is not None else "opened",
        "id": f"{type_}/{scope}/{int(opened)}",
        "type": type_,
        "scope": scope,
        "opened_at": opened,
        "closed_at": closed,
        "severity": severity,
        "evidence": {
            "signal": "block",
            "denominator": "attempts",
            "window_s": 300,
            "count": 41,
            "volume": 130,
            "rate": 0.315,
            "baseline": 0.0021,
            "z": 40.1,
            "top_replies": replies or [],
            "peak_rate": 0.35,
        },
    }


def _rec(
    scope: str, state: str, f: float, reason: str, inc: str | None, at: float
) -> ThrottleRecord:
    return ThrottleRecord(scope, state, f, reason, inc, at, at if state == "normal" else at + 3600)


class _Tags(HTMLParser):
    """Tags, attributes and text of a page (entities decoded, as a browser shows them)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: Counter[str] = Counter()
        self.attrs: list[tuple[str, str | None]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags[tag] += 1
        self.attrs += attrs

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def _parse(page: str) -> _Tags:
    p = _Tags()
    p.feed(page)
    p.close()
    return p


def _scopes_of(page: str, cls: str) -> list[str]:
    """The scope labels (as shown: <wbr> removed, entities decoded) of the label cells ``cls``."""
    out = []
    for m in re.finditer(
        rf'<div class="lbl {cls}[^"]*"[^>]*>.*?<span class="scope">(.*?)</span>', page, re.S
    ):
        out.append(html.unescape(m.group(1).replace("<wbr>", "")))
    return out


# --- structure ---------------------------------------------------------------------------


def test_labels_are_complete_and_wrap_instead_of_being_cut() -> None:
    incs = [_incident("complaint_spike", LONG_SCOPE, T0 + 1800, None, severity="warning")]
    page = render_report(_timeline(), incs, "r")
    assert _scopes_of(page, "lane") == [LONG_SCOPE]
    # the hover text and the table carry it whole too
    assert f"complaint_spike \u00b7 {LONG_SCOPE}" in html.unescape(page)
    row = page[page.index('id="inc-1"') :]
    assert LONG_SCOPE in html.unescape(row.replace("<wbr>", ""))
    # wraps after the "|", never an ellipsis
    assert "|<wbr>provider:microsoft" in page
    assert "\u2026" not in page and "..." not in page


def test_lanes_follow_the_order_of_opening_not_the_alphabet() -> None:
    incs = [
        _incident("rate_limited", "pool:b|provider:google", T0 + 3000, T0 + 4000),
        _incident("block", "ip:192.0.2.9|provider:yahoo", T0 + 600, T0 + 1800),
        _incident("auth_failure", "sender:z.example", T0 + 1200, None),
        # a second incident on the first lane's (type, scope): same lane
        _incident("block", "ip:192.0.2.9|provider:yahoo", T0 + 5000, None),
    ]
    page = render_report(_timeline(), incs, "r")
    assert _scopes_of(page, "lane") == [
        "ip:192.0.2.9|provider:yahoo",
        "sender:z.example",
        "pool:b|provider:google",
    ]
    # table rows are numbered in the same order
    rows = re.findall(r'<tr id="inc-(\d+)">.*?<span class="scope">(.*?)</span>', page, re.S)
    assert [(n, s.replace("<wbr>", "")) for n, s in rows] == [
        ("1", "ip:192.0.2.9|provider:yahoo"),
        ("2", "sender:z.example"),
        ("3", "pool:b|provider:google"),
        ("4", "ip:192.0.2.9|provider:yahoo"),
    ]


def test_each_incident_type_has_its_own_colour_never_a_provider_colour() -> None:
    assert set(TYPE_COLOURS) == set(INCIDENT_TYPES)
    assert len(set(TYPE_COLOURS.values())) == len(TYPE_COLOURS)
    provider = {c.lower() for c in PROVIDER_COLOURS} | {OTHER_PROVIDER_COLOUR.lower()}
    assert not provider & {c.lower() for c in TYPE_COLOURS.values()}

    incs = [
        _incident(t, f"ip:192.0.2.{i}", T0 + 300 * (i + 1), T0 + 300 * (i + 3))
        for i, t in enumerate(INCIDENT_TYPES)
    ]
    page = render_report(_timeline(), incs, "r")
    bars = dict(re.findall(r'<a href="#inc-(\d+)"><rect class="bar[^"]*"[^>]*fill="(#\w+)"', page))
    assert {int(n): c for n, c in bars.items()} == {
        i + 1: TYPE_COLOURS[t] for i, t in enumerate(INCIDENT_TYPES)
    }
    # the lines of the rate charts use provider colours only
    strokes = set(re.findall(r'<path class="series"[^>]*stroke="(#\w+)"', page))
    assert strokes and strokes <= provider


def test_hostile_scope_and_reply_text_is_escaped() -> None:
    incs = [_incident("block", HOSTILE_SCOPE, T0 + 900, None, [[HOSTILE_REPLY, 7]])]
    tl = _timeline(("google", "<blink>evil&co</blink>"))
    tl.add_throttle([_rec(HOSTILE_SCOPE, "paused", 0.02, "opened", incs[0]["id"], T0 + 900)])
    page = render_report(tl, incs, 'replay: a<b>"&.jsonl')
    parsed = _parse(page)
    assert not {"script", "img", "blink", "iframe", "object"} & set(parsed.tags)
    assert not [k for k, _ in parsed.attrs if k.startswith("on")]
    text = "".join(parsed.text)
    # shown as text, exactly (the parser decodes the entities as a browser does)
    assert HOSTILE_REPLY in text
    assert "<blink>evil&co</blink>" in text
    assert 'replay: a<b>"&.jsonl' in text
    assert HOSTILE_SCOPE in html.unescape(page.replace("<wbr>", ""))
    # in attributes too: no quote of the data closes one (the value holds the whole scope)
    labels = [v for k, v in parsed.attrs if k == "aria-label" and v and "sender:" in v]
    assert labels and all(HOSTILE_SCOPE in v for v in labels)


def test_complaint_and_block_charts_per_provider() -> None:
    page = render_report(_timeline(), [], "r")
    for key in ("delivery", "deferral", "bounce", "block", "complaint"):
        block = page[page.index(f'id="chart-{key}"') :]
        block = block[: block.index('<div class="xax"')]
        # one line per provider with data, each in the legend
        assert block.count('<path class="series"') == 3, key
        for p in ("google", "microsoft", "other"):
            assert f'{p} <span class="small">max ' in block, (key, p)
    complaint = page[page.index('id="chart-complaint"') :]
    complaint = complaint[: complaint.index('<div class="xax"')]
    assert complaint.count('class="ref"') == 2  # 0.1 % and 0.3 %
    # google: 3 complaints per 370 delivered for the last hour: 36 / 4,440 over the trailing hour
    assert 'google <span class="small">max 0.81\u00a0%' in complaint
    block = page[page.index('id="chart-block"') :]
    assert 'google <span class="small">max 10\u00a0%' in block  # 40 of 400 attempts


def test_timeline_counts_provider_rows_only() -> None:
    counts = np.zeros((3, N_COLUMNS), dtype=np.int64)
    for r in range(3):
        counts[r, COL["delivered"]] = 90
        counts[r, COL["deferred"]] = 5
        counts[r, COL["bounced"]] = 3
        counts[r, COL["rejected"]] = 2
        counts[r, COL["complained"]] = 1
        counts[r, COL["class_block"]] = 4
    d = Deltas(
        scopes=["provider:google", "ip:192.0.2.1|provider:google", "domain:gmail.com"],
        scope_idx=np.array([0, 1, 2], dtype=np.int32),
        bucket_start=np.array([T0, T0, T0], dtype=np.int64),
        counts=counts,
    )
    tl = Timeline()
    tl.add(d)
    tl.add(d)
    assert tl.counts == {"google": {T0 // 300: [200, 180, 10, 10, 2, 8]}}


def test_throttle_chart_from_change_points() -> None:
    scope = "ip:192.0.2.13|provider:microsoft"
    inc = _incident("block", scope, T0 + 1200, T0 + 3000)
    tl = _timeline()
    iid = inc["id"]
    tl.add_throttle([_rec(scope, "paused", 0.02, "opened", iid, T0 + 1200)])
    tl.add_throttle([_rec(scope, "paused", 0.02, "opened", iid, T0 + 1260)])  # a refresh
    tl.add_throttle([_rec(scope, "recovering", 0.1, "closed", iid, T0 + 3000)])
    tl.add_throttle([_rec(scope, "recovering", 0.5, "ramp", iid, T0 + 3600)])
    tl.add_throttle([_rec(scope, "normal", 1.0, "recovered", iid, T0 + 4200)])
    assert [p.state for p in tl.throttle[scope]] == ["paused", "recovering", "recovering", "normal"]
    assert tl.throttle_expires[scope] == T0 + 4200

    page = render_report(tl, [inc], "r")
    thr = page[page.index('id="throttle"') : page.index('id="evidence"')]
    assert _scopes_of(thr, "thr") == [scope]
    assert thr.count('class="step"') == 1
    assert "lowest \u00d70.02 (paused)" in thr and "normal again" in thr
    # the hover text of a step names state, factor and reason
    assert "paused, rate factor 0.02 (reason: opened)" in html.unescape(thr)
    # the evidence table says what the throttle did for the incident
    row = page[page.index('id="inc-1"') :]
    row = row[: row.index("</tr>")]
    assert "paused \u00d70.02" in row and "recovering \u00d70.1\u21920.5" in row
    assert "normal" in row and "lowest \u00d70.02" in row


def test_without_throttle_records_or_without_the_policy() -> None:
    incs = [_incident("block", "ip:192.0.2.1", T0 + 600, None)]
    none = render_report(_timeline(), incs, "r")
    assert "No scope was throttled." in none and 'class="step"' not in none
    off = render_report(_timeline(), incs, "r", throttle_ran=False)
    assert "did not run" in off and "throttle not run (--no-throttle)" in off


def test_evidence_table_rate_baseline_replies() -> None:
    replies = [["550 5.7.1 Unfortunately, messages from [<ip>] weren't sent", 41], ["554 x", 2]]
    inc = _incident("block", "ip:192.0.2.12", T0 + 600, T0 + 3300, replies)
    inc["evidence"]["related_scopes"] = ["pool:shared-1"]
    page = render_report(_timeline(), [inc], "r")
    row = page[page.index('id="inc-1"') :]
    row = html.unescape(row[: row.index("</tr>")])
    assert "<b>32\u00a0%</b>" in row
    assert "vs baseline 0.21\u00a0%" in row and "150\u00d7 the baseline" in row
    assert "41 of 130 attempts in 5 min" in row
    assert "41\u00d7" in row and "weren't sent" in row and "554 x" in row
    assert "pool:shared-1" in row.replace("<wbr>", "")
    assert "45 min" in row  # open for 45 minutes
    # the bar's hover text carries the same evidence
    tip = html.unescape(re.search(r'<rect class="bar"[^>]*><title>(.*?)</title>', page, re.S)[1])
    assert "vs baseline 0.21" in tip and "weren't sent" in tip and "throttle: none" in tip


def test_responsive_and_self_contained() -> None:
    page = render_report(_timeline(), [_incident("block", "ip:192.0.2.1", T0 + 600, None)], "r")
    assert page.startswith("<!doctype html>")
    svgs = re.findall(r"<svg[^>]*>", page)
    plots = [s for s in svgs if 'preserveAspectRatio="none"' in s]
    assert plots and all('viewBox="0 0 1000 100"' in s for s in plots)
    assert not [s for s in svgs if re.search(r'\swidth="\d', s)]  # no fixed pixel width
    assert "width:100%" in page and "@media (max-width:640px)" in page
    assert "<script" not in page and "http" not in page and "@import" not in page


def test_no_data() -> None:
    page = render_report(Timeline(), [], "empty")
    assert page.startswith("<!doctype html>") and "No data." in page


# --- a real replay, looked at by a browser -------------------------------------------------


def _png(data: bytes) -> tuple[int, int, int, list[bytes]]:
    """Width, height, bytes per pixel and the rows of an 8-bit, non-interlaced RGB or RGBA PNG
    (stdlib only: zlib and struct)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    w = h = depth = ctype = interlace = -1
    while pos < len(data):
        n, kind = struct.unpack(">I4s", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + n]
        pos += 12 + n
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat.append(body)
        elif kind == b"IEND":
            break
    assert depth == 8 and interlace == 0 and ctype in (2, 6), (depth, ctype, interlace)
    bpp = 3 if ctype == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = w * bpp
    assert len(raw) == h * (stride + 1)
    rows: list[bytes] = []
    prev = bytes(stride)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)]
        if f == 0:
            cur = line
        elif f == 2:
            cur = bytes([(a + b) & 255 for a, b in zip(line, prev, strict=True)])
        else:
            out = bytearray(line)
            for i in range(stride):
                left = out[i - bpp] if i >= bpp else 0
                if f == 1:
                    pred = left
                elif f == 3:
                    pred = (left + prev[i]) >> 1
                else:  # 4: Paeth
                    up, ul = prev[i], (prev[i - bpp] if i >= bpp else 0)
                    p = left + up - ul
                    pa, pb, pc = abs(p - left), abs(p - up), abs(p - ul)
                    pred = left if pa <= pb and pa <= pc else (up if pb <= pc else ul)
                out[i] = (out[i] + pred) & 255
            cur = bytes(out)
        rows.append(cur)
        prev = cur
    return w, h, bpp, rows


def _chromium() -> str:
    exe = shutil.which("chromium") or (
        "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None
    )
    if exe is None:
        pytest.fail(
            "chromium is required for the report screenshot test: "
            "apt-get install -y --no-install-recommends chromium (./dev test installs it)"
        )
    return exe


def _screenshot(exe: str, page: Path, png: Path, width: int, height: int, profile: Path) -> None:
    r = subprocess.run(
        [
            exe,
            "--headless",
            "--no-sandbox",  # root in containers
            "--disable-gpu",
            "--hide-scrollbars",
            "--no-first-run",
            "--disable-extensions",
            "--force-device-scale-factor=1",
            f"--user-data-dir={profile}",
            f"--screenshot={png}",
            f"--window-size={width},{height}",
            page.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0 and png.exists(), r.stderr[-2000:]


@pytest.mark.slow
def test_report_of_a_real_replay_in_chromium(tmp_path: Path) -> None:
    exe = _chromium()
    events = tmp_path / "mixed.jsonl"
    runner = CliRunner()
    sim = runner.invoke(
        app,
        ["simulate", "-s", "mixed", "--seed", "1", "--rate", "5", "--duration", "6h",
         "--start", str(T0), "-o", str(events)],
    )  # fmt: skip
    assert sim.exit_code == 0, sim.output
    report = tmp_path / "report.html"
    res = runner.invoke(app, ["replay", "-q", str(events), "--report", str(report)])
    assert res.exit_code == 0, res.output
    out = [orjson.loads(x) for x in res.stdout.splitlines()]
    incs = [r for r in out if r["kind"] == "incident"]
    throttled = {r["scope"] for r in out if r["kind"] == "throttle"}
    types = {r["type"] for r in incs}
    assert len(types) >= 4 and throttled, "the scenario should open several incident types"

    page = report.read_text(encoding="utf-8")
    opened = sorted({(r["opened_at"], r["type"], r["scope"]) for r in incs})
    lanes = list(dict.fromkeys((t, s) for _, t, s in opened))  # in order of first opening
    assert _scopes_of(page, "lane") == [s for _, s in lanes]
    assert set(_scopes_of(page, "thr")) == throttled
    assert page.count('<tr id="inc-') == len({r["id"] for r in incs})
    for key in ("complaint", "block"):
        assert f'id="chart-{key}"' in page

    artifacts = tmp_path / "artifacts"
    artifacts.mkdir()
    shutil.copy(report, artifacts / "replay-report.html")
    for width, height in ((1400, 3400), (800, 4600)):
        png = artifacts / f"replay-report-{width}.png"
        _screenshot(exe, report, png, width, height, tmp_path / "chromium-profile")
        data = png.read_bytes()
        assert len(data) > 50_000, f"{png.name}: {len(data)} bytes, an empty page?"
        w, h, bpp, rows = _png(data)
        assert (w, h) == (width, height)
        pixels: Counter[bytes] = Counter()
        for row in rows[::2]:
            pixels.update(row[i : i + 3] for i in range(0, len(row), 2 * bpp))
        total = sum(pixels.values())
        white = pixels[b"\xff\xff\xff"]
        assert len(pixels) > 200, f"{png.name}: {len(pixels)} colours"
        assert 1 - white / total > 0.03, f"{png.name}: {white / total:.1%} white"
        # each incident type that opened is drawn in its colour (lanes, bars are solid)
        for t in types:
            colour = bytes.fromhex(TYPE_COLOURS[t][1:])
            assert pixels[colour] > 30, f"{png.name}: no {t} ({TYPE_COLOURS[t]}) pixels"
        # text at the top (the title): dark pixels in the first 60 rows
        top = b"".join(rows[:60])
        assert sum(1 for i in range(0, len(top), bpp) if top[i] < 80) > 200
    dest = os.environ.get("REPMON_TEST_ARTIFACTS")
    if dest:
        target = Path(dest) / "report"
        target.mkdir(parents=True, exist_ok=True)
        for f in artifacts.iterdir():
            shutil.copy(f, target / f.name)
