"""The per-recipient suppression store (streams/worker/suppression_store.py) at scale.

    .venv/bin/python bench/suppression_store.py                          # 200,000: seconds
    .venv/bin/python bench/suppression_store.py --recipients 1000000 10000000 --prefilter

For each size N, two fresh child processes, so that each one's resident memory is its own:

1. **load**: ``put_many`` of N recipients in batches of ``--write-batch`` (10,000) with the
   changelog offset, as the worker writes (one WriteBatch, WAL on; ``--load rebuild``: one
   ``rebuild()``, the restore from the changelog, without WAL): write throughput and the
   process's RSS; then ``compact()`` and the disk it takes: the SST files, and the whole
   directory (WAL, MANIFEST, RocksDB's LOG files too), per recipient. Target: <= 100 bytes.
2. **lookups** (a restarted worker): opens the store, writes ``--rounds``/2 batches of updates
   to existing recipients (steady-state write throughput; the memtable then holds recent
   changes, as in a running worker), then times ``get_many`` on ``--rounds`` batches of
   ``--batch`` (10,000) idents: ``all-miss`` (deliveries to healthy recipients: no entry) and
   ``5 %-hit``; every answer is checked. RSS after the open and its peak (``VmHWM``). Targets:
   >= 200,000 lookups/s; RSS flat from 1M to 10M recipients.

Rates are per wall-clock second of the median batch, of all batches, and per CPU second of the
calling thread (``time.thread_time``; RocksDB answers a multi-get on the caller's thread): the
last is what a busy machine does not change. ``--tuning '{"block_bytes": 16384}'`` sets
``StoreTuning`` fields, to compare settings.

With ``--prefilter``, the lookups child also builds a fixed-size in-memory Bloom filter over
every stored ident (16 MiB, 3 probes, the store's ``items()`` scanned after the open) and times
the same batches with it in front of RocksDB: whether an extra in-process structure pays.

Recipients are realistic: ident ``i`` is ``splitmix64(i ^ seed)`` (a bijection of uint64, as
random as the first 8 bytes of a SHA-256, so idents never collide and a miss is an index >= N:
neither the bench nor its children keep a list of N idents); the record is 64 bytes shaped as
the policy's (the full 32-byte key, whose first 8 bytes are the ident, then state, reason,
count, first/last seen, until, incident and scope ids). Resident memory is VmRSS/VmHWM of
/proc/self/status: the OS page cache that holds SST files is not in it (shared and reclaimable).

The directory is made under ``--dir`` (default: a temporary directory in /tmp) and removed at
the end (``--keep`` keeps it); ``df -h`` first: 10 million recipients take about 0.7 GB, twice
that during the final compaction.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from numpy.typing import NDArray  # noqa: E402

from streams.worker.suppression_store import RocksRecipientStore, StoreTuning  # noqa: E402

SEED = np.uint64(0x5EED_0F_5E_ED)
T_NOW = 1_795_420_800  # the time the records are "written" (seconds)
RECORD = np.dtype(
    [
        ("key", "u1", 32),
        ("state", "u1"),
        ("reason", "u1"),
        ("count", "<u2"),
        ("first_seen", "<u4"),
        ("last_seen", "<u4"),
        ("until", "<u4"),
        ("incident", "<u8"),
        ("scope", "<u4"),
        ("reserved", "u1", 4),
    ]
)
assert RECORD.itemsize == 64


def splitmix64(x: NDArray[np.uint64]) -> NDArray[np.uint64]:
    with np.errstate(over="ignore"):
        z = x + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def idents_of(i: NDArray[np.uint64]) -> NDArray[np.uint64]:
    return splitmix64(i ^ SEED)


def records_of(i: NDArray[np.uint64]) -> list[bytes]:
    """The 64-byte record of recipients ``i`` (deterministic: a lookup can check it)."""
    n = len(i)
    rec = np.zeros(n, dtype=RECORD)
    key = np.empty((n, 4), dtype="<u8")
    key[:, 0] = idents_of(i)
    for j in range(1, 4):
        key[:, j] = splitmix64(i * np.uint64(4) + np.uint64(j))
    rec["key"] = key.view("u1").reshape(n, 32)
    h = splitmix64(i ^ np.uint64(0xA5A5A5A5))
    rec["state"] = 1 + h % np.uint64(3)  # suspended, quarantined, suppressed
    rec["reason"] = (h >> np.uint64(8)) % np.uint64(8)
    rec["count"] = 1 + (h >> np.uint64(16)) % np.uint64(5)
    first = T_NOW - (h >> np.uint64(24)) % np.uint64(90 * 86400)
    rec["first_seen"] = first
    rec["last_seen"] = first + (h >> np.uint64(48)) % np.uint64(86400)
    rec["until"] = np.where(
        rec["state"] == 3, 0, T_NOW + (h >> np.uint64(40)) % np.uint64(7 * 86400)
    )
    with_incident = (h & np.uint64(0xFF)) < np.uint64(77)  # about 30 % carry an incident id
    rec["incident"] = np.where(with_incident, splitmix64(h) % np.uint64(1 << 20), 0)
    rec["scope"] = splitmix64(h + np.uint64(1)) % np.uint64(50_000)  # their domain's scope
    out: list[bytes] = rec.view("V64").tolist()
    return out


def rss() -> dict[str, int]:
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


# ----------------------------------------------------------------------------- children


def rate(
    n_per_batch: int, seconds: list[float], cpu: list[float] | None = None
) -> dict[str, float]:
    """Per second over all batches, of the median batch (robust to a busy neighbour), and per
    CPU second of the calling thread (``time.thread_time``: not slowed by other processes)."""
    out = {
        "overall": n_per_batch * len(seconds) / sum(seconds),
        "median": n_per_batch / float(np.median(seconds)),
    }
    if cpu:
        out["per_cpu_s"] = n_per_batch * len(cpu) / max(sum(cpu), 1e-9)
    return out


def child_load(path: str, n: int, batch: int, how: str, tuning: StoreTuning) -> dict[str, Any]:
    out: dict[str, Any] = {"rss_start": rss()["VmRSS"], "how": how}
    peak = 0
    with RocksRecipientStore(path, tuning) as store:
        if how == "put":  # the worker's steady-state write: a batch and its offset
            seconds = []
            for lo in range(0, n, batch):
                i = np.arange(lo, min(n, lo + batch), dtype=np.uint64)
                items = list(zip(idents_of(i).tolist(), records_of(i), strict=True))
                t = time.perf_counter()
                store.put_many(items, offsets={0: lo + len(i) - 1})
                seconds.append(time.perf_counter() - t)
                if len(seconds) % 50 == 0:
                    peak = max(peak, rss()["VmRSS"])
            out["writes_per_s"] = rate(batch, seconds)
        else:  # a restore from the changelog: records generated on the fly, timed as a whole

            def records() -> Iterator[tuple[int, bytes | None]]:
                nonlocal peak
                for lo in range(0, n, batch):
                    i = np.arange(lo, min(n, lo + batch), dtype=np.uint64)
                    yield from zip(idents_of(i).tolist(), records_of(i), strict=True)
                    peak = max(peak, rss()["VmRSS"])

            t = time.perf_counter()
            store.rebuild(records(), {0: n - 1}, batch=batch)
            out["writes_per_s"] = {"overall": n / (time.perf_counter() - t)}
        out["rss_after_load"] = rss()["VmRSS"]
        out["rss_peak_sampled_load"] = max(peak, out["rss_after_load"])
        out["rocks_memory_after_load"] = store.memory()
        t = time.perf_counter()
        store.flush()
        store.compact()
        out["compact_s"] = time.perf_counter() - t
        out["count_estimate"] = store.count_estimate()
        out["sst_bytes"] = store._rdb().property_int_value("rocksdb.live-sst-files-size")
    # closed: the directory as it stays on disk
    out["dir_bytes"] = sum(p.stat().st_size for p in Path(path).iterdir() if p.is_file())
    out["dir_files"] = sorted(
        (p.name, p.stat().st_size) for p in Path(path).iterdir() if p.is_file()
    )
    out["rss_hwm"] = rss()["VmHWM"]
    return out


def check(got: list[bytes | None], i: NDArray[np.uint64], hit: NDArray[np.bool_]) -> None:
    expect = records_of(i[hit])
    got_hits = [g for g, h in zip(got, hit.tolist(), strict=True) if h]
    if got_hits != expect or any(
        g is not None for g, h in zip(got, hit.tolist(), strict=True) if not h
    ):
        raise AssertionError("a lookup returned a wrong answer")


class Prefilter:
    """A fixed-size Bloom filter over idents (the alternative the bench measures)."""

    def __init__(self, bits_log2: int = 27, probes: int = 3) -> None:
        self.mask = np.uint64((1 << bits_log2) - 1)
        self.probes = probes
        self.bits = np.zeros(1 << (bits_log2 - 3), dtype=np.uint8)

    def _pos(self, idents: NDArray[np.uint64]) -> NDArray[np.uint64]:
        with np.errstate(over="ignore"):
            h2 = splitmix64(idents) | np.uint64(1)
            return (
                idents[:, None] + np.arange(self.probes, dtype=np.uint64) * h2[:, None]
            ) & self.mask

    def add(self, idents: NDArray[np.uint64]) -> None:
        p = self._pos(idents).ravel()
        np.bitwise_or.at(self.bits, p >> np.uint64(3), (1 << (p & np.uint64(7))).astype(np.uint8))

    def contains(self, idents: NDArray[np.uint64]) -> NDArray[np.bool_]:
        p = self._pos(idents)
        bit = (self.bits[p >> np.uint64(3)] >> (p & np.uint64(7)).astype(np.uint8)) & 1
        out: NDArray[np.bool_] = bit.all(axis=1)
        return out


def child_lookups(
    path: str, n: int, batch: int, rounds: int, prefilter: bool, tuning: StoreTuning
) -> dict[str, Any]:
    rng = np.random.default_rng(11)
    out: dict[str, Any] = {"rss_start": rss()["VmRSS"]}
    with RocksRecipientStore(path, tuning) as store:
        out["rss_after_open"] = rss()["VmRSS"]
        peak = out["rss_after_open"]

        # steady state first: updates of existing recipients with the offset, as the worker
        # writes them; the lookups then also search a memtable that holds recent changes
        seconds = []
        for r in range(max(1, rounds // 2)):
            i = rng.integers(0, n, size=batch, dtype=np.uint64)
            items = list(zip(idents_of(i).tolist(), records_of(i), strict=True))
            t = time.perf_counter()
            store.put_many(items, offsets={0: n + r})
            seconds.append(time.perf_counter() - t)
            peak = max(peak, rss()["VmRSS"])
        out["updates_per_s"] = rate(batch, seconds)

        def batches(hit_share: float) -> list[tuple[NDArray[np.uint64], NDArray[np.bool_]]]:
            res = []
            for _ in range(rounds):
                hit = rng.random(batch) < hit_share
                i = rng.integers(n, 1 << 62, size=batch, dtype=np.uint64)
                i[hit] = rng.integers(0, n, size=int(hit.sum()), dtype=np.uint64)
                res.append((i, hit))
            return res

        mixes = {"all-miss": batches(0.0), "5%-hit": batches(0.05)}
        for i, _hit in mixes["all-miss"][:3]:  # warm-up: index and filter blocks into the cache
            store.get_many(idents_of(i))
        for name, bs in mixes.items():
            seconds, cpu = [], []
            for i, hit in bs:
                ids = idents_of(i)
                c = time.thread_time()
                t = time.perf_counter()
                got = store.get_many(ids)
                seconds.append(time.perf_counter() - t)
                cpu.append(time.thread_time() - c)
                check(got, i, hit)
                peak = max(peak, rss()["VmRSS"])
            out[f"lookups_per_s[{name}]"] = rate(batch, seconds, cpu)
        out["rss_after_lookups"] = rss()["VmRSS"]
        out["rss_peak_sampled"] = peak
        out["rocks_memory"] = store.memory()
        out["rss_hwm"] = rss()["VmHWM"]
        if prefilter:
            t = time.perf_counter()
            pf = Prefilter()
            chunk: list[int] = []
            for ident, _v in store.items():
                chunk.append(ident)
                if len(chunk) == 100_000:
                    pf.add(np.array(chunk, dtype=np.uint64))
                    chunk = []
            if chunk:
                pf.add(np.array(chunk, dtype=np.uint64))
            out["prefilter_build_s"] = time.perf_counter() - t
            for name, bs in mixes.items():
                seconds, cpu = [], []
                passed = 0
                for i, hit in bs:
                    ids = idents_of(i)
                    c = time.thread_time()
                    t = time.perf_counter()
                    maybe = pf.contains(ids)
                    ans: list[bytes | None] = [None] * len(ids)
                    where = np.flatnonzero(maybe)
                    for k, v in zip(where.tolist(), store.get_many(ids[where]), strict=True):
                        ans[k] = v
                    seconds.append(time.perf_counter() - t)
                    cpu.append(time.thread_time() - c)
                    passed += len(where)
                    check(ans, i, hit)
                out[f"prefilter_lookups_per_s[{name}]"] = rate(batch, seconds, cpu)
                out[f"prefilter_pass_share[{name}]"] = passed / (rounds * batch)
            out["rss_hwm_with_prefilter"] = rss()["VmHWM"]
    return out


# ----------------------------------------------------------------------------- parent


def run_child(args: list[str]) -> dict[str, Any]:
    res = subprocess.run(
        [sys.executable, __file__, *args], capture_output=True, text=True, check=False
    )
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise SystemExit(f"child {args[:2]} failed")
    return json.loads(res.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def mib(b: float) -> str:
    return f"{b / (1 << 20):.0f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--recipients", type=int, nargs="+", default=[200_000])
    ap.add_argument("--batch", type=int, default=10_000, help="idents per get_many")
    ap.add_argument("--rounds", type=int, default=40, help="batches per lookup mix")
    ap.add_argument("--write-batch", type=int, default=10_000)
    ap.add_argument(
        "--load",
        choices=["put", "rebuild"],
        default="put",
        help="fill with put_many batches (WAL, offsets) or one rebuild() (no WAL)",
    )
    ap.add_argument(
        "--tuning", default="{}", help="StoreTuning fields as JSON, e.g. '{\"block_bytes\": 16384}'"
    )
    ap.add_argument("--prefilter", action="store_true")
    ap.add_argument("--dir", default=None, help="where to make the store (default: /tmp)")
    ap.add_argument("--keep", action="store_true", help="keep the store directory")
    ap.add_argument("--json", action="store_true", help="print the raw figures too")
    ap.add_argument("--child", choices=["load", "lookups"], help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args()
    tuning = StoreTuning(**json.loads(args.tuning))

    if args.child == "load":
        n = args.recipients[0]
        print(json.dumps(child_load(args.path, n, args.write_batch, args.load, tuning)))
        return
    if args.child == "lookups":
        n = args.recipients[0]
        print(
            json.dumps(child_lookups(args.path, n, args.batch, args.rounds, args.prefilter, tuning))
        )
        return

    print(f"tuning: {tuning}; load: {args.load}; os.getloadavg() at start: {os.getloadavg()}")
    results = []
    for n in args.recipients:
        base = Path(tempfile.mkdtemp(prefix="repmon-suppression-bench-", dir=args.dir))
        path = str(base / "store")
        try:
            common = ["--recipients", str(n), "--path", path, "--tuning", args.tuning]
            load = run_child(
                [
                    "--child",
                    "load",
                    *common,
                    "--write-batch",
                    str(args.write_batch),
                    "--load",
                    args.load,
                ]
            )
            look = run_child(
                ["--child", "lookups", *common, "--batch", str(args.batch)]
                + ["--rounds", str(args.rounds)]
                + (["--prefilter"] if args.prefilter else [])
            )
        finally:
            if not args.keep:
                shutil.rmtree(base, ignore_errors=True)
        results.append((n, load, look))
        if args.json:
            print(json.dumps({"recipients": n, "load": load, "lookups": look}, indent=1))

    def r(d: dict[str, float]) -> str:
        text = f"{d['overall']:,.0f}"
        if "median" in d:
            text = f"{d['median']:,.0f} ({text})"
        return text + (f" [{d['per_cpu_s']:,.0f}]" if "per_cpu_s" in d else "")

    print(
        f"\nloadavg at the end: {os.getloadavg()}; rates: median batch (all batches) "
        "[per CPU second of the calling thread]\n"
    )
    print(
        "| recipients | load writes/s | SST B/recipient | dir B/recipient "
        "| load RSS MiB (after / peak) | lookups RSS MiB (open / peak) "
        "| all-miss lookups/s | 5 %-hit lookups/s | updates/s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, load, look in results:
        print(
            f"| {n:,} | {r(load['writes_per_s'])} | {load['sst_bytes'] / n:.1f} "
            f"| {load['dir_bytes'] / n:.1f} "
            f"| {mib(load['rss_after_load'])} / {mib(load['rss_hwm'])} "
            f"| {mib(look['rss_after_open'])} / {mib(look['rss_hwm'])} "
            f"| {r(look['lookups_per_s[all-miss]'])} | {r(look['lookups_per_s[5%-hit]'])} "
            f"| {r(look['updates_per_s'])} |"
        )
    if args.prefilter:
        print(
            "\n| recipients | prefilter build s | pass share all-miss / 5 %-hit "
            "| all-miss lookups/s with / without | 5 %-hit lookups/s with / without "
            "| lookups RSS peak MiB with |"
        )
        print("|---:|---:|---:|---:|---:|---:|")
        for n, _load, look in results:
            print(
                f"| {n:,} | {look['prefilter_build_s']:.1f} "
                f"| {look['prefilter_pass_share[all-miss]']:.2%} / "
                f"{look['prefilter_pass_share[5%-hit]']:.2%} "
                f"| {r(look['prefilter_lookups_per_s[all-miss]'])} / "
                f"{r(look['lookups_per_s[all-miss]'])} "
                f"| {r(look['prefilter_lookups_per_s[5%-hit]'])} / "
                f"{r(look['lookups_per_s[5%-hit]'])} "
                f"| {mib(look['rss_hwm_with_prefilter'])} |"
            )


if __name__ == "__main__":
    main()
