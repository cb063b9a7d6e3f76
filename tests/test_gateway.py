"""``repmon gateway``: webhook bodies to Kafka, 2xx only after the broker acknowledged every event
and dead letter (docs/gateway.md).

The unit tests check the pieces without a broker: credentials, SendGrid signatures, the SNS URLs
the gateway will fetch, how a body becomes events and dead letters, the SNS confirmation flow.
The integration tests (``kafka``) run ``repmon gateway`` as a subprocess on private topics of
the real broker: every documented sample of each path, exactly what was acknowledged in Kafka,
authentication, the size limit, bad payloads, an unreachable or silent broker (503, never 2xx),
and a broker of our own stopped and started under traffic.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from models.ingest.formats import make_parser, parse_records
from models.ingest.validate import Rejection, recipient_key
from streams.adapters.gateway_auth import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridVerifier,
    check_credentials,
    load_public_key,
    sns_subscribe_url_problem,
)
from streams.adapters.gateway_server import GatewaySettings, convert_body, make_app
from streams.redaction import address_spans, redact, redact_bounded, redact_keyed
from streams.worker.settings import Settings
from streams.worker.wire import redacted_dlq_record as dead_letter
from tests.conftest import REPO, PrivateBroker, free_port, private_topics

DATA = REPO / "tests" / "data" / "formats"
TOKEN = "s3cret-gateway-token"
#: an address that is not redacted (the parsers' own recipient@ and the dead letters' redacted@)
CLEAR = rb"(?<![A-Za-z0-9._%+-])(?!redacted@|recipient@)[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[a-z]+"


# -- keys and signatures -----------------------------------------------------------------------


def new_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    """A P-256 key pair; the public key as SendGrid shows it (base64 of the DER SPKI)."""
    priv = ec.generate_private_key(ec.SECP256R1())
    der = priv.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return priv, base64.b64encode(der).decode()


def sign(priv: ec.EllipticCurvePrivateKey, body: bytes, ts: int) -> dict[str, str]:
    """SendGrid's headers for ``body`` signed at ``ts``."""
    sig = priv.sign(str(ts).encode() + body, ec.ECDSA(hashes.SHA256()))
    return {SIGNATURE_HEADER: base64.b64encode(sig).decode(), TIMESTAMP_HEADER: str(ts)}


# -- unit: credentials -------------------------------------------------------------------------


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.mark.parametrize(
    ("expected", "header", "want"),
    [
        ("", None, None),  # no token configured: open
        ("", "Bearer anything", None),
        ("tok", None, "missing_credentials"),
        ("tok", "", "missing_credentials"),
        ("tok", "Bearer tok", None),
        ("tok", "bearer tok", None),  # the scheme is case-insensitive
        ("tok", "Bearer tok2", "wrong_token"),
        ("tok", "Bearer to", "wrong_token"),
        ("tok", "Bearer ", "wrong_token"),
        ("tok", _basic("sns", "tok"), None),  # SNS / SendGrid: https://user:tok@host/...
        ("tok", _basic("", "tok"), None),
        ("tok", _basic("tok", "nope"), "wrong_token"),  # the token is the password
        ("tok", "Basic !!!not-base64", "wrong_token"),
        ("tok", "Digest abc", "missing_credentials"),
        ("tök", "Bearer tök", None),
    ],
)
def test_check_credentials(expected: str, header: str | None, want: str | None) -> None:
    got = check_credentials(expected, header)
    assert (got[0] if got else None) == want


# -- unit: SendGrid signatures ------------------------------------------------------------------

BODY = b'[{"email":"a@example.com","event":"delivered","timestamp":1795420800}]'


@pytest.mark.parametrize(
    ("case", "want"),
    [
        ("valid", None),
        ("valid_pem_key", None),
        ("other_body", "bad_signature"),
        ("other_timestamp", "bad_signature"),
        ("other_key", "bad_signature"),
        ("stale", "stale_signature"),
        ("future", "stale_signature"),
        ("edge_of_window", None),
        ("not_base64", "bad_signature"),
        ("not_a_number", "bad_signature"),
        ("no_signature", "missing_signature"),
        ("no_timestamp", "missing_signature"),
    ],
)
def test_sendgrid_signature(case: str, want: str | None) -> None:
    priv, pub = new_key()
    now = 1_795_420_800.0
    ts = int(now) - 10
    key = pub
    if case == "valid_pem_key":
        key = (
            priv.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )
    v = SendGridVerifier(key, max_skew_s=300)
    h = sign(priv, BODY, ts)
    sig: str | None = h[SIGNATURE_HEADER]
    stamp: str | None = h[TIMESTAMP_HEADER]
    body = BODY
    if case == "other_body":
        body = BODY.replace(b"delivered", b"bounce")
    elif case == "other_timestamp":
        stamp = str(ts + 1)
    elif case == "other_key":
        sig = sign(new_key()[0], BODY, ts)[SIGNATURE_HEADER]
    elif case == "stale":
        h = sign(priv, BODY, int(now) - 301)
        sig, stamp = h[SIGNATURE_HEADER], h[TIMESTAMP_HEADER]
    elif case == "future":
        h = sign(priv, BODY, int(now) + 301)
        sig, stamp = h[SIGNATURE_HEADER], h[TIMESTAMP_HEADER]
    elif case == "edge_of_window":
        h = sign(priv, BODY, int(now) - 300)
        sig, stamp = h[SIGNATURE_HEADER], h[TIMESTAMP_HEADER]
    elif case == "not_base64":
        sig = "%%%"
    elif case == "not_a_number":
        stamp = "yesterday"
    elif case == "no_signature":
        sig = None
    elif case == "no_timestamp":
        stamp = None
    got = v.check(sig, stamp, body, now)
    assert (got[0] if got else None) == want, got


@pytest.mark.parametrize(
    ("make", "ok"),
    [
        (lambda: ec.generate_private_key(ec.SECP256R1()).public_key(), True),
        (lambda: ec.generate_private_key(ec.SECP384R1()).public_key(), False),
        (
            lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key(),
            False,
        ),
    ],
)
def test_only_p256_keys(make: Any, ok: bool) -> None:
    der = make().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    text = base64.b64encode(der).decode()
    if ok:
        assert load_public_key(text).curve.name == "secp256r1"
        assert load_public_key(text[:30] + "\n" + text[30:]).curve.name == "secp256r1"
    else:
        with pytest.raises(ValueError, match="P-256"):
            load_public_key(text)
    with pytest.raises(ValueError):
        load_public_key("not a key")


# -- unit: SNS ---------------------------------------------------------------------------------

SNS_OK = "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-east-1:123456789012:t&Token=abc"


@pytest.mark.parametrize(
    ("url", "ok"),
    [
        (SNS_OK, True),
        (SNS_OK.replace("us-east-1.amazonaws.com", "cn-north-1.amazonaws.com.cn"), True),
        (SNS_OK.replace("https://", "http://"), False),
        (
            SNS_OK.replace(
                "sns.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com.evil.example"
            ),
            False,
        ),
        (SNS_OK.replace("sns.us-east-1.amazonaws.com", "evil.example"), False),
        (SNS_OK.replace("sns.us-east-1.amazonaws.com", "sns.us-east-1.amazonaws.com:8443"), False),
        (SNS_OK.replace("https://", "https://user:pw@"), False),
        (SNS_OK.replace("ConfirmSubscription", "Unsubscribe"), False),
        ("https://127.0.0.1/?Action=ConfirmSubscription", False),
        (None, False),
        ("", False),
    ],
)
def test_sns_subscribe_url(url: str | None, ok: bool) -> None:
    assert (sns_subscribe_url_problem(url) is None) == ok


def _sns_confirmation(topic: str, url: str) -> bytes:
    doc = orjson.loads((DATA / "ses" / "sns-subscription-confirmation.json").read_bytes())
    doc["TopicArn"] = topic
    doc["SubscribeURL"] = url
    return orjson.dumps(doc)


@pytest.mark.parametrize(
    ("confirm", "topics", "url", "answer", "status", "action", "fetched"),
    [
        (False, "", SNS_OK, 200, 200, "logged", False),
        (True, "", SNS_OK, 200, 200, "confirmed", True),
        (True, "arn:aws:sns:us-east-1:123456789012:t", SNS_OK, 200, 200, "confirmed", True),
        (True, "arn:aws:sns:us-east-1:123456789012:other", SNS_OK, 200, 403, None, False),
        (True, "", "https://evil.example/?Action=ConfirmSubscription", 200, 400, None, False),
        (True, "", SNS_OK, 500, 503, None, True),  # SNS said no: 503, SNS sends it again
    ],
)
def test_sns_subscription_confirmation(
    confirm: bool,
    topics: str,
    url: str,
    answer: int,
    status: int,
    action: str | None,
    fetched: bool,
) -> None:
    """A SubscriptionConfirmation is confirmed (the SubscribeURL fetched) only when configured,
    for an allowed topic and an SNS URL; else logged for a person. No broker is needed: the
    gateway answers it without producing anything (its bootstrap here leads nowhere)."""
    from aiohttp.test_utils import TestClient, TestServer

    seen: list[str] = []

    async def confirmer(u: str) -> int:
        seen.append(u)
        return answer

    cfg = GatewaySettings(sns_confirm=confirm, sns_topics=topics, token="")
    ksettings = Settings(_env_file=None, kafka_bootstrap=f"127.0.0.1:{free_port()}", api_token="")  # type: ignore[call-arg]
    body = _sns_confirmation("arn:aws:sns:us-east-1:123456789012:t", url)

    async def main() -> tuple[int, dict[str, Any]]:
        app = make_app(cfg, ksettings, {"ses": make_parser("ses")}, confirm=confirmer)
        async with TestClient(TestServer(app)) as client:
            r = await client.post(
                "/ingest/ses",
                data=body,
                headers={"x-amz-sns-message-type": "SubscriptionConfirmation"},
            )
            return r.status, await r.json()

    got_status, doc = asyncio.run(main())
    assert got_status == status, doc
    if action is not None:
        assert doc["action"] == action
    assert seen == ([url] if fetched else [])


# -- unit: body -> events and dead letters ------------------------------------------------------


def _convert(fmt: str, body: bytes) -> Any:
    return convert_body(fmt, make_parser(fmt, loads=orjson.loads), body, "gateway:test", "rid")


@pytest.mark.parametrize(
    ("fmt", "body", "status", "reason"),
    [
        ("sendgrid", b"", 400, "empty"),
        ("sendgrid", b"  \n\n ", 400, "empty"),
        ("sendgrid", b"hello", 400, "not_json"),
        ("sendgrid", b"<html><body>hi</body></html>", 400, "not_json"),
        ("sendgrid", b'[{"event": "delivered"', 400, "not_json"),  # truncated
        ("sendgrid", b"42", 400, "wrong_shape"),
        ("ses", b'"a string"', 400, "wrong_shape"),
        ("kumomta", b"true\nnull\n", 400, "wrong_shape"),
        ("canonical", b"not json\nstill not\n", 400, "not_json"),
        ("sendgrid", b"\xff\xfe[]", 400, "not_json"),  # not UTF-8
        ("canonical", b'{"event": "sent", "x": "' + b"a" * (1 << 20) + b'"}', 413, "too_large"),
    ],
)
def test_whole_body_refused(fmt: str, body: bytes, status: int, reason: str) -> None:
    conv = _convert(fmt, body)
    assert conv.refused is not None and conv.refused[:2] == (status, reason), conv.refused
    assert not conv.events and not conv.dead


def test_records_are_events_or_dead_letters() -> None:
    """A good batch with bad items: the events are the parser's, every rejection is a dead
    letter holding the refused item (not the whole batch), addresses redacted."""
    body = (DATA / "sendgrid" / "current.json").read_bytes()
    want = [ev for _, evs, _ in parse_records("sendgrid", body) for ev in evs]
    n_rej = sum(len(r) for _, _, r in parse_records("sendgrid", body))
    conv = _convert("sendgrid", body)
    assert conv.refused is None and n_rej > 0
    assert [orjson.loads(v) for _, v in conv.events] == want
    assert [k for k, _ in conv.events] == [ev["recipient_key"].encode() for ev in want]
    assert len(conv.dead) == n_rej == sum(conv.reasons.values())
    batch = orjson.loads(body)
    for value in conv.dead:
        d = orjson.loads(value)
        original = base64.b64decode(d["original_b64"])
        assert d["format"] == "sendgrid" and d["request_id"] == "rid" and d["reason"]
        assert not re.search(CLEAR, original) and not re.search(CLEAR, value)
        m = re.match(r"item ([0-9]+): ", d["detail"])
        assert m is not None, d["detail"]
        assert original == redact(orjson.dumps(batch[int(m.group(1))]))


def test_a_bad_line_among_good_ones_is_a_dead_letter() -> None:
    good = (DATA / "canonical" / "events.jsonl").read_bytes()
    conv = _convert("canonical", good + b"this line is broken\n")
    base = _convert("canonical", good)
    assert conv.refused is None
    assert conv.events == base.events and len(base.events) > 0
    assert conv.reasons["bad_json"] == base.reasons["bad_json"] + 1
    assert base64.b64decode(orjson.loads(conv.dead[-1])["original_b64"]) == b"this line is broken"


def test_a_huge_record_is_dead_lettered_not_stuck() -> None:
    """A record over the parser's limit among good ones is a dead letter; its redaction is
    linear (ingest's regular expression would take hours on 1 MiB of letters without @)."""
    good = b'{"event": "sent", "timestamp": 1795420800, "recipient": "a@example.com"}\n'
    huge = b'{"y": "c@example.com", "x": "' + b"a" * (1 << 20) + b' b@example.com"}\n'
    conv = _convert("canonical", good + huge)
    assert conv.refused is None and len(conv.events) == 1
    assert conv.reasons == Counter({"too_large": 1})
    d = orjson.loads(conv.dead[0])
    # the original is cut at 1 MiB, before the second address: one address kept, redacted
    assert d["redacted"] == 1 and d["address_keys"] == [recipient_key("c@example.com")]
    original = base64.b64decode(d["original_b64"])
    assert d["original_truncated"] and d["original_bytes"] == len(huge) - 1
    assert len(original) == 1 << 20 and not re.search(CLEAR, original)


# -- unit: redaction ---------------------------------------------------------------------------

_ALPHABET = b"ab.-!_@ \x80\xc3\xa9Z9<>;"


@given(st.lists(st.sampled_from(list(_ALPHABET)), max_size=60).map(bytes))
@settings(max_examples=2000, deadline=None)
def test_dead_letter_within_bounds_is_the_whole_redaction(raw: bytes) -> None:
    """A gateway dead letter is ``repmon ingest``'s (one builder, whose dead letters ``repmon dlq
    redrive`` reads; tests/test_ingest_cli.py checks ingest's cut): within its bounds the whole
    original and detail redacted, the keys of every address in order, nothing cut. (The redaction
    itself is checked against its reference pattern in tests/test_dlq_cli.py.)"""
    rej = Rejection("unparseable", raw.decode("utf-8", "replace"))
    d = orjson.loads(dead_letter(rej, raw, "gateway:/ingest/kumomta", 3, "kumomta"))
    full, keys = redact_keyed(raw)
    assert base64.b64decode(d["original_b64"]) == full
    assert d["detail"] == redact(rej.detail.encode()).decode("utf-8", "replace")
    assert d["address_keys"] == keys and d["redacted"] == len(keys)
    assert d["original_truncated"] is False and d["original_bytes"] == len(raw)


@given(
    st.lists(st.sampled_from(list(_ALPHABET)), max_size=80).map(bytes),
    st.integers(0, 90),
    st.integers(0, 5),
)
@settings(max_examples=2000, deadline=None)
def test_bounded_redaction_cuts_between_addresses(
    raw: bytes, max_bytes: int, max_keys: int
) -> None:
    """The bounded form (dead letters: 1 MiB, 10,000 keys) is a prefix of the whole one, within
    its bounds, cut before an address, never inside one (no clear piece of a local part), with
    the keys of exactly the addresses it keeps (``repmon dlq redrive`` pairs them)."""
    full, all_keys = redact_keyed(raw)
    out, keys, cut = redact_bounded(raw, max_bytes, max_keys)
    assert full.startswith(out) and all_keys[: len(keys)] == keys
    assert len(out) <= max_bytes and len(keys) <= max_keys
    assert cut == (out != full)
    # where each redacted address lies in the whole result
    where, shift = [], 0
    for start, at, end in address_spans(raw):
        where.append((start + shift, end + shift + len(b"redacted") - (at - start)))
        shift += len(b"redacted") - (at - start)
    assert [full[a:b].startswith(b"redacted@") for a, b in where] == [True] * len(where)
    assert not any(a < len(out) < b for a, b in where), "cut inside an address"
    assert len(keys) == sum(1 for _, b in where if b <= len(out))


@pytest.mark.parametrize(
    ("raw", "want", "n"),
    [
        (b"to=<Judy.Doe+x@Example.COM>, status=sent", b"to=<redacted@Example.COM>, status=sent", 1),
        (b'{"rcpt": "a@b.example", "n": 1}', b'{"rcpt": "redacted@b.example", "n": 1}', 1),
        (b"no address here", b"no address here", 0),
        (b"a@b.com!c@d.org", b"redacted@b.comredacted@d.org", 2),  # "!c" is a local part
        (b"@x.com a@-x.com", b"@x.com a@-x.com", 0),  # no local part; no domain
        (b"j\xc3\xa9r\xc3\xb4me@ex.fr", b"redacted@ex.fr", 1),  # SMTPUTF8 local part
        (b"a@b@c.d", b"redacted@b@c.d", 1),
    ],
)
def test_redact(raw: bytes, want: bytes, n: int) -> None:
    red, keys = redact_keyed(raw)
    assert red == want and len(keys) == n == len(address_spans(raw))
    assert redact(raw) == want


# -- integration: the gateway as a process ------------------------------------------------------


class GatewayProc:
    """``repmon gateway`` as a subprocess on a free port, its own topics and settings."""

    def __init__(self, tmp: Path, bootstrap: str, **env: str) -> None:
        self.tag = uuid.uuid4().hex[:8]
        self.port = free_port()
        self.env = dict(os.environ)
        for k in list(self.env):
            if k.startswith("REPMON_GATEWAY_") or k == "REPMON_API_TOKEN":
                del self.env[k]
        self.env.update(
            REPMON_KAFKA_BOOTSTRAP=bootstrap,
            REPMON_TOPIC_PARTITIONS="3",
            REPMON_GATEWAY_PORT=str(self.port),
            **private_topics(self.tag),
            **env,
        )
        self.events_topic = self.env["REPMON_TOPIC_EVENTS"]
        self.dlq_topic = self.env["REPMON_TOPIC_DLQ"]
        self.log_path = tmp / f"gateway-{self.tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True, timeout_s: float = 60.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streams.cli", "gateway"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        path = "/readyz" if ready else "/livez"
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"gateway exited:\n{self.log_tail()}"
            status, _ = self.get(path)
            if status == 200:
                return
            time.sleep(0.2)
        raise AssertionError(f"gateway {path} not 200 within {timeout_s} s:\n{self.log_tail()}")

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=5) as r:
                body = r.read()
                return r.status, orjson.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as e:
            return e.code, orjson.loads(e.read())
        except OSError:
            return 0, None

    def post(
        self,
        path: str,
        body: bytes,
        headers: dict[str, str] | None = None,
        token: str | None = TOKEN,
    ) -> tuple[int, Any, http.client.HTTPMessage]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if token is not None:
            h.setdefault("Authorization", f"Bearer {token}")
        req = urllib.request.Request(self.url + path, data=body, headers=h, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, orjson.loads(r.read()), r.headers
        except urllib.error.HTTPError as e:
            return e.code, orjson.loads(e.read()), e.headers

    def metric(self, line_start: str) -> float:
        _, text = self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(line_start):
                total += float(line.rsplit(" ", 1)[1])
        return total

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "<no log>"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[GatewayProc]]:
    started: list[GatewayProc] = []
    try:
        yield started
    finally:
        for g in started:
            g.stop()


def start_gateway(
    gateways: list[GatewayProc], tmp: Path, bootstrap: str, ready: bool = True, **env: str
) -> GatewayProc:
    g = GatewayProc(tmp, bootstrap, **env)
    gateways.append(g)
    g.start(ready=ready)
    return g


def topic_records(bootstrap: str, topic: str, timeout_s: float = 60.0) -> list[tuple[bytes, bytes]]:
    """Every record of ``topic`` (key, value): as many as its end offsets say, read to the end."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        deadline = time.monotonic() + timeout_s
        parts = c.partitions_for_topic(topic)
        while not parts:
            assert time.monotonic() < deadline, f"topic {topic} not found"
            time.sleep(0.2)
            c.topics()
            parts = c.partitions_for_topic(topic)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        total = sum(c.end_offsets(tps).values())
        out: list[tuple[bytes, bytes]] = []
        while len(out) < total:
            assert time.monotonic() < deadline, f"read {len(out)} of {total} records of {topic}"
            for recs in c.poll(timeout_ms=500).values():
                out.extend((r.key, r.value) for r in recs)
        return out
    finally:
        c.close()


def _canon(ev: dict[str, Any]) -> bytes:
    return orjson.dumps(ev, option=orjson.OPT_SORT_KEYS)


#: (path, format, fixture files) of every documented sample the gateway accepts
SAMPLES = [
    ("/ingest/ses", "ses", sorted((DATA / "ses").glob("*.json*"))),
    ("/ingest/sendgrid", "sendgrid", sorted((DATA / "sendgrid").glob("*.json"))),
    ("/ingest/kumomta", "kumomta", sorted((DATA / "kumomta").glob("*.json*"))),
    ("/ingest/canonical", "canonical", sorted((DATA / "canonical").glob("*.jsonl"))),
]


@pytest.mark.kafka
def test_every_sample_acked_is_exactly_in_kafka(
    kafka_bootstrap: str, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """Each path with every documented sample: 200 only after the broker acknowledged, and the
    events topic then holds exactly the parser's events of every sample (no loss, no copy),
    keyed by recipient key; the DLQ exactly the rejections, without a clear address. SendGrid
    bodies are signed (no token), the others carry the token."""
    priv, pub = new_key()
    g = start_gateway(
        gateways,
        tmp_path,
        kafka_bootstrap,
        REPMON_GATEWAY_TOKEN=TOKEN,
        REPMON_GATEWAY_SENDGRID_PUBLIC_KEY=pub,
    )
    want: Counter[bytes] = Counter()
    n_dead = acked_events = acked_dead = 0
    for path, fmt, files in SAMPLES:
        assert files, f"no fixtures for {fmt}"
        for f in files:
            body = f.read_bytes()
            if fmt == "sendgrid":
                status, doc, _ = g.post(path, body, sign(priv, body, int(time.time())), token=None)
            else:
                status, doc, _ = g.post(path, body)
            assert status == 200, (f.name, doc)
            for _, evs, rejs in parse_records(fmt, body, make_parser(fmt)):
                want.update(_canon(ev) for ev in evs)
                n_dead += len(rejs)
            if f.name == "sns-subscription-confirmation.json":
                assert doc == {"sns": "SubscriptionConfirmation", "action": "logged"}
                continue
            acked_events += doc["events"]
            acked_dead += doc["dead_letters"]
    # a SendGrid batch far over 1 MiB (one JSON document) within the 4 MiB body limit
    big = _sendgrid_batch("big", 9000)
    assert len(big) > 1 << 20
    status, doc, _ = g.post("/ingest/sendgrid", big, sign(priv, big, int(time.time())), token=None)
    assert (status, doc["events"]) == (200, 9000), doc
    acked_events += doc["events"]
    big_parser = make_parser("sendgrid", max_record_bytes=4 << 20)
    want.update(
        _canon(ev) for _, evs, _ in parse_records("sendgrid", big, big_parser) for ev in evs
    )
    assert acked_events == sum(want.values()) > 9000 and acked_dead == n_dead > 0
    events = topic_records(kafka_bootstrap, g.events_topic)
    got = Counter(_canon(orjson.loads(v)) for _, v in events)
    assert got == want
    for k, v in events:  # the recipient key (a canonical event without recipient: its domain)
        ev = orjson.loads(v)
        assert k == (ev.get("recipient_key") or ev["recipient_domain"]).encode()
    assert sum(1 for k, _ in events if len(k) == 64) > 50
    dead = topic_records(kafka_bootstrap, g.dlq_topic)
    assert len(dead) == n_dead
    for _, v in dead:
        d = orjson.loads(v)
        assert d["reason"] and d["format"] in {"ses", "sendgrid", "kumomta", "canonical"}
        assert d["topic"].startswith("gateway:/ingest/")
        assert not re.search(CLEAR, base64.b64decode(d["original_b64"])), d
    assert g.metric("repmon_gateway_events_total") == acked_events
    assert g.metric("repmon_gateway_rejections_total") == acked_dead


def _sendgrid_batch(tag: str, n: int, start: int = 0) -> bytes:
    now = int(time.time())
    return orjson.dumps(
        [
            {
                "email": f"u{tag}-{i}@example.com",
                "timestamp": now,
                "event": "delivered",
                "sg_message_id": f"m{tag}-{i}.filter0001",
                "response": "250 2.0.0 OK",
                "ip": "192.0.2.10",
            }
            for i in range(start, start + n)
        ]
    )


def _keys_of(tag: str, n: int, start: int = 0) -> set[str]:
    return {recipient_key(f"u{tag}-{i}@example.com") for i in range(start, start + n)}


@pytest.mark.kafka
def test_authentication(kafka_bootstrap: str, tmp_path: Path, gateways: list[GatewayProc]) -> None:
    """401 without or with a wrong token (and a challenge); Bearer and Basic (password = token)
    pass; SendGrid bodies pass with a valid signature alone, and a bad or stale signature is
    refused whatever the token. Only what was accepted is in Kafka."""
    priv, pub = new_key()
    g = start_gateway(
        gateways,
        tmp_path,
        kafka_bootstrap,
        REPMON_GATEWAY_TOKEN=TOKEN,
        REPMON_GATEWAY_SENDGRID_PUBLIC_KEY=pub,
        REPMON_GATEWAY_SENDGRID_MAX_SKEW_S="120",
    )
    now = int(time.time())
    accepted: set[str] = set()
    # (tag, path, credentials, token, status, refusal reason)
    cases = [
        ("a", "/ingest/canonical", "", None, 401, "missing_credentials"),
        ("b", "/ingest/canonical", "", "wrong", 401, "wrong_token"),
        ("c", "/ingest/canonical", "", TOKEN, 200, None),
        ("d", "/ingest/canonical", "basic", None, 200, None),
        ("e", "/ingest/canonical", "basic_wrong", None, 401, "wrong_token"),
        ("f", "/ingest/ses", "", None, 401, "missing_credentials"),
        ("g", "/ingest/kumomta", "", "wrong", 401, "wrong_token"),
        ("h", "/ingest/sendgrid", "", None, 401, "missing_credentials"),
        ("i", "/ingest/sendgrid", "", "wrong", 401, "wrong_token"),
        ("j", "/ingest/sendgrid", "", TOKEN, 200, None),  # unsigned, with the token
        ("k", "/ingest/sendgrid", "signed", None, 200, None),
        ("l", "/ingest/sendgrid", "bad_signature", None, 401, "bad_signature"),
        ("m", "/ingest/sendgrid", "bad_signature", TOKEN, 401, "bad_signature"),
        ("n", "/ingest/sendgrid", "stale", None, 401, "stale_signature"),
        ("o", "/ingest/sendgrid", "stale", TOKEN, 401, "stale_signature"),
    ]
    for tag, path, cred, token, status, reason in cases:
        n = 1 if path == "/ingest/kumomta" else 5
        if path == "/ingest/sendgrid":
            body = _sendgrid_batch(tag, n)
        elif path == "/ingest/kumomta":
            body = orjson.dumps(
                {
                    "type": "Delivery",
                    "recipient": f"u{tag}-0@example.com",
                    "timestamp": now,
                    "response": {"code": 250, "content": "OK"},
                }
            )
        else:
            body = b"\n".join(
                orjson.dumps(
                    {"event": "delivered", "timestamp": now, "recipient": f"u{tag}-{i}@example.com"}
                )
                for i in range(n)
            )
        headers = {
            "": {},
            "basic": {"Authorization": _basic("sns", TOKEN)},
            "basic_wrong": {"Authorization": _basic("sns", "nope")},
            "signed": sign(priv, body, now),
            "bad_signature": sign(priv, body + b" ", now),
            "stale": sign(priv, body, now - 600),
        }[cred]
        got, doc, resp_headers = g.post(path, body, headers, token=token)
        assert got == status, (tag, doc)
        if status == 200:
            accepted |= _keys_of(tag, n)
        else:
            assert doc["reason"] == reason, (tag, doc)
            challenges = resp_headers.get_all("WWW-Authenticate") or []
            assert any(c.startswith("Bearer") for c in challenges)
            assert any(c.startswith("Basic") for c in challenges)
    events = topic_records(kafka_bootstrap, g.events_topic)
    assert {orjson.loads(v)["recipient_key"] for _, v in events} == accepted
    assert len(events) == len(accepted)
    assert (
        g.metric(
            'repmon_gateway_requests_refused_total{path="/ingest/sendgrid",reason="stale_signature"}'
        )
        == 2
    )


@pytest.mark.kafka
def test_sendgrid_key_without_token_requires_the_signature(
    kafka_bootstrap: str, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """With a SendGrid key and no token, /ingest/sendgrid takes signed bodies only, while the
    other paths stay open (loopback, no token: as the worker's endpoints)."""
    priv, pub = new_key()
    g = start_gateway(gateways, tmp_path, kafka_bootstrap, REPMON_GATEWAY_SENDGRID_PUBLIC_KEY=pub)
    body = _sendgrid_batch("x", 3)
    status, doc, _ = g.post("/ingest/sendgrid", body, token=None)
    assert (status, doc["reason"]) == (401, "missing_signature")
    status, doc, _ = g.post("/ingest/sendgrid", body, sign(priv, body, int(time.time())), None)
    assert (status, doc["events"]) == (200, 3)
    status, _, _ = g.post(
        "/ingest/canonical",
        b'{"event":"sent","timestamp":1795420800,"recipient":"x@example.com"}',
        token=None,
    )
    assert status == 200
    assert len(topic_records(kafka_bootstrap, g.events_topic)) == 4


def _chunked_post(url: str, path: str, chunks: list[bytes]) -> tuple[int, Any]:
    """A POST without Content-Length (chunked transfer encoding)."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request(
            "POST",
            path,
            body=iter(chunks),
            headers={"Authorization": f"Bearer {TOKEN}", "Transfer-Encoding": "chunked"},
            encode_chunked=True,
        )
        r = conn.getresponse()
        return r.status, orjson.loads(r.read())
    finally:
        conn.close()


@pytest.mark.kafka
def test_size_limit_and_bad_payloads(
    kafka_bootstrap: str, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """413 with a reason over the configured limit (with or without Content-Length); 400 with a
    reason for bodies that are not JSON or of the wrong shape; none of it reaches Kafka, and
    what did pass is there exactly."""
    g = start_gateway(
        gateways, tmp_path, kafka_bootstrap,
        REPMON_GATEWAY_TOKEN=TOKEN, REPMON_GATEWAY_MAX_BODY_BYTES="4096",
    )  # fmt: skip
    big = _sendgrid_batch("big", 60)
    assert len(big) > 4096
    status, doc, _ = g.post("/ingest/sendgrid", big)
    assert (status, doc["reason"]) == (413, "too_large") and "4096" in doc["error"]
    status, doc = _chunked_post(
        g.url, "/ingest/sendgrid", [big[i : i + 1000] for i in range(0, len(big), 1000)]
    )
    assert (status, doc["reason"]) == (413, "too_large")
    for path, body, reason in [
        ("/ingest/sendgrid", b"event=delivered&email=a@example.com", "not_json"),
        ("/ingest/ses", b"<xml/>", "not_json"),
        ("/ingest/kumomta", b'{"type": "Delivery", "recipient": ', "not_json"),
        ("/ingest/canonical", b"", "empty"),
        ("/ingest/sendgrid", b"12345", "wrong_shape"),
        ("/ingest/canonical", b'"delivered"\n"bounced"\n', "wrong_shape"),
    ]:
        status, doc, _ = g.post(path, body)
        assert (status, doc["reason"]) == (400, reason), (path, body, doc)
        assert doc["error"]
    small = _sendgrid_batch("ok", 20)
    assert len(small) <= 4096
    status, doc, _ = g.post("/ingest/sendgrid", small)
    assert (status, doc["events"]) == (200, 20)
    status, doc = _chunked_post(g.url, "/ingest/sendgrid", [small[:100], small[100:]])
    assert (status, doc["events"]) == (200, 20)
    events = topic_records(kafka_bootstrap, g.events_topic)
    assert Counter(orjson.loads(v)["recipient_key"] for _, v in events) == Counter(
        {k: 2 for k in _keys_of("ok", 20)}
    )
    assert topic_records(kafka_bootstrap, g.dlq_topic, timeout_s=10) == []


class SilentBroker:
    """A TCP listener that accepts connections and never answers (a hung broker)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.conns: list[socket.socket] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
                self.conns.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self._stop.set()
        self.thread.join(timeout=5)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.mark.kafka
@pytest.mark.parametrize("broker", ["refused", "silent"])
def test_unreachable_broker_is_503_never_2xx(
    broker: str, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """A bootstrap address where nothing listens, or where something accepts and never
    answers: /livez 200, /readyz 503, and every POST 503 (so the sender retries), never 2xx."""
    silent = SilentBroker() if broker == "silent" else None
    try:
        port = silent.port if silent is not None else free_port()
        g = start_gateway(
            gateways, tmp_path, f"127.0.0.1:{port}", ready=False,
            REPMON_GATEWAY_TOKEN=TOKEN, REPMON_GATEWAY_ACK_TIMEOUT_S="2",
        )  # fmt: skip
        status, doc = g.get("/readyz")
        assert status == 503 and doc["problems"], doc
        for path, f in [
            ("/ingest/sendgrid", DATA / "sendgrid" / "all-events.json"),
            ("/ingest/ses", DATA / "ses" / "sns-envelope-bounce.json"),
            ("/ingest/kumomta", DATA / "kumomta" / "hook_batch.json"),
            ("/ingest/canonical", DATA / "canonical" / "events.jsonl"),
        ]:
            t0 = time.monotonic()
            status, doc, headers = g.post(path, f.read_bytes())
            assert status == 503, (path, doc)
            assert doc["reason"] == "broker_unavailable" and headers["Retry-After"]
            assert time.monotonic() - t0 < 30
        assert g.get("/livez")[0] == 200
        assert g.metric("repmon_gateway_events_total") == 0
        assert g.metric('repmon_gateway_requests_total{path="/ingest/sendgrid",status="503"}') == 1
    finally:
        if silent is not None:
            silent.close()


@pytest.mark.kafka
def test_broker_outage_503_then_recovers(
    kafka_bootstrap: str, tmp_path: Path, gateways: list[GatewayProc]
) -> None:
    """A broker of our own, stopped under traffic: while it is down every POST is 503 (never
    2xx) and /readyz 503; once it is back the gateway acknowledges again. Every event of every
    200 is in Kafka, and nothing that was never posted; an acknowledged batch is there once."""
    broker = PrivateBroker(tmp_path)
    broker.run("start")
    try:
        g = start_gateway(
            gateways, tmp_path, broker.bootstrap,
            REPMON_GATEWAY_TOKEN=TOKEN, REPMON_GATEWAY_ACK_TIMEOUT_S="3",
        )  # fmt: skip
        acked: list[str] = []
        posted: list[str] = []

        def post(tag: str) -> int:
            posted.append(tag)
            status, doc, _ = g.post("/ingest/sendgrid", _sendgrid_batch(tag, 50))
            assert status in (200, 503), doc
            if status == 200:
                assert doc["events"] == 50
                acked.append(tag)
            return status

        assert post("a") == 200
        assert post("b") == 200
        broker.run("stop")
        for tag in ("c", "d", "e"):
            assert post(tag) == 503
        status, doc = g.get("/readyz")
        assert status == 503 and doc["problems"], doc
        broker.run("start")
        deadline = time.monotonic() + 90
        n = 0
        while post(f"f{n}") != 200:
            assert time.monotonic() < deadline, (
                f"no 200 after the broker came back:\n{g.log_tail()}"
            )
            n += 1
            time.sleep(1.0)
        assert post("g") == 200
        deadline = time.monotonic() + 30
        while g.get("/readyz")[0] != 200:
            assert time.monotonic() < deadline, g.get("/readyz")
            time.sleep(0.5)
        events = topic_records(broker.bootstrap, g.events_topic)
        got = Counter(orjson.loads(v)["recipient_key"] for _, v in events)
        posted_keys = set().union(*(_keys_of(t, 50) for t in posted))
        assert set(got) <= posted_keys, "an event nobody posted"
        for tag in acked:
            for k in _keys_of(tag, 50):
                assert got[k] >= 1, f"an acknowledged event of batch {tag} is missing"
        for tag in ("a", "b", "g"):  # acknowledged at the first try: exactly once
            assert all(got[k] == 1 for k in _keys_of(tag, 50)), tag
    finally:
        for g_ in gateways:
            g_.stop()
        broker.run("stop")
