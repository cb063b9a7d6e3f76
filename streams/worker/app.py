"""The Faust application: ingest agent, rollup agent, tick timer and web views.

Data flow (docs/architecture.md):

  mail.events --(ingest task: aiokafka getmany batches, one Pipeline per input partition)-->
      in-memory numpy columns
      --(tick timer: Pipeline.flush -> Deltas, split by scope owner)--> repmon.rollup
      --(then: commit the input offsets those Deltas cover)
  repmon.rollup --(rollup agent: dedupe by (source, seq), Monitor.add)--> rolling state
      --(tick timer: Monitor.advance(min source watermark))--> repmon.incidents, /status, /metrics

The high-volume input is read in batches by an aiokafka consumer that the Faust app runs as a
task: Faust's per-event stream machinery costs several event-loop turns per message, more than
all of repmon's per-event work (docs/performance.md). Input offsets are committed only after the
deltas that count those events have been acknowledged by Kafka, so a crash can re-count at most
one tick of events but never lose one. No Faust table is written per event.

:func:`create_app` makes the worker (:class:`streams.worker.consumers.Worker`, whose layers are
listed in streams/worker/base.py) and registers its tasks, its tick, its web views
(streams/worker/web.py) and its hand-over on the Faust app.
"""

from __future__ import annotations

import faust

from models.act.kumo import load_kumo_config
from streams.worker.consumers import Worker, consumer_options
from streams.worker.settings import Settings
from streams.worker.state import Warming, WorkerState
from streams.worker.web import (
    MAX_STATUS_TOP,
    install_kumo_endpoints,
    install_suppression_endpoints,
    install_throttle_endpoints,
    status_document,
    worker_pages,
)

#: the name Faust gives the tick timer in its log lines ("Timer ... woke up too late"): the
#: one it had when the tick was a closure of create_app
TICK_TIMER = "streams.worker.app.create_app.<locals>.tick"


def create_app(settings: Settings) -> tuple[faust.App, WorkerState]:
    worker = Worker(settings)
    app, state = worker.app, worker.state
    app.task(worker.ingest)
    app.task(worker.rollup)
    app.timer(interval=settings.tick_s, name=TICK_TIMER)(worker.tick)

    pages = worker_pages(state)
    app.page("/metrics")(pages.metrics)
    app.page("/livez")(pages.livez)
    app.page("/readyz")(pages.ready)
    app.page("/healthz")(pages.ready)  # the older name, same answer
    app.page("/status")(pages.status)

    app.task(worker.follow_overrides)
    app.task(worker.follow_incidents)
    app.task(worker.follow_directory)
    app.on_before_shutdown.connect(worker.stop_overrides)

    router = app.web.web_app.router  # type: ignore[attr-defined]
    decisions_in_force = install_throttle_endpoints(
        router,
        settings,
        state.instance,
        lambda: list(state.owners.values()),
        worker.overrides,
        worker.plain_producer,
    )
    install_suppression_endpoints(router, settings, state)
    if settings.kumo_config:
        install_kumo_endpoints(
            router, settings.api_token, load_kumo_config(settings.kumo_config), decisions_in_force
        )

    app.on_before_shutdown.connect(worker.hand_over)
    return app, state


__all__ = [
    "MAX_STATUS_TOP",
    "Warming",
    "WorkerState",
    "consumer_options",
    "create_app",
    "status_document",
]
