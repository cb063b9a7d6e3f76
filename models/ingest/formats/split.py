"""Cutting a byte stream into the records of a format.

Every splitter has the signature ``split(buf, final) -> (records, consumed)``: the complete
records at the start of ``buf`` and the number of bytes they used (separators included). Bytes
after ``consumed`` are an incomplete record: keep them, append what is read next, call again.
``final=True`` says no more bytes will come (end of file, end of a request body): then the rest
is a record too, complete or not (the parser rejects it if it is broken). A reader that follows
a growing file checkpoints ``consumed`` offsets, which always fall between records.

If a buffer holds no complete record and grows past the parser's ``max_record_bytes``, call the
splitter with ``final=True`` on it: the record is then rejected as ``too_large`` instead of
being buffered without bound.
"""

from __future__ import annotations

import re
from itertools import pairwise

_MBOX_FROM = re.compile(rb"^From ", re.MULTILINE)
_MBOX_QUOTED = re.compile(rb"^>(>*From )", re.MULTILINE)
_JSON_TOKEN = re.compile(rb'["\\{}\[\]]')
_SPACE = b" \t\r\n"


def split_lines(buf: bytes, final: bool) -> tuple[list[bytes], int]:
    """Log formats: one record per line (``\\n``, a ``\\r`` before it dropped); blank lines
    are consumed without making a record."""
    end = len(buf) if final else buf.rfind(b"\n") + 1
    if end <= 0:
        return [], 0
    lines = (buf[:end] if end < len(buf) else buf).split(b"\n")
    return [ln.rstrip(b"\r") for ln in lines if ln and not ln.isspace()], end


def split_csv(buf: bytes, final: bool) -> tuple[list[bytes], int]:
    """CSV (RFC 4180): one record per line, except that a line break inside a quoted value
    continues the record."""
    if b'"' not in buf:
        return split_lines(buf, final)
    records: list[bytes] = []
    start = pos = 0
    quotes = 0
    n = len(buf)
    while True:
        nl = buf.find(b"\n", pos)
        if nl < 0:
            break
        quotes += buf.count(b'"', pos, nl)
        pos = nl + 1
        if quotes % 2 == 0:
            rec = buf[start:nl].rstrip(b"\r")
            if rec and not rec.isspace():
                records.append(rec)
            start = pos
            quotes = 0
    if final and start < n:
        rec = buf[start:].rstrip(b"\r\n")
        if rec and not rec.isspace():
            records.append(rec)
        start = n
    return records, start


def _json_end(buf: bytes, start: int) -> int:
    """The end (exclusive) of the JSON object or array starting at ``start``, or -1 when it is
    not complete in ``buf``."""
    depth = 0
    in_str = False
    pos = start
    search = _JSON_TOKEN.search
    while True:
        m = search(buf, pos)
        if m is None:
            return -1
        c = buf[m.start()]
        pos = m.end()
        if in_str:
            if c == 0x5C:  # backslash: skip the escaped byte
                pos += 1
            elif c == 0x22:
                in_str = False
        elif c == 0x22:
            in_str = True
        elif c in (0x7B, 0x5B):
            depth += 1
        elif c in (0x7D, 0x5D):
            depth -= 1
            if depth == 0:
                return pos


def split_json(buf: bytes, final: bool) -> tuple[list[bytes], int]:
    """JSON formats: each top-level object or array is a record, whether they come one per line
    (JSON Lines, Firehose), concatenated, or pretty-printed over many lines. Anything else up
    to the end of its line is a record of its own (the parser rejects it as ``bad_json``), so
    one broken line never swallows the records after it."""
    records: list[bytes] = []
    n = len(buf)
    pos = 0
    while True:
        while pos < n and buf[pos] in _SPACE:
            pos += 1
        if pos >= n:
            return records, n
        nl = buf.find(b"\n", pos)
        line_end = n if nl < 0 else nl
        c = buf[pos]
        if c in (0x7B, 0x5B):  # { or [
            # fast path: a whole document on one line (JSON Lines)
            if nl >= 0 or final:
                line = buf[pos:line_end].rstrip()
                close = 0x7D if c == 0x7B else 0x5D
                if (
                    line
                    and line[-1] == close
                    and line.count(b"{") == line.count(b"}")
                    and line.count(b"[") == line.count(b"]")
                ):
                    records.append(line)
                    pos = line_end + 1 if nl >= 0 else n
                    continue
                # an object's second line can only start with a key or "}": a line starting
                # with "{" or "[" means this one is a broken JSON Lines record
                if c == 0x7B and nl >= 0 and buf[nl + 1 : nl + 2] in (b"{", b"["):
                    records.append(line)
                    pos = nl + 1
                    continue
            end = _json_end(buf, pos)
            if end < 0:
                if final:
                    records.append(buf[pos:].rstrip())
                    return records, n
                return records, pos
            records.append(buf[pos:end])
            pos = end
            continue
        if nl < 0 and not final:
            return records, pos
        records.append(buf[pos:line_end].rstrip())
        pos = line_end + 1 if nl >= 0 else n


def split_mail(buf: bytes, final: bool) -> tuple[list[bytes], int]:
    """Mail formats: an mbox (messages after ``From `` separator lines, ``>From`` unquoted) or
    one whole message (a Maildir file, stdin), complete only when ``final``."""
    if not buf.startswith(b"From "):
        if not final:
            return [], 0
        return ([buf] if buf.strip() else []), len(buf)
    starts = [m.start() for m in _MBOX_FROM.finditer(buf)]
    records: list[bytes] = []
    bounds = list(pairwise(starts))
    if final:
        bounds.append((starts[-1], len(buf)))
    for a, b in bounds:
        nl = buf.find(b"\n", a, b)
        body = buf[nl + 1 : b] if nl >= 0 else b""
        if body.strip():
            records.append(_MBOX_QUOTED.sub(rb"\1", body))
    consumed = len(buf) if final else starts[-1]
    return records, consumed
