"""Supervision in the running gateway: silent devices, broker loss, journal failure."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from firmware_sim import Backoff, Fleet, specs_from_devices
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, free_port, seed_small
from tests.helpers import device, login

pytestmark = pytest.mark.network


@pytest.fixture(autouse=True)
def _fast_heartbeat_devices(tmp_path: Path) -> None:
    """Two devices that heartbeat every second, so deadlines pass within seconds."""
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo("hb-1", "alarm_unit", "r-a", heartbeat_s=1.0))
    org.put_device(DeviceInfo("hb-2", "temperature", "r-a", heartbeat_s=1.0))
    org.close()


def epoch(iso_time: str) -> float:
    return datetime.fromisoformat(iso_time).timestamp()


async def next_message(
    ws: websockets.ClientConnection, kind: str, match: Any = None, timeout: float = 10
) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == kind and (match is None or match(message)):
                result: dict[str, Any] = message
                return result


def technical(ref_prefix: str, state: str = "open", device_id: str | None = None) -> Any:
    def match(message: dict[str, Any]) -> bool:
        alarm = message["alarm"]
        return bool(
            alarm["type"] == "technical"
            and alarm["ref"].startswith(ref_prefix)
            and alarm["state"] == state
            and (device_id is None or alarm["device_id"] == device_id)
        )

    return match


async def test_silent_device_is_offline_within_a_second_of_its_deadline(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "hb-1") as dev:
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        async with anna.socket() as ws, tove.socket() as tech:
            await dev.publish("heartbeat", {"ref": "h1", "ts": int(time.time() * 1000)})
            last = time.time()
            # hb-1 heartbeats every 1.0 s with 50 % grace: its deadline is ~1.5 s after `last`.
            message = await next_message(
                ws, "alarm", technical("offline.", device_id="hb-1"), timeout=10
            )
            alarm = message["alarm"]
            detected = epoch(alarm["hops"][1]["at"])  # the `stored` hop
            assert alarm["device_id"] == "hb-1"
            assert detected >= last + 1.5 - 0.05, "reported before the deadline"
            assert detected <= last + 1.5 + 1.0, "detection more than 1 s after the deadline"
            # A safety alarm: the care team and the technician both get it, the technician
            # without the recipient's entry information and action plan.
            tech_alarm = (
                await next_message(tech, "alarm", technical("offline.", device_id="hb-1"))
            )["alarm"]
            assert tech_alarm["id"] == alarm["id"]
            assert "entry_info" in alarm["recipient"]
            assert set(tech_alarm["recipient"]) == {"id", "name", "address"}

            await dev.publish("heartbeat", {"ref": "h2", "ts": int(time.time() * 1000)})
            closed = await next_message(ws, "alarm", technical("offline.", "closed", "hb-1"))
            assert closed["alarm"]["id"] == alarm["id"]
            assert closed["alarm"]["cause"] == "återställd / restored"
            assert "outage" in closed["alarm"]["note"]
        health = (await anna.http.get("/healthz")).json()
        assert health["devices"]["offline"] >= 0
        for staff in (anna, tove):
            await staff.http.aclose()


async def test_sensor_offline_goes_to_technicians_only(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "hb-2") as dev:
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        async with tove.socket() as tech:
            await dev.publish("heartbeat", {"ref": "h1", "ts": int(time.time() * 1000)})
            message = await next_message(
                tech,
                "alarm",
                lambda m: m["alarm"]["device_id"] == "hb-2" and m["alarm"]["type"] == "technical",
            )
        assert message["alarm"]["id"] not in {
            a["id"] for a in (await anna.get("/alarms")).json() if a["device_id"] == "hb-2"
        }
        assert "anna" not in json.dumps(message["alarm"]["hops"])
        for staff in (anna, tove):
            await staff.http.aclose()


async def test_device_silent_while_gateway_was_down_is_reported_after_start(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir), device(mosquitto, prefix, "hb-1") as d:
        await d.alarm("seen-before-stop")  # any message is life; its ack proves it was handled
        await d.wait_ack("seen-before-stop")
    await asyncio.sleep(2.0)  # past hb-1's 1.5 s deadline while no gateway runs
    async with make_gateway(mosquitto, data_dir=data_dir) as gw:
        started = time.time()
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        async with asyncio.timeout(5):
            while True:
                alarms = (await tove.get("/alarms")).json()
                found = [a for a in alarms if a["device_id"] == "hb-1" and a["type"] == "technical"]
                if found:
                    break
                await asyncio.sleep(0.05)
        assert epoch(found[0]["hops"][1]["at"]) - started < 1.0
        await tove.http.aclose()


async def test_journal_failure_stops_acks_tells_staff_and_recovers(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        failing = True
        gw.journal.fail_writes = lambda: failing
        async with anna.socket() as ws:
            await dev.alarm("during-outage")
            notice = await next_message(ws, "notice")
            assert notice["code"] == "journal_failed"
            assert notice["level"] == "critical"
            async with httpx.AsyncClient() as client:
                health = await client.get(f"http://127.0.0.1:{gw.http_port}/healthz")
            assert health.status_code == 503
            assert health.json()["journal"] == "failing"
            assert "during-outage" not in dev.acks, "acked although nothing was stored"
            # Staff actions are refused with a reason, not half-done.
            failing = False
            await dev.alarm("during-outage")  # the device resends
            assert (await dev.wait_ack("during-outage"))["status"] == "stored"
            recovered = await next_message(ws, "notice")
            assert recovered["code"] == "journal_recovered"
        alarms = (await anna.get("/alarms")).json()
        assert [a["ref"] for a in alarms if a["device_id"] == "dev-a"] == ["during-outage"]
        assert gw.metrics.registry.get_sample_value("trygg_journal_failures_total") >= 1
        await anna.http.aclose()


@asynccontextmanager
async def private_mosquitto(port: int, tmp_path: Path) -> AsyncIterator[Any]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    config = tmp_path / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_type error\n")

    class Broker:
        proc: subprocess.Popen[bytes] | None = None

        async def start(self) -> None:
            self.proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
            for _ in range(200):
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        return
                await asyncio.sleep(0.05)
            raise AssertionError("mosquitto did not start")

        def stop(self) -> None:
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(10)
                self.proc = None

    broker = Broker()
    await broker.start()
    try:
        yield broker
    finally:
        broker.stop()


async def test_broker_restart_raises_and_clears_link_alarm_and_loses_nothing(
    prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    port = free_port()
    async with private_mosquitto(port, tmp_path) as broker, make_gateway(("127.0.0.1", port)) as gw:
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        specs = specs_from_devices(
            [{"id": f"sim-{n:03d}", "type": "alarm_unit"} for n in range(10)]
        )
        fleet = Fleet(
            specs,
            port=port,
            prefix=prefix,
            telemetry=False,
            resend=Backoff(0.2, 1.0),
            reconnect=Backoff(0.2, 1.0),
        )
        async with fleet, tove.socket() as tech:
            refs = [fleet.raise_alarm(d) for d in fleet.device_ids[:5]]
            assert await fleet.wait_all_acked(10)
            broker.stop()
            down = await next_message(tech, "alarm", technical("mqtt."))
            # Alarms raised while the broker is away are resent until acked.
            refs += [fleet.raise_alarm(d) for d in fleet.device_ids[5:]]
            await asyncio.sleep(0.5)
            await broker.start()
            up = await next_message(tech, "alarm", technical("mqtt.", "closed"), timeout=20)
            assert up["alarm"]["id"] == down["alarm"]["id"]
            assert await fleet.wait_all_acked(20)
        # Straight from the core (a technician may not list care alarms). Repeats from the
        # same recipient attach to its open alarm: count every ref.
        stored = sorted(
            ref
            for a in gw.core.alarms.values()
            if a.type.value == "manual"
            for ref in [a.ref, *(r.ref for r in a.attached)]
        )
        assert stored == sorted(refs)
        await tove.http.aclose()
