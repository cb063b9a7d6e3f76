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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from models.bloom import RotatingBloom
from models.deltas import Deltas
from models.providers import ProviderResolver
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

MAX_EVENT_BYTES = 1 << 20
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


def recipient_key(address: str) -> str:
    """The documented pseudonym of a recipient: hex SHA-256 of the trimmed, lower-cased address."""
    return hashlib.sha256(address.strip().lower().encode("utf-8")).hexdigest()


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
        ts = float(value)
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
    from models.classifier import Classifier

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
    ) -> None:
        self.classifier = classifier if classifier is not None else _default_classifier()
        if normalize is None:
            from models.classifier import normalize_reply

            normalize = normalize_reply
        self._normalize = normalize
        self.bucket_s = int(bucket_s)
        self.clock = clock
        self.max_future_skew_s = max_future_skew_s
        self.resolver = resolver or ProviderResolver()
        self.bloom = bloom or RotatingBloom()
        self._loads = loads
        self.stats = PipelineStats()
        self.watermark = 0.0
        # interning
        self._scope_ids: dict[str, int] = {}
        self._scope_names: list[str] = []
        self._combo: dict[tuple[str | None, ...], int | Rejection] = {}
        self._combo_scopes: list[tuple[int, ...]] = []
        self._combo_provider: list[tuple[str, str]] = []
        self._combo_arr: NDArray[np.int64] = np.zeros((0, _N_DIMS), dtype=np.int64)
        self._reply_cache: dict[
            tuple[int | None, str | None, str, int, int], tuple[int, int, int]
        ] = {}
        self._reply_ids: dict[str, int] = {}
        self._reply_texts: list[str] = []
        self._reset_columns()

    # -- per event ---------------------------------------------------------------------------

    def feed(self, raw: bytes) -> Rejection | None:
        """Decode one message and count it; returns the rejection if it was not accepted."""
        if len(raw) > MAX_EVENT_BYTES:
            return self._reject("too_large", f"{len(raw)} bytes > {MAX_EVENT_BYTES}")
        try:
            obj = self._loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            return self._reject("bad_json", str(exc)[:200])
        if not isinstance(obj, dict):
            return self._reject("not_an_object", f"top-level JSON {type(obj).__name__}")
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
        if recipient is not None and (kind == _KIND_DELIVERED or kind in _REPLY_KIND_CODES):
            digest = hashlib.sha256(recipient.strip().lower().encode("utf-8")).digest()
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

    def _resolve_combo(self, key: tuple[str | None, ...]) -> int | Rejection:
        rdomain, mx_host, ip, pool, sender, tenant, campaign = key
        res: int | Rejection
        bad = _first_bad_type(key)
        too_long = (
            next(
                (
                    n
                    for n, v in zip(_COMBO_FIELDS, key, strict=True)
                    if v and len(v) > MAX_FIELD_CHARS
                ),
                None,
            )
            if not bad
            else None
        )
        if bad:
            res = Rejection("wrong_type", bad)
        elif too_long:
            res = Rejection(
                "field_too_long", f"{too_long} longer than {MAX_FIELD_CHARS} characters"
            )
        elif (dom := normalise_domain(rdomain) if rdomain is not None else None) is None:
            res = Rejection("bad_domain", "recipient domain is not a valid domain name")
        elif sender and (sdom := normalise_domain(sender)) is None:
            res = Rejection("bad_domain", "sender_domain is not a valid domain name")
        else:
            sdom = normalise_domain(sender) if sender else None
            mx = (mx_host or "").strip().lower().rstrip(".")
            provider, operator = self.resolver.resolve(dom, mx)
            values = (dom, provider, operator, ip, pool, sdom, tenant, campaign)
            out = []
            for kind_name, v in zip(SCOPE_KINDS, values, strict=True):
                if v is None or v == "":
                    out.append(-1)
                    continue
                name = f"{kind_name}:{v.strip()}"
                sid = self._scope_ids.get(name)
                if sid is None:
                    sid = len(self._scope_names)
                    self._scope_ids[name] = sid
                    self._scope_names.append(name)
                out.append(sid)
            res = len(self._combo_scopes)
            self._combo_scopes.append(tuple(out))
            self._combo_provider.append((provider, operator))
        self._combo[key] = res
        return res

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

    def flush(self) -> Deltas:
        """Aggregate everything fed since the last flush into Deltas and reset the columns."""
        c = self._cols
        self._reset_columns()
        n = len(c.ts)
        if n == 0:
            d = Deltas.empty()
            d.watermark = self.watermark
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
        counts = np.zeros((uniq.shape[0], N_COLUMNS), dtype=np.int64)
        np.add.at(counts, (inv, cc), ww)
        gsid = uniq // nb
        gbucket = b0 + (uniq % nb) * self.bucket_s
        local_sids, scope_idx = np.unique(gsid, return_inverse=True)
        names = [self._scope_names[int(s)] for s in local_sids]
        replies = self._top_replies(combo_scopes, combo, reply, local_sids)
        self._bound_interning()
        return Deltas(
            scopes=names,
            scope_idx=scope_idx.astype(np.int32),
            bucket_start=gbucket.astype(np.int64),
            counts=counts,
            replies=replies,
            watermark=self.watermark,
        )

    def _combo_array(self) -> NDArray[np.int64]:
        """The combo -> scope ids table as an array, extended with the combos added since."""
        have = self._combo_arr.shape[0]
        if have < len(self._combo_scopes):
            tail = np.asarray(self._combo_scopes[have:], dtype=np.int64).reshape(-1, _N_DIMS)
            self._combo_arr = np.concatenate([self._combo_arr, tail])
        return self._combo_arr

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
            self._combo_arr = np.zeros((0, _N_DIMS), dtype=np.int64)

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


class _Columns:
    __slots__ = ("cls", "combo", "kind", "reason", "reply", "rkey", "ts")

    def __init__(self) -> None:
        self.kind: list[int] = []
        self.ts: list[float] = []
        self.cls: list[int] = []
        self.reason: list[int] = []
        self.rkey: list[int] = []
        self.reply: list[int] = []
        self.combo: list[int] = []
