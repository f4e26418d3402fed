"""Routing and escalation in the running gateway, with a real local alarm-centre endpoint."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets
from aiohttp import web

from tests.conftest import GatewayFactory, free_port
from tests.helpers import device, login

pytestmark = pytest.mark.network


class Centre:
    """A fake larmcentral: records deliveries and confirms each with a reference."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.arrived = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.received.append(body)
        self.arrived.set()
        return web.json_response({"reference": f"LC-{len(self.received)}"})


@pytest.fixture
async def centre() -> AsyncIterator[tuple[Centre, str]]:
    fake = Centre()
    app = web.Application()
    app.router.add_post("/alarms", fake.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield fake, f"http://127.0.0.1:{port}/alarms"
    await runner.cleanup()


async def alarms_of(ws: websockets.ClientConnection, seconds: float) -> list[dict[str, Any]]:
    """Every alarm message a socket receives within ``seconds``."""
    found: list[dict[str, Any]] = []
    try:
        async with asyncio.timeout(seconds):
            while True:
                message = json.loads(await ws.recv())
                if message["type"] == "alarm" and message["alarm"]["type"] != "technical":
                    found.append(message["alarm"])
    except TimeoutError:
        pass
    return found


async def test_alarm_reaches_its_team_then_escalates_to_next_level_and_centre(
    mosquitto: tuple[str, int],
    prefix: str,
    make_gateway: GatewayFactory,
    centre: tuple[Centre, str],
) -> None:
    fake, url = centre
    escalation = {"team_s": 0.6, "next_level_s": 1.2, "centre_s": 1.8, "centre_retry_s": 5.0,
                  "centre_url": url}
    async with make_gateway(mosquitto, escalation=escalation) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, bo, cleo = [await login(base, n) for n in ("anna", "bo", "cleo")]
        async with anna.socket() as ws_a, bo.socket() as ws_b, cleo.socket() as ws_c:
            await dev.alarm("nobody-answers")
            await dev.wait_ack("nobody-answers")
            first_a, first_b, first_c = await asyncio.gather(
                alarms_of(ws_a, 0.4), alarms_of(ws_b, 0.4), alarms_of(ws_c, 0.4))
            # Routed to team-a only: both of its staff, not cleo of team-b.
            assert [a["ref"] for a in first_a] == ["nobody-answers"]
            assert [a["ref"] for a in first_b] == ["nobody-answers"]
            assert first_c == []
            # Nobody accepts: the team is re-alerted, then the next level (team-b) ...
            later_c = await alarms_of(ws_c, 1.5)
            assert later_c, "the next level never heard of the alarm"
            assert later_c[-1]["level"] >= 2
            kinds = [e["kind"] for e in later_c[-1]["escalations"]]
            assert kinds[:2] == ["team", "next_level"]
            # ... then the alarm centre, which confirms.
            await asyncio.wait_for(fake.arrived.wait(), 5)
            assert fake.received[0]["alarm"]["ref"] == "nobody-answers"
            assert fake.received[0]["attempt"] == 1
            for _ in range(100):
                alarm = (await anna.get(f"/alarms/{first_a[0]['id']}")).json()
                if alarm["centre_confirmed_at"]:
                    break
                await asyncio.sleep(0.05)
            assert alarm["centre_reference"] == "LC-1"
            # Acceptance stops the ladder; a second accept is refused naming the owner.
            assert (await cleo.post(f"/alarms/{alarm['id']}/accept")).status_code == 200
            conflict = await anna.post(f"/alarms/{alarm['id']}/accept")
            assert conflict.status_code == 409
            assert "cleo" in conflict.json()["detail"]
        # The gateway's own MQTT copy for the centre is not mistaken for a device's alarm.
        assert gw.metrics.registry.get_sample_value(
            "trygg_rejected_messages_total", {"reason": "missing_field"}) in (None, 0.0)
        for staff in (anna, bo, cleo):
            await staff.http.aclose()


async def test_forward_and_take_over(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, bo = [await login(base, n) for n in ("anna", "bo")]
        await dev.alarm("fwd")
        await dev.wait_ack("fwd")
        alarm_id = (await anna.get("/alarms")).json()[0]["id"]
        assert (await anna.post(f"/alarms/{alarm_id}/accept")).status_code == 200
        forwarded = await anna.post(f"/alarms/{alarm_id}/forward", json={"to": "bo"})
        assert forwarded.status_code == 200, forwarded.text
        assert forwarded.json()["owner"] == "bo"
        taken = await anna.post(f"/alarms/{alarm_id}/take-over")
        assert taken.status_code == 200, taken.text
        assert taken.json()["owner"] == "anna"
        bad = await anna.post(f"/alarms/{alarm_id}/close", json={"cause": "påhittad orsak"})
        assert bad.status_code == 422
        assert "hjälp given" in bad.json()["detail"]
        causes = (await anna.get(f"/alarms/{alarm_id}/causes")).json()
        assert "felaktigt larm" in causes
        for staff in (anna, bo):
            await staff.http.aclose()
