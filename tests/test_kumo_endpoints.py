"""The KumoMTA endpoints the worker serves (tsa-daemon's paths under /kumo/<token>/): what kumod
fetches equals the rendering of the decisions in force, the websocket sends the suspensions
first in full, then only what changed; a wrong path token is refused."""

from __future__ import annotations

import asyncio
import json
import tomllib
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from models.act.kumo import kumo_plan, shaping_toml, subscription_items, suspensions_json
from models.act.throttle_record import ThrottleRecord
from streams.worker.web import install_kumo_endpoints
from tests.test_kumo_shaping import NOW, config, decisions

TOKEN = "s3cret"


def _app(recs: dict[str, ThrottleRecord], token: str = TOKEN) -> web.Application:
    app = web.Application()
    install_kumo_endpoints(app.router, token, config(), lambda: dict(recs), clock=lambda: NOW)
    return app


def _run(recs: dict[str, ThrottleRecord], body: Any) -> Any:
    async def go() -> Any:
        async with TestClient(TestServer(_app(recs))) as client:
            return await body(client)

    return asyncio.run(go())


def test_the_overlay_and_suspensions_are_the_decisions_in_force() -> None:
    recs = {r.scope: r for r in decisions()}
    plan = kumo_plan(recs, config(), NOW)

    async def body(client: TestClient) -> tuple[str, Any, Any, str]:
        r1 = await client.get(f"/kumo/{TOKEN}/get_config_v1/shaping.toml")
        r2 = await client.get(f"/kumo/{TOKEN}/get_suspension_v1/suspended.json")
        r3 = await client.get(f"/kumo/{TOKEN}/get_bounce_v1/bounced.json")
        r4 = await client.get(f"/kumo/{TOKEN}/tsa/status")
        assert {r.status for r in (r1, r2, r3, r4)} == {200}
        return await r1.text(), await r2.json(), await r3.json(), await r4.text()

    toml_text, susp, bounced, status = _run(recs, body)
    assert toml_text == shaping_toml(plan)
    assert tomllib.loads(toml_text)  # kumod parses it as TOML
    assert susp == json.loads(json.dumps(suspensions_json(plan)))
    assert bounced == [] and status == "TSA Daemon OK"


def test_a_wrong_path_token_is_refused() -> None:
    async def body(client: TestClient) -> list[int]:
        out = []
        for path in ("get_config_v1/shaping.toml", "get_suspension_v1/suspended.json"):
            r = await client.get(f"/kumo/wrong/{path}")
            out.append(r.status)
        return out

    assert _run({r.scope: r for r in decisions()}, body) == [401, 401]


def test_the_subscription_sends_every_suspension_then_changes_only() -> None:
    recs = {r.scope: r for r in decisions()}
    want = subscription_items(kumo_plan(recs, config(), NOW))
    assert want, "the test decisions produce no suspension: the test would prove nothing"

    async def body(client: TestClient) -> list[Any]:
        ws = await client.ws_connect(f"/kumo/{TOKEN}/subscribe_event_v1")
        got = [json.loads((await ws.receive(timeout=10)).data) for _ in want]
        # nothing changed: no second burst within the polling interval
        try:
            extra = await ws.receive(timeout=6)
            got.append(("unexpected", extra.data))
        except TimeoutError:
            pass
        await ws.close()
        return got

    assert _run(recs, body) == want
