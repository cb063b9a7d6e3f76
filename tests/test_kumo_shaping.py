"""KumoMTA compatibility (models/act/kumo.py): repmon's decisions as the shaping overlay and the
suspensions that kumod's shaping helper reads from tsa-daemon.

The golden files in tests/data/kumo/ were built from the formats tsa-daemon serves (KumoMTA
repository: crates/tsa-daemon/src/http_server.rs and state.rs, crates/kumo-api-types/src/tsa.rs,
assets/policy-extras/shaping.lua): regenerate them with ``REPMON_UPDATE_GOLDEN=1`` after an
intended change and review the diff.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.act.kumo import (
    HEADER,
    KumoConfig,
    KumoConfigError,
    KumoPlan,
    SuspensionFeed,
    ThrottleSpec,
    kumo_plan,
    load_kumo_config,
    loads_kumo_config,
    parse_throttle_spec,
    scale_limit,
    scale_throttle_spec,
    shaping_toml,
    subscription_items,
    suspensions_json,
)
from models.act.throttle_record import ThrottleRecord

DATA = Path(__file__).resolve().parent / "data" / "kumo"
NOW = 1_794_794_760.0

#: field names and order of tsa-daemon's types (crates/kumo-api-types/src/tsa.rs)
READY_Q_FIELDS = ["rule_hash", "site_name", "reason", "source", "expires"]
SCHED_Q_FIELDS = ["rule_hash", "tenant", "domain", "campaign", "reason", "expires"]
RFC3339_Z = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def decisions() -> list[ThrottleRecord]:
    lines = (DATA / "decisions.jsonl").read_text().splitlines()
    return [ThrottleRecord.from_json(json.loads(ln)) for ln in lines if ln.strip()]


def config() -> KumoConfig:
    return load_kumo_config(DATA / "kumo.toml")


def plan() -> KumoPlan:
    return kumo_plan(decisions(), config(), NOW)


def rendered() -> dict[str, str]:
    p = plan()
    return {
        "shaping.toml": shaping_toml(p),
        "suspended.json": json.dumps(suspensions_json(p), indent=2) + "\n",
        "subscribe_event_v1.jsonl": "".join(json.dumps(i) + "\n" for i in subscription_items(p)),
        "subscribe_suspension_v1.jsonl": "".join(
            json.dumps(i) + "\n" for i in subscription_items(p, legacy=True)
        ),
    }


@pytest.mark.parametrize("name", sorted(rendered()))
def test_golden_files(name: str) -> None:
    got = rendered()[name]
    path = DATA / name
    if os.environ.get("REPMON_UPDATE_GOLDEN"):
        path.write_text(got)
    assert got == path.read_text(), f"{name} differs from the golden file (REPMON_UPDATE_GOLDEN=1)"


# ---------------------------------------------------------------------------- the overlay
def test_overlay_round_trips_through_a_toml_parser() -> None:
    text = shaping_toml(plan())
    doc = tomllib.loads(text)
    known = {"max_message_rate", "max_connection_rate", "connection_limit"}
    n = 0
    for domain, entry in doc.items():
        assert isinstance(entry["mx_rollup"], bool), domain
        assert set(entry) <= {"mx_rollup", "sources"} | known, domain
        for source, opts in entry.get("sources", {}).items():
            assert opts and set(opts) <= known, (domain, source)
            for k, v in opts.items():
                n += 1
                if k == "connection_limit":
                    assert isinstance(v, int) and v >= 1
                else:
                    assert str(parse_throttle_spec(v)) == v  # a valid, canonical Kumo rate
    assert n == len(plan().overrides)
    assert text.startswith(f"{HEADER}\n# Number of entries: {n}\n")
    assert text.endswith(f"{HEADER}\n# Number of entries: {n}\n")
    # each option carries its reason and expiry, as tsa-daemon writes them
    assert text.count("# reason: repmon ") == n == text.count("# expires: ")


def test_overlay_values() -> None:
    doc = tomllib.loads(shaping_toml(plan()))
    gmail = doc["gmail.com"]
    assert gmail["mx_rollup"] is True  # a destination's shaping domain: its MX site
    # ip-1 to Google: the IP's own decision (x0.35) is tighter than the provider's (x0.7), of
    # ip-1's normal 20000/h; the other sources get the provider's x0.7 of Google's 10000/h
    assert gmail["sources"]["ip-1"] == {"max_message_rate": "7000/h", "connection_limit": 7}
    assert gmail["sources"]["ip-2"] == {"max_message_rate": "7000/h", "connection_limit": 14}
    # 5/s x 0.25 = 1.25/s, written exactly in a longer unit
    assert doc["yahoo.com"]["sources"]["ip-3"]["max_message_rate"] == "75/m"
    # a pool at a provider: only the pool's sources, every shaping domain of the provider
    assert (
        set(doc["outlook.com"]["sources"]) == {"ip-2", "ip-3"} == set(doc["hotmail.com"]["sources"])
    )
    assert doc["outlook.com"]["sources"]["ip-2"]["max_connection_rate"] == "50/m"
    # a recipient domain: that domain only (mx_rollup = false), every source
    assert doc["example.it"]["mx_rollup"] is False
    assert set(doc["example.it"]["sources"]) == {"ip-1", "ip-2", "ip-3"}
    # an MX operator through its configured representative domain
    assert doc["b2b-customer.example"]["sources"]["ip-1"]["max_message_rate"] == "500/h"
    # expired and normal decisions are not in it
    assert "icloud.com" not in doc and "comcast.net" not in doc


def test_unmapped_decisions_are_reported() -> None:
    assert plan().unmapped == (
        ("ip:198.51.100.1", "no Kumo egress source for IP '198.51.100.1'"),
        ("tenant:gamma", "Kumo cannot rate-limit a tenant: only a pause maps"),
    )


def test_an_empty_plan_is_a_valid_empty_overlay() -> None:
    p = kumo_plan({}, config(), NOW)
    text = shaping_toml(p)
    assert tomllib.loads(text) == {}
    assert "# Number of entries: 0" in text
    assert suspensions_json(p) == {"ready_q": [], "sched_q": []}
    assert subscription_items(p) == []


def test_only_decisions_in_force_count() -> None:
    recs = decisions()
    later = kumo_plan(recs, config(), NOW + 3600)  # everything expired by then
    assert later.overrides == () and later.ready_q == () and later.sched_q == ()
    by_scope = {r.scope: r for r in recs}
    assert kumo_plan(by_scope, config(), NOW) == plan()  # a mapping works as well as a list


def test_entry_level_options_without_named_sources() -> None:
    cfg = loads_kumo_config(
        '[kumo]\nprovider_table = false\n[destinations.google]\nshaping_domains = ["gmail.com"]\n'
        '[normal.default]\nmax_message_rate = "100/s"\n'
    )
    r = ThrottleRecord("provider:google", "throttled", 0.5, "opened", None, NOW, NOW + 60)
    doc = tomllib.loads(shaping_toml(kumo_plan([r], cfg, NOW)))
    assert doc == {"gmail.com": {"mx_rollup": True, "max_message_rate": "50/s"}}


def test_provider_table_supplies_the_domains_of_unconfigured_providers() -> None:
    cfg = loads_kumo_config(
        '[sources]\n"10.0.0.1" = "s1"\n[normal.default]\nmax_message_rate = "60/m"\n'
    )
    r = ThrottleRecord("provider:google", "throttled", 0.5, "opened", None, NOW, NOW + 60)
    doc = tomllib.loads(shaping_toml(kumo_plan([r], cfg, NOW)))
    assert set(doc) == {"gmail.com", "googlemail.com"}
    assert doc["gmail.com"]["sources"]["s1"] == {"max_message_rate": "30/m"}
    off = loads_kumo_config("[kumo]\nprovider_table = false\n")
    assert kumo_plan([r], off, NOW).unmapped == (
        ("provider:google", "no Kumo destination for 'google'"),
    )


def test_an_ip_everywhere_reaches_every_destination_for_its_source() -> None:
    r = ThrottleRecord("ip:203.0.113.7", "throttled", 0.5, "opened", None, NOW, NOW + 60)
    p = kumo_plan([r], config(), NOW)
    assert {(o.domain, o.source) for o in p.overrides} == {
        (d, "ip-2")
        for d in ("gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "b2b-customer.example")
    }
    paused = ThrottleRecord("ip:203.0.113.7", "paused", 0.0, "opened", None, NOW, NOW + 60)
    p = kumo_plan([paused], config(), NOW)
    assert p.overrides == ()
    assert {s.site_name.split("->")[1] for s in p.ready_q} == {
        "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client",
        "(mta5|mta6|mta7).am0.yahoodns.net@smtp_client",
        "outlook-com.olc.protection.outlook.com@smtp_client",
        "hotmail-com.olc.protection.outlook.com@smtp_client",
    }
    assert {s.source for s in p.ready_q} == {"ip-2"}
    dom = ThrottleRecord("domain:example.it", "paused", 0.0, "opened", None, NOW, NOW + 60)
    assert kumo_plan([dom], config(), NOW).unmapped == (
        ("domain:example.it", "Kumo cannot suspend one recipient domain"),
    )


def test_a_recipient_domain_never_widens_to_its_site() -> None:
    cfg = config()
    recs = [
        ThrottleRecord("domain:gmail.com", "throttled", 0.5, "opened", None, NOW, NOW + 60),
        ThrottleRecord("provider:google", "throttled", 0.7, "opened", None, NOW, NOW + 60),
    ]
    p = kumo_plan(recs, cfg, NOW)
    assert {(o.domain, o.mx_rollup, o.scope) for o in p.overrides} == {
        ("gmail.com", True, "provider:google")
    }
    assert ("domain:gmail.com", "'gmail.com' is also a site entry (mx_rollup)") in p.unmapped


# ---------------------------------------------------------------------------- suspensions
def test_suspensions_follow_tsa_daemons_types() -> None:
    body = suspensions_json(plan())
    assert list(body) == ["ready_q", "sched_q"]
    assert body["ready_q"] and body["sched_q"]
    for s in body["ready_q"]:
        assert list(s) == READY_Q_FIELDS
        assert RFC3339_Z.match(s["expires"])
        assert re.fullmatch(r"[0-9a-f]{64}", s["rule_hash"])
        src, _, rest = s["site_name"].partition("->")
        assert src == s["source"] and rest.endswith("@smtp_client")
    for s in body["sched_q"]:
        assert list(s) == SCHED_Q_FIELDS
        assert RFC3339_Z.match(s["expires"])
        assert isinstance(s["tenant"], str) and isinstance(s["domain"], str)
        assert s["campaign"] is None or isinstance(s["campaign"], str)
    # sorted as tsa-daemon exports them: by expiry, then source / tenant, domain, campaign
    rq = [(s["expires"], s["source"]) for s in body["ready_q"]]
    assert rq == sorted(rq)
    sq = [(s["expires"], s["tenant"], s["domain"], s["campaign"] or "") for s in body["sched_q"]]
    assert sq == sorted(sq)


def test_suspension_targets_and_expiry() -> None:
    p = plan()
    (rq,) = p.ready_q  # the IP paused without probes at Yahoo: its ready queue to Yahoo's site
    assert rq.site_name == "ip-3->(mta5|mta6|mta7).am0.yahoodns.net@smtp_client"
    assert rq.expires == NOW + 300  # capped at suspension_ttl_s: re-sent while it holds
    sched = {(s.tenant, s.domain, s.campaign): s for s in p.sched_q}
    assert set(sched) == {
        ("acme", "gmail.com", "spring-sale"),  # campaign at Google, its tenant from [campaigns]
        ("acme", "googlemail.com", "spring-sale"),
        ("acme", "gmail.com", None),  # the sender at Google, as its tenant ([senders])
        ("acme", "googlemail.com", None),
        ("beta", "yahoo.com", None),  # tenant at Yahoo: Yahoo's recipient domains
        ("beta", "aol.com", None),
    }
    # the tenant's decision expires before the TTL: the suspension ends with it
    assert sched[("beta", "yahoo.com", None)].expires == 1_794_794_900.0


def test_subscription_messages() -> None:
    items = subscription_items(plan())
    assert [next(iter(i)) for i in items] == ["ReadyQSuspension"] + ["SchedQSuspension"] * 6
    legacy = subscription_items(plan(), legacy=True)
    assert [next(iter(i)) for i in legacy] == ["ReadyQ"] + ["SchedQ"] * 6
    assert [next(iter(i.values())) for i in items] == [next(iter(i.values())) for i in legacy]


def test_suspend_at_or_below_turns_probing_pauses_into_suspensions() -> None:
    text = (
        (DATA / "kumo.toml")
        .read_text()
        .replace("suspend_at_or_below = 0.0", "suspend_at_or_below = 0.05")
    )
    cfg = loads_kumo_config(text)
    r = ThrottleRecord(
        "ip:203.0.113.6|provider:google", "paused", 0.02, "opened", None, NOW, NOW + 600
    )
    p = kumo_plan([r], cfg, NOW)
    assert p.overrides == ()
    assert [s.site_name for s in p.ready_q] == [
        "ip-1->(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com@smtp_client"
    ]


def test_suspension_feed_sends_new_changed_and_periodic_items() -> None:
    feed = SuspensionFeed(resend_every_s=60)
    p = plan()
    first = feed.due(p, NOW)
    assert first == subscription_items(p)  # the initial burst: everything in force
    assert feed.due(p, NOW + 10) == []  # nothing new
    r = ThrottleRecord(
        "ip:203.0.113.7|provider:yahoo", "paused", 0.0, "opened", None, NOW, NOW + 600
    )
    p2 = kumo_plan([*decisions(), r], config(), NOW + 20)
    new = feed.due(p2, NOW + 20)
    assert [next(iter(i.values()))["source"] for i in new] == ["ip-2"]
    assert feed.due(p2, NOW + 70) == subscription_items(p2)  # the periodic re-send


# ---------------------------------------------------------------------------- rates
@pytest.mark.parametrize(
    ("spec", "factor", "want"),
    [
        ("1000/h", 0.35, "350/h"),
        ("1,000/h", 1.0, "1000/h"),
        ("10/s", 0.25, "150/m"),
        ("5/s", 0.25, "75/m"),
        ("100/min", 0.5, "50/m"),
        ("7/s", 0.1, "42/m"),
        ("10/s", 0.05, "30/m"),
        ("20000/h", 0.35, "7000/h"),
        ("3/h", 0.1, "7/d"),
        ("1/h", 0.02, "1/180000s"),
        ("5/30m", 0.5, "5/h"),
        ("local:10/s,max_burst=4", 0.5, "local:5/s,max_burst=2"),
        ("100/s", 0.333, "1998/m"),
    ],
)
def test_scale_throttle_spec(spec: str, factor: float, want: str) -> None:
    got = scale_throttle_spec(parse_throttle_spec(spec), factor)
    assert got is not None and str(got) == want
    assert parse_throttle_spec(want) == got


def test_a_zero_factor_has_no_rate() -> None:
    assert scale_throttle_spec(parse_throttle_spec("100/s"), 0.0) is None
    assert scale_limit(10, 0.25) == 3 and scale_limit(10, 0.0) == 1 and scale_limit(10, 1.0) == 10


@given(
    st.integers(1, 1_000_000),
    st.sampled_from([1, 60, 3600, 86400, 1800, 7]),
    st.floats(0.001, 1.0),
)
def test_a_scaled_rate_never_exceeds_the_exact_product(limit: int, period: int, f: float) -> None:
    spec = ThrottleSpec(limit, period)
    got = scale_throttle_spec(spec, f)
    assert got is not None and got.limit >= 1
    exact = limit * f / period
    assert got.per_second <= exact * (1 + 1e-9)
    assert got.per_second >= exact * 0.5
    assert parse_throttle_spec(str(got)) == got


@pytest.mark.parametrize(
    "bad", ["100", "0/s", "10/fortnight", "ten/s", "10/0s", "10/s,max_burst=x"]
)
def test_invalid_rates(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_throttle_spec(bad)


# ---------------------------------------------------------------------------- configuration
@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[kumo]\nttl = 3\n", "kumo.ttl"),
        ("[other]\n", "unknown key"),
        ('[normal.default]\nmax_message_rate = "lots"\n', "normal.default.max_message_rate"),
        ("[normal.default]\nconnection_limit = 0\n", "integer >= 1"),
        (
            '[normal.google.sources.s1]\nidle_timeout = "5s"\n',
            "normal.google.sources.s1.idle_timeout",
        ),
        ('[destinations.google]\nsites = "x"\n', "destinations.google.sites"),
        ("[destinations.google]\nmatch = []\n", "unknown key"),
        ('[pools]\nshared = ["a", 3]\n', r"pools.shared\[1\]"),
        ("[pools]\nshared = []\n", "at least one"),
        ("[kumo]\nsuspension_ttl_s = 0\n", "kumo.suspension_ttl_s"),
        ("[kumo]\nsuspend_at_or_below = true\n", "kumo.suspend_at_or_below"),
        ("[kumo]\nprovider_table = 1\n", "kumo.provider_table"),
        ('[sources]\n"10.0.0.1" = 3\n', "sources.10.0.0.1"),
        ("[kumo\n", "invalid TOML"),
    ],
)
def test_config_errors(text: str, words: str) -> None:
    with pytest.raises(KumoConfigError, match=words):
        loads_kumo_config(text, "kumo.toml")


def test_the_test_config_is_the_documented_example() -> None:
    """docs/throttle.md shows the mapping file of these tests; keep them the same."""
    doc = (Path(__file__).resolve().parents[1] / "docs" / "throttle.md").read_text()
    m = re.search(r"```toml\n(# repmon -> KumoMTA mapping.*?)```", doc, re.S)
    assert m, "docs/throttle.md shows the KumoMTA mapping example"
    cfg: dict[str, Any] = tomllib.loads(m.group(1))
    assert cfg == tomllib.loads((DATA / "kumo.toml").read_text())
    assert loads_kumo_config(m.group(1)) == config()
