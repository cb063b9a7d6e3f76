"""Recipient suppression: :class:`Suppressor`, the policy over a :class:`RecipientStore`
for one input partition (vectorised :meth:`~Suppressor.observe`, incidents, timers, operators,
snapshots). The package docstring (:mod:`models.act.suppression`) has the whole.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
from numpy.typing import NDArray

from models.act.suppression.indexes import _Held, _Recent, _Timers
from models.act.suppression.policy import Event, Policy, _fresh, step, timers
from models.act.suppression.quarantine import IncidentLike, _holders, covers, quarantine_scopes
from models.act.suppression.record import SuppressionChange, record_of
from models.act.suppression.state import (
    _HARD,
    _K_BOUNCED,
    _K_COMPLAINED,
    _K_DELIVERED,
    _K_REJECTED,
    _K_UNSUB,
    _NO_KEY,
    _U16,
    _U32,
    ACTIVE,
    CAUSES,
    MANUAL,
    NO_REASON,
    QUARANTINED,
    RECORD_BYTES,
    SUPPRESSED,
    SUSPENDED,
    MemoryStore,
    RecipientState,
    RecipientStore,
    _sec,
    _with,
    incident_hash,
)
from models.act.suppression_config import SuppressionConfig, default_config
from models.ingest.recipients import RecipientRows
from models.state.snapshot import Snap, SnapshotError, strings, unstrings

# -- the suppressor ---------------------------------------------------------------------------

#: bumped when a snapshot written by an older version cannot be read correctly
STATE_FORMAT: Final[int] = 1
#: incident ids remembered for the records' ``incident`` / ``last_incident`` names
_NAMES_KEPT: Final[int] = 100_000
_NO_HOLDERS: Final[tuple[int, ...]] = ()
_TIMER_CAUSES: Final[frozenset[str]] = frozenset({"expired", "forgotten"})


@dataclass
class SuppressorStats:
    rows: int = 0
    #: rows left after the numpy filters (read from the store or changed state)
    examined: int = 0
    lookups: int = 0
    writes: int = 0
    #: rows skipped: their identity holds another recipient's record (a 64-bit collision)
    collisions: int = 0
    changes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))


class Suppressor:
    """Per-recipient suppression state over a :class:`RecipientStore` (module docstring).

    ``write_through`` (default): each call writes its changes to the store before it returns.
    Without it the changes wait in memory (and are read from there) until :meth:`take_writes`
    hands them over: a worker that must publish a change to the changelog topic before its
    store applies it writes them itself, with the topic offsets.
    """

    def __init__(
        self,
        config: SuppressionConfig | None = None,
        store: RecipientStore | None = None,
        *,
        write_through: bool = True,
    ) -> None:
        self.config = config or default_config()
        self.policy = Policy(self.config)
        self.store: RecipientStore = store if store is not None else MemoryStore()
        self.write_through = write_through
        self.stats = SuppressorStats()
        self._pending: dict[int, bytes | None] = {}
        self._timers = _Timers()
        #: incident hash -> open quarantining incident
        self._held: dict[int, _Held] = {}
        #: incident hash -> id (names for the records)
        self._names: OrderedDict[int, str] = OrderedDict()
        self._recent: deque[_Recent] = deque()
        self.now: float = 0.0

    # ------------------------------------------------------------------ storage helpers
    def _get(self, idents: NDArray[np.uint64]) -> list[bytes | None]:
        self.stats.lookups += len(idents)
        if not self._pending:
            return self.store.get_many(idents)
        pend = self._pending
        ids = idents.tolist()
        miss = [i for i in ids if i not in pend]
        got = dict(zip(miss, self.store.get_many(np.asarray(miss, dtype=np.uint64)), strict=True))
        return [pend[i] if i in pend else got[i] for i in ids]

    def _put(self, items: dict[int, bytes | None]) -> None:
        if not items:
            return
        self.stats.writes += len(items)
        if self.write_through:
            self.store.put_many(list(items.items()))
        else:
            self._pending.update(items)

    def take_writes(self) -> list[tuple[int, bytes | None]]:
        """The writes waiting (``write_through=False``), oldest change first per identity;
        the caller must now apply them to the store."""
        out = list(self._pending.items())
        self._pending = {}
        return out

    def _name(self, h: int) -> str | None:
        return self._names.get(h) if h else None

    def _remember_name(self, h: int, name: str) -> None:
        self._names[h] = name
        self._names.move_to_end(h)
        while len(self._names) > _NAMES_KEPT:
            self._names.popitem(last=False)

    def _change(
        self, ident: int, at: float, cause: str, new: RecipientState | None, old: RecipientState
    ) -> SuppressionChange:
        self.stats.changes[cause] = self.stats.changes.get(cause, 0) + 1
        if new is None:
            gone = RecipientState(
                key=old.key,
                first_seen=old.first_seen,
                last_seen=old.last_seen,
                incident=old.incident,
                held=0,
            )
            return SuppressionChange(ident, at, cause, gone, True, None, self._name(old.incident))
        h = self._name(new.incident)
        return SuppressionChange(ident, at, cause, new, False, h, h)

    def _index(self, ident: int, rec: RecipientState | None) -> None:
        if rec is not None and rec.until and rec.state != QUARANTINED:
            self._timers.add(rec.until, ident)

    # ------------------------------------------------------------------ incidents
    def incident_opened(self, incident: IncidentLike) -> list[SuppressionChange]:
        """Start holding the hard hits of a quarantining incident's scopes; quarantine the
        recipients counted for hard hits from them up to ``lookback_s`` before it opened
        (unless something changed them since). No-op for other types and known incidents."""
        h = incident_hash(incident.id)
        self._remember_name(h, incident.id)
        known = self._held.get(h)
        if known is not None:
            if known.id is None:  # rebuilt from the store: now we know it
                known.id = incident.id
                known.scopes = quarantine_scopes(self.config, incident)
                known.opened_at = float(incident.opened_at)
                known.type = incident.type
            return []
        scopes = quarantine_scopes(self.config, incident)
        if not scopes:
            return []
        held = _Held(h, incident.id, scopes, float(incident.opened_at), type=incident.type)
        self._held[h] = held
        if incident.type not in self.config.quarantine.lookback_types:
            return []
        return self._retro(held)

    def _retro(self, held: _Held) -> list[SuppressionChange]:
        lo = held.opened_at - self.config.quarantine.lookback_s
        by_ident: dict[int, list[_Recent]] = {}
        for e in self._recent:
            if e.ts >= lo:
                by_ident.setdefault(e.ident, []).append(e)
        cands = {
            i: es for i, es in by_ident.items() if all(covers(held.scopes, e.scopes) for e in es)
        }
        if not cands:
            return []
        idents = np.fromiter(sorted(cands), dtype=np.uint64, count=len(cands))
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        for ident, cur_raw in zip(idents.tolist(), self._get(idents), strict=True):
            es = cands[ident]
            if cur_raw is None or cur_raw != es[-1].after:
                continue  # changed since (a delivery, a complaint, another quarantine ...)
            cur = RecipientState.unpack(cur_raw)
            before = RecipientState.unpack(es[0].before) if es[0].before is not None else None
            bst = before.state if before is not None else ACTIVE
            new = _with(
                cur,
                state=QUARANTINED,
                reason=es[0].reason,
                count=len(es),
                until=before.until if before is not None and bst == SUSPENDED else 0,
                base_state=bst,
                base_reason=before.reason if before is not None else NO_REASON,
                base_count=before.count if before is not None else 0,
                held=min(cur.held + len(es), _U16),
                incident=held.hash,
            )
            held.idents.add(ident)
            writes[ident] = new.pack()
            out.append(self._change(ident, held.opened_at, "quarantine", new, cur))
        self._put(writes)
        return out

    def incident_closed(self, incident: IncidentLike | str, at: float) -> list[SuppressionChange]:
        """Release the recipients an incident (or its id) held, unless another open incident
        holds them too (the record then names that one)."""
        iid = incident if isinstance(incident, str) else incident.id
        return self._close(incident_hash(iid), at)

    def _close(self, h: int, at: float) -> list[SuppressionChange]:
        held = self._held.pop(h, None)
        if held is None or not held.idents:
            return []
        idents = np.fromiter(sorted(held.idents), dtype=np.uint64, count=len(held.idents))
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        t = _sec(at)
        for ident, raw in zip(idents.tolist(), self._get(idents), strict=True):
            if raw is None:
                continue
            cur = RecipientState.unpack(raw)
            if cur.state != QUARANTINED:
                continue
            others = [o.hash for o in self._held.values() if ident in o.idents]
            if others:
                if cur.incident in others:
                    continue
                new = _with(cur, incident=others[0])
                writes[ident] = new.pack()
                out.append(self._change(ident, at, "quarantine", new, cur))
                continue
            new = _with(
                cur,
                state=cur.base_state,
                reason=cur.base_reason,
                count=cur.base_count,
                base_state=ACTIVE,
                base_reason=NO_REASON,
                base_count=0,
            )
            if new.state == SUSPENDED and new.until <= t:
                new.state = ACTIVE
            if new.state == ACTIVE:
                new.until = min(max(t, new.last_seen) + self.policy.forget_s, _U32)
            self._index(ident, new)
            writes[ident] = new.pack()
            out.append(self._change(ident, at, "release", new, cur))
        self._put(writes)
        return out

    def sync_incidents(
        self, open_incidents: Iterable[IncidentLike], at: float
    ) -> list[SuppressionChange]:
        """Make the held incidents those of ``open_incidents`` (every open incident): open the
        new ones, close the others at ``at`` (after a restart, or a missed close)."""
        out: list[SuppressionChange] = []
        live: set[int] = set()
        for inc in open_incidents:
            live.add(incident_hash(inc.id))
            out += self.incident_opened(inc)
        for h in [h for h in self._held if h not in live]:
            out += self._close(h, at)
        return out

    def open_holds(self) -> dict[str, int]:
        """Open quarantining incidents -> recipients they hold."""
        return {(o.id or f"#{o.hash:08x}"): len(o.idents) for o in self._held.values()}

    def _held_by_scope(self) -> dict[str, list[int]]:
        """Scope name (single or combined) -> the open incidents holding it."""
        by_scope: dict[str, list[int]] = {}
        for o in self._held.values():
            for s in o.scopes:
                by_scope.setdefault(s, []).append(o.hash)
        return by_scope

    def _candidates(
        self, rows: RecipientRows, idx: NDArray[np.intp], by_scope: dict[str, list[int]]
    ) -> NDArray[np.bool_]:
        """Which rows ``idx`` are hard hits some held scope may cover (exact for single
        scopes; a combined scope is confirmed per row by :func:`covers`)."""
        names = rows.scope_keys
        single = np.array([s in by_scope for s in names] + [False], dtype=np.bool_)
        heads = {s.partition("|")[0] for s in by_scope if "|" in s}
        head = np.array([s in heads for s in names] + [False], dtype=np.bool_)
        return np.asarray(
            (rows.cls[idx] == _HARD)
            & (
                single[rows.domain_idx[idx]]
                | single[rows.mx_idx[idx]]
                | single[rows.provider_idx[idx]]
                | head[rows.ip_idx[idx]]
                | head[rows.pool_idx[idx]]
                | head[rows.sender_idx[idx]]
            ),
            dtype=np.bool_,
        )

    # ------------------------------------------------------------------ events
    def observe(
        self, rows: RecipientRows, open_incidents: Iterable[IncidentLike] | None = None
    ) -> list[SuppressionChange]:
        """Apply a tick's rows, in feed order. ``open_incidents`` (the Monitor's open
        incidents): those not seen before start holding first (:meth:`incident_opened`).
        Returns the changes, in the order they happened."""
        out: list[SuppressionChange] = []
        if open_incidents is not None:
            for inc in open_incidents:
                out += self.incident_opened(inc)
        n = len(rows)
        self.stats.rows += n
        if not n:
            return out
        pol = self.policy
        cfg = self.config
        kind = rows.kind
        deliv = kind == _K_DELIVERED
        bounce = kind == _K_BOUNCED
        if cfg.count_rejected:
            bounce |= kind == _K_REJECTED
        relevant = deliv | (bounce & pol.counts[rows.cls, rows.reason])
        if not cfg.complaint.ignored:
            relevant |= kind == _K_COMPLAINED
        if not cfg.unsubscribe.ignored:
            relevant |= kind == _K_UNSUB
        relevant &= rows.ident != 0
        idx = np.flatnonzero(relevant)
        if not len(idx):
            self.now = max(self.now, float(rows.ts.max()))
            return out
        uniq, inv = np.unique(rows.ident[idx], return_inverse=True)
        vals = self._get(uniq)
        has = np.fromiter((v is not None for v in vals), dtype=np.bool_, count=len(vals))
        # deliveries matter only to recipients that have state, or get it in this call
        d = deliv[idx]
        touched = np.zeros(len(uniq), dtype=np.bool_)
        touched[inv[~d]] = True
        keep = ~d | has[inv] | touched[inv]
        idx, inv = idx[keep], inv[keep]
        self.stats.examined += len(idx)
        by_scope = self._held_by_scope()
        if by_scope:
            covered = self._candidates(rows, idx, by_scope)
        else:
            covered = np.zeros(len(idx), dtype=np.bool_)
        recs: dict[int, RecipientState | None] = {}
        orig: dict[int, bytes | None] = {}
        changed: set[int] = set()
        uniq_l = uniq.tolist()
        ts_l = rows.ts[idx].tolist()
        kind_l = kind[idx].tolist()
        cls_l = rows.cls[idx].tolist()
        reason_l = rows.reason[idx].tolist()
        mid_l = (rows.mid[idx] & np.uint64(_U32)).tolist()
        kg_l = rows.known_good[idx].tolist()
        cov_l = covered.tolist()
        inv_l = inv.tolist()
        # the keys as raw bytes (numpy's S32 items drop trailing NUL bytes)
        kraw = rows.key[idx].tobytes()
        lookback = cfg.quarantine.lookback_s
        for j, (row, u) in enumerate(zip(idx.tolist(), inv_l, strict=True)):
            ident = uniq_l[u]
            if ident in recs:
                rec = recs[ident]
            else:
                raw = vals[u]
                orig[ident] = raw
                rec = RecipientState.unpack(raw) if raw is not None else None
                recs[ident] = rec
            key = kraw[32 * j : 32 * j + 32]
            if rec is not None and rec.key != key:
                if key != _NO_KEY:
                    self.stats.collisions += 1
                    continue
                # a delivery carries no key (the pipeline digests only the kinds that can
                # create a record): it acts on the record of its identity
                key = rec.key
            holders = _NO_HOLDERS
            if cov_l[j]:
                holders = _holders(by_scope, rows.scopes_of(row))
            ev = Event(ts_l[j], kind_l[j], cls_l[j], reason_l[j], mid_l[j], kg_l[j], holders)
            new, trans = step(pol, rec, key, ev)
            if not trans:
                continue
            prev = rec
            for cause, after in trans:
                old = prev if prev is not None else after
                assert old is not None
                # a timer that fired at this event happened at its due time
                at = float(old.until) if cause in _TIMER_CAUSES and old.until else ev.ts
                out.append(self._change(ident, at, cause, after, old))
                prev = after if after is not None else prev
            recs[ident] = new
            changed.add(ident)
            if new is not None and new.state == QUARANTINED and holders:
                for h in holders:
                    self._held[h].idents.add(ident)
            if (
                lookback > 0
                and cls_l[j] == _HARD
                and not holders
                and trans[-1][0] == "bounce"
                and new is not None
                and new.state != QUARANTINED
            ):
                scopes = tuple(s or "" for s in rows.scopes_of(row))
                self._recent.append(
                    _Recent(
                        ev.ts,
                        ident,
                        ev.reason,
                        scopes,
                        rec.pack() if rec is not None else None,
                        new.pack(),
                    )
                )
            self._index(ident, new)
        writes: dict[int, bytes | None] = {}
        for ident in changed:
            rec = recs[ident]
            v = rec.pack() if rec is not None else None
            if v != orig[ident]:
                writes[ident] = v
        self._put(writes)
        self.now = max(self.now, float(rows.ts.max()))
        self._prune_recent()
        return out

    def _prune_recent(self) -> None:
        # incidents open at the watermark; keep an extra lookback for a late one
        lo = self.now - 2 * self.config.quarantine.lookback_s
        r = self._recent
        while r and r[0].ts < lo:
            r.popleft()

    def expire(self, now: float) -> list[SuppressionChange]:
        """Timers due at event time ``now``: suspensions (and suppressions with a duration)
        that ended, active records to forget. Reads only the records the index names."""
        due = self._timers.pop_due(now)
        if not len(due):
            return []
        out: list[SuppressionChange] = []
        writes: dict[int, bytes | None] = {}
        for ident, raw in zip(due.tolist(), self._get(due), strict=True):
            if raw is None:
                continue
            rec = RecipientState.unpack(raw)
            new, trans = timers(self.policy, rec, now)
            if not trans:
                continue
            prev = rec
            for cause, after in trans:
                at = float(prev.until) if prev.until else now
                out.append(self._change(ident, at, cause, after, prev))
                prev = after if after is not None else prev
            self._index(ident, new)
            writes[ident] = new.pack() if new is not None else None
        self._put(writes)
        return out

    # ------------------------------------------------------------------ operators
    def manual(self, key: bytes, at: float, suppress: bool = True) -> list[SuppressionChange]:
        """An operator suppresses a recipient (reason ``manual``, permanent) or clears it
        (whatever its state: a tombstone)."""
        ident = int.from_bytes(key[:8], "little")
        raw = self._get(np.asarray([ident], dtype=np.uint64))[0]
        cur = RecipientState.unpack(raw) if raw is not None else None
        if cur is not None and cur.key != key:
            self.stats.collisions += 1
            return []
        t = _sec(at)
        for o in self._held.values():
            o.idents.discard(ident)
        if not suppress:
            if cur is None:
                return []
            self._put({ident: None})
            return [self._change(ident, at, "manual", None, cur)]
        base = cur if cur is not None else _fresh(key, t)
        new = _with(
            base,
            state=SUPPRESSED,
            reason=MANUAL,
            count=1,
            until=0,
            base_state=ACTIVE,
            base_reason=NO_REASON,
            base_count=0,
            last_seen=max(base.last_seen, t),
        )
        self._put({ident: new.pack()})
        return [self._change(ident, at, "manual", new, base)]

    # ------------------------------------------------------------------ output
    def record(self, change: SuppressionChange) -> dict[str, Any]:
        """The record of a change (docs/suppression.md, "Record")."""
        return change.to_json()

    def lookup(self, keys: Sequence[bytes]) -> list[dict[str, Any] | None]:
        """The current record of each 32-byte key (None: nothing stored: active)."""
        idents = np.asarray([int.from_bytes(k[:8], "little") for k in keys], dtype=np.uint64)
        out: list[dict[str, Any] | None] = []
        for k, raw in zip(keys, self._get(idents), strict=True):
            rec = RecipientState.unpack(raw) if raw is not None else None
            if rec is None or rec.key != k:
                out.append(None)
                continue
            name = self._name(rec.incident)
            out.append(record_of(rec, float(rec.last_seen), "lookup", False, name, name))
        return out

    def metrics(self) -> dict[str, Any]:
        return {
            "rows": self.stats.rows,
            "examined": self.stats.examined,
            "lookups": self.stats.lookups,
            "writes": self.stats.writes,
            "collisions": self.stats.collisions,
            "changes": dict(self.stats.changes),
            "timers": len(self._timers),
            "held_incidents": len(self._held),
            "held_recipients": sum(len(o.idents) for o in self._held.values()),
            "recent_hard_hits": len(self._recent),
        }

    # ------------------------------------------------------------------ state
    def snapshot(self) -> Snap:
        """The in-memory indexes (timers, held incidents and their recipients, recent hard
        hits, incident names) as a :class:`Snap`; the records are the store's."""
        snap = Snap(meta={"format": STATE_FORMAT, "now": self.now})
        snap.put("timers", self._timers.snapshot())
        held = sorted(self._held.values(), key=lambda o: o.hash)
        snap.meta["held"] = [
            {
                "hash": o.hash,
                "id": o.id,
                "type": o.type,
                "scopes": sorted(o.scopes),
                "opened_at": o.opened_at,
            }
            for o in held
        ]
        for i, o in enumerate(held):
            snap.arrays[f"held/{i}"] = np.fromiter(
                sorted(o.idents), dtype=np.uint64, count=len(o.idents)
            )
        snap.arrays["names/hash"] = np.fromiter(
            self._names.keys(), dtype=np.uint32, count=len(self._names)
        )
        snap.arrays["names/id"] = strings(list(self._names.values()))
        r = list(self._recent)
        snap.arrays["recent/ts"] = np.array([e.ts for e in r], dtype=np.float64)
        snap.arrays["recent/ident"] = np.array([e.ident for e in r], dtype=np.uint64)
        snap.arrays["recent/reason"] = np.array([e.reason for e in r], dtype=np.uint8)
        snap.arrays["recent/before"] = np.array(
            [e.before or b"" for e in r], dtype=f"S{RECORD_BYTES}"
        )
        snap.arrays["recent/after"] = np.array([e.after for e in r], dtype=f"S{RECORD_BYTES}")
        snap.arrays["recent/scopes"] = strings(["\n".join(e.scopes) for e in r])
        return snap

    @classmethod
    def restore(
        cls,
        snap: Snap,
        config: SuppressionConfig | None = None,
        store: RecipientStore | None = None,
        *,
        write_through: bool = True,
    ) -> Suppressor:
        """A suppressor continuing from :meth:`snapshot` over ``store`` (``SnapshotError``
        when it cannot)."""
        if snap.meta.get("format") != STATE_FORMAT:
            raise SnapshotError(
                f"suppression state format {snap.meta.get('format')}, this version reads "
                f"{STATE_FORMAT}"
            )
        sup = cls(config, store, write_through=write_through)
        try:
            sup.now = float(snap.meta["now"])
            sup._timers.restore(snap.child("timers"))
            for i, o in enumerate(snap.meta["held"]):
                sup._held[int(o["hash"])] = _Held(
                    int(o["hash"]),
                    None if o["id"] is None else str(o["id"]),
                    frozenset(str(s) for s in o["scopes"]),
                    float(o["opened_at"]),
                    set(np.asarray(snap.array(f"held/{i}"), dtype=np.uint64).tolist()),
                    str(o.get("type", "")),
                )
            for h, name in zip(
                snap.array("names/hash").tolist(), unstrings(snap.array("names/id")), strict=True
            ):
                sup._names[int(h)] = name
            ts = snap.array("recent/ts").tolist()
            before = snap.array("recent/before").tolist()
            after = snap.array("recent/after").tolist()
            scopes = unstrings(snap.array("recent/scopes"))
            for t, ident, reason, b, a, s in zip(
                ts,
                snap.array("recent/ident").tolist(),
                snap.array("recent/reason").tolist(),
                before,
                after,
                scopes,
                strict=True,
            ):
                sup._recent.append(
                    _Recent(
                        float(t),
                        int(ident),
                        int(reason),
                        tuple(s.split("\n")),
                        _pad(b) if b else None,
                        _pad(a),
                    )
                )
        except (KeyError, TypeError, ValueError) as exc:
            raise SnapshotError(f"damaged suppression state: {exc!r}") from exc
        return sup

    def rebuild_indexes(self) -> int:
        """Rebuild the timers and the held recipients from the store (one scan: after a
        restart without a snapshot). Held incidents not known by id are named by their hash
        until :meth:`incident_opened` or :meth:`sync_incidents` sees them. Returns the records
        read."""
        self._timers = _Timers()
        for held in self._held.values():
            held.idents.clear()
        n = 0
        for ident, raw in self.store.items():
            n += 1
            rec = RecipientState.unpack(raw)
            if rec.state == QUARANTINED:
                o = self._held.get(rec.incident)
                if o is None:
                    o = self._held[rec.incident] = _Held(
                        rec.incident, self._name(rec.incident), frozenset(), 0.0
                    )
                o.idents.add(int(ident))
            else:
                self._index(int(ident), rec)
        return n


def _pad(b: bytes) -> bytes:
    """numpy's S arrays drop trailing NUL bytes: put them back."""
    return b.ljust(RECORD_BYTES, b"\x00")
