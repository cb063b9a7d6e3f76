"""Snapshots of in-memory state as bytes: JSON metadata plus named numpy arrays.

Every stateful object that must survive a restart (the rolling store, the Monitor, the ingest
memories) has ``snapshot() -> Snap`` and ``restore(Snap)``. A :class:`Snap` is plain data: a JSON-able
``meta`` dict and a dict of numpy arrays; nested objects put theirs under a prefix
(:meth:`Snap.child`). :func:`encode` writes one as a compressed ``.npz`` (numpy's zip format) with the
metadata as a JSON member, and :func:`decode` reads it back with ``allow_pickle=False``: a snapshot
holds numbers and strings only, so reading one cannot run code.

The worker cuts the bytes into pieces and writes them to a compacted topic
(docs/architecture.md, "State that survives"); this module does no I/O.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

#: bumped when a snapshot written by an older version cannot be read correctly
FORMAT: Final[int] = 1
_META: Final[str] = "__meta__"


class SnapshotError(ValueError):
    """A snapshot that cannot be restored (other format, other geometry, damaged)."""


@dataclass
class Snap:
    """JSON-able metadata and named arrays of one object (children under ``prefix/``)."""

    meta: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, NDArray[Any]] = field(default_factory=dict)

    def put(self, prefix: str, child: Snap) -> None:
        """Nest ``child`` under ``prefix``."""
        self.meta[prefix] = child.meta
        for k, v in child.arrays.items():
            self.arrays[f"{prefix}/{k}"] = v

    def child(self, prefix: str) -> Snap:
        """The snapshot nested under ``prefix`` by :meth:`put`."""
        if prefix not in self.meta:
            raise SnapshotError(f"snapshot has no part {prefix!r}")
        head = prefix + "/"
        return Snap(
            meta=self.meta[prefix],
            arrays={k[len(head) :]: v for k, v in self.arrays.items() if k.startswith(head)},
        )

    def array(self, name: str) -> NDArray[Any]:
        a = self.arrays.get(name)
        if a is None:
            raise SnapshotError(f"snapshot has no array {name!r}")
        return a


def encode(snap: Snap) -> bytes:
    """The snapshot as bytes (zip-deflated ``.npz``, metadata as JSON)."""
    meta = {"format": FORMAT, "meta": snap.meta}
    buf = io.BytesIO()
    arrays = {k.replace("/", "."): v for k, v in snap.arrays.items()}
    if len(arrays) != len(snap.arrays) or _META in arrays:
        raise ValueError("array names must stay distinct with '/' written as '.'")
    names = {k.replace("/", "."): k for k in snap.arrays}
    meta["names"] = names
    raw = np.frombuffer(json.dumps(meta, separators=(",", ":")).encode(), dtype=np.uint8)
    members: dict[str, Any] = {_META: raw, **arrays}
    np.savez_compressed(buf, **members)
    return buf.getvalue()


def decode(data: bytes) -> Snap:
    """Read bytes written by :func:`encode` (never unpickles anything)."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            meta = json.loads(bytes(z[_META]).decode())
            if meta.get("format") != FORMAT:
                raise SnapshotError(
                    f"snapshot format {meta.get('format')}, this version reads {FORMAT}"
                )
            names: dict[str, str] = meta["names"]
            arrays = {names[k]: z[k] for k in z.files if k != _META}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, SnapshotError):
            raise
        raise SnapshotError(f"damaged snapshot: {exc}") from exc
    return Snap(meta=meta["meta"], arrays=arrays)


def strings(values: list[str]) -> NDArray[np.uint8]:
    """A list of strings as one uint8 array (JSON): names stay out of the metadata's way."""
    return np.frombuffer(json.dumps(values, separators=(",", ":")).encode(), dtype=np.uint8)


def unstrings(a: NDArray[Any]) -> list[str]:
    out = json.loads(bytes(np.asarray(a, dtype=np.uint8)).decode())
    if not isinstance(out, list) or not all(isinstance(s, str) for s in out):
        raise SnapshotError("expected a list of strings")
    return out
