"""Ingest pipeline: canonical event -> validated, pseudonymised, classified -> per-tick Deltas.

One ``Pipeline`` per input partition (worker) or per replay. ``feed`` does the per-event work that
cannot be vectorised (decode, validate, hash the recipient, look up scopes, classify through
caches) and appends a handful of integers to column lists; ``flush`` turns the columns into
numpy arrays once per tick and aggregates them into ``Deltas`` (counts per scope, event-time
bucket and outcome column) with vectorised numpy operations, including the Bloom-filter checks of
the known-good recipient memory. The contract of the input is docs/events.md.

Pure logic: standard library and numpy only. The JSON decoder is injectable (``loads``) so the
worker can pass a faster one; the default is :func:`json.loads`.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import chain, compress, repeat
from operator import attrgetter, methodcaller
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from models.ingest.providers import ProviderResolver
from models.schema import (
    CLASS_COLUMN_OFFSET,
    COL,
    EVENT_KIND_CODE,
    N_COLUMNS,
    NO_CLASS,
    NO_REASON,
    REASON_CODE,
    SCOPE_KINDS,
)
from models.state.bloom import RotatingBloom
from models.state.deltas import Deltas

MAX_EVENT_BYTES = 1 << 20
#: rows per chunk of Pipeline.feed_many
BATCH_ROWS = 512
MAX_FIELD_CHARS = 4096
MAX_RESPONSE_CHARS = 8192
MIN_TIMESTAMP = 946_684_800.0  # 2000-01-01T00:00:00Z
REPLIES_PER_SCOPE = 3

#: optional string fields of docs/events.md
_STR_FIELDS = (
    "message_id",
    "recipient",
    "recipient_domain",
    "sender_domain",
    "sending_ip",
    "pool",
    "tenant",
    "campaign",
    "mx_host",
    "enhanced_code",
    "response",
    "feedback_type",
)
KNOWN_FIELDS = frozenset({"event", "timestamp", "smtp_code", *_STR_FIELDS})
#: the fields that make up a scope combination (cached per distinct combination)
_COMBO_FIELDS = (
    "recipient_domain",
    "mx_host",
    "sending_ip",
    "pool",
    "sender_domain",
    "tenant",
    "campaign",
)
#: string fields checked on every event
_EVENT_STR_FIELDS = tuple(f for f in _STR_FIELDS if f not in _COMBO_FIELDS)


def _first_bad_type(key: tuple[Any, ...]) -> str:
    """'<field> must be a string' for the first non-string scope field, else ''."""
    for name, v in zip(_COMBO_FIELDS, key, strict=True):
        if v is not None and not isinstance(v, str):
            return f"{name} must be a string"
    return ""


REJECTION_REASONS = (
    "too_large",
    "bad_json",
    "not_an_object",
    "missing_field",
    "wrong_type",
    "unknown_event",
    "bad_timestamp",
    "bad_domain",
    "bad_code",
    "field_too_long",
)

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)([a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)(\.[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?)+$"
)
_ENH_RE = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
_LEADING_ENH_RE = re.compile(r"^\s*(?:[2-5]\d\d[ -])?\s*([245]\.\d{1,3}\.\d{1,3})\b")

_KIND_DELIVERED = EVENT_KIND_CODE["delivered"]
_KIND_BOUNCED = EVENT_KIND_CODE["bounced"]
_KIND_REJECTED = EVENT_KIND_CODE["rejected"]
_KIND_DEFERRED = EVENT_KIND_CODE["deferred"]
_REPLY_KIND_CODES = frozenset({_KIND_DEFERRED, _KIND_BOUNCED, _KIND_REJECTED})
_REASON_USERUNKNOWN = REASON_CODE["userunknown"]
_REASON_AUTH = REASON_CODE["authfailure"]
_N_DIMS = len(SCOPE_KINDS)


class ClassificationLike(Protocol):
    @property
    def reason_code(self) -> int: ...

    @property
    def class_code(self) -> int: ...


class ClassifierLike(Protocol):
    def classify_normalized(
        self,
        smtp_code: int | None,
        enhanced_code: str | None,
        norm: str,
        provider: str | None = None,
        operator: str | None = None,
    ) -> ClassificationLike: ...


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input was not accepted; ``reason`` is one of REJECTION_REASONS."""

    reason: str
    detail: str


class InvalidEvent(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.rejection = Rejection(reason, detail)


@dataclass(slots=True)
class PipelineStats:
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    unknown_fields: int = 0
    by_kind: list[int] = field(default_factory=lambda: [0] * len(EVENT_KIND_CODE))


def _recipient_bytes(address: str) -> bytes:
    """The bytes hashed for a recipient: the trimmed, lower-cased address in UTF-8 (a lone
    surrogate, which some JSON decoders let through, is kept as its code point, never an error)."""
    return address.strip().lower().encode("utf-8", "surrogatepass")


def recipient_key(address: str) -> str:
    """The documented pseudonym of a recipient: hex SHA-256 of the trimmed, lower-cased address."""
    return hashlib.sha256(_recipient_bytes(address)).hexdigest()


def normalise_domain(raw: str) -> str | None:
    """Lower-case, strip the trailing dot, IDNA-encode; None when not a valid domain name."""
    d = raw.strip().lower().rstrip(".")
    if not d.isascii():
        try:
            d = d.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    return d if _DOMAIN_RE.match(d) else None


def parse_timestamp(value: object) -> float:
    """Epoch seconds from a number or an RFC 3339 string; raises InvalidEvent."""
    if isinstance(value, bool):
        raise InvalidEvent("wrong_type", "timestamp must be a number or an RFC 3339 string")
    if isinstance(value, int | float):
        try:
            ts = float(value)
        except OverflowError:
            raise InvalidEvent("bad_timestamp", "timestamp out of range") from None
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidEvent("bad_timestamp", "timestamp is not RFC 3339") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ts = dt.timestamp()
    else:
        raise InvalidEvent("wrong_type", "timestamp must be a number or an RFC 3339 string")
    if not math.isfinite(ts):
        raise InvalidEvent("bad_timestamp", "timestamp is not finite")
    return ts


def _default_classifier() -> ClassifierLike:
    from models.classify.classifier import Classifier

    c: ClassifierLike = Classifier()
    return c


class Pipeline:
    """Per-partition ingest state. Not thread-safe; one per worker partition or replay."""

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
    ) -> None:
        self.classifier = classifier if classifier is not None else _default_classifier()
        if normalize is None:
            from models.classify.classifier import normalize_reply

            normalize = normalize_reply
        self._normalize = normalize
        self.bucket_s = int(bucket_s)
        self.clock = clock
        self.max_future_skew_s = max_future_skew_s
        self.resolver = resolver or ProviderResolver()
        self.bloom = bloom or RotatingBloom()
        self._loads = loads
        #: optional strict decoder for feed_many (see there); after repeated failures it rests
        self._typed_loads = typed_loads
        self._typed_failures = 0
        self._typed_rest = 0
        self.stats = PipelineStats()
        self.watermark = 0.0
        self._flushed_watermark = 0.0
        # interning
        self._scope_ids: dict[str, int] = {}
        self._scope_names: list[str] = []
        self._combo: dict[tuple[str | None, ...], int | Rejection] = {}
        self._combo_scopes: list[tuple[int, ...]] = []
        #: per scope dimension: raw value -> scope id (skips formatting the scope name)
        self._dim_ids: list[dict[str, int]] = [{} for _ in SCOPE_KINDS]
        self._domains: dict[str, str | None] = {}
        #: (recipient_domain, mx_host) -> (scope ids of domain/provider/mx, provider, operator)
        self._heads: dict[tuple[str | None, str | None], tuple[tuple[int, ...], str, str]] = {}
        #: (ip, pool, sender, tenant, campaign) -> their scope ids
        self._tails: dict[tuple[str | None, ...], tuple[int, ...]] = {}
        self._combo_provider: list[tuple[str, str]] = []
        self._combo_arr: NDArray[np.int64] = np.zeros((0, _N_DIMS), dtype=np.int64)
        self._combo_len = 0  # rows of _combo_arr in use
        self._reply_cache: dict[
            tuple[int | None, str | None, str, int, int], tuple[int, int, int]
        ] = {}
        self._reply_ids: dict[str, int] = {}
        self._reply_texts: list[str] = []
        self._reset_columns()

    # -- per event ---------------------------------------------------------------------------

    def feed(self, raw: bytes) -> Rejection | None:
        """Decode one message and count it; returns the rejection if it was not accepted."""
        obj, rej = self._decode(raw)
        if rej is not None:
            return rej
        if not isinstance(obj, dict):
            return self._reject("not_an_object", _not_object(obj))
        return self.feed_obj(obj)

    def feed_obj(self, obj: Mapping[str, Any]) -> Rejection | None:
        """Validate and count one already-decoded event."""
        try:
            self._add(obj)
        except InvalidEvent as exc:
            return self._reject(exc.rejection.reason, exc.rejection.detail)
        return None

    def _reject(self, reason: str, detail: str) -> Rejection:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1
        return Rejection(reason, detail)

    def _add(self, obj: Mapping[str, Any]) -> None:
        if len(obj) > len(KNOWN_FIELDS) or not KNOWN_FIELDS.issuperset(obj):
            extra = len(set(obj) - KNOWN_FIELDS)
            self.stats.unknown_fields += extra
        kind_s = obj.get("event")
        if kind_s is None:
            raise InvalidEvent("missing_field", "event")
        if not isinstance(kind_s, str):
            raise InvalidEvent("wrong_type", "event must be a string")
        kind = EVENT_KIND_CODE.get(kind_s)
        if kind is None:
            raise InvalidEvent("unknown_event", f"event {kind_s[:40]!r} is not a canonical kind")
        ts_raw = obj.get("timestamp")
        if ts_raw is None:
            raise InvalidEvent("missing_field", "timestamp")
        ts = parse_timestamp(ts_raw)
        if ts < MIN_TIMESTAMP:
            raise InvalidEvent("bad_timestamp", "timestamp before 2000-01-01")
        if self.clock is not None and ts > self.clock() + self.max_future_skew_s:
            raise InvalidEvent(
                "bad_timestamp", f"timestamp more than {self.max_future_skew_s:g} s in the future"
            )
        # the scope fields are checked once per distinct combination, in _resolve_combo
        for name in _EVENT_STR_FIELDS:
            v = obj.get(name)
            if v is not None:
                if not isinstance(v, str):
                    raise InvalidEvent("wrong_type", f"{name} must be a string")
                limit = MAX_RESPONSE_CHARS if name == "response" else MAX_FIELD_CHARS
                if len(v) > limit:
                    raise InvalidEvent("field_too_long", f"{name} longer than {limit} characters")
        code = obj.get("smtp_code")
        if code is not None:
            if isinstance(code, bool) or not isinstance(code, int):
                raise InvalidEvent("wrong_type", "smtp_code must be an integer")
            if not 200 <= code <= 599:
                raise InvalidEvent("bad_code", f"smtp_code {code} outside 200..599")
        enh: str | None = obj.get("enhanced_code")
        if enh is not None and not _ENH_RE.match(enh):
            raise InvalidEvent("bad_code", "enhanced_code is not class.subject.detail")

        recipient: str | None = obj.get("recipient")
        rdomain: str | None = obj.get("recipient_domain")
        if rdomain is None:
            if recipient is None:
                raise InvalidEvent("missing_field", "recipient or recipient_domain")
            at = recipient.rfind("@")  # recipient was type-checked above
            if at < 0:
                raise InvalidEvent("bad_domain", "recipient has no @domain")
            rdomain = recipient[at + 1 :]

        combo_key = (
            rdomain,
            obj.get("mx_host"),
            obj.get("sending_ip"),
            obj.get("pool"),
            obj.get("sender_domain"),
            obj.get("tenant"),
            obj.get("campaign"),
        )
        try:
            combo = self._combo.get(combo_key)
        except TypeError:  # an unhashable value (list, object) in a scope field
            raise InvalidEvent("wrong_type", _first_bad_type(combo_key)) from None
        if combo is None:
            combo = self._resolve_combo(combo_key)
        if isinstance(combo, Rejection):
            raise InvalidEvent(combo.reason, combo.detail)

        # recipient key: only what the known-good memory needs; the address goes no further.
        rkey = 0
        if recipient is not None and kind in _HASHED_KINDS:
            digest = hashlib.sha256(_recipient_bytes(recipient)).digest()
            rkey = int.from_bytes(digest[:8], "little")

        cls = NO_CLASS
        reason = NO_REASON
        reply = -1
        if kind in _REPLY_KIND_CODES:
            text: str = obj.get("response") or ""
            if enh is None and text:
                m = _LEADING_ENH_RE.match(text)
                if m:
                    enh = m.group(1)
            reason, cls, reply = self._classify(code, enh, text, combo)

        c = self._cols
        c.kind.append(kind)
        c.ts.append(ts)
        c.cls.append(cls)
        c.reason.append(reason)
        c.rkey.append(rkey)
        c.reply.append(reply)
        c.combo.append(combo)
        self.stats.accepted += 1
        self.stats.by_kind[kind] += 1
        if ts > self.watermark:
            self.watermark = ts

    # -- per batch ---------------------------------------------------------------------------

    def feed_many(self, raws: Sequence[bytes]) -> list[tuple[int, Rejection]]:
        """Decode and count a batch of messages; returns ``(index, rejection)`` of the rejected.

        The result, the columns (in input order), the statistics and the watermark are exactly
        those of calling :meth:`feed` on each message in turn (tests/test_pipeline.py checks it
        on generated batches of good and bad events). Each check of :meth:`_add` runs once per
        column over the batch instead of once per event: field values are gathered with C-level
        ``map`` calls, types are checked on the set of types of a column, lengths and ranges
        with ``max``/``min`` or numpy, enhanced codes once per distinct value, scope combinations
        through the combination cache. The rows that fail a check (and any row when something
        unexpected happens) go through :meth:`feed_obj`, which gives the exact rejection.
        Long batches are processed ``BATCH_ROWS`` at a time: the decoded events of one chunk
        then stay in the CPU caches while every column is read (measured in bench/replay.py:
        512 rows are about 30 % faster than 2,048 and than one at a time).
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
                    out.append((i, self._reject("not_an_object", _not_object(obj))))
            dicts = [objs[i] for i in rows]
        if dicts:
            slow = self._add_many(dicts, longest)
            for j, obj in slow:
                rej = self.feed_obj(obj)  # placed in order by _add_many's segments
                if rej is not None:
                    out.append((rows[j], rej))
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
        chunks, so a stream that always has, say, a vendor field pays for it rarely.
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
        out: list[tuple[int, Rejection]] = []
        for j, _ in self._add_many(objs, longest, typed=True):
            rej = self.feed(raws[j])  # a row that failed a check: the exact rejection
            if rej is not None:
                out.append((j, rej))
        return out

    def _decode(self, raw: bytes) -> tuple[Any, Rejection | None]:
        if len(raw) > MAX_EVENT_BYTES:
            return _BAD, self._reject("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
        try:
            return self._loads(raw), None
        except (ValueError, UnicodeDecodeError) as exc:
            return _BAD, self._reject("bad_json", str(exc)[:200])

    def _add_many(
        self, objs: list[Any], longest: int, typed: bool = False
    ) -> Iterator[tuple[int, Any]]:
        """Count the rows that pass every check in bulk; yield the others, in input order,
        between the bulk appends so the columns keep the input order."""
        try:
            bad, cols = self._check_many(objs, longest, typed)
        except Exception:  # anything unexpected: the per-event path decides every row
            yield from enumerate(objs)
            return
        start = 0
        for j in sorted(bad):
            self._append_many(cols, start, j)
            yield j, objs[j]
            start = j + 1
        self._append_many(cols, start, len(objs))

    def _check_many(self, objs: list[Any], longest: int, typed: bool) -> tuple[set[int], _Batch]:
        """Check a chunk column by column: ``objs`` are dicts, or objects from ``typed_loads``
        (``typed``: every field already has its JSON type and no field is unknown)."""
        n = len(objs)
        get = dict.get
        bad: set[int] = set()

        def column(name: str) -> list[Any]:
            if typed:
                return list(map(_ATTR[name], objs))
            return list(map(get, objs, repeat(name, n)))

        # unknown fields are counted, never rejected (counted at the end for the good rows;
        # feed_obj counts them for the others)
        extra = (
            []
            if typed or KNOWN_FIELDS.issuperset(chain.from_iterable(objs))
            else [j for j, o in enumerate(objs) if not KNOWN_FIELDS.issuperset(o)]
        )
        # event
        events = column("event")
        if set(map(type, events)) == {str}:
            kinds: list[int | None] = list(map(EVENT_KIND_CODE.get, events))
        else:
            kinds = [EVENT_KIND_CODE.get(e) if type(e) is str else None for e in events]
        if None in kinds:
            bad.update(j for j, k in enumerate(kinds) if k is None)
        # timestamp
        tsv = column("timestamp")
        if not set(map(type, tsv)) <= _NUMBER_TYPES:  # RFC 3339 strings, or bad values
            fixed: list[Any] = []
            for j, v in enumerate(tsv):
                if type(v) in _NUMBER_TYPES:
                    fixed.append(v)
                    continue
                try:
                    fixed.append(parse_timestamp(v) if type(v) is str else None)
                except InvalidEvent:
                    fixed.append(None)
                if fixed[-1] is None:
                    bad.add(j)
                    fixed[-1] = 0.0
            tsv = fixed
        ts = np.array(tsv, dtype=np.float64)
        ok = np.isfinite(ts) & (ts >= MIN_TIMESTAMP)
        if self.clock is not None:
            ok &= ts <= self.clock() + self.max_future_skew_s
        if not ok.all():
            bad.update(np.flatnonzero(~ok).tolist())
        # the other string fields of every event
        strs: dict[str, list[Any]] = {}
        strings: set[str] = set()  # the fields whose values are all strings or null
        short = longest <= MAX_FIELD_CHARS  # no message that short holds a longer string
        for name in _EVENT_STR_FIELDS:
            col = strs[name] = column(name)
            lim = MAX_RESPONSE_CHARS if name == "response" else MAX_FIELD_CHARS
            if typed or set(map(type, col)) <= _OPT_STR_TYPES:
                strings.add(name)
                if short or max(map(len, filter(None, col)), default=0) <= lim:
                    continue
            bad.update(
                j
                for j, v in enumerate(col)
                if v is not None and (type(v) is not str or len(v) > lim)
            )
        codes = column("smtp_code")
        if not typed and not set(map(type, codes)) <= _OPT_INT_TYPES:
            bad.update(j for j, v in enumerate(codes) if v is not None and type(v) is not int)
            present = [v for v in codes if type(v) is int]
        else:
            present = list(filter(None, codes))
        if (present and (min(present) < 200 or max(present) > 599)) or 0 in codes:
            bad.update(j for j, v in enumerate(codes) if type(v) is int and not 200 <= v <= 599)
        enhs = strs["enhanced_code"]
        if "enhanced_code" in strings:
            distinct = set(enhs)
            distinct.discard(None)
        else:
            distinct = {v for v in enhs if type(v) is str}
        wrong = {v for v in distinct if not _ENH_RE.match(v)}
        if wrong:
            bad.update(j for j, v in enumerate(enhs) if type(v) is str and v in wrong)
        # recipient domain, then the scope combination
        rcpts = strs["recipient"]
        rdoms = column("recipient_domain")
        if None in rdoms:
            for j, d in enumerate(rdoms):
                if d is None:
                    r = rcpts[j]
                    at = r.rfind("@") if type(r) is str else -1
                    if at < 0:
                        bad.add(j)
                    else:
                        rdoms[j] = r[at + 1 :]
        keys = list(
            zip(
                rdoms,
                column("mx_host"),
                column("sending_ip"),
                column("pool"),
                column("sender_domain"),
                column("tenant"),
                column("campaign"),
                strict=True,
            )
        )
        cache = self._combo
        try:
            combos: list[Any] = list(map(cache.get, keys))
        except TypeError:  # an unhashable value somewhere: find it row by row
            combos = []
            for j, k in enumerate(keys):
                try:
                    combos.append(cache.get(k))
                except TypeError:
                    combos.append(-1)
                    bad.add(j)
        if None in combos:
            for j, c in enumerate(combos):
                if c is None and j not in bad:
                    c = cache.get(keys[j])
                    combos[j] = c if c is not None else self._resolve_combo(keys[j])
        if set(map(type, combos)) != {int}:
            bad.update(j for j, c in enumerate(combos) if type(c) is not int)
        # recipient keys of the rows the known-good memory needs (the same bytes as
        # _recipient_bytes, hashed through C-level map calls)
        hashed = list(compress(range(n), map(_HASHED_KINDS.__contains__, kinds)))
        if bad:
            hashed = [j for j in hashed if j not in bad]
        addrs = list(map(rcpts.__getitem__, hashed))
        if None in addrs:
            hashed = [j for j, a in zip(hashed, addrs, strict=True) if a is not None]
            addrs = [a for a in addrs if a is not None]
        rk = np.zeros(n, dtype=np.uint64)
        if hashed:
            digests = b"".join(
                map(
                    _DIGEST,
                    map(hashlib.sha256, map(_ENCODE, map(str.lower, map(str.strip, addrs)))),
                )
            )
            rk[hashed] = np.frombuffer(digests, dtype="<u8")[::4]
        rkeys: list[int] = rk.tolist()
        # classification of the replies (a few percent of events)
        cls = [NO_CLASS] * n
        reason = [NO_REASON] * n
        reply = [-1] * n
        texts = strs["response"]
        for j in compress(range(n), map(_REPLY_KIND_CODES.__contains__, kinds)):
            if j not in bad:
                text = texts[j] or ""
                enh = enhs[j]
                if enh is None and text:
                    m = _LEADING_ENH_RE.match(text)
                    if m:
                        enh = m.group(1)
                reason[j], cls[j], reply[j] = self._classify(codes[j], enh, text, combos[j])
        if extra:
            self.stats.unknown_fields += sum(
                len(set(objs[j]) - KNOWN_FIELDS) for j in extra if j not in bad
            )
        return bad, _Batch(kinds, tsv, cls, reason, rkeys, reply, combos)

    def _append_many(self, b: _Batch, start: int, stop: int) -> None:
        if stop <= start:
            return
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
        self.stats.accepted += stop - start
        by_kind = self.stats.by_kind
        for k, v in enumerate(np.bincount(kinds, minlength=len(by_kind)).tolist()):
            by_kind[k] += v
        top = max(ts)
        if top > self.watermark:
            self.watermark = float(top)

    def _resolve_combo(self, key: tuple[str | None, ...]) -> int | Rejection:
        rdomain, mx_host, ip, pool, sender, tenant, campaign = key
        res: int | Rejection
        if not set(map(type, key)) <= _OPT_STR_TYPES:
            res = Rejection("wrong_type", _first_bad_type(key))
        elif max(map(len, filter(None, key)), default=0) > MAX_FIELD_CHARS:
            too_long = next(
                n for n, v in zip(_COMBO_FIELDS, key, strict=True) if v and len(v) > MAX_FIELD_CHARS
            )
            res = Rejection(
                "field_too_long", f"{too_long} longer than {MAX_FIELD_CHARS} characters"
            )
        elif (dom := self._domain(rdomain) if rdomain is not None else None) is None:
            res = Rejection("bad_domain", "recipient domain is not a valid domain name")
        elif sender and self._domain(sender) is None:
            res = Rejection("bad_domain", "sender_domain is not a valid domain name")
        else:
            # scope ids of the (domain, MX) part and of the sending part, each cached: a new
            # combination of known parts costs two lookups. Ids are given in dimension order,
            # only to valid combinations, as one pass over the eight dimensions would.
            head = self._heads.get((rdomain, mx_host))
            if head is None:
                mx = (mx_host or "").strip().lower().rstrip(".")
                provider, operator = self.resolver.resolve(dom, mx)
                head = (self._scope_sids((dom, provider, operator), 0), provider, operator)
                self._heads[(rdomain, mx_host)] = head
            tail_key = (ip, pool, sender, tenant, campaign)
            tail = self._tails.get(tail_key)
            if tail is None:
                sdom = self._domain(sender) if sender else None
                tail = self._scope_sids((ip, pool, sdom, tenant, campaign), 3)
                self._tails[tail_key] = tail
            res = len(self._combo_scopes)
            self._combo_scopes.append(head[0] + tail)
            self._combo_provider.append((head[1], head[2]))
        self._combo[key] = res
        return res

    def _scope_sids(self, values: tuple[str | None, ...], first_dim: int) -> tuple[int, ...]:
        """Scope ids of consecutive dimensions from ``first_dim`` (-1 for an empty value)."""
        out = []
        for dim, v in enumerate(values, first_dim):
            if not v:
                out.append(-1)
                continue
            ids = self._dim_ids[dim]
            sid = ids.get(v)
            if sid is None:
                name = f"{SCOPE_KINDS[dim]}:{v.strip()}"
                sid = self._scope_ids.get(name)
                if sid is None:
                    sid = len(self._scope_names)
                    self._scope_ids[name] = sid
                    self._scope_names.append(name)
                ids[v] = sid
            out.append(sid)
        return tuple(out)

    def _domain(self, raw: str) -> str | None:
        """:func:`normalise_domain`, cached (a stream has far fewer domains than events)."""
        try:
            return self._domains[raw]
        except KeyError:
            pass
        if len(self._domains) > 100_000:
            self._domains.clear()
        d = self._domains[raw] = normalise_domain(raw)
        return d

    def _classify(
        self, code: int | None, enh: str | None, text: str, combo: int
    ) -> tuple[int, int, int]:
        provider, operator = self._combo_provider[combo]
        ids = self._combo_scopes[combo]
        ckey = (code, enh, text, ids[1], ids[2])
        hit = self._reply_cache.get(ckey)
        if hit is not None:
            return hit
        full = self._normalize(text)
        verdict = self.classifier.classify_normalized(code, enh, full, provider, operator)
        norm = full[:300]
        rid = self._reply_ids.get(norm)
        if rid is None:
            rid = len(self._reply_texts)
            self._reply_ids[norm] = rid
            self._reply_texts.append(norm)
        out = (verdict.reason_code, verdict.class_code, rid)
        if len(self._reply_cache) > 100_000:
            self._reply_cache.clear()
        self._reply_cache[ckey] = out
        return out

    # -- per tick ----------------------------------------------------------------------------

    def _reset_columns(self) -> None:
        self._cols = _Columns()

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
            self._reset_columns()
            watermark = self.watermark
        else:
            self._cols = c.split(max(0, upto))
            watermark = max(self._flushed_watermark, max(c.ts, default=0.0))
        self._flushed_watermark = watermark
        n = len(c.ts)
        if n == 0:
            d = Deltas.empty()
            d.watermark = watermark
            return d
        kind = np.asarray(c.kind, dtype=np.int64)
        ts = np.asarray(c.ts, dtype=np.float64)
        cls = np.asarray(c.cls, dtype=np.int64)
        reason = np.asarray(c.reason, dtype=np.int64)
        rkey = np.asarray(c.rkey, dtype=np.uint64)
        reply = np.asarray(c.reply, dtype=np.int64)
        combo = np.asarray(c.combo, dtype=np.int64)
        combo_scopes = self._combo_array()
        bucket = (np.floor(ts / self.bucket_s) * self.bucket_s).astype(np.int64)

        # known-good memory: remember delivered recipients, then look up unknown-user bounces
        delivered = (kind == _KIND_DELIVERED) & (rkey != 0)
        if delivered.any():
            self.bloom.add(rkey[delivered])
        uu = (reason == _REASON_USERUNKNOWN) & ((kind == _KIND_BOUNCED) | (kind == _KIND_REJECTED))
        known_good = np.zeros(n, dtype=np.bool_)
        if uu.any():
            idx = np.flatnonzero(uu & (rkey != 0))
            known_good[idx] = self.bloom.contains(rkey[idx])

        # (event, column) increments
        ev_parts = [np.arange(n)]
        col_parts = [kind]
        has_cls = cls != NO_CLASS
        ev_parts.append(np.flatnonzero(has_cls))
        col_parts.append(cls[has_cls] + CLASS_COLUMN_OFFSET)
        for mask, col in (
            (reason == _REASON_AUTH, COL["auth_failure"]),
            (uu, COL["user_unknown"]),
            (known_good, COL["user_unknown_known_good"]),
        ):
            ev_parts.append(np.flatnonzero(mask))
            col_parts.append(np.full(int(mask.sum()), col, dtype=np.int64))
        ev = np.concatenate(ev_parts)
        col_of = np.concatenate(col_parts)

        # 1) aggregate per (combo, bucket, column): events of one tick share few combos
        b0 = int(bucket.min())
        nb = int((bucket.max() - b0) // self.bucket_s) + 1
        bidx = (bucket[ev] - b0) // self.bucket_s
        k1, w1 = np.unique((combo[ev] * nb + bidx) * N_COLUMNS + col_of, return_counts=True)
        col1 = k1 % N_COLUMNS
        cb1 = k1 // N_COLUMNS
        # 2) fan the aggregated triples out to every scope dimension of their combo
        sid = combo_scopes[cb1 // nb].T.ravel()
        rb = np.tile(cb1 % nb, _N_DIMS)
        cc = np.tile(col1, _N_DIMS)
        ww = np.tile(w1, _N_DIMS)
        keep = sid >= 0
        sid, rb, cc, ww = sid[keep], rb[keep], cc[keep], ww[keep]
        uniq, inv = np.unique(sid * nb + rb, return_inverse=True)
        counts = (
            np.bincount(inv * N_COLUMNS + cc, weights=ww, minlength=uniq.shape[0] * N_COLUMNS)
            .astype(np.int64)
            .reshape(uniq.shape[0], N_COLUMNS)
        )
        gsid = uniq // nb
        gbucket = b0 + (uniq % nb) * self.bucket_s
        local_sids, scope_idx = np.unique(gsid, return_inverse=True)
        names = [self._scope_names[int(s)] for s in local_sids]
        replies = self._top_replies(combo_scopes, combo, reply, local_sids)
        if not self._cols.ts:
            self._bound_interning()
        return Deltas(
            scopes=names,
            scope_idx=scope_idx.astype(np.int32),
            bucket_start=gbucket.astype(np.int64),
            counts=counts,
            replies=replies,
            watermark=watermark,
        )

    def _combo_array(self) -> NDArray[np.int64]:
        """The combo -> scope ids table as an array, extended with the combos added since."""
        have, need = self._combo_len, len(self._combo_scopes)
        if have < need:
            buf = self._combo_arr
            if need > buf.shape[0]:  # grow geometrically: appending stays amortised O(1)
                buf = np.empty((max(need, 2 * buf.shape[0], 1024), _N_DIMS), dtype=np.int64)
                buf[:have] = self._combo_arr[:have]
                self._combo_arr = buf
            buf[have:need] = np.asarray(self._combo_scopes[have:], dtype=np.int64)
            self._combo_len = need
        return self._combo_arr[:need]

    def _bound_interning(self) -> None:
        """Keep the interning tables bounded; safe only between ticks (no pending columns)."""
        if len(self._reply_texts) > 50_000:
            self._reply_ids.clear()
            self._reply_texts.clear()
            self._reply_cache.clear()
        if len(self._scope_names) > 1_000_000 or len(self._combo_scopes) > 500_000:
            self._scope_ids.clear()
            self._scope_names.clear()
            self._combo.clear()
            self._combo_scopes.clear()
            self._combo_provider.clear()
            for ids in self._dim_ids:
                ids.clear()
            self._heads.clear()
            self._tails.clear()
            self._combo_arr = np.zeros((0, _N_DIMS), dtype=np.int64)
            self._combo_len = 0

    def _top_replies(
        self,
        combo_scopes: NDArray[np.int64],
        combo: NDArray[np.int64],
        reply: NDArray[np.int64],
        local_sids: NDArray[np.int64],
    ) -> list[tuple[int, str, int]]:
        has = reply >= 0
        if not has.any():
            return []
        sc = combo_scopes[combo[has]]
        rp = reply[has]
        sid = sc.T.ravel()
        rr = np.tile(rp, _N_DIMS)
        keep = sid >= 0
        sid, rr = sid[keep], rr[keep]
        nr = len(self._reply_texts)
        pair, cnt = np.unique(sid * nr + rr, return_counts=True)
        psid = pair // nr
        prep = pair % nr
        order = np.lexsort((-cnt, psid))
        out: list[tuple[int, str, int]] = []
        pos = np.searchsorted(local_sids, psid)
        last = -1
        taken = 0
        for i in order:
            s = int(psid[i])
            if s != last:
                last, taken = s, 0
            if taken >= REPLIES_PER_SCOPE:
                continue
            taken += 1
            out.append((int(pos[i]), self._reply_texts[int(prep[i])], int(cnt[i])))
        return out


#: marks an undecodable message in a batch
_BAD: Any = object()
_NUMBER_TYPES = frozenset({float, int})
_OPT_STR_TYPES = frozenset({str, type(None)})
_OPT_INT_TYPES = frozenset({int, type(None)})
#: event kinds whose recipient key the known-good memory needs
_HASHED_KINDS = frozenset({_KIND_DELIVERED, *_REPLY_KIND_CODES})


_ENCODE = methodcaller("encode", "utf-8", "surrogatepass")
#: attribute getters of the fields, for objects from a typed decoder
_ATTR = {name: attrgetter(name) for name in KNOWN_FIELDS}
_DIGEST = methodcaller("digest")


def _first(t: tuple[int, Rejection]) -> int:
    return t[0]


def _not_object(obj: object) -> str:
    return f"top-level JSON {type(obj).__name__}"


@dataclass(slots=True)
class _Batch:
    """Per-row column values of a checked batch (rows that failed a check hold placeholders)."""

    kind: list[Any]
    ts: list[Any]
    cls: list[int]
    reason: list[int]
    rkey: list[int]
    reply: list[int]
    combo: list[Any]


class _Columns:
    __slots__ = ("cls", "combo", "kind", "reason", "reply", "rkey", "ts")

    def split(self, k: int) -> _Columns:
        """Keep the first ``k`` rows here; return the others as new columns."""
        tail = _Columns()
        for name in self.__slots__:
            col = getattr(self, name)
            getattr(tail, name).extend(col[k:])
            del col[k:]
        return tail

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.ts: list[float] = []
        self.cls: list[int] = []
        self.reason: list[int] = []
        self.rkey: list[int] = []
        self.reply: list[int] = []
        self.combo: list[int] = []
