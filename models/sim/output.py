"""Event output of the traffic simulator: event tables, event-time chunks, event dicts.

The message lifecycle produces event tables: dicts of numpy columns (:data:`EV_FIELDS`: time,
kind code, message, tenant, campaign, sender, IP, domain, recipient number, reply id, token).
:class:`EventOutput` cuts them into event-time ordered chunks and builds the canonical event dicts
(docs/events.md) only when a chunk is emitted.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import numpy as np

from models.sim.config import K_BOUNCED, K_COMPLAINED, K_DEFERRED, K_DELIVERED, KIND_NAMES
from models.sim.replies import OK_TEXTS, REPLIES
from models.sim.traffic import Calendar, Fleet, hash_int

EV_FIELDS: Final = (
    "t",
    "kind",
    "msg",
    "tenant",
    "campaign",
    "sender",
    "ip",
    "dom",
    "rcpt",
    "reply",
    "tok",
)


def concat_tables(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate event tables (an empty table when there are none or all are empty)."""
    tables = [t for t in tables if len(t["t"])]
    if not tables:
        return {k: np.zeros(0, dtype=np.float64 if k == "t" else np.int64) for k in EV_FIELDS}
    if len(tables) == 1:
        return tables[0]
    return {k: np.concatenate([t[k] for t in tables]) for k in EV_FIELDS}


def take_rows(table: dict[str, Any], idx: Any) -> dict[str, Any]:
    """The rows ``idx`` (index array or boolean mask) of an event table."""
    return {k: table[k][idx] for k in EV_FIELDS}


class EventOutput:
    """Builds event-time ordered chunks of event dicts from the lifecycle's event tables."""

    def __init__(self, start: float, end: float, fleet: Fleet, calendar: Calendar) -> None:
        self.start = start
        self.end = end
        self.fleet = fleet
        self.calendar = calendar

    def chunks(
        self, tables: Iterator[tuple[float, dict[str, Any]]], chunk_s: float = 60.0
    ) -> Iterator[list[dict[str, Any]]]:
        """Event-time ordered chunks of events covering [start, start + duration).

        Chunk i holds the events with timestamps in [start + i*chunk_s, start + (i+1)*chunk_s);
        events after the end of the run (late outcomes of the last messages) are dropped.
        ``tables`` yields (generated_until, event table) per generation step, in step order.
        """
        if chunk_s <= 0:
            raise ValueError("chunk_s must be positive")
        pending = concat_tables([])
        until = self.start
        c0 = self.start
        while c0 < self.end:
            c1 = min(c0 + chunk_s, self.end)
            new: list[dict[str, Any]] = [pending]
            while until < c1:
                try:
                    until, tab = next(tables)
                except StopIteration:
                    until = self.end
                    break
                new.append(tab)
            pending = concat_tables(new)
            due = pending["t"] < c1
            now = take_rows(pending, due)
            pending = take_rows(pending, ~due)
            order = np.lexsort((now["kind"], now["t"]))
            yield self.dicts(take_rows(now, order))
            c0 = c1

    def dicts(self, tab: dict[str, Any]) -> list[dict[str, Any]]:
        """The events of an event table as dicts (docs/events.md), in table order."""
        names = self.fleet.dom_names
        mxs = self.fleet.dom_mx
        opers = self.fleet.dom_operator
        ips = self.fleet.ip_names
        pools = self.fleet.pool_names
        ip_pool = self.fleet.ip_pool.tolist()
        senders = self.fleet.sender_names
        tenants = self.fleet.tenant_names
        camps = self.calendar.campaign_names
        replies = REPLIES
        ok = OK_TEXTS
        provs = self.fleet.dom_provider
        out: list[dict[str, Any]] = []
        append = out.append
        cols = [tab[k].tolist() for k in EV_FIELDS]
        for t, kind, msg, ten, camp, snd, ip, d, rc, rep, tok in zip(*cols, strict=True):
            dn = names[d]
            ev: dict[str, Any] = {
                "event": KIND_NAMES[kind],
                "timestamp": round(t, 3),
                "message_id": f"m-{msg:09d}",
                "recipient": f"u{rc:06d}@{dn}",
                "recipient_domain": dn,
                "sender_domain": senders[snd],
                "sending_ip": ips[ip],
                "pool": pools[ip_pool[ip]],
                "tenant": tenants[ten],
                "campaign": camps[camp],
            }
            if kind == K_DELIVERED:
                hosts = mxs[d]
                ev["mx_host"] = hosts[(msg + tok) % len(hosts)]
                ev["smtp_code"] = 250
                op = opers[d]
                ev["response"] = ok.get(op) or ok.get(provs[d]) or ok["other"]
            elif kind in (K_DEFERRED, K_BOUNCED):
                hosts = mxs[d]
                if hosts:
                    ev["mx_host"] = hosts[(msg + tok) % len(hosts)]
                r = replies[rep]
                ev["smtp_code"] = r.code
                if r.enh is not None:
                    ev["enhanced_code"] = r.enh
                if r.templated:
                    h = hash_int(msg * 31 + tok)
                    ev["response"] = r.text.format(
                        ip=ips[ip],
                        sender=senders[snd],
                        domain=dn,
                        tok=f"{h:012x}",
                        fe=f"{('DM6', 'BN8', 'SN1', 'CH2')[h % 4]}NAM12FT{h % 997:03d}",
                        n=h % 90 + 10,
                    )
                else:
                    ev["response"] = r.text
            elif kind == K_COMPLAINED:
                ev["feedback_type"] = "abuse"
            append(ev)
        return out
