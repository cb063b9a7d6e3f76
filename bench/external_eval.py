"""repmon on independently written traffic (``bench/external_scenarios.py``), as replay sees it.

    .venv/bin/python bench/external_eval.py                   # every scenario, seed 1, log order
    .venv/bin/python bench/external_eval.py --order sorted --only microsoft-outage
    .venv/bin/python bench/external_eval.py --shapes clean    # plain canonical fields

The scenarios were written by an author who read only docs/events.md and docs/incidents.md, not
the code (see the generator's docstring). Each file goes through ``repmon replay``'s loop with its
defaults. Per scenario: the first opening of each expected incident (type equal, scope the
expected one or one of ``also_ok``, opened within ``[onset, end + 30 min]``), its delay, whether
it was on the expected scope itself, the other openings (false alarms), and what ingest did with
the lines: accepted, rejected by reason, dropped as late, held early. The scope is right when
the first opening, or the incident it widened into (docs/incidents.md, "Widening"), is on the
expected scope; the delay to the expected scope is reported beside the first opening's.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.evaluate import widened
from models.detect.monitor import Monitor
from streams.cli.replay import replay_lines
from streams.worker.decoding import ingest_pipeline

HERE = Path(__file__).resolve().parent
GRACE_S = 1800.0


def scenarios() -> list[str]:
    out = subprocess.run(
        [sys.executable, str(HERE / "external_scenarios.py"), "--list"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def generate(
    name: str, seed: int, order: str, shapes: str, out: Path
) -> tuple[Path, dict[str, Any]]:
    subprocess.run(
        [
            sys.executable,
            str(HERE / "external_scenarios.py"),
            "--scenario",
            name,
            "--seed",
            str(seed),
            "--out",
            str(out),
            "--order",
            order,
            "--shapes",
            shapes,
        ],
        check=True,
        capture_output=True,
    )
    truth = json.loads((out / f"{name}-seed{seed}.truth.json").read_text())
    return out / f"{name}-seed{seed}.jsonl", truth


def evaluate(path: Path, truth: dict[str, Any]) -> dict[str, Any]:
    mon = Monitor()
    changes: list[Any] = []
    t0 = time.perf_counter()
    with path.open("rb") as fh:
        stats = replay_lines(fh, mon, ingest_pipeline(), changes=changes)
    took = time.perf_counter() - t0
    opened = [c.to_json() for c in changes if c.to_json()["action"] == "opened"]
    rows = []
    used: set[int] = set()
    for inc in truth.get("incidents", []):
        ok_scopes = [inc["scope"], *inc.get("also_ok", [])]
        hit = None
        for i, o in enumerate(opened):
            if o["type"] != inc["type"] or o["scope"] not in ok_scopes:
                continue
            if not inc["onset"] <= o["opened_at"] <= inc["end"] + GRACE_S:
                continue
            used.add(i)
            if hit is None or o["opened_at"] < hit["opened_at"]:
                hit = o
        # the first opening decides the scope, or the incident it widened into
        final = widened(hit, opened) if hit else None
        on_expected = [
            o
            for o in opened
            if o["type"] == inc["type"]
            and o["scope"] == inc["scope"]
            and inc["onset"] <= o["opened_at"] <= inc["end"] + GRACE_S
        ]
        rows.append(
            {
                "type": inc["type"],
                "expected_scope": inc["scope"],
                "opened_scope": hit["scope"] if hit else None,
                "final_scope": final["scope"] if final else None,
                "delay_s": round(hit["opened_at"] - inc["onset"], 1) if hit else None,
                "expected_scope_delay_s": (
                    round(min(o["opened_at"] for o in on_expected) - inc["onset"], 1)
                    if on_expected
                    else None
                ),
                "right_scope": bool(final) and final["scope"] == inc["scope"],
                "also_on": sorted(
                    {
                        o["scope"]
                        for o in opened
                        if o["type"] == inc["type"] and o["scope"] in ok_scopes
                    }
                ),
            }
        )
    false = [
        {"type": o["type"], "scope": o["scope"], "at": o["opened_at"]}
        for i, o in enumerate(opened)
        if i not in used
        and not any(
            o["type"] == inc["type"] and o["scope"] in [inc["scope"], *inc.get("also_ok", [])]
            for inc in truth.get("incidents", [])
        )
    ]
    mm = mon.metrics()
    return {
        "lines": stats.lines,
        "accepted": stats.accepted,
        "rejected": dict(Counter(stats.rejected).most_common()),
        "late_dropped": mm["late_dropped"],
        "late_complaints": mm["late_complaints"],
        "early_dropped": mm["early_dropped"],
        "seconds": round(took, 1),
        "incidents": rows,
        "false_alarms": false,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--order", choices=("log", "sorted"), default="log")
    ap.add_argument("--shapes", choices=("messy", "clean"), default="messy")
    ap.add_argument("--only", action="append")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    names = [n for n in scenarios() if not args.only or n in args.only]
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            path, truth = generate(name, args.seed, args.order, args.shapes, Path(tmp))
            res = evaluate(path, truth)
            path.unlink()
            results[name] = res
            rej = sum(res["rejected"].values())
            print(
                f"# {name}: {res['lines']:,} lines, {rej:,} rejected {res['rejected']}, "
                f"{res['late_dropped']:,} late, {res['late_complaints']:,} late complaints "
                f"counted ({res['seconds']} s)",
                file=sys.stderr,
            )
    print(f"seed={args.seed} order={args.order} shapes={args.shapes}\n")
    print(
        "| scenario | expected | opened on | delay | right scope | on the expected scope after "
        "| false alarms |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, res in results.items():
        fa = ", ".join(f"{f['type']}@{f['scope']}" for f in res["false_alarms"]) or "0"
        if not res["incidents"]:
            print(f"| {name} | (quiet) | - | - | - | - | {fa} |")
        for r in res["incidents"]:
            delay = "missed" if r["delay_s"] is None else f"{r['delay_s'] / 60:.1f} min"
            d_exp = r["expected_scope_delay_s"]
            exp = "-" if d_exp is None else f"{d_exp / 60:.1f} min"
            right = "yes" if r["right_scope"] else "no"
            if r["final_scope"] != r["opened_scope"]:
                right += f" (widened into {r['final_scope']})"
            print(
                f"| {name} | {r['type']} @ {r['expected_scope']} | {r['opened_scope'] or '-'} "
                f"| {delay} | {right} | {exp} | {fa} |"
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
