"""The HTTP server of ``repmon gateway`` (docs/gateway.md): webhook bodies -> canonical events
on the events topic, parser rejections on the dead-letter topic, and a 2xx answer only once the
broker has acknowledged every one of them.

| route | body | parser |
|---|---|---|
| ``POST /ingest/ses`` | an SNS envelope, a raw SES event (SNS raw delivery), an array | ``ses`` |
| ``POST /ingest/sendgrid`` | a SendGrid Event Webhook batch (a JSON array) | ``sendgrid`` |
| ``POST /ingest/kumomta`` | KumoMTA log hook records: one object, an array, or JSON lines | ``kumomta`` |
| ``POST /ingest/canonical`` | canonical events: JSON lines or an array | ``canonical`` |
| ``GET /livez``, ``/readyz``, ``/metrics`` | | |

One request: credentials (:mod:`streams.adapters.gateway_auth`), the size limit (413), the
body cut into records by the format's splitter and parsed (the parsers of
``models/ingest/formats``, configured as ``repmon ingest --config`` configures them), every
event produced to ``REPMON_TOPIC_EVENTS`` keyed by its recipient key and every rejection to
``REPMON_TOPIC_DLQ`` (reason, detail, the refused record or batch item with every address
redacted), then the answer: 200 with the counts once the broker acknowledged all of them
(acks=all, idempotent producer), 503 when it did not within ``REPMON_GATEWAY_ACK_TIMEOUT_S``
(the sender retries; what it retries may then be in Kafka twice, never zero times), 400 when no
record of the body is a JSON object or array (nothing is produced).

The producer is aiokafka's: it runs on the server's event loop, so a request awaits its
delivery futures without a thread hop, and the records of concurrent requests share the
producer's batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import time
import uuid
from collections import Counter as Tally
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import ClientSession, ClientTimeout, web
from aiokafka import AIOKafkaProducer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from models.ingest.formats import FORMATS, Parser
from models.ingest.validate import Rejection
from streams.adapters.gateway_auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridVerifier,
    check_credentials,
    sns_subscribe_url_problem,
)
from streams.cli.ingest import event_key
from streams.worker.settings import Settings
from streams.worker.wire import redacted_dlq_record as dead_letter

log = logging.getLogger("repmon.gateway")
disable_created_metrics()

#: route -> format
ROUTES = {
    "/ingest/ses": "ses",
    "/ingest/sendgrid": "sendgrid",
    "/ingest/kumomta": "kumomta",
    "/ingest/canonical": "canonical",
}
#: the ``path`` label values of the request counter (anything else is "other")
PATH_LABELS = frozenset([*ROUTES, "/livez", "/readyz", "/metrics"])
#: why a whole request was refused (the ``reason`` label of repmon_gateway_requests_refused_total)
REFUSAL_REASONS = (
    "missing_credentials",
    "wrong_token",
    "missing_signature",
    "bad_signature",
    "stale_signature",
    "too_large",
    "empty",
    "not_json",
    "wrong_shape",
    "sns_refused",
    "sns_confirm_failed",
    "broker_unavailable",
    "overloaded",
    "ack_timeout",
    "produce_error",
)
#: parser reasons that, on a record with no events and without an item prefix, may mean the
#: record is no JSON document at all (checked by decoding it)
_WHOLE_RECORD_REASONS = frozenset({"bad_json", "not_an_object", "too_large"})
_ITEM = re.compile(r"item ([0-9]{1,9}): ")
_SNS_CONFIRMATIONS = frozenset({"SubscriptionConfirmation", "UnsubscribeConfirmation"})


class GatewaySettings(BaseSettings):
    """``REPMON_GATEWAY_*`` variables (docs/gateway.md, "Configuration")."""

    model_config = SettingsConfigDict(env_prefix="REPMON_GATEWAY_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=6067, ge=1, le=65535)
    #: the token senders present (Bearer, or Basic password); empty: REPMON_API_TOKEN
    token: str = ""
    #: SendGrid's verification key (base64 DER as SendGrid shows it, or PEM); empty: off
    sendgrid_public_key: str = ""
    #: the replay window of SendGrid signatures
    sendgrid_max_skew_s: float = Field(default=300.0, gt=0.0, le=7 * 86400.0)
    #: largest request body accepted (413 above)
    max_body_bytes: int = Field(default=4 << 20, ge=1024, le=64 << 20)
    #: how long a request waits for the broker's acknowledgements before answering 503
    ack_timeout_s: float = Field(default=10.0, gt=0.0, le=300.0)
    #: records sent and not yet acknowledged, at most; a request that would pass it gets 503
    max_pending_events: int = Field(default=200_000, ge=1000)
    #: confirm SNS subscriptions by fetching their SubscribeURL (else: log it for a person)
    sns_confirm: bool = False
    #: comma-separated topic ARNs whose subscriptions may be confirmed (empty: any)
    sns_topics: str = ""
    #: TOML file whose [ses], [sendgrid], [kumomta], [canonical] tables configure the parsers
    parser_config: str = ""
    #: producer linger: how long a batch waits for the records of concurrent requests
    linger_ms: int = Field(default=5, ge=0, le=1000)

    @property
    def sns_topic_set(self) -> frozenset[str]:
        return frozenset(t.strip() for t in self.sns_topics.split(",") if t.strip())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# -- the body -> records --------------------------------------------------------------------


@dataclass(slots=True)
class Converted:
    """What one request body gives: the event records (key, value) for the events topic, the
    dead letters (value) for the DLQ, counts, or why the whole body is refused."""

    events: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[bytes] = field(default_factory=list)
    reasons: Tally[str] = field(default_factory=Tally)
    records: int = 0
    skipped: int = 0
    #: (status, reason, message) when the body is refused as a whole: nothing is produced
    refused: tuple[int, str, str] | None = None


def _is_document(rec: bytes) -> bool:
    """Whether a record decodes to a JSON object or array."""
    try:
        doc = orjson.loads(rec)
    except orjson.JSONDecodeError:
        return False
    return isinstance(doc, dict | list)


def _original(rec: bytes, detail: str, docs: dict[int, Any], index: int) -> bytes:
    """The bytes a dead letter keeps: the refused item of a batch (``item N: ...``), re-encoded,
    else the whole record."""
    m = _ITEM.match(detail)
    if m is None:
        return rec
    if index not in docs:
        try:
            docs[index] = orjson.loads(rec)
        except orjson.JSONDecodeError:
            docs[index] = None
    doc = docs[index]
    n = int(m.group(1))
    if isinstance(doc, list) and n < len(doc):
        try:
            return orjson.dumps(doc[n])
        except TypeError:  # an integer orjson cannot encode: keep the record
            return rec
    return rec


def convert_body(fmt: str, parser: Parser, body: bytes, source: str, request_id: str) -> Converted:
    """Cut ``body`` into the format's records and parse them: the events as (recipient key,
    JSON) pairs, every rejection as a dead-letter value (what ``repmon ingest`` writes: reason,
    detail, the refused record or batch item, every address redacted and its key kept for
    ``repmon dlq redrive``), unless no record of the body is a JSON object or array, which
    refuses the body (400; 413 for a record over the parser's limit). Records that are not
    documents among good ones are dead-lettered (``bad_json``)."""
    out = Converted()
    f = FORMATS[fmt]
    records, _ = f.split(body, True)
    out.records = len(records)
    if not records:
        out.refused = (400, "empty", "empty body: no JSON document")
        return out
    skipped_before = sum(parser.stats.skipped.values())
    whole_bad: list[Rejection] = []
    refused: list[tuple[int, bytes, Rejection]] = []
    dumps = orjson.dumps
    evs_out = out.events
    for i, rec in enumerate(records):
        events, rejections = parser.feed(rec)
        for ev in events:
            evs_out.append((event_key(ev), dumps(ev)))
        if not rejections:
            continue
        if (
            not events
            and len(rejections) == 1
            and rejections[0].reason in _WHOLE_RECORD_REASONS
            and _ITEM.match(rejections[0].detail) is None
            and (rejections[0].reason == "too_large" or not _is_document(rec))
        ):
            whole_bad.append(rejections[0])
        refused.extend((i, rec, r) for r in rejections)
    out.skipped = sum(parser.stats.skipped.values()) - skipped_before
    if len(whole_bad) == len(records):
        first = whole_bad[0]
        if first.reason == "too_large":
            out.refused = (413, "too_large", f"a record is over the parser's limit: {first.detail}")
        elif first.reason == "bad_json":
            out.refused = (400, "not_json", f"not JSON: {first.detail}")
        else:
            out.refused = (
                400,
                "wrong_shape",
                f"wrong shape: a JSON {first.detail}; expected an object, an array of objects, "
                "or JSON lines",
            )
        out.events.clear()
        return out
    docs: dict[int, Any] = {}
    for i, rec, r in refused:
        out.reasons[r.reason] += 1
        original = _original(rec, r.detail, docs, i)
        out.dead.append(dead_letter(r, original, source, i, fmt, request_id=request_id))
    return out


# -- metrics ---------------------------------------------------------------------------------


class GatewayMetrics:
    """The gateway's Prometheus series (docs/metrics.md, "Gateway"). Labels come from closed
    sets: the routes, status codes, format names, rejection and refusal reasons."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        self.requests = Counter(
            "repmon_gateway_requests_total",
            "HTTP requests answered, by path and status code.",
            ["path", "status"],
            registry=r,
        )
        self.refused = Counter(
            "repmon_gateway_requests_refused_total",
            "Requests answered with an error status (4xx, 503), by path and reason.",
            ["path", "reason"],
            registry=r,
        )
        self.events = Counter(
            "repmon_gateway_events_total",
            "Canonical events produced to the events topic and acknowledged by the broker.",
            ["format"],
            registry=r,
        )
        self.rejections = Counter(
            "repmon_gateway_rejections_total",
            "Records or batch items the parser refused, produced to the dead-letter topic and "
            "acknowledged, by reason.",
            ["format", "reason"],
            registry=r,
        )
        self.skipped = Counter(
            "repmon_gateway_skipped_total",
            "Records that carry nothing to count (an SNS SubscriptionConfirmation, a SendGrid "
            "group_resubscribe, a KumoMTA AdminBounce).",
            ["format"],
            registry=r,
        )
        self.produce_seconds = Histogram(
            "repmon_gateway_produce_duration_seconds",
            "Per request, from the first record sent to the broker's acknowledgement of the "
            "last (requests that produced something and were acknowledged).",
            ["format"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        self.body_bytes = Histogram(
            "repmon_gateway_request_body_bytes",
            "Sizes of the bodies read (requests refused before reading are not counted).",
            ["format"],
            buckets=(1024, 4096, 16384, 65536, 262144, 1 << 20, 4 << 20, 16 << 20),
            registry=r,
        )
        self.pending = Gauge(
            "repmon_gateway_pending_records",
            "Records sent to the broker and not yet acknowledged.",
            registry=r,
        )
        self.ready = Gauge(
            "repmon_gateway_ready",
            "1 when /readyz answers 200, else 0 (read at scrape time).",
            registry=r,
        )
        self.sns = Counter(
            "repmon_gateway_sns_subscriptions_total",
            "SNS SubscriptionConfirmation messages by what the gateway did: confirmed (fetched "
            "the SubscribeURL), logged (for a person to confirm), refused, failed.",
            ["result"],
            registry=r,
        )


# -- the server ------------------------------------------------------------------------------

Confirmer = Callable[[str], Awaitable[int]]


async def fetch_subscribe_url(url: str) -> int:
    """GET an SNS SubscribeURL (already checked by sns_subscribe_url_problem); its status."""
    async with (
        ClientSession(timeout=ClientTimeout(total=10)) as session,
        session.get(url, allow_redirects=False) as resp,
    ):
        await resp.read()
        return resp.status


class Gateway:
    """The state behind the routes: configuration, parsers, the producer, metrics."""

    def __init__(
        self,
        cfg: GatewaySettings,
        settings: Settings,
        parsers: dict[str, Parser],
        confirm: Confirmer | None = None,
    ) -> None:
        self.cfg = cfg
        self.settings = settings
        self.parsers = parsers
        self.token = cfg.token or settings.api_token
        self.verifier = (
            SendGridVerifier(cfg.sendgrid_public_key, cfg.sendgrid_max_skew_s)
            if cfg.sendgrid_public_key.strip()
            else None
        )
        self.confirm = confirm if confirm is not None else fetch_subscribe_url
        self.metrics = GatewayMetrics()
        self.metrics.pending.set_function(lambda: self.pending)
        self.producer: AIOKafkaProducer | None = None
        self.connect_problem = "not connected to the broker yet"
        self.pending = 0
        self.last_ack = time.monotonic()
        self._connector: asyncio.Task[None] | None = None
        self._pending_since = time.monotonic()
        self._last_503_log = -1e9
        self._held_503 = 0

    # -- lifecycle

    async def on_startup(self, app: web.Application) -> None:
        self._connector = asyncio.create_task(self._connect(), name="gateway-connect")

    async def on_cleanup(self, app: web.Application) -> None:
        if self._connector is not None:
            self._connector.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._connector
        prod, self.producer = self.producer, None
        if prod is not None:
            try:  # delivers what timed-out requests left behind, if the broker is there
                await asyncio.wait_for(prod.stop(), timeout=max(5.0, self.cfg.ack_timeout_s))
            except Exception as exc:
                log.warning("producer did not stop cleanly: %s", exc)

    async def _connect(self) -> None:
        """Start the producer (retrying with backoff while the broker is unreachable), then
        make sure the topics exist."""
        from streams.worker.topics import ensure_topics

        delay = 0.5
        while True:
            prod = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                acks="all",
                enable_idempotence=True,
                linger_ms=self.cfg.linger_ms,
                max_batch_size=256 * 1024,
                max_request_size=4 << 20,
                request_timeout_ms=int(max(self.cfg.ack_timeout_s, 5.0) * 1000),
                client_id="repmon-gateway",
            )
            try:
                await prod.start()
                # the broker answers: create the topics now (kafka-python's admin client, in a
                # thread; it returns quickly since the broker is reachable)
                await asyncio.to_thread(ensure_topics, self.settings, 30.0)
            except asyncio.CancelledError:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(prod.stop(), 5.0)
                raise
            except Exception as exc:
                self.connect_problem = f"broker {self.settings.kafka_bootstrap}: {exc}"[:300]
                log.warning("cannot reach the broker (retry in %.1f s): %s", delay, exc)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(prod.stop(), 5.0)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)
                continue
            self.producer = prod
            self.connect_problem = ""
            self.last_ack = time.monotonic()
            log.info(
                "producing to %s and %s on %s",
                self.settings.topic_events,
                self.settings.topic_dlq,
                self.settings.kafka_bootstrap,
            )
            return

    def readiness_problems(self) -> list[str]:
        problems: list[str] = []
        if self.producer is None:
            problems.append(self.connect_problem or "not connected to the broker")
        elif self.pending:
            # waiting since the last acknowledgement, or since records began to wait
            stalled = time.monotonic() - max(self.last_ack, self._pending_since)
            if stalled > self.cfg.ack_timeout_s:
                problems.append(
                    f"{self.pending} records unacknowledged, none acknowledged for {stalled:.0f} s"
                )
        return problems

    # -- producing

    def _track(self, fut: asyncio.Future[Any]) -> asyncio.Future[Any]:
        if not self.pending:
            self._pending_since = time.monotonic()
        self.pending += 1
        fut.add_done_callback(self._done)
        return fut

    def _done(self, fut: asyncio.Future[Any]) -> None:
        self.pending -= 1
        if not fut.cancelled() and fut.exception() is None:
            self.last_ack = time.monotonic()

    async def produce(self, conv: Converted) -> tuple[str, str] | None:
        """Send every event and dead letter and wait for the broker's acknowledgement of all of
        them; None when it came within the ack timeout, else (reason, message)."""
        prod = self.producer
        if prod is None:
            return "broker_unavailable", self.connect_problem or "not connected to the broker"
        n = len(conv.events) + len(conv.dead)
        if self.pending + n > self.cfg.max_pending_events:
            return (
                "overloaded",
                f"{self.pending} records already await the broker's acknowledgement",
            )
        deadline = time.monotonic() + self.cfg.ack_timeout_s
        futs: list[asyncio.Future[Any]] = []
        events_topic, dlq_topic = self.settings.topic_events, self.settings.topic_dlq

        async def send_all() -> None:
            send, track = prod.send, self._track
            for key, value in conv.events:
                futs.append(track(await send(events_topic, value, key=key)))
            for value in conv.dead:
                futs.append(track(await send(dlq_topic, value)))

        try:
            await asyncio.wait_for(send_all(), timeout=self.cfg.ack_timeout_s)
        except TimeoutError:
            return "ack_timeout", (
                f"the broker took no records within {self.cfg.ack_timeout_s:g} s "
                f"({len(futs)} of {n} sent)"
            )
        except Exception as exc:  # a Kafka error on send: nothing acknowledged for sure
            return "produce_error", f"{type(exc).__name__}: {exc}"[:300]
        if futs:
            remaining = max(0.0, deadline - time.monotonic())
            _, not_done = await asyncio.wait(futs, timeout=remaining)
            if not_done:
                return "ack_timeout", (
                    f"the broker acknowledged {n - len(not_done)} of {n} records within "
                    f"{self.cfg.ack_timeout_s:g} s"
                )
            for fut in futs:
                if fut.cancelled():
                    return "produce_error", "a delivery was cancelled"
                err = fut.exception()
                if err is not None:
                    return "produce_error", f"{type(err).__name__}: {err}"[:300]
        return None

    # -- requests

    def refuse(
        self, path: str, status: int, reason: str, message: str, **headers: str
    ) -> web.Response:
        self.metrics.refused.labels(path, reason).inc()
        resp = web.json_response({"error": message, "reason": reason}, status=status)
        for k, v in headers.items():
            resp.headers[k.replace("_", "-")] = v
        if status == 401:
            resp.headers.add("WWW-Authenticate", 'Bearer realm="repmon gateway"')
            resp.headers.add("WWW-Authenticate", 'Basic realm="repmon gateway", charset="UTF-8"')
        return resp

    async def read_body(self, request: web.Request) -> bytes | None:
        """The body, or None when it is over the limit (without reading more than the limit)."""
        limit = self.cfg.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            return None
        buf = bytearray()
        async for chunk in request.content.iter_chunked(1 << 16):
            buf += chunk
            if len(buf) > limit:
                return None
        return bytes(buf)

    async def ingest(self, request: web.Request) -> web.Response:
        path = request.path
        fmt = ROUTES[path]
        signature = request.headers.get(SIGNATURE_HEADER)
        timestamp = request.headers.get(TIMESTAMP_HEADER)
        by_signature = (
            fmt == "sendgrid"
            and self.verifier is not None
            and (signature is not None or timestamp is not None)
        )
        if not by_signature:
            if fmt == "sendgrid" and self.verifier is not None and not self.token:
                return self.refuse(
                    path,
                    401,
                    "missing_signature",
                    f"this endpoint needs SendGrid's signature ({SIGNATURE_HEADER})",
                )
            denied = check_credentials(self.token, request.headers.get("Authorization"))
            if denied is not None:
                return self.refuse(path, 401, *denied)
        body = await self.read_body(request)
        if body is None:
            return self.refuse(
                path,
                413,
                "too_large",
                f"the body is larger than {self.cfg.max_body_bytes} bytes "
                "(REPMON_GATEWAY_MAX_BODY_BYTES): send smaller batches",
            )
        self.metrics.body_bytes.labels(fmt).observe(len(body))
        if by_signature:
            assert self.verifier is not None
            bad = self.verifier.check(signature, timestamp, body, time.time())
            if bad is not None:
                return self.refuse(path, 401, *bad)
        if fmt == "ses":
            answer = await self.sns_control(request, path, body)
            if answer is not None:
                return answer
        request_id = uuid.uuid4().hex
        conv = convert_body(fmt, self.parsers[fmt], body, f"gateway:{path}", request_id)
        if conv.refused is not None:
            status, reason, message = conv.refused
            return self.refuse(path, status, reason, message)
        t0 = time.perf_counter()
        failed = await self.produce(conv)
        if failed is not None:
            reason, message = failed
            self._log_503(path, reason, message)
            return self.refuse(path, 503, reason, message, Retry_After="5")
        m = self.metrics
        if conv.events or conv.dead:
            m.produce_seconds.labels(fmt).observe(time.perf_counter() - t0)
        if conv.events:
            m.events.labels(fmt).inc(len(conv.events))
        for reason, cnt in conv.reasons.items():
            m.rejections.labels(fmt, reason).inc(cnt)
        if conv.skipped:
            m.skipped.labels(fmt).inc(conv.skipped)
        return web.json_response(
            {
                "records": conv.records,
                "events": len(conv.events),
                "dead_letters": len(conv.dead),
                "rejected": dict(conv.reasons),
                "skipped": conv.skipped,
                "request_id": request_id,
            }
        )

    def _log_503(self, path: str, reason: str, message: str) -> None:
        """One warning per 10 s at most (an outage under traffic gives one 503 per request);
        the next says how many were held back (the metric counts them all)."""
        now = time.monotonic()
        if now - self._last_503_log < 10.0:
            self._held_503 += 1
            return
        held, self._held_503, self._last_503_log = self._held_503, 0, now
        more = f" ({held} more 503s in the last 10 s)" if held else ""
        log.warning("%s: 503 %s: %s%s", path, reason, message, more)

    async def sns_control(
        self, request: web.Request, path: str, body: bytes
    ) -> web.Response | None:
        """SNS SubscriptionConfirmation / UnsubscribeConfirmation: confirmed (when
        REPMON_GATEWAY_SNS_CONFIRM), else logged for a person; None for anything else."""
        mtype = request.headers.get("x-amz-sns-message-type")
        if mtype not in _SNS_CONFIRMATIONS and not (
            mtype is None and b"Confirmation" in body[:4096]
        ):
            return None
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None  # the parser says why (400)
        if not isinstance(doc, dict) or doc.get("Type") not in _SNS_CONFIRMATIONS:
            return None
        topic = str(doc.get("TopicArn", ""))[:256]
        m = self.metrics
        if doc["Type"] == "UnsubscribeConfirmation":
            log.warning("SNS: the subscription to %s was cancelled", topic)
            m.skipped.labels("ses").inc()
            return web.json_response({"sns": "UnsubscribeConfirmation", "action": "none"})
        url = doc.get("SubscribeURL")
        token = str(doc.get("Token", ""))[:1024]
        if not self.cfg.sns_confirm:
            m.sns.labels("logged").inc()
            log.warning(
                "SNS: a subscription of %s to this gateway awaits confirmation: open %s, or run "
                "`aws sns confirm-subscription --topic-arn %s --token %s` "
                "(or set REPMON_GATEWAY_SNS_CONFIRM=true)",
                topic,
                url,
                topic,
                token,
            )
            return web.json_response({"sns": "SubscriptionConfirmation", "action": "logged"})
        allowed = self.cfg.sns_topic_set
        if allowed and topic not in allowed:
            m.sns.labels("refused").inc()
            return self.refuse(
                path, 403, "sns_refused", f"topic {topic!r} is not in REPMON_GATEWAY_SNS_TOPICS"
            )
        problem = sns_subscribe_url_problem(url)
        if problem is not None:
            m.sns.labels("refused").inc()
            return self.refuse(path, 400, "sns_refused", problem)
        assert isinstance(url, str)
        try:
            status = await self.confirm(url)
        except Exception as exc:
            status, why = 0, f"{type(exc).__name__}: {exc}"
        else:
            why = f"SNS answered {status}"
        if status != 200:
            m.sns.labels("failed").inc()
            return self.refuse(path, 503, "sns_confirm_failed", f"confirmation failed: {why}")
        m.sns.labels("confirmed").inc()
        log.info("SNS: confirmed the subscription of %s", topic)
        return web.json_response({"sns": "SubscriptionConfirmation", "action": "confirmed"})

    async def livez(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "alive"})

    async def readyz(self, request: web.Request) -> web.Response:
        problems = self.readiness_problems()
        return web.json_response(
            {"status": "not ready" if problems else "ready", "problems": problems},
            status=503 if problems else 200,
        )

    async def metrics_view(self, request: web.Request) -> web.Response:
        self.metrics.ready.set(0 if self.readiness_problems() else 1)
        return web.Response(
            body=generate_latest(self.metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
            charset="utf-8",
        )

    @web.middleware
    async def count_requests(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        label = request.path if request.path in PATH_LABELS else "other"
        try:
            resp = await handler(request)
        except web.HTTPException as exc:
            self.metrics.requests.labels(label, str(exc.status)).inc()
            raise
        except Exception:
            self.metrics.requests.labels(label, "500").inc()
            raise
        self.metrics.requests.labels(label, str(resp.status)).inc()
        return resp


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway", Gateway)


def make_app(
    cfg: GatewaySettings,
    settings: Settings,
    parsers: dict[str, Parser],
    confirm: Confirmer | None = None,
) -> web.Application:
    """The aiohttp application of the gateway (the producer starts with the app)."""
    gw = Gateway(cfg, settings, parsers, confirm)
    app = web.Application(
        middlewares=[gw.count_requests], client_max_size=cfg.max_body_bytes + (1 << 16)
    )
    app[GATEWAY] = gw
    for route in ROUTES:
        app.router.add_post(route, gw.ingest)
    app.router.add_get("/livez", gw.livez)
    app.router.add_get("/readyz", gw.readyz)
    app.router.add_get("/metrics", gw.metrics_view)
    app.on_startup.append(gw.on_startup)
    app.on_cleanup.append(gw.on_cleanup)
    return app
