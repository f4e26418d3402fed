"""The last link supervised: undelivered alarms and teams with nobody connected."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import GatewayFactory
from tests.helpers import Staff, device, login

pytestmark = pytest.mark.network


async def technical_alarm(tove: Staff, prefix: str, state: str) -> dict[str, Any]:
    async with asyncio.timeout(15):
        while True:
            for alarm in (await tove.get("/alarms?state=all")).json():
                if alarm["ref"].startswith(prefix) and alarm["state"] == state:
                    return dict(alarm)
            await asyncio.sleep(0.05)


async def test_undelivered_alarm_raises_then_clears_when_a_phone_confirms(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, delivery_timeout_s=0.5) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, anna = await login(base, "tove"), await login(base, "anna")
        await dev.alarm("unseen")
        await dev.wait_ack("unseen")
        raised = await technical_alarm(tove, "undelivered.", "open")
        assert "no phone confirmed" in raised["detail"]
        async with anna.socket() as ws:
            async with asyncio.timeout(10):
                while True:
                    message = json.loads(await ws.recv())
                    if message["type"] == "alarm" and message["alarm"]["ref"] == "unseen":
                        await ws.send(json.dumps(
                            {"type": "receipt", "alarm_id": message["alarm"]["id"]}))
                        break
            cleared = await technical_alarm(tove, "undelivered.", "closed")
        assert cleared["id"] == raised["id"]
        for staff in (tove, anna):
            await staff.http.aclose()


async def test_team_with_open_alarm_and_nobody_connected(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        gw.staff_watch.no_client_grace_s = 0.5
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, bo = await login(base, "tove"), await login(base, "bo")
        await dev.alarm("alone")
        await dev.wait_ack("alone")
        raised = await technical_alarm(tove, "noclient.team-a.", "open")
        assert "team-a" in raised["detail"]
        async with bo.socket():
            cleared = await technical_alarm(tove, "noclient.team-a.", "closed")
        assert cleared["id"] == raised["id"]
        for staff in (tove, bo):
            await staff.http.aclose()


async def test_a_confirmation_amid_a_burst_closes_the_delivery_alarm_once(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    # Every alarm of the burst wakes the watch while the first close of the delivery alarm
    # is still on its way to the journal: it must not be closed twice (a second close
    # contradicts the chain, and once stopped the gateway).
    async with make_gateway(mosquitto, delivery_timeout_s=0.5) as gw, \
            device(mosquitto, prefix, "sim-001") as dev:
        await dev.alarm("first")
        await dev.wait_ack("first")
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        raised = await technical_alarm(anna, "undelivered.", "open")
        alarm_id = raised["ref"].removeprefix("undelivered.")

        async def burst() -> None:
            async with device(mosquitto, prefix, "sim-003") as other:
                for n in range(30):
                    await other.alarm(f"x{n}")

        await asyncio.gather(anna.post(f"/alarms/{alarm_id}/receipt"), burst())
        await technical_alarm(anna, "undelivered.", "closed")
        await asyncio.sleep(1.0)  # the wake-ups of the burst come and go
        health = (await anna.http.get("/healthz")).json()
        await anna.http.aclose()
        assert health["status"] == "ok"
        assert gw.metrics.skipped_records._value.get() == 0
    with sqlite3.connect(tmp_path / "gw" / "journal.sqlite3") as conn:
        rows = conn.execute("SELECT alarm_id, body FROM journal").fetchall()
    closes = Counter(a for a, body in rows if json.loads(body).get("hop") == "closed")
    assert closes, "nothing was closed"
    assert max(closes.values()) == 1, closes
