"""Per-recipient rows of a tick: what the suppression policy (models/act/suppression/) reads.

``Pipeline.flush()`` turns the accepted events of a tick into ``Deltas`` (counts per scope); the
suppression policy needs the opposite cut: one row per accepted event that can change what is
known about *one recipient*, in feed order. :class:`RecipientRows` is that cut, a frozen bundle of
numpy columns (docs/suppression.md, "Input"):

========================  =========  ===================================================
column                    dtype      meaning
========================  =========  ===================================================
``ts``                    float64    event time, epoch seconds
``kind``                  uint8      ``models.schema.EVENT_KIND_CODE``: only ``delivered``,
                                     ``bounced``, ``rejected``, ``complained``,
                                     ``unsubscribed`` (:data:`RECIPIENT_KINDS`); deferrals
                                     are not needed (a 4xx is the MTA's retry, not a
                                     verdict on the recipient)
``cls``, ``reason``       uint8      the reply's ``CLASS_CODE`` / ``REASON_CODE``
                                     (``NO_CLASS`` / ``NO_REASON`` when the event has no
                                     classified reply)
``ident``                 uint64     the pipeline's recipient identity: the first 8 bytes of
                                     the SHA-256 key, little-endian (0: no recipient)
``key``                   S32        the full SHA-256 digest of the trimmed, lower-cased
                                     address (32 raw bytes)
``mid``                   uint64     the pipeline's stable hash of the message id (BLAKE2b-64,
                                     little-endian, as unsigned); 0 when the event has none
``known_good``            bool       for an unknown-user bounce/rejection: the pipeline's
                                     known-good verdict (the recipient was delivered before
                                     in another message, docs/events.md "Known-good
                                     recipients"); False elsewhere, and everywhere when the
                                     producer does not compute it
``domain_idx``,           int32      index into ``scope_keys`` of the recipient's
``mx_idx``,                          ``domain:``, ``mx:`` (MX operator) and ``provider:``
``provider_idx``                     scope, -1 when unknown
``ip_idx``, ``pool_idx``,  int32      index into ``scope_keys`` of the event's sending
``sender_idx``                       ``ip:``, ``pool:`` and ``sender:`` scope, -1 when
                                     unknown: a ``block`` incident on ``ip:X|provider:P``
                                     names the mail from X to P
========================  =========  ===================================================

``scope_keys`` is a plain list of scope names (``"domain:example.com"``, ``"mx:mimecast"``,
``"provider:google"``, ``"ip:192.0.2.7"``): the scopes an incident could name for the event.

Rows of events without a recipient (ident 0) may be present; the policy skips them. The hashing
helpers below are the pipeline's own (tested equal), for producers that build rows outside the
pipeline (benches, tests).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.schema import EVENT_KIND_CODE

#: event kinds a RecipientRows holds (codes of models.schema.EVENT_KIND_CODE)
RECIPIENT_KINDS: Final[frozenset[int]] = frozenset(
    EVENT_KIND_CODE[k] for k in ("delivered", "bounced", "rejected", "complained", "unsubscribed")
)

KEY_DTYPE: Final = np.dtype("S32")

_COLUMNS: Final[dict[str, Any]] = {
    "ts": np.dtype(np.float64),
    "kind": np.dtype(np.uint8),
    "cls": np.dtype(np.uint8),
    "reason": np.dtype(np.uint8),
    "ident": np.dtype(np.uint64),
    "key": KEY_DTYPE,
    "mid": np.dtype(np.uint64),
    "known_good": np.dtype(np.bool_),
    "domain_idx": np.dtype(np.int32),
    "mx_idx": np.dtype(np.int32),
    "provider_idx": np.dtype(np.int32),
    "ip_idx": np.dtype(np.int32),
    "pool_idx": np.dtype(np.int32),
    "sender_idx": np.dtype(np.int32),
}
#: the scope columns, in the order of SCOPE_COLUMN_KINDS
_SCOPE_COLUMNS: Final[tuple[str, ...]] = (
    "domain_idx",
    "mx_idx",
    "provider_idx",
    "ip_idx",
    "pool_idx",
    "sender_idx",
)
#: the scope kind of each scope column
SCOPE_COLUMN_KINDS: Final[tuple[str, ...]] = ("domain", "mx", "provider", "ip", "pool", "sender")


@dataclass(frozen=True, slots=True)
class RecipientRows:
    """One row per accepted event that matters to suppression, in feed order (module doc)."""

    ts: NDArray[np.float64]
    kind: NDArray[np.uint8]
    cls: NDArray[np.uint8]
    reason: NDArray[np.uint8]
    ident: NDArray[np.uint64]
    key: NDArray[np.bytes_]
    mid: NDArray[np.uint64]
    known_good: NDArray[np.bool_]
    scope_keys: list[str]
    domain_idx: NDArray[np.int32]
    mx_idx: NDArray[np.int32]
    provider_idx: NDArray[np.int32]
    ip_idx: NDArray[np.int32]
    pool_idx: NDArray[np.int32]
    sender_idx: NDArray[np.int32]

    def __post_init__(self) -> None:
        n = len(self.ts)
        for name, dtype in _COLUMNS.items():
            a = getattr(self, name)
            if not isinstance(a, np.ndarray) or a.ndim != 1:
                raise TypeError(f"RecipientRows.{name} must be a 1-d numpy array")
            if a.dtype != dtype:
                raise TypeError(f"RecipientRows.{name} must have dtype {dtype}, not {a.dtype}")
            if len(a) != n:
                raise ValueError(f"RecipientRows.{name} has {len(a)} rows, ts has {n}")
        k = len(self.scope_keys)
        for name in _SCOPE_COLUMNS:
            a = getattr(self, name)
            if n and (int(a.min()) < -1 or int(a.max()) >= k):
                raise ValueError(f"RecipientRows.{name} indexes outside scope_keys ({k} keys)")

    def __len__(self) -> int:
        return len(self.ts)

    @classmethod
    def empty(cls) -> RecipientRows:
        return cls(
            **{name: np.zeros(0, dtype=dt) for name, dt in _COLUMNS.items()},
            scope_keys=[],
        )

    @classmethod
    def concat(cls, parts: Sequence[RecipientRows]) -> RecipientRows:
        """The rows of ``parts`` one after the other; their scope keys merged (each distinct
        name once) and the indexes remapped."""
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        names: dict[str, int] = {}
        cols: dict[str, list[NDArray[Any]]] = {name: [] for name in _COLUMNS}
        for p in parts:
            remap = np.array(
                [names.setdefault(s, len(names)) for s in p.scope_keys] + [-1], dtype=np.int32
            )
            for name in _COLUMNS:
                a = getattr(p, name)
                cols[name].append(remap[a] if name in _SCOPE_COLUMNS else a)
        return cls(
            **{name: np.concatenate(v).astype(_COLUMNS[name]) for name, v in cols.items()},
            scope_keys=list(names),
        )

    def take(self, idx: NDArray[Any]) -> RecipientRows:
        """The rows ``idx`` (indexes or a boolean mask), same scope keys."""
        return RecipientRows(
            **{name: getattr(self, name)[idx] for name in _COLUMNS}, scope_keys=self.scope_keys
        )

    def scopes_of(self, i: int) -> tuple[str | None, ...]:
        """Row ``i``'s scope names in SCOPE_COLUMN_KINDS order (None: unknown)."""
        return tuple(self.scope_key(i, c) for c in _SCOPE_COLUMNS)

    def scope_key(self, i: int, column: str) -> str | None:
        """The scope name of row ``i`` in ``column`` (``domain_idx`` ...), None when unknown."""
        j = int(getattr(self, column)[i])
        return None if j < 0 else self.scope_keys[j]


assert {f.name for f in fields(RecipientRows)} == {*_COLUMNS, "scope_keys"}


# -- the pipeline's hashing ------------------------------------------------------------------


def recipient_digest(address: str) -> bytes:
    """The 32-byte SHA-256 of the trimmed, lower-cased address (UTF-8, lone surrogates kept):
    ``bytes.fromhex(models.ingest.validate.recipient_key(address))``."""
    return hashlib.sha256(address.strip().lower().encode("utf-8", "surrogatepass")).digest()


def idents_of(keys: NDArray[np.bytes_] | Sequence[bytes]) -> NDArray[np.uint64]:
    """The pipeline's identity of each 32-byte key: its first 8 bytes, little-endian."""
    raw = np.asarray(keys, dtype=KEY_DTYPE)
    if not len(raw):
        return np.zeros(0, dtype=np.uint64)
    return np.frombuffer(raw.tobytes(), dtype="<u8")[::4].astype(np.uint64)


def message_hash(message_id: str | None) -> int:
    """The pipeline's stable hash of a message id as an unsigned 64-bit int (0: none or blank):
    BLAKE2b-64 of the UTF-8 id, little-endian."""
    if message_id is None or not message_id.strip():
        return 0
    d = hashlib.blake2b(message_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(d, "little")


def message_hashes(ids: Iterable[str | None]) -> NDArray[np.uint64]:
    """:func:`message_hash` of each id."""
    return np.fromiter((message_hash(m) for m in ids), dtype=np.uint64)


__all__ = [
    "KEY_DTYPE",
    "RECIPIENT_KINDS",
    "SCOPE_COLUMN_KINDS",
    "RecipientRows",
    "idents_of",
    "message_hash",
    "message_hashes",
    "recipient_digest",
]
