"""Write a simulated scenario the way a log shipper publishes it (``bench/evaluate.py --order log``).

The simulator emits events in event-time order. Real streams are not: they come in the order
lines reach the log pipeline. ``to_log_order`` turns a sorted event list into such a stream,
deterministically from a seed, and says what it did:

- **FBL complaints** carry the *original send time* of the message (feedback-loop reports quote the
  original message; Yahoo, AOL, Comcast and Microsoft JMRP processors commonly stamp that), but
  are published when the report arrived: hours "late" by their own timestamp.
- **One slow node**: every line of one sending IP reaches the shipper 2 to 8 minutes late.
- **Shipper batches**: lines are flushed in batches of 5 s of arrival time and shuffled inside a
  batch (several files tailed in parallel).
- **Retries and asynchronous DSNs** stay where a log puts them: at the time they happened (the
  simulator stamps a DSN bounce with its arrival, after the message's 250).
- **At-least-once shipping**: about 0.3 % of the batches are published twice.
- **Messy but valid field shapes** (docs/events.md): a third of the events carry their timestamp
  as an RFC 3339 string (upper- or lower-case ``T``/``Z``, or a ``+01:00`` offset), a third of the
  replies carry ``smtp_code`` as a digit string, and absent optional fields appear as empty
  strings (``"enhanced_code": ""``, ``"pool": ""``) on the events of one node.

The arrival time of a line is its timestamp plus its delay; the stream is ordered by arrival time.
Disorder, except for complaints, is at most 8 minutes plus a batch: inside the 15 minute lateness.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

BATCH_S = 5.0
SLOW_MIN_S, SLOW_MAX_S = 120.0, 480.0


@dataclass
class LogOrderStats:
    events: int = 0
    complaints_restamped: int = 0
    complaint_max_delay_s: float = 0.0
    slow_node_lines: int = 0
    out_of_order: int = 0  #: lines older than the newest line before them
    max_disorder_s: float = 0.0  #: largest (newest before - own timestamp), complaints excluded
    duplicated: int = 0  #: lines published a second time
    reshaped: int = 0  #: events written with another valid field shape


def to_log_order(
    events: list[dict[str, Any]], seed: int, slow_ip: str | None = None
) -> tuple[list[dict[str, Any]], LogOrderStats]:
    """``events`` in event-time order -> (the same events as a log shipper publishes them, stats).

    Complaints are copied with the timestamp of their message's delivery; nothing else changes in
    an event. ``slow_ip`` defaults to the busiest sending IP."""
    rng = np.random.default_rng(seed)
    stats = LogOrderStats(events=len(events))
    if slow_ip is None:
        ips: dict[str, int] = {}
        for e in events:
            ip = e.get("sending_ip")
            if ip:
                ips[ip] = ips.get(ip, 0) + 1
        slow_ip = max(ips, key=lambda k: ips[k]) if ips else None
    delivered_at: dict[str, float] = {}
    out: list[dict[str, Any]] = []
    arrival = np.empty(len(events), dtype=np.float64)
    is_complaint = np.zeros(len(events), dtype=np.bool_)
    for i, e in enumerate(events):
        ts = float(e["timestamp"])
        kind = e["event"]
        mid = e.get("message_id")
        if kind == "delivered" and mid:
            delivered_at[mid] = ts
        delay = float(rng.uniform(0.0, 2.0))
        if e.get("sending_ip") == slow_ip and kind != "complained":
            delay += float(rng.uniform(SLOW_MIN_S, SLOW_MAX_S))
            stats.slow_node_lines += 1
        if kind == "complained" and mid in delivered_at:
            e = dict(e)
            e["timestamp"] = round(delivered_at[mid], 3)
            stats.complaints_restamped += 1
            stats.complaint_max_delay_s = max(stats.complaint_max_delay_s, ts - e["timestamp"])
            is_complaint[i] = True
        out.append(e)
        arrival[i] = ts + delay
    batch = np.floor(arrival / BATCH_S)
    shuffle = rng.random(len(events))
    order = np.lexsort((shuffle, batch))
    # at-least-once: a few batches go out twice (right after themselves)
    again = set(np.flatnonzero(rng.random(int(batch.max() - batch.min()) + 1) < 0.003).tolist())
    b0 = int(batch.min())
    logged = []
    run: list[dict[str, Any]] = []
    prev = None
    for i in order.tolist():
        b = int(batch[i]) - b0
        if prev is not None and b != prev:
            if prev in again:
                logged.extend(run)
                stats.duplicated += len(run)
            run = []
        e = reshape(out[i], rng, slow_ip)
        stats.reshaped += e is not out[i]
        logged.append(e)
        run.append(e)
        prev = b
    newest = -np.inf
    for i in order.tolist():
        ts = float(out[i]["timestamp"])
        if ts < newest:
            stats.out_of_order += 1
            if not is_complaint[i]:
                stats.max_disorder_s = max(stats.max_disorder_s, newest - ts)
        newest = max(newest, ts)
    return logged, stats


def _rfc3339(ts: float, rng: np.random.Generator) -> str:
    t = time.gmtime(ts)
    frac = f"{ts % 1:.3f}"[1:]
    pick = int(rng.integers(3))
    if pick == 0:
        return time.strftime("%Y-%m-%dT%H:%M:%S", t) + frac + "Z"
    if pick == 1:
        return time.strftime("%Y-%m-%dt%H:%M:%S", t) + frac + "z"
    local = time.gmtime(ts + 3600)
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + frac + "+01:00"


def reshape(e: dict[str, Any], rng: np.random.Generator, node: str | None) -> dict[str, Any]:
    """The same event in another valid field shape, about one time in three (a copy then)."""
    u = rng.random(3)
    if u[0] >= 1 / 3 and u[1] >= 1 / 3 and e.get("sending_ip") != node:
        return e
    e = dict(e)
    if u[0] < 1 / 3:
        e["timestamp"] = _rfc3339(float(e["timestamp"]), rng)
    if u[1] < 1 / 3 and isinstance(e.get("smtp_code"), int):
        e["smtp_code"] = str(e["smtp_code"])
    if e.get("sending_ip") == node:  # this node's adapter writes absent fields as ""
        for k in ("enhanced_code", "mx_host", "campaign"):
            e.setdefault(k, "")
    return e
