"""``repmon suppressions export``: the current recipient suppression list, from the topic.

    repmon suppressions export --format csv|kumomta [--bootstrap B] [--topic T] [--output FILE]
                               [--state S ...] [--addresses FILE]

Reads the compacted topic ``repmon.suppressions`` (docs/suppression.md, "Record") from the start
of each partition up to the end offsets taken when it starts (``read_committed``: records of
aborted transactions are skipped, and the end is the last stable offset), keeps the last value
per recipient key (a tombstone or an ``active`` record removes it; the parsing and the table are
the fleet client's, :mod:`streams.fleet.suppressions`) and writes the entries of the chosen
states, in recipient-key order:

* ``csv``: ``recipient_key,state,reason,count,until,permanent,incident,at`` (``until`` epoch
  seconds or empty, ``permanent`` true/false, ``at`` the record's event time);
* ``kumomta``: JSON lines, each the body of one ``POST /api/admin/suppression/v1/bulk`` request
  of kumod's suppression-list API (at most :data:`KUMO_BATCH` entries a line), see
  :func:`kumo_entries` for the mapping. repmon knows recipients by their hash only:
  ``--addresses FILE`` (the sender's own addresses, one a line) is hashed here, the
  pipeline's way, to put each entry's address back; entries whose key is not among them are
  left out. Without it the ``recipient`` field carries the 64-hex recipient key, which the
  sender replaces with its own mapping before pushing (kumod refuses a recipient without ``@``).

No address is ever logged; the summary on stderr has counts only. Errors (broker unreachable,
unknown topic, a read that makes no progress) print one line and exit 1; the output file is
written to a temporary name and renamed only when complete.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any

import numpy as np
import orjson
import typer
from numpy.typing import NDArray

from models.ingest.recipients import recipient_digest
from streams.fleet.suppressions import (
    DEFAULT_TOPIC,
    MalformedRecord,
    Staging,
    SuppressionEntry,
    SuppressionTable,
    keys_of,
    parse_message,
)

if TYPE_CHECKING:
    from kafka import KafkaConsumer

FORMATS = ("csv", "kumomta")
#: states an export can hold (``active`` recipients have no entry)
EXPORT_STATES = ("suspended", "quarantined", "suppressed")
#: the states exported when ``--state`` is not given, per format: kumod's suppression list
#: has no expiry, so by default only suppressions go there (see :func:`kumo_entries`)
DEFAULT_STATES = {"csv": EXPORT_STATES, "kumomta": ("suppressed",)}
CSV_HEADER = ("recipient_key", "state", "reason", "count", "until", "permanent", "incident", "at")
#: entries per kumod bulk request (one JSON line)
KUMO_BATCH = 1000
#: kumod's suppression types: repmon's verdict is about the address, for every stream
KUMO_TYPES = ("transactional", "non_transactional")
#: repmon reason -> kumod ``source``; any other reason (a bounce reason) -> ``bounce``
KUMO_SOURCE = {"complaint": "complaint", "unsubscribe": "list_unsubscribe", "manual": "manual"}


class ExportError(Exception):
    """A reason the export cannot be made (the message is printed as is)."""


@dataclass
class ReadStats:
    partitions: int = 0
    records: int = 0
    tombstones: int = 0
    skipped: int = 0
    why_skipped: dict[str, int] = field(default_factory=dict)


# -- reading ----------------------------------------------------------------------------------


def _consumer(bootstrap: str, connect_timeout_s: float) -> KafkaConsumer:
    from kafka import KafkaConsumer

    cfg: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": None,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "isolation_level": "read_committed",
        "client_id": "repmon-suppressions-export",
        "request_timeout_ms": 30_000,
        "max_partition_fetch_bytes": 8 << 20,
        "fetch_max_bytes": 64 << 20,
    }
    known = KafkaConsumer.DEFAULT_CONFIG
    if "allow_auto_create_topics" in known:
        cfg["allow_auto_create_topics"] = False
    for k in ("bootstrap_timeout_ms", "api_version_auto_timeout_ms"):  # kafka-python 3.x, 2.x
        if k in known:
            cfg[k] = int(connect_timeout_s * 1000)
            break
    return KafkaConsumer(**cfg)


def read_topic(
    bootstrap: str,
    topic: str,
    *,
    connect_timeout_s: float = 15.0,
    stall_s: float = 60.0,
) -> tuple[SuppressionTable, ReadStats]:
    """The topic's current list: every partition read from its start to the end offset taken
    when the read starts, the last value per key kept. :class:`ExportError` when the broker
    cannot be reached, the topic does not exist, or no progress is made for ``stall_s``."""
    from kafka import TopicPartition
    from kafka.errors import KafkaError

    try:
        c = _consumer(bootstrap, connect_timeout_s)
    except (KafkaError, OSError, ValueError) as exc:
        raise ExportError(f"cannot reach the Kafka broker at {bootstrap}: {exc}") from None
    stats = ReadStats()
    staged = Staging()
    try:
        try:
            if topic not in c.topics():
                raise ExportError(f"topic {topic!r} does not exist on {bootstrap}")
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
            stats.partitions = len(tps)
            if not tps:
                raise ExportError(f"topic {topic!r} has no partitions on {bootstrap}")
            ends: dict[Any, int] = c.end_offsets(tps)
            starts: dict[Any, int] = c.beginning_offsets(tps)
            todo = [tp for tp in tps if ends[tp] > starts[tp]]
            if todo:
                c.assign(todo)
                c.seek_to_beginning(*todo)
                _read(c, todo, ends, staged, stats, stall_s, topic)
        except KafkaError as exc:
            raise ExportError(f"reading {topic!r} from {bootstrap} failed: {exc}") from None
    finally:
        with contextlib.suppress(Exception):
            c.close(autocommit=False)
    table = SuppressionTable()
    table.load_staged(staged)
    return table, stats


def _read(
    c: KafkaConsumer,
    todo: list[Any],
    ends: dict[Any, int],
    staged: Staging,
    stats: ReadStats,
    stall_s: float,
    topic: str,
) -> None:
    left = set(todo)
    last_progress = time.monotonic()
    while left:
        progressed = False
        batch = c.poll(timeout_ms=500, max_records=20_000)
        for tp, msgs in batch.items():
            end = ends[tp]
            rows = []
            for m in msgs:
                if m.offset >= end:
                    break  # written after the export started
                try:
                    rows.append(parse_message(m.key, m.value))
                except MalformedRecord as exc:
                    stats.skipped += 1
                    why = str(exc)
                    stats.why_skipped[why] = stats.why_skipped.get(why, 0) + 1
                    continue
                if m.value is None:
                    stats.tombstones += 1
                else:
                    stats.records += 1
            staged.add(rows)
            progressed = progressed or bool(msgs)
        for tp in list(left):
            if c.position(tp) >= ends[tp]:  # past control records too
                left.discard(tp)
                c.pause(tp)
                progressed = True
        now = time.monotonic()
        if progressed:
            last_progress = now
        elif now - last_progress > stall_s:
            parts = ", ".join(str(tp.partition) for tp in sorted(left, key=lambda t: t.partition))
            raise ExportError(
                f"no progress reading {topic!r} (partitions {parts}) for {stall_s:.0f} s"
            )


# -- addresses --------------------------------------------------------------------------------


@dataclass
class AddressMap:
    """The addresses of ``--addresses`` whose key is among the exported ones."""

    by_key: dict[bytes, str] = field(default_factory=dict)
    lines: int = 0
    not_utf8: int = 0


def map_addresses(path: Path, exported: NDArray[np.bytes_], chunk: int = 1 << 16) -> AddressMap:
    """Hash each address of ``path`` (one a line; blank lines skipped) the pipeline's way and
    keep those whose key is among ``exported`` (sorted ``S32`` keys; the first spelling of a
    key wins). Looked up a chunk of lines at a time (numpy), so a file of millions of
    addresses costs the hashing, and memory only for the matches."""
    out = AddressMap()
    lines: list[str] = []

    def flush() -> None:
        if not lines:
            return
        keys = keys_of(lines)
        if exported.shape[0]:
            pos = np.minimum(np.searchsorted(exported, keys), exported.shape[0] - 1)
            for i in np.flatnonzero(exported[pos] == keys):
                k = recipient_digest(lines[i])
                out.by_key.setdefault(k, lines[i])
        lines.clear()

    with path.open("rb") as f:
        for raw in f:
            try:
                line = raw.decode("utf-8").strip()
            except UnicodeDecodeError:
                out.not_utf8 += 1
                continue
            if not line:
                continue
            out.lines += 1
            lines.append(line)
            if len(lines) >= chunk:
                flush()
    flush()
    return out


# -- writing ----------------------------------------------------------------------------------


def _num(v: float) -> str:
    return orjson.dumps(v).decode()


def csv_lines(entries: Iterable[SuppressionEntry]) -> Iterator[str]:
    """The CSV export, header first (no field ever needs quoting except an incident id or a
    reason name with a comma or a quote, which are quoted)."""
    yield ",".join(CSV_HEADER) + "\n"
    for e in entries:
        yield (
            ",".join(
                (
                    e.recipient_key,
                    e.state,
                    _csv(e.reason),
                    str(e.count),
                    "" if e.until is None else str(e.until),
                    "true" if e.permanent else "false",
                    _csv(e.incident),
                    "" if e.at is None else _num(e.at),
                )
            )
            + "\n"
        )


def _csv(v: str | None) -> str:
    if v is None:
        return ""
    if any(ch in v for ch in ',"\r\n'):
        return '"' + v.replace('"', '""') + '"'
    return v


def _iso(t: int) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def kumo_description(e: SuppressionEntry) -> str:
    """What the entry is in repmon, for kumod's ``description`` (no address in it)."""
    why = f"{e.reason or 'no reason'}, count {e.count}"
    if e.state == "suppressed":
        if e.permanent:
            return f"repmon: suppressed permanently ({why})"
        return f"repmon: suppressed until {_iso(e.until or 0)} ({why}); remove the entry then"
    if e.state == "suspended":
        until = "further notice" if e.until is None else _iso(e.until)
        return f"repmon: suspended until {until} ({why}); remove the entry then"
    inc = e.incident or "an open incident"
    return (
        f"repmon: quarantined by {inc} ({e.reason or 'no reason'}, {e.count} held); hold the "
        "mail, do not drop the address; remove the entry when the incident closes"
    )


def kumo_entries(e: SuppressionEntry, recipient: str) -> list[dict[str, str]]:
    """kumod suppression-list entries for one repmon entry (``SuppressionCreateRequest``:
    ``recipient``, ``type``, ``source``, ``description``; kumod refuses other keys).

    * ``type``: both ``transactional`` and ``non_transactional``: repmon's verdict is about the
      address, for every stream it is sent;
    * ``source``: ``complaint`` -> ``complaint``, ``unsubscribe`` -> ``list_unsubscribe`` (repmon
      does not know which unsubscribe mechanism was used), ``manual`` -> ``manual``, every bounce
      reason (suppressed, suspended, quarantined) -> ``bounce``;
    * ``description``: the state and, for entries that end (a suspension, a suppression with a
      duration, a quarantine), when: kumod's entries have no expiry, the sender removes them
      then (or pushes a fresh export and deletes what left it)."""
    source = KUMO_SOURCE.get(e.reason or "", "bounce")
    desc = kumo_description(e)
    return [
        {"recipient": recipient, "type": t, "source": source, "description": desc}
        for t in KUMO_TYPES
    ]


def kumo_lines(
    entries: Iterable[SuppressionEntry], addresses: dict[bytes, str] | None
) -> Iterator[str]:
    """JSON lines of kumod bulk bodies (``{"recipients": [...]}``, at most :data:`KUMO_BATCH`
    entries each). With ``addresses`` (key -> address) entries without an address are left
    out; without, the recipient key stands in the ``recipient`` field."""
    batch: list[dict[str, str]] = []
    for e in entries:
        if addresses is None:
            who = e.recipient_key
        else:
            found = addresses.get(bytes.fromhex(e.recipient_key))
            if found is None:
                continue
            who = found
        batch += kumo_entries(e, who)
        if len(batch) >= KUMO_BATCH:
            yield orjson.dumps({"recipients": batch[:KUMO_BATCH]}).decode() + "\n"
            batch = batch[KUMO_BATCH:]
    if batch:
        yield orjson.dumps({"recipients": batch}).decode() + "\n"


def _write(lines: Iterable[str], output: Path | None) -> None:
    if output is None or str(output) == "-":
        out: IO[str] = sys.stdout
        for ln in lines:
            out.write(ln)
        out.flush()
        return
    parent = output.resolve().parent
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            for ln in lines:
                f.write(ln)
        os.replace(tmp, output)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def parse_states(values: list[str] | None, fmt: str) -> tuple[str, ...]:
    """``--state`` values (repeatable, or comma-separated) in a fixed order."""
    if not values:
        return DEFAULT_STATES[fmt]
    asked = {s.strip() for v in values for s in v.split(",") if s.strip()}
    bad = sorted(asked - set(EXPORT_STATES))
    if bad:
        raise typer.BadParameter(
            f"{', '.join(bad)}: not an exported state (one of {', '.join(EXPORT_STATES)})",
            param_hint="--state",
        )
    return tuple(s for s in EXPORT_STATES if s in asked)


def export(
    fmt: str,
    bootstrap: str,
    topic: str,
    output: Path | None,
    states: tuple[str, ...],
    addresses: Path | None,
) -> str:
    """Read the topic and write the export; returns the summary line."""
    table, st = read_topic(bootstrap, topic)
    counts = table.counts()
    n = sum(counts[s] for s in states)
    where = "stdout" if output is None or str(output) == "-" else str(output)
    summary = (
        f"{n:,} entries ("
        + ", ".join(f"{s} {counts[s]:,}" for s in states)
        + f") from {topic} ({st.partitions} partitions: {st.records:,} records, "
        f"{st.tombstones:,} tombstones, {st.skipped:,} malformed skipped) to {where}"
    )
    if fmt == "csv":
        _write(csv_lines(table.entries(states)), output)
        return summary
    mapping = None
    if addresses is not None:
        amap = map_addresses(addresses, table.keys(states))
        mapping = amap.by_key
        summary += (
            f"; --addresses: {amap.lines:,} addresses, {len(mapping):,} of the {n:,} entries "
            f"matched (the others left out)"
            + (f", {amap.not_utf8:,} lines not UTF-8 skipped" if amap.not_utf8 else "")
        )
    else:
        summary += "; recipient = the recipient key (no --addresses)"
    _write(kumo_lines(table.entries(states), mapping), output)
    return summary


# -- the command ------------------------------------------------------------------------------


def register(app: typer.Typer) -> None:
    sup = typer.Typer(
        help="The recipient suppression list (the repmon.suppressions topic).",
        no_args_is_help=True,
    )
    app.add_typer(sup, name="suppressions")

    @sup.command("export")
    def export_cmd(
        fmt: Annotated[
            str,
            typer.Option("--format", "-f", help="csv, or kumomta (kumod bulk request bodies)"),
        ],
        bootstrap: Annotated[
            str,
            typer.Option(
                "--bootstrap", envvar="REPMON_KAFKA_BOOTSTRAP", help="Kafka bootstrap servers"
            ),
        ] = "127.0.0.1:9092",
        topic: Annotated[
            str,
            typer.Option("--topic", envvar="REPMON_TOPIC_SUPPRESSIONS", help="the topic"),
        ] = DEFAULT_TOPIC,
        output: Annotated[
            Path | None,
            typer.Option(
                "--output", "-o", help="write here (complete or not at all); default stdout"
            ),
        ] = None,
        state: Annotated[
            list[str] | None,
            typer.Option(
                "--state",
                help="suspended, quarantined, suppressed (repeatable or comma-separated; "
                "default: all three for csv, suppressed for kumomta)",
            ),
        ] = None,
        addresses: Annotated[
            Path | None,
            typer.Option(
                "--addresses",
                help="kumomta: your addresses, one a line, hashed here to put them back "
                "in place of the recipient keys (entries without one are left out)",
                exists=True,
                dir_okay=False,
                readable=True,
            ),
        ] = None,
    ) -> None:
        """Write the current suppression list (entries that may not be mailed now or later)."""
        if fmt not in FORMATS:
            raise typer.BadParameter(f"must be one of {', '.join(FORMATS)}", param_hint="--format")
        if addresses is not None and fmt != "kumomta":
            raise typer.BadParameter("only with --format kumomta", param_hint="--addresses")
        states = parse_states(state, fmt)
        try:
            summary = export(fmt, bootstrap, topic, output, states, addresses)
        except ExportError as exc:
            typer.echo(f"repmon suppressions export: {exc}", err=True)
            raise typer.Exit(1) from None
        except BrokenPipeError:  # stdout closed early (`| head`): stop quietly
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(1) from None
        except OSError as exc:
            typer.echo(f"repmon suppressions export: cannot write the output: {exc}", err=True)
            raise typer.Exit(1) from None
        typer.echo(f"repmon suppressions export: {summary}", err=True)
