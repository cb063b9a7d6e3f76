"""``repmon ingest``: native MTA logs, webhook bodies, DSN and ARF mail -> canonical events, to
Kafka (``mail.events``, keyed by the recipient key) or to a JSONL file.

    repmon ingest --format postfix /var/log/mail.log            # to Kafka
    repmon ingest --format kumomta --out events.jsonl log.json  # to a file (check, or replay later)
    repmon ingest --format dsn --config parsers.toml bounce.eml

The parsers are ``models/ingest/formats`` (docs/ingest.md). Each file is read in blocks and cut
into the format's records; every record gives zero or more events or a rejection with its
reason. To Kafka: kafka-python with ``acks=all`` and idempotence, keyed by ``recipient_key`` (one
recipient's events stay in one partition, where the known-good memory is; the partitions stay
even), rejections to the dead-letter topic with the reason and the original bytes, every e-mail
address in them redacted (``redacted@<domain>``: no recipient leaves the host in clear). With
``--out`` the events go to the file and the rejections to ``--rejects`` (JSON lines) if given.
Following a growing log (``--follow``) is not built yet.
"""

from __future__ import annotations

import inspect
import re
import sys
import tomllib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Annotated, Any

import orjson
import typer

from models.ingest.formats import FORMATS, Format, Parser
from models.ingest.validate import Rejection

#: bytes read at a time
BLOCK = 1 << 20


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
) -> Iterator[tuple[str, bytes, list[dict[str, Any]], list[Rejection]]]:
    """(source, record, events, rejections) for every record of every path ('-' = stdin)."""
    for path in paths:
        name = str(path)
        if name == "-":
            for rec in records(sys.stdin.buffer, fmt):
                ev, rej = parser.feed(rec)
                yield name, rec, ev, rej
            continue
        with path.open("rb") as fh:
            for rec in records(fh, fmt):
                ev, rej = parser.feed(rec)
                yield name, rec, ev, rej


#: an e-mail address in a raw record (for the dead letters: the address does not leave the host)
_ADDRESS = re.compile(
    rb"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@([A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
)


def redact(raw: bytes) -> bytes:
    """``raw`` with every e-mail address replaced by ``redacted@<its domain>``: a dead letter
    keeps the record's shape and reason, never a recipient in clear (the original is still in
    the sender's own log)."""
    return _ADDRESS.sub(rb"redacted@\1", raw)


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
    for _, _, events, _ in convert(paths, FORMATS[fmt], parser):
        for ev in events:
            yield orjson.dumps(ev)


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
        quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no summary")] = False,
    ) -> None:
        """Convert native records to canonical events: to Kafka, or to a file with --out."""
        if fmt not in FORMATS:
            raise typer.BadParameter(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
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
    stream: Iterator[tuple[str, bytes, list[dict[str, Any]], list[Rejection]]],
    out: Path,
    rejects: Path | None,
) -> tuple[int, int, Counter[str]]:
    n_rec = n_ev = 0
    reasons: Counter[str] = Counter()
    rej_fh = rejects.open("wb") if rejects is not None else None
    try:
        with out.open("wb") as fh:
            for source, rec, events, rejs in stream:
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
                                    "original": redact(rec[:4096]).decode("utf-8", "replace"),
                                }
                            )
                            + b"\n"
                        )
    finally:
        if rej_fh is not None:
            rej_fh.close()
    return n_rec, n_ev, reasons


def _to_kafka(
    stream: Iterator[tuple[str, bytes, list[dict[str, Any]], list[Rejection]]], fmt: str
) -> tuple[int, int, Counter[str]]:
    from kafka import KafkaProducer

    from streams.worker.settings import get_settings
    from streams.worker.topics import ensure_topics
    from streams.worker.wire import dlq_record

    settings = get_settings()
    ensure_topics(settings)
    prod = KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        linger_ms=20,
        max_request_size=4 << 20,
    )
    n_rec = n_ev = 0
    reasons: Counter[str] = Counter()
    try:
        for source, rec, events, rejs in stream:
            n_rec += 1
            for ev in events:
                prod.send(settings.topic_events, key=event_key(ev), value=orjson.dumps(ev))
            n_ev += len(events)
            for r in rejs:
                reasons[r.reason] += 1
                r = Rejection(r.reason, redact(r.detail.encode()).decode())
                value = dlq_record(r, redact(rec), source, -1, n_rec - 1, format=fmt)
                prod.send(settings.topic_dlq, value=value)
        prod.flush(timeout=120)
    finally:
        prod.close(timeout=30)
    return n_rec, n_ev, reasons
