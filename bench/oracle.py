"""Agreement of the classifier with an external oracle: sisimai's expected reasons (issue 15).

The oracle, ``../shared/corpora/sisimai/replies.jsonl`` beside the repository (or the file named
by ``REPMON_ORACLE_CORPUS``), holds SMTP replies extracted from the bounce emails of sisimai's
public test corpus, each with the reason sisimai's tests expect (its README: fields, provenance,
BSD-2 licence). It is not part of the project: a machine without it skips the measurement
(``tests/test_oracle.py`` then skips, or fails when ``REPMON_REQUIRE_ORACLE=1``).

Every reply is classified as a caller with the same information would: the codes and the text,
the provider / MX operator resolved from ``mx_host`` (as ``repmon classify`` does), and the
context fields the corpus carries: ``smtp_command`` (the SMTP phase) and ``action`` (the DSN
Action, passed as ``dsn_action``). Agreement is on the reason alone (sisimai has no class).

Run from the repository root: ``.venv/bin/python bench/oracle.py`` prints agreement overall, on
the replies whose text suffices (``text_insufficient`` false), per expected reason, per source,
and the confusions; ``--list`` adds every disagreement; ``--check`` exits 1 below the targets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.classify.classifier import Classifier  # noqa: E402
from models.ingest.providers import OTHER, ProviderResolver  # noqa: E402

#: docs/classification.md, "Agreement with an external oracle"
TARGET_ALL = 0.75
TARGET_SUFFICIENT = 0.90
DEFAULT_CORPUS = ROOT.parent / "shared" / "corpora" / "sisimai" / "replies.jsonl"
ENV_CORPUS = "REPMON_ORACLE_CORPUS"


def corpus_path() -> Path:
    """The oracle file: ``$REPMON_ORACLE_CORPUS`` if set, else the shared corpus beside the repo."""
    env = os.environ.get(ENV_CORPUS, "").strip()
    return Path(env) if env else DEFAULT_CORPUS


def load(path: Path) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                row = json.loads(line)
                row["_line"] = n
                rows.append(row)
    return rows


@dataclass
class Miss:
    line: int
    expected: str
    got: str
    rule: str
    source: str
    text_insufficient: bool
    response: str


@dataclass
class Report:
    total: int = 0
    agree: int = 0
    sufficient: int = 0
    agree_sufficient: int = 0
    #: expected reason -> [agree, total]
    by_reason: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    #: source (sisimai module) -> [agree, total]
    by_source: dict[str, list[int]] = field(default_factory=lambda: defaultdict(lambda: [0, 0]))
    #: (expected, got) -> count
    confusions: Counter[tuple[str, str]] = field(default_factory=Counter)
    misses: list[Miss] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else 0.0

    @property
    def rate_sufficient(self) -> float:
        return self.agree_sufficient / self.sufficient if self.sufficient else 0.0

    def meets_targets(self) -> bool:
        return self.rate >= TARGET_ALL and self.rate_sufficient >= TARGET_SUFFICIENT


def evaluate(rows: list[dict[str, Any]], classifier: Classifier | None = None) -> Report:
    c = classifier or Classifier()
    resolver = ProviderResolver()
    rep = Report()
    for row in rows:
        provider = operator = None
        mx = row.get("mx_host") or ""
        if mx:
            p, o = resolver.resolve("", mx.lower())
            provider = p if p != OTHER else None
            operator = o if o != OTHER else None
        res = c.classify(
            row.get("smtp_code"),
            row.get("enhanced_code"),
            row.get("response") or "",
            provider,
            operator,
            smtp_command=row.get("smtp_command"),
            dsn_action=row.get("action"),
        )
        exp = str(row["expected_reason"])
        ok = res.reason == exp
        insufficient = bool(row.get("text_insufficient"))
        rep.total += 1
        rep.agree += ok
        if not insufficient:
            rep.sufficient += 1
            rep.agree_sufficient += ok
        for table, key in ((rep.by_reason, exp), (rep.by_source, str(row.get("source")))):
            table[key][0] += ok
            table[key][1] += 1
        if not ok:
            rep.confusions[(exp, res.reason)] += 1
            rep.misses.append(
                Miss(
                    int(row.get("_line", 0)),
                    exp,
                    res.reason,
                    res.rule,
                    str(row.get("source")),
                    insufficient,
                    str(row.get("response") or ""),
                )
            )
    return rep


def format_report(rep: Report, *, misses: bool = False) -> str:
    out = [
        f"oracle agreement (reason): {rep.rate:.1%} of {rep.total} replies "
        f"(target {TARGET_ALL:.0%}); text sufficient: {rep.rate_sufficient:.1%} of "
        f"{rep.sufficient} (target {TARGET_SUFFICIENT:.0%})",
        "",
        "| expected reason | replies | agree | agreement |",
        "|---|---:|---:|---:|",
    ]
    for k in sorted(rep.by_reason):
        ok, tot = rep.by_reason[k]
        out.append(f"| {k} | {tot} | {ok} | {ok / tot:.0%} |")
    out += ["", "| source | replies | agree | agreement |", "|---|---:|---:|---:|"]
    for k in sorted(rep.by_source):
        ok, tot = rep.by_source[k]
        out.append(f"| {k} | {tot} | {ok} | {ok / tot:.0%} |")
    out += ["", "confusions (expected -> got):"]
    for (e, g), n in rep.confusions.most_common():
        out.append(f"  {n} x {e} -> {g}")
    if misses:
        out += ["", "disagreements (* = text insufficient):"]
        for m in rep.misses:
            star = "*" if m.text_insufficient else " "
            out.append(
                f"  line {m.line}{star} {m.expected} -> {m.got} ({m.rule}) [{m.source}] "
                f"{m.response[:160]}"
            )
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpus", type=Path, default=None, help="oracle JSON lines file")
    ap.add_argument("--list", action="store_true", help="list every disagreement")
    ap.add_argument("--check", action="store_true", help="exit 1 when below the targets")
    a = ap.parse_args()
    path = a.corpus or corpus_path()
    if not path.is_file():
        print(f"oracle corpus not found: {path} (set {ENV_CORPUS})", file=sys.stderr)
        return 1 if os.environ.get("REPMON_REQUIRE_ORACLE") == "1" else 0
    rep = evaluate(load(path))
    print(f"corpus: {path}")
    print(format_report(rep, misses=a.list))
    if a.check and not rep.meets_targets():
        print("below target", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
