"""Suppression evaluation: simulator scenarios through the real pipeline + detection, the
suppression policy (models/act/suppression/) against naive "suppress on the first bounce"
baselines, scored with the simulator's ground truth of which recipients really are invalid.

    .venv/bin/python bench/suppression_eval.py                  # all runs, markdown to stdout
    .venv/bin/python bench/suppression_eval.py --only b2b-false-bounces --json out.json
    .venv/bin/python bench/suppression_eval.py --ignore-list    # the fleet mails suppressed too

Per run: the simulator's events (event-time order, one tick a minute as in bench/evaluate.py)
go through ``Pipeline`` into ``Monitor``; each tick's ``RecipientRows`` are the pipeline's own
(``Pipeline(keep_recipients=True).take_recipients()`` after the flush, as the worker and
``repmon replay`` read them), known-good flag included. The bench adds only what the rows do not
carry: each row's SMTP code (the naive-5xx baseline) and, for the ground truth, the address of
each recipient identity. Per tick each policy sees: the incidents the tick closed, then the rows
with the Monitor's open incidents, then the expiry at the watermark.

**The fleet honours the list** (default): a message whose ``sent`` event finds its recipient
suspended (before ``until``), quarantined or suppressed under a policy is not sent under that
policy: its later events are withheld from that policy. Detection still sees the simulated
traffic unchanged (the simulator does not react to suppression), so every policy faces the same
incidents. ``--ignore-list`` feeds every event to every policy instead.

**Ground truth.** A simulated address ``uNNNNNN@domain`` is invalid when the simulator's hash
rule says so (models/sim/lifecycle.py: ``hash_arr(rcpt * 1_000_003 + dom * 7919 + seed) % 1000
< dom_invalid_permille``) or its domain is a dead one; addresses of imported lists (whose
validity is drawn per message) are left out of the scores.

Scores, at the end of the run:

* *wrongly bounced good recipients*: valid addresses that got at least one hard-class bounce;
  the share that ends ``active`` (target >= 95 % in b2b-false-bounces);
* *truly invalid addresses*: invalid addresses that got at least one hard-class bounce; the
  share that ends ``suppressed`` (target >= 99 %);
* *outage suppressions*: valid addresses at the outage's provider ending suppressed or
  suspended by a bounce whose counted hit fell in the outage window (+ the retry horizon)
  (target 0).

Baselines: ``naive-hard`` suppresses at the first bounce (or rejection) the classifier calls
``hard``; ``naive-5xx`` at the first bounce with a 5xx code (what an ESP that goes by the reply
code does).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.act.suppression import (
    ACTIVE,
    QUARANTINED,
    STATES,
    SUPPRESSED,
    SUSPENDED,
    MemoryStore,
    RecipientState,
    Suppressor,
)
from models.act.suppression_config import SuppressionConfig, load_config
from models.classify.classifier import Classifier
from models.detect.config import DETECT_EVERY_S
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import Pipeline
from models.ingest.recipients import (
    RECIPIENT_KINDS,
    RecipientRows,
    message_hash,
    recipient_digest,
)
from models.schema import CLASS_CODE, EVENT_KIND_CODE
from models.sim.lifecycle import IMPORTED_BASE
from models.sim.replies import REPLIES, R
from models.sim.simulator import SimConfig, Simulator, hash_arr

HOUR = 3600.0
#: the retry horizon after an outage ends: messages deferred during it may still expire
RETRY_HORIZON_S = 4 * HOUR

#: (run name, scenario, hours, params)
RUNS: tuple[tuple[str, str, float, dict[str, Any]], ...] = (
    ("b2b-false-bounces", "b2b-false-bounces", 8.0, {}),
    ("provider-outage", "provider-outage", 8.0, {}),
    ("provider-outage-4h", "provider-outage", 10.0, {"length_s": 4 * HOUR}),
    ("ip-blocklisted", "ip-blocklisted", 8.0, {}),
    ("bad-list-import", "bad-list-import", 8.0, {}),
    ("baseline-24h", "baseline", 24.0, {}),
    ("mixed", "mixed", 12.0, {}),
)

_K = EVENT_KIND_CODE
_HARD = CLASS_CODE["hard"]
_ADDR = re.compile(r"^u(\d+)@(.+)$")


# -- what the pipeline's rows do not carry ----------------------------------------------------


class Recipients:
    """The bench's side of the pipeline's rows: the address of each recipient identity (the
    pipeline keeps only hashes; the ground truth needs the address) and each row's SMTP code
    (RecipientRows do not carry it; the naive-5xx baseline needs it)."""

    def __init__(self) -> None:
        #: classifies the replies an outage injects (:func:`_outage_reasons`)
        self.classifier = Classifier()
        self._idents: dict[str, int] = {}
        #: ident -> address, of every recipient with a row (for the ground truth)
        self.addresses: dict[int, str] = {}

    def ident(self, addr: str) -> int:
        """The pipeline's identity of the address (models/ingest/recipients.py)."""
        i = self._idents.get(addr)
        if i is None:
            i = self._idents[addr] = int.from_bytes(recipient_digest(addr)[:8], "little")
        return i

    def codes(self, accepted: list[dict[str, Any]], rows: RecipientRows) -> list[int]:
        """The SMTP code (0: none) of each of ``rows``, the pipeline's rows of ``accepted`` (the
        events it accepted since the last flush, in feed order); records their addresses.

        The rows are a subsequence of the accepted events of the recipient kinds (the pipeline
        also drops the repeats of an event accepted shortly before): each row is matched, in
        order, with the next such event of the same recipient, kind, message and time."""
        evs = [e for e in accepted if _K[e["event"]] in RECIPIENT_KINDS]
        out: list[int] = []
        j = 0
        for ident, kind, mid, ts in zip(
            rows.ident.tolist(),
            rows.kind.tolist(),
            rows.mid.tolist(),
            rows.ts.tolist(),
            strict=True,
        ):
            while j < len(evs):
                e = evs[j]
                j += 1
                addr = e["recipient"]
                if (
                    self.ident(addr) == ident
                    and _K[e["event"]] == kind
                    and message_hash(e.get("message_id")) == mid
                    and float(e["timestamp"]) == ts
                ):
                    self.addresses[ident] = addr
                    out.append(int(e.get("smtp_code") or 0))
                    break
            else:
                raise RuntimeError(
                    f"a pipeline row (ident {ident}, kind {kind}, time {ts}) matches no accepted "
                    "event of the tick"
                )
        return out


# -- the policies ---------------------------------------------------------------------------


class Smart:
    name = "repmon"

    def __init__(self, config: SuppressionConfig | None = None) -> None:
        self.store = MemoryStore()
        self.sup = Suppressor(config, store=self.store)
        self.changes = 0

    def blocked(self, idents: list[int], now: float) -> list[bool]:
        vals = self.store.get_many(np.asarray(idents, dtype=np.uint64))
        out = []
        for v in vals:
            if v is None:
                out.append(False)
                continue
            r = RecipientState.unpack(v)
            out.append(
                r.state in (SUPPRESSED, QUARANTINED) or (r.state == SUSPENDED and now < r.until)
            )
        return out

    def tick(
        self,
        rows: RecipientRows,
        codes: list[int],
        closed: list[Any],
        open_: list[Any],
        wm: float,
    ) -> None:
        n = 0
        for inc in closed:
            n += len(self.sup.incident_closed(inc, wm))
        n += len(self.sup.observe(rows, open_))
        n += len(self.sup.expire(wm))
        self.changes += n

    def final(self) -> dict[int, tuple[int, int, float]]:
        """ident -> (state, reason, last hit time)."""
        out = {}
        for ident, raw in self.store.items():
            r = RecipientState.unpack(raw)
            out[ident] = (r.state, r.reason, float(r.last_seen))
        return out


class Naive:
    """Suppress at the first bounce matching ``rule`` (never undone)."""

    def __init__(self, name: str, rule: Callable[[int, int, int], bool]) -> None:
        self.name = name
        self.rule = rule
        self.suppressed: dict[int, tuple[int, float]] = {}
        self.changes = 0

    def blocked(self, idents: list[int], now: float) -> list[bool]:
        return [i in self.suppressed for i in idents]

    def tick(
        self,
        rows: RecipientRows,
        codes: list[int],
        closed: list[Any],
        open_: list[Any],
        wm: float,
    ) -> None:
        bounce = (rows.kind == _K["bounced"]) | (rows.kind == _K["rejected"])
        for i in np.flatnonzero(bounce).tolist():
            ident = int(rows.ident[i])
            if ident in self.suppressed:
                continue
            if self.rule(int(rows.cls[i]), int(rows.reason[i]), codes[i]):
                self.suppressed[ident] = (int(rows.reason[i]), float(rows.ts[i]))
                self.changes += 1

    def final(self) -> dict[int, tuple[int, int, float]]:
        return {i: (SUPPRESSED, r, t) for i, (r, t) in self.suppressed.items()}


def _policies(config: SuppressionConfig | None = None) -> list[Any]:
    return [
        Smart(config),
        Naive("naive-hard", lambda c, r, code: c == _HARD),
        Naive("naive-5xx", lambda c, r, code: 500 <= code < 600),
    ]


# -- a run ----------------------------------------------------------------------------------


@dataclass
class RunResult:
    name: str
    scenario: str
    hours: float
    events: int = 0
    seconds: float = 0.0
    incidents: list[dict[str, Any]] = field(default_factory=list)
    truth: list[dict[str, Any]] = field(default_factory=list)
    scores: dict[str, dict[str, Any]] = field(default_factory=dict)


def _validity(sim: Simulator, seed: int) -> Callable[[str], bool | None]:
    dom_index = {d: i for i, d in enumerate(sim.dom_names)}
    pop = sim.dom_invalid_permille
    dead = sim.dom_dead

    def valid(addr: str) -> bool | None:
        m = _ADDR.match(addr)
        if m is None:
            return None
        rc, dn = int(m.group(1)), m.group(2)
        d = dom_index.get(dn)
        if d is None or rc >= IMPORTED_BASE:
            return None
        if dead[d]:
            return False
        h = int(hash_arr(np.array([rc * 1_000_003 + d * 7919 + seed], dtype=np.int64))[0])
        return bool(h % 1000 >= int(pop[d]))

    return valid


def run_one(
    name: str,
    scenario: str,
    hours: float,
    params: dict[str, Any],
    seed: int,
    rate: float,
    honour: bool = True,
    known_good: bool = True,
    config_path: str | None = None,
) -> RunResult:
    cfg = SimConfig(seed=seed, scenario=scenario, duration_s=hours * HOUR, rate=rate, params=params)
    sim = Simulator(cfg)
    pipe = Pipeline(keep_recipients=True)
    mon = Monitor(MonitorConfig())
    recips = Recipients()
    pols = _policies(load_config(config_path) if config_path else None)
    #: per policy: the messages withheld (the fleet honoured the list at send time), by the
    #: pipeline's hash of their id (RecipientRows.mid)
    withheld: list[set[int]] = [set() for _ in pols]
    res = RunResult(name, scenario, hours)
    #: ident -> (got a hard bounce, got any bounce), over all policies' shared traffic
    hard_hit: set[int] = set()
    t0 = time.perf_counter()
    for chunk in sim.chunks(DETECT_EVERY_S):
        acc = [ev for ev in chunk if pipe.feed_obj(ev) is None]
        res.events += len(chunk)
        d = pipe.flush()
        mon.add(d)
        changes = mon.advance(d.watermark)
        wm = d.watermark
        for ch in changes:
            if ch.action == "opened":
                res.incidents.append(ch.to_json())
        closed = [ch.incident for ch in changes if ch.action == "closed"]
        open_ = mon.open_incidents()
        rows = pipe.take_recipients()
        codes = recips.codes(acc, rows)
        if not known_good:
            rows.known_good[:] = False
        hard = (rows.cls == _HARD) & ((rows.kind == _K["bounced"]) | (rows.kind == _K["rejected"]))
        hard_hit.update(rows.ident[hard].tolist())
        sent = [ev for ev in acc if ev["event"] == "sent"]
        sent_ids = [recips.ident(ev["recipient"]) for ev in sent]
        mids = rows.mid.tolist()
        for p, pol in enumerate(pols):
            r, c = rows, codes
            if honour:
                if sent:
                    for ev, b in zip(sent, pol.blocked(sent_ids, wm), strict=True):
                        if b:
                            withheld[p].add(message_hash(ev["message_id"]))
                if withheld[p] and len(rows):
                    keep = np.array([m not in withheld[p] for m in mids], dtype=np.bool_)
                    if not keep.all():
                        r = rows.take(keep)
                        c = [x for x, k in zip(codes, keep.tolist(), strict=True) if k]
            pol.tick(r, c, closed, open_, wm)
    res.seconds = time.perf_counter() - t0
    end = cfg.start + cfg.duration_s
    res.truth = [
        {"type": t.type, "scopes": list(t.scopes), "onset": t.onset, "end": t.end or end}
        for t in sim.truth
    ]
    res.scores = _score(sim, seed, recips, pols, hard_hit, res.truth, withheld)
    return res


class _Blank(dict[str, str]):
    def __missing__(self, k: str) -> str:
        return "x"


def _outage_reasons(sim: Simulator, recips: Recipients, t: dict[str, Any]) -> set[int]:
    """Reason codes of the replies an outage injects, and of the expiry bounce of a message
    deferred until its queue lifetime ran out: what a suppression *because of* the outage
    would carry (the background's mailbox-full bounces are not)."""
    prov = t["scopes"][0].partition(":")[2]
    ids = {int(R["expired"])}
    for ef in sim.effects.attempts:
        if abs(ef.onset - t["onset"]) < 1.0:
            ids.update(int(x) for x in ef.replies.tolist())
    out = set()
    for i in ids:
        r = REPLIES[i]
        text = r.text.format_map(_Blank())
        c = recips.classifier.classify(r.code, r.enh, text, prov, prov)
        out.add(int(c.reason_code))
    return out


def _score(
    sim: Simulator,
    seed: int,
    recips: Recipients,
    pols: list[Any],
    hard_hit: set[int],
    truth: list[dict[str, Any]],
    withheld: list[set[int]],
) -> dict[str, dict[str, Any]]:
    valid_of = _validity(sim, seed)
    validity = {i: valid_of(a) for i, a in recips.addresses.items()}
    good_bounced = [i for i in hard_hit if validity.get(i) is True]
    bad_bounced = [i for i in hard_hit if validity.get(i) is False]
    bad_seen = [i for i, v in validity.items() if v is False]
    outages = [
        (t, _outage_reasons(sim, recips, t)) for t in truth if t["type"] == "provider_outage"
    ]
    dom_provider = dict(zip(sim.dom_names, sim.dom_provider, strict=False))
    out: dict[str, dict[str, Any]] = {}
    for p, pol in enumerate(pols):
        fin = pol.final()

        def state(i: int, fin: dict[int, tuple[int, int, float]] = fin) -> int:
            return fin[i][0] if i in fin else ACTIVE

        gb = [state(i) for i in good_bounced]
        bb = [state(i) for i in bad_bounced]
        s: dict[str, Any] = {
            "good_bounced": len(good_bounced),
            "good_bounced_end": {STATES[k]: gb.count(k) for k in range(4)},
            "good_bounced_active_share": gb.count(ACTIVE) / len(gb) if gb else None,
            "invalid_bounced": len(bad_bounced),
            "invalid_bounced_end": {STATES[k]: bb.count(k) for k in range(4)},
            "invalid_suppressed_share": bb.count(SUPPRESSED) / len(bb) if bb else None,
            "invalid_not_mailed_share": (
                (bb.count(SUPPRESSED) + bb.count(QUARANTINED)) / len(bb) if bb else None
            ),
            "invalid_mailed": len(bad_seen),
            "invalid_mailed_suppressed": sum(state(i) == SUPPRESSED for i in bad_seen),
            "valid_suppressed_bounce": sum(
                1
                for i, v in validity.items()
                if v is True and state(i) == SUPPRESSED and fin[i][1] < 200
            ),
            "valid_suppressed_consent": sum(
                1
                for i, v in validity.items()
                if v is True and state(i) == SUPPRESSED and fin[i][1] >= 200
            ),
            "messages_withheld": len(withheld[p]),
            "changes": pol.changes,
        }
        if outages:
            n_out = n_window = 0
            for i, (st, rs, t_hit) in fin.items():
                if st not in (SUPPRESSED, SUSPENDED) or rs >= 200 or validity.get(i) is not True:
                    continue
                dom = recips.addresses[i].rpartition("@")[2]
                for o, reasons in outages:
                    prov = o["scopes"][0].partition(":")[2]
                    if (
                        dom_provider.get(dom) == prov
                        and o["onset"] <= t_hit <= o["end"] + RETRY_HORIZON_S
                    ):
                        n_window += 1
                        n_out += rs in reasons
                        break
            #: by a reply the outage produced (its deferrals, the expiry bounce)
            s["outage_suppressed_valid"] = n_out
            #: by any bounce in the window (mailbox-full noise included)
            s["outage_window_suppressed_valid"] = n_window
        out[pol.name] = s
    return out


# -- output ---------------------------------------------------------------------------------


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.2f} %"


def summarise(results: list[RunResult]) -> str:
    lines = [
        "| run | policy | wrongly bounced good | end active | end suspended / quarantined "
        "/ suppressed | invalid (hard-bounced) | end suppressed | end suppressed or held | "
        "outage suppressions | valid suppressed by a bounce | valid suppressed by consent |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        for pol, s in r.scores.items():
            e = s["good_bounced_end"]
            lines.append(
                f"| {r.name} | {pol} | {s['good_bounced']} | {_pct(s['good_bounced_active_share'])} "
                f"| {e['suspended']} / {e['quarantined']} / {e['suppressed']} "
                f"| {s['invalid_bounced']} | {_pct(s['invalid_suppressed_share'])} "
                f"| {_pct(s['invalid_not_mailed_share'])} "
                f"| {s.get('outage_suppressed_valid', '-')} | {s['valid_suppressed_bounce']} "
                f"| {s['valid_suppressed_consent']} |"
            )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rate", type=float, default=50.0, help="simulator 'sent' events per second")
    ap.add_argument("--only", action="append", help="run only these run names (repeatable)")
    ap.add_argument("--json", type=Path, help="write the scores and incidents here")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument(
        "--ignore-list",
        action="store_true",
        help="the fleet mails suppressed recipients too (every event reaches every policy)",
    )
    ap.add_argument(
        "--no-known-good",
        action="store_true",
        help="rows without the pipeline's known-good flag (as if the producer did not set it)",
    )
    ap.add_argument("--config", help="a suppression policy TOML file (default: the shipped one)")
    args = ap.parse_args()
    runs = [r for r in RUNS if not args.only or r[0] in args.only]
    t0 = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as ex:
        longest = sorted(range(len(runs)), key=lambda i: -runs[i][2])
        futs = {
            i: ex.submit(
                run_one,
                *runs[i],
                args.seed,
                args.rate,
                not args.ignore_list,
                not args.no_known_good,
                args.config,
            )
            for i in longest
        }
        results = [futs[i].result() for i in range(len(runs))]
    for r in results:
        types = sorted({i["type"] + " " + i["scope"] for i in r.incidents})
        print(
            f"# {r.name}: {r.events:,} events in {r.seconds:.0f} s; incidents opened: "
            f"{', '.join(types) or 'none'}",
            file=sys.stderr,
        )
    print(
        f"seed={args.seed} rate={args.rate:g} msgs/s, fleet "
        f"{'ignores' if args.ignore_list else 'honours'} the list, known-good flag "
        f"{'off' if args.no_known_good else 'on'}, policy {args.config or 'shipped'}, wall "
        f"{time.perf_counter() - t0:.0f} s\n"
    )
    print(summarise(results))
    if args.json:
        args.json.write_text(
            json.dumps([r.__dict__ for r in results], indent=1, default=str) + "\n"
        )


if __name__ == "__main__":
    main()
