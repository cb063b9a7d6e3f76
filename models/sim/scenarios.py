"""Scenarios of the traffic simulator: incidents overlaid on normal traffic, with ground truth.

A scenario (docs/simulator.md, "Scenarios and ground truth") is built once per run by
:class:`ScenarioBuilder` into :class:`ScenarioEffects`: attempt effects (:class:`Effect`: replies
overriding attempt outcomes of matching messages in a time window), complaint effects
(:class:`ComplaintEffect`), other chance complaint rates, extra message streams (scenario
campaigns) and the ground truth (:class:`Truth`). The message lifecycle applies the effects per
attempt and per delivery.

Scopes in the ground truth are the pipeline's scope keys (docs/events.md, "Scopes") or, for a
cause at one mailbox provider, a *combined* scope ``<kind>:<value>|provider:<provider>``
(:func:`combined`), the form issue 11 asks the detector to produce.
"""

from __future__ import annotations

import datetime as _dt
import math
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from models.sim.config import BOOL, F64, HOUR, I64, MINUTE, SimConfig
from models.sim.replies import R
from models.sim.traffic import (
    FBL_DELAY_CLIP_S,
    FBL_DELAY_MEDIAN_S,
    FBL_DELAY_SIGMA,
    TENANTS,
    Calendar,
    Fleet,
    OutcomeTables,
    Stream,
)

SCENARIOS: Final[tuple[str, ...]] = (
    "baseline",
    "provider-outage",
    "ip-blocklisted",
    "rate-limited",
    "b2b-false-bounces",
    "complaint-spike",
    "auth-failure",
    "bad-list-import",
    "mixed",
    "ip-rate-limited-gmail",
    "pool-blocked-yahoo",
    "sender-auth-microsoft-ramp",
    "campaign-complaints-one-provider",
    "normal-24h-gmail-no-fbl",
)


def combined(scope: str, provider: str) -> str:
    """The combined scope key of ``scope`` at one mailbox provider: ``ip:x|provider:google``."""
    return f"{scope}|provider:{provider}"


@dataclass(frozen=True)
class Truth:
    """One injected incident. ``scopes``: acceptable scope keys, most precise first.

    ``onset``/``end`` are event-time epoch seconds; ``end`` is None when the incident lasts until
    the end of the run. ``act_scope`` is the one scope an experienced deliverability engineer
    would act on (throttle, pause, drain): the scope the incident should name. It is one of
    ``scopes``; left empty, it is ``scopes[0]``.
    """

    type: str
    scopes: tuple[str, ...]
    onset: float
    end: float | None
    act_scope: str = ""

    def __post_init__(self) -> None:
        if not self.scopes:
            raise ValueError("a Truth needs at least one acceptable scope")
        if not self.act_scope:
            object.__setattr__(self, "act_scope", self.scopes[0])
        elif self.act_scope not in self.scopes:
            raise ValueError(f"act_scope {self.act_scope!r} is not one of {self.scopes}")


@dataclass
class Effect:
    """Overrides attempt outcomes in a time window for matching messages.

    ``prob`` is the probability per matching attempt; with ``ramp_s`` > 0 it rises linearly from
    0 at ``onset`` to ``prob`` at ``onset + ramp_s`` (e.g. DNS caches expiring one by one).
    """

    onset: float
    end: float
    prob: float
    replies: I64  # candidate reply ids (uniform) or empty when per_domain is used
    dom_mask: BOOL | None = None
    ip_mask: BOOL | None = None
    sender_mask: BOOL | None = None
    campaigns: tuple[int, ...] = ()
    per_domain: I64 | None = None  # reply id per domain (-1 = not affected)
    valid_only: bool = False
    ramp_s: float = 0.0

    def prob_at(self, ta: F64) -> F64 | float:
        """Probability per matching attempt at times ``ta`` (the ramp applied)."""
        if self.ramp_s <= 0.0:
            return self.prob
        return np.asarray(
            self.prob * np.clip((ta - self.onset) / self.ramp_s, 0.0, 1.0), dtype=np.float64
        )


@dataclass
class ComplaintEffect:
    """Sets the complaint probability of deliveries in ``[onset, end)`` of the ``campaigns``
    (all when empty) at the domains of ``dom_mask``.

    ``delay_median_s`` (None: the normal FBL delay) and ``delay_sigma`` give these complaints
    their own lognormal delay after the delivery, clipped to ``delay_clip_s``.
    """

    onset: float
    end: float
    prob: float
    dom_mask: BOOL
    campaigns: tuple[int, ...]
    delay_median_s: float | None = None
    delay_sigma: float = FBL_DELAY_SIGMA
    delay_clip_s: tuple[float, float] = FBL_DELAY_CLIP_S

    def selects(self, rows: I64, td: F64, dom: I64, camp_all: I64) -> BOOL:
        """Which deliveries (of ``rows`` at times ``td`` to domains ``dom``) the effect covers."""
        sel = (td >= self.onset) & (td < self.end) & self.dom_mask[dom]
        if self.campaigns:
            sel &= np.isin(camp_all[rows], self.campaigns)
        return np.asarray(sel, dtype=np.bool_)


@dataclass
class ScenarioEffects:
    """What a scenario overlays on the normal traffic, and its ground truth.

    ``false_bounce_domains`` is set (sorted names) only by the ``b2b-false-bounces`` scenario.
    ``complaint_base`` replaces the chance complaint rates of ``OutcomeTables.dom_complaint``
    (``[domain, marketing]``) when set.
    """

    attempts: list[Effect] = field(default_factory=list)
    complaints: list[ComplaintEffect] = field(default_factory=list)
    complaint_base: F64 | None = None
    streams: list[Stream] = field(default_factory=list)
    truth: list[Truth] = field(default_factory=list)
    false_bounce_domains: list[str] | None = None

    def attempt_replies(
        self,
        rng: np.random.Generator,
        reply: I64,
        rows: I64,
        ta: F64,
        dom: I64,
        valid: BOOL,
        ip_all: I64,
        sender_all: I64,
        camp_all: I64,
    ) -> I64:
        """Apply the attempt effects to ``reply`` (one per attempt of ``rows`` at times ``ta``).

        ``dom`` and ``valid`` are per attempt; ``ip_all``, ``sender_all``, ``camp_all`` per
        message (indexed by ``rows``). Draws from ``rng`` for each effect active at these times.
        """
        m = len(rows)
        for ef in self.attempts:
            sel = (ta >= ef.onset) & (ta < ef.end)
            if not sel.any():
                continue
            if ef.dom_mask is not None:
                sel &= ef.dom_mask[dom]
            if ef.ip_mask is not None:
                sel &= ef.ip_mask[ip_all[rows]]
            if ef.sender_mask is not None:
                sel &= ef.sender_mask[sender_all[rows]]
            if ef.campaigns:
                sel &= np.isin(camp_all[rows], ef.campaigns)
            if ef.valid_only:
                sel &= valid
            if ef.per_domain is not None:
                sel &= ef.per_domain[dom] >= 0
            sel &= rng.random(m) < ef.prob_at(ta)
            if not sel.any():
                continue
            if ef.per_domain is not None:
                reply = np.where(sel, ef.per_domain[dom], reply)
            else:
                pick = ef.replies[rng.integers(0, len(ef.replies), m)]
                reply = np.where(sel, pick, reply)
        return reply

    def complaint_prob(self, pc: F64, rows: I64, td: F64, dom: I64, camp_all: I64) -> F64:
        """Complaint probability per delivery of ``rows`` at times ``td``, with the effects."""
        for ce in self.complaints:
            pc = np.where(ce.selects(rows, td, dom, camp_all), ce.prob, pc)
        return pc

    def complaint_delays(self, raw: F64, rows: I64, td: F64, dom: I64, camp_all: I64) -> F64:
        """Complaint delays per delivery of ``rows``, from ``raw`` lognormal draws.

        ``raw`` has the normal FBL delay's median and sigma (``traffic.FBL_DELAY_*``); the
        deliveries of a complaint effect with its own delay get the same quantile of that
        effect's distribution.
        """
        delay = np.clip(raw, *FBL_DELAY_CLIP_S)
        for ce in self.complaints:
            if ce.delay_median_s is None:
                continue
            sel = ce.selects(rows, td, dom, camp_all)
            if not sel.any():
                continue
            z = np.log(raw[sel] / FBL_DELAY_MEDIAN_S) / FBL_DELAY_SIGMA
            own = ce.delay_median_s * np.exp(ce.delay_sigma * z)
            delay[sel] = np.clip(own, *ce.delay_clip_s)
        return np.asarray(delay, dtype=np.float64)


class ScenarioBuilder:
    """Builds the :class:`ScenarioEffects` of a named scenario on a fleet (docs/simulator.md)."""

    def __init__(
        self,
        config: SimConfig,
        start: float,
        end: float,
        fleet: Fleet,
        outcomes: OutcomeTables,
        calendar: Calendar,
    ) -> None:
        self.config = config
        self.start = start
        self.end = end
        self.fleet = fleet
        self.outcomes = outcomes
        self.calendar = calendar
        self.effects = ScenarioEffects()

    def build(self, name: str, p: dict[str, Any]) -> ScenarioEffects:
        """Add scenario ``name`` with parameters ``p``; returns the effects built so far.

        Scenario campaigns are added to the calendar's campaign table.
        """
        self._build_scenario(name, p)
        return self.effects

    def _window(
        self, params: dict[str, Any], onset_frac: float, length: float | None
    ) -> tuple[float, float, float | None]:
        dur = self.end - self.start
        onset_s = params.get("onset_s")
        onset = self.start + (float(onset_s) if onset_s is not None else onset_frac * dur)
        if "length_s" in params:
            ln = params["length_s"]
            length = None if ln is None else float(ln)
        end = math.inf if length is None else onset + length
        truth_end = None if (length is None or end >= self.end) else end
        return onset, end, truth_end

    def _dom_mask_provider(self, provider: str) -> BOOL:
        return np.array([p == provider for p in self.fleet.dom_provider], dtype=np.bool_)

    def _dom_mask_operator(self, operator: str) -> BOOL:
        return np.array([o == operator for o in self.fleet.dom_operator], dtype=np.bool_)

    def _ids(self, idx: list[int]) -> I64:
        return np.array(idx, dtype=np.int64)

    def _build_scenario(self, name: str, p: dict[str, Any]) -> None:
        if name == "baseline":
            return
        if name == "mixed":
            self._build_mixed(p)
            return
        builder = {
            "provider-outage": self._sc_outage,
            "ip-blocklisted": self._sc_block,
            "rate-limited": self._sc_rate_limited,
            "b2b-false-bounces": self._sc_false_bounces,
            "complaint-spike": self._sc_complaints,
            "auth-failure": self._sc_auth,
            "bad-list-import": self._sc_bad_list,
            "ip-rate-limited-gmail": self._sc_ip_rate_limited_gmail,
            "pool-blocked-yahoo": self._sc_pool_blocked_yahoo,
            "sender-auth-microsoft-ramp": self._sc_sender_auth_microsoft_ramp,
            "campaign-complaints-one-provider": self._sc_campaign_complaints_one_provider,
            "normal-24h-gmail-no-fbl": self._sc_normal_gmail_no_fbl,
        }[name]
        builder(p)

    def _build_mixed(self, p: dict[str, Any]) -> None:
        dur = self.end - self.start
        step = min(40 * MINUTE, 0.09 * dur)
        plan: list[tuple[str, float, dict[str, Any]]] = [
            ("provider-outage", 0.10, {"provider": "yahoo", "intensity": 0.8}),
            ("rate-limited", 0.22, {"provider": "google", "pool": "shared-2"}),
            ("ip-blocklisted", 0.34, {"provider": "microsoft", "ip": "192.0.2.13"}),
            ("complaint-spike", 0.64, {"provider": "microsoft", "tenant": "umbrella"}),
            ("bad-list-import", 0.76, {"tenant": "hooli"}),
            ("auth-failure", 0.88, {"sender": "news.initech.com"}),
        ]
        if dur >= 4 * HOUR:  # false bounces need >= 3 h of history (known-good recipients)
            plan.append(("b2b-false-bounces", max(0.5, 3 * HOUR / dur), {"operator": "mimecast"}))
        for sc, frac, sp in plan:
            sp = {**sp, "onset_s": frac * dur, "length_s": step}
            self._build_scenario(sc, sp)
        self.effects.truth.sort(key=lambda t: t.onset)

    def _sc_outage(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "microsoft"))
        onset, end, tend = self._window(p, 1 / 3, 30 * MINUTE)
        mask = self._dom_mask_provider(prov)
        if prov == "microsoft":
            reps = ["ms_unavail", "ms_unavail", "timeout", "ms_busy"]
        elif prov == "google":
            reps = ["g_temp", "g_temp", "timeout", "conn_refused"]
        elif prov == "yahoo":
            reps = ["y_temp", "timeout", "timeout", "conn_refused"]
        else:
            reps = ["tempfail_generic", "timeout", "conn_refused"]
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 0.8)),
                self._ids([R[k] for k in reps]),
                dom_mask=mask,
            )
        )
        # Act on: the provider (extend queue lifetimes, back off); nothing of ours is at fault.
        self.effects.truth.append(
            Truth(
                "provider_outage",
                (f"provider:{prov}", f"mx:{prov}"),
                onset,
                tend,
                act_scope=f"provider:{prov}",
            )
        )

    def _ip_index(self, ip: str) -> int:
        if ip not in self.fleet.ip_names:
            raise ValueError(f"unknown sending IP {ip!r}; one of {self.fleet.ip_names}")
        return self.fleet.ip_names.index(ip)

    def _sc_block(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "microsoft"))
        ip = str(p.get("ip", "192.0.2.12"))
        ii = self._ip_index(ip)
        onset, end, tend = self._window(p, 1 / 3, None)
        ip_mask = np.zeros(len(self.fleet.ip_names), dtype=np.bool_)
        ip_mask[ii] = True
        key = {"microsoft": "ms_block", "google": "g_unsolicited", "att": "att_block"}.get(
            prov, "spamhaus"
        )
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 0.97)),
                self._ids([R[key]]),
                dom_mask=self._dom_mask_provider(prov),
                ip_mask=ip_mask,
            )
        )
        pool = self.fleet.pool_names[int(self.fleet.ip_pool[ii])]
        # Act on: the IP toward that provider only (drain it there, request delisting); the IP's
        # mail to other providers is fine.
        act = combined(f"ip:{ip}", prov)
        scopes = (act, f"ip:{ip}", combined(f"pool:{pool}", prov), f"pool:{pool}")
        self.effects.truth.append(Truth("block", scopes, onset, tend, act_scope=act))

    def _sc_rate_limited(self, p: dict[str, Any]) -> None:
        prov = str(p.get("provider", "google"))
        pool = str(p.get("pool", "shared-1"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        if "ip" in p:
            ips = [self._ip_index(str(p["ip"]))]
        else:
            pi = self.fleet.pool_names.index(pool)
            ips = np.flatnonzero(self.fleet.ip_pool == pi).tolist()
        ip_mask = np.zeros(len(self.fleet.ip_names), dtype=np.bool_)
        ip_mask[ips] = True
        key = {
            "google": "g_rate",
            "yahoo": "y_tss04",
            "microsoft": "ms_rate",
            "apple": "a_rate",
            "comcast": "c_rate",
        }.get(prov, "tempfail_generic")
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 0.5)),
                self._ids([R[key]]),
                dom_mask=self._dom_mask_provider(prov),
                ip_mask=ip_mask,
            )
        )
        # Act on: the throttled IPs toward that provider: the pool's (or the one IP's) rate to
        # that provider, not all mail to the provider, not the pool's mail elsewhere.
        ip_scopes = [f"ip:{self.fleet.ip_names[i]}" for i in ips]
        scopes = [combined(s, prov) for s in ip_scopes] + ip_scopes
        if "ip" not in p:
            scopes = [combined(f"pool:{pool}", prov), f"pool:{pool}", *scopes]
        scopes.append(f"provider:{prov}")
        self.effects.truth.append(
            Truth("rate_limited", tuple(scopes), onset, tend, act_scope=scopes[0])
        )

    def _sc_false_bounces(self, p: dict[str, Any]) -> None:
        op = str(p.get("operator", "mimecast"))
        dur = self.end - self.start
        frac_default = max(3 * HOUR / dur, 0.5) if dur >= 4 * HOUR else 0.5
        onset, end, tend = self._window(p, frac_default, 90 * MINUTE)
        opmask = self._dom_mask_operator(op) & ~self.fleet.dom_consumer
        cand = np.flatnonzero(opmask)
        if len(cand) == 0:
            raise ValueError(f"no B2B domains behind operator {op!r}")
        fraction = float(p.get("fraction", 0.5))
        rng = np.random.default_rng([self.config.seed, 9_000_001])
        k = max(1, round(fraction * len(cand)))
        # Always include the largest domain of the operator so the signal has volume.
        order = cand[np.argsort(-self.fleet.dom_share[cand])]
        chosen = [int(order[0]), *rng.permutation(order[1:]).tolist()[: k - 1]]
        dmask = np.zeros(len(self.fleet.dom_names), dtype=np.bool_)
        dmask[chosen] = True
        per = np.where(dmask, self.outcomes.dom_uu_reply, -1).astype(np.int64)
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 0.7)),
                np.zeros(0, dtype=np.int64),
                dom_mask=dmask,
                per_domain=per,
                valid_only=True,
            )
        )
        domains = sorted(self.fleet.dom_names[i] for i in chosen)
        self.effects.false_bounce_domains = domains
        # Act on: the MX operator (do not suppress its user-unknown bounces, hold the mail):
        # one scope covering all affected domains, whose set is not known in advance.
        scopes = (f"mx:{op}", *(f"domain:{d}" for d in domains))
        self.effects.truth.append(
            Truth("false_hard_bounces", scopes, onset, tend, act_scope=f"mx:{op}")
        )

    def _scenario_campaign(self, tenant: str, kind: str, onset: float) -> tuple[int, int]:
        if tenant not in self.fleet.tenant_names:
            raise ValueError(f"unknown tenant {tenant!r}; one of {self.fleet.tenant_names}")
        ti = self.fleet.tenant_names.index(tenant)
        date = _dt.datetime.fromtimestamp(onset, tz=_dt.UTC).strftime("%Y-%m-%d")
        return ti, self.calendar.campaign(f"{tenant}-{date}-{kind}")

    def _sc_complaints(self, p: dict[str, Any]) -> None:
        """A scenario campaign whose complaints at one provider jump from the onset.

        Extra parameters: ``lead_s`` (the campaign starts this long before the onset, 45 min),
        ``delay_median_s`` / ``delay_sigma`` (the complaints' own delay; default the normal FBL
        delay).
        """
        prov = str(p.get("provider", "yahoo"))
        tenant = str(p.get("tenant", "acme"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        ti, c = self._scenario_campaign(tenant, str(p.get("campaign_kind", "flash-sale")), onset)
        crate = float(p.get("campaign_rate", 0.15 * self.config.rate))
        lead = float(p.get("lead_s", 45 * MINUTE))
        stop = self.end if math.isinf(end) else end
        self.effects.streams.append(
            Stream(ti, c, max(self.start, onset - lead), stop, crate, False, True)
        )
        dmed = p.get("delay_median_s")
        self.effects.complaints.append(
            ComplaintEffect(
                onset,
                end,
                float(p.get("intensity", 0.01)),
                self._dom_mask_provider(prov),
                (c,),
                delay_median_s=None if dmed is None else float(dmed),
                delay_sigma=float(p.get("delay_sigma", FBL_DELAY_SIGMA)),
                delay_clip_s=(
                    float(p.get("delay_min_s", FBL_DELAY_CLIP_S[0])),
                    float(p.get("delay_max_s", FBL_DELAY_CLIP_S[1])),
                ),
            )
        )
        camp = self.calendar.campaign_names[c]
        # Act on: the campaign at that provider (pause it there); its mail elsewhere draws the
        # usual complaints.
        act = combined(f"campaign:{camp}", prov)
        self.effects.truth.append(
            Truth(
                "complaint_spike",
                (
                    act,
                    f"campaign:{camp}",
                    combined(f"tenant:{tenant}", prov),
                    f"tenant:{tenant}",
                    f"provider:{prov}",
                ),
                onset,
                tend,
                act_scope=act,
            )
        )

    def _sender_mask(self, sender: str) -> BOOL:
        """The fleet's senders as a mask with only ``sender`` set (ValueError: unknown)."""
        if sender not in self.fleet.sender_names:
            raise ValueError(f"unknown sender domain {sender!r}; one of {self.fleet.sender_names}")
        smask = np.zeros(len(self.fleet.sender_names), dtype=np.bool_)
        smask[self.fleet.sender_names.index(sender)] = True
        return smask

    def _sc_auth(self, p: dict[str, Any]) -> None:
        sender = str(p.get("sender", "mail.initech.com"))
        smask = self._sender_mask(sender)
        onset, end, tend = self._window(p, 1 / 3, None)
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 0.95)),
                np.zeros(0, dtype=np.int64),
                sender_mask=smask,
                per_domain=self.outcomes.dom_auth_reply,
            )
        )
        si = self.fleet.sender_names.index(sender)
        tenant = self.fleet.tenant_names[self.fleet.sender_tenant[si]]
        scopes = [f"sender:{sender}"]
        if len(TENANTS[self.fleet.sender_tenant[si]].senders) == 1:
            scopes.append(f"tenant:{tenant}")
        # Narrower acceptable scopes: the sender at each provider that rejects it.
        provs = sorted(
            {self.fleet.dom_provider[i] for i in np.flatnonzero(self.outcomes.dom_auth_reply >= 0)}
        )
        scopes += [combined(f"sender:{sender}", pv) for pv in provs]
        # Act on: the sender domain (pause its stream, fix DNS): it fails at every big provider.
        self.effects.truth.append(
            Truth("auth_failure", tuple(scopes), onset, tend, act_scope=f"sender:{sender}")
        )

    def _sc_bad_list(self, p: dict[str, Any]) -> None:
        tenant = str(p.get("tenant", "initech"))
        onset, end, tend = self._window(p, 1 / 3, 60 * MINUTE)
        ti, c = self._scenario_campaign(tenant, str(p.get("campaign_kind", "imported-list")), onset)
        crate = float(p.get("campaign_rate", 0.1 * self.config.rate))
        stop = self.end if math.isinf(end) else end
        invalid = float(p.get("intensity", 0.12))
        self.effects.streams.append(
            Stream(ti, c, onset, stop, crate, False, True, imported=invalid, dead_share=0.03)
        )
        camp = self.calendar.campaign_names[c]
        # Act on: the campaign (pause it, suppress its bounces): the list is bad everywhere.
        self.effects.truth.append(
            Truth(
                "hard_bounce_spike",
                (f"campaign:{camp}", f"tenant:{tenant}"),
                onset,
                tend,
                act_scope=f"campaign:{camp}",
            )
        )

    # ------------------------------------------------ issue 11: the scope to act on -------
    def _sc_ip_rate_limited_gmail(self, p: dict[str, Any]) -> None:
        """Gmail rate-limits ONE sending IP (421-4.7.28); its pool-mates and other providers
        are fine. A large tenant's dedicated IP by default."""
        q = {"provider": "google", "ip": "203.0.113.6", "intensity": 0.5, "length_s": 5400.0}
        self._sc_rate_limited({**q, **p})

    def _sc_pool_blocked_yahoo(self, p: dict[str, Any]) -> None:
        """Yahoo defers every IP of ONE pool with ``421 4.7.0 [TSS04]`` (reputation of the pool's
        shared traffic); the other pools and other providers are fine. TSS04 is a throttle-class
        deferral (docs/classification.md), so the incident type is ``rate_limited``."""
        q = {"provider": "yahoo", "pool": "shared-2", "intensity": 0.8, "length_s": 7200.0}
        self._sc_rate_limited({**q, **{k: v for k, v in p.items() if k != "ip"}})

    def _sc_sender_auth_microsoft_ramp(self, p: dict[str, Any]) -> None:
        """Outlook.com (consumer Microsoft domains) starts rejecting ONE sender domain with
        ``550 5.7.515``; the failing share ramps up over ``ramp_s`` (600 s) as resolvers' caches
        of the broken DNS record expire. Other providers and Microsoft 365 tenants accept."""
        sender = str(p.get("sender", "e.umbrella-health.com"))
        prov = "microsoft"
        smask = self._sender_mask(sender)
        onset, end, tend = self._window(p, 1 / 3, None)
        dmask = self._dom_mask_provider(prov) & self.fleet.dom_consumer
        self.effects.attempts.append(
            Effect(
                onset,
                end,
                float(p.get("intensity", 1.0)),
                self._ids([R["ms_auth"]]),
                dom_mask=dmask,
                sender_mask=smask,
                ramp_s=float(p.get("ramp_s", 600.0)),
            )
        )
        act = combined(f"sender:{sender}", prov)
        self.effects.truth.append(
            Truth("auth_failure", (act, f"sender:{sender}"), onset, tend, act_scope=act)
        )

    def _sc_campaign_complaints_one_provider(self, p: dict[str, Any]) -> None:
        """ONE campaign draws complaints at ONE provider with per-message feedback (Yahoo CFL):
        a win-back campaign to a lapsed segment, >= 500 Yahoo deliveries per 15 min at rate 50.
        Complaints arrive minutes to hours after delivery (median 30 min, sigma 1.2)."""
        q: dict[str, Any] = {
            "provider": "yahoo",
            "tenant": "umbrella",
            "campaign_kind": "winback",
            "intensity": 0.01,
            "campaign_rate": 0.12 * self.config.rate,
            "length_s": 3600.0,
            "lead_s": 1800.0,
            "delay_median_s": 1800.0,
            "delay_sigma": 1.2,
            "delay_min_s": 60.0,
            "delay_max_s": 24 * HOUR,
        }
        self._sc_complaints({**q, **p})

    def _sc_normal_gmail_no_fbl(self, p: dict[str, Any]) -> None:
        """Normal traffic, no incident: Gmail (and the other non-FBL providers) send no
        per-message complaints; Yahoo and Microsoft send chance complaints at realistic low
        rates. ``complaint_rates``: {provider: (transactional, marketing)} per delivery."""
        rates: dict[str, tuple[float, float]] = {
            "yahoo": (1.0e-4, 8.0e-4),
            "microsoft": (7.0e-5, 5.5e-4),
            **dict(p.get("complaint_rates", {})),
        }
        base = self.outcomes.dom_complaint.copy()
        for prov, (tr, mk) in rates.items():
            rows = self._dom_mask_provider(prov) & self.outcomes.dom_fbl
            base[rows] = (float(tr), float(mk))
        self.effects.complaint_base = base
