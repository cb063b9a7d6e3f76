"""Pure, deterministic traffic generator for ``repmon simulate`` and the detection evaluation.

The model (docs/simulator.md): a fixed recipient population (consumer mailbox providers with
realistic shares plus a few hundred B2B domains behind MX operators, Zipf-sized), a handful of ESP
tenants with sender domains, campaigns and IP pools, a diurnal volume curve plus campaign bursts,
and a per-message lifecycle (``sent`` -> attempts with deferrals/retries -> ``delivered`` or
``bounced`` -> ``complained``/``opened``/``clicked``/``unsubscribed``). Scenarios overlay incidents
on that traffic and report ground truth (:class:`Truth`).

Generation is vectorised with numpy in fixed event-time steps (``SimConfig.step_s``); each step
has its own RNG stream seeded from ``(seed, step)``, so the output depends only on the config, not
on the chunk size asked for. Dicts are built only when a chunk is emitted.

Modules: ``config`` (:class:`SimConfig`, shared vocabulary), ``traffic`` (the fleet, base outcome
probabilities, the campaign calendar and volume curve), ``scenarios`` (scenario effects and
ground truth), ``lifecycle`` (messages and their attempts per step), ``output`` (event tables,
chunks, event dicts) and ``replies`` (the SMTP reply catalogue). :class:`Simulator` composes them;
this module re-exports the public names that used to be defined here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from models.sim.config import (
    BOOL,
    DEFAULT_START,
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
    KIND_NAMES,
    MINUTE,
    SimConfig,
)
from models.sim.lifecycle import BACKOFF_MIN, IMPORTED_BASE, MAX_ATTEMPTS, Lifecycle
from models.sim.output import EventOutput
from models.sim.scenarios import SCENARIOS, ScenarioBuilder, ScenarioEffects, Truth
from models.sim.traffic import (
    B2B_OPERATORS,
    CONSUMER_DOMAINS,
    DEAD_DOMAINS,
    FBL_PROVIDERS,
    GREYLIST_P,
    INVALID_PERMILLE_B2B,
    INVALID_PERMILLE_CONSUMER,
    MAILS_PER_RCPT_DAY_B2B,
    MAILS_PER_RCPT_DAY_CONSUMER,
    POOLS,
    TENANTS,
    Calendar,
    Fleet,
    OutcomeTables,
    Tenant,
    diurnal_factor,
    hash_arr,
    hash_int,
)

__all__ = [
    "B2B_OPERATORS",
    "BACKOFF_MIN",
    "BOOL",
    "CONSUMER_DOMAINS",
    "DEAD_DOMAINS",
    "DEFAULT_START",
    "F64",
    "FBL_PROVIDERS",
    "GREYLIST_P",
    "HOUR",
    "I64",
    "IMPORTED_BASE",
    "INVALID_PERMILLE_B2B",
    "INVALID_PERMILLE_CONSUMER",
    "KIND_NAMES",
    "K_BOUNCED",
    "K_CLICKED",
    "K_COMPLAINED",
    "K_DEFERRED",
    "K_DELIVERED",
    "K_OPENED",
    "K_SENT",
    "K_UNSUB",
    "MAILS_PER_RCPT_DAY_B2B",
    "MAILS_PER_RCPT_DAY_CONSUMER",
    "MAX_ATTEMPTS",
    "MINUTE",
    "POOLS",
    "SCENARIOS",
    "TENANTS",
    "SimConfig",
    "Simulator",
    "Tenant",
    "Truth",
    "diurnal_factor",
    "hash_arr",
    "hash_int",
]


class Simulator:
    """Deterministic event generator. See module docstring and docs/simulator.md.

    Composes the traffic model (``fleet``, ``outcomes``, ``calendar``), the scenario effects
    (``effects``), the message lifecycle (``lifecycle``) and the event output (``output``).
    """

    def __init__(self, config: SimConfig) -> None:
        if config.scenario not in SCENARIOS:
            raise ValueError(f"unknown scenario {config.scenario!r}; one of {', '.join(SCENARIOS)}")
        if config.rate <= 0 or config.duration_s <= 0 or config.step_s <= 0:
            raise ValueError("rate, duration_s and step_s must be positive")
        self.config = config
        self.start = float(config.start)
        self.end = self.start + float(config.duration_s)
        self.fleet = Fleet(config)
        self.outcomes = OutcomeTables(self.fleet)
        self.calendar = Calendar(config)
        builder = ScenarioBuilder(
            config, self.start, self.end, self.fleet, self.outcomes, self.calendar
        )
        self.effects: ScenarioEffects = builder.build(config.scenario, dict(config.params))
        self.lifecycle = Lifecycle(
            config, self.start, self.end, self.fleet, self.outcomes, self.calendar, self.effects
        )
        self.output = EventOutput(self.start, self.end, self.fleet, self.calendar)

    # ---------------------------------------------------------------- public info ---------
    @property
    def truth(self) -> list[Truth]:
        return list(self.effects.truth)

    def domains(self) -> list[dict[str, Any]]:
        """The recipient domain population (name, provider, operator, MX hosts, share, size)."""
        return self.fleet.domains()

    # ---------------------------------------------------------------- emission ------------
    def chunks(self, chunk_s: float = 60.0) -> Iterator[list[dict[str, Any]]]:
        """Event-time ordered chunks of events covering [start, start + duration).

        Chunk i holds the events with timestamps in [start + i*chunk_s, start + (i+1)*chunk_s);
        events after the end of the run (late outcomes of the last messages) are dropped.
        """
        yield from self.output.chunks(self.lifecycle.tables(), chunk_s)

    def iter_events(self) -> Iterator[dict[str, Any]]:
        for chunk in self.chunks(max(self.config.step_s, 300.0)):
            yield from chunk

    # ------------------------------------------------ population (read-only delegates) -----
    # The attributes the monolithic Simulator had; they now live in the fleet, the outcome
    # tables, the calendar and the scenario effects.
    @property
    def dom_names(self) -> list[str]:
        return self.fleet.dom_names

    @property
    def dom_mx(self) -> list[tuple[str, ...]]:
        return self.fleet.dom_mx

    @property
    def n_consumer(self) -> int:
        return self.fleet.n_consumer

    @property
    def n_live(self) -> int:
        return self.fleet.n_live

    @property
    def dom_consumer(self) -> BOOL:
        return self.fleet.dom_consumer

    @property
    def dom_greylist(self) -> BOOL:
        return self.fleet.dom_greylist

    @property
    def dom_dead(self) -> BOOL:
        return self.fleet.dom_dead

    @property
    def dom_provider(self) -> list[str]:
        return self.fleet.dom_provider

    @property
    def dom_operator(self) -> list[str]:
        return self.fleet.dom_operator

    @property
    def b2b_operator_label(self) -> list[str]:
        return self.fleet.b2b_operator_label

    @property
    def dom_share(self) -> F64:
        return self.fleet.dom_share

    @property
    def dom_pop(self) -> I64:
        return self.fleet.dom_pop

    @property
    def dom_invalid_permille(self) -> I64:
        return self.fleet.dom_invalid_permille

    @property
    def pool_names(self) -> list[str]:
        return self.fleet.pool_names

    @property
    def ip_names(self) -> list[str]:
        return self.fleet.ip_names

    @property
    def ip_pool(self) -> I64:
        return self.fleet.ip_pool

    @property
    def tenant_names(self) -> list[str]:
        return self.fleet.tenant_names

    @property
    def sender_names(self) -> list[str]:
        return self.fleet.sender_names

    @property
    def sender_tenant(self) -> list[int]:
        return self.fleet.sender_tenant

    def dom_kind_exchange(self, i: int) -> bool:
        return self.fleet.dom_kind_exchange(i)

    @property
    def dom_uu_reply(self) -> I64:
        return self.outcomes.dom_uu_reply

    @property
    def dom_grey_reply(self) -> I64:
        return self.outcomes.dom_grey_reply

    @property
    def dom_auth_reply(self) -> I64:
        return self.outcomes.dom_auth_reply

    @property
    def campaign_names(self) -> list[str]:
        return self.calendar.campaign_names

    @property
    def false_bounce_domains(self) -> list[str]:
        """Set only with a ``b2b-false-bounces`` scenario (else AttributeError, as before)."""
        domains = self.effects.false_bounce_domains
        if domains is None:
            raise AttributeError("'Simulator' object has no attribute 'false_bounce_domains'")
        return domains
