"""The worker's web views: /metrics, /status and the probes (:func:`worker_pages`, Faust pages
that streams/worker/app.py registers), and its data and action endpoints: the throttle decisions
(GET), manual overrides (PUT/DELETE), the incidents, the recipient suppressions, and the
KumoMTA-compatible endpoints.

The endpoints are plain aiohttp handlers on the Faust app's web server
(``app.web.web_app.router``). Everything that exposes data or changes state takes the bearer
token (``REPMON_API_TOKEN``, constant-time compare); with no token configured they are open, as
/status.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from aiohttp import WSMsgType, web
from aiokafka import AIOKafkaProducer
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from models.act.kumo import (
    KumoConfig,
    KumoPlan,
    SuspensionFeed,
    kumo_plan,
    shaping_toml,
    suspensions_json,
)
from models.act.suppression import may_send
from models.act.throttle_record import ThrottleRecord
from streams.fleet.client import ThrottleClient
from streams.worker.owners import Owner
from streams.worker.settings import Settings
from streams.worker.state import WorkerState
from streams.worker.suppressions import key_partition

log = logging.getLogger("repmon.worker")

#: the longest a manual override may hold (it never blocks mail forever either)
MAX_OVERRIDE_S = 7 * 86400.0

#: the most scopes per kind /status returns
MAX_STATUS_TOP = 1000


def check_token(expected: str, header: str | None) -> str | None:
    """None when the request may see the data; else why not. No token configured: open."""
    if not expected:
        return None
    if not header or not header.startswith("Bearer "):
        return "this endpoint needs 'Authorization: Bearer <token>' (REPMON_API_TOKEN)"
    if not hmac.compare_digest(header[7:].encode(), expected.encode()):
        return "wrong token"
    return None


def path_token_ok(expected: str, given: str) -> bool:
    """The token in a KumoMTA endpoint's path (kumod appends its paths to a configured URL and
    sends no headers): constant-time compare; no token configured: open, as /status."""
    return not expected or hmac.compare_digest(given.encode(), expected.encode())


def manual_override(scope: str, body: Any, now: float) -> tuple[ThrottleRecord, dict[str, Any]]:
    """The record and the audit entry of a PUT /throttle/{scope}; ValueError with a reason
    for a bad request."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    state_ = body.get("state")
    if state_ not in ("throttled", "paused"):
        raise ValueError("state must be throttled or paused")
    factor = body.get("rate_factor", 0.0 if state_ == "paused" else 1.0)
    if isinstance(factor, bool) or not isinstance(factor, int | float) or not 0.0 <= factor <= 1.0:
        raise ValueError("rate_factor must be a number from 0 to 1")
    if state_ == "throttled" and not 0.0 < factor < 1.0:
        raise ValueError("a throttled scope needs 0 < rate_factor < 1")
    why = body.get("why")
    if not isinstance(why, str) or not why.strip():
        raise ValueError('say why (the "why" field): it goes on the incidents topic')
    ttl = body.get("ttl_s", 3600.0)
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not 0 < ttl <= MAX_OVERRIDE_S:
        raise ValueError(f"ttl_s must be a number of seconds from 1 to {MAX_OVERRIDE_S:.0f}")
    by = body.get("by", "api")
    if not isinstance(by, str) or not by.strip():
        raise ValueError("by must be a non-empty string when given")
    if ":" not in scope:
        raise ValueError(f"not a scope: {scope[:100]!r} (kind:value, e.g. provider:yahoo)")
    rec = ThrottleRecord(scope, state_, float(factor), "manual", None, now, now + float(ttl))
    audit = {
        "kind": "override",
        "action": "set",
        "scope": scope,
        "state": state_,
        "rate_factor": float(factor),
        "by": by.strip()[:200],
        "why": why.strip()[:1000],
        "at": now,
        "expires_at": now + float(ttl),
    }
    return rec, audit


def audit_key(audit: dict[str, Any]) -> bytes:
    """Key of an override's audit record on the (compacted) incidents topic: one per change."""
    return f"override/{audit['scope']}/{audit['action']}/{audit['at']:.3f}".encode()


def install_throttle_endpoints(
    router: Any,
    settings: Settings,
    instance: str,
    owners: Callable[[], Sequence[Owner]],
    overrides: ThrottleClient,
    producer: Callable[[], Awaitable[AIOKafkaProducer]],
) -> Callable[[], dict[str, ThrottleRecord]]:
    """GET /throttle, GET|PUT|DELETE /throttle/{scope}, GET /incidents on ``router``; returns
    the function giving the decisions in force (the Kumo endpoints serve the same)."""

    def denied(request: web.Request) -> web.Response | None:
        why = check_token(settings.api_token, request.headers.get("Authorization"))
        return None if why is None else web.json_response({"error": why}, status=401)

    def decisions_in_force() -> dict[str, ThrottleRecord]:
        """Every owned partition's decisions in force (not normal, not expired at the
        watermark), by scope; each scope has one owner."""
        out: dict[str, ThrottleRecord] = {}
        for o in owners():
            out.update(o.throttle.decisions(o.monitor.store.watermark))
        out.update(overrides.decisions())  # a manual override wins
        return out

    async def throttle_all(request: web.Request) -> web.StreamResponse:
        no = denied(request)
        if no is not None:
            return no
        recs = decisions_in_force()
        return web.json_response(
            {
                "instance": instance,
                "owned_partitions": sorted(o.partition for o in owners()),
                "decisions": [recs[k].to_json() for k in sorted(recs)],
            }
        )

    async def throttle_one(request: web.Request) -> web.StreamResponse:
        no = denied(request)
        if no is not None:
            return no
        scope = request.match_info["scope"]
        rec = decisions_in_force().get(scope)
        if rec is not None:
            return web.json_response(rec.to_json())
        for o in owners():
            known = o.throttle.decision(scope)
            if known is not None:  # normal again, or expired
                return web.json_response(known.to_json())
        # no decision on this worker: normal here; another worker may own the scope
        return web.json_response(
            {"kind": "throttle", "scope": scope, "state": "normal", "rate_factor": 1.0,
             "reason": "none", "incident": None, "at": None, "expires_at": None,
             "owned_here": False},
        )  # fmt: skip

    async def incidents_view(request: web.Request) -> web.StreamResponse:
        no = denied(request)
        if no is not None:
            return no
        which = request.query.get("state", "open")
        if which not in ("open", "recent"):
            return web.json_response(
                {"error": f"state must be open or recent, not {which[:20]!r}"}, status=400
            )
        mons = [o.monitor for o in owners()]
        if which == "open":
            incs = [i for mon in mons for i in mon.open_incidents()]
        else:
            incs = [i for mon in mons for i in (*mon.open_incidents(), *mon.recent_closed())]
        incs.sort(key=lambda i: (i.opened_at, i.id))
        return web.json_response({"state": which, "incidents": [i.to_json() for i in incs]})

    async def publish(scope: str, now_rec: dict[str, Any], override: Any, audit: Any) -> None:
        prod = await producer()
        key = scope.encode()
        await (await prod.send(settings.topic_throttle, key=key, value=orjson.dumps(now_rec)))
        value = None if override is None else orjson.dumps(override)
        await (await prod.send(settings.topic_throttle_overrides, key=key, value=value))
        await (
            await prod.send(
                settings.topic_incidents, key=audit_key(audit), value=orjson.dumps(audit)
            )
        )

    async def set_override(request: web.Request) -> web.StreamResponse:
        """PUT /throttle/{scope} {"state", "rate_factor", "why", "ttl_s", "by"}: a manual
        decision that wins over the controller's until it expires or is deleted; recorded on the
        incidents topic with who and why."""
        no = denied(request)
        if no is not None:
            return no
        scope = request.match_info["scope"]
        try:
            body = orjson.loads(await request.read())
            rec, audit = manual_override(scope, body, time.time())
        except (orjson.JSONDecodeError, ValueError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        override = {**rec.to_json(), "by": audit["by"], "why": audit["why"]}
        await publish(scope, rec.to_json(), override, audit)
        log.warning("manual throttle override of %s by %s: %s", scope, audit["by"], audit["why"])
        return web.json_response(rec.to_json())

    async def clear_override(request: web.Request) -> web.StreamResponse:
        """DELETE /throttle/{scope}?why=...: the scope goes back to the controller."""
        no = denied(request)
        if no is not None:
            return no
        scope = request.match_info["scope"]
        why = request.query.get("why", "").strip()
        if not why:
            return web.json_response(
                {"error": "say why: DELETE /throttle/{scope}?why=..."}, status=400
            )
        now = time.time()
        by = request.query.get("by", "").strip() or request.headers.get("X-Repmon-User", "api")
        back = None
        for o in owners():
            back = back or o.throttle.decision(scope)
        if back is None:  # not owned here: normal until its owner republishes its decision
            back = ThrottleRecord(scope, "normal", 1.0, "manual-cleared", None, now, now)
        audit = {"kind": "override", "action": "cleared", "scope": scope, "by": by[:200],
                 "why": why[:1000], "at": now}  # fmt: skip
        await publish(scope, back.to_json(), None, audit)
        log.warning("manual throttle override of %s cleared by %s: %s", scope, by, why)
        return web.json_response({"scope": scope, "cleared": True, "now": back.to_json()})

    router.add_get("/throttle", throttle_all)
    router.add_get("/throttle/{scope}", throttle_one)
    router.add_put("/throttle/{scope}", set_override)
    router.add_delete("/throttle/{scope}", clear_override)
    router.add_get("/incidents", incidents_view)
    return decisions_in_force


def install_kumo_endpoints(
    router: Any,
    api_token: str,
    kcfg: KumoConfig,
    decisions: Callable[[], dict[str, ThrottleRecord]],
    clock: Callable[[], float] = time.time,
) -> None:
    """What kumod's traffic-shaping automation polls and subscribes to (tsa-daemon's paths),
    under ``/kumo/<REPMON_API_TOKEN>/``: point kumod's ``subscribe`` URL there (docs/throttle.md,
    "KumoMTA"). The decisions in force become the shaping overlay and the suspensions
    (models/act/kumo.py), at wall-clock time: the fleet lives in it."""

    def plan() -> KumoPlan:
        return kumo_plan(decisions(), kcfg, clock())

    def denied(request: web.Request) -> web.Response | None:
        if path_token_ok(api_token, request.match_info.get("token", "")):
            return None
        return web.json_response({"error": "wrong token in the path"}, status=401)

    async def shaping(request: web.Request) -> web.StreamResponse:
        return denied(request) or web.Response(text=shaping_toml(plan()), content_type="text/plain")

    async def suspended(request: web.Request) -> web.StreamResponse:
        return denied(request) or web.json_response(suspensions_json(plan()))

    async def bounced(request: web.Request) -> web.StreamResponse:
        return denied(request) or web.json_response([])

    async def tsa_status(request: web.Request) -> web.StreamResponse:
        return denied(request) or web.Response(text="TSA Daemon OK", content_type="text/plain")

    def subscriber(legacy: bool) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            no = denied(request)
            if no is not None:
                return no
            ws = web.WebSocketResponse(heartbeat=30.0)
            await ws.prepare(request)
            feed = SuspensionFeed(resend_every_s=60.0, legacy=legacy)
            try:
                while not ws.closed:
                    for item in feed.due(plan(), clock()):
                        await ws.send_str(orjson.dumps(item).decode())
                    # kumod sends nothing; wake up for a close or every 5 s for new items
                    with contextlib.suppress(TimeoutError):
                        msg = await ws.receive(timeout=5.0)
                        if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                            break
            except (ConnectionResetError, RuntimeError):
                pass
            return ws

        return handler

    base = "/kumo/{token}"
    router.add_get(base + "/get_config_v1/shaping.toml", shaping)
    router.add_get(base + "/get_suspension_v1/suspended.json", suspended)
    router.add_get(base + "/get_bounce_v1/bounced.json", bounced)
    router.add_get(base + "/tsa/status", tsa_status)
    router.add_get(base + "/subscribe_event_v1", subscriber(legacy=False))
    router.add_get(base + "/subscribe_suspension_v1", subscriber(legacy=True))


#: a Faust page handler: called with the Faust view (its ``json`` and ``bytes`` make the
#: response) and the request
PageHandler = Callable[[Any, Any], Awaitable[Any]]


@dataclass(frozen=True)
class WorkerPages:
    """The handlers of /metrics, /livez, /readyz (and /healthz) and /status."""

    metrics: PageHandler
    livez: PageHandler
    ready: PageHandler
    status: PageHandler


def worker_pages(state: WorkerState) -> WorkerPages:
    """The worker's own pages over ``state``; streams/worker/app.py registers them with
    ``app.page``."""
    m = state.metrics
    settings = state.settings

    async def metrics_view(web: Any, request: Any) -> Any:
        # aiohttp takes the charset separately from the content type
        ctype = CONTENT_TYPE_LATEST.split(";")[0] + "; version=0.0.4"
        # at scrape time, not in the tick: a worker whose ticks stopped must not stay "ready"
        m.ready.set(0 if state.readiness_problems() else 1)
        return web.bytes(generate_latest(m.registry), content_type=ctype)

    async def livez(web: Any, request: Any) -> Any:
        return web.json({"status": "alive", "instance": state.instance})

    async def ready_view(web: Any, request: Any) -> Any:
        problems = state.readiness_problems()
        body = {
            "status": "ready" if not problems else "not ready",
            "problems": problems,
            "instance": state.instance,
            "ticks": state.ticks,
        }
        return web.json(body, status=200 if not problems else 503)

    async def status(web: Any, request: Any) -> Any:
        denied = check_token(settings.api_token, request.headers.get("Authorization"))
        if denied:
            return web.json({"error": denied}, status=401)
        raw = request.query.get("top", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= MAX_STATUS_TOP:
            return web.json(
                {"error": f"top must be an integer from 1 to {MAX_STATUS_TOP}, not {raw[:20]!r}"},
                status=400,
            )
        return web.json(status_document(state, int(raw)))

    return WorkerPages(metrics=metrics_view, livez=livez, ready=ready_view, status=status)


def status_document(state: WorkerState, top: int = 20) -> dict[str, Any]:
    ingest: dict[str, Any] = {
        "partitions": sorted(state.pipelines),
        "accepted": sum(p.stats.accepted for p in state.pipelines.values()),
        "rejected": {},
        "duplicates": sum(p.stats.duplicates for p in state.pipelines.values()),
        "watermark": max((p.watermark for p in state.pipelines.values()), default=0.0),
    }
    ignored: dict[str, int] = {}
    for p in state.pipelines.values():
        for k, v in p.stats.rejected.items():
            if v:
                ingest["rejected"][k] = ingest["rejected"].get(k, 0) + v
        for k, v in p.stats.ignored_fields.items():
            ignored[k] = ignored.get(k, 0) + v
    ingest["ignored_fields"] = ignored
    return {
        "instance": state.instance,
        "uptime_s": round(time.time() - state.started, 1),
        "ticks": state.ticks,
        "ingest": ingest,
        "rollup": {
            "watermark": state.watermark(),
            "input_partitions": state.tracker.status(time.monotonic()),
            "owned_partitions": {str(p): o.status() for p, o in sorted(state.owners.items())},
        },
        "monitor": state.monitor.status(top),
    }


#: header a forwarded GET /suppressions/{key} carries (a worker never forwards it again)
FORWARDED = "X-Repmon-Forwarded-By"


def install_suppression_endpoints(router: Any, settings: Settings, state: Any) -> None:
    """GET /suppressions/{recipient_key}: the recipient's current record and whether the fleet
    may send to it (docs/suppression.md, "In the worker"). ``state``: the WorkerState (its
    ``suppression``, ``consumer``, ``warming``, ``directory``, ``instance``, ``metrics``)."""

    async def lookup(request: web.Request) -> web.StreamResponse:
        why = check_token(settings.api_token, request.headers.get("Authorization"))
        if why is not None:
            return web.json_response({"error": why}, status=401)
        key = request.match_info["key"].strip().lower()
        if len(key) != 64 or any(c not in "0123456789abcdef" for c in key):
            return web.json_response(
                {"error": "the recipient key is 64 hex digits: the SHA-256 of the lower-cased "
                 "address (docs/events.md); never send the address itself"},
                status=400,
            )  # fmt: skip
        m = state.metrics
        if not settings.suppression:
            return web.json_response(
                {"error": "the suppression policy is off (REPMON_SUPPRESSION=false)"}, status=404
            )
        consumer = state.consumer
        parts = consumer.partitions_for_topic(settings.topic_events) if consumer else None
        if not parts:
            m.suppression_lookups.labels("unavailable").inc()
            return web.json_response(
                {"error": "the input topic's partitions are not known yet"}, status=503
            )
        part = key_partition(key, len(parts))
        ps = state.suppression.get(part)
        if ps is not None:
            rec = ps.lookup(bytes.fromhex(key))
            m.suppression_lookups.labels("local").inc()
            return web.json_response(
                {
                    "recipient_key": key,
                    "state": rec["state"] if rec else "active",
                    "may_send": may_send(rec, time.time()),
                    "record": rec,
                    "partition": part,
                    "instance": state.instance,
                }
            )
        if part in state.warming or part in state.pipelines:
            m.suppression_lookups.labels("unavailable").inc()
            return web.json_response(
                {"error": f"partition {part}'s suppression state is being restored"}, status=503
            )
        reader = state.directory.reader(settings.topic_events, part) if state.directory else None
        if (
            reader is None
            or reader.get("instance") == state.instance
            or request.headers.get(FORWARDED)
        ):
            m.suppression_lookups.labels("unavailable").inc()
            return web.json_response(
                {"error": f"no worker known to read partition {part} of {settings.topic_events}"},
                status=503,
            )
        headers = {FORWARDED: state.instance}
        auth = request.headers.get("Authorization")
        if auth:
            headers["Authorization"] = auth
        url = f"{str(reader['url']).rstrip('/')}/suppressions/{key}"
        try:
            timeout = aiohttp.ClientTimeout(total=10.0)
            async with (
                aiohttp.ClientSession(timeout=timeout) as session,
                session.get(url, headers=headers) as resp,
            ):
                body = await resp.read()
                m.suppression_lookups.labels("forwarded").inc()
                return web.Response(body=body, status=resp.status, content_type="application/json")
        except (aiohttp.ClientError, TimeoutError) as exc:
            m.suppression_lookups.labels("unavailable").inc()
            return web.json_response(
                {"error": f"the worker reading partition {part} did not answer: {exc!r}"},
                status=503,
            )

    router.add_get("/suppressions/{key}", lookup)


__all__ = [
    "FORWARDED",
    "MAX_OVERRIDE_S",
    "MAX_STATUS_TOP",
    "WorkerPages",
    "audit_key",
    "check_token",
    "install_kumo_endpoints",
    "install_suppression_endpoints",
    "install_throttle_endpoints",
    "manual_override",
    "path_token_ok",
    "status_document",
    "worker_pages",
]
