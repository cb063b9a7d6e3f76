"""Native formats -> canonical events: the parsers of ``repmon ingest --format F`` and
``repmon replay --format F`` (docs/ingest.md).

``FORMATS`` maps each format name to a :class:`Format`: ``parser(**config)`` makes a
:class:`~models.ingest.formats.base.Parser` (``feed(record) -> (events, rejections)``, never
raising, with bounded state), ``split(buf, final) -> (records, consumed)`` cuts a byte stream
into that format's records (:mod:`models.ingest.formats.split`). :func:`parse_records` runs
both over a whole buffer.

The events carry ``recipient_key`` and ``recipient_domain``, never the clear address, and every
optional field passes the checks of docs/events.md. Rejections use
:class:`models.ingest.validate.Rejection` with the reasons of ``FORMAT_REJECTION_REASONS``.

Pure logic: standard library (``json``, ``csv``, ``email``, ``re``) and the ingest rules.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from models.ingest.formats.arf import ArfParser
from models.ingest.formats.base import (
    FORMAT_REJECTION_REASONS,
    Event,
    Parser,
    ParserStats,
    Result,
    Splitter,
)
from models.ingest.formats.canonical import CanonicalParser
from models.ingest.formats.dsn import DsnParser
from models.ingest.formats.kumomta import KumoMtaParser
from models.ingest.formats.postfix import PostfixParser
from models.ingest.formats.powermta import PowerMtaParser
from models.ingest.formats.sendgrid import SendGridParser
from models.ingest.formats.ses import SesParser
from models.ingest.formats.split import split_csv, split_json, split_lines, split_mail
from models.ingest.validate import Rejection

__all__ = [
    "FORMATS",
    "FORMAT_REJECTION_REASONS",
    "Event",
    "Format",
    "Parser",
    "ParserStats",
    "Rejection",
    "Result",
    "Splitter",
    "make_parser",
    "parse_records",
]


@dataclass(frozen=True, slots=True)
class Format:
    """A native format: its name, what kind of source it is (``log``: a growing file to follow;
    ``webhook``: HTTP bodies or files of JSON documents; ``mail``: whole messages), its parser
    factory and its splitter."""

    name: str
    kind: str
    parser: Callable[..., Parser]
    split: Splitter
    summary: str


FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("kumomta", "log", KumoMtaParser, split_json, "KumoMTA JSON log records"),
        Format("postfix", "log", PostfixParser, split_lines, "Postfix syslog lines"),
        Format("powermta", "log", PowerMtaParser, split_csv, "PowerMTA CSV accounting files"),
        Format("ses", "webhook", SesParser, split_json, "Amazon SES events (raw or SNS)"),
        Format("sendgrid", "webhook", SendGridParser, split_json, "SendGrid Event Webhook"),
        Format("dsn", "mail", DsnParser, split_mail, "RFC 3464 delivery status notifications"),
        Format("arf", "mail", ArfParser, split_mail, "RFC 5965 abuse feedback reports"),
        Format("canonical", "log", CanonicalParser, split_json, "canonical JSON events"),
    )
}


def make_parser(name: str, **config: Any) -> Parser:
    """A new parser of format ``name`` (a key of FORMATS; KeyError otherwise), configured with
    the keyword arguments its class documents."""
    return FORMATS[name].parser(**config)


def parse_records(
    fmt: str | Format, data: bytes, parser: Parser | None = None, **config: Any
) -> Iterator[tuple[bytes, list[Event], list[Rejection]]]:
    """Every record of ``data`` (a whole file or body) with its events and rejections, in
    order: what an offline reader (replay, ``--out``) needs, the original bytes included for
    the dead letters."""
    f = FORMATS[fmt] if isinstance(fmt, str) else fmt
    p = parser if parser is not None else f.parser(**config)
    records, _ = f.split(data, True)
    for rec in records:
        events, rejections = p.feed(rec)
        yield rec, events, rejections
