"""Recipient suppression: the per-recipient transition. :class:`Policy` compiles the
configuration into a schedule per (class, reason) code; :func:`step` is the record of one
recipient after one event (what a naive per-event reference applies to every event),
:func:`timers` the timers due at a time. Pure: never mutates its inputs.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numpy.typing import NDArray

from models.act.suppression.state import (
    _CONSENT,
    _HARD,
    _K_BOUNCED,
    _K_COMPLAINED,
    _K_DELIVERED,
    _K_REJECTED,
    _K_UNSUB,
    _OTHER_REASONS,
    _U16,
    _U32,
    ACTIVE,
    COMPLAINT,
    NO_REASON,
    QUARANTINED,
    SUPPRESSED,
    SUSPENDED,
    UNSUBSCRIBE,
    RecipientState,
    _sec,
    _with,
)
from models.act.suppression_config import DAY, Schedule, SuppressionConfig
from models.schema import CLASS_CODE, REASONS

# -- the transition ---------------------------------------------------------------------------


class Event(NamedTuple):
    """One row as the transition reads it."""

    ts: float
    kind: int
    cls: int
    reason: int
    #: low 32 bits of the message hash (0: none)
    message: int = 0
    known_good: bool = False
    #: hashes of the open quarantining incidents whose scopes cover the row (hard hits: held)
    holders: tuple[int, ...] = ()


#: (cause, the record after it; None: deleted, a tombstone)
Transition = tuple[str, RecipientState | None]


class Policy:
    """The configuration compiled for the transition: a schedule per (class, reason) code."""

    def __init__(self, config: SuppressionConfig) -> None:
        self.config = config
        self.schedules: list[Schedule] = []
        #: [class code, reason code] -> index into schedules, -1: never penalises
        self.table: NDArray[np.int16] = np.full((256, 256), -1, dtype=np.int16)
        seen: dict[Schedule, int] = {}
        for cls in ("hard", "soft"):
            c = CLASS_CODE[cls]
            for r in range(256):
                s = config.schedule(cls, REASONS[r] if r < len(REASONS) else None)
                if s is None:
                    continue
                if s not in seen:
                    seen[s] = len(self.schedules)
                    self.schedules.append(s)
                self.table[c, r] = seen[s]
        self.counts: NDArray[np.bool_] = self.table >= 0
        self.forget_s = int(config.forget_after_s)
        self.quarantine_hard_only = True

    def schedule(self, cls: int, reason: int) -> Schedule | None:
        i = int(self.table[cls & 0xFF, reason & 0xFF])
        return None if i < 0 else self.schedules[i]


def _fresh(key: bytes, t: int) -> RecipientState:
    return RecipientState(key=key, first_seen=t, last_seen=t)


def timers(
    policy: Policy, rec: RecipientState, now: float
) -> tuple[RecipientState | None, list[Transition]]:
    """The record's timers due at ``now``: a suspension (or a suppression with a duration)
    that ended, an active record to forget. Quarantined records wait for their incident."""
    out: list[Transition] = []
    cur: RecipientState | None = rec
    while cur is not None and cur.until and cur.until <= now and cur.state != QUARANTINED:
        if cur.state == SUSPENDED:
            new = _with(cur, state=ACTIVE, until=0)
            if new.forgettable():
                out.append(("expired", None))
                return None, out
            new.until = min(max(cur.until, cur.last_seen) + policy.forget_s, _U32)
            out.append(("expired", new))
            cur = new
        elif cur.state == SUPPRESSED:
            out.append(("expired", None))
            return None, out
        else:  # active: forget
            out.append(("forgotten", None))
            return None, out
    return cur, out


def _hit(
    s: Schedule,
    state: int,
    reason: int,
    count: int,
    until: int,
    hit_reason: int,
    kg: bool,
    t: int,
    forget_s: int,
) -> tuple[int, int, int, int]:
    """(state, reason, count, until) after a counted hit on (state, reason, count, until)."""
    n = min((count if reason == hit_reason else 0) + 1, _U16)
    thr = s.threshold(kg)
    if thr and n >= thr:
        end = min(t + int(s.suppressed_days * DAY), _U32) if s.suppressed_days else 0
        return SUPPRESSED, hit_reason, n, end
    d = s.suspend_s(n)
    if d:
        end = min(t + int(d), _U32)
        if state == SUSPENDED:
            end = max(end, until)
        return SUSPENDED, hit_reason, n, end
    return ACTIVE, hit_reason, n, min(t + forget_s, _U32)


def relevant(policy: Policy, ev: Event) -> bool:
    """Whether an event can change a recipient's state at all: a delivery, a complaint or an
    unsubscribe the policy does not ignore, a bounce (a rejection with ``count_rejected``)
    whose (class, reason) has a schedule. Due timers fire only on relevant events."""
    kind = ev.kind
    cfg = policy.config
    if kind == _K_DELIVERED:
        return True
    if kind == _K_COMPLAINED:
        return not cfg.complaint.ignored
    if kind == _K_UNSUB:
        return not cfg.unsubscribe.ignored
    if kind == _K_BOUNCED or (kind == _K_REJECTED and cfg.count_rejected):
        return policy.schedule(ev.cls, ev.reason) is not None
    return False


def step(
    policy: Policy, rec: RecipientState | None, key: bytes, ev: Event
) -> tuple[RecipientState | None, list[Transition]]:
    """The record of recipient ``key`` after event ``ev`` (None: no record), and the
    transitions on the way (due timers first). Never mutates ``rec``."""
    if not relevant(policy, ev) or (rec is not None and rec.key != key):
        return rec, []  # never a change, not even a due timer (the hot path skips these rows)
    out: list[Transition] = []
    if rec is not None:
        rec, out = timers(policy, rec, ev.ts)
    cfg = policy.config
    t = _sec(ev.ts)
    kind = ev.kind
    if kind == _K_DELIVERED:
        if rec is None or (ev.message and ev.message == rec.message):
            return rec, out
        if rec.state == SUPPRESSED:
            return rec, out
        if rec.state == QUARANTINED:
            if rec.base_state == ACTIVE and rec.base_count == 0:
                return rec, out
            new = _with(rec, base_state=ACTIVE, base_reason=NO_REASON, base_count=0, until=0)
        else:
            if rec.state == ACTIVE and rec.count == 0:
                return rec, out
            new = _with(rec, state=ACTIVE, reason=NO_REASON, count=0, until=0)
            if new.forgettable():
                out.append(("delivery", None))
                return None, out
            new.until = min(t + policy.forget_s, _U32)
        new.last_seen = max(new.last_seen, t)
        out.append(("delivery", new))
        return new, out
    if kind in (_K_COMPLAINED, _K_UNSUB):
        rule, code = (
            (cfg.complaint, COMPLAINT) if kind == _K_COMPLAINED else (cfg.unsubscribe, UNSUBSCRIBE)
        )
        if rule.ignored or (rec is not None and rec.state == SUPPRESSED and rec.reason in _CONSENT):
            return rec, out
        base = rec if rec is not None else _fresh(key, t)
        end = min(t + int(rule.suppressed_days * DAY), _U32) if rule.suppressed_days else 0
        new = _with(
            base,
            state=SUPPRESSED,
            reason=code,
            count=1,
            until=end,
            base_state=ACTIVE,
            base_reason=NO_REASON,
            base_count=0,
            last_seen=max(base.last_seen, t),
        )
        if ev.message:
            new.message = ev.message
        out.append((_OTHER_REASONS[code], new))
        return new, out
    s = policy.schedule(ev.cls, ev.reason)
    assert s is not None  # relevant()
    if rec is not None and (rec.state == SUPPRESSED or (ev.message and ev.message == rec.message)):
        return rec, out
    base = rec if rec is not None else _fresh(key, t)
    if ev.cls == _HARD and ev.holders:  # held by an open incident: quarantine only
        if base.state == QUARANTINED:
            new = _with(base, count=min(base.count + 1, _U16), held=min(base.held + 1, _U16))
        else:
            new = _with(
                base,
                state=QUARANTINED,
                reason=ev.reason,
                count=1,
                until=base.until if base.state == SUSPENDED else 0,
                base_state=base.state,
                base_reason=base.reason,
                base_count=base.count,
                held=min(base.held + 1, _U16),
                incident=ev.holders[0],
            )
        new.message = ev.message
        new.last_seen = max(new.last_seen, t)
        out.append(("quarantine", new))
        return new, out
    if base.state == QUARANTINED:  # a hit its incidents do not hold: counts for what it resumes
        st, rs, n, until = _hit(
            s,
            base.base_state,
            base.base_reason,
            base.base_count,
            base.until if base.base_state == SUSPENDED else 0,
            ev.reason,
            ev.known_good,
            t,
            policy.forget_s,
        )
        if st == SUPPRESSED:
            new = _with(
                base,
                state=st,
                reason=rs,
                count=n,
                until=until,
                base_state=ACTIVE,
                base_reason=NO_REASON,
                base_count=0,
            )
        else:
            new = _with(
                base,
                base_state=st,
                base_reason=rs,
                base_count=n,
                until=until if st == SUSPENDED else 0,
            )
    else:
        st, rs, n, until = _hit(
            s,
            base.state,
            base.reason,
            base.count,
            base.until,
            ev.reason,
            ev.known_good,
            t,
            policy.forget_s,
        )
        new = _with(base, state=st, reason=rs, count=n, until=until)
    new.message = ev.message
    new.last_seen = max(new.last_seen, t)
    out.append(("bounce", new))
    return new, out
