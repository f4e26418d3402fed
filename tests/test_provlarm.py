"""Scheduled end-to-end test alarms: pass through the whole chain, or name the failed hop."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from firmware_sim import Backoff, Fleet, specs_from_devices
from gateway.provlarm import daily_offset_s, failure_reason, next_slot
from tests.conftest import GatewayFactory
from tests.helpers import Staff, login

STHLM = ZoneInfo("Europe/Stockholm")


def test_daily_slot_is_stable_spread_and_local_time_across_dst() -> None:
    offsets = {daily_offset_s(f"alarm-{n:03d}", 7200) for n in range(200)}
    assert all(0 <= o < 7200 for o in offsets)
    assert len(offsets) > 150, "the fleet is spread, not bunched"
    device = "alarm-007"
    offset = daily_offset_s(device, 7200)
    # The night clocks go forward (2026-03-29) and back (2026-10-25): 03:00 local each day.
    for day in (28, 29, 30):
        before = datetime(2026, 3, day, 1, 0, tzinfo=STHLM).timestamp()
        slot = next_slot(device, before, "03:00", 7200)
        assert datetime.fromtimestamp(slot - offset, STHLM).strftime("%H:%M") == "03:00"
    before = datetime(2026, 10, 25, 1, 0, tzinfo=STHLM).timestamp()
    slot = next_slot(device, before, "03:00", 7200)
    assert datetime.fromtimestamp(slot - offset, STHLM).strftime("%d %H:%M") == "25 03:00"


async def confirm_everything(staff: Staff) -> None:
    """A staff phone that confirms receipt of every alarm (quietly, for test alarms)."""
    async with staff.socket() as ws:
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "alarm":
                alarm = message["alarm"]
                if not any(h["hop"] == "delivered" for h in alarm["hops"]):
                    await ws.send(json.dumps({"type": "receipt", "alarm_id": alarm["id"]}))


async def wait_status(tove: Staff, device_id: str, result: str) -> dict[str, Any]:
    async with asyncio.timeout(20):
        while True:
            status = (await tove.get(f"/devices/{device_id}/e2e-test")).json()
            if status["last_result"] == result and not status["running"]:
                return dict(status)
            await asyncio.sleep(0.1)


def fleet_for(mosquitto: tuple[str, int], prefix: str, device_id: str) -> Fleet:
    return Fleet(specs_from_devices([{"id": device_id, "type": "alarm_unit"}]),
                 port=mosquitto[1], prefix=prefix, telemetry=False, resend=Backoff(0.2, 1.0))


@pytest.mark.network
async def test_test_alarm_passes_the_whole_chain(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, provlarm={"delivery_timeout_s": 10}) as gw, \
            fleet_for(mosquitto, prefix, "dev-b"):
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, cleo = await login(base, "tove"), await login(base, "cleo")
        phone = asyncio.create_task(confirm_everything(cleo), name="cleo's phone")
        try:
            started = await tove.post("/devices/dev-b/e2e-test")
            assert started.status_code == 202, started.text
            status = await wait_status(tove, "dev-b", "passed")
        finally:
            phone.cancel()
            await asyncio.gather(phone, return_exceptions=True)
        assert status["last_ok"] is not None
        assert status["failed_hop"] is None
        async with asyncio.timeout(5):
            while True:
                tests = [a for a in (await cleo.get("/alarms?state=all")).json()
                         if a["type"] == "test"]
                if tests and tests[0]["state"] == "closed":
                    break
                await asyncio.sleep(0.05)
        assert tests[0]["cause"] == "provlarm genomfört / test passed"
        assert [h["hop"] for h in tests[0]["hops"]][:4] == [
            "raised", "stored", "routed", "delivered"]
        # Only technicians run tests.
        assert (await cleo.post("/devices/dev-b/e2e-test")).status_code == 403
        for staff in (tove, cleo):
            await staff.http.aclose()


@pytest.mark.network
async def test_test_alarm_nobody_confirms_fails_at_delivered(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, provlarm={"delivery_timeout_s": 1.0}) as gw, \
            fleet_for(mosquitto, prefix, "dev-b"):
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, cleo = await login(base, "tove"), await login(base, "cleo")
        assert (await tove.post("/devices/dev-b/e2e-test")).status_code == 202
        status = await wait_status(tove, "dev-b", "failed")
        assert status["failed_hop"] == "delivered"
        # It says why, with the team's name and the hop's Swedish name.
        assert status["reason"] == {"sv": "ingen telefon i Lag B var ansluten",
                                    "en": "no phone of Lag B was connected"}
        technical = [a for a in (await tove.get("/alarms")).json() if a["ref"].startswith("test.")]
        assert technical
        assert technical[0]["detail"].startswith(
            "Provlarmet misslyckades vid Levererat: ingen telefon i Lag B var ansluten / ")
        assert technical[0]["summary"]["sv"] == (
            "Trygghetslarmet hos Bengt B: Provlarmet misslyckades vid Levererat: ingen "
            "telefon i Lag B var ansluten")
        # Routed to technicians, not to the care team: cleo sees neither it nor the test
        # alarm, which is closed as failed with the reason.
        assert technical[0]["hops"][2]["hop"] == "routed"
        assert gw.core.alarms[technical[0]["id"]].targets == frozenset({"tove"})
        async with asyncio.timeout(5):
            while True:
                tests = [a for a in gw.core.alarms.values() if a.type.value == "test"]
                if tests and tests[0].state == "closed":
                    break
                await asyncio.sleep(0.05)
        assert tests[0].cause == "provlarm misslyckat / test failed"
        assert tests[0].note is not None and "ingen telefon i Lag B" in tests[0].note
        assert [a["id"] for a in (await cleo.get("/alarms")).json()] == []
        for staff in (tove, cleo):
            await staff.http.aclose()


@pytest.mark.network
async def test_test_alarm_with_a_phone_on_that_never_confirms_says_so(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, provlarm={"delivery_timeout_s": 1.0}) as gw, \
            fleet_for(mosquitto, prefix, "dev-b"):
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, cleo = await login(base, "tove"), await login(base, "cleo")
        async with cleo.socket():  # connected, but this phone never confirms anything
            assert (await tove.post("/devices/dev-b/e2e-test")).status_code == 202
            status = await wait_status(tove, "dev-b", "failed")
        assert status["reason"]["sv"] == (
            "1 telefon i Lag B var ansluten, men ingen bekräftade larmet inom 1 s")
        for staff in (tove, cleo):
            await staff.http.aclose()


def test_failure_reasons_name_what_the_gateway_knows() -> None:
    def reason(hop: str, **kw: Any) -> str:
        args: dict[str, Any] = {"command_sent": True, "routed": True, "team": "Lag Norr",
                                "phones": 0, "store_timeout_s": 120, "delivery_timeout_s": 60}
        return failure_reason(hop, **{**args, **kw}).en

    assert reason("stored", command_sent=False).startswith("the command could not be sent")
    assert reason("stored") == "the device sent no test alarm within 120 s"
    assert reason("delivered") == "no phone of Lag Norr was connected"
    assert reason("delivered", team=None) == "no phone of the team was connected"
    assert reason("delivered", phones=3) == (
        "3 phones of Lag Norr were connected, but none confirmed the alarm within 60 s")
    assert reason("delivered", routed=False) == "the alarm was never routed"


@pytest.mark.network
async def test_silent_device_fails_the_test_at_stored(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, provlarm={"store_timeout_s": 1.0}) as gw:
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        assert (await tove.post("/devices/dev-a/e2e-test")).status_code == 202
        assert (await tove.post("/devices/dev-a/e2e-test")).status_code == 409
        status = await wait_status(tove, "dev-a", "failed")
        assert status["failed_hop"] == "stored"
        assert status["reason"]["en"] == "the device sent no test alarm within 1 s"
        await tove.http.aclose()
