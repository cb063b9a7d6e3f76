"""Detection owners: one Monitor per owned rollup partition, its snapshots, and a combined view.

A worker owns the rollup partitions Kafka assigns to its rollup consumer. Each owned partition
``p`` has an :class:`Owner`: the Monitor of the scopes ``p`` owns, the rollup offset its state
covers, the (source, seq) pairs it has counted, and a transactional producer whose id,
``<app_id>.owner.<p>``, fences a previous owner of ``p`` that still runs (a "zombie").
:class:`MonitorView` answers ``/status`` and ``/metrics`` over all owned Monitors.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer

from models.act.acting import Acting
from models.act.throttle import ThrottleController
from models.act.throttle_record import ThrottleRecord
from models.detect.incidents import IncidentChange
from models.detect.monitor import Monitor, MonitorConfig

#: seqs remembered per source for duplicate detection (redeliveries are recent)
SEEN_PER_SOURCE = 8192
#: seqs per source kept in a snapshot
SEEN_IN_SNAPSHOT = 1024


@dataclass
class Owner:
    """The detection state of one rollup partition."""

    partition: int
    monitor: Monitor
    producer: AIOKafkaProducer | None
    #: the throttle decisions that follow this partition's incidents (models/act/)
    throttle: ThrottleController = field(default_factory=ThrottleController)
    #: next rollup offset to add: the snapshot taken now covers everything before it
    next_offset: int = 0
    seen: dict[str, set[int]] = field(default_factory=dict)
    #: snapshot generation and its piece count (the next snapshot tombstones these pieces)
    generation: int = 0
    pieces: int = 0
    last_snapshot: float = field(default_factory=time.monotonic)
    #: rollup messages added since the last snapshot
    added_since_snapshot: int = 0
    #: changes not yet written (their transaction failed): written with the next snapshot
    pending: list[IncidentChange] = field(default_factory=list)
    #: throttle records not yet written: written with the changes, in the same transaction
    pending_throttle: list[ThrottleRecord] = field(default_factory=list)
    #: scopes under a manual override at the last tick (their records are not published)
    overridden: set[str] = field(default_factory=set)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    restored_from: int | None = None  #: the generation restored at assignment (None: cold)

    def remember(self, src: str, seq: int) -> bool:
        """Record a delta's (source, seq); False when it was seen already (a redelivery)."""
        seen = self.seen.setdefault(src, set())
        if seq in seen:
            return False
        seen.add(seq)
        if len(seen) > SEEN_PER_SOURCE:  # keep the newest half
            cut = sorted(seen)[len(seen) // 2]
            self.seen[src] = {x for x in seen if x >= cut}
        return True

    def advance_through(self, watermark: float, step_s: float) -> None:
        """Detector runs up to ``watermark``, the throttle stepped after each; their output
        waits in ``pending`` / ``pending_throttle`` for the next transaction."""
        changes, records = Acting(self.monitor, self.throttle).advance_through(watermark, step_s)
        self.pending.extend(changes)
        self.pending_throttle.extend(records)

    def follow_overrides(self, overridden: set[str]) -> None:
        """A manual override that ended hands its scope back to the controller: its own
        decision (or normal) is published again."""
        for scope in sorted(self.overridden - overridden):
            rec = self.throttle.decision(scope)
            if rec is not None:
                self.pending_throttle.append(rec)
        self.overridden = set(overridden)

    def seen_state(self) -> dict[str, list[int]]:
        return {s: sorted(v)[-SEEN_IN_SNAPSHOT:] for s, v in self.seen.items()}

    def status(self) -> dict[str, Any]:
        return {
            "next_offset": self.next_offset,
            "snapshot_generation": self.generation,
            "snapshot_age_s": round(time.monotonic() - self.last_snapshot, 1),
            "restored_from_generation": self.restored_from,
            "pending_changes": len(self.pending),
            "pending_throttle_records": len(self.pending_throttle),
            "throttled_scopes": len(self.throttle.live),
        }


def _add(a: Any, b: Any) -> Any:
    if isinstance(a, dict):
        return {k: _add(a.get(k, 0), b.get(k, 0)) for k in a.keys() | b.keys()}
    return a + b


class MonitorView:
    """``status()`` and ``metrics()`` over the Monitors of every owned rollup partition."""

    def __init__(self, owners: dict[int, Owner], config: MonitorConfig) -> None:
        self._owners = owners
        self._empty = Monitor(config)

    def _monitors(self) -> list[Monitor]:
        return [o.monitor for _, o in sorted(self._owners.items())] or [self._empty]

    def metrics(self) -> dict[str, Any]:
        mons = self._monitors()
        out: dict[str, Any] = mons[0].metrics()
        for mon in mons[1:]:
            mm = mon.metrics()
            for k, v in mm.items():
                if k == "watermark":
                    out[k] = min(out[k], v)
                elif k == "bytes_per_scope_arrays":
                    out[k] = max(out[k], v)
                else:
                    out[k] = _add(out[k], v)
        return out

    def status(self, top: int = 20) -> dict[str, Any]:
        mons = self._monitors()
        if len(mons) == 1:
            return mons[0].status(top)
        parts = [m.status(top) for m in mons]
        scopes: dict[str, list[dict[str, Any]]] = {}
        for p in parts:
            for kind, rows in p["scopes"].items():
                scopes.setdefault(kind, []).extend(rows)
        for kind, rows in scopes.items():
            rows.sort(key=lambda r: -int(r.get("h1", {}).get("counts", {}).get("attempts", 0)))
            scopes[kind] = rows[:top]
        return {
            "watermark": min(p["watermark"] for p in parts),
            "active_scopes": sum(p["active_scopes"] for p in parts),
            "scopes": scopes,
            "open_incidents": sorted(
                (i for p in parts for i in p["open_incidents"]),
                key=lambda i: (i["opened_at"], i["id"]),
            ),
        }


class EveryThirtySeconds(logging.Filter):
    """At most one WARNING-or-worse line per logger and message template per ``period_s`` from
    the Kafka client libraries: a broker outage makes them repeat the same error thousands of
    times. The next line that passes says how many were held back."""

    NOISY = ("aiokafka", "kafka", "faust", "mode")

    def __init__(self, period_s: float = 30.0) -> None:
        super().__init__()
        self.period_s = period_s
        self._last: dict[tuple[str, str], float] = {}
        self._held: dict[tuple[str, str], int] = {}
        self.suppressed = 0

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or not record.name.startswith(self.NOISY):
            return True
        key = (record.name, str(record.msg)[:200])
        now = time.monotonic()
        if now - self._last.get(key, -math.inf) < self.period_s:
            self._held[key] = self._held.get(key, 0) + 1
            self.suppressed += 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        if held:
            record.msg = f"{record.msg} ({held} similar lines held back in {self.period_s:.0f} s)"
        if len(self._last) > 10_000:
            self._last.clear()
        return True


def install_log_filter(flt: EveryThirtySeconds) -> None:
    """Put the filter on every handler of the root logger (where Faust's handlers are)."""
    for h in logging.getLogger().handlers:
        if flt not in h.filters:
            h.addFilter(flt)
