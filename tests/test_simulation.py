"""Tests of the traffic simulator (models/sim/simulator.py, docs/simulator.md)."""

from __future__ import annotations

import collections
import re
from collections.abc import Callable
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from models.ingest.providers import ProviderResolver
from models.schema import EVENT_KINDS, INCIDENT_TYPES, SCOPE_KINDS
from models.sim.simulator import (
    CONSUMER_DOMAINS,
    DEFAULT_START,
    SCENARIOS,
    SimConfig,
    Simulator,
    Truth,
    diurnal_factor,
)

DAY = DEFAULT_START + 8 * 3600.0  # 08:00 UTC: daytime volume
ENH = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}$")
RESOLVER = ProviderResolver()


@cache
def run(
    scenario: str = "baseline",
    seed: int = 1,
    rate: float = 5.0,
    duration_s: float = 5400.0,
    start: float = DAY,
    params: tuple[tuple[str, Any], ...] = (),
) -> tuple[Simulator, list[dict[str, Any]]]:
    sim = Simulator(
        SimConfig(
            seed=seed,
            start=start,
            duration_s=duration_s,
            rate=rate,
            scenario=scenario,
            params=dict(params),
        )
    )
    return sim, list(sim.iter_events())


def provider(e: dict[str, Any]) -> str:
    return RESOLVER.resolve(e["recipient_domain"], e.get("mx_host", ""))[0]


def operator(e: dict[str, Any]) -> str:
    return RESOLVER.resolve(e["recipient_domain"], e.get("mx_host", ""))[1]


ATTEMPTS = ("delivered", "deferred", "bounced")


# ------------------------------------------------------------------ determinism, validity ---


def test_deterministic_and_chunk_size_independent() -> None:
    cfg = dict(
        seed=7,
        start=DAY,
        duration_s=1200.0,
        rate=4.0,
        scenario="provider-outage",
        params={"onset_s": 300.0},
    )
    a = list(Simulator(SimConfig(**cfg)).iter_events())  # type: ignore[arg-type]
    b = [e for ch in Simulator(SimConfig(**cfg)).chunks(17.0) for e in ch]  # type: ignore[arg-type]
    assert a == b and len(a) > 1000
    c = list(Simulator(SimConfig(**{**cfg, "seed": 8})).iter_events())  # type: ignore[arg-type]
    assert c != a


def test_events_valid_per_contract() -> None:
    sim, evs = run("mixed", rate=3.0, duration_s=5 * 3600.0)
    assert evs
    kinds = collections.Counter(e["event"] for e in evs)
    assert set(kinds) <= set(EVENT_KINDS)
    assert {"sent", "delivered", "deferred", "bounced", "opened", "clicked"} <= set(kinds)
    last = 0.0
    for e in evs:
        assert isinstance(e["event"], str)
        t = e["timestamp"]
        assert isinstance(t, float) and sim.start <= t < sim.end and t >= last
        last = t
        assert isinstance(e["recipient"], str) and "@" in e["recipient"]
        dom = e["recipient"].split("@", 1)[1]
        assert dom == e["recipient_domain"] == dom.lower()
        for f in ("message_id", "sender_domain", "sending_ip", "pool", "tenant", "campaign"):
            assert isinstance(e[f], str) and e[f]
        if e["event"] in ATTEMPTS:
            code = e["smtp_code"]
            assert isinstance(code, int) and 200 <= code <= 599
            resp = e["response"]
            assert isinstance(resp, str) and 0 < len(resp) <= 8192
            assert resp.startswith(str(code)), resp
            assert "@" not in resp  # no recipient addresses in reply texts
            assert (code // 100) == {"delivered": 2, "deferred": 4, "bounced": 5}[e["event"]]
            if "enhanced_code" in e:
                assert ENH.match(e["enhanced_code"])
                assert e["enhanced_code"][0] == str(code)[0]
                assert e["enhanced_code"] in resp
            if "mx_host" in e:
                assert isinstance(e["mx_host"], str)
        else:
            assert "smtp_code" not in e
        if e["event"] == "complained":
            assert e["feedback_type"] == "abuse"


def test_chunks_are_time_ordered_and_bounded() -> None:
    sim = Simulator(SimConfig(start=DAY, duration_s=900.0, rate=5.0))
    c0 = sim.start
    for ch in sim.chunks(120.0):
        ts = [e["timestamp"] for e in ch]
        assert ts == sorted(ts)
        assert all(c0 <= t < c0 + 120.0 for t in ts)
        c0 += 120.0


# ------------------------------------------------------------------ population -------------


def test_population_b2b_domains_and_mx_operators() -> None:
    sim = Simulator(SimConfig())
    doms = sim.domains()
    b2b = [d for d in doms if not d["consumer"]]
    assert len(b2b) >= 300
    assert len({d["domain"] for d in doms}) == len(doms)
    ops = collections.Counter(d["operator"] for d in b2b)
    for op in ("microsoft", "google", "mimecast", "proofpoint", "barracuda", "cisco", "broadcom"):
        assert ops[op] >= 5, ops
    for d in b2b:
        host = d["mx_hosts"][0]
        if d["operator"] == "microsoft":
            assert host == d["domain"].replace(".", "-") + ".mail.protection.outlook.com"
        if d["operator"] == "other":
            assert host == "mx1." + d["domain"]
    shares = sorted((d["share"] for d in b2b), reverse=True)
    assert shares[0] > 20 * shares[len(shares) // 2]  # heavy tail: many small domains
    gmail = next(d for d in doms if d["domain"] == "gmail.com")
    assert gmail["mx_hosts"][0] == "gmail-smtp-in.l.google.com" and gmail["provider"] == "google"


def test_provider_shares() -> None:
    _, evs = run(rate=8.0, duration_s=3 * 3600.0)
    sent = [e for e in evs if e["event"] == "sent"]
    by = collections.Counter(
        RESOLVER.table.domain_provider.get(e["recipient_domain"], "b2b") for e in sent
    )
    n = len(sent)
    assert 0.28 < by["google"] / n < 0.42
    assert 0.11 < by["microsoft"] / n < 0.21
    assert 0.06 < by["yahoo"] / n < 0.13
    assert 0.025 < by["apple"] / n < 0.07
    assert 0.15 < by["b2b"] / n < 0.40
    for p in ("comcast", "att", "gmx", "orange", "tonline", "mailru", "yandex", "qq"):
        assert 0 < by[p] / n < 0.05, p


def test_baseline_rates_realistic() -> None:
    _, evs = run(rate=8.0, duration_s=3 * 3600.0)
    k = collections.Counter(e["event"] for e in evs)
    # Every message ends delivered or bounced (expiry included), deferrals are retried.
    delivered_share = k["delivered"] / k["sent"]
    assert 0.95 < delivered_share < 1.0
    hard = sum(1 for e in evs if e["event"] == "bounced" and e["smtp_code"] >= 550)
    assert 0.004 < hard / k["sent"] < 0.02
    assert 0.003 < k["deferred"] / k["sent"] < 0.05
    texts = " ".join(e["response"] for e in evs if e["event"] == "deferred")
    assert "Greylisted" in texts or "greylisting" in texts
    assert "4.4.2 Connection timed out" in texts
    # Gmail: no per-message FBL.
    assert not any(e["event"] == "complained" and provider(e) == "google" for e in evs)


def test_recipients_recur() -> None:
    _, evs = run(rate=4.0, duration_s=4 * 3600.0)
    n = collections.Counter(e["recipient"] for e in evs if e["event"] == "delivered")
    b2b = [r for r in n if r.split("@")[1] not in RESOLVER.table.domain_provider]
    assert sum(1 for r in b2b if n[r] >= 2) > 0.2 * len(b2b)


# ------------------------------------------------------------------ diurnal ----------------


def test_diurnal_curve() -> None:
    grid = DEFAULT_START + np.arange(0, 86400, 60.0)
    f = diurnal_factor(grid)
    assert abs(float(f.mean()) - 1.0) < 1e-6
    assert float(diurnal_factor(DEFAULT_START + 3 * 3600)) < 0.6
    assert float(diurnal_factor(DEFAULT_START + 10 * 3600)) > 1.5
    assert float(diurnal_factor(DEFAULT_START + 19.5 * 3600)) > 1.2
    assert float(diurnal_factor(DEFAULT_START + 3 * 3600, tz_offset_h=7.0)) > 1.5
    sim, evs = run(rate=0.4, duration_s=86400.0, start=DEFAULT_START)
    per_hour = collections.Counter(
        int((e["timestamp"] - sim.start) // 3600)
        for e in evs
        if e["event"] == "sent" and e["campaign"].endswith("transactional")
    )
    assert per_hour[3] < 0.5 * per_hour[10]


# ------------------------------------------------------------------ scenarios --------------

Signal = Callable[[Simulator, Truth, list[dict[str, Any]]], float]


def _share(
    evs: list[dict[str, Any]],
    sel: Callable[[dict[str, Any]], bool],
    hit: Callable[[dict[str, Any]], bool],
) -> float:
    pool = [e for e in evs if sel(e)]
    return sum(1 for e in pool if hit(e)) / max(1, len(pool))


def _split(
    tr: Truth, evs: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    end = tr.end if tr.end is not None else float("inf")
    before = [e for e in evs if e["timestamp"] < tr.onset]
    during = [e for e in evs if tr.onset <= e["timestamp"] < end]
    return before, during


def sig_outage(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    return _share(
        evs,
        lambda e: e["event"] in ATTEMPTS and provider(e) == "microsoft",
        lambda e: e["event"] == "deferred",
    )


def sig_block(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    return _share(
        evs,
        lambda e: (
            e["event"] in ATTEMPTS
            and provider(e) == "microsoft"
            and e["sending_ip"] == "192.0.2.12"
        ),
        lambda e: "(S3150)" in e.get("response", ""),
    )


def sig_rate(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    return _share(
        evs,
        lambda e: e["event"] in ATTEMPTS and provider(e) == "google" and e["pool"] == "shared-1",
        lambda e: e.get("enhanced_code") == "4.7.28",
    )


def sig_false(sim: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    doms = {s.split(":", 1)[1] for s in tr.scopes if s.startswith("domain:")}
    return _share(
        evs,
        lambda e: e["event"] in ATTEMPTS and e["recipient_domain"] in doms,
        lambda e: "Invalid Recipient" in e.get("response", ""),
    )


def sig_complaint(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    camp = next(s for s in tr.scopes if s.startswith("campaign:") and "|" not in s)[9:]
    sel = [e for e in evs if e["campaign"] == camp and provider(e) == "yahoo"]
    complaints = sum(1 for e in sel if e["event"] == "complained")
    return complaints / max(1, sum(1 for e in sel if e["event"] == "delivered"))


def sig_auth(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    return _share(
        evs,
        lambda e: (
            e["event"] in ATTEMPTS
            and e["sender_domain"] == "mail.initech.com"
            and e["recipient_domain"] in ("gmail.com", "hotmail.com", "outlook.com", "yahoo.com")
        ),
        lambda e: e.get("enhanced_code") in ("5.7.515", "5.7.26", "5.7.9"),
    )


def sig_badlist(_: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> float:
    return _share(
        evs,
        lambda e: e["event"] in ATTEMPTS and e["tenant"] == "initech",
        lambda e: e["event"] == "bounced",
    )


CASES: list[tuple[str, dict[str, Any], Signal, float, float]] = [
    ("provider-outage", {}, sig_outage, 0.05, 0.5),
    ("ip-blocklisted", {}, sig_block, 0.0, 0.8),
    ("rate-limited", {}, sig_rate, 0.02, 0.3),
    ("complaint-spike", {"intensity": 0.05, "campaign_rate": 4.0}, sig_complaint, 0.004, 0.01),
    ("auth-failure", {}, sig_auth, 0.01, 0.8),
    ("bad-list-import", {}, sig_badlist, 0.03, 0.07),
]


@pytest.mark.parametrize(("scenario", "params", "signal", "before_max", "after_min"), CASES)
def test_scenario_signal(
    scenario: str, params: dict[str, Any], signal: Signal, before_max: float, after_min: float
) -> None:
    p = {"onset_s": 2700.0, "length_s": 1800.0, **params}
    sim, evs = run(scenario, params=tuple(sorted(p.items())))
    (tr,) = sim.truth
    assert tr.onset == sim.start + 2700.0 and tr.end == tr.onset + 1800.0
    before, during = _split(tr, evs)
    assert signal(sim, tr, before) <= before_max
    assert signal(sim, tr, during) >= after_min


def test_b2b_false_bounces_hit_known_good_recipients() -> None:
    sim, evs = run("b2b-false-bounces", rate=3.0, duration_s=4.5 * 3600.0, start=DEFAULT_START)
    (tr,) = sim.truth
    assert tr.type == "false_hard_bounces" and tr.scopes[0] == "mx:mimecast"
    assert tr.onset - sim.start >= 3 * 3600.0
    before, during = _split(tr, evs)
    assert sig_false(sim, tr, before) < 0.02
    assert sig_false(sim, tr, during) > 0.4
    good = {e["recipient"] for e in before if e["event"] == "delivered"}
    fb = [e["recipient"] for e in during if "Invalid Recipient" in e.get("response", "")]
    assert fb and sum(r in good for r in fb) >= 0.2 * len(fb)
    assert all(
        operator(e) == "mimecast" for e in during if "Invalid Recipient" in e.get("response", "")
    )


QUIET = ("baseline", "normal-24h-gmail-no-fbl")  # scenarios without an incident


def _check_scope(sim: Simulator, scope: str) -> None:
    """A scope key of the pipeline, or a combined ``<kind>:<value>|provider:<provider>``."""
    parts = scope.split("|")
    assert 1 <= len(parts) <= 2, scope
    if len(parts) == 2:
        assert parts[1].startswith("provider:") and not parts[0].startswith("provider:"), scope
    for part in parts:
        kind, val = part.split(":", 1)
        assert kind in SCOPE_KINDS and val
        if kind == "ip":
            assert val in sim.ip_names
        if kind == "pool":
            assert val in sim.pool_names
        if kind == "sender":
            assert val in sim.sender_names
        if kind == "campaign":
            assert val in sim.campaign_names
        if kind == "provider":
            assert val in set(sim.dom_provider)


def test_ground_truth_consistent() -> None:
    for sc in SCENARIOS:
        sim = Simulator(SimConfig(scenario=sc, duration_s=6 * 3600.0))
        truth = sim.truth
        assert (len(truth) == 0) == (sc in QUIET)
        if sc == "mixed":
            assert len(truth) >= 7 and len({t.type for t in truth}) == len(INCIDENT_TYPES)
            assert [t.onset for t in truth] == sorted(t.onset for t in truth)
        for t in truth:
            assert t.type in INCIDENT_TYPES
            assert sim.start < t.onset < sim.end
            assert t.end is None or t.onset < t.end <= sim.end
            assert t.scopes and len(set(t.scopes)) == len(t.scopes)
            assert t.act_scope in t.scopes
            for s in t.scopes:
                _check_scope(sim, s)


# ------------------------------------------------------------------ issue 11: act scopes ---

#: the scope an engineer acts on, per scenario (default parameters), in truth order
ACT_SCOPES: list[tuple[str, list[str]]] = [
    ("baseline", []),
    ("provider-outage", ["provider:microsoft"]),
    ("ip-blocklisted", ["ip:192.0.2.12|provider:microsoft"]),
    ("rate-limited", ["pool:shared-1|provider:google"]),
    ("b2b-false-bounces", ["mx:mimecast"]),
    ("complaint-spike", ["campaign:acme-2026-11-16-flash-sale|provider:yahoo"]),
    ("auth-failure", ["sender:mail.initech.com"]),
    ("bad-list-import", ["campaign:initech-2026-11-16-imported-list"]),
    (
        "mixed",
        [
            "provider:yahoo",
            "pool:shared-2|provider:google",
            "ip:192.0.2.13|provider:microsoft",
            "mx:mimecast",
            "campaign:umbrella-2026-11-16-flash-sale|provider:microsoft",
            "campaign:hooli-2026-11-16-imported-list",
            "sender:news.initech.com",
        ],
    ),
    ("ip-rate-limited-gmail", ["ip:203.0.113.6|provider:google"]),
    ("pool-blocked-yahoo", ["pool:shared-2|provider:yahoo"]),
    ("sender-auth-microsoft-ramp", ["sender:e.umbrella-health.com|provider:microsoft"]),
    ("campaign-complaints-one-provider", ["campaign:umbrella-2026-11-16-winback|provider:yahoo"]),
    ("normal-24h-gmail-no-fbl", []),
]


@pytest.mark.parametrize(("scenario", "acts"), ACT_SCOPES)
def test_act_scopes(scenario: str, acts: list[str]) -> None:
    sim = Simulator(SimConfig(scenario=scenario, duration_s=6 * 3600.0))
    assert [t.act_scope for t in sim.truth] == acts
    for t in sim.truth:
        assert t.scopes[0] == t.act_scope  # the most precise acceptable scope


def test_act_scope_cases_cover_every_scenario() -> None:
    assert [sc for sc, _ in ACT_SCOPES] == list(SCENARIOS)


def test_truth_act_scope_defaults_and_is_checked() -> None:
    assert Truth("block", ("ip:192.0.2.1", "pool:p"), 0.0, None).act_scope == "ip:192.0.2.1"
    with pytest.raises(ValueError):
        Truth("block", ("ip:192.0.2.1",), 0.0, None, act_scope="pool:p")


NEW_SCENARIOS = (
    "ip-rate-limited-gmail",
    "pool-blocked-yahoo",
    "sender-auth-microsoft-ramp",
    "campaign-complaints-one-provider",
    "normal-24h-gmail-no-fbl",
)


@pytest.mark.parametrize("scenario", NEW_SCENARIOS)
def test_new_scenarios_deterministic(scenario: str) -> None:
    cfg = dict(
        seed=5,
        start=DAY,
        duration_s=1800.0,
        rate=6.0,
        scenario=scenario,
        params={"onset_s": 600.0},
    )
    a = list(Simulator(SimConfig(**cfg)).iter_events())  # type: ignore[arg-type]
    b = [e for ch in Simulator(SimConfig(**cfg)).chunks(45.0) for e in ch]  # type: ignore[arg-type]
    assert a == b and len(a) > 1000


def _attempts(evs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in evs if e["event"] in ATTEMPTS]


def _rate(evs: list[dict[str, Any]], hit: Callable[[dict[str, Any]], bool]) -> float:
    return sum(1 for e in evs if hit(e)) / max(1, len(evs))


def _is_4728(e: dict[str, Any]) -> bool:
    return e.get("enhanced_code") == "4.7.28"


def _is_tss04(e: dict[str, Any]) -> bool:
    return "[TSS04]" in e.get("response", "")


def chk_ip_rate_limited_gmail(sim: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> None:
    ip = "203.0.113.6"
    assert tr.type == "rate_limited" and tr.act_scope == f"ip:{ip}|provider:google"
    before, during = (_attempts(x) for x in _split(tr, evs))
    at_google = [e for e in during if provider(e) == "google"]
    mine = [e for e in at_google if e["sending_ip"] == ip]
    others = [e for e in at_google if e["sending_ip"] != ip]
    pool_mates = [e for e in others if e["pool"] == "dedicated-acme"]
    assert len(mine) > 100 and len(pool_mates) > 300
    assert _rate(mine, _is_4728) > 0.4  # the IP is throttled at Google ...
    assert _rate(others, _is_4728) < 0.005  # ... its pool-mates and the other IPs are not
    assert _rate(pool_mates, _is_4728) < 0.005
    assert not any(_is_4728(e) for e in during if provider(e) != "google")
    mine_before = [e for e in before if e["sending_ip"] == ip and provider(e) == "google"]
    assert _rate(mine_before, _is_4728) < 0.01
    texts = {e["response"] for e in mine if _is_4728(e)}
    assert all(
        t.startswith(f"421-4.7.28 [{ip}] Our system has detected an unusual rate of unsolicited")
        and t.endswith("- gsmtp")
        for t in texts
    )


def chk_pool_blocked_yahoo(sim: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> None:
    assert tr.type == "rate_limited" and tr.act_scope == "pool:shared-2|provider:yahoo"
    before, during = (_attempts(x) for x in _split(tr, evs))
    at_yahoo = [e for e in during if provider(e) == "yahoo"]
    pool = [e for e in at_yahoo if e["pool"] == "shared-2"]
    assert len(pool) > 100
    assert _rate(pool, _is_tss04) > 0.6
    by_ip = collections.Counter(e["sending_ip"] for e in pool if _is_tss04(e))
    assert set(by_ip) == {f"198.51.100.{i}" for i in range(20, 28)}  # every IP of the pool
    assert _rate([e for e in at_yahoo if e["pool"] != "shared-2"], _is_tss04) < 0.02
    assert not any(_is_tss04(e) for e in during if provider(e) != "yahoo")
    assert _rate([e for e in before if provider(e) == "yahoo"], _is_tss04) < 0.02
    t = next(e["response"] for e in pool if _is_tss04(e))
    assert re.match(
        r"^421 4\.7\.0 \[TSS04\] Messages from 198\.51\.100\.\d+ temporarily deferred", t
    )


def chk_sender_auth_ramp(sim: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> None:
    sender = "e.umbrella-health.com"
    assert tr.type == "auth_failure" and tr.act_scope == f"sender:{sender}|provider:microsoft"
    att = _attempts(evs)
    mine = [e for e in att if e["sender_domain"] == sender]
    ms = [e for e in mine if provider(e) == "microsoft"]
    assert 0.12 < len(ms) / len(mine) < 0.30  # Microsoft: about 20 % of the sender's mail
    consumer_ms = {d for d, *_ in CONSUMER_DOMAINS if RESOLVER.resolve(d, "")[0] == "microsoft"}
    outlook_com = [e for e in ms if e["recipient_domain"] in consumer_ms]

    def fails(e: dict[str, Any]) -> bool:
        return e.get("enhanced_code") == "5.7.515"

    def share(t0: float, t1: float) -> float:
        sel = [e for e in outlook_com if tr.onset + t0 <= e["timestamp"] < tr.onset + t1]
        assert len(sel) > 20
        return _rate(sel, fails)

    assert share(-1800.0, 0.0) == 0.0
    ramp = [share(a, a + 150.0) for a in range(0, 600, 150)]
    assert ramp[0] < 0.3 and 0.6 < ramp[-1] < 1.0
    assert sorted(ramp) == ramp  # the failing share rises over the 10 min ...
    assert share(600.0, 1800.0) > 0.97  # ... to ~100 %
    assert all(fails(e) for e in att if e.get("enhanced_code") == "5.7.515")
    assert not any(fails(e) for e in att if e["sender_domain"] != sender)
    assert {e["recipient_domain"] for e in ms if fails(e)} <= consumer_ms  # not M365 tenants
    # its other providers still accept it
    assert not any(
        e["event"] == "bounced" and "authenticat" in e["response"].lower()
        for e in mine
        if provider(e) != "microsoft"
    )
    text = next(e["response"] for e in ms if fails(e))
    assert text.startswith(
        f"550 5.7.515 Access denied, sending domain [{sender}] does not meet the required "
        "authentication level."
    )


def chk_campaign_complaints(sim: Simulator, tr: Truth, evs: list[dict[str, Any]]) -> None:
    camp = "umbrella-2026-11-16-winback"
    assert tr.type == "complaint_spike" and tr.act_scope == f"campaign:{camp}|provider:yahoo"
    end = tr.end if tr.end is not None else sim.end
    delivered = {
        e["message_id"]: e["timestamp"]
        for e in evs
        if e["event"] == "delivered" and e["campaign"] == camp
    }
    in_window = {m for m, t in delivered.items() if tr.onset <= t < end}
    dl: collections.Counter[str] = collections.Counter()
    cp: collections.Counter[str] = collections.Counter()
    delays: list[float] = []
    for e in evs:
        if e["campaign"] != camp or e["message_id"] not in in_window:
            continue
        p = provider(e)
        if e["event"] == "delivered":
            dl[p] += 1
        elif e["event"] == "complained":
            cp[p] += 1
            if p == "yahoo":
                delays.append(e["timestamp"] - delivered[e["message_id"]])
    assert dl["yahoo"] > 300 and dl["microsoft"] > 300
    assert cp["yahoo"] / dl["yahoo"] > 0.1  # the spike: at Yahoo ...
    other_cp = sum(n for p, n in cp.items() if p != "yahoo")
    other_dl = sum(n for p, n in dl.items() if p != "yahoo")
    assert other_cp <= 6 and other_cp / other_dl < 0.002  # ... only chance complaints elsewhere
    assert cp["google"] == 0
    # complaints arrive minutes to hours after the delivery, stamped with their arrival
    d = np.array(delays) / 60.0
    assert d.min() >= 1.0 and 15.0 < float(np.median(d)) < 50.0 and d.max() > 60.0


def chk_normal_no_fbl(sim: Simulator, tr: Truth | None, evs: list[dict[str, Any]]) -> None:
    assert tr is None and sim.truth == []
    dl: collections.Counter[str] = collections.Counter()
    cp: collections.Counter[str] = collections.Counter()
    for e in evs:
        if e["event"] in ("delivered", "complained"):
            (dl if e["event"] == "delivered" else cp)[provider(e)] += 1
    assert dl["google"] > 10_000 and cp["google"] == 0  # Gmail: no per-message complaints
    for p in ("yahoo", "microsoft"):
        assert 0.0001 < cp[p] / dl[p] < 0.0009, (p, cp[p], dl[p])  # ~0.02-0.05 %
    for p in ("apple", "gmx", "other"):
        assert cp[p] == 0, p
    # the chance rates: Yahoo and Microsoft consumer domains only, Google none
    base = sim.effects.complaint_base
    assert base is not None
    for i, prov in enumerate(sim.dom_provider):
        if prov == "google" or not sim.dom_consumer[i]:
            assert base[i].tolist() == [0.0, 0.0], sim.dom_names[i]
    assert base[sim.dom_names.index("yahoo.com")].tolist() == [1.0e-4, 8.0e-4]
    assert base[sim.dom_names.index("outlook.com")].tolist() == [7.0e-5, 5.5e-4]


Check = Callable[[Simulator, Any, list[dict[str, Any]]], None]

#: (scenario, rate, duration_s, params, check): each new scenario produces what it claims.
NEW_CASES: list[tuple[str, float, float, dict[str, Any], Check]] = [
    (
        "ip-rate-limited-gmail",
        10.0,
        5400.0,
        {"onset_s": 2700.0, "length_s": 1800.0},
        chk_ip_rate_limited_gmail,
    ),
    (
        "pool-blocked-yahoo",
        10.0,
        5400.0,
        {"onset_s": 2700.0, "length_s": 1800.0},
        chk_pool_blocked_yahoo,
    ),
    (
        "sender-auth-microsoft-ramp",
        40.0,
        3600.0,
        {"onset_s": 1800.0},
        chk_sender_auth_ramp,
    ),
    (
        "campaign-complaints-one-provider",
        5.0,
        4 * 3600.0,
        {"onset_s": 2700.0, "length_s": 1800.0, "intensity": 0.2, "campaign_rate": 6.0},
        chk_campaign_complaints,
    ),
    ("normal-24h-gmail-no-fbl", 10.0, 8 * 3600.0, {}, chk_normal_no_fbl),
]


@pytest.mark.parametrize(("scenario", "rate", "duration_s", "params", "check"), NEW_CASES)
def test_new_scenario_produces_what_it_claims(
    scenario: str, rate: float, duration_s: float, params: dict[str, Any], check: Check
) -> None:
    sim, evs = run(scenario, rate=rate, duration_s=duration_s, params=tuple(sorted(params.items())))
    truth = sim.truth
    tr = truth[0] if truth else None
    if tr is not None and "onset_s" in params:
        assert tr.onset == sim.start + params["onset_s"]
    check(sim, tr, evs)


def test_campaign_complaints_volume_at_yahoo() -> None:
    """Default rate 50: >= 500 deliveries per 15 min of the campaign at Yahoo."""
    sim, evs = run(
        "campaign-complaints-one-provider",
        rate=50.0,
        duration_s=1500.0,
        params=(("length_s", 900.0), ("onset_s", 300.0)),
    )
    (tr,) = sim.truth
    camp = tr.act_scope.split("|")[0].split(":", 1)[1]
    n = sum(
        1
        for e in evs
        if e["event"] == "delivered"
        and e["campaign"] == camp
        and tr.onset <= e["timestamp"] < tr.onset + 900.0
        and provider(e) == "yahoo"
    )
    assert 500 <= n < 900


def test_unknown_scenario_rejected() -> None:
    with pytest.raises(ValueError):
        Simulator(SimConfig(scenario="nope"))


# ------------------------------------------------------------------ properties -------------


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**31),
    rate=st.floats(0.2, 6.0),
    scenario=st.sampled_from(SCENARIOS),
    offset_h=st.integers(0, 23),
)
def test_lifecycle_invariants(seed: int, rate: float, scenario: str, offset_h: int) -> None:
    sim = Simulator(
        SimConfig(
            seed=seed,
            rate=rate,
            scenario=scenario,
            duration_s=900.0,
            start=DEFAULT_START + offset_h * 3600.0,
            params={"onset_s": 300.0},
        )
    )
    last = -1.0
    sent: dict[str, float] = {}
    final: collections.Counter[str] = collections.Counter()
    for e in sim.iter_events():
        t = e["timestamp"]
        assert t >= last
        last = t
        mid = e["message_id"]
        if e["event"] == "sent":
            assert mid not in sent
            sent[mid] = t
            continue
        assert mid in sent and t > sent[mid]  # every message's events follow its `sent`
        if e["event"] in ("delivered", "bounced"):
            final[mid] += 1
    assert all(v == 1 for v in final.values())  # at most one terminal outcome per message
