"""Ingest pipeline: canonical event -> validated, pseudonymised, classified -> per-tick Deltas.

One ``Pipeline`` per input partition (worker) or per replay. ``feed_many`` (a batch of messages)
and ``feed`` / ``feed_obj`` (one) decode, then check the events with the rules of
:mod:`models.ingest.validate` (one implementation: a single event is checked as a chunk of
one), hash the recipients, look up the scope combinations (:mod:`models.ingest.scopes`) and
classify the replies, with their context (SMTP phase and DSN Action) when the event gives it,
through caches (:mod:`models.ingest.replies`), drop the repeats of events
accepted shortly before (:class:`models.ingest.recent.RecentKeys`), and append a handful of
integers per accepted event to column lists. ``flush`` turns the columns into numpy arrays once
per tick and aggregates them into ``Deltas`` (:mod:`models.ingest.aggregate`), deciding which
unknown-user bounces are to known-good recipients on the way. The contract of the input is
docs/events.md.

Pure logic: standard library and numpy only. The JSON decoder is injectable (``loads``) so the
worker can pass a faster one; the default is :func:`json.loads`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from itertools import compress
from operator import methodcaller
from typing import Any

import numpy as np
from numpy.typing import NDArray

from models.ingest.aggregate import Columns, aggregate
from models.ingest.providers import ProviderResolver
from models.ingest.recent import RecentDeliveries, RecentKeys
from models.ingest.recipients import KEY_DTYPE, RECIPIENT_KINDS, RecipientRows
from models.ingest.replies import (
    REPLIES_PER_SCOPE,
    ClassificationLike,
    ClassifierLike,
    ReplyTable,
)
from models.ingest.scopes import ScopeTable
from models.ingest.validate import (
    CONTEXT_FIELDS,
    KNOWN_FIELDS,
    MAX_EVENT_BYTES,
    MAX_FIELD_CHARS,
    MAX_RESPONSE_CHARS,
    MIN_TIMESTAMP,
    REJECTION_REASONS,
    Checked,
    InvalidEvent,
    Rejection,
    bad_json,
    check_rows,
    normalise_domain,
    not_an_object,
    parse_timestamp,
    recipient_bytes,
    recipient_key,
    reply_enhanced_code,
    too_large,
)
from models.schema import EVENT_KIND_CODE, NO_CLASS, NO_REASON, SCOPE_KINDS
from models.state.bloom import RotatingBloom
from models.state.deltas import Deltas
from models.state.snapshot import Snap

__all__ = [
    "BATCH_ROWS",
    "CONTEXT_FIELDS",
    "KNOWN_FIELDS",
    "MAX_EVENT_BYTES",
    "MAX_FIELD_CHARS",
    "MAX_RESPONSE_CHARS",
    "MIN_TIMESTAMP",
    "REJECTION_REASONS",
    "REPLIES_PER_SCOPE",
    "ClassificationLike",
    "ClassifierLike",
    "InvalidEvent",
    "Pipeline",
    "PipelineStats",
    "Rejection",
    "normalise_domain",
    "parse_timestamp",
    "recipient_key",
]

#: rows per chunk of Pipeline.feed_many
BATCH_ROWS = 512

_REPLY_KIND_CODES = frozenset(
    {EVENT_KIND_CODE["deferred"], EVENT_KIND_CODE["bounced"], EVENT_KIND_CODE["rejected"]}
)
#: event kinds that can change what is known of a recipient (suppression, docs/suppression.md):
#: their rows keep the whole recipient key
_KEYED_KINDS = frozenset(
    EVENT_KIND_CODE[k] for k in ("bounced", "rejected", "complained", "unsubscribed")
)
#: event kinds whose recipient identity the known-good memory and the suppression need
_HASHED_KINDS = frozenset({EVENT_KIND_CODE["delivered"], *_REPLY_KIND_CODES, *_KEYED_KINDS})
#: which event kinds go into RecipientRows (indexed by kind code)
_RECIPIENT_KIND_TABLE = np.zeros(256, dtype=np.bool_)
_RECIPIENT_KIND_TABLE[sorted(RECIPIENT_KINDS)] = True
#: RecipientRows' scope columns and their dimensions (models.schema.SCOPE_KINDS)
_RECIPIENT_SCOPES = ("domain", "mx", "provider", "ip", "pool", "sender")
_RECIPIENT_SCOPE_DIMS = tuple(SCOPE_KINDS.index(k) for k in _RECIPIENT_SCOPES)
#: marks an undecodable message in a batch
_BAD: Any = object()
_DIGEST = methodcaller("digest")


@dataclass(slots=True)
class PipelineStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    unknown_fields: int = 0
    by_kind: list[int] = field(default_factory=lambda: [0] * len(EVENT_KIND_CODE))
    #: valid events dropped as repeats of one accepted shortly before (neither accepted nor
    #: rejected; docs/events.md, "Duplicates")
    duplicates: int = 0
    #: accepted events whose recipient_domain named another domain than the recipient's (the
    #: recipient's was used)
    domain_mismatch: int = 0
    #: per optional field of CONTEXT_FIELDS: valid events whose value of it was not recognised
    #: and ignored (docs/events.md, "Reply context"); neither rejected nor lost
    ignored_fields: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONTEXT_FIELDS, 0))


@dataclass(slots=True)
class _Batch:
    """Per-row column values of a checked chunk (rejected rows hold placeholders)."""

    kind: list[Any]
    ts: list[Any]
    cls: list[int]
    reason: list[int]
    rkey: list[int]
    reply: list[int]
    combo: list[Any]
    #: hash of the message id (0: none)
    mid: list[int]
    #: the duplicate key per row (None: never a duplicate); None: no row has one
    dkey: list[Any] | None
    #: rows whose recipient_domain disagreed with the recipient
    mismatch: list[int]
    #: the recipient's 32-byte SHA-256 on rows that can change its suppression state
    #: (``_KEYED_KINDS``), else b""
    rdig: list[bytes]


#: distinct reply texts whose stable hash is cached
_TEXT_HASH_CACHE = 65_536
_BLAKE8 = partial(hashlib.blake2b, digest_size=8)
_ENCODE = methodcaller("encode", "utf-8", "surrogatepass")


class _TextHashes(dict[str | None, int]):
    """Stable hashes of reply texts and enhanced codes (few distinct values), computed on first
    sight: a hit costs one dict lookup."""

    def __missing__(self, text: str | None) -> int:
        h = (
            0
            if text is None
            else int.from_bytes(_BLAKE8(_ENCODE(text)).digest(), "little", signed=True)
        )
        self[text] = h
        return h


def _stable_hashes(strs: list[str]) -> list[int]:
    """64-bit BLAKE2b of each string (little-endian, as a signed int): the same in every
    process, unlike ``hash(str)``."""
    if not strs:
        return []
    digests = b"".join(map(_DIGEST, map(_BLAKE8, map(_ENCODE, strs))))
    out: list[int] = np.frombuffer(digests, dtype="<i8").tolist()
    return out


def _first(t: tuple[int, Rejection]) -> int:
    return t[0]


def _default_classifier() -> ClassifierLike:
    from models.classify.classifier import Classifier

    c: ClassifierLike = Classifier()
    return c


class Pipeline:
    """Per-partition ingest state. Not thread-safe; one per worker partition or replay.

    ``dedupe_keys``: how many distinct event keys the duplicate check remembers (0: none);
    ``recent_deliveries``: how many recipients the known-good memory keeps with the message
    they were delivered in before they go to the Bloom filter (docs/events.md);
    ``max_scopes``: the interned scope names and combinations held at most (the worker passes
    REPMON_MAX_SCOPES, the cap of the rolling state; docs/performance.md).
    ``keep_recipients``: also keep, per flush, the rows the suppression policy reads
    (:meth:`take_recipients`, models/ingest/recipients.py).
    """

    def __init__(
        self,
        classifier: ClassifierLike | None = None,
        *,
        bucket_s: int = 60,
        clock: Callable[[], float] | None = None,
        max_future_skew_s: float = 300.0,
        resolver: ProviderResolver | None = None,
        bloom: RotatingBloom | None = None,
        loads: Callable[[bytes], Any] = json.loads,
        normalize: Callable[[str], str] | None = None,
        typed_loads: Callable[[bytes], Any] | None = None,
        dedupe_keys: int = 200_000,
        recent_deliveries: int = 1 << 19,
        max_scopes: int | None = None,
        keep_recipients: bool = False,
    ) -> None:
        self.classifier = classifier if classifier is not None else _default_classifier()
        #: collect the per-recipient rows of every flush (:meth:`take_recipients`)
        self.keep_recipients = keep_recipients
        if normalize is None:
            from models.classify.classifier import normalize_reply

            normalize = normalize_reply
        self.bucket_s = int(bucket_s)
        self.clock = clock
        self.max_future_skew_s = max_future_skew_s
        self.resolver = resolver or ProviderResolver()
        self.bloom = bloom or RotatingBloom()
        #: deliveries too recent for the Bloom filter, with their message (known-good)
        self.recent = RecentDeliveries(recent_deliveries)
        #: the keys of the events accepted last (duplicates); 0 keys: no de-duplication
        self.dedupe = RecentKeys(dedupe_keys)
        self._loads = loads
        #: optional strict decoder for feed_many (see there); after repeated failures it rests
        self._typed_loads = typed_loads
        self._typed_failures = 0
        self._typed_rest = 0
        self.stats = PipelineStats()
        self.watermark = 0.0
        self._flushed_watermark = 0.0
        self._scopes = ScopeTable(self.resolver, max_scopes)
        self._replies = ReplyTable(self.classifier, normalize)
        self._cols = Columns()
        self._text_hashes = _TextHashes()
        self._recipients: list[RecipientRows] = []

    # -- snapshots ---------------------------------------------------------------------------

    def memories_snapshot(self) -> Snap:
        """The memories that outlive a tick: the duplicate window and the known-good memory
        (recent deliveries and the Bloom filter). Counts are not in it: they leave with every
        flush."""
        snap = Snap(meta={})
        snap.put("dedupe", self.dedupe.snapshot())
        snap.put("recent", self.recent.snapshot())
        snap.put("bloom", self.bloom.snapshot())
        return snap

    def restore_memories(self, snap: Snap) -> None:
        """Continue with the memories of :meth:`memories_snapshot` (same sizes)."""
        self.dedupe.restore(snap.child("dedupe"))
        self.recent.restore(snap.child("recent"))
        self.bloom.restore(snap.child("bloom"))

    # -- one message -------------------------------------------------------------------------

    def feed(self, raw: bytes) -> Rejection | None:
        """Decode one message and count it; returns the rejection if it was not accepted."""
        obj, rej = self._decode(raw)
        if rej is not None:
            return rej
        if not isinstance(obj, dict):
            return self._count(not_an_object(obj))
        return self._feed_one(obj, len(raw))

    def feed_obj(self, obj: Mapping[str, Any]) -> Rejection | None:
        """Validate and count one already-decoded event."""
        return self._feed_one(obj if isinstance(obj, dict) else dict(obj.items()), None)

    def _feed_one(self, obj: dict[str, Any], longest: int | None) -> Rejection | None:
        """One event: the rules of a chunk, on a chunk of one (its time kept as a float)."""
        out = self._ingest([obj], longest, floats=True)
        return out[0][1] if out else None

    def _count(self, rej: Rejection) -> Rejection:
        self.stats.rejected[rej.reason] = self.stats.rejected.get(rej.reason, 0) + 1
        return rej

    def _decode(self, raw: bytes) -> tuple[Any, Rejection | None]:
        rej = too_large(raw)
        if rej is not None:
            return _BAD, self._count(rej)
        try:
            return self._loads(raw), None
        except (ValueError, UnicodeDecodeError) as exc:
            return _BAD, self._count(bad_json(exc))

    # -- a batch of messages -----------------------------------------------------------------

    def feed_many(self, raws: Sequence[bytes]) -> list[tuple[int, Rejection]]:
        """Decode and count a batch of messages; returns ``(index, rejection)`` of the rejected.

        The result, the columns (in input order), the statistics and the watermark are exactly
        those of calling :meth:`feed` on each message in turn: both check events with
        :func:`validate.check_rows` (tests/test_pipeline.py compares them on generated batches
        of good and bad events). It runs each rule once per column over the batch instead of
        once per event: field values are gathered with C-level ``map`` calls, types are checked
        on the set of types of a column, lengths and ranges with ``max``/``min``/``sum``,
        enhanced codes once per distinct value, scope combinations through the combination
        cache; only the values these do not clear are checked one by one. Long batches are processed ``BATCH_ROWS`` at a time: the decoded events of one
        chunk then stay in the CPU caches while every column is read (measured in
        bench/replay.py: 512 rows are about 30 % faster than 2,048 and than one at a time).
        """
        if len(raws) > BATCH_ROWS:
            out: list[tuple[int, Rejection]] = []
            for s in range(0, len(raws), BATCH_ROWS):
                out += [(s + i, r) for i, r in self.feed_many(raws[s : s + BATCH_ROWS])]
            return out
        longest = max(map(len, raws), default=0)  # one pass, used by every size check
        if self._typed_loads is not None and raws:
            typed = self._feed_typed(raws, longest)
            if typed is not None:
                return typed
        out = []
        try:
            if longest > MAX_EVENT_BYTES:
                raise ValueError
            objs: list[Any] = list(map(self._loads, raws))
        except (ValueError, UnicodeDecodeError):  # decode one by one: which ones are bad
            objs = []
            for i, raw in enumerate(raws):
                obj, rej = self._decode(raw)
                if rej is not None:
                    out.append((i, rej))
                objs.append(obj)
        if len(set(map(type, objs))) == 1 and type(objs[0]) is dict:
            rows: list[int] | range = range(len(objs))
            dicts: list[dict[str, Any]] = objs
        else:
            rows = []
            for i, obj in enumerate(objs):
                if type(obj) is dict:
                    rows.append(i)
                elif obj is not _BAD:
                    out.append((i, self._count(not_an_object(obj))))
            dicts = [objs[i] for i in rows]
        if dicts:
            out += [(rows[j], rej) for j, rej in self._ingest(dicts, longest)]
        if len(out) > 1:
            out.sort(key=_first)
        return out

    def _feed_typed(
        self, raws: Sequence[bytes], longest: int
    ) -> list[tuple[int, Rejection]] | None:
        """The chunk through the strict decoder, or None when it refused some message.

        ``typed_loads`` must return an object with one attribute per field of
        :data:`KNOWN_FIELDS` (None when absent) and raise on anything else: invalid JSON, an
        unknown field, a value of the wrong JSON type, a missing event or timestamp. A chunk it
        decodes whole skips the type checks and the unknown-field count; any refusal sends the
        whole chunk down the general path. After three refused chunks in a row it rests for 64
        chunks, so a stream that always has, say, a vendor field pays for it rarely. A row that
        fails a rule goes through :meth:`feed`, which decodes it with ``loads`` and names the
        rejection.
        """
        if self._typed_rest:
            self._typed_rest -= 1
            return None
        assert self._typed_loads is not None
        try:
            if longest > MAX_EVENT_BYTES:
                raise ValueError
            objs = list(map(self._typed_loads, raws))
        except Exception:
            self._typed_failures += 1
            if self._typed_failures >= 3:
                self._typed_failures, self._typed_rest = 0, 64
            return None
        self._typed_failures = 0
        try:
            checked, b = self._check(objs, longest, typed=True)
        except Exception:  # anything unexpected: every message on its own
            return [(j, rej) for j, raw in enumerate(raws) if (rej := self.feed(raw)) is not None]
        self._count_ignored(checked)  # on the rows kept: feed counts the others
        out: list[tuple[int, Rejection]] = []
        start = 0
        for j in sorted(checked.rejected):
            self._append(b, start, j)
            rej = self.feed(raws[j])  # in order: it may be accepted after the rows before it
            if rej is not None:
                out.append((j, rej))
            start = j + 1
        self._append(b, start, len(objs))
        return out

    def _ingest(
        self, objs: list[dict[str, Any]], longest: int | None, floats: bool = False
    ) -> list[tuple[int, Rejection]]:
        """Check a chunk of decoded events and count the accepted ones, in order; returns the
        rejected rows with their rejections. ``floats``: keep event times as floats (the
        one-event path always has)."""
        try:
            checked, b = self._check(objs, longest, typed=False)
        except Exception:  # anything unexpected: every row on its own (where it raises)
            if len(objs) == 1:
                raise
            return self._one_by_one(objs)
        if checked.ts_overflow and len(objs) > 1:
            # an int timestamp too large for a float has always sent its chunk down the
            # one-event path, which keeps event times as floats: the same verdicts, but an
            # int time would otherwise stay an int (as it does in other chunks)
            return self._one_by_one(objs)
        self.stats.unknown_fields += checked.unknown_fields
        self._count_ignored(checked)
        bad = checked.rejected
        if not bad:
            if floats:
                b.ts = list(map(float, b.ts))
            self._append(b, 0, len(objs))
            return []
        start = 0
        for j in sorted(bad):
            self._append(b, start, j)
            start = j + 1
        self._append(b, start, len(objs))
        return [(j, self._count(bad[j])) for j in sorted(bad)]

    def _count_ignored(self, checked: Checked) -> None:
        if checked.ignored:
            counts = self.stats.ignored_fields
            for name, v in checked.ignored.items():
                counts[name] = counts.get(name, 0) + v

    def _one_by_one(self, objs: list[dict[str, Any]]) -> list[tuple[int, Rejection]]:
        out: list[tuple[int, Rejection]] = []
        for j, obj in enumerate(objs):
            rej = self._feed_one(obj, None)
            if rej is not None:
                out.append((j, rej))
        return out

    def _check(self, objs: list[Any], longest: int | None, typed: bool) -> tuple[Checked, _Batch]:
        """The rules on a chunk, then for the accepted rows: recipient keys and replies."""
        clock = self.clock
        skew = self.max_future_skew_s
        checked = check_rows(
            objs,
            typed=typed,
            longest=longest,
            max_ts=clock() + skew if clock is not None else None,
            skew=skew,
            combo_cache=self._scopes.combos,
            resolve=self._scopes.resolve,
            domain=self._scopes.domain,
        )
        return checked, self._accept(checked, len(objs))

    def _accept(self, ch: Checked, n: int) -> _Batch:
        bad = ch.rejected
        kinds = ch.kinds
        combos = ch.combos
        # recipient keys of the rows the known-good memory needs (only their first 8 bytes
        # are kept: the address goes no further)
        hashed = list(compress(range(n), map(_HASHED_KINDS.__contains__, kinds)))
        if bad:
            hashed = [j for j in hashed if j not in bad]
        addrs = list(map(ch.recipients.__getitem__, hashed))
        given = ch.recipient_keys
        if None in addrs:
            # no address: the recipient_key an adapter sent instead (checked), else nothing
            keyed = [(j, given[j]) for j, a in zip(hashed, addrs, strict=True) if a is None]
            hashed = [j for j, a in zip(hashed, addrs, strict=True) if a is not None]
            addrs = [a for a in addrs if a is not None]
            keyed = [(j, k) for j, k in keyed if k is not None]
        else:
            keyed = []
        rkeys: list[int]
        if hashed or keyed:
            digests = b"".join(map(_DIGEST, map(hashlib.sha256, recipient_bytes(addrs))))
            if keyed:
                hashed = hashed + [j for j, _ in keyed]
                digests += b"".join(bytes.fromhex(k) for _, k in keyed)
            keys = np.frombuffer(digests, dtype="<u8")[::4]
            if len(hashed) == n:
                rkeys = keys.tolist()
            else:
                rk = np.zeros(n, dtype=np.uint64)
                rk[hashed] = keys
                rkeys = rk.tolist()
            # the whole key of the few rows a suppression decision is made on
            rdig = [b""] * n
            keyed_at = compress(
                range(len(hashed)), map(_KEYED_KINDS.__contains__, map(kinds.__getitem__, hashed))
            )
            for i in keyed_at:
                rdig[hashed[i]] = digests[32 * i : 32 * i + 32]
        else:
            rkeys = [0] * n
            rdig = [b""] * n
        # classification of the replies (a few percent of events), with their context
        cls = [NO_CLASS] * n
        reason = [NO_REASON] * n
        reply = [-1] * n
        texts, enhs, codes = ch.responses, ch.enhs, ch.codes
        commands, actions = ch.commands, ch.actions
        scopes = self._scopes
        for j in compress(range(n), map(_REPLY_KIND_CODES.__contains__, kinds)):
            if j not in bad:
                text = texts[j] or ""
                c = combos[j]
                reason[j], cls[j], reply[j] = self._replies.classify(
                    codes[j],
                    reply_enhanced_code(enhs[j], text),
                    text,
                    scopes.combo_scopes[c],
                    scopes.combo_provider[c],
                    commands[j],
                    actions[j],
                )
        # message ids: the duplicate key of each row that has one, and the message's hash. Both
        # are kept in snapshots (the dedupe memory, the known-good memory), so they must be the
        # same in every process: str hashes are salted per process, so strings are hashed with
        # BLAKE2b and only tuples of numbers (whose hash is not salted) go through hash().
        mids = ch.message_ids
        dkey: list[Any] | None = None
        mid = [0] * n
        if mids.count(None) < n:
            if bad or None in mids:
                rows = [j for j, m in enumerate(mids) if m is not None and j not in bad]
            else:
                rows = list(range(n))
            mh = _stable_hashes([mids[j] for j in rows])
            if len(self._text_hashes) > _TEXT_HASH_CACHE:
                self._text_hashes.clear()
            th = self._text_hashes.__getitem__
            picked = zip(
                mh,
                map(rkeys.__getitem__, rows),
                map(kinds.__getitem__, rows),
                map(ch.ts.__getitem__, rows),
                [-1 if c is None else c for c in map(codes.__getitem__, rows)],
                map(th, map(enhs.__getitem__, rows)),
                map(th, map(texts.__getitem__, rows)),
                strict=True,
            )
            if len(rows) == n:
                dkey = list(map(hash, picked))
                mid = mh
            else:
                dkey = [None] * n
                for j, h, m in zip(rows, map(hash, picked), mh, strict=True):
                    dkey[j] = h
                    mid[j] = m
        return _Batch(
            kinds, ch.ts, cls, reason, rkeys, reply, combos, mid, dkey, ch.domain_mismatch, rdig
        )

    def _append(self, b: _Batch, start: int, stop: int) -> None:
        """Count rows ``start:stop`` of a checked chunk (none rejected), in order, except the
        duplicates."""
        if stop <= start:
            return
        if b.dkey is not None:
            dups = self.dedupe.seen(b.dkey[start:stop])
            if dups:
                self.stats.duplicates += len(dups)
                gone = {start + j for j in dups}
                rows = [j for j in range(start, stop) if j not in gone]
                self._count_mismatch(b, start, stop, gone)
                for i, j in enumerate(rows):  # the runs between duplicates
                    if i == 0 or rows[i - 1] != j - 1:
                        k = i
                    if i + 1 == len(rows) or rows[i + 1] != j + 1:
                        self._extend(b, rows[k], j + 1)
                return
        self._count_mismatch(b, start, stop, ())
        self._extend(b, start, stop)

    def _count_mismatch(self, b: _Batch, start: int, stop: int, gone: Collection[int]) -> None:
        if b.mismatch:
            self.stats.domain_mismatch += sum(
                1 for j in b.mismatch if start <= j < stop and j not in gone
            )

    def _extend(self, b: _Batch, start: int, stop: int) -> None:
        c = self._cols
        kinds = b.kind[start:stop]
        c.kind.extend(kinds)
        ts = b.ts[start:stop]
        c.ts.extend(ts)
        c.cls.extend(b.cls[start:stop])
        c.reason.extend(b.reason[start:stop])
        c.rkey.extend(b.rkey[start:stop])
        c.reply.extend(b.reply[start:stop])
        c.combo.extend(b.combo[start:stop])
        c.mid.extend(b.mid[start:stop])
        c.rdig.extend(b.rdig[start:stop])
        self.stats.accepted += stop - start
        by_kind = self.stats.by_kind
        if stop - start <= 8:
            for k in kinds:
                by_kind[k] += 1
        else:
            for k, v in enumerate(np.bincount(kinds, minlength=len(by_kind)).tolist()):
                by_kind[k] += v
        top = max(ts)
        if top > self.watermark:
            self.watermark = float(top)

    # -- per tick ----------------------------------------------------------------------------

    def take_recipients(self) -> RecipientRows:
        """The per-recipient rows (models/ingest/recipients.py) of the events flushed since the
        last call, in feed order; empty unless the Pipeline was made with
        ``keep_recipients=True``."""
        rows = RecipientRows.concat(self._recipients)
        self._recipients = []
        return rows

    def _recipient_rows(self, c: Columns, known_good: NDArray[np.bool_]) -> RecipientRows:
        """The rows of ``c`` that matter to a recipient's suppression state: the kinds of
        RECIPIENT_KINDS with a recipient."""
        n = len(c.ts)
        if n == 0:
            return RecipientRows.empty()
        kind = np.asarray(c.kind, dtype=np.uint8)
        ident = np.asarray(c.rkey, dtype=np.uint64)
        sel = np.flatnonzero(_RECIPIENT_KIND_TABLE[kind] & (ident != 0))
        if sel.size == 0:
            return RecipientRows.empty()
        idx = sel.tolist()
        combo = np.asarray(c.combo, dtype=np.int64)[sel]
        ids = self._scopes.combo_array()[combo][:, list(_RECIPIENT_SCOPE_DIMS)]
        used, inv = np.unique(ids, return_inverse=True)
        inv = inv.reshape(ids.shape)
        names = self._scopes.names
        keys = [names[int(u)] for u in used if u >= 0]
        shift = 1 if used.size and used[0] < 0 else 0  # -1 (absent) sorts first
        local = (inv - shift).astype(np.int32)
        local[ids < 0] = -1
        return RecipientRows(
            ts=np.asarray(c.ts, dtype=np.float64)[sel],
            kind=kind[sel],
            cls=np.asarray(c.cls, dtype=np.uint8)[sel],
            reason=np.asarray(c.reason, dtype=np.uint8)[sel],
            ident=ident[sel],
            key=np.array([c.rdig[j] for j in idx], dtype=KEY_DTYPE),
            mid=np.asarray(c.mid, dtype=np.int64)[sel].view(np.uint64),
            known_good=np.asarray(known_good, dtype=np.bool_)[sel],
            scope_keys=keys,
            **{
                f"{k}_idx": np.ascontiguousarray(local[:, i])
                for i, k in enumerate(_RECIPIENT_SCOPES)
            },
        )

    def pending(self) -> int:
        return len(self._cols.ts)

    def pending_timestamps(self, start: int = 0) -> NDArray[np.float64]:
        """Event times of the accepted events not flushed yet, from the ``start``-th, in the
        order they were fed (a replay finds its tick boundaries in them)."""
        return np.asarray(self._cols.ts[start:], dtype=np.float64)

    def flush(self, upto: int | None = None) -> Deltas:
        """Aggregate the events fed since the last flush into Deltas and drop them.

        ``upto`` flushes only the first ``upto`` of them (in feed order) and keeps the rest
        pending; the Deltas' watermark is then the highest event time up to that event, as if
        the later ones had not been fed yet.
        """
        c = self._cols
        if upto is None or upto >= len(c.ts):
            self._cols = Columns()
            watermark = self.watermark
        else:
            self._cols = c.split(max(0, upto))
            watermark = max(self._flushed_watermark, max(c.ts, default=0.0))
        self._flushed_watermark = watermark
        kg: list[NDArray[np.bool_]] | None = [] if self.keep_recipients else None
        d = aggregate(
            c,
            bucket_s=self.bucket_s,
            scopes=self._scopes,
            replies=self._replies,
            bloom=self.bloom,
            recent=self.recent,
            watermark=watermark,
            known_good_out=kg,
        )
        if kg is not None:
            self._recipients.append(self._recipient_rows(c, kg[0]))
        if c.ts and not self._cols.ts:
            # keep the interning tables bounded; safe only between ticks (nothing pending)
            self._replies.bound()
            self._scopes.bound()
        return d
