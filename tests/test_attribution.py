"""Attribution: an incident opens on the narrowest scope whose surge explains the signal
(models/detect/attribution.py, docs/incidents.md "Attribution")."""

from __future__ import annotations

import numpy as np
import pytest

from models.detect.monitor import Monitor, disjoint
from models.schema import COL, N_COLUMNS
from models.state.deltas import Deltas

T0 = 1_795_420_800
IPS = ("192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4")
PROVIDERS = ("google", "yahoo")


def minute(
    t: int,
    rng: np.random.Generator,
    throttled: dict[tuple[str, str], float],
    pools: dict[str, str] | None = None,
    ips: tuple[str, ...] = IPS,
    members: bool = False,
) -> Deltas:
    """One minute of traffic: every IP (pool shared-1, or ``pools[ip]``) sends 60 attempts to
    each provider; a share ``throttled[(ip, provider)]`` of them is deferred with a rate-limit
    reply (0.2 % otherwise). ``members``: report each IP's pool as ingest does."""
    names: list[str] = []
    idx: list[int] = []
    rows: list[np.ndarray] = []

    def sid(name: str) -> int:
        if name not in names:
            names.append(name)
        return names.index(name)

    for ip in ips:
        for prov in PROVIDERS:
            n = 60
            k = int(rng.binomial(n, throttled.get((ip, prov), 0.002)))
            c = np.zeros(N_COLUMNS, dtype=np.int64)
            c[COL["delivered"]] = n - k
            c[COL["deferred"]] = k
            c[COL["class_throttle"]] = k
            pool = (pools or {}).get(ip, "shared-1")
            for scope in (
                f"provider:{prov}",
                f"ip:{ip}",
                f"ip:{ip}|provider:{prov}",
                f"pool:{pool}",
                f"pool:{pool}|provider:{prov}",
            ):
                idx.append(sid(scope))
                rows.append(c)
    counts = np.array(rows)
    # one row per (scope, bucket): sum the rows of each scope
    scope_idx = np.array(idx)
    uniq = np.unique(scope_idx)
    summed = np.stack([counts[scope_idx == u].sum(axis=0) for u in uniq])
    return Deltas(
        scopes=[names[u] for u in uniq],
        scope_idx=np.arange(len(uniq), dtype=np.int32),
        bucket_start=np.full(len(uniq), t, dtype=np.int64),
        counts=summed,
        replies=[],
        watermark=float(t + 60),
        members=[(f"ip:{ip}", f"pool:{(pools or {}).get(ip, 'shared-1')}") for ip in ips]
        if members
        else [],
    )


def run(throttled: dict[tuple[str, str], float]) -> tuple[list[dict[str, object]], Monitor]:
    rng = np.random.default_rng(7)
    mon = Monitor()
    opened: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 40 * 60, 60):
        d = minute(T0 + m, rng, throttled if m >= onset else {})
        mon.add(d)
        for ch in mon.advance(d.watermark):
            rec = ch.to_json()
            if rec["action"] == "opened":
                opened.append(rec)
    return opened, mon


@pytest.mark.parametrize(
    ("throttled", "want_scope", "wider"),
    [
        # one IP at Google: not all of Google, not the IP everywhere
        (
            {(IPS[0], "google"): 0.6},
            f"ip:{IPS[0]}|provider:google",
            {"provider:google", f"ip:{IPS[0]}"},
        ),
        # every IP at Google alike: Google (the provider asks everyone to slow down)
        ({(ip, "google"): 0.6 for ip in IPS}, "provider:google", set()),
        # one IP at every provider: the IP
        ({(IPS[1], p): 0.6 for p in PROVIDERS}, f"ip:{IPS[1]}", set()),
    ],
)
def test_rate_limit_opens_on_the_scope_to_act_on(
    throttled: dict[tuple[str, str], float], want_scope: str, wider: set[str]
) -> None:
    records, mon = run(throttled)
    opened = [r for r in records if r["type"] == "rate_limited"]
    assert opened, "no rate_limited incident"
    assert opened[0]["scope"] == want_scope, [r["scope"] for r in opened]
    assert len(opened) == 1, [r["scope"] for r in opened]
    # the wider scopes the surge also shows on are listed as related (as they turn hot)
    inc = next(i for i in mon.open_incidents() if i.id == opened[0]["id"])
    assert wider <= set(inc.related), inc.related


@pytest.mark.parametrize(
    ("first", "later", "want_first", "want_final"),
    [
        # one IP at Google first, then every IP at Google: the IP's part widens into Google
        (
            {(IPS[0], "google"): 0.6},
            {(ip, "google"): 0.6 for ip in IPS},
            f"ip:{IPS[0]}|provider:google",
            "provider:google",
        ),
        # one IP at Google first, then the same IP at Yahoo too: it widens into the IP
        (
            {(IPS[2], "google"): 0.6},
            {(IPS[2], p): 0.6 for p in PROVIDERS},
            f"ip:{IPS[2]}|provider:google",
            f"ip:{IPS[2]}",
        ),
        # one IP at Google, then a second IP at Google too: two IPs of four are not all of
        # Google, so nothing widens, and nothing else opens (before, the first IP's wide scope
        # named Google through its Google part, and Google opened beside the two IPs)
        (
            {(IPS[0], "google"): 0.6},
            {(IPS[0], "google"): 0.6, (IPS[1], "google"): 0.6},
            f"ip:{IPS[0]}|provider:google",
            f"ip:{IPS[0]}|provider:google",
        ),
    ],
)
def test_a_part_that_opened_first_widens_when_the_rest_follows(
    first: dict[tuple[str, str], float],
    later: dict[tuple[str, str], float],
    want_first: str,
    want_final: str,
) -> None:
    """Attribution decides on the evidence of each run, so the part whose share crossed the
    thresholds first opens first; once the wide scope opens and no part explains it alone,
    the part's incident closes into the wide one (docs/incidents.md, "Widening"). Ingest
    reports the IPs' pool, as it always does: without it, ``pool:shared-1|provider:google``
    is not known to hold the two IPs' parts."""
    rng = np.random.default_rng(11)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 40 * 60, 60):
        throttled = {} if m < onset else first if m < onset + 10 * 60 else later
        d = minute(T0 + m, rng, throttled, members=True)
        mon.add(d)
        records += [ch.to_json() for ch in mon.advance(d.watermark)]
    opened = [r for r in records if r["type"] == "rate_limited" and r["action"] == "opened"]
    assert opened and opened[0]["scope"] == want_first, [r["scope"] for r in opened]
    if want_final == want_first:
        assert not any("widened_from" in r or "widened_into" in r for r in records)
        assert len({r["scope"] for r in opened}) == len(later), [r["scope"] for r in opened]
        return
    wide = [r for r in opened if r["scope"] == want_final]
    assert len(wide) == 1, [r["scope"] for r in opened]
    # every open part of the wide scope closes into it (the IP's Yahoo part may have opened
    # on its own before the IP did)
    assert opened[0]["id"] in wide[0]["widened_from"]
    parts = {r["id"]: r["scope"] for r in opened}
    assert all(want_final in str(parts[i]).split("|") for i in wide[0]["widened_from"])
    assert float(wide[0]["opened_at"]) > T0 + onset + 10 * 60  # after the rest followed
    closed = [r for r in records if r["action"] == "closed" and r["id"] == opened[0]["id"]]
    assert len(closed) == 1 and closed[0]["widened_into"] == wide[0]["id"]
    assert closed[0]["closed_at"] == wide[0]["opened_at"]
    # the part is now a related scope of the wide incident, and does not open again
    inc = next(i for i in mon.open_incidents() if i.id == wide[0]["id"])
    assert want_first in inc.related
    assert [r["scope"] for r in opened].count(want_first) == 1


def test_a_pool_at_one_provider_is_one_incident_whatever_the_opening_order() -> None:
    """Twenty IPs in two pools; the three IPs of shared-2 are rate-limited at Yahoo from the
    same minute (Yahoo as a whole stays under the detector's effect size). The IPs are candidates
    before their pool (kind preference) and are attributed to their Yahoo parts first, but
    within one run the incidents do not depend on that order: one incident on the pool at
    Yahoo, with the IPs' Yahoo parts as related scopes (docs/incidents.md, "Attribution")."""
    ips = tuple(f"192.0.2.{i}" for i in range(1, 21))
    pools = {ip: "shared-2" if i >= 17 else "shared-1" for i, ip in enumerate(ips)}
    rng = np.random.default_rng(5)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    throttled = {(ip, "yahoo"): 0.3 for ip in ips[17:]}
    for m in range(0, onset + 30 * 60, 60):
        d = minute(T0 + m, rng, throttled if m >= onset else {}, pools, ips)
        mon.add(d)
        records += [ch.to_json() for ch in mon.advance(d.watermark)]
    opened = [r for r in records if r["type"] == "rate_limited" and r["action"] == "opened"]
    assert [r["scope"] for r in opened] == ["pool:shared-2|provider:yahoo"]
    inc = mon.open_incidents()[0]
    assert {f"ip:{ip}|provider:yahoo" for ip in ips[17:]} <= set(inc.related), inc.related
    assert mon.opened_total["rate_limited"] == 1


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("ip:192.0.2.1", "ip:192.0.2.2", True),  # one kind
        ("ip:192.0.2.1|provider:yahoo", "pool:shared-1|provider:microsoft", True),
        ("ip:192.0.2.1|provider:yahoo", "provider:microsoft", True),
        ("ip:192.0.2.1|provider:yahoo", "pool:shared-1|provider:yahoo", False),
        ("ip:192.0.2.1|provider:yahoo", "provider:yahoo", False),
        ("ip:192.0.2.1|provider:yahoo", "pool:shared-1", False),
        ("ip:192.0.2.1", "pool:shared-1", False),
        # a recipient domain is at its provider
        ("domain:outlook.com", "ip:192.0.2.1|provider:google", True),
        ("domain:outlook.com", "ip:192.0.2.1|provider:microsoft", False),
        ("domain:outlook.com", "ip:192.0.2.1", False),
        # an MX operator spans providers (Microsoft 365 tenants are not provider:microsoft)
        ("mx:microsoft", "ip:192.0.2.1|provider:other", False),
    ],
)
def test_disjoint_scopes(a: str, b: str, want: bool) -> None:
    assert disjoint(a, b) is want and disjoint(b, a) is want


# --------------------------------------------------------------------------- pools (membership)
POOL_IPS = tuple(f"198.51.100.{i}" for i in range(1, 33))
POOL_OF = {ip: "shared-a" if i < 4 else "shared-b" for i, ip in enumerate(POOL_IPS)}


def run_pools(
    phases: list[tuple[int, dict[tuple[str, str], float]]], members: bool = True, seed: int = 3
) -> tuple[list[dict[str, object]], Monitor]:
    """Thirty-two IPs in two pools, shared-a (four) and shared-b (28); ``phases``: (minute after onset, throttled) from then on.
    Returns every incident record and the Monitor."""
    rng = np.random.default_rng(seed)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 40 * 60, 60):
        throttled: dict[tuple[str, str], float] = {}
        for start, th in phases:
            if m >= onset + 60 * start:
                throttled = th
        d = minute(T0 + m, rng, throttled, POOL_OF, POOL_IPS, members=members)
        mon.add(d)
        records += [ch.to_json() for ch in mon.advance(d.watermark)]
    return [r for r in records if r["type"] == "rate_limited"], mon


def _pool(name: str, prov: str = "yahoo", rate: float = 0.6) -> dict[tuple[str, str], float]:
    return {(ip, prov): rate for ip, p in POOL_OF.items() if p == name}


def test_an_ip_of_a_pool_widens_into_the_pool_when_the_pool_follows() -> None:
    """One IP of pool shared-a is rate-limited at Yahoo first, then all four: the IP's Yahoo
    part opened first and closes into ``pool:shared-a|provider:yahoo``. An IP's pool is not in
    its name; ingest reports it (``Deltas.members``)."""
    ip0 = POOL_IPS[0]
    records, mon = run_pools([(0, {(ip0, "yahoo"): 0.6}), (10, _pool("shared-a"))])
    opened = [r for r in records if r["action"] == "opened"]
    assert [r["scope"] for r in opened] == [
        f"ip:{ip0}|provider:yahoo",
        "pool:shared-a|provider:yahoo",
    ]
    part, wide = opened
    assert wide["widened_from"] == [part["id"]]
    closed = [r for r in records if r["action"] == "closed" and r["id"] == part["id"]]
    assert len(closed) == 1 and closed[0]["widened_into"] == wide["id"]
    (inc,) = mon.open_incidents()
    want = {f"ip:{ip}|provider:yahoo" for ip in POOL_IPS[:4]}
    assert want <= set(inc.related), inc.related


def test_without_membership_the_ip_stays_open_beside_its_pool() -> None:
    """The same traffic without the IP -> pool pairs: nothing tells the Monitor that the pool
    holds the IP, so both stay open (what the pairs are for)."""
    ip0 = POOL_IPS[0]
    _, mon = run_pools([(0, {(ip0, "yahoo"): 0.6}), (10, _pool("shared-a"))], members=False)
    assert {f"ip:{ip0}|provider:yahoo", "pool:shared-a|provider:yahoo"} <= {
        i.scope for i in mon.open_incidents()
    }


def test_a_pool_whose_ips_start_together_opens_once_with_its_ips_related() -> None:
    """All four IPs of shared-a from the same minute: one incident on the pool's Yahoo part; an
    IP's part that opens and widens within the same run is not reported at all."""
    records, mon = run_pools([(0, _pool("shared-a"))])
    assert [r["scope"] for r in records if r["action"] == "opened"] == [
        "pool:shared-a|provider:yahoo"
    ]
    assert not any(r["action"] == "closed" for r in records)
    (inc,) = mon.open_incidents()
    assert inc.widened_from == []
    assert mon.opened_total["rate_limited"] == 1
    assert mon.recent_closed() == []


def test_one_ip_of_a_pool_opens_on_the_ip_with_its_pool_related() -> None:
    """One IP of four: the IP's surge explains its pool's; the pool is a related scope."""
    ip0 = POOL_IPS[0]
    records, mon = run_pools([(0, {(ip0, "yahoo"): 0.9})])
    assert [r["scope"] for r in records if r["action"] == "opened"] == [f"ip:{ip0}|provider:yahoo"]
    (inc,) = mon.open_incidents()
    assert "pool:shared-a|provider:yahoo" in inc.related, inc.related


def test_an_ip_of_another_pool_is_its_own_incident() -> None:
    """Pool shared-a is rate-limited at Yahoo; ten minutes later one IP of shared-b is too.
    Its excess is comparable to the pool's, but membership says it holds none of the pool's
    mail: its own incident, not a related scope of the pool's. Another IP of shared-a that
    turns hot later is a related scope of its pool's incident."""
    late_b, late_a = POOL_IPS[5], POOL_IPS[3]
    first = {k: v for k, v in _pool("shared-a").items() if k[0] != late_a}
    later = {**_pool("shared-a"), (late_b, "yahoo"): 0.9}
    records, mon = run_pools([(0, first), (10, later)])
    opened = [r["scope"] for r in records if r["action"] == "opened"]
    assert opened == ["pool:shared-a|provider:yahoo", f"ip:{late_b}|provider:yahoo"], opened
    pool_inc = next(i for i in mon.open_incidents() if i.scope.startswith("pool:"))
    assert f"ip:{late_a}|provider:yahoo" in pool_inc.related
    assert f"ip:{late_b}|provider:yahoo" not in pool_inc.related


def test_membership_survives_a_snapshot() -> None:
    from models.state.snapshot import decode, encode

    _, mon = run_pools([(0, _pool("shared-a"))])
    back = Monitor.restore(decode(encode(mon.snapshot())))
    for ip in POOL_IPS:
        assert back.members.wholes_of(f"ip:{ip}") == (f"pool:{POOL_OF[ip]}",)
    assert back.members.wholes(f"ip:{POOL_IPS[0]}|provider:yahoo") == (
        "pool:shared-a|provider:yahoo",
        "pool:shared-a",
    )


def test_membership_of_an_older_snapshot_lives_from_the_restored_clock() -> None:
    """A snapshot of the older format (part -> whole, no times) is read as seen at the
    restored clock, so the first sweep does not forget every pair."""
    from models.detect.membership import Membership

    m = Membership()
    m.restore({"ip:198.51.100.1": "pool:shared-a"}, now=float(T0))
    m.expire(float(T0) + 7200.0)
    assert m.wholes_of("ip:198.51.100.1") == ("pool:shared-a",)
    m.expire(float(T0) + 2 * 86400.0)
    assert m.wholes_of("ip:198.51.100.1") == ()


def test_related_scopes_are_counted_once() -> None:
    """``related_total`` counts each scope once when it becomes related to a reported
    incident: not again when a part's related scopes are handed to what it widened into, nor
    the reported part itself."""
    ip0 = POOL_IPS[0]
    _, mon = run_pools([(0, {(ip0, "yahoo"): 0.6}), (10, _pool("shared-a"))])
    (wide,) = mon.open_incidents()
    (part,) = mon.recent_closed()
    assert part.widened_into == wide.id
    # the part's related scopes and the part itself were handed on, not counted again
    once = (set(part.related) | set(wide.related)) - {part.scope}
    assert mon.related_total == len(once), (part.related, wide.related)


@pytest.mark.parametrize(
    ("a", "b", "want"),
    [
        ("ip:198.51.100.1|provider:yahoo", "pool:shared-b|provider:yahoo", True),
        ("ip:198.51.100.1", "pool:shared-b", True),
        ("pool:shared-b", "ip:198.51.100.1|provider:yahoo", True),
        ("ip:198.51.100.1|provider:yahoo", "pool:shared-a|provider:yahoo", False),
        ("ip:198.51.100.99", "pool:shared-b", False),  # pool unknown: may be a part
        ("ip:198.51.100.1", "sender:news.example", False),
        ("campaign:bf|provider:yahoo", "tenant:news|provider:yahoo", False),  # not paired
        ("campaign:bf", "pool:shared-a", False),
    ],
)
def test_an_ip_and_a_pool_it_does_not_send_in_are_disjoint(a: str, b: str, want: bool) -> None:
    from models.detect.membership import Membership

    m = Membership()
    m.add([(f"ip:{ip}", f"pool:{p}") for ip, p in POOL_OF.items()], T0)
    m.add([("campaign:bf", "tenant:acme"), ("campaign:bf", "pool:x"), ("ip:1", "tenant:y")], T0)
    assert m.wholes_of("campaign:bf") == () == m.wholes_of("ip:1")  # only IP -> pool pairs
    assert m.disjoint(a, b) is want and m.disjoint(b, a) is want


def test_an_ip_in_two_pools_is_in_both_whatever_the_order() -> None:
    """KumoMTA lets a source serve several pools: the IP is a part of each, the result does
    not depend on the order the pairs arrive in, and seeing a pair again changes nothing."""
    from models.detect.membership import Membership

    pairs = [("ip:1", "pool:a"), ("ip:1", "pool:b")]
    a, b = Membership(), Membership()
    a.add(pairs, T0)
    b.add(pairs[::-1], T0)
    assert a.snapshot() == b.snapshot()
    assert a.wholes("ip:1|provider:yahoo") == (
        "pool:a|provider:yahoo",
        "pool:b|provider:yahoo",
        "pool:a",
        "pool:b",
    )
    assert not a.disjoint("ip:1", "pool:b") and a.disjoint("ip:1", "pool:c")
    v = a.version
    a.add(pairs, T0 + 60)
    assert a.version == v  # caches keyed by the version stay valid


def test_membership_expires_and_prunes() -> None:
    """A pair not seen for ``ttl_s`` of event time is forgotten (an IP moved to another pool
    leaves the old one); pruning keeps a part the store holds any scope of, a combined one
    included (a rollup owner may hold ``ip:X|provider:P`` but not ``ip:X``)."""
    from models.detect.membership import Membership

    m = Membership(ttl_s=3600.0)
    m.add([("ip:1", "pool:a")], T0)
    m.add([("ip:1", "pool:b")], T0 + 3000)
    m.expire(T0 + 3700)
    assert m.wholes_of("ip:1") == ("pool:b",)
    many = Membership()
    many.add([(f"ip:{i}", "pool:a") for i in range(3000)], T0)
    many.maybe_prune({"ip:7|provider:yahoo": 0, "ip:8": 1, "pool:a": 2})
    assert {p for p in ("ip:7", "ip:8", "ip:9") if many.wholes_of(p)} == {"ip:7", "ip:8"}
    assert len(many) == 2


def _spec_minute(
    t: int,
    rng: np.random.Generator,
    throttled: dict[tuple[str, str], float],
    spec: dict[str, tuple[str, dict[str, int]]],
) -> Deltas:
    """One minute: ``spec[ip] = (pool, {provider: attempts per minute})``."""
    agg: dict[str, np.ndarray] = {}
    for ip, (pool, vols) in spec.items():
        for prov, n in vols.items():
            k = int(rng.binomial(n, throttled.get((ip, prov), 0.002)))
            c = np.zeros(N_COLUMNS, dtype=np.int64)
            c[COL["delivered"]] = n - k
            c[COL["deferred"]] = k
            c[COL["class_throttle"]] = k
            for sc in (
                f"provider:{prov}",
                f"ip:{ip}",
                f"ip:{ip}|provider:{prov}",
                f"pool:{pool}",
                f"pool:{pool}|provider:{prov}",
            ):
                agg[sc] = agg.get(sc, 0) + c
    names = list(agg)
    return Deltas(
        scopes=names,
        scope_idx=np.arange(len(names), dtype=np.int32),
        bucket_start=np.full(len(names), t, dtype=np.int64),
        counts=np.stack([agg[n] for n in names]),
        watermark=float(t + 60),
        members=[(f"ip:{ip}", f"pool:{p}") for ip, (p, _) in spec.items()],
    )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_chain_of_widenings_in_one_run_points_at_what_is_reported(seed: int) -> None:
    """Pool ``solo`` is IP S (Google and Yahoo) and a small IP T (Yahoo only). S is
    rate-limited at Yahoo, ten minutes later at Google too: S's Yahoo part opened first; in
    one run S widens it and the pool (S is most of it) widens S. S is not reported, so the
    Yahoo part must close into the pool's incident: every ``widened_into`` and
    ``widened_from`` id is one that was reported as opened, and a part's closed record comes
    after the opened record of what it widened into."""
    s_ip = "198.51.100.1"
    spec = {s_ip: ("solo", {"google": 60, "yahoo": 60}), "198.51.100.2": ("solo", {"yahoo": 20})}
    for i in range(3, 10):
        spec[f"198.51.100.{i}"] = ("shared", {"google": 60, "yahoo": 60})
    rng = np.random.default_rng(seed)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 30 * 60, 60):
        th: dict[tuple[str, str], float] = {}
        if m >= onset:
            th = {(s_ip, "yahoo"): 0.6}
        if m >= onset + 600:
            th = {(s_ip, "yahoo"): 0.6, (s_ip, "google"): 0.6}
        d = _spec_minute(T0 + m, rng, th, spec)
        mon.add(d)
        records += [c.to_json() for c in mon.advance(d.watermark)]
    recs = [r for r in records if r["type"] == "rate_limited"]
    opened_at = {r["id"]: i for i, r in enumerate(recs) if r["action"] == "opened"}
    for i, r in enumerate(recs):
        into = r.get("widened_into")
        if r["action"] == "closed" and into is not None:
            assert into in opened_at and opened_at[into] < i, (r["id"], into)
        for part in r.get("widened_from", []) if r["action"] == "opened" else []:
            assert part in opened_at, part
    closed = {r["id"] for r in recs if r["action"] == "closed"}
    assert set(opened_at) == closed | {i.id for i in mon.open_incidents()}
    assert mon.opened_total["rate_limited"] == len(opened_at)
    assert f"ip:{s_ip}|provider:yahoo" in {r["scope"] for r in recs if r["action"] == "opened"}


def _reversed(d: Deltas) -> Deltas:
    """The same counts with the scopes listed the other way round."""
    n = len(d.scopes)
    return Deltas(
        scopes=d.scopes[::-1],
        scope_idx=np.arange(n, dtype=np.int32),
        bucket_start=d.bucket_start[::-1].copy(),
        counts=d.counts[::-1].copy(),
        watermark=d.watermark,
        members=d.members,
    )


@pytest.mark.parametrize("reverse", [False, True])
def test_parts_that_explain_a_scope_together_do_not_depend_on_scope_order(reverse: bool) -> None:
    """One IP in each of pools A and B rate-limited at Yahoo, a large pool C fine. Yahoo's
    surge is explained by a group of parts: the two IPs' Yahoo parts, or the two pools'. The
    narrower group (the IPs: each pool's surge is its one IP's) is taken, whatever order the
    scopes first reached the Monitor in."""
    spec = {f"198.51.100.{i}": ("C", {"google": 60, "yahoo": 60}) for i in range(11, 17)}
    spec |= {
        "198.51.100.1": ("A", {"google": 60, "yahoo": 60}),
        "198.51.100.2": ("A", {"google": 60, "yahoo": 60}),
        "198.51.100.3": ("B", {"google": 60, "yahoo": 60}),
        "198.51.100.4": ("B", {"google": 60, "yahoo": 60}),
    }
    rng = np.random.default_rng(1)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 20 * 60, 60):
        th = {("198.51.100.1", "yahoo"): 0.7, ("198.51.100.3", "yahoo"): 0.7} if m >= onset else {}
        d = _spec_minute(T0 + m, rng, th, spec)
        mon.add(_reversed(d) if reverse else d)
        records += [c.to_json() for c in mon.advance(d.watermark)]
    got = {r["scope"] for r in records if r["type"] == "rate_limited" and r["action"] == "opened"}
    assert got == {"ip:198.51.100.1|provider:yahoo", "ip:198.51.100.3|provider:yahoo"}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_wide_scope_named_through_another_part_widens_the_open_part(seed: int) -> None:
    """IP X sends a little to Google and most of its mail to Yahoo. Google rate-limits it
    first (its Google part opens), Yahoo ten minutes later: the IP is then named as the scope
    to act on through Google's candidate (X's Google part explains Google's surge, and X is
    affected alike at Yahoo), and the open Google part closes into it: one incident holds the
    IP's mail, not two nested ones."""
    x = "10.0.0.1"
    spec = {x: ("shared", {"google": 40, "yahoo": 400})}
    spec |= {f"10.0.0.{i}": ("shared", {"google": 60, "yahoo": 60}) for i in range(2, 6)}
    rng = np.random.default_rng(seed)
    mon = Monitor()
    records: list[dict[str, object]] = []
    onset = 3 * 3600
    for m in range(0, onset + 25 * 60, 60):
        th: dict[tuple[str, str], float] = {}
        if m >= onset:
            th[(x, "google")] = 0.9
        if m >= onset + 600:
            th[(x, "yahoo")] = 0.9
        d = _spec_minute(T0 + m, rng, th, spec)
        mon.add(d)
        records += [c.to_json() for c in mon.advance(d.watermark)]
    recs = [r for r in records if r["type"] == "rate_limited"]
    assert [i.scope for i in mon.open_incidents()] == [f"ip:{x}"], recs
    part = next(r for r in recs if r["scope"] == f"ip:{x}|provider:google")
    wide = next(r for r in recs if r["scope"] == f"ip:{x}" and r["action"] == "opened")
    assert part["id"] in wide["widened_from"]
