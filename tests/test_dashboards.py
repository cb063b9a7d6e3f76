"""The Grafana dashboards (grafana/): generated, committed, and querying only what the worker exports.

- the committed JSON is exactly what grafana/generate.py produces (and --check says so, or fails);
- every query (panel targets, annotations, template variable queries) parses as PromQL, with
  template variables expanded, and uses only series of the worker's registry
  (streams/worker/metrics.py), with labels and label values they really have, counters only
  under rate()/increase(), histograms only through histogram_quantile() keeping ``le``, vector
  matches whose label sets agree, and legends that name labels the result carries;
- uids are unique and stable, every dashboard has the data source variable defaulting to the
  provisioned data source, every variable used is defined and expands, data links point to
  existing dashboards, and the provisioning of deploy/grafana loads these files.
The checker itself is tested on wrong queries, so that each of its rules can fail.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from models.detect.incidents import SEVERITIES
from models.ingest.pipeline import REJECTION_REASONS
from models.ingest.providers import OTHER, default_table
from models.schema import EVENT_KINDS, INCIDENT_TYPES
from streams.worker.metrics import PROVIDER_OUTCOMES, PROVIDER_RATES, Metrics

ROOT = Path(__file__).resolve().parents[1]
GRAFANA = ROOT / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
PROVISIONING = ROOT / "deploy/grafana/provisioning"
COMPOSE = ROOT / "deploy/compose.yaml"

#: file -> uid. Stable: links, bookmarks and alerts point at these uids; change them never.
EXPECTED_UIDS = {
    "overview.json": "repmon-overview",
    "provider.json": "repmon-provider",
    "ip-pool.json": "repmon-ip-pool",
    "incidents.json": "repmon-incidents",
    "pipeline.json": "repmon-pipeline",
}
DS_VAR = "datasource"
DS_REF = "${datasource}"


def load_generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "repmon_grafana_generate", GRAFANA / "generate.py"
    )
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def generator() -> ModuleType:
    return load_generator()


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


# ---------------------------------------------------------------------------------------------
# the worker's series: name -> labels, kind (counter-like or gauge-like), closed label values


@dataclass(frozen=True)
class Series:
    family: str
    labels: frozenset[str]
    #: "counter" (a _total), "bucket", "hist" (_sum/_count), "gauge", "synthetic" (up)
    kind: str


#: labels Prometheus attaches to every scraped series
TARGET_LABELS = frozenset({"job", "instance"})
#: series Prometheus itself makes for each scrape target (not in the worker's registry)
SYNTHETIC = {"up": Series("up", frozenset(), "synthetic")}


def worker_series() -> dict[str, Series]:
    """Exposed series names of the worker's registry, read from a fresh Metrics()."""
    m = Metrics()
    wrappers: list[MetricWrapperBase] = []
    for v in vars(m).values():
        if isinstance(v, MetricWrapperBase):
            wrappers.append(v)
        elif isinstance(v, dict):
            wrappers.extend(x for x in v.values() if isinstance(x, MetricWrapperBase))
    collected = list(m.registry.collect())
    families = {f.name: f.type for f in collected}
    # the attribute walk found every repmon family of the registry (else a metric would be
    # missed); the rest come from the process, platform and GC collectors
    assert {w._name for w in wrappers} == {n for n in families if n.startswith("repmon_")}
    out: dict[str, Series] = {}
    for f in collected:
        if f.name.startswith("repmon_"):
            continue
        for smp in f.samples:
            kind = "counter" if smp.name.endswith("_total") else "gauge"
            out[smp.name] = Series(f.name, frozenset(smp.labels), kind)
    for w in wrappers:
        labels = frozenset(w._labelnames)
        name, typ = w._name, families[w._name]
        if typ == "counter":
            out[f"{name}_total"] = Series(name, labels, "counter")
        elif typ == "histogram":
            out[f"{name}_bucket"] = Series(name, labels | {"le"}, "bucket")
            out[f"{name}_sum"] = Series(name, labels, "hist")
            out[f"{name}_count"] = Series(name, labels, "hist")
        elif typ == "gauge":
            out[name] = Series(name, labels, "gauge")
        else:  # a summary or info would need rules of its own here
            raise AssertionError(f"{name}: metric type {typ} not handled by this test")
    return out


SERIES: dict[str, Series] = {**worker_series(), **SYNTHETIC}

PROVIDERS = frozenset(default_table().providers) | {OTHER}
SNAPSHOT_KINDS = frozenset({"owner", "ingest"})  # docs/metrics.md, repmon_snapshots_written_total
#: (family, label) -> every value the worker can export
CLOSED: dict[tuple[str, str], frozenset[str]] = {
    ("repmon_events", "kind"): frozenset(EVENT_KINDS),
    ("repmon_events_rejected", "reason"): frozenset(REJECTION_REASONS),
    ("repmon_provider_events", "provider"): PROVIDERS,
    ("repmon_provider_events", "outcome"): frozenset(PROVIDER_OUTCOMES),
    ("repmon_provider_rate_ratio", "provider"): PROVIDERS,
    ("repmon_provider_rate_ratio", "rate"): frozenset(PROVIDER_RATES),
    ("repmon_provider_attempts_15m", "provider"): PROVIDERS,
    ("repmon_incidents_open", "type"): frozenset(INCIDENT_TYPES),
    ("repmon_incidents_open", "severity"): frozenset(SEVERITIES),
    ("repmon_incidents_opened", "type"): frozenset(INCIDENT_TYPES),
    ("repmon_snapshots_written", "kind"): SNAPSHOT_KINDS,
    ("repmon_snapshot_size_bytes", "kind"): SNAPSHOT_KINDS,
    ("repmon_snapshot_duration_seconds", "kind"): SNAPSHOT_KINDS,
    ("repmon_state_restores", "kind"): SNAPSHOT_KINDS,
    ("repmon_state_restores", "result"): frozenset({"restored", "cold", "failed"}),
}


def test_the_closed_label_sets_name_real_labels() -> None:
    for family, label in CLOSED:
        assert any(s.family == family and label in s.labels for s in SERIES.values()), (
            family,
            label,
        )


# ---------------------------------------------------------------------------------------------
# a PromQL parser (the subset of the grammar a dashboard needs; anything else is an error)

AGGREGATIONS = {
    "sum", "min", "max", "avg", "count", "stddev", "stdvar", "group",
    "topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio",
}  # fmt: skip
AGG_PARAM = {"topk", "bottomk", "quantile", "count_values", "limitk", "limit_ratio"}
S, V, M, STR = "scalar", "vector", "matrix", "string"
#: function -> (argument types, how many are optional, result type)
FUNCTIONS: dict[str, tuple[tuple[str, ...], int, str]] = {
    **{f: ((M,), 0, V) for f in ("rate", "irate", "increase", "delta", "idelta", "deriv")},
    **{f: ((M,), 0, V) for f in ("changes", "resets", "absent_over_time", "present_over_time")},
    **{
        f"{a}_over_time": ((M,), 0, V)
        for a in ("avg", "min", "max", "sum", "count", "last", "stddev", "stdvar")
    },
    "quantile_over_time": ((S, M), 0, V),
    "predict_linear": ((M, S), 0, V),
    "histogram_quantile": ((S, V), 0, V),
    **{
        f: ((V,), 0, V)
        for f in ("abs", "ceil", "floor", "sqrt", "exp", "ln", "log2", "log10", "sgn", "absent")
    },
    **{f: ((V,), 0, V) for f in ("sort", "sort_desc", "timestamp")},
    "round": ((V, S), 1, V),
    "clamp": ((V, S, S), 0, V),
    "clamp_min": ((V, S), 0, V),
    "clamp_max": ((V, S), 0, V),
    "label_replace": ((V, STR, STR, STR, STR), 0, V),
    "time": ((), 0, S),
    "vector": ((S,), 0, V),
    "scalar": ((V,), 0, S),
}
#: the functions that take a counter (and are the only way to use one)
COUNTER_FUNCS = {"rate", "irate", "increase"}
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
SET_OPS = {"and", "or", "unless"}
COMPARISONS = {"==", "!=", ">", "<", ">=", "<="}
PRECEDENCE = [
    {"or"},
    {"and", "unless"},
    COMPARISONS,
    {"+", "-"},
    {"*", "/", "%", "atan2"},
]

TOKEN = re.compile(
    r"""
    (?P<ws>\s+|\#[^\n]*)
  | (?P<duration>(?:\d+(?:ms|s|m|h|d|w|y))+)(?![\w.])
  | (?P<number>0x[0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|Inf\b|NaN\b)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*'|`[^`]*`)
  | (?P<ident>[a-zA-Z_:][a-zA-Z0-9_:]*)
  | (?P<op>==|!=|>=|<=|=~|!~|[-+*/%^=<>(){}\[\],:@])
    """,
    re.VERBOSE,
)


class PromQLError(ValueError):
    pass


@dataclass
class Selector:
    name: str
    matchers: list[tuple[str, str, str]]
    range: str | None = None


@dataclass
class Node:
    """Anything but a selector: kind is num, str, call, agg, binary, unary, paren, subquery."""

    kind: str
    op: str = ""
    args: list[Any] = field(default_factory=list)
    grouping: tuple[str, list[str]] | None = None  # ("by"|"without"|"on"|"ignoring", labels)
    group_side: tuple[str, list[str]] | None = None  # ("group_left"|"group_right", labels)
    value: str = ""


def tokenize(src: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    while pos < len(src):
        m = TOKEN.match(src, pos)
        if m is None:
            raise PromQLError(f"unexpected character {src[pos]!r} at {pos} in {src!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            out.append((kind, m.group()))
    out.append(("eof", ""))
    return out


class Parser:
    def __init__(self, src: str) -> None:
        self.src = src
        self.toks = tokenize(src)
        self.i = 0

    def peek(self, k: int = 0) -> tuple[str, str]:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> tuple[str, str]:
        t = self.toks[self.i]
        self.i += 1
        return t

    def expect(self, text: str) -> None:
        kind, val = self.take()
        if val != text or kind not in ("op", "ident"):
            raise PromQLError(f"expected {text!r}, got {val or 'end'!r} in {self.src!r}")

    def parse(self) -> Any:
        node = self.expr(0)
        if self.peek()[0] != "eof":
            raise PromQLError(f"unexpected {self.peek()[1]!r} in {self.src!r}")
        return node

    def expr(self, level: int) -> Any:
        if level == len(PRECEDENCE):
            return self.unary()
        lhs = self.expr(level + 1)
        while self.peek()[1] in PRECEDENCE[level] and self.peek()[0] in ("op", "ident"):
            op = self.take()[1]
            node = Node("binary", op=op)
            if self.peek()[1] == "bool":
                if op not in COMPARISONS:
                    raise PromQLError(f"bool after {op} in {self.src!r}")
                self.take()
                node.value = "bool"
            if self.peek()[1] in ("on", "ignoring"):
                node.grouping = (self.take()[1], self.labels())
            if self.peek()[1] in ("group_left", "group_right"):
                if node.grouping is None:
                    raise PromQLError(f"{self.peek()[1]} without on/ignoring in {self.src!r}")
                side = self.take()[1]
                node.group_side = (side, self.labels() if self.peek()[1] == "(" else [])
            node.args = [lhs, self.expr(level + 1)]
            lhs = node
        return lhs

    def unary(self) -> Any:
        if self.peek()[1] in ("-", "+") and self.peek()[0] == "op":
            op = self.take()[1]
            return Node("unary", op=op, args=[self.unary()])
        base = self.postfix(self.primary())
        if self.peek()[1] == "^":
            self.take()
            return Node("binary", op="^", args=[base, self.unary()])
        return base

    def labels(self) -> list[str]:
        self.expect("(")
        out: list[str] = []
        while self.peek()[1] != ")":
            kind, val = self.take()
            if kind != "ident" or not re.fullmatch(r"[a-zA-Z_]\w*", val):
                raise PromQLError(f"bad label name {val!r} in {self.src!r}")
            out.append(val)
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != ")":
                raise PromQLError(f"expected , or ) after {val!r} in {self.src!r}")
        self.take()
        return out

    def matchers(self) -> list[tuple[str, str, str]]:
        self.expect("{")
        out = []
        while self.peek()[1] != "}":
            kind, label = self.take()
            if kind != "ident" or not re.fullmatch(r"[a-zA-Z_]\w*", label):
                raise PromQLError(f"bad label name {label!r} in {self.src!r}")
            kind, op = self.take()
            if op not in ("=", "!=", "=~", "!~"):
                raise PromQLError(f"bad matcher operator {op!r} in {self.src!r}")
            kind, val = self.take()
            if kind != "string":
                raise PromQLError(f"label value must be a string, got {val!r} in {self.src!r}")
            out.append((label, op, unquote(val)))
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != "}":
                raise PromQLError(f"expected , or }} in {self.src!r}")
        self.take()
        return out

    def primary(self) -> Any:
        kind, val = self.peek()
        if val == "(" and kind == "op":
            self.take()
            inner = self.expr(0)
            self.expect(")")
            return Node("paren", args=[inner])
        if kind == "number":
            self.take()
            return Node("num", value=val)
        if kind == "string":
            self.take()
            return Node("str", value=unquote(val))
        if val == "{":
            raise PromQLError(f"selector without a metric name in {self.src!r}")
        if kind != "ident":
            raise PromQLError(f"unexpected {val or 'end'!r} in {self.src!r}")
        if val in AGGREGATIONS:
            return self.aggregation()
        if val in KEYWORDS or val in SET_OPS:
            raise PromQLError(f"unexpected keyword {val!r} in {self.src!r}")
        self.take()
        if self.peek()[1] == "(":
            if val not in FUNCTIONS:
                raise PromQLError(f"unknown function {val!r} in {self.src!r}")
            return Node("call", op=val, args=self.call_args())
        sel = Selector(val, [])
        if self.peek()[1] == "{":
            sel.matchers = self.matchers()
        return sel

    def call_args(self) -> list[Any]:
        self.expect("(")
        args = []
        while self.peek()[1] != ")":
            args.append(self.expr(0))
            if self.peek()[1] == ",":
                self.take()
            elif self.peek()[1] != ")":
                raise PromQLError(f"expected , or ) in {self.src!r}")
        self.take()
        return args

    def aggregation(self) -> Node:
        node = Node("agg", op=self.take()[1])
        if self.peek()[1] in ("by", "without"):
            node.grouping = (self.take()[1], self.labels())
        args = self.call_args()
        if self.peek()[1] in ("by", "without"):
            if node.grouping is not None:
                raise PromQLError(f"two groupings in {self.src!r}")
            node.grouping = (self.take()[1], self.labels())
        want = 2 if node.op in AGG_PARAM else 1
        if len(args) != want:
            raise PromQLError(f"{node.op} takes {want} argument(s) in {self.src!r}")
        node.args = args
        return node

    def postfix(self, node: Any) -> Any:
        while True:
            val = self.peek()[1]
            if val == "[":
                self.take()
                kind, rng = self.take()
                if kind != "duration":
                    raise PromQLError(f"expected a duration, got {rng!r} in {self.src!r}")
                if self.peek()[1] == ":":
                    self.take()
                    step = self.take()[1] if self.peek()[0] == "duration" else ""
                    self.expect("]")
                    node = Node("subquery", value=f"{rng}:{step}", args=[node])
                    continue
                self.expect("]")
                if not isinstance(node, Selector) or node.range is not None:
                    raise PromQLError(f"a range [{rng}] needs a plain selector in {self.src!r}")
                node.range = rng
            elif val == "offset":
                self.take()
                if self.peek()[1] == "-":
                    self.take()
                if self.take()[0] != "duration":
                    raise PromQLError(f"offset needs a duration in {self.src!r}")
            else:
                return node


def unquote(tok: str) -> str:
    if tok[0] == "`":
        return tok[1:-1]
    return re.sub(r"\\(.)", r"\1", tok[1:-1])


# ---------------------------------------------------------------------------------------------
# the rules


@dataclass
class Result:
    type: str
    labels: frozenset[str]


class Checker:
    """Types and output labels of an expression, and every rule broken on the way."""

    def __init__(self) -> None:
        self.problems: list[str] = []
        self.metrics: set[str] = set()

    def check(
        self, node: Any, *, in_counter_func: bool = False, in_quantile: bool = False
    ) -> Result:
        if isinstance(node, Selector):
            return self.selector(node, in_counter_func, in_quantile)
        if node.kind == "num":
            return Result(S, frozenset())
        if node.kind == "str":
            return Result(STR, frozenset())
        if node.kind in ("paren", "unary"):
            r = self.check(node.args[0], in_quantile=in_quantile)
            if node.kind == "unary" and r.type not in (S, V):
                self.problems.append(f"unary {node.op} on a {r.type}")
            return r
        if node.kind == "subquery":
            r = self.check(node.args[0], in_quantile=in_quantile)
            if r.type != V:
                self.problems.append("a subquery needs an instant vector")
            return Result(M, r.labels)
        if node.kind == "call":
            return self.call(node, in_quantile)
        if node.kind == "agg":
            return self.agg(node, in_quantile)
        return self.binary(node, in_quantile)

    def selector(self, sel: Selector, in_counter_func: bool, in_quantile: bool) -> Result:
        self.metrics.add(sel.name)
        typ = M if sel.range else V
        s = SERIES.get(sel.name)
        if s is None:
            self.problems.append(f"{sel.name}: no such series in the worker's registry")
            return Result(typ, frozenset())
        labels = s.labels | TARGET_LABELS
        if s.kind in ("counter", "bucket", "hist") and not in_counter_func:
            self.problems.append(f"{sel.name}: a counter outside rate()/increase()/irate()")
        if s.kind in ("gauge", "synthetic") and in_counter_func:
            self.problems.append(f"{sel.name}: rate()/increase() on a gauge")
        if s.kind == "bucket" and not in_quantile:
            self.problems.append(f"{sel.name}: histogram buckets outside histogram_quantile()")
        for label, op, value in sel.matchers:
            if label not in labels:
                self.problems.append(f"{sel.name}: no label {label!r}")
                continue
            known = CLOSED.get((s.family, label))
            if known is None:
                continue
            if op in ("=", "!="):
                if value not in known:
                    self.problems.append(f"{sel.name}: {label}={value!r} is never exported")
                continue
            try:
                rx = re.compile(value)
            except re.error as exc:
                self.problems.append(f"{sel.name}: bad regex {value!r}: {exc}")
                continue
            if not any(rx.fullmatch(v) for v in known):
                self.problems.append(f"{sel.name}: {label}=~{value!r} matches no exported value")
            for alt in value.strip("()").split("|"):
                if re.fullmatch(r"[\w]+", alt) and alt not in known:
                    self.problems.append(f"{sel.name}: {label} value {alt!r} is never exported")
        return Result(typ, labels)

    def call(self, node: Node, in_quantile: bool) -> Result:
        types, optional, result = FUNCTIONS[node.op]
        if not len(types) - optional <= len(node.args) <= len(types):
            self.problems.append(f"{node.op}() takes {len(types)} argument(s)")
            return Result(result, frozenset())
        out: list[Result] = []
        for want, arg in zip(types, node.args, strict=False):
            r = self.check(
                arg,
                in_counter_func=node.op in COUNTER_FUNCS,
                in_quantile=in_quantile or node.op == "histogram_quantile",
            )
            if r.type != want:
                self.problems.append(f"{node.op}(): a {r.type} where a {want} is expected")
            out.append(r)
        vec = next((r for r in out if r.type in (V, M)), None)
        labels = vec.labels if vec is not None else frozenset()
        if node.op == "histogram_quantile":
            if "le" not in labels:
                self.problems.append("histogram_quantile(): the aggregation dropped 'le'")
            labels -= {"le"}
        if node.op == "label_replace" and isinstance(node.args[1], Node):
            labels |= {node.args[1].value}
        if node.op in ("time", "vector", "scalar"):
            labels = frozenset()
        return Result(result, labels)

    def agg(self, node: Node, in_quantile: bool) -> Result:
        if node.op in AGG_PARAM:
            p = self.check(node.args[0])
            if p.type != (STR if node.op == "count_values" else S):
                self.problems.append(f"{node.op}: bad parameter")
        r = self.check(node.args[-1], in_quantile=in_quantile)
        if r.type != V:
            self.problems.append(f"{node.op}: needs an instant vector, got a {r.type}")
        if node.grouping is None:
            labels: frozenset[str] = frozenset()
        else:
            how, names = node.grouping
            for n in names:
                if n not in r.labels:
                    self.problems.append(f"{node.op} {how} ({n}): no such label in the argument")
            labels = frozenset(names) if how == "by" else r.labels - set(names)
        if node.op in ("topk", "bottomk", "limitk", "limit_ratio"):
            labels = r.labels
        return Result(V, labels)

    def binary(self, node: Node, in_quantile: bool) -> Result:
        lhs = self.check(node.args[0], in_quantile=in_quantile)
        rhs = self.check(node.args[1], in_quantile=in_quantile)
        for side in (lhs, rhs):
            if side.type not in (S, V):
                self.problems.append(f"operator {node.op} on a {side.type}")
        if node.op in SET_OPS:
            if lhs.type != V or rhs.type != V:
                self.problems.append(f"{node.op} needs two instant vectors")
            return Result(V, lhs.labels | rhs.labels if node.op == "or" else lhs.labels)
        if lhs.type == S and rhs.type == S:
            if node.op in COMPARISONS and node.value != "bool":
                self.problems.append(f"scalar {node.op} scalar needs bool")
            return Result(S, frozenset())
        if lhs.type != V or rhs.type != V:
            if node.grouping is not None:
                self.problems.append(f"{node.grouping[0]}() between a vector and a scalar")
            return Result(V, lhs.labels if lhs.type == V else rhs.labels)
        # vector op vector: the label sets must match, or the result is empty
        how, names = node.grouping or ("ignoring", [])
        for n in names:
            if n not in lhs.labels and n not in rhs.labels:
                self.problems.append(f"{how} ({n}): no such label on either side")
        if how == "on":
            lkey, rkey = lhs.labels & set(names), rhs.labels & set(names)
        else:
            lkey, rkey = lhs.labels - set(names), rhs.labels - set(names)
        if node.group_side is None:
            if lkey != rkey:
                self.problems.append(
                    f"{node.op}: one-to-one match of {sorted(lhs.labels)} with "
                    f"{sorted(rhs.labels)} gives nothing (use on/ignoring/group_left)"
                )
            labels = frozenset(names) & lhs.labels if how == "on" else lkey
            return Result(V, labels)
        side, extra = node.group_side
        many, one = (lhs, rhs) if side == "group_left" else (rhs, lhs)
        if not (rkey if side == "group_left" else lkey) <= many.labels:
            self.problems.append(f"{side}: the 'one' side has labels the 'many' side lacks")
        return Result(V, many.labels | (frozenset(extra) & one.labels))


def lint(expr: str, legend: str = "") -> list[str]:
    """Every rule broken by a (variables already expanded) query, and its legend."""
    try:
        tree = Parser(expr).parse()
    except PromQLError as exc:
        return [f"parse: {exc}"]
    c = Checker()
    r = c.check(tree)
    if r.type not in (S, V):
        c.problems.append(f"a panel query must give an instant vector or scalar, not a {r.type}")
    for name in re.findall(r"\{\{\s*(\w+)\s*\}\}", legend):
        if name not in r.labels:
            c.problems.append(f"legend {{{{{name}}}}}: the result has no label {name!r}")
    return c.problems


# ---------------------------------------------------------------------------------------------
# template variables


BUILTIN = {"__rate_interval": "1m", "__interval": "1m", "__range": "6h", "__range_s": "21600"}
SAMPLE_VALUES = {"job": ["repmon-worker"], "instance": ["10.0.0.7:6066", "worker-2:6066"]}
VAR_REF = re.compile(r"\$(\w+)|\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]")


def variable_values(var: dict[str, Any]) -> list[str]:
    """Values a variable can take (closed label sets where the worker defines them)."""
    if var["type"] == "custom":
        return [v.strip() for v in str(var["query"]).split(",") if v.strip()]
    if var["type"] == "query":
        m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", str(var["query"]).strip())
        assert m, f"{var['name']}: not a label_values(metric, label) query: {var['query']!r}"
        label = m.group(2)
        metric = re.match(r"[a-zA-Z_:][\w:]*", m.group(1).strip())
        series = SERIES.get(metric.group()) if metric else None
        family = series.family if series else ""
        if (family, label) in CLOSED:
            return sorted(CLOSED[(family, label)])
        return SAMPLE_VALUES.get(label, [f"sample-{label}"])
    raise AssertionError(f"{var['name']}: no sample values for a {var['type']} variable")


def expand(text: str, variables: dict[str, dict[str, Any]]) -> str:
    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name in BUILTIN:
            return BUILTIN[name]
        var = variables.get(name)
        assert var is not None, f"${name}: no such variable in {text!r}"
        values = variable_values(var)
        assert values, f"${name} has no value"
        if var.get("multi") or var.get("includeAll"):
            # Grafana's Prometheus regex escaping of each value, joined as (a|b)
            esc = [re.sub(r"([\\^$*+?.()|\[\]{}])", r"\\\\\1", v) for v in values]
            return "(" + "|".join(esc) + ")"
        return values[0]

    return VAR_REF.sub(one, text)


def multi_value_uses(expr: str, variables: dict[str, dict[str, Any]]) -> list[str]:
    """A multi-value (or All) variable expands to a regex: it must sit in a =~ or !~ matcher."""
    bad = []
    for name, var in variables.items():
        if not (var.get("multi") or var.get("includeAll")):
            continue
        for m in re.finditer(r'(=~|!~|=|!=)\s*"[^"]*\$\{?' + name + r"\b", expr):
            if m.group(1) in ("=", "!="):
                bad.append(f"${name} is multi-valued but used with {m.group(1)}")
    return bad


# ---------------------------------------------------------------------------------------------
# walking the dashboards


def panels(d: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for p in d.get("panels", []):
        yield p
        yield from p.get("panels", [])  # a collapsed row holds its panels


@dataclass
class Query:
    where: str
    expr: str
    legend: str = ""


def queries(d: dict[str, Any]) -> Iterator[Query]:
    for p in panels(d):
        for t in p.get("targets", []):
            yield Query(
                f"{d['uid']} panel {p['id']} {p.get('title')!r}",
                t["expr"],
                t.get("legendFormat", ""),
            )
    for a in d.get("annotations", {}).get("list", []):
        if "expr" in a:
            # title, text and tags name labels of the result, like a legend
            tags = "".join(f"{{{{{k}}}}}" for k in a.get("tagKeys", "").split(",") if k)
            label_refs = a.get("titleFormat", "") + a.get("textFormat", "") + tags
            yield Query(f"{d['uid']} annotation {a['name']!r}", a["expr"], label_refs)


def variables_of(d: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v for v in d.get("templating", {}).get("list", [])}


# ---------------------------------------------------------------------------------------------
# (1) regenerating equals the committed JSON


def test_committed_json_is_what_the_generator_makes(generator: ModuleType) -> None:
    want = generator.generate()
    have = {p.name: p.read_text() for p in DASHBOARDS.glob("*.json")}
    assert set(have) == set(want), "run: python grafana/generate.py"
    for name, body in want.items():
        assert have[name] == body, f"{name} is out of date: run python grafana/generate.py"


def test_check_mode_passes_on_the_committed_files_and_fails_on_a_change(
    generator: ModuleType, tmp_path: Path
) -> None:
    assert generator.main(["--check"]) == 0
    out = tmp_path / "dashboards"
    assert generator.main(["--out", str(out)]) == 0
    assert generator.main(["--check", "--out", str(out)]) == 0
    # a hand edit of the JSON
    f = out / "overview.json"
    f.write_text(f.read_text().replace("repmon / Overview", "edited by hand"))
    assert generator.main(["--check", "--out", str(out)]) == 1
    generator.main(["--out", str(out)])
    # a JSON file the generator does not make (Grafana would load it too)
    (out / "stray.json").write_text("{}")
    assert generator.main(["--check", "--out", str(out)]) == 1
    # a missing one
    generator.main(["--out", str(out)])
    (out / "pipeline.json").unlink()
    assert generator.main(["--check", "--out", str(out)]) == 1


def test_the_check_runs_as_a_script() -> None:
    r = subprocess.run(
        [sys.executable, str(GRAFANA / "generate.py"), "--check"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=120,
    )
    assert r.returncode == 0, r.stderr


def test_generating_twice_gives_the_same_bytes(generator: ModuleType) -> None:
    assert generator.generate() == generator.generate()


# ---------------------------------------------------------------------------------------------
# (2) every query parses and uses only what the worker exports


def all_queries() -> list[tuple[str, str, str]]:
    out = []
    for d in committed().values():
        variables = variables_of(d)
        for q in queries(d):
            out.append((q.where, expand(q.expr, variables), q.legend))
    return out


def test_there_are_queries_to_check() -> None:
    qs = all_queries()
    assert len(qs) > 40
    # each dashboard draws on the worker's registry
    for d in committed().values():
        assert any(True for _ in queries(d)), d["uid"]


@pytest.mark.parametrize(("where", "expr", "legend"), all_queries(), ids=lambda x: str(x)[:60])
def test_query_parses_and_uses_only_exported_series(where: str, expr: str, legend: str) -> None:
    assert lint(expr, legend) == [], f"{where}: {expr}"


def test_every_query_uses_repmon_series() -> None:
    used: set[str] = set()
    for _, expr, _ in all_queries():
        c = Checker()
        c.check(Parser(expr).parse())
        used |= c.metrics
    assert used <= set(SERIES)
    assert {SERIES[n].family for n in used if n != "up"} >= {
        "repmon_events",
        "repmon_events_rejected",
        "repmon_provider_events",
        "repmon_provider_rate_ratio",
        "repmon_incidents_open",
        "repmon_incidents_opened",
        "repmon_consumer_lag_messages",
        "repmon_tick_duration_seconds",
        "repmon_state_restores",
        "repmon_snapshots_written",
    }
    # every family used is documented in docs/metrics.md
    doc = (ROOT / "docs/metrics.md").read_text()
    for n in used - {"up"}:
        assert f"`{n}`" in doc or f"`{SERIES[n].family}`" in doc, n


def test_ratio_panels_are_percentunit() -> None:
    for d in committed().values():
        for p in panels(d):
            exprs = [t["expr"] for t in p.get("targets", [])]
            if any("_ratio" in e for e in exprs):
                unit = p["fieldConfig"]["defaults"].get("unit")
                assert unit == "percentunit", f"{d['uid']} panel {p['title']!r}: unit {unit}"


def test_promtool_parses_every_query(tmp_path: Path) -> None:
    """The real PromQL parser (promtool, Debian package prometheus; ./dev test installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: apt-get install prometheus (./dev test installs it)")
    rules = [
        {"record": f"repmon_dashboard:check_{i}", "expr": expr}
        for i, (_, expr, _) in enumerate(all_queries())
    ]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    r = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stdout + r.stderr
    # and it does reject a broken query (this check can fail)
    path.write_text(
        yaml.safe_dump(
            {"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum(rate(a[5m])"}]}]}
        )
    )
    r = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, timeout=120)
    assert r.returncode != 0


BAD_QUERIES = [
    ("rate(repmon_invented_total[5m])", "", "no such series"),
    ("repmon_events_created", "", "no such series"),
    ("sum(repmon_events_total)", "", "counter outside"),
    ("rate(repmon_active_scopes[5m])", "", "on a gauge"),
    ("sum by (providers) (repmon_provider_attempts_15m)", "", "no such label"),
    ('repmon_provider_rate_ratio{rate="delivered"}', "", "never exported"),
    ('repmon_provider_events_total{outcome=~"delivered|bounce"}', "", "never exported"),
    ('repmon_incidents_open{scope="ip:1"}', "", "no label 'scope'"),
    (
        "histogram_quantile(0.9, sum by (kind) (rate(repmon_snapshot_duration_seconds_bucket[5m])))",
        "",
        "dropped 'le'",
    ),
    ("sum(rate(repmon_tick_duration_seconds_bucket[5m]))", "", "outside histogram_quantile"),
    ("sum(rate(repmon_events_total[5m])", "", "parse"),
    ("rate(repmon_events_total)", "", "a vector where a matrix"),
    ("repmon_active_scopes[5m]", "", "not a matrix"),
    ('{job="x"}', "", "without a metric name"),
    ("sum(repmon_provider_attempts_15m)", "{{provider}}", "legend"),
    (
        "sum by (kind) (rate(repmon_events_total[5m])) / sum(rate(repmon_events_total[5m]))",
        "",
        "one-to-one",
    ),
    ("foo_bar(repmon_active_scopes)", "", "unknown function"),
]


@pytest.mark.parametrize(("expr", "legend", "problem"), BAD_QUERIES)
def test_the_checker_rejects_wrong_queries(expr: str, legend: str, problem: str) -> None:
    problems = lint(expr, legend)
    assert any(problem in p for p in problems), problems


def test_the_checker_accepts_right_queries() -> None:
    for expr, legend in [
        ('max by (provider) (repmon_provider_rate_ratio{rate="delivery"})', "{{provider}}"),
        (
            'sum by (outcome) (rate(repmon_provider_events_total{outcome=~"delivered|deferred"}[1m]))'
            " / ignoring (outcome) group_left sum(rate(repmon_provider_events_total[1m]))",
            "{{outcome}}",
        ),
        (
            "histogram_quantile(0.99, sum by (le, instance) "
            "(rate(repmon_tick_duration_seconds_bucket[5m])))",
            "{{instance}}",
        ),
        ("time() - max by (instance) (repmon_watermark_timestamp_seconds > 0)", "{{instance}}"),
        ('up{job="repmon-worker"}', "{{instance}}"),
    ]:
        assert lint(expr, legend) == [], expr


# ---------------------------------------------------------------------------------------------
# (3) uids, the data source, template variables, links, provisioning


def test_uids_are_the_stable_ones_and_unique() -> None:
    ds = committed()
    assert {name: d["uid"] for name, d in ds.items()} == EXPECTED_UIDS
    assert len({d["uid"] for d in ds.values()}) == len(ds)
    assert len({d["title"] for d in ds.values()}) == len(ds)
    for d in ds.values():
        assert re.fullmatch(r"[a-z0-9-]{1,40}", d["uid"]), d["uid"]
        assert d.get("id") is None  # Grafana assigns ids; a fixed one would clash
        assert "repmon" in d["tags"]


def test_panel_ids_and_ref_ids_are_unique() -> None:
    for d in committed().values():
        ids = [p["id"] for p in panels(d)]
        assert len(ids) == len(set(ids)), d["uid"]
        assert all(isinstance(i, int) and i > 0 for i in ids), d["uid"]
        for p in panels(d):
            refs = [t["refId"] for t in p.get("targets", [])]
            assert len(refs) == len(set(refs)) and all(refs), (d["uid"], p["title"])


def provisioned_datasource() -> dict[str, Any]:
    doc = yaml.safe_load((PROVISIONING / "datasources/prometheus.yml").read_text())
    (ds,) = [d for d in doc["datasources"] if d["type"] == "prometheus"]
    return dict(ds)


def test_every_dashboard_has_the_datasource_variable_and_uses_it() -> None:
    prov = provisioned_datasource()
    for d in committed().values():
        var = variables_of(d).get(DS_VAR)
        assert var is not None, f"{d['uid']}: no ${DS_VAR} variable"
        assert var["type"] == "datasource" and var["query"] == "prometheus"
        assert var["current"]["value"] == prov["uid"], "the default is the provisioned uid"
        for p in panels(d):
            if p["type"] in ("row", "text"):
                continue
            assert p["datasource"] == {"type": "prometheus", "uid": DS_REF}, p["title"]
            assert p["targets"], f"{d['uid']}: panel {p['title']!r} has no query"
            for t in p["targets"]:
                assert t["datasource"]["uid"] == DS_REF, p["title"]
        for a in d.get("annotations", {}).get("list", []):
            assert a["datasource"]["uid"] == DS_REF, a["name"]
        for v in variables_of(d).values():
            if v["type"] == "query":
                assert v["datasource"]["uid"] == DS_REF, v["name"]


def test_template_variables_are_defined_and_expand() -> None:
    seen_provider = False
    for d in committed().values():
        variables = variables_of(d)
        for v in variables.values():
            if v["type"] == "query":
                # label_values(<selector>, label): a real series with that label
                m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", v["query"])
                assert m, v["query"]
                sel = Parser(expand(m.group(1), variables)).parse()
                assert isinstance(sel, Selector) and sel.name in SERIES, v["query"]
                assert m.group(2) in SERIES[sel.name].labels | TARGET_LABELS, v["query"]
                # its matchers name real labels and values (a counter is fine here: no rate)
                c = Checker()
                c.selector(sel, SERIES[sel.name].kind in ("counter", "bucket", "hist"), True)
                assert c.problems == [], v["query"]
            if v["type"] != "datasource":
                assert variable_values(v), v["name"]
            seen_provider |= v["name"] == "provider"
        texts = [q.expr for q in queries(d)] + [t for p in panels(d) for t in (p.get("title", ""),)]
        for text in texts:
            for m in VAR_REF.finditer(text):
                name = m.group(1) or m.group(2) or m.group(3)
                assert name in variables or name in BUILTIN, f"{d['uid']}: ${name} in {text!r}"
            assert "$" not in expand(text, variables), text
        for q in queries(d):
            assert multi_value_uses(q.expr, variables) == [], q.where
    assert seen_provider, "the provider drill-down has a provider variable"


def test_the_provider_variable_comes_from_label_values() -> None:
    d = committed()["provider.json"]
    v = variables_of(d)["provider"]
    assert v["type"] == "query"
    assert v["query"].startswith("label_values(") and v["query"].endswith(", provider)")
    assert all('provider="$provider"' in q.expr for q in queries(d) if "provider" in q.expr)


def test_expansion_catches_an_undefined_variable_and_a_multi_value_misuse() -> None:
    variables = {"type": {"name": "type", "type": "custom", "query": "a,b", "multi": True}}
    with pytest.raises(AssertionError):
        expand('repmon_incidents_open{type=~"$nope"}', variables)
    assert multi_value_uses('repmon_incidents_open{type="$type"}', variables)
    assert not multi_value_uses('repmon_incidents_open{type=~"$type"}', variables)


def test_data_links_point_at_existing_dashboards_and_variables() -> None:
    ds = committed()
    by_uid = {d["uid"]: d for d in ds.values()}
    n = 0
    for d in ds.values():
        for p in panels(d):
            links = p.get("fieldConfig", {}).get("defaults", {}).get("links", [])
            for link in links:
                m = re.match(r"/d/([\w-]+)(?:/[\w-]+)?\?(.*)$", link["url"])
                assert m, link["url"]
                target = by_uid.get(m.group(1))
                assert target is not None, link["url"]
                for var in re.findall(r"var-(\w+)=", m.group(2)):
                    assert var in variables_of(target), link["url"]
                n += 1
    assert n > 0


def test_provisioning_loads_exactly_the_generated_dashboards() -> None:
    compose = yaml.safe_load(COMPOSE.read_text())
    vols = compose["services"]["grafana"]["volumes"]
    mounts = {}
    for v in vols:
        host, container = v.split(":")[:2]
        mounts[container] = (COMPOSE.parent / host).resolve()
    prov_dir = mounts["/etc/grafana/provisioning"]
    assert prov_dir == PROVISIONING.resolve()
    doc = yaml.safe_load((prov_dir / "dashboards/repmon.yml").read_text())
    (provider,) = doc["providers"]
    assert provider["type"] == "file"
    path = provider["options"]["path"]
    host_dir = mounts[path]
    # Grafana walks the directory recursively and loads every *.json under it
    loaded = sorted(p.resolve() for p in host_dir.rglob("*.json"))
    assert loaded == sorted(p.resolve() for p in DASHBOARDS.glob("*.json"))
    assert len(loaded) == len(EXPECTED_UIDS)
    # the data source the dashboards default to is the provisioned one
    prov = provisioned_datasource()
    assert prov["uid"] == "prometheus"
    assert prov["url"].startswith("http://prometheus:")
