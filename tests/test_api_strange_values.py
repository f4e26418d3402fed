"""A damaged stored value never turns an answer into a 500 (issue 17.6, defence in depth).

The MQTT codec refuses lone surrogates and control characters now, but a value can reach
the gateway's memory or files by other paths (another transport, an older version, a file
written by another tool). A lone surrogate in a device's ``firmware`` once made
``/api/v1/console/fleet`` and ``/api/v1/devices`` answer 500 for the whole fleet. Here
such values are planted behind the codec's back; every answer stays 200, with U+FFFD for
the broken text and null for a number JSON cannot carry.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from gateway.ingest import DeviceSeen
from gateway.runtime import Gateway
from gateway.web import create_app
from gateway.web.responses import dumps, encode, scrub
from tests.conftest import PASSWORD, GatewayFactory
from tests.helpers import device, login, next_alarm

pytestmark = pytest.mark.network


@pytest.fixture
async def damaged(make_gateway: GatewayFactory, mosquitto: tuple[str, int]
                  ) -> AsyncIterator[tuple[Gateway, httpx.AsyncClient]]:
    """A gateway whose device table holds a lone surrogate and a NaN; a technician's client."""
    async with make_gateway(mosquitto) as gw:
        gw.devices["dev-a"] = DeviceSeen(gw.clock(), battery=math.nan, rssi=-61.0,
                                         firmware="fw-\ud800-1", state="on\udfffline")
        app = create_app(gw)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw/api/v1") as client:
            token = (await client.post("/auth/token", data={
                "username": "tove", "password": PASSWORD})).json()["access_token"]
            client.headers["Authorization"] = f"Bearer {token}"
            yield gw, client


async def test_fleet_and_devices_answer_with_the_damage_replaced(
    damaged: tuple[Gateway, httpx.AsyncClient], caplog: pytest.LogCaptureFixture
) -> None:
    _, client = damaged
    fleet = await client.get("/console/fleet")
    assert fleet.status_code == 200, fleet.text
    [row] = [d for d in fleet.json()["devices"] if d["id"] == "dev-a"]
    assert (row["firmware"], row["status"], row["battery"], row["rssi"]) == (
        "fw-\ufffd-1", "on\ufffdline", None, -61.0)
    listed = await client.get("/devices")
    assert listed.status_code == 200, listed.text
    [mine] = [d for d in listed.json() if d["id"] == "dev-a"]
    assert mine["health"]["firmware"] == "fw-\ufffd-1"
    for path in ("/devices/dev-a", "/console/devices/dev-a"):
        one = await client.get(path)
        assert one.status_code == 200, (path, one.text)
    # The other devices are unaffected, and the damage is reported (once a minute).
    assert len(fleet.json()["devices"]) == len(listed.json()) > 100
    assert any("scrubbed" in r.getMessage() for r in caplog.records)


async def test_a_damaged_alarm_text_reaches_the_staff_socket(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    """The WebSocket sends the same scrubbed JSON instead of dropping the connection."""
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("odd")
        await dev.wait_ack("odd")
        [alarm_id] = list(gw.core.alarms)
        # Planted behind the core's back: no path in stores such text any more.
        gw.core.alarms[alarm_id] = dataclasses.replace(gw.core.alarms[alarm_id],
                                                       detail="trasig \ud800 text")
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        async with anna.socket() as ws:
            alarm = await next_alarm(ws)
        listed = await anna.get("/alarms")
        await anna.http.aclose()
    assert alarm["detail"] == "trasig \ufffd text"
    assert listed.status_code == 200
    assert listed.json()[0]["detail"] == "trasig \ufffd text"


def test_scrub_keeps_what_is_valid() -> None:
    """Only the damage changes: valid pairs, other text, ints and finite floats stay."""
    body: dict[str, Any] = {"a": "ok å 😀", "pair": "\ud83d\ude00", "n": [1, 2.5, math.inf],
                            "k\udc00": {"t": ("x", "\udc00y")}}
    assert scrub(body) == {"a": "ok å 😀", "pair": "😀", "n": [1, 2.5, None],
                           "k\ufffd": {"t": ["x", "\ufffdy"]}}
    assert json.loads(encode(body)) == json.loads(dumps(body)) == scrub(body)
    plain = {"a": [1, "b"], "c": None}
    assert encode(plain) == b'{"a":[1,"b"],"c":null}'
