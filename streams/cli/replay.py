"""``repmon replay FILE...``: run ingest + rolling state + detectors over JSONL files, no Kafka.

Events are fed in event-time order (several files are merged by timestamp; each file is expected
to be roughly ordered, disorder within the Monitor's lateness is absorbed) through the same
``Pipeline`` and ``Monitor`` the worker uses. Every ``--tick`` seconds of event time the pipeline is
flushed into the Monitor and the detectors run. Output:

* stdout: one JSON object per line per incident change, ``{"kind": "incident", "action":
  "opened"|"closed", "id", "type", "scope", "opened_at", "closed_at", "severity", "evidence"}``;
  at the end, incidents still open are *not* closed (their ``closed_at`` stays null);
* stderr: a progress bar and a human summary (rich);
* ``--report FILE.html``: a self-contained page (streams/cli/report.py: inline SVG, no JavaScript,
  no external assets): rates per provider, the incidents with their evidence, the throttle.

Bad lines (invalid JSON, failed validation) are counted per reason and reported, never fatal.
"""

from __future__ import annotations

import gzip
import heapq
import io
import math
import os
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import IO, Annotated, Any

import numpy as np
import orjson
import typer

from models.act.acting import Acting
from models.act.suppression import Suppressor
from models.act.suppression_config import SuppressionConfigError
from models.act.suppression_config import load_config as load_suppression_config
from models.act.throttle_config import ThrottleConfigError, load_config
from models.act.throttle_record import ThrottleRecord
from models.detect.config import DETECT_EVERY_S
from models.detect.incidents import IncidentChange
from models.detect.monitor import Monitor, MonitorConfig
from models.ingest.pipeline import BATCH_ROWS, Pipeline, parse_timestamp
from models.ingest.recipients import RecipientRows
from models.state.deltas import Deltas
from models.state.rolling import RollingConfig
from models.state.watermark import PartitionClock
from streams.cli.report import Timeline, render_report
from streams.worker.decoding import ingest_pipeline

_PROGRESS_EVERY = 65536

#: the worker's defaults (lateness, warm-up): a replay opens what the worker opens
_DEFAULTS = MonitorConfig()


def _open(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(line reader, raw file for progress) of a plain or gzip file; '-' is stdin."""
    if str(path) == "-":
        return sys.stdin.buffer, sys.stdin.buffer
    raw = path.open("rb")
    head = raw.read(2)
    raw.seek(0)
    if head == b"\x1f\x8b":
        return io.BufferedReader(gzip.GzipFile(fileobj=raw), buffer_size=1 << 20), raw
    return raw, raw


@dataclass
class ReplayStats:
    lines: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    ticks: int = 0
    opened: Counter[str] = field(default_factory=Counter)
    closed: int = 0
    seconds: float = 0.0
    throttle_records: int = 0
    last_throttle: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    suppression_records: Counter[str] = field(default_factory=Counter)


def _advance(
    monitor: Monitor,
    acting: Acting | None,
    watermark: float,
    stats: ReplayStats,
    changes: list[IncidentChange] | None,
    out: IO[bytes] | None,
    timeline: Timeline | None = None,
) -> list[IncidentChange]:
    """One detector run (and the throttle's step when ``acting``), its output emitted; the
    throttle's changes kept in ``timeline`` for the report. Returns the incident changes."""
    if acting is None:
        found = monitor.advance(watermark)
        _emit(found, stats, changes, out)
        return found
    found, records = acting.advance(watermark)
    if timeline is not None:
        timeline.add_throttle(records)
    _emit(found, stats, changes, out, records)
    return found


def _suppress(
    suppressor: Suppressor,
    monitor: Monitor,
    rows: RecipientRows,
    found: Sequence[IncidentChange],
    watermark: float,
    stats: ReplayStats,
    out: IO[bytes] | None,
) -> None:
    """The suppression policy's step after a detector run (docs/suppression.md, "Driving it"):
    release what closed incidents held, the tick's recipient rows (open quarantining incidents
    start holding), expired suspensions; each change as a ``kind=suppression`` line."""
    got = []
    for ch in found:
        if ch.action == "closed":
            got += suppressor.incident_closed(ch.incident, watermark)
    got += suppressor.observe(rows, monitor.open_incidents())
    got += suppressor.expire(watermark)
    for c in got:
        rec = suppressor.record(c)
        stats.suppression_records[str(rec["state"])] += 1
        if out is not None:
            out.write(orjson.dumps(rec) + b"\n")
    if out is not None and got:
        out.flush()


def _emit(
    found: Iterable[IncidentChange],
    stats: ReplayStats,
    changes: list[IncidentChange] | None,
    out: IO[bytes] | None,
    records: Sequence[ThrottleRecord] = (),
) -> None:
    """Count incident changes (then throttle records), keep them if asked, and write them as
    JSON lines."""
    stats.throttle_records += len(records)
    for ch in found:
        if ch.action == "opened":
            stats.opened[ch.incident.type] += 1
        else:
            stats.closed += 1
        if changes is not None:
            changes.append(ch)
        if out is not None:
            out.write(orjson.dumps(ch.to_json()) + b"\n")
    if out is not None:
        for rec in records:
            # changes only: a refresh (the same decision re-sent with a new expiry) is for the
            # fleet, not for a backtest
            key = (rec.state, rec.rate_factor, rec.reason, rec.incident)
            if stats.last_throttle.get(rec.scope) != key:
                stats.last_throttle[rec.scope] = key
                out.write(orjson.dumps(rec.to_json()) + b"\n")
        out.flush()


def _lines(paths: list[Path], progress: Any, task: Any) -> Iterator[bytes]:
    """Lines of all files in order (single file) -- or merged by timestamp (several files)."""
    if len(paths) == 1:
        reader, raw = _open(paths[0])
        n = 0
        try:
            for line in reader:
                yield line
                n += 1
                if progress is not None and n % _PROGRESS_EVERY == 0 and raw.seekable():
                    progress.update(task, completed=raw.tell())
        finally:
            if reader is not sys.stdin.buffer:
                reader.close()
        return
    yield from _merged(paths, progress, task)


def _keyed(path: Path) -> Iterator[tuple[float, int, bytes]]:
    reader, _ = _open(path)
    last = -math.inf
    seq = 0
    try:
        for line in reader:
            seq += 1
            key = last
            try:
                obj = orjson.loads(line)
                if isinstance(obj, dict) and "timestamp" in obj:
                    key = parse_timestamp(obj["timestamp"])
            except Exception:  # a bad line keeps its neighbour's position
                key = last
            last = max(last, key)
            yield key, seq, line
    finally:
        if reader is not sys.stdin.buffer:
            reader.close()


def _merged(paths: list[Path], progress: Any, task: Any) -> Iterator[bytes]:
    for n, (_, _, line) in enumerate(heapq.merge(*(_keyed(p) for p in paths)), 1):
        if progress is not None and n % _PROGRESS_EVERY == 0:
            progress.update(task, advance=_PROGRESS_EVERY)
        yield line


#: lines fed to the Pipeline per call (Pipeline.feed_many checks a batch column by column)
BATCH = BATCH_ROWS


class TickLoop:
    """Feeds lines to a Pipeline in batches and ticks exactly where a line-by-line loop would.

    A tick (flush the pipeline, hand the Deltas over) happens right after the accepted event that
    takes the watermark to the next multiple of ``tick_s`` or the pending count to
    ``max_pending``; the batch's later events stay pending for the next tick
    (``Pipeline.flush(upto=...)``). So batching changes no output, only the speed.

    The watermark is the file's ``PartitionClock`` (models/state/watermark.py), as in the worker:
    the newest event time, except that a lone event far ahead does not move it.
    """

    def __init__(
        self,
        pipeline: Pipeline,
        on_tick: Callable[[Deltas, float], None],
        tick_s: float = DETECT_EVERY_S,
        max_pending: int = 200_000,
    ) -> None:
        self.pipeline = pipeline
        self.clock = PartitionClock()
        self.on_tick = on_tick
        self.tick_s = tick_s
        self.max_pending = max(1, max_pending)
        self.next_tick = -math.inf
        self.lines = 0
        self.accepted = 0
        self.rejected: Counter[str] = Counter()

    def feed(self, lines: list[bytes]) -> None:
        p = self.pipeline
        base = p.pending()
        self.lines += len(lines)
        for i, rej in p.feed_many(lines):
            blank = rej.reason == "bad_json" and not lines[i].strip()
            self.rejected["empty_line" if blank else rej.reason] += 1
        ts = p.pending_timestamps(base)
        self.accepted += len(ts)
        clock = self.clock.running(ts)
        i = 0
        while i < len(ts):
            run = clock[i:]
            # first event (from i) that reaches the next tick or fills the pending budget
            hit = np.flatnonzero(run >= self.next_tick)
            at = min(
                int(hit[0]) if len(hit) else len(run),
                max(0, self.max_pending - (base + i) - 1),
            )
            if at >= len(run):
                break
            wm = float(run[at])
            if self.next_tick != -math.inf:
                d = p.flush(upto=base + i + at + 1)
                d.watermark = wm
                self.on_tick(d, self.next_tick)
                base = -(i + at + 1)
            self.next_tick = (math.floor(wm / self.tick_s) + 1) * self.tick_s
            i += at + 1

    def run(self, lines: Iterable[bytes]) -> None:
        it = iter(lines)
        while batch := list(islice(it, BATCH)):
            self.feed(batch)

    def finish(self) -> None:
        d = self.pipeline.flush()
        d.watermark = self.clock.watermark
        self.on_tick(d, math.inf)


def replay_lines(
    lines: Iterable[bytes],
    monitor: Monitor,
    pipeline: Pipeline,
    tick_s: float = DETECT_EVERY_S,
    max_pending: int = 200_000,
    out: IO[bytes] | None = None,
    timeline: Timeline | None = None,
    changes: list[IncidentChange] | None = None,
    acting: Acting | None = None,
    suppressor: Suppressor | None = None,
) -> ReplayStats:
    """The replay loop (also used by tests and the bench): feed, tick, detect, emit; with
    ``acting`` (the same Monitor and a throttle controller) the throttle records too; with
    ``suppressor`` the suppression records (the Pipeline then keeps its recipient rows)."""
    stats = ReplayStats()
    t0 = time.perf_counter()
    if suppressor is not None:
        pipeline.keep_recipients = True

    def tick(d: Deltas, _boundary: float) -> None:
        monitor.add(d)
        if timeline is not None:
            timeline.add(d)
        stats.ticks += 1
        found = _advance(monitor, acting, d.watermark, stats, changes, out, timeline)
        if suppressor is not None:
            rows = pipeline.take_recipients()
            _suppress(suppressor, monitor, rows, found, d.watermark, stats, out)

    loop = TickLoop(pipeline, tick, tick_s, max_pending)
    loop.run(lines)
    loop.finish()
    stats.lines, stats.accepted, stats.rejected = loop.lines, loop.accepted, loop.rejected
    stats.seconds = time.perf_counter() - t0
    return stats


def shard_of(line: bytes, n: int) -> int:
    """Shard of a raw JSONL line by recipient address (so one recipient's delivered and bounced
    events meet in one Pipeline's known-good memory); lines without one shard by content."""
    i = line.find(b'"recipient"')
    if i >= 0:
        j = line.find(b'"', i + 11)
        k = line.find(b'"', j + 1) if j >= 0 else -1
        if k > j >= 0:
            return zlib.crc32(line[j + 1 : k].strip().lower()) % n
    return zlib.crc32(line) % n


def _shard_worker(
    paths: list[Path],
    shard: int,
    n: int,
    tick_s: float,
    q: Any,
    max_pending: int,
    pipeline: Pipeline,
) -> None:
    loop = TickLoop(
        pipeline,
        lambda d, boundary: q.put(("d", shard, boundary, (d, pipeline.take_recipients()))),
        tick_s,
        max_pending,
    )
    loop.run(line for line in _lines(paths, None, None) if shard_of(line, n) == shard)
    loop.finish()
    q.put(("end", shard, loop.lines, loop.accepted, dict(loop.rejected)))


def replay_parallel(
    paths: list[Path],
    monitor: Monitor,
    jobs: int,
    tick_s: float = DETECT_EVERY_S,
    out: IO[bytes] | None = None,
    timeline: Timeline | None = None,
    changes: list[IncidentChange] | None = None,
    max_pending: int = 200_000,
    acting: Acting | None = None,
    suppressor: Suppressor | None = None,
) -> ReplayStats:
    """Like :func:`replay_lines` with ``jobs`` Pipeline processes, each owning the recipients of
    one shard; their Deltas are additive and are merged per event-time tick into one Monitor."""
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    q = ctx.Queue(maxsize=256)
    # built once here (rule files parsed, regexes compiled); each forked process gets a copy
    template = ingest_pipeline(keep_recipients=suppressor is not None)
    procs = [
        ctx.Process(
            target=_shard_worker,
            args=(paths, i, jobs, tick_s, q, max_pending, template),
            daemon=True,
        )
        for i in range(jobs)
    ]
    stats = ReplayStats()
    t0 = time.perf_counter()
    for p in procs:
        p.start()
    reported = [-math.inf] * jobs
    live = set(range(jobs))
    #: per tick boundary: (shard, Deltas), added in shard order so that the output does not
    #: depend on which process reached the queue first (ties in the evidence replies did)
    buffered: dict[float, list[tuple[int, Any]]] = {}

    def run_tick(tagged: list[tuple[int, Any]]) -> None:
        parts = [dr for _, dr in sorted(tagged, key=lambda sd: sd[0])]
        deltas = [d for d, _ in parts]
        for d in deltas:
            monitor.add(d)
            if timeline is not None:
                timeline.add(d)
        stats.ticks += 1
        wm = max(d.watermark for d in deltas)
        found = _advance(monitor, acting, wm, stats, changes, out, timeline)
        if suppressor is not None:
            # one recipient's rows are all in one shard: concatenating keeps their order
            rows = RecipientRows.concat([r for _, r in parts])
            _suppress(suppressor, monitor, rows, found, wm, stats, out)

    while live:
        msg = q.get()
        if msg[0] == "end":
            _, shard, lines, accepted, reasons = msg
            stats.lines += lines
            stats.accepted += accepted
            stats.rejected.update(reasons)
            live.discard(shard)
            reported[shard] = math.inf
        else:
            _, shard, boundary, d = msg
            reported[shard] = boundary
            buffered.setdefault(boundary, []).append((shard, d))
        ready = min(reported)
        for b in sorted(k for k in buffered if k <= ready):
            run_tick(buffered.pop(b))
    for b in sorted(buffered):
        run_tick(buffered.pop(b))
    for p in procs:
        p.join()
    stats.seconds = time.perf_counter() - t0
    return stats


def register(app: typer.Typer) -> None:
    @app.command("replay")
    def replay(
        files: Annotated[
            list[Path], typer.Argument(help="JSONL files of canonical events (.gz ok, '-' = stdin)")
        ],
        report: Annotated[
            Path | None, typer.Option("--report", help="write a self-contained HTML timeline here")
        ] = None,
        tick: Annotated[
            float, typer.Option("--tick", help="event-time seconds between detector runs")
        ] = DETECT_EVERY_S,
        lateness: Annotated[
            float, typer.Option("--lateness", help="accept events this late (s)")
        ] = _DEFAULTS.rolling.lateness_s,
        warmup: Annotated[
            float, typer.Option("--warmup", help="no incident opens in the first N s of event time")
        ] = _DEFAULTS.warmup_s,
        quiet: Annotated[
            bool, typer.Option("--quiet", "-q", help="no progress bar or summary")
        ] = False,
        jobs: Annotated[
            int,
            typer.Option(
                "--jobs", "-j", help="ingest processes (recipient shards); 1 = in-process"
            ),
        ] = 1,
        fmt: Annotated[
            str,
            typer.Option(
                "--format",
                "-f",
                help="native format of the files (docs/ingest.md): kumomta, postfix, powermta, "
                "ses, sendgrid, dsn, arf; default canonical JSON events",
            ),
        ] = "canonical",
        parser_config: Annotated[
            Path | None,
            typer.Option("--parser-config", help="with --format: TOML, its [<format>] table"),
        ] = None,
        throttle: Annotated[
            bool,
            typer.Option(
                "--throttle/--no-throttle",
                help="also run the throttle policy and print its records (kind=throttle)",
            ),
        ] = True,
        throttle_config: Annotated[
            Path | None,
            typer.Option(
                "--throttle-config",
                help="throttle policy TOML over the defaults (docs/throttle.md); "
                "default: $REPMON_THROTTLE_CONFIG",
            ),
        ] = None,
        suppression: Annotated[
            bool,
            typer.Option(
                "--suppression/--no-suppression",
                help="also run the recipient suppression policy and print its records "
                "(kind=suppression, docs/suppression.md)",
            ),
        ] = True,
        suppression_config: Annotated[
            Path | None,
            typer.Option(
                "--suppression-config",
                help="suppression policy TOML over the defaults (docs/suppression.md); "
                "default: $REPMON_SUPPRESSION_CONFIG",
            ),
        ] = None,
    ) -> None:
        """Replay canonical events through the models; incidents, throttle decisions and
        recipient suppression changes as JSON lines on stdout."""
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
        from rich.table import Table

        for p in files:
            if str(p) != "-" and not p.exists():
                raise typer.BadParameter(f"no such file: {p}")
        err = Console(stderr=True)
        mon = Monitor(MonitorConfig(rolling=RollingConfig(lateness_s=lateness), warmup_s=warmup))
        acting = None
        if throttle:
            cfg_path = throttle_config or os.environ.get("REPMON_THROTTLE_CONFIG") or None
            try:
                acting = Acting(mon, config=load_config(cfg_path))
            except ThrottleConfigError as exc:
                raise typer.BadParameter(str(exc)) from exc
        sup = None
        if suppression:
            scfg = suppression_config or os.environ.get("REPMON_SUPPRESSION_CONFIG") or None
            try:
                sup = Suppressor(load_suppression_config(scfg))
            except SuppressionConfigError as exc:
                raise typer.BadParameter(str(exc)) from exc
        pipe = ingest_pipeline()
        timeline = Timeline() if report else None
        changes: list[IncidentChange] = []
        total = sum(p.stat().st_size for p in files if str(p) != "-") if len(files) == 1 else None
        progress = None if quiet else Progress(
            TextColumn("replay"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
            TimeRemainingColumn(), console=err, transient=True,
        )  # fmt: skip
        out = sys.stdout.buffer
        if fmt != "canonical":
            from streams.cli.ingest import canonical_lines

            if jobs > 1:
                raise typer.BadParameter("--format reads the files in one process: use --jobs 1")
            stats = replay_lines(
                canonical_lines(files, fmt, parser_config), mon, pipe, tick, out=out,
                timeline=timeline, changes=changes, acting=acting, suppressor=sup,
            )  # fmt: skip
        elif jobs > 1:
            if "-" in [str(f) for f in files]:
                raise typer.BadParameter("--jobs > 1 needs files, not stdin")
            if not quiet:
                err.print(f"replay: {jobs} ingest processes ...")
            stats = replay_parallel(
                files, mon, jobs, tick, out=out, timeline=timeline, changes=changes,
                acting=acting, suppressor=sup,
            )  # fmt: skip
        elif progress is not None:
            with progress:
                task = progress.add_task("replay", total=total)
                stats = replay_lines(
                    _lines(files, progress, task), mon, pipe, tick, out=out,
                    timeline=timeline, changes=changes, acting=acting, suppressor=sup,
                )  # fmt: skip
        else:
            stats = replay_lines(
                _lines(files, None, None), mon, pipe, tick, out=out,
                timeline=timeline, changes=changes, acting=acting, suppressor=sup,
            )  # fmt: skip
        if report is not None and timeline is not None:
            incidents: dict[str, dict[str, Any]] = {}
            for ch in changes:
                incidents[ch.incident.id] = ch.to_json()
            report.write_text(
                render_report(
                    timeline,
                    list(incidents.values()),
                    f"repmon replay: {', '.join(str(f) for f in files)}",
                    throttle_ran=acting is not None,
                ),
                encoding="utf-8",
            )
        if quiet:
            return
        met = mon.metrics()
        rate = stats.lines / max(stats.seconds, 1e-9)
        t = Table(title="repmon replay", show_header=False)
        t.add_row("lines", f"{stats.lines:,}")
        t.add_row("accepted events", f"{stats.accepted:,}")
        t.add_row("bad lines", f"{sum(stats.rejected.values()):,}" + (
            " (" + ", ".join(f"{k}: {v}" for k, v in stats.rejected.most_common()) + ")"
            if stats.rejected else ""))  # fmt: skip
        dup = stats.lines - stats.accepted - sum(stats.rejected.values())
        t.add_row("duplicates (counted once)", f"{dup:,}")
        t.add_row("late dropped", f"{met['late_dropped']:,}")
        t.add_row("late complaints counted", f"{met['late_complaints']:,}")
        t.add_row("speed", f"{rate:,.0f} lines/s ({stats.seconds:.1f} s)")
        t.add_row("scopes active / evicted", f"{met['active_scopes']:,} / {met['evicted']:,}")
        t.add_row(
            "incidents opened",
            ", ".join(f"{k}: {v}" for k, v in sorted(stats.opened.items())) or "none",
        )
        t.add_row("still open", str(len(mon.open_incidents())))
        if acting is not None:
            t.add_row(
                "throttle decisions",
                f"{stats.throttle_records:,} records, "
                f"{len(acting.controller.decisions())} scopes restricted at the end",
            )
        if sup is not None:
            sm = sup.metrics()
            t.add_row(
                "suppression changes (to state)",
                ", ".join(f"{k}: {v:,}" for k, v in sorted(stats.suppression_records.items()))
                or "none",
            )
            t.add_row(
                "quarantine", f"{sm['held_recipients']:,} held by {sm['held_incidents']} incidents"
            )
        if report is not None:
            t.add_row("report", str(report))
        err.print(t)
