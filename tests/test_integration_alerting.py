"""The monitoring, proven on real servers: broker -> worker -> Prometheus -> Alertmanager -> webhook.

One run, everything real and local:

- the broker (``kafka_bootstrap``) and ``repmon worker`` on private topics (tests/conftest.py);
- Prometheus (Debian ``prometheus``) in a temporary directory, with the shipped
  ``deploy/prometheus/prometheus.yml`` rewritten only where a test must: its ``repmon-worker``
  job scrapes this worker every 1 s, rules are evaluated every 1 s, alerts go to the Alertmanager
  below, and it loads the SHIPPED rule files of ``deploy/prometheus/rules/``;
- Alertmanager (Debian ``prometheus-alertmanager``) in a temporary directory, with the shipped
  ``deploy/alertmanager/alertmanager.yml`` in which only the timing (``group_wait``,
  ``group_interval``, ``repeat_interval``) and the receivers' webhook URLs are changed: every
  receiver posts to a webhook served by this test, in-process, on an ephemeral port (the path is
  the receiver's name, as in the shipped file);
- a simulated provider outage (``provider-outage`` at microsoft, seed 3, from a fixed event-time
  start in the past, so that every run is the same) with, at the same time,
  a block of one sending IP at google (``ip-blocklisted``): the outage is what pages; the block
  gives the IP and pool panels an open IP-scoped incident and a paused IP, which an outage alone
  never makes (it is a provider-scoped incident and throttle).

Asserted:

1. every panel query (and annotation query) of ``grafana/dashboards/*.json`` returns data from
   that Prometheus while the outage is open: template variables are expanded to values that
   Prometheus itself returns for them (``label_values`` queries asked of its API; custom
   variables every value; multi-value variables "All"), ``$__interval``/``$__rate_interval``/
   ``$__range`` as Grafana computes them for the dashboard's own time range (``now-6h``), with
   the scrape interval as the data source's minimum interval; range queries for graphs, instant
   queries for the panels marked instant. A query has data when some series has a value that is
   not NaN. All queries without data are listed in the failure, none is skipped. The queries of
   incidents opened and of throttle records must also show the incidents and records the run
   made (above 0): a counter series born at its first increment has no 0 sample before it,
   increase() cannot see that increment, and such a panel shows 0 with data;
2. the outage alert (``RepmonProviderOutage``) fires and reaches the webhook of both of its
   receivers (``repmon-critical`` by severity, ``repmon-postmaster`` by provider) with exactly the
   incident's labels (``type``, ``severity``, ``scope_kind``, ``provider``, ``scope``, ``job``)
   and the annotations ``scope``, ``evidence`` (a rate, not ``unknown``), ``throttle`` (the
   throttle state in force), ``action``, ``summary``, ``description`` and ``runbook_url`` (into
   docs/runbook.md, to an existing section); the block pages too, with its IP scope;
3. after the traffic recovers and the incident closes, the alert resolves and the webhook gets
   the resolved notification, no earlier than ``keep_firing_for`` after the incident's series
   left ``/metrics``, and not before the recovery; nothing else paged in the whole run.

TIMING REWRITE (the only change to the shipped rules, in a temporary copy; the shipped files are
read, never written): in the alerts that have a ``keep_firing_for`` (the incident alerts), the
``for:`` and ``keep_firing_for:`` durations are divided by 12 (``for: 2m`` -> 10 s,
``keep_firing_for: 5m`` -> 25 s), so that a run takes minutes, not a quarter of an hour. Every
other rule, expression, label and annotation is the shipped one; the pipeline alerts keep their
shipped durations. The test checks that the copy differs from the shipped file in these keys
only. docs/deploy.md says the same.

Fails (never skips) when the broker, ``prometheus`` or the Alertmanager binary is missing.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from models.sim.scenarios import ScenarioBuilder
from models.sim.simulator import DEFAULT_START, SimConfig, Simulator
from tests.conftest import REPO, WorkerProc, free_port
from tests.test_integration_state import send, send_sentinels

pytestmark = [pytest.mark.kafka, pytest.mark.slow, pytest.mark.timeout(900)]

PROM_DIR = REPO / "deploy/prometheus"
AM_CONFIG = REPO / "deploy/alertmanager/alertmanager.yml"
DASHBOARDS = REPO / "grafana/dashboards"
RUNBOOK = REPO / "docs/runbook.md"
JOB = "repmon-worker"
SCRAPE_S = 1
#: the incident alerts' for:/keep_firing_for: are divided by this in the test's copy
TIME_SCALE = 12
OUTAGE_PROVIDER = "microsoft"
BLOCK_PROVIDER = "google"
BLOCK_IP = "192.0.2.10"
#: Alertmanager timing in the test's copy (the only other change, with the receiver URLs)
AM_TIMING = {"group_wait": "1s", "group_interval": "2s", "repeat_interval": "1h"}


# ---------------------------------------------------------------------------------------------
# durations


_DUR = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}


def seconds(text: str) -> float:
    """A Prometheus duration (``2m``, ``1h30m``) in seconds."""
    parts = _DUR.findall(text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def duration(s: float) -> str:
    ms = round(s * 1000)
    return f"{ms // 1000}s" if ms % 1000 == 0 else f"{ms}ms"


# ---------------------------------------------------------------------------------------------
# the configurations derived from the shipped files


def scaled_rules(src: Path, dst: Path) -> dict[str, tuple[str, str]]:
    """Copy a shipped rule file, dividing ``for:`` and ``keep_firing_for:`` by TIME_SCALE in the
    alerts that have a ``keep_firing_for`` (line by line: everything else stays byte for byte).
    Returns alert -> (for, keep_firing_for) of the copy."""
    text = src.read_text()
    shipped = yaml.safe_load(text)
    scaled = {
        r["alert"]
        for g in shipped["groups"]
        for r in g["rules"]
        if "alert" in r and "keep_firing_for" in r
    }
    out, alert = [], None
    for line in text.splitlines(keepends=True):
        m = re.match(r"\s*- (alert|record): (\S+)", line)
        if m:
            alert = m.group(2) if m.group(1) == "alert" else None
        m = re.match(r"(\s+)(for|keep_firing_for): (\S+)(\s*)$", line)
        if m and alert in scaled:
            new = duration(seconds(m.group(3)) / TIME_SCALE)
            line = f"{m.group(1)}{m.group(2)}: {new}{m.group(4)}"
        out.append(line)
    dst.write_text("".join(out))
    copy = yaml.safe_load(dst.read_text())

    def without_timing(doc: dict[str, Any]) -> dict[str, Any]:
        strip = {"for", "keep_firing_for"}
        return {
            "groups": [
                {
                    **g,
                    "rules": [
                        {
                            k: v
                            for k, v in r.items()
                            if not (r.get("alert") in scaled and k in strip)
                        }
                        for r in g["rules"]
                    ],
                }
                for g in doc["groups"]
            ]
        }

    # the copy differs from the shipped file in these durations and nothing else
    assert without_timing(copy) == without_timing(shipped), f"{src}: more than timing changed"
    got = {}
    for g in copy["groups"]:
        for r in g["rules"]:
            if r.get("alert") in scaled:
                got[r["alert"]] = (r.get("for", "0s"), r["keep_firing_for"])
    return got


def prometheus_config(tmp: Path, worker_port: int, am_port: int) -> tuple[Path, dict[str, Any]]:
    """The shipped prometheus.yml with the test's scrape target, 1 s intervals, the test's
    Alertmanager and the timing-scaled copies of the shipped rule files."""
    cfg = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())
    rules_dir = tmp / "rules"
    rules_dir.mkdir()
    timings: dict[str, tuple[str, str]] = {}
    shipped_rules = sorted(
        p for pat in cfg["rule_files"] for p in PROM_DIR.glob(pat) if p.is_file()
    )
    assert shipped_rules, f"no rule files match {cfg['rule_files']} in {PROM_DIR}"
    for p in shipped_rules:
        timings.update(scaled_rules(p, rules_dir / p.name))
    jobs = [j for j in cfg["scrape_configs"] if j["job_name"] == JOB]
    assert len(jobs) == 1, f"prometheus.yml has no single {JOB!r} job"
    job = jobs[0]
    job["scrape_interval"] = f"{SCRAPE_S}s"
    job["static_configs"] = [{"targets": [f"127.0.0.1:{worker_port}"]}]
    cfg["scrape_configs"] = [job]  # the self-scrape of localhost:9090 is of no use here
    cfg["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    cfg["alerting"] = {
        "alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]
    }
    cfg["rule_files"] = [str(rules_dir / "*.yml")]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path, timings


def alertmanager_config(tmp: Path, hook_port: int) -> Path:
    """The shipped alertmanager.yml with the test's timing and every webhook receiver posting to
    http://127.0.0.1:<hook_port>/<receiver name>; nothing else changes (checked)."""
    shipped = yaml.safe_load(AM_CONFIG.read_text())
    cfg = yaml.safe_load(AM_CONFIG.read_text())

    def retime(route: dict[str, Any]) -> None:
        for k, v in AM_TIMING.items():
            if k in route or route is cfg["route"]:
                route[k] = v
        for child in route.get("routes", []):
            retime(child)

    retime(cfg["route"])
    for rcv in cfg["receivers"]:
        hooks = rcv.get("webhook_configs", [])
        assert hooks, f"receiver {rcv['name']} has no webhook_configs to point at the test"
        for h in hooks:
            h["url"] = f"http://127.0.0.1:{hook_port}/{rcv['name']}"

    def strip(doc: dict[str, Any]) -> dict[str, Any]:
        doc = json.loads(json.dumps(doc))

        def walk(route: dict[str, Any]) -> None:
            for k in AM_TIMING:
                route.pop(k, None)
            for c in route.get("routes", []):
                walk(c)

        walk(doc["route"])
        for rcv in doc["receivers"]:
            for h in rcv.get("webhook_configs", []):
                h.pop("url", None)
        return doc

    assert strip(cfg) == strip(shipped), "more than timing and receiver URLs changed"
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# servers


def binary(*names: str) -> str:
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    pytest.fail(
        f"{' or '.join(names)} not found on PATH: this test needs the real server "
        "(Debian: apt-get install prometheus prometheus-alertmanager; ./dev test installs them)"
    )


class Server:
    """A server subprocess with its log in the test's directory."""

    def __init__(self, name: str, argv: list[str], log: Path, url: str) -> None:
        self.name, self.url, self.log = name, url, log
        self.fh = log.open("wb")
        self.proc = subprocess.Popen(argv, stdout=self.fh, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited at start:\n{self.tail()}")
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{self.name} not ready within {timeout_s} s:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.log.read_text(errors="replace").splitlines()[-n:]
        except OSError:
            return "<no log>"
        return "\n".join(lines)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.fh.close()


@dataclass
class Notification:
    at: float  # time.monotonic() when received
    receiver: str  # the URL path without "/"
    body: dict[str, Any]


class Webhook:
    """Alertmanager's webhook receiver, in-process, on an ephemeral port."""

    def __init__(self) -> None:
        self.received: list[Notification] = []
        self.cond = threading.Condition()
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(n))
                with hook.cond:
                    hook.received.append(Notification(time.monotonic(), self.path.strip("/"), body))
                    hook.cond.notify_all()
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def wait(
        self,
        pred: Callable[[Notification], bool],
        timeout_s: float,
        what: str,
        why: Callable[[], str],
    ) -> Notification:
        """The first notification (received so far or later) for which ``pred`` holds."""
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while True:
                for n in self.received:
                    if pred(n):
                        return n
                left = deadline - time.monotonic()
                if left <= 0:
                    got = [
                        (n.receiver, n.body.get("status"), [a["labels"] for a in n.body["alerts"]])
                        for n in self.received
                    ]
                    raise AssertionError(
                        f"no webhook notification {what} within {timeout_s} s; received: {got}\n"
                        + why()
                    )
                self.cond.wait(min(left, 1.0))

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def epoch(rfc3339: str) -> float:
    """Alertmanager's startsAt/endsAt (RFC 3339, nanoseconds) as epoch seconds."""
    m = re.fullmatch(r"(.+?)(?:\.(\d+))?(Z|[+-]\d\d:\d\d)", rfc3339)
    assert m, rfc3339
    whole = datetime.fromisoformat(m.group(1) + m.group(3).replace("Z", "+00:00"))
    return whole.timestamp() + float("0." + (m.group(2) or "0"))


def api(url: str, path: str, **params: Any) -> Any:
    q = urllib.parse.urlencode(params, doseq=True)
    with urllib.request.urlopen(f"{url}{path}?{q}", timeout=30) as r:
        doc = json.loads(r.read())
    assert doc["status"] == "success", doc
    return doc["data"]


# ---------------------------------------------------------------------------------------------
# the events: a provider outage and an IP block at the same time


#: the run's event-time start: fixed, so that every run sends the same events and the detectors
#: open the same incidents (the simulated traffic depends on the date and time of day: with
#: some starts the outage also opens a rate_limited incident at microsoft, which pages too).
#: Monday 2026-11-16 09:00 UTC, the simulator's default start plus 9 hours.
SIM_START = DEFAULT_START + 9 * 3600


def outage_and_block(seed: int = 3) -> tuple[Simulator, list[dict[str, Any]]]:
    """tests/test_integration_state.outage_events' outage (30 min, seed 3, at microsoft) from
    SIM_START, plus a block of one IP at google with the same onset and length (a second
    scenario added to the same simulation, so the traffic is one fleet's)."""
    assert time.time() - 600 > SIM_START + 2 * 3600, "the simulated run must be in the past"
    sim = Simulator(
        SimConfig(
            seed=seed,
            start=SIM_START,
            duration_s=2 * 3600,
            rate=15.0,
            scenario="provider-outage",
            params={"provider": OUTAGE_PROVIDER},
        )
    )
    onset = sim.truth[0].onset
    builder = ScenarioBuilder(sim.config, sim.start, sim.end, sim.fleet, sim.outcomes, sim.calendar)
    builder.effects = sim.effects  # add to the run's effects, which the lifecycle reads
    builder.build(
        "ip-blocklisted",
        {
            "provider": BLOCK_PROVIDER,
            "ip": BLOCK_IP,
            "onset_s": onset - sim.start,
            "length_s": 1800,
        },
    )
    return sim, [e for chunk in sim.chunks(600.0) for e in chunk]


# ---------------------------------------------------------------------------------------------
# the dashboards' queries, as Grafana would send them

VAR_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")

#: Grafana's rangeutil.roundInterval: (upper bound in ms, rounded interval in ms)
ROUND_INTERVAL = [
    (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000),
    (45000, 30000), (90000, 60000), (180000, 120000), (450000, 300000), (1050000, 600000),
    (2100000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (32400000, 21600000), (86400000, 43200000),
]  # fmt: skip
#: data points a graph panel asks for (Grafana: about the panel's width in pixels)
MAX_DATA_POINTS = 1000


def round_interval(ms: float) -> float:
    for bound, value in ROUND_INTERVAL:
        if ms < bound:
            return value / 1000
    return 86400.0


@dataclass
class Window:
    """The dashboard's time range and Grafana's built-in interval variables for it."""

    start: float
    end: float  # now: instant queries and variable queries; range queries align it to the step
    interval_s: float  # $__interval, also the step of range queries
    builtins: dict[str, str]


def window_for(dashboard: dict[str, Any], now: float) -> Window:
    frm = str(dashboard["time"]["from"])
    assert dashboard["time"]["to"] == "now" and frm.startswith("now-"), dashboard["time"]
    range_s = seconds(frm[4:])
    # $__interval: the range over the data points, rounded, at least the data source's minimum
    # interval (the scrape interval); $__rate_interval = max($__interval + scrape, 4 x scrape)
    interval = max(float(SCRAPE_S), round_interval(range_s * 1000 / MAX_DATA_POINTS))
    rate_interval = max(interval + SCRAPE_S, 4 * SCRAPE_S)
    start, end = now - range_s, now
    builtins = {
        "__interval": duration(interval),
        "__interval_ms": str(round(interval * 1000)),
        "__rate_interval": duration(rate_interval),
        "__range": duration(range_s),
        "__range_s": str(round(range_s)),
        "__range_ms": str(round(range_s * 1000)),
    }
    return Window(start, end, interval, builtins)


def regex_escape(v: str) -> str:
    """Grafana's escaping of one value of a multi-value variable in a Prometheus query."""
    return re.sub(r"([\\^$*+?.()|\[\]{}])", r"\\\\\1", v)


def expand(
    text: str, values: dict[str, list[str]], multi: set[str], builtins: dict[str, str]
) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in builtins:
            return builtins[name]
        assert name in values, f"${name}: no such variable in {text!r}"
        vals = values[name]
        assert vals, f"${name} has no value"
        if name in multi:
            return "(" + "|".join(regex_escape(v) for v in vals) + ")"
        return vals[0]

    return VAR_REF.sub(one, text)


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


@dataclass
class PanelQuery:
    dashboard: str
    where: str  # "panel 3 'Deferral rate' A" or "annotation 'Open incidents'"
    expr: str
    instant: bool
    step_s: float | None  # annotations have their own step


def dashboard_queries(d: dict[str, Any]) -> list[PanelQuery]:
    out = []
    for p in panels(d):
        for t in p.get("targets", []):
            instant = bool(t.get("instant")) and not t.get("range")
            out.append(
                PanelQuery(
                    d["uid"],
                    f"panel {p['id']} {p.get('title')!r} {t.get('refId', '')}".rstrip(),
                    t["expr"],
                    instant,
                    None,
                )
            )
    for a in d.get("annotations", {}).get("list", []):
        if "expr" in a:
            step = seconds(a["step"]) if a.get("step") else None
            out.append(PanelQuery(d["uid"], f"annotation {a['name']!r}", a["expr"], False, step))
    return out


class NoValues(Exception):
    """A template variable's query returns no values (yet): its dashboard cannot be shown."""


def variable_assignments(
    d: dict[str, Any], prom: str, win: Window, focus: dict[str, str]
) -> tuple[list[dict[str, list[str]]], set[str]]:
    """The variable values to check the dashboard with, from that Prometheus.

    - ``custom`` variables: "All" when multi-value, else each of their values in turn (one
      assignment per combination);
    - ``query`` variables (``label_values(selector, label)``), in the dashboard's order, per
      combination: the values Prometheus returns for the selector (earlier variables expanded)
      over the dashboard's range, as Grafana asks for them; a multi-value one takes "All" (every
      value); a single-value one the ``focus`` value when given (which must be among the real
      values: the outage's provider, the one an on-call engineer opens), else the first value
      (Grafana's default);
    - the data source variable is in no query.
    Returns the assignments and the names of the multi-value variables.
    """
    variables = [v for v in d.get("templating", {}).get("list", []) if v["type"] != "datasource"]
    multi = {v["name"] for v in variables if v.get("multi") or v.get("includeAll")}
    choices: dict[str, list[str]] = {}
    for v in variables:
        assert v["type"] in ("custom", "query"), f"{d['uid']}: a {v['type']} variable"
        if v["type"] == "custom":
            choices[v["name"]] = [x.strip() for x in str(v["query"]).split(",") if x.strip()]
    single = sorted(n for n in choices if n not in multi)
    out = []
    for combo in itertools.product(*(choices[n] for n in single)):
        values: dict[str, list[str]] = {n: [c] for n, c in zip(single, combo, strict=True)}
        for v in variables:
            name = v["name"]
            if v["type"] == "custom":
                values.setdefault(name, choices[name])  # the multi-value ones: All
                continue
            q = v["query"]["query"] if isinstance(v["query"], dict) else str(v["query"])
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", q.strip())
            assert m, f"{d['uid']}: ${name}: not label_values(selector, label): {q!r}"
            selector = expand(m.group(1), values, multi, win.builtins)
            vals = sorted(
                api(prom, f"/api/v1/label/{m.group(2)}/values", **{"match[]": selector},
                    start=win.start, end=win.end)
            )  # fmt: skip
            if not vals:
                raise NoValues(f"{d['uid']}: ${name} = label_values({selector}, {m.group(2)})")
            if name in multi:
                values[name] = vals
            elif name in focus:
                assert focus[name] in vals, f"{d['uid']}: ${name}: {focus[name]!r} not in {vals}"
                values[name] = [focus[name]]
            else:
                values[name] = [vals[0]]
        out.append(values)
    return out, multi


@dataclass
class Outcome:
    query: PanelQuery
    expr: str  # expanded
    assignment: str
    series: int
    values: int  # non-NaN values over all series
    all_zero: bool
    #: each series' labels and its largest value (NaN: none)
    peaks: list[tuple[dict[str, str], float]]


def run_query(prom: str, q: PanelQuery, expr: str, win: Window) -> Outcome:
    if q.instant:
        data = api(prom, "/api/v1/query", query=expr, time=win.end)
        per_series = [(r["metric"], [float(r["value"][1])]) for r in data["result"]]
    else:
        # Grafana aligns a range query's start and end to its step (so the newest point is up
        # to one step old)
        step = q.step_s or win.interval_s
        start, end = (math.floor(t / step) * step for t in (win.start, win.end))
        data = api(prom, "/api/v1/query_range", query=expr, start=start, end=end, step=step)
        per_series = [(r["metric"], [float(v[1]) for v in r["values"]]) for r in data["result"]]
    peaks = []
    for labels, vals in per_series:
        good = [v for v in vals if not math.isnan(v)]
        peaks.append((labels, max(good) if good else math.nan))
    n_good = sum(1 for _, vals in per_series for v in vals if not math.isnan(v))
    all_zero = n_good > 0 and all(p == 0 for _, p in peaks if not math.isnan(p))
    return Outcome(q, expr, "", len(per_series), n_good, all_zero, peaks)


#: incident types the scenario opens (the outage and the block)
OPENED_TYPES = ("provider_outage", "block")


def selects_type(expr: str, t: str) -> bool:
    """Whether the ``type`` matchers of an (expanded) query let incident type ``t`` through."""
    for op, raw in re.findall(r'\btype\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"', expr):
        value = re.sub(r"\\(.)", r"\1", raw)  # the PromQL string's escapes
        hit = re.fullmatch(value, t) is not None if op in ("=~", "!~") else value == t
        if hit != (op in ("=", "=~")):
            return False
    return True


def undercounted(outcomes: list[Outcome]) -> list[str]:
    """Queries of what the run did that show nothing of it: a query of incidents opened must
    count each opened type it selects (above 0), a query of throttle records some. A counter series that appears at its first increment has no 0 sample before it, so
    increase()/rate() cannot see that increment: these panels then show 0 where something
    happened (the no-data check alone does not see that)."""
    bad = []
    for o in outcomes:
        if o.values == 0:
            continue  # listed as without data
        if "repmon_incidents_opened_total" in o.expr:
            for t in OPENED_TYPES:
                if selects_type(o.expr, t) and not any(
                    lb.get("type") == t and p > 0 for lb, p in o.peaks
                ):
                    bad.append(f"{describe(o)}: shows no {t} incident opened, one was")
        if "repmon_throttle_records_total" in o.expr and not any(p > 0 for _, p in o.peaks):
            bad.append(f"{describe(o)}: shows no throttle record, several were published")
    return bad


def check_dashboards(prom: str, focus: dict[str, str]) -> tuple[list[Outcome], list[str]]:
    """Every query of every dashboard with every assignment: (all outcomes, the queries without
    data and the variables without values)."""
    outcomes: list[Outcome] = []
    problems: list[str] = []
    now = time.time()
    files = sorted(DASHBOARDS.glob("*.json"))
    assert len(files) >= 5, files
    for f in files:
        d = json.loads(f.read_text())
        win = window_for(d, now)
        try:
            assignments, multi = variable_assignments(d, prom, win, focus)
        except NoValues as exc:
            n = len(dashboard_queries(d))
            problems.append(f"no values for the variable {exc}: none of its {n} queries checked")
            continue
        for q in dashboard_queries(d):
            done: set[str] = set()
            for a in assignments:
                expr = expand(q.expr, a, multi, win.builtins)
                if expr in done:  # the query uses no variable that differs between them
                    continue
                done.add(expr)
                o = run_query(prom, q, expr, win)
                used = {n for n in a if re.search(rf"\$\{{?{n}\b|\[\[{n}\]\]", q.expr)}
                o.assignment = ", ".join(
                    f"{n}=All" if n in multi else f"{n}={a[n][0]}" for n in sorted(used)
                )
                outcomes.append(o)
                if o.values == 0:
                    problems.append(describe(o))
    return outcomes, problems


def describe(o: Outcome) -> str:
    extra = f" [{o.assignment}]" if o.assignment else ""
    kind = "instant" if o.query.instant else "range"
    return f"{o.query.dashboard} {o.query.where}{extra} ({kind}): {o.expr}"


# ---------------------------------------------------------------------------------------------
# the test


def metric_lines(w: WorkerProc, name: str) -> list[str]:
    text = w.get("/metrics").decode()
    return [ln for ln in text.splitlines() if ln.startswith(name + "{")]


def test_outage_pages_dashboards_have_data_and_the_page_resolves(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    prometheus_bin = binary("prometheus")
    alertmanager_bin = binary("prometheus-alertmanager", "alertmanager")
    t_test = time.monotonic()

    sim, evs = outage_and_block()
    outage, block = sim.truth
    assert outage.type == "provider_outage" and block.type == "block", sim.truth
    cut = outage.onset + 900.0  # both incidents open, the outage throttle has reached "paused"
    first = [e for e in evs if float(e["timestamp"]) < cut]
    rest = [e for e in evs if float(e["timestamp"]) >= cut]
    outage_scope = f"provider:{OUTAGE_PROVIDER}"
    block_scope = f"ip:{BLOCK_IP}|provider:{BLOCK_PROVIDER}"

    hook = Webhook()
    w = WorkerProc(kafka_bootstrap, tmp_path / "worker")
    servers: list[Server] = []
    prom = am = None

    def logs() -> str:
        parts = [f"--- worker\n{w.log_tail(30)}"]
        parts += [f"--- {s.name}\n{s.tail(30)}" for s in servers]
        return "\n".join(parts)

    try:
        am_port, prom_port = free_port(), free_port()
        am_cfg = alertmanager_config(tmp_path, hook.port)
        am = Server(
            "alertmanager",
            [
                alertmanager_bin,
                f"--config.file={am_cfg}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",  # one instance, no gossip port
            ],
            tmp_path / "alertmanager.log",
            f"http://127.0.0.1:{am_port}",
        )
        servers.append(am)
        prom_cfg, timings = prometheus_config(tmp_path, w.port, am_port)
        keep_firing_s = seconds(timings["RepmonProviderOutage"][1])
        assert 0 < keep_firing_s <= 60, timings  # 5m / 12 = 25 s as shipped
        prom = Server(
            "prometheus",
            [
                prometheus_bin,
                f"--config.file={prom_cfg}",
                f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            tmp_path / "prometheus.log",
            f"http://127.0.0.1:{prom_port}",
        )
        servers.append(prom)
        am.wait_ready()
        prom.wait_ready()
        # the worker starts under Prometheus's eyes, as a restarted worker does
        w.start()

        def prom_has(expr: str) -> bool:
            return bool(api(prom.url, "/api/v1/query", query=expr)["result"])

        def until(pred: Callable[[], bool], timeout_s: float, what: str) -> None:
            deadline = time.monotonic() + timeout_s
            while not pred():
                assert w.proc is not None and w.proc.poll() is None, f"worker died:\n{logs()}"
                for s in servers:
                    assert s.proc.poll() is None, f"{s.name} died:\n{logs()}"
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"timed out after {timeout_s} s waiting for {what}\n{logs()}"
                    )
                time.sleep(0.5)

        # Prometheus runs every shipped alert (the timing-scaled copies: same names, same groups)
        def loaded() -> set[str]:
            return {
                r["name"]
                for g in api(prom.url, "/api/v1/rules")["groups"]
                for r in g["rules"]
                if r["type"] == "alerting"
            }

        shipped = {
            r["alert"]
            for f in sorted((PROM_DIR / "rules").glob("*.yml"))
            for g in yaml.safe_load(f.read_text())["groups"]
            for r in g["rules"]
            if "alert" in r
        }
        until(lambda: loaded() == shipped, 30, f"Prometheus to load the alerts {shipped}")
        until(lambda: prom_has(f'up{{job="{JOB}"}} == 1'), 60, "Prometheus scraping the worker")
        # both servers see each other: Prometheus has the Alertmanager as a target
        until(
            lambda: bool(api(prom.url, "/api/v1/alertmanagers")["activeAlertmanagers"]),
            60,
            "Prometheus's Alertmanager",
        )

        # -- the outage starts (and the block): both incidents open, the throttles act
        t_first = time.monotonic()
        send(kafka_bootstrap, w, first)
        send_sentinels(kafka_bootstrap, w, cut + 0.5)

        def fired(alertname: str, scope: str, receiver: str) -> Callable[[Notification], bool]:
            def pred(n: Notification) -> bool:
                return (
                    n.receiver == receiver
                    and n.body["status"] == "firing"
                    and any(
                        a["status"] == "firing"
                        and a["labels"].get("alertname") == alertname
                        and a["labels"].get("scope") == scope
                        for a in n.body["alerts"]
                    )
                )

            return pred

        page = hook.wait(
            fired("RepmonProviderOutage", outage_scope, "repmon-critical"),
            240,
            "paging the outage",
            logs,
        )
        t_paged = page.at
        desk = hook.wait(
            fired("RepmonProviderOutage", outage_scope, "repmon-postmaster"),
            120,
            "of the outage to the postmaster desk",
            logs,
        )
        hook.wait(
            fired("RepmonBlock", block_scope, "repmon-critical"), 120, "paging the block", logs
        )

        # -- the page: the incident's labels exactly, its scope, evidence, throttle and runbook
        want_labels = {
            "alertname": "RepmonProviderOutage",
            "job": JOB,
            "type": "provider_outage",
            "severity": "critical",
            "scope_kind": "provider",
            "provider": OUTAGE_PROVIDER,
            "scope": outage_scope,
        }
        for n in (page, desk):
            (alert,) = [a for a in n.body["alerts"] if a["labels"].get("scope") == outage_scope]
            assert alert["labels"] == want_labels, alert["labels"]
            # one group per scope: the notification is about this scope alone
            assert n.body["groupLabels"] == {
                k: want_labels[k] for k in ("alertname", "type", "provider", "scope")
            }, n.body["groupLabels"]
            ann = alert["annotations"]
            assert ann["scope"] == outage_scope, ann
            assert ann["summary"] == f"repmon: provider outage on {outage_scope}", ann
            url = ann["runbook_url"]
            assert url.endswith("docs/runbook.md#repmonprovideroutage"), url
            assert "\n## RepmonProviderOutage\n" in RUNBOOK.read_text()
            assert re.fullmatch(
                r"transient failures \(4xx, timeouts, connection errors\) [\d.]+% of attempts "
                r"when it opened, baseline [\d.]+%",
                ann["evidence"],
            ), ann["evidence"]
            assert re.fullmatch(
                r"(throttled|paused|recovering) at [\d.]+% of its normal rate", ann["throttle"]
            ), ann["throttle"]
            assert "throttle" in ann["action"] and ann["action"] in ann["description"], ann
            assert outage_scope in ann["description"] and ann["evidence"] in ann["description"]
        block_page = hook.wait(
            fired("RepmonBlock", block_scope, "repmon-critical"), 1, "paging the block", logs
        )
        (balert,) = [a for a in block_page.body["alerts"] if a["labels"]["scope"] == block_scope]
        assert balert["labels"]["scope_kind"] == "ip|provider", balert["labels"]
        assert balert["labels"]["provider"] == BLOCK_PROVIDER, balert["labels"]
        assert balert["annotations"]["throttle"].startswith("paused at "), balert["annotations"]
        assert balert["annotations"]["runbook_url"].endswith("#repmonblock")

        # -- every dashboard query has data while the outage is on (the throttles in force)
        focus = {"provider": OUTAGE_PROVIDER}
        deadline = time.monotonic() + 120
        while True:
            outcomes, missing = check_dashboards(prom.url, focus)
            if not (missing or undercounted(outcomes)) or time.monotonic() > deadline:
                break
            time.sleep(3)
        wrong = undercounted(outcomes)
        print(f"\n{len(outcomes)} dashboard queries checked, {len(missing)} without data")
        for o in outcomes:
            if o.all_zero:
                print(f"  data, all 0: {describe(o)}")
        problems = []
        if missing:
            problems.append(
                f"{len(missing)} dashboard queries (of {len(outcomes)} run) return no data from "
                "Prometheus during the outage:\n" + "\n".join("  " + x for x in missing)
            )
        if wrong:
            problems.append(
                f"{len(wrong)} dashboard queries of incidents opened or throttle records do not "
                "show what happened:\n" + "\n".join("  " + x for x in wrong)
            )
        assert not problems, "\n".join(problems)
        # the outage is still open (nothing resolved it while the dashboards were checked)
        assert not [n for n in hook.received if n.body["status"] == "resolved"], hook.received

        # -- recovery: the rest of the run, the outage ends, the incident closes
        t_recovery = time.monotonic()
        send(kafka_bootstrap, w, rest)
        send_sentinels(kafka_bootstrap, w, max(float(e["timestamp"]) for e in evs) + 1.0)
        until(
            lambda: not any(f'scope="{outage_scope}"' in ln
                            for ln in metric_lines(w, "repmon_incident_open_info")),
            180,
            "the outage incident to close",
        )  # fmt: skip

        def resolved(n: Notification) -> bool:
            return n.receiver == "repmon-critical" and any(
                a["status"] == "resolved" and a["labels"] == want_labels for a in n.body["alerts"]
            )

        done = hook.wait(resolved, 180, "resolving the outage", logs)
        (ralert,) = [a for a in done.body["alerts"] if a["labels"] == want_labels]
        assert ralert["endsAt"] > ralert["startsAt"], ralert
        assert ralert["annotations"]["runbook_url"].endswith("#repmonprovideroutage"), ralert
        # resolved after the recovery, and kept firing for keep_firing_for after the incident's
        # series was last scraped (its raw samples in Prometheus; endsAt is when Prometheus
        # resolved the alert): one scrape and one evaluation of slack either way
        assert done.at > t_recovery
        sel = f'repmon_incident_open_info{{job="{JOB}",scope="{outage_scope}"}}'
        (raw,) = api(prom.url, "/api/v1/query", query=f"{sel}[1h]")["result"]
        last_seen = float(raw["values"][-1][0])
        held = epoch(ralert["endsAt"]) - last_seen
        assert keep_firing_s - 2 * SCRAPE_S <= held <= keep_firing_s + 5 * SCRAPE_S, (
            held,
            keep_firing_s,
        )
        # the postmaster desk hears of it too
        hook.wait(
            lambda n: (
                n.receiver == "repmon-postmaster"
                and any(
                    a["status"] == "resolved" and a["labels"] == want_labels
                    for a in n.body["alerts"]
                )
            ),
            60,
            "resolving the outage at the postmaster desk",
            logs,
        )
        # nothing else paged: no pipeline alert, no provider-rate alert, no other incident
        notified = {a["labels"]["alertname"] for n in hook.received for a in n.body["alerts"]}
        assert notified == {"RepmonProviderOutage", "RepmonBlock"}, notified
        print(
            f"paged {t_paged - t_first:.1f} s after the outage's events were sent; "
            f"incident's last sample -> alert resolved: {held:.1f} s "
            f"(keep_firing_for {keep_firing_s:.0f} s); whole test {time.monotonic() - t_test:.0f} s"
        )
    finally:
        for s in reversed(servers):
            s.stop()
        w.stop()
        hook.stop()
