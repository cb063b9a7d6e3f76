"""``repmon dlq``: the dead-letter topic (``REPMON_TOPIC_DLQ``): list, show, re-drive.

    repmon dlq list [--reason R] [--limit N] [--json]
    repmon dlq show [PARTITION:]OFFSET [--json]
    repmon dlq redrive [--reason R] [--since T] [--dry-run] [--fix-format F] [--config FILE]

A dead letter is what the worker (a message of ``mail.events`` it refused) or ``repmon
ingest`` / ``repmon gateway`` (a native record a parser refused) wrote: ``{"reason", "detail",
"topic", "partition", "offset", "received_at", "original_b64", ...}`` (docs/events.md).
``list`` never prints the original bytes; ``show`` prints one dead letter with its original
(as text when it is UTF-8 text, else base64).

``redrive`` parses the selected originals again with the current parser (their ``format``,
``canonical`` for the worker's, or ``--fix-format``), checks every event with the current
ingest Pipeline (the worker's rules and clock), and sends those that pass to the events topic,
keyed by the recipient key as ``repmon ingest`` keys them; a record still refused is reported,
not sent. Originals whose addresses ``repmon ingest`` redacted get their recipients' keys back
from the dead letter's ``address_keys``. What was re-driven is recorded on the dead-letter topic
itself (``repmon-dlq`` markers, see :func:`redrive`), so a second run does not send it again.
"""

from __future__ import annotations

import base64
import re
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import orjson
import typer

from models.ingest.formats import FORMATS, Parser
from models.ingest.validate import recipient_key
from streams.cli.ingest import build_parser, event_key, scan_headers
from streams.redaction import redact

if TYPE_CHECKING:
    from kafka import KafkaConsumer, TopicPartition

    from models.ingest.pipeline import Pipeline
    from streams.worker.settings import Settings

#: the header of the markers ``redrive`` writes on the dead-letter topic (value: the kind)
MARKER_HEADER = "repmon-dlq"
INTENT, DONE = "redrive-intent", "redrive-done"
#: the header of every event ``redrive`` sends: ``<dead letter partition>:<offset>:<item>``
REDRIVE_HEADER = "repmon-redrive"
#: dead letters re-driven under one pair of markers
BATCH = 2000
#: ``redacted@<domain>`` as ``repmon ingest`` writes it
_REDACTED = re.compile(rb"redacted@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)")
_PLACEHOLDER = re.compile(r"redacted\+[0-9]+@")
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]*)?)\s*([smhdw])\Z")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Record:
    """One record of the dead-letter topic: a dead letter or a marker."""

    partition: int
    offset: int
    value: dict[str, Any]
    marker: str | None = None

    @property
    def id(self) -> tuple[int, int]:
        return self.partition, self.offset


@dataclass
class Markers:
    """What the markers say: the dead letters whose re-drive completed, and the re-drives that
    started (intent) without a recorded end."""

    done: set[tuple[int, int]] = field(default_factory=set)
    intents: dict[tuple[str, int], dict[str, Any]] = field(default_factory=dict)
    finished: set[tuple[str, int]] = field(default_factory=set)

    def add(self, v: dict[str, Any]) -> None:
        run = (str(v.get("run")), int(v.get("batch", 0)))
        if v.get("kind") == INTENT:
            self.intents[run] = v
            if run in self.finished:
                self.done.update(_ids(v))
        elif v.get("kind") == DONE:
            self.finished.add(run)
            if run in self.intents:
                self.done.update(_ids(self.intents[run]))

    def unfinished(self) -> list[dict[str, Any]]:
        """Intents without their end whose dead letters were not re-driven since."""
        return [
            v
            for run, v in self.intents.items()
            if run not in self.finished and not set(_ids(v)) <= self.done
        ]


def _ids(v: dict[str, Any]) -> list[tuple[int, int]]:
    return [(int(p), int(o)) for p, o in v.get("letters", [])]


def _marker_kind(headers: list[tuple[str, bytes | None]], value: Any) -> str | None:
    for k, v in headers:
        if k == MARKER_HEADER and v is not None:
            return v.decode("ascii", "replace")
    if isinstance(value, dict) and value.get("kind") in (INTENT, DONE):
        return str(value["kind"])
    return None


def _consumer(settings: Settings) -> KafkaConsumer:
    from kafka import KafkaConsumer

    return KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        max_partition_fetch_bytes=8 << 20,
        fetch_max_bytes=64 << 20,
    )


def _partitions(c: KafkaConsumer, topic: str) -> list[TopicPartition]:
    from kafka import TopicPartition

    c.topics()
    parts = c.partitions_for_topic(topic) or set()
    return [TopicPartition(topic, p) for p in sorted(parts)]


def read_dlq(settings: Settings, timeout_s: float = 600.0) -> Iterator[Record]:
    """Every record of the dead-letter topic, from each partition's start to its current end."""
    c = _consumer(settings)
    try:
        tps = _partitions(c, settings.topic_dlq)
        if not tps:
            return
        ends = c.end_offsets(tps)
        todo = [tp for tp in tps if ends[tp] > 0]
        if not todo:
            return
        c.assign(todo)
        c.seek_to_beginning(*todo)
        left = set(todo)
        deadline = time.monotonic() + timeout_s
        while left:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{settings.topic_dlq}: not read to its end in {timeout_s} s")
            for tp, recs in c.poll(timeout_ms=500, max_records=10_000).items():
                for r in recs:
                    if r.offset >= ends[tp]:
                        break
                    yield _record(r.partition, r.offset, r.value, list(r.headers))
            for tp in list(left):
                if c.position(tp) >= ends[tp]:
                    left.discard(tp)
                    c.pause(tp)
    finally:
        c.close()


def _record(
    partition: int, offset: int, raw: bytes | None, headers: list[tuple[str, bytes | None]]
) -> Record:
    try:
        v = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        v = None
    if not isinstance(v, dict):
        v = {"reason": "?", "detail": "not a dead-letter record (not a JSON object)"}
    return Record(partition, offset, v, _marker_kind(headers, v))


def source_of(v: dict[str, Any]) -> str:
    """Where a dead letter came from: ``topic[partition]@offset``, or a file and record."""
    topic, part, off = v.get("topic", "?"), v.get("partition"), v.get("offset")
    fmt = f" ({v['format']})" if v.get("format") else ""
    if isinstance(part, int) and part >= 0:
        return f"{topic}[{part}]@{off}{fmt}"
    return f"{topic} record {off}{fmt}"


def _when(ts: Any) -> str:
    if not isinstance(ts, int | float):
        return "?"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _summary(v: dict[str, Any], p: int, o: int) -> dict[str, Any]:
    """A dead letter without its original bytes."""
    return {
        "id": f"{p}:{o}",
        "reason": v.get("reason"),
        "detail": v.get("detail"),
        "source": source_of(v),
        "received_at": v.get("received_at"),
        "format": v.get("format"),
    }


def parse_since(text: str, now: float | None = None) -> float:
    """``--since``: epoch seconds, an ISO 8601 / RFC 3339 time (UTC when it has no offset), or
    a duration back from now (``90s``, ``15m``, ``2h``, ``3d``, ``1w``)."""
    now = time.time() if now is None else now
    t = text.strip()
    m = _DURATION.match(t)
    if m is not None:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        return float(t)
    except ValueError:
        pass
    try:
        d = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError as exc:
        raise typer.BadParameter(f"--since {text!r}: not a time, epoch or duration") from exc
    if d.tzinfo is None:
        d = d.replace(tzinfo=UTC)
    return d.timestamp()


def _original(v: dict[str, Any]) -> bytes:
    try:
        return base64.b64decode(v.get("original_b64") or "", validate=True)
    except (ValueError, TypeError):
        return b""


def _as_text(raw: bytes) -> str | None:
    """``raw`` as text if it is UTF-8 without control characters (tabs and newlines allowed)."""
    try:
        s = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if any((ord(ch) < 32 and ch not in "\t\n\r") or ord(ch) == 127 for ch in s):
        return None
    return s


# -- re-drive ---------------------------------------------------------------------------------


def restore_keys(raw: bytes, keys: list[str]) -> tuple[bytes, dict[str, str]] | None:
    """The redacted original with one placeholder address per distinct redacted address (the
    same address twice, in any case, gets the same one: the parser recognises the recipient
    quoted in a reply), and the placeholder's recipient key -> the true one; None when the
    counts disagree."""
    ms = list(_REDACTED.finditer(raw))
    if len(ms) != len(keys):
        return None
    out: list[bytes] = []
    mapping: dict[str, str] = {}
    index: dict[str, int] = {}
    last = 0
    for m, key in zip(ms, keys, strict=True):
        j = index.setdefault(key, len(index))
        ph = b"redacted+%d@" % j + m.group(1)
        out += [raw[last : m.start()], ph]
        last = m.end()
        mapping[recipient_key(ph.decode("ascii"))] = key
    out.append(raw[last:])
    return b"".join(out), mapping


@dataclass
class Verdict:
    """A dead letter checked again: the events to send, or why not."""

    events: list[dict[str, Any]] = field(default_factory=list)
    problem: str | None = None  #: a category: still_rejected, truncated, redacted
    reason: str = ""
    detail: str = ""
    #: fields left out of the events because redaction took their value, by name
    lost: Counter[str] = field(default_factory=Counter)


class Checker:
    """Parses originals again and checks their events as the worker would."""

    def __init__(self, settings: Settings, fix_format: str | None, config: Path | None) -> None:
        from models.classify.classifier import Classifier
        from streams.worker.decoding import ingest_pipeline

        self.fix_format = fix_format
        self.config = config
        self.parsers: dict[str, Parser] = {}
        self.pipe: Pipeline = ingest_pipeline(
            Classifier(settings.rule_files),
            bucket_s=settings.bucket_s,
            max_future_skew_s=settings.max_future_skew_s,
            dedupe_keys=0,
            recent_deliveries=1 << 10,
        )
        self.fed = 0

    def parser(self, fmt: str) -> Parser:
        p = self.parsers.get(fmt)
        if p is None:
            p = self.parsers[fmt] = build_parser(fmt, self.config)
        return p

    def check(self, v: dict[str, Any]) -> Verdict:
        if v.get("original_truncated"):
            return Verdict(
                problem="truncated",
                reason="truncated",
                detail="original cut at 1 MiB or 10,000 addresses",
            )
        raw = _original(v)
        fmt = self.fix_format or v.get("format") or "canonical"
        if fmt not in FORMATS:
            return Verdict(problem="still_rejected", reason="unknown_format", detail=str(fmt))
        mapping: dict[str, str] = {}
        keys = v.get("address_keys")
        if isinstance(keys, list) and keys:
            restored = restore_keys(raw, [str(k) for k in keys])
            if restored is None:
                return Verdict(problem="redacted", reason="redacted", detail="address keys lost")
            raw, mapping = restored
        elif v.get("format") and _REDACTED.search(raw):
            return Verdict(
                problem="redacted",
                reason="redacted",
                detail="the original's addresses were redacted without their keys",
            )
        parser = self.parser(fmt)
        events: list[dict[str, Any]] = []
        for rec in FORMATS[fmt].split(raw, True)[0]:
            evs, rejs = parser.feed(rec)
            if rejs:
                r = rejs[0]
                return Verdict(problem="still_rejected", reason=r.reason, detail=_clean(r.detail))
            events += evs
        lost: Counter[str] = Counter()
        for ev in events:
            if mapping:
                k = ev.get("recipient_key")
                if k in mapping:
                    ev["recipient_key"] = mapping[k]
                for name, val in list(ev.items()):
                    if not isinstance(val, str) or "redacted+" not in val:
                        continue
                    if name == "response":  # text: an address quoted in it stays redacted
                        ev[name] = _PLACEHOLDER.sub("redacted@", val)
                    else:  # a value cut from a redacted address (a queue's tenant@domain,
                        # a message id): unknown now, and a made-up one would count wrong
                        del ev[name]
                        lost[name] += 1
            rej = self.pipe.feed(orjson.dumps(ev))
            self.fed += 1
            if self.fed % 10_000 == 0:
                self.pipe.flush()  # the counts are not needed: keep memory flat
            if rej is not None:
                return Verdict(problem="still_rejected", reason=rej.reason, detail=rej.detail)
        return Verdict(events=events, lost=lost)


def _clean(detail: str) -> str:
    return redact(detail.encode()).decode("utf-8", "replace")


@dataclass
class RedriveResult:
    selected: int = 0
    already: int = 0
    sent_letters: int = 0
    sent_events: int = 0
    found_sent: int = 0
    empty: int = 0
    problems: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    fields_lost: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "selected": self.selected,
            "already_redriven": self.already,
            "resent_letters": self.sent_letters,
            "resent_events": self.sent_events,
            "found_in_kafka": self.found_sent,
            "no_events": self.empty,
            "not_resent": dict(self.problems),
            "still_rejected": dict(self.reasons),
            "fields_lost": dict(self.fields_lost),
            "examples": self.examples,
            "runs": self.runs,
        }


def redrive(
    settings: Settings,
    reasons: list[str],
    since: float | None,
    dry_run: bool,
    fix_format: str | None,
    config: Path | None,
    limit: int | None = None,
) -> RedriveResult:
    """Re-drive the selected dead letters (see the module docstring).

    Exactly once: each batch of dead letters is announced by an *intent* marker on the
    dead-letter topic (the letters, and the events topic's end offsets at that moment) before
    its events are sent, every event carries ``repmon-redrive: <partition>:<offset>:<item>``,
    and a *done* marker follows once the broker acknowledged them all. A dead letter under a
    done marker is never selected again. After a crash between the two, the next run reads the
    events topic from the intent's offsets and does not send again the events it finds there.
    """
    from kafka import KafkaProducer, TopicPartition

    from streams.worker.topics import ensure_topics

    result = RedriveResult()
    markers = Markers()
    chosen: list[Record] = []
    for rec in read_dlq(settings):
        if rec.marker is not None:
            markers.add(rec.value)
            continue
        v = rec.value
        if reasons and v.get("reason") not in reasons:
            continue
        ts = v.get("received_at")
        if since is not None and (not isinstance(ts, int | float) or ts < since):
            continue
        chosen.append(rec)
    todo: list[Record] = []
    for rec in chosen:
        if rec.id in markers.done:
            result.already += 1
        else:
            todo.append(rec)
    if limit is not None:
        todo = todo[:limit]
    result.selected = len(todo)
    # a re-drive that stopped between its intent and its end: what reached the events topic
    found: set[bytes] = set()
    unfinished = markers.unfinished()
    if unfinished:
        starts: dict[TopicPartition, int] = {}
        for v in unfinished:
            for k, o in (v.get("scan_from") or {}).items():
                topic, _, part = str(k).rpartition(":")
                tp = TopicPartition(topic, int(part))
                starts[tp] = min(int(o), starts.get(tp, int(o)))
        found, _ = scan_headers(settings.kafka_bootstrap, starts, REDRIVE_HEADER, b"")
    checker = Checker(settings, fix_format, config)
    ready: list[tuple[Record, list[dict[str, Any]]]] = []
    for rec in todo:
        verdict = checker.check(rec.value)
        if verdict.problem is not None:
            result.problems[verdict.problem] += 1
            if verdict.problem == "still_rejected":
                result.reasons[verdict.reason] += 1
            if len(result.examples) < 20:
                result.examples.append(
                    {
                        "id": f"{rec.partition}:{rec.offset}",
                        "was": rec.value.get("reason"),
                        "problem": verdict.problem,
                        "reason": verdict.reason,
                        "detail": verdict.detail,
                    }
                )
            continue
        ready.append((rec, verdict.events))
        result.fields_lost.update(verdict.lost)
    if dry_run:
        result.sent_letters = len(ready)
        result.sent_events = sum(len(e) for _, e in ready)
        result.empty = sum(1 for _, e in ready if not e)
        return result
    if not ready:
        return result
    ensure_topics(settings)
    prod = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_request_size=4 << 20,
    )
    meta = _consumer(settings)
    run = uuid.uuid4().hex
    result.runs.append(run)
    try:
        tps = _partitions(meta, settings.topic_events)
        for b, lo in enumerate(range(0, len(ready), BATCH)):
            chunk = ready[lo : lo + BATCH]
            ends = meta.end_offsets(tps)
            intent = {
                "kind": INTENT,
                "run": run,
                "batch": b,
                "at": time.time(),
                "letters": [[r.partition, r.offset] for r, _ in chunk],
                "scan_from": {f"{tp.topic}:{tp.partition}": int(o) for tp, o in ends.items()},
                "fix_format": fix_format,
            }
            _mark(prod, settings, intent)
            futs = []
            n_events = 0
            for r, events in chunk:
                for j, ev in enumerate(events):
                    mark = f"{r.partition}:{r.offset}:{j}".encode()
                    if mark in found:
                        result.found_sent += 1
                        continue
                    futs.append(
                        prod.send(
                            settings.topic_events,
                            key=event_key(ev),
                            value=orjson.dumps(ev),
                            headers=[(REDRIVE_HEADER, mark)],
                        )
                    )
                    n_events += 1
                if not events:
                    result.empty += 1
            prod.flush(timeout=150)
            for f in futs:
                f.get(timeout=150)  # raises the delivery error, if any: no done marker then
            _mark(
                prod,
                settings,
                {"kind": DONE, "run": run, "batch": b, "at": time.time(), "events": n_events},
            )
            result.sent_letters += len(chunk)
            result.sent_events += n_events
    finally:
        meta.close()
        prod.close(timeout=30)
    return result


def _mark(prod: Any, settings: Settings, value: dict[str, Any]) -> None:
    """Write a marker on the dead-letter topic and wait for the broker's acknowledgement."""
    prod.send(
        settings.topic_dlq,
        key=f"{value['run']}:{value['batch']}".encode(),
        value=orjson.dumps(value),
        headers=[(MARKER_HEADER, str(value["kind"]).encode())],
    ).get(timeout=150)


# -- the verb ---------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    dlq = typer.Typer(
        help="The dead-letter topic: list, show and re-drive dead letters.",
        no_args_is_help=True,
    )
    app.add_typer(dlq, name="dlq")

    @dlq.command("list")
    def list_(
        reason: Annotated[
            list[str] | None, typer.Option("--reason", "-r", help="only this reason (repeatable)")
        ] = None,
        limit: Annotated[
            int, typer.Option("--limit", "-n", min=0, help="the latest entries shown")
        ] = 20,
        as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
    ) -> None:
        """Counts by reason and the latest dead letters (never their original bytes)."""
        from streams.worker.settings import get_settings

        settings = get_settings()
        want = set(reason or ())
        counts: Counter[str] = Counter()
        redriven_by: Counter[str] = Counter()
        latest: deque[dict[str, Any]] = deque(maxlen=limit or None)
        reason_of: dict[tuple[int, int], str] = {}
        markers = Markers()
        n_markers = 0
        for rec in read_dlq(settings):
            if rec.marker is not None:
                markers.add(rec.value)
                n_markers += 1
                continue
            r = str(rec.value.get("reason"))
            if want and r not in want:
                continue
            counts[r] += 1
            reason_of[rec.id] = r
            if limit:
                latest.append(_summary(rec.value, rec.partition, rec.offset))
        for i in markers.done:
            if i in reason_of:
                redriven_by[reason_of[i]] += 1
        for e in latest:
            p, o = (int(x) for x in e["id"].split(":"))
            e["redriven"] = (p, o) in markers.done
        if as_json:
            doc = {
                "topic": settings.topic_dlq,
                "total": sum(counts.values()),
                "redriven": sum(redriven_by.values()),
                "by_reason": {
                    r: {"count": n, "redriven": redriven_by[r]} for r, n in counts.most_common()
                },
                "markers": n_markers,
                "latest": list(latest),
            }
            typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        total = sum(counts.values())
        typer.echo(
            f"{settings.topic_dlq}: {total:,} dead letters"
            + (f" with reason {', '.join(sorted(want))}" if want else "")
            + f", {sum(redriven_by.values()):,} re-driven"
        )
        if counts:
            typer.echo(f"  {'count':>9}  {'re-driven':>9}  reason")
            for r, n in counts.most_common():
                typer.echo(f"  {n:>9,}  {redriven_by[r]:>9,}  {r}")
        if latest:
            typer.echo(f"latest {len(latest)} (oldest first):")
            for e in latest:
                detail = str(e["detail"] or "")
                detail = detail if len(detail) <= 80 else detail[:77] + "..."
                flag = "  [re-driven]" if e["redriven"] else ""
                typer.echo(
                    f"  {e['id']:>10}  {_when(e['received_at'])}  {e['reason']}  "
                    f"{e['source']}  {detail}{flag}"
                )

    @dlq.command("show")
    def show(
        which: Annotated[str, typer.Argument(help="OFFSET (partition 0) or PARTITION:OFFSET")],
        as_json: Annotated[bool, typer.Option("--json", help="one JSON document")] = False,
    ) -> None:
        """One dead letter, with its original (as text if it is text, else base64)."""
        from kafka import TopicPartition

        from streams.worker.settings import get_settings

        part_s, _, off_s = which.rpartition(":")
        try:
            part, off = int(part_s or 0), int(off_s)
        except ValueError as exc:
            raise typer.BadParameter(f"{which!r}: OFFSET or PARTITION:OFFSET") from exc
        settings = get_settings()
        c = _consumer(settings)
        try:
            tp = TopicPartition(settings.topic_dlq, part)
            if tp not in _partitions(c, settings.topic_dlq):
                typer.echo(f"no partition {part} in {settings.topic_dlq}", err=True)
                raise typer.Exit(1)
            lo, hi = c.beginning_offsets([tp])[tp], c.end_offsets([tp])[tp]
            if not lo <= off < hi:
                typer.echo(
                    f"no record at {part}:{off} in {settings.topic_dlq} (offsets {lo}..{hi - 1})",
                    err=True,
                )
                raise typer.Exit(1)
            c.assign([tp])
            c.seek(tp, off)
            got = None
            deadline = time.monotonic() + 60
            while got is None and time.monotonic() < deadline:
                for r in c.poll(timeout_ms=500, max_records=1).get(tp, []):
                    got = _record(r.partition, r.offset, r.value, list(r.headers))
        finally:
            c.close()
        if got is None or got.offset != off:
            typer.echo(f"no record at {part}:{off} (compacted or deleted?)", err=True)
            raise typer.Exit(1)
        v = dict(got.value)
        if got.marker is not None:
            typer.echo(orjson.dumps(v, option=orjson.OPT_INDENT_2).decode())
            return
        raw = _original(v)
        text = _as_text(raw)
        v.pop("original_b64", None)
        if text is not None:
            v["original"] = text
        else:
            v["original_b64"] = base64.b64encode(raw).decode("ascii")
        if as_json:
            typer.echo(orjson.dumps(v, option=orjson.OPT_INDENT_2).decode())
            return
        typer.echo(f"dead letter {part}:{off} of {settings.topic_dlq}")
        typer.echo(f"  reason:      {v.get('reason')}")
        typer.echo(f"  detail:      {v.get('detail')}")
        typer.echo(f"  source:      {source_of(v)}")
        typer.echo(f"  received_at: {_when(v.get('received_at'))} ({v.get('received_at')})")
        shown = {"reason", "detail", "topic", "partition", "offset", "received_at", "format"}
        shown |= {"original", "original_b64", "address_keys"}
        for k in sorted(set(v) - shown):
            typer.echo(f"  {k}: {orjson.dumps(v[k]).decode()}")
        if text is not None:
            typer.echo(f"original ({len(raw):,} bytes, text):")
            typer.echo(text)
        else:
            typer.echo(f"original ({len(raw):,} bytes, base64):")
            typer.echo(v["original_b64"])

    @dlq.command("redrive")
    def redrive_cmd(
        reason: Annotated[
            list[str] | None,
            typer.Option("--reason", "-r", help="only dead letters of this reason (repeatable)"),
        ] = None,
        since: Annotated[
            str | None,
            typer.Option(
                "--since", help="only those received since: epoch, ISO 8601 time, or 2h / 3d"
            ),
        ] = None,
        dry_run: Annotated[
            bool, typer.Option("--dry-run", help="check and report, send nothing")
        ] = False,
        fix_format: Annotated[
            str | None,
            typer.Option(
                "--fix-format", help=f"parse the originals as this format ({', '.join(FORMATS)})"
            ),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="TOML file; its [<format>] table configures the parser"),
        ] = None,
        limit: Annotated[
            int | None, typer.Option("--limit", min=1, help="re-drive at most this many")
        ] = None,
        as_json: Annotated[bool, typer.Option("--json", help="the summary as JSON")] = False,
    ) -> None:
        """Send fixed dead letters to the events topic again (still broken ones are reported)."""
        from streams.worker.settings import get_settings

        if fix_format is not None and fix_format not in FORMATS:
            raise typer.BadParameter(f"--fix-format must be one of {', '.join(FORMATS)}")
        t = parse_since(since) if since is not None else None
        settings = get_settings()
        res = redrive(settings, list(reason or ()), t, dry_run, fix_format, config, limit)
        if as_json:
            doc = res.to_json()
            doc["dry_run"] = dry_run
            typer.echo(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
            return
        verb = "would re-send" if dry_run else "re-sent"
        typer.echo(
            f"repmon dlq redrive: {res.selected:,} dead letters selected"
            + (f" ({res.already:,} re-driven before, left alone)" if res.already else "")
        )
        typer.echo(
            f"  {verb}: {res.sent_letters:,} dead letters, {res.sent_events:,} events to "
            f"{settings.topic_events}"
            + (f" ({res.empty:,} of them give no event)" if res.empty else "")
            + (f"; {res.found_sent:,} events found there already" if res.found_sent else "")
        )
        if res.fields_lost:
            typer.echo(
                "  fields left out (redaction took their value): "
                + ", ".join(f"{k}: {n:,}" for k, n in res.fields_lost.most_common())
            )
        if res.problems:
            typer.echo(
                "  not re-sent: "
                + ", ".join(f"{k}: {n:,}" for k, n in res.problems.most_common())
                + (
                    " (still rejected: "
                    + ", ".join(f"{k}: {n:,}" for k, n in res.reasons.most_common())
                    + ")"
                    if res.reasons
                    else ""
                )
            )
            for e in res.examples:
                typer.echo(f"    {e['id']:>10}  {e['was']} -> {e['reason']}: {e['detail']}")
