"""Closed-loop throttle evaluation: a fleet that obeys a throttle and a provider that answers what
the fleet sends (issue 13, docs/evaluation.md "Closed-loop throttle evaluation").

The open-loop simulator (``simulator.py``) writes its events whatever anybody decides; here the
sending fleet and the provider are stepped together, one detection tick (``DETECT_EVERY_S``, 60 s
of event time) at a time, so that what a controller decides changes what the provider sees:

* **Demand** (:class:`Demand`): new messages at a flat rate (no diurnal curve, no campaign
  bursts, so that "normal volume" is one number), drawn from the simulator's population
  (``traffic.Fleet``: recipient domains and their MX hosts, tenants, sender domains, pools, IPs;
  each tenant's transactional campaign). The demand's random stream does not depend on the
  controller: every controller faces the same messages.
* **Fleet** (:class:`ClosedLoop`): a queue of messages. In each step the messages that are due
  (new ones, retries whose time came, and those held back earlier) are sent, except where the
  controller's limits of the step say otherwise: the controller maps each due message to a
  *bucket* (a decision's scope for repmon, an egress path for KumoMTA) with a rate in messages
  per second, computed from the decisions published at the end of the **previous** tick. A
  bucket sends at most its tokens (rate x step, fractions carried over, at most one step's worth
  saved), oldest due first; the rest stay queued (held: they count as delayed, with the time
  held). repmon's rate is ``rate_factor`` x the scope's normal rate (its expected demand, the
  "usual rate" of docs/throttle.md), so a pause with probes still sends the probe share.
  Deferred messages are retried after 5, 10, 20, 30, 45, 60 min (+-20 %, greylisting 5-12 min)
  and bounced as expired after 7 attempts, as in the open-loop simulator. The fleet's own
  shaping (what it does with no decision in force) caps each sending IP -> provider path at
  ``SHAPING_HEADROOM`` x its normal rate, so a released backlog drains over minutes.
* **Provider** (:class:`Provider`): the simulator's background outcomes (noise replies per
  domain, greylisting, unknown users), and during the incident window ``[onset, end)`` of the
  scenario (:class:`Incident`): an **outage** fails ``intensity`` of the attempts at the
  provider with 4xx transient replies; a **rate limit** accepts at most a hidden rate per key
  (per sending IP or for the whole provider) and answers every attempt above it with the
  provider's 4.7.28-style deferral (so retries of deferred mail make it worse); a **block**
  refuses every attempt from the blocked IPs with the provider's 5.7.1 block-list reply
  (bounced, not retried). After ``end`` the provider is healthy again.
* **Controllers**: :class:`RepmonControl` turns the step's events into canonical events
  (docs/events.md, the dicts ``output.EventOutput`` builds) and feeds them as JSON lines through
  the real ingest ``Pipeline``, ``Monitor`` and ``Acting`` (the throttle controller), exactly as
  ``repmon replay`` does; the fleet reads the decisions with ``most_restrictive`` over each
  message's ``message_scopes``. :class:`NoThrottle` sends everything. :class:`KumoControl`
  models KumoMTA's traffic shaping automation (tsa-daemon): regex rules over the reply text,
  scoped to the default, a destination domain's site or an MX suffix, counted per egress path
  (source -> site) with an ``Immediate`` or ``Threshold`` trigger, setting fixed values
  (``max_message_rate``, ``connection_limit``, ...) or a suspension for a fixed duration that
  each new trigger extends (:data:`KUMO_RULES`: its shipped defaults and the community rules
  for the providers the simulator speaks for).

Per step the run records, on the scenario's act scope, the attempts, failures, deliveries, the
queue, and the *rate factor*: the share of the scope's normal volume the controller lets the
fleet send, measured on ``PROBE_LANES`` lanes of the scope drawn by demand (so it moves only
when the controller's decisions do). :func:`closed_loop_metrics` scores a run.

Everything is pure and deterministic from the seed: numpy and the standard library, event time
only. ``bench/evaluate.py --closed-loop`` runs every scenario with every controller and scores
them (:func:`closed_loop_metrics`).

The package: ``world`` (scenarios, scopes, demand, provider), ``controllers`` (repmon, none,
KumoMTA-style rules) and ``loop`` (the stepping loop and the metrics); every public name is
re-exported here.
"""

from __future__ import annotations

from models.sim.closed_loop.controllers import (
    KUMO_DELIVERIES_PER_CONNECTION,
    KUMO_MSGS_PER_CONNECTION_S,
    KUMO_RULES,
    Controller,
    KumoControl,
    KumoRule,
    Limits,
    NoThrottle,
    RepmonControl,
    StepEvents,
)
from models.sim.closed_loop.loop import (
    CONTROLLERS,
    PROBE_LANES,
    RECOVERED_SHARE,
    RECOVERED_WINDOW_MIN,
    SHAPING_FLOOR_PER_S,
    SHAPING_HEADROOM,
    ClosedLoop,
    ClosedLoopResult,
    closed_loop_metrics,
    recovery_time,
    reversals,
    run_closed_loop,
    volume_recovery_time,
)
from models.sim.closed_loop.world import (
    CLOSED_LOOP_SCENARIOS,
    TICK_S,
    ClosedLoopScenario,
    Demand,
    Incident,
    Provider,
    ScopeIndex,
    quick_scenarios,
)

__all__ = [
    "CLOSED_LOOP_SCENARIOS",
    "CONTROLLERS",
    "KUMO_DELIVERIES_PER_CONNECTION",
    "KUMO_MSGS_PER_CONNECTION_S",
    "KUMO_RULES",
    "PROBE_LANES",
    "RECOVERED_SHARE",
    "RECOVERED_WINDOW_MIN",
    "SHAPING_FLOOR_PER_S",
    "SHAPING_HEADROOM",
    "TICK_S",
    "ClosedLoop",
    "ClosedLoopResult",
    "ClosedLoopScenario",
    "Controller",
    "Demand",
    "Incident",
    "KumoControl",
    "KumoRule",
    "Limits",
    "NoThrottle",
    "Provider",
    "RepmonControl",
    "ScopeIndex",
    "StepEvents",
    "closed_loop_metrics",
    "quick_scenarios",
    "recovery_time",
    "reversals",
    "run_closed_loop",
    "volume_recovery_time",
]
