"""Message lifecycle of the traffic simulator, generated per event-time step with numpy.

Per step (docs/simulator.md, "Message lifecycle"): messages are drawn from the active streams
(Poisson counts, uniform times), with their recipient domain, sender domain, IP and recipient;
then their delivery attempts (background noise, greylisting, user unknown, scenario effects;
deferred messages retried with backoff until they expire) and, after delivery, complaints, opens,
clicks and unsubscribes. Each step draws from its own RNG stream seeded with ``(seed, step)``.
The result is an event table (columns ``output.EV_FIELDS``), not yet sorted.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from models.sim.config import (
    BOOL,
    F64,
    HOUR,
    I64,
    K_BOUNCED,
    K_CLICKED,
    K_COMPLAINED,
    K_DEFERRED,
    K_DELIVERED,
    K_OPENED,
    K_SENT,
    K_UNSUB,
    MINUTE,
    SimConfig,
)
from models.sim.output import concat_tables
from models.sim.replies import R
from models.sim.scenarios import ScenarioEffects
from models.sim.traffic import (
    DEAD_DOMAINS,
    FBL_DELAY_MEDIAN_S,
    FBL_DELAY_SIGMA,
    GREYLIST_P,
    Calendar,
    Fleet,
    OutcomeTables,
    diurnal_factor,
    hash_arr,
)

IMPORTED_BASE: Final = 10_000_000  # recipient numbers of imported (never mailed) lists
MAX_ATTEMPTS: Final = 7
BACKOFF_MIN: Final = (5.0, 10.0, 20.0, 30.0, 45.0, 60.0)


class Lifecycle:
    """Generates the messages sent per step and their complete lifecycles as event tables."""

    def __init__(
        self,
        config: SimConfig,
        start: float,
        end: float,
        fleet: Fleet,
        outcomes: OutcomeTables,
        calendar: Calendar,
        effects: ScenarioEffects,
    ) -> None:
        self.config = config
        self.start = start
        self.end = end
        self.fleet = fleet
        self.outcomes = outcomes
        self.calendar = calendar
        self.effects = effects

    def tables(self) -> Iterator[tuple[float, dict[str, Any]]]:
        """Yield (generated_until, table) per generation step."""
        cfg = self.config
        n_steps = math.ceil((self.end - self.start) / cfg.step_s - 1e-9)
        msg_base = 0
        for k in range(n_steps):
            table, msg_base = self.step(k, msg_base)
            yield min(self.start + (k + 1) * cfg.step_s, self.end), table

    def step(self, k: int, msg_base: int) -> tuple[dict[str, Any], int]:
        """Generate all messages sent in step k and their complete lifecycles."""
        cfg = self.config
        s0 = self.start + k * cfg.step_s
        s1 = min(s0 + cfg.step_s, self.end)
        rng = np.random.default_rng([cfg.seed, k])
        parts_t: list[F64] = []
        parts_s: list[I64] = []
        streams = self.calendar.active_streams(s0, s1, self.effects.streams)
        for si, st in enumerate(streams):
            a, b = max(s0, st.start), min(s1, st.end)
            if b <= a:
                continue
            lam = st.rate * (b - a)
            if st.diurnal:
                lam *= float(diurnal_factor(0.5 * (a + b), cfg.tz_offset_h))
            n = int(rng.poisson(lam))
            if n:
                parts_t.append(rng.uniform(a, b, n))
                parts_s.append(np.full(n, si, dtype=np.int64))
        if not parts_t:
            return concat_tables([]), msg_base
        t_sent = np.concatenate(parts_t)
        sidx = np.concatenate(parts_s)
        order = np.argsort(t_sent, kind="stable")
        t_sent, sidx = t_sent[order], sidx[order]
        n = len(t_sent)
        msg = msg_base + np.arange(n, dtype=np.int64)
        s_tenant = np.array([s.tenant for s in streams], dtype=np.int64)
        s_camp = np.array([s.campaign for s in streams], dtype=np.int64)
        s_mark = np.array([s.marketing for s in streams], dtype=np.bool_)
        s_imp = np.array([s.imported for s in streams], dtype=np.float64)
        s_dead = np.array([s.dead_share for s in streams], dtype=np.float64)
        tenant = s_tenant[sidx]
        camp = s_camp[sidx]
        marketing = s_mark[sidx]
        imported = s_imp[sidx]
        # Domain, sender, IP per message (per tenant cumulative tables).
        dom = np.zeros(n, dtype=np.int64)
        sender = np.zeros(n, dtype=np.int64)
        ip = np.zeros(n, dtype=np.int64)
        u_dom = rng.random(n)
        u_snd = rng.random(n)
        u_ip = rng.random(n)
        for ti in np.unique(tenant).tolist():
            m = tenant == ti
            cum = self.fleet.tenant_dom_cum[ti]
            dom[m] = np.minimum(
                np.searchsorted(cum, u_dom[m] * cum[-1], side="right"), self.fleet.n_live - 1
            )
            scum = self.fleet.tenant_sender_cum[ti]
            sender[m] = self.fleet.tenant_sender_ids[ti][
                np.minimum(np.searchsorted(scum, u_snd[m], side="right"), len(scum) - 1)
            ]
            ips = self.fleet.tenant_ips[ti]
            ip[m] = ips[(u_ip[m] * len(ips)).astype(np.int64)]
        # Recipients: stable population per domain; invalid ones are fixed by a hash.
        u_r = rng.random(n)
        rcpt = (u_r * self.fleet.dom_pop[dom]).astype(np.int64)
        valid = (
            hash_arr(rcpt * 1_000_003 + dom * 7919 + cfg.seed) % 1000
            >= self.fleet.dom_invalid_permille[dom]
        )
        imp = imported > 0
        if imp.any():
            ii = np.flatnonzero(imp)
            dead = rng.random(len(ii)) < s_dead[sidx[ii]]
            dead_dom = self.fleet.n_live + rng.integers(0, len(DEAD_DOMAINS), len(ii))
            dom[ii] = np.where(dead, dead_dom, dom[ii])
            rcpt[ii] = IMPORTED_BASE + rng.integers(0, 10**6, len(ii))
            valid[ii] = rng.random(len(ii)) >= imported[ii]
        valid &= ~self.fleet.dom_dead[dom]
        msgtab = {
            "tenant": tenant,
            "campaign": camp,
            "sender": sender,
            "ip": ip,
            "dom": dom,
            "rcpt": rcpt,
            "msg": msg,
        }
        ev_t: list[F64] = [t_sent]
        ev_kind: list[I64] = [np.full(n, K_SENT, dtype=np.int64)]
        ev_row: list[I64] = [np.arange(n, dtype=np.int64)]
        ev_reply: list[I64] = [np.full(n, -1, dtype=np.int64)]
        ev_tok: list[I64] = [np.zeros(n, dtype=np.int64)]
        # Attempts.
        rows = np.arange(n, dtype=np.int64)
        ta = t_sent + np.clip(rng.lognormal(math.log(2.0), 1.0, n), 0.05, 300.0)
        for attempt in range(MAX_ATTEMPTS):
            if len(rows) == 0:
                break
            reply = self._attempt_replies(rng, rows, ta, attempt, dom, ip, sender, camp, valid)
            kind = np.where(reply < 0, K_DELIVERED, self.outcomes.reply_kind[np.maximum(reply, 0)])
            ev_t.append(ta)
            ev_kind.append(kind)
            ev_row.append(rows)
            ev_reply.append(reply)
            ev_tok.append(np.full(len(rows), attempt, dtype=np.int64))
            dl = kind == K_DELIVERED
            if dl.any():
                self._engagement(
                    rng,
                    rows[dl],
                    ta[dl],
                    dom,
                    camp,
                    marketing,
                    ev_t,
                    ev_kind,
                    ev_row,
                    ev_reply,
                    ev_tok,
                )
            df = kind == K_DEFERRED
            rows, prev_reply, ta_prev = rows[df], reply[df], ta[df]
            if attempt == MAX_ATTEMPTS - 1:
                if len(rows):
                    ev_t.append(ta_prev + BACKOFF_MIN[-1] * MINUTE)
                    ev_kind.append(np.full(len(rows), K_BOUNCED, dtype=np.int64))
                    ev_row.append(rows)
                    ev_reply.append(np.full(len(rows), R["expired"], dtype=np.int64))
                    ev_tok.append(np.full(len(rows), attempt + 1, dtype=np.int64))
                break
            grey = self.outcomes.is_grey_reply[prev_reply]
            back = np.where(
                grey,
                rng.uniform(5.0, 12.0, len(rows)),
                BACKOFF_MIN[attempt] * rng.uniform(0.8, 1.2, len(rows)),
            )
            ta = ta_prev + back * MINUTE
        t_all = np.concatenate(ev_t)
        row_all = np.concatenate(ev_row)
        table: dict[str, Any] = {
            "t": t_all,
            "kind": np.concatenate(ev_kind),
            "reply": np.concatenate(ev_reply),
            "tok": np.concatenate(ev_tok),
        }
        for key in ("tenant", "campaign", "sender", "ip", "dom", "rcpt", "msg"):
            table[key] = msgtab[key][row_all]
        return table, msg_base + n

    def _attempt_replies(
        self,
        rng: np.random.Generator,
        rows: I64,
        ta: F64,
        attempt: int,
        dom_all: I64,
        ip_all: I64,
        sender_all: I64,
        camp_all: I64,
        valid_all: BOOL,
    ) -> I64:
        dom = dom_all[rows]
        valid = valid_all[rows]
        m = len(rows)
        u = rng.random(m)
        cum = self.outcomes.noise_cum[dom]
        slot = (u[:, None] >= cum).sum(axis=1)
        k_slots = cum.shape[1]
        reply = np.where(
            slot < k_slots, self.outcomes.noise_rep[dom, np.minimum(slot, k_slots - 1)], -1
        )
        if attempt == 0:
            g = self.fleet.dom_greylist[dom] & (rng.random(m) < GREYLIST_P)
            reply = np.where(g, self.outcomes.dom_grey_reply[dom], reply)
        reply = np.where(valid, reply, self.outcomes.dom_uu_reply[dom])
        reply = self.effects.attempt_replies(
            rng, reply, rows, ta, dom, valid, ip_all, sender_all, camp_all
        )
        return np.asarray(reply, dtype=np.int64)

    def _engagement(
        self,
        rng: np.random.Generator,
        rows: I64,
        td: F64,
        dom_all: I64,
        camp_all: I64,
        mark_all: BOOL,
        ev_t: list[F64],
        ev_kind: list[I64],
        ev_row: list[I64],
        ev_reply: list[I64],
        ev_tok: list[I64],
    ) -> None:
        dom = dom_all[rows]
        mark = mark_all[rows]
        m = len(rows)

        def add(mask: BOOL, times: F64, kind: int) -> None:
            if mask.any():
                ev_t.append(times[mask])
                ev_kind.append(np.full(int(mask.sum()), kind, dtype=np.int64))
                ev_row.append(rows[mask])
                ev_reply.append(np.full(int(mask.sum()), -1, dtype=np.int64))
                ev_tok.append(np.zeros(int(mask.sum()), dtype=np.int64))

        # Complaints (FBL providers only; a scenario may set other chance rates).
        base = self.effects.complaint_base
        if base is None:
            base = self.outcomes.dom_complaint
        pc = base[dom, mark.astype(np.int64)]
        pc = self.effects.complaint_prob(pc, rows, td, dom, camp_all)
        comp = rng.random(m) < pc
        raw = rng.lognormal(math.log(FBL_DELAY_MEDIAN_S), FBL_DELAY_SIGMA, m)
        delay = self.effects.complaint_delays(raw, rows, td, dom, camp_all)
        add(comp, td + delay, K_COMPLAINED)
        # Opens (Apple Mail Privacy Protection pre-fetches most messages within minutes).
        apple = self.outcomes.dom_apple[dom]
        po = np.where(apple, 0.65, np.where(mark, 0.2, 0.35))
        op = rng.random(m) < po
        med = np.where(apple, 3 * MINUTE, 35 * MINUTE)
        t_open = td + np.clip(med * rng.lognormal(0.0, 1.2, m), 5.0, 10 * HOUR)
        add(op, t_open, K_OPENED)
        cl = op & (rng.random(m) < np.where(mark, 0.12, 0.08))
        add(cl, t_open + np.clip(rng.lognormal(math.log(40.0), 1.0, m), 2.0, HOUR), K_CLICKED)
        un = mark & (rng.random(m) < 0.0012)
        add(un, td + np.clip(rng.lognormal(math.log(HOUR), 1.0, m), 60.0, 10 * HOUR), K_UNSUB)
