"""``repmon ingest``: native MTA logs, webhook bodies, DSN and ARF mail -> canonical events, to
Kafka (``mail.events``, keyed by the recipient key) or to a JSONL file.

    repmon ingest --format postfix /var/log/mail.log            # to Kafka
    repmon ingest --format kumomta --out events.jsonl log.json  # to a file (check, or replay later)
    repmon ingest --format dsn --config parsers.toml bounce.eml
    repmon ingest --format postfix --follow /var/log/mail.log   # tail it, across rotation

The parsers are ``models/ingest/formats`` (docs/ingest.md). Each file is read in blocks and cut
into the format's records; every record gives zero or more events or a rejection with its
reason. To Kafka: kafka-python with ``acks=all`` and idempotence, keyed by ``recipient_key`` (one
recipient's events stay in one partition, where the known-good memory is; the partitions stay
even), rejections to the dead-letter topic with the reason and the original bytes, every e-mail
address in them redacted (``redacted@<domain>``: no recipient leaves the host in clear; the
SHA-256 recipient keys of the redacted addresses go with them, so that ``repmon dlq redrive``
can restore the events' keys; ``streams.worker.wire.redacted_dlq_record``, the gateway's too:
the original cut at 1 MiB or 10,000 addresses, before an address). With ``--out`` the events go to the file and the rejections to
``--rejects`` (JSON lines) if given.

``--follow`` tails one growing log (``streams.cli.ingest_follow``, :class:`Follower` there):
stat polling, rename and copytruncate rotation, a checkpoint file written atomically after the
broker acknowledged everything up to it, and every record it produces marked with a
``repmon-follow`` header (source id, generation, inode, record number, item), so that after a
crash the records the broker already has beyond the checkpoint are found and not sent again:
exactly once (docs/ingest.md, "Following a log"). Its names that other modules import from here
(``FOLLOW_HEADER``, ``Tail``, ``last_line_end``, ``scan_headers``) are re-exported.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import orjson
import typer

from models.ingest.formats import FORMATS, Format, Parser
from models.ingest.validate import Rejection
from streams.cli.ingest_follow import BLOCK, run_follow
from streams.cli.ingest_follow import FOLLOW_HEADER as FOLLOW_HEADER
from streams.cli.ingest_follow import Tail as Tail
from streams.cli.ingest_follow import last_line_end as last_line_end
from streams.cli.ingest_follow import scan_headers as scan_headers
from streams.redaction import redact, redact_bounded

if TYPE_CHECKING:
    from kafka import KafkaProducer

    from streams.worker.settings import Settings


def records(fh: IO[bytes], fmt: Format) -> Iterator[bytes]:
    """The records of a byte stream, cut by the format's splitter as the blocks arrive."""
    buf = b""
    while True:
        block = fh.read(BLOCK)
        final = not block
        buf += block
        recs, used = fmt.split(buf, final)
        yield from recs
        buf = buf[used:]
        if final:
            return


def convert(
    paths: list[Path], fmt: Format, parser: Parser
) -> Iterator[tuple[str, int, bytes, list[dict[str, Any]], list[Rejection]]]:
    """(source, record number in it, record, events, rejections) for every record of every path
    ('-' = stdin)."""
    for path in paths:
        name = str(path)
        if name == "-":
            for n, rec in enumerate(records(sys.stdin.buffer, fmt)):
                ev, rej = parser.feed(rec)
                yield name, n, rec, ev, rej
            continue
        with path.open("rb") as fh:
            for n, rec in enumerate(records(fh, fmt)):
                ev, rej = parser.feed(rec)
                yield name, n, rec, ev, rej


def event_key(ev: dict[str, Any]) -> bytes:
    """The partition key: the recipient key, else the recipient domain."""
    return str(ev.get("recipient_key") or ev.get("recipient_domain") or "").encode()


def parser_config(path: Path | None, fmt: str) -> dict[str, Any]:
    """The ``[<format>]`` table of a TOML file (e.g. Postfix ``year``, ``tz``, ``instances``)."""
    if path is None:
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise typer.BadParameter(f"{path}: {exc}") from exc
    table = doc.get(fmt, {})
    if not isinstance(table, dict):
        raise typer.BadParameter(f"{path}: [{fmt}] must be a table")
    return table


def build_parser(fmt: str, config: Path | None) -> Parser:
    """A parser of format ``fmt`` configured from ``config`` (a usage error when it is bad)."""
    if fmt not in FORMATS:
        raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    f = FORMATS[fmt]
    kw = parser_config(config, fmt)
    if "loads" in inspect.signature(f.parser).parameters:
        kw.setdefault("loads", orjson.loads)
    try:
        return f.parser(**kw)
    except (TypeError, ValueError) as exc:
        raise typer.BadParameter(f"{fmt} parser configuration: {exc}") from exc


def canonical_lines(paths: list[Path], fmt: str, config: Path | None) -> Iterator[bytes]:
    """The canonical events of native files as JSON lines (``repmon replay --format``)."""
    parser = build_parser(fmt, config)
    for _, _, _, events, _ in convert(paths, FORMATS[fmt], parser):
        for ev in events:
            yield orjson.dumps(ev)


def default_state_path(path: Path, fmt: str) -> Path:
    """Where ``--follow`` keeps its checkpoint unless ``--state`` says:
    ``$XDG_STATE_HOME/repmon/follow/<name>.<format>.<hash of the absolute path>.json``
    (``XDG_STATE_HOME`` defaults to ``~/.local/state``)."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    absolute = str(path.absolute())
    h = hashlib.sha256(f"{absolute}\0{fmt}".encode()).hexdigest()[:12]
    return Path(base) / "repmon" / "follow" / f"{path.name}.{fmt}.{h}.json"


def register(app: typer.Typer) -> None:
    @app.command("ingest")
    def ingest(
        paths: Annotated[list[Path], typer.Argument(help="files to read ('-' = stdin)")],
        fmt: Annotated[
            str,
            typer.Option("--format", "-f", help=f"one of: {', '.join(FORMATS)}"),
        ],
        out: Annotated[
            Path | None,
            typer.Option("--out", help="write the canonical events here (JSONL), not to Kafka"),
        ] = None,
        rejects: Annotated[
            Path | None,
            typer.Option("--rejects", help="with --out: write the rejections here (JSONL)"),
        ] = None,
        config: Annotated[
            Path | None,
            typer.Option("--config", help="TOML file; its [<format>] table configures the parser"),
        ] = None,
        follow: Annotated[
            bool,
            typer.Option(
                "--follow",
                help="tail one growing log across rotation (to Kafka), checkpointing after acks",
            ),
        ] = False,
        state: Annotated[
            Path | None,
            typer.Option(
                "--state",
                help="with --follow: the checkpoint file (default under $XDG_STATE_HOME/repmon/follow)",
            ),
        ] = None,
        poll_interval: Annotated[
            float,
            typer.Option("--poll-interval", min=0.01, help="with --follow: seconds between polls"),
        ] = 0.25,
        from_end: Annotated[
            bool,
            typer.Option(
                "--from-end",
                help="with --follow and no checkpoint yet: start at the end of the file",
            ),
        ] = False,
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no summary")] = False,
    ) -> None:
        """Convert native records to canonical events: to Kafka, or to a file with --out."""
        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        if follow:
            if out is not None or rejects is not None:
                raise typer.BadParameter("--follow writes to Kafka: not with --out or --rejects")
            if len(paths) != 1 or str(paths[0]) == "-":
                raise typer.BadParameter("--follow takes exactly one file (not '-')")
            if paths[0].exists() and not paths[0].is_file():
                raise typer.BadParameter(f"not a regular file: {paths[0]}")
            parser = build_parser(fmt, config)
            code = run_follow(
                paths[0],
                fmt,
                parser,
                state or default_state_path(paths[0], fmt),
                poll_interval,
                from_end,
                quiet,
            )
            raise typer.Exit(code)
        if state is not None or from_end:
            raise typer.BadParameter("--state and --from-end go with --follow")
        for p in paths:
            if str(p) != "-" and not p.is_file():
                raise typer.BadParameter(f"no such file: {p}")
        f = FORMATS[fmt]
        parser = build_parser(fmt, config)
        stream = convert(paths, f, parser)
        if out is not None:
            n_rec, n_ev, reasons = _to_file(stream, out, rejects)
        else:
            n_rec, n_ev, reasons = _to_kafka(stream, fmt)
        if not quiet:
            rej = ", ".join(f"{k}: {v}" for k, v in reasons.most_common()) or "none"
            where = str(out) if out is not None else "Kafka"
            typer.echo(
                f"repmon ingest: {n_rec:,} records, {n_ev:,} events to {where}, rejected: {rej}",
                err=True,
            )


def _to_file(
    stream: Iterator[tuple[str, int, bytes, list[dict[str, Any]], list[Rejection]]],
    out: Path,
    rejects: Path | None,
) -> tuple[int, int, Counter[str]]:
    n_rec = n_ev = 0
    reasons: Counter[str] = Counter()
    rej_fh = rejects.open("wb") if rejects is not None else None
    try:
        with out.open("wb") as fh:
            for source, _, rec, events, rejs in stream:
                n_rec += 1
                for ev in events:
                    fh.write(orjson.dumps(ev) + b"\n")
                n_ev += len(events)
                for r in rejs:
                    reasons[r.reason] += 1
                    if rej_fh is not None:
                        rej_fh.write(
                            orjson.dumps(
                                {
                                    "reason": r.reason,
                                    "detail": redact(r.detail.encode()).decode(),
                                    "source": source,
                                    # redacted first, then cut before an address (never inside one)
                                    "original": redact_bounded(rec, 4096, 10_000)[0].decode(
                                        "utf-8", "replace"
                                    ),
                                }
                            )
                            + b"\n"
                        )
    finally:
        if rej_fh is not None:
            rej_fh.close()
    return n_rec, n_ev, reasons


def _producer(settings: Settings) -> KafkaProducer:
    from kafka import KafkaProducer

    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_request_size=4 << 20,
    )


def _to_kafka(
    stream: Iterator[tuple[str, int, bytes, list[dict[str, Any]], list[Rejection]]], fmt: str
) -> tuple[int, int, Counter[str]]:
    from streams.worker.settings import get_settings
    from streams.worker.topics import ensure_topics
    from streams.worker.wire import redacted_dlq_record

    settings = get_settings()
    ensure_topics(settings)
    prod = _producer(settings)
    n_rec = n_ev = 0
    reasons: Counter[str] = Counter()
    try:
        for source, number, rec, events, rejs in stream:
            n_rec += 1
            for ev in events:
                prod.send(settings.topic_events, key=event_key(ev), value=orjson.dumps(ev))
            n_ev += len(events)
            for r in rejs:
                reasons[r.reason] += 1
                value = redacted_dlq_record(r, rec, source, number, fmt)
                prod.send(settings.topic_dlq, value=value)
        prod.flush(timeout=120)
    finally:
        prod.close(timeout=30)
    return n_rec, n_ev, reasons
