"""Memory per active scope: of the rolling state in-process, and of the running worker.

    .venv/bin/python bench/memory.py                 # the Monitor alone, tracemalloc
    .venv/bin/python bench/memory.py --live          # a real `repmon worker`, RSS

**In-process** (default): adds synthetic Deltas for N distinct scopes (realistic names:
``domain:<word>-<word>-<n>.com`` ...) over several fine buckets, runs the detectors, and
reports the traced bytes per scope: numpy rows, the scope -> row dict, the names, parents and
evidence caches. Because the arrays grow by doubling, both the bytes per *allocated* row and per
*active* scope at the measured N (chosen at a power of two so capacity == N) are printed.
Budget: 2 KiB per active scope.

**Live** (``--live``, needs the broker: ``deploy/kafka/local-kafka start``): starts a real
worker subprocess on private topics and a private port (as the integration tests do) with
``REPMON_MAX_SCOPES``, publishes one valid ``delivered`` event (docs/events.md) for each of N
distinct recipient domains, in steps (``--domains 100000 200000`` publishes 100,000 new domains,
then 100,000 more), waits until the worker has counted them (event-driven: ``/metrics`` polled
until ``repmon_events_total`` and the rollup watermark say every event is in the rolling state)
and reports per step: the worker's RSS (``/proc/<pid>/status`` VmRSS) before and after, active
scopes, scopes evicted for room, the RSS growth per distinct domain and per active scope, and
the tick time (``repmon_tick_duration_seconds``: mean and p99 from the histogram, and the
longest tick, from the histogram's running sum sampled every 0.2 s). One run's figures; nothing
is asserted (tests/test_integration_flood.py asserts the budget of docs/performance.md).
``--domain-pool K`` sends the same volume over K domains: the memory of the volume alone.

Each flood event names its own ``domain:`` scope and at least seven shared ones (provider, mx,
ip, pool, sender, tenant, campaign); so N domains are at least N + 7 scopes.
"""

from __future__ import annotations

import argparse
import itertools
import re
import sys
import tempfile
import time
import tracemalloc
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from models.detect.monitor import Monitor, MonitorConfig  # noqa: E402
from models.schema import COL, N_COLUMNS, SCOPE_KINDS  # noqa: E402
from models.state.deltas import Deltas  # noqa: E402
from models.state.rolling import RollingConfig  # noqa: E402

BUDGET = 2048
T0 = 1_795_420_800
#: shared scopes of every flood event (provider:other, mx:other, ip, pool, sender, tenant,
#: campaign): N flood domains are N + FLOOD_SHARED_SCOPES scopes
FLOOD_SHARED_SCOPES = 7
MIB = 1 << 20


# ----------------------------------------------------------------------------- in-process
def scope_names(n: int) -> list[str]:
    kinds = SCOPE_KINDS
    return [f"{kinds[i % len(kinds)]}:scope-{i:07d}-example-{i % 977}.com" for i in range(n)]


def deltas_for(names: list[str], start: int, rng: np.random.Generator) -> Deltas:
    n = len(names)
    counts = np.zeros((n, N_COLUMNS), dtype=np.int64)
    counts[:, COL["delivered"]] = rng.integers(1, 50, n)
    counts[:, COL["deferred"]] = rng.integers(0, 3, n)
    counts[:, COL["class_transient"]] = counts[:, COL["deferred"]]
    return Deltas(
        scopes=names,
        scope_idx=np.arange(n, dtype=np.int32),
        bucket_start=np.full(n, start, dtype=np.int64),
        counts=counts,
        watermark=float(start + 59),
    )


def measure(n: int) -> tuple[float, int, int]:
    rng = np.random.default_rng(1)
    names = scope_names(n)
    batches = [deltas_for(names, T0 + k * 300, rng) for k in range(4)]
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    mon = Monitor(MonitorConfig(rolling=RollingConfig(initial_capacity=n)))
    for d in batches:
        mon.add(d)
        mon.advance(d.watermark)
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    return used / n, mon.store.nbytes_per_scope(), mon.store.capacity


# ----------------------------------------------------------------------------- live worker
def flood_domain(tag: str, i: int) -> str:
    """The i-th flood domain of a run: distinct, valid, about as long as real B2B domains."""
    return f"d{i:07d}-{tag}.flood-example.com"


def flood_events(
    tag: str, first: int, n: int, t_start: float, span_s: float, pool: int = 0
) -> list[bytes]:
    """``n`` valid delivered events, one per distinct recipient domain (docs/events.md), their
    times spread evenly over ``[t_start, t_start + span_s)``. ``pool`` > 0: the events cycle
    over that many domains instead (the same volume without new scopes)."""
    import orjson

    step = span_s / max(1, n)
    return [
        orjson.dumps(
            {
                "event": "delivered",
                "timestamp": round(t_start + k * step, 3),
                "message_id": f"flood-{tag}-{first + k}",
                "recipient": f"user{(first + k) % 97}@"
                + flood_domain(tag, (first + k) % pool if pool else first + k),
                "sender_domain": "news.example.com",
                "sending_ip": "192.0.2.10",
                "pool": "shared-1",
                "tenant": "acme",
                "campaign": "acme-flood",
            }
        )
        for k in range(n)
    ]


def produce(bootstrap: str, topic: str, partitions: int, values: list[bytes]) -> None:
    """Publish ``values`` (in order) round robin over the partitions, batched; the newest event
    of every partition is then the last ``partitions`` values."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=1 << 20, acks=1)
    try:
        for i, v in enumerate(values):
            producer.send(topic, value=v, partition=i % partitions)
        producer.flush(timeout=120)
    finally:
        producer.close(timeout=30)


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? ([^ ]+)$", re.M)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (labels as written; no labels: 'name')."""
    return {m.group(1) + (m.group(2) or ""): float(m.group(3)) for m in _SAMPLE.finditer(text)}


def metric_sum(metrics: dict[str, float], name: str) -> float:
    """Sum of a metric over all its label sets."""
    return sum(v for k, v in metrics.items() if k == name or k.startswith(name + "{"))


@dataclass(frozen=True, slots=True)
class TickHistogram:
    """``repmon_tick_duration_seconds``: cumulative bucket counts, count and sum."""

    buckets: tuple[tuple[float, float], ...]  # (upper bound, cumulative count), ascending
    count: float
    total: float

    @classmethod
    def of(cls, metrics: dict[str, float], name: str = "repmon_tick_duration_seconds") -> Any:
        b = []
        for k, v in metrics.items():
            m = re.fullmatch(rf'{name}_bucket\{{le="([^"]+)"\}}', k)
            if m:
                b.append((float(m.group(1)), v))
        b.sort()
        return cls(tuple(b), metrics.get(f"{name}_count", 0.0), metrics.get(f"{name}_sum", 0.0))

    def minus(self, before: TickHistogram) -> TickHistogram:
        """The ticks observed since ``before``."""
        old = dict(before.buckets)
        return TickHistogram(
            tuple((le, c - old.get(le, 0.0)) for le, c in self.buckets),
            self.count - before.count,
            self.total - before.total,
        )

    def quantile_bound(self, q: float) -> float:
        """The upper bound of the bucket holding quantile ``q`` (inf: past the last bucket)."""
        if self.count <= 0:
            return 0.0
        for le, c in self.buckets:
            if c >= q * self.count:
                return le
        return float("inf")

    def max_bound(self) -> float:
        """Upper bound of the slowest tick: the smallest bucket holding every tick."""
        return self.quantile_bound(1.0)

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else 0.0


@dataclass(frozen=True, slots=True)
class LiveSample:
    rss: int
    events: float
    active_scopes: float
    evicted_for_room: float
    watermark: float
    ticks: TickHistogram


class LiveWorker:
    """A `repmon worker` subprocess (tests/conftest.py WorkerProc) and what it reports."""

    def __init__(
        self, bootstrap: str, tmp: Path, max_scopes: int, partitions: int = 3, tick_s: float = 0.5
    ) -> None:
        from tests.conftest import WorkerProc

        self.bootstrap = bootstrap
        self.partitions = partitions
        self.proc = WorkerProc(bootstrap, tmp, partitions=partitions)
        self.proc.env["REPMON_MAX_SCOPES"] = str(max_scopes)
        self.proc.env["REPMON_TICK_S"] = str(tick_s)
        self.proc.env["REPMON_LOG_LEVEL"] = "warning"
        self.max_scopes = max_scopes
        self.tag = uuid.uuid4().hex[:6]
        self.sent = 0  # flood events published so far
        #: (ticks, seconds) of the tick histogram at every sample, in order
        self.tick_series: list[tuple[float, float]] = []

    def start(self) -> None:
        self.proc.start()

    def stop(self) -> None:
        self.proc.stop()

    @property
    def pid(self) -> int:
        assert self.proc.proc is not None
        return self.proc.proc.pid

    def sample(self) -> LiveSample:
        m = parse_metrics(self.proc.get("/metrics").decode())
        ticks = TickHistogram.of(m)
        self.tick_series.append((ticks.count, ticks.total))
        return LiveSample(
            rss=rss_bytes(self.pid),
            events=metric_sum(m, "repmon_events_total"),
            active_scopes=m.get("repmon_active_scopes", 0.0),
            evicted_for_room=m.get("repmon_scopes_evicted_for_room", 0.0),
            watermark=m.get("repmon_watermark_timestamp_seconds", 0.0),
            ticks=ticks,
        )

    def longest_tick(self, since: int = 0) -> float:
        """The longest tick completed after sample ``since``, from the histogram's running sum
        between consecutive samples (every 0.2 s, ticks are REPMON_TICK_S apart): exact when
        one tick completed between two samples, else the sum of those ticks (an upper bound)."""
        out = 0.0
        series = self.tick_series[since:]
        for (c0, s0), (c1, s1) in itertools.pairwise(series):
            if c1 > c0:
                out = max(out, s1 - s0)
        return out

    def wait_for(
        self, pred: Callable[[LiveSample], bool], timeout_s: float, what: str
    ) -> LiveSample:
        """Poll /metrics until ``pred`` holds (the worker must stay alive) or fail."""
        deadline = time.monotonic() + timeout_s
        last: LiveSample | None = None
        while time.monotonic() < deadline:
            proc = self.proc.proc
            if proc is None or proc.poll() is not None:
                raise AssertionError(f"worker died waiting for {what}:\n{self.proc.log_tail()}")
            try:
                last = self.sample()
            except OSError:  # a busy worker answers late: not yet
                continue
            if pred(last):
                return last
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout_s} s waiting for {what}; last {last}\n{self.proc.log_tail()}"
        )

    def flood(
        self, n: int, timeout_s: float = 180.0, pool: int = 0
    ) -> tuple[LiveSample, float, float]:
        """Publish ``n`` new distinct domains, one event each, and wait until the worker has
        counted every one of them and the rolling state has added them (its watermark reached
        the newest event of every partition). Returns the sample then, the publish time and the
        longest tick meanwhile (:meth:`longest_tick`)."""
        since = len(self.tick_series)
        base = self.sample().events
        now = time.time()
        # recent event times, strictly increasing, within the lateness and never in the future
        values = flood_events(self.tag, self.sent, n, now - 120.0, 110.0, pool)
        t0 = time.perf_counter()
        produce(self.bootstrap, self.proc.topics["events"], self.partitions, values)
        publish_s = time.perf_counter() - t0
        import orjson

        # the rollup watermark is the minimum over the partitions of their newest event
        final_wm = min(float(orjson.loads(v)["timestamp"]) for v in values[-self.partitions :])
        self.sent += n
        want = base + n
        s = self.wait_for(
            lambda s: s.events >= want and s.watermark >= final_wm,
            timeout_s,
            f"{n:,} flood events counted and added (events {want:,.0f}, watermark {final_wm})",
        )
        return s, publish_s, self.longest_tick(since)


@dataclass(frozen=True, slots=True)
class StepReport:
    domains: int  # flood domains published in all steps so far
    before: LiveSample
    after: LiveSample
    publish_s: float
    longest_tick: float

    @property
    def growth(self) -> int:
        return self.after.rss - self.before.rss

    def line(self, first: LiveSample) -> str:
        ticks = self.after.ticks.minus(self.before.ticks)
        total = self.after.rss - first.rss
        active = max(1.0, self.after.active_scopes)
        return (
            f"{self.domains:>9,} domains: RSS {first.rss / MIB:,.0f} -> {self.after.rss / MIB:,.0f}"
            f" MiB (+{total / MIB:,.0f}); {total / self.domains:,.0f} B per domain published, "
            f"{total / active:,.0f} B per active scope; active {self.after.active_scopes:,.0f}, "
            f"evicted for room {self.after.evicted_for_room:,.0f}; ticks {ticks.count:,.0f}: "
            f"mean {ticks.mean * 1000:,.0f} ms, p99 <= {ticks.quantile_bound(0.99):g} s, "
            f"longest {self.longest_tick:.2f} s; published in {self.publish_s:.1f} s"
        )


def live(bootstrap: str, steps: list[int], max_scopes: int, partitions: int, pool: int = 0) -> None:
    from streams.worker.topics import wait_for_broker

    wait_for_broker(bootstrap, timeout_s=30.0)
    with tempfile.TemporaryDirectory(prefix="repmon-memory-") as tmp:
        w = LiveWorker(bootstrap, Path(tmp), max_scopes, partitions)
        try:
            w.start()
            # warm up (imports, first allocations, the consumer's buffers) with a small flood
            w.flood(2_000)
            first = w.sample()
            print(
                f"worker pid {w.pid}, REPMON_MAX_SCOPES={max_scopes:,}, {partitions} input "
                f"partitions; after a 2,000-domain warm-up: RSS {first.rss / MIB:,.0f} MiB, "
                f"{first.active_scopes:,.0f} active scopes"
            )
            before, done = first, 0
            for total in steps:
                after, pub, longest = w.flood(total - done, pool=pool)
                done = total
                print(StepReport(done, before, after, pub, longest).line(first), flush=True)
                before = after
            cap_rows = min(max_scopes, int(before.active_scopes))
            print(
                f"RSS growth per active scope at the end: "
                f"{(before.rss - first.rss) / max(1, cap_rows):,.0f} B "
                f"(rolling store alone: ~1,900 B, bench/memory.py without --live)"
            )
        finally:
            w.stop()


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--scopes", type=int, nargs="*", default=[16_384, 131_072])
    ap.add_argument("--live", action="store_true", help="measure a running worker (RSS)")
    ap.add_argument(
        "--domains",
        type=int,
        nargs="*",
        default=[100_000, 200_000],
        help="live: cumulative distinct domains after each step",
    )
    ap.add_argument("--max-scopes", type=int, default=500_000, help="live: REPMON_MAX_SCOPES")
    ap.add_argument("--partitions", type=int, default=3, help="live: input partitions")
    ap.add_argument("--bootstrap", default="127.0.0.1:9092", help="live: Kafka bootstrap")
    ap.add_argument(
        "--domain-pool",
        type=int,
        default=0,
        help="live: the events cycle over this many domains (the volume without new scopes)",
    )
    args = ap.parse_args()
    if args.live:
        live(
            args.bootstrap, sorted(args.domains), args.max_scopes, args.partitions, args.domain_pool
        )
        return
    for n in args.scopes:
        per, arrays, cap = measure(n)
        print(
            f"{n:>8,} active scopes (capacity {cap:,}): {per:,.0f} B/scope traced "
            f"(numpy rows {arrays} B) -> {per / BUDGET:.2f} of the 2 KiB budget"
        )


if __name__ == "__main__":
    main()
