"""The wire form of repmon.rollup messages and the split of Deltas by owning rollup partition.

Pure functions over ``models.state.deltas.Deltas``: encode/decode (msgpack via msgspec), the
owner of a scope (``crc32(scope) % partitions``, stable across processes), the split of one
flush by owner, and the chunking of a large flush into messages of at most
``MAX_ROWS_PER_MESSAGE`` rows. And the dead-letter value (:func:`dlq_record`: the worker's
refused messages; :func:`redacted_dlq_record`: the native records ``repmon ingest`` and
``repmon gateway`` refuse, addresses redacted).
"""

from __future__ import annotations

import base64
import time
import zlib

import msgspec
import numpy as np
import orjson

from models.ingest.validate import Rejection
from models.schema import N_COLUMNS
from models.state.deltas import Deltas
from streams.redaction import redact, redact_bounded


class DeltaMessage(msgspec.Struct, array_like=True):
    """Wire form of a Deltas on repmon.rollup (msgpack)."""

    src: str
    seq: int
    watermark: float
    scopes: list[str]
    scope_idx: bytes  # int32
    bucket_start: bytes  # int64
    counts: bytes  # int64, (n, ncol)
    ncol: int
    replies: list[tuple[int, str, int]]
    #: the input partition whose events these are, and whether its reader is idle (caught up and
    #: quiet: it does not hold the owners' watermark back); defaults keep older messages readable
    part: int = -1
    idle: bool = False
    #: (part, whole) scope pairs of the tick (``Deltas.members``: IP -> pool)
    members: list[tuple[str, str]] = []


_delta_encoder = msgspec.msgpack.Encoder()
_delta_decoder = msgspec.msgpack.Decoder(DeltaMessage)


def encode_deltas(d: Deltas, src: str, seq: int, part: int = -1, idle: bool = False) -> bytes:
    return _delta_encoder.encode(
        DeltaMessage(
            src=src,
            seq=seq,
            watermark=d.watermark,
            scopes=d.scopes,
            scope_idx=d.scope_idx.astype(np.int32).tobytes(),
            bucket_start=d.bucket_start.astype(np.int64).tobytes(),
            counts=np.ascontiguousarray(d.counts, dtype=np.int64).tobytes(),
            ncol=N_COLUMNS,
            replies=d.replies,
            part=part,
            idle=idle,
            members=d.members,
        )
    )


def decode_deltas(raw: bytes) -> tuple[Deltas, str, int]:
    d, m = decode_message(raw)
    return d, m.src, m.seq


def decode_message(raw: bytes) -> tuple[Deltas, DeltaMessage]:
    """The Deltas and the message's envelope (source, seq, input partition, idle)."""
    m = _delta_decoder.decode(raw)
    if m.ncol != N_COLUMNS:
        raise ValueError(f"delta with {m.ncol} columns, this worker knows {N_COLUMNS}")
    n = len(m.scope_idx) // 4
    d = Deltas(
        scopes=m.scopes,
        scope_idx=np.frombuffer(m.scope_idx, dtype=np.int32).copy(),
        bucket_start=np.frombuffer(m.bucket_start, dtype=np.int64).copy(),
        counts=np.frombuffer(m.counts, dtype=np.int64).reshape(n, N_COLUMNS).copy(),
        replies=[(int(a), str(b), int(c)) for a, b, c in m.replies],
        watermark=m.watermark,
        members=[(str(a), str(b)) for a, b in m.members],
    )
    return d, m


def owner_partition(scope: str, partitions: int) -> int:
    """The rollup partition that owns a scope: stable across processes and restarts."""
    return zlib.crc32(scope.encode("utf-8")) % partitions


def split_by_owner(d: Deltas, partitions: int) -> dict[int, Deltas]:
    """Split one Deltas into one per owning rollup partition (vectorised over rows). Every piece
    carries the membership pairs (a few per tick), so each owner relates the IPs and pools it
    holds."""
    if len(d) == 0:
        return {}
    owner_of_scope = np.array([owner_partition(s, partitions) for s in d.scopes], dtype=np.int64)
    row_owner = owner_of_scope[d.scope_idx]
    out: dict[int, Deltas] = {}
    for p in np.unique(row_owner):
        rows = np.flatnonzero(row_owner == p)
        used, local = np.unique(d.scope_idx[rows], return_inverse=True)
        remap = {int(g): i for i, g in enumerate(used)}
        out[int(p)] = Deltas(
            scopes=[d.scopes[int(g)] for g in used],
            scope_idx=local.astype(np.int32),
            bucket_start=d.bucket_start[rows],
            counts=d.counts[rows],
            replies=[(remap[i], t, c) for i, t, c in d.replies if i in remap],
            watermark=d.watermark,
        )
    for piece in out.values():
        piece.members = list(d.members)
    return out


#: rows of one rollup message at most: a row is N_COLUMNS int64 counts plus its scope, so 2,000
#: rows stay well under the broker's default 1 MB message limit
MAX_ROWS_PER_MESSAGE = 2000


def chunk_deltas(d: Deltas, max_rows: int) -> list[Deltas]:
    """``d`` in pieces of at most ``max_rows`` rows (one empty piece for an empty ``d``); each
    piece names only its own scopes, and replies go with the piece that has their scope."""
    n = len(d)
    if n <= max_rows:
        return [d]
    out: list[Deltas] = []
    first_piece: dict[int, tuple[int, int]] = {}  # scope index in d -> (piece, index in piece)
    for lo in range(0, n, max_rows):
        rows = np.arange(lo, min(n, lo + max_rows))
        used, local = np.unique(d.scope_idx[rows], return_inverse=True)
        for j, g in enumerate(used.tolist()):
            first_piece.setdefault(g, (len(out), j))
        out.append(
            Deltas(
                scopes=[d.scopes[int(g)] for g in used],
                scope_idx=local.astype(np.int32),
                bucket_start=d.bucket_start[rows],
                counts=d.counts[rows],
                watermark=d.watermark,
            )
        )
    out[0].members.extend(d.members)
    for i, text, cnt in d.replies:  # a scope's replies go with its first piece
        where = first_piece.get(i)
        if where is not None:
            out[where[0]].replies.append((where[1], text, cnt))
    return out


#: a dead letter keeps at most this much of its original, and a redacted one at most this many
#: address keys, so that it stays far below the dead-letter topic's 4 MiB message limit
MAX_ORIGINAL_BYTES = 1 << 20
MAX_ADDRESS_KEYS = 10_000


def dlq_record(
    rej: Rejection, raw: bytes, topic: str, partition: int, offset: int, **extra: object
) -> bytes:
    """The dead-letter value: reason, detail and the original bytes (base64, at most 1 MiB)."""
    return orjson.dumps(
        {
            "reason": rej.reason,
            "detail": rej.detail,
            "topic": topic,
            "partition": partition,
            "offset": offset,
            "received_at": time.time(),
            "original_b64": base64.b64encode(raw[:MAX_ORIGINAL_BYTES]).decode("ascii"),
            "original_truncated": len(raw) > MAX_ORIGINAL_BYTES,
            **extra,
        }
    )


def redacted_dlq_record(
    rej: Rejection, rec: bytes, source: str, number: int, fmt: str, **extra: object
) -> bytes:
    """The dead-letter value of a native record (or batch item) a parser refused, as
    ``repmon ingest``, its ``--follow`` and ``repmon gateway`` write it: :func:`dlq_record` with
    ``topic`` the source, ``partition`` -1 and ``offset`` the record's number in its source
    (``offset_unit`` ``record``), ``format``, the detail and the original redacted
    (:mod:`streams.redaction`: every address ``redacted@<domain>``), and the recipient keys of
    the redacted addresses, in order, in ``address_keys`` (their number in ``redacted``) for
    ``repmon dlq redrive``. The original is cut at :data:`MAX_ORIGINAL_BYTES` or
    :data:`MAX_ADDRESS_KEYS` addresses, before an address, never inside one, so that
    ``address_keys`` names exactly the addresses kept (``original_truncated``;
    ``original_bytes`` the whole record's size)."""
    raw, keys, cut = redact_bounded(rec, MAX_ORIGINAL_BYTES, MAX_ADDRESS_KEYS)
    clean = Rejection(rej.reason, redact(rej.detail.encode()).decode("utf-8", "replace"))
    return dlq_record(
        clean,
        raw,
        source,
        -1,
        number,
        format=fmt,
        offset_unit="record",
        redacted=len(keys),
        address_keys=keys,
        original_truncated=cut,
        original_bytes=len(rec),
        **extra,
    )
