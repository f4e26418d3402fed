"""App-level acks and resends beat a broker that drops QoS 1 messages.

Stock Mosquitto drops QoS 1 messages for a client whose queue exceeds
``max_queued_messages`` (default 1000). Here the gateway's persistent session is offline
while 3,000 alarms arrive, so the broker keeps at most 1,000 of them and silently drops the
rest. The devices resend what was not acked; every alarm must end up stored exactly once.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import GatewayFactory, free_port
from tests.helpers import ResendingFleet

pytestmark = [pytest.mark.network, pytest.mark.slow]


@pytest.fixture
def lossy_mosquitto(tmp_path: Path) -> Iterator[tuple[str, int]]:
    """A private Mosquitto with the stock queue limit, on its own port."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    config = tmp_path / "mosquitto.conf"
    config.write_text(
        f"listener {port} 127.0.0.1\n"
        "allow_anonymous true\n"
        "persistence false\n"
        "max_queued_messages 1000\n"
        "log_type error\n"
    )
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10


    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("private mosquitto did not start")
    yield ("127.0.0.1", port)
    proc.terminate()
    proc.wait(10)


def _register_session(broker: tuple[str, int], client_id: str, topic: str) -> None:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                         clean_session=False)
    client.connect(broker[0], broker[1])
    client.loop_start()
    try:
        client.subscribe(topic, qos=1)[1]
        info = client.publish("lossy/hello", b"", qos=1)
        info.wait_for_publish(10)
    finally:
        client.disconnect()
        client.loop_stop()


async def test_every_alarm_stored_once_despite_broker_drops(
    lossy_mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "gw"
    gateway_id = "lossy"
    # Register the gateway's persistent session (as a gateway that ran before would have)
    # with a plain synchronous paho client, then go away.
    await asyncio.to_thread(_register_session, lossy_mosquitto, f"trygg-gateway-{gateway_id}",
                            f"{prefix}/+/alarm")
    devices = [f"sim-{n:03d}" for n in range(30)]
    async with ResendingFleet(lossy_mosquitto, prefix, devices, resend_s=1.0) as fleet:
        await fleet.burst(per_device=100)  # 3,000 alarms while the gateway is away
        async with make_gateway(lossy_mosquitto, data_dir=data_dir, gateway_id=gateway_id) as gw:
            await fleet.resend_until_acked(deadline_s=120)
            first_pass = gw.metrics.registry.get_sample_value(
                "trygg_ingest_messages_total", {"channel": "alarm"}
            )
    assert len(fleet.acked) == 3000
    assert set(fleet.acked.values()) == {"stored"}
    # The broker really dropped messages: some alarms needed a resend to arrive at all.
    assert sum(fleet.sent.values()) > 3000
    assert first_pass is not None

    conn = sqlite3.connect(data_dir / "journal.sqlite3")
    # Every alarm is stored exactly once: as an alarm of its own, or attached to the open
    # alarm of the same recipient (flapping dedupe). Technical alarms are not the fleet's.
    rows = conn.execute(
        "SELECT json_extract(body, '$.device_id'), json_extract(body, '$.ref') "
        "FROM journal WHERE json_extract(body, '$.kind') IN ('opened', 'attached') "
        "AND json_extract(body, '$.type') != 'technical'"
    ).fetchall()
    conn.close()
    assert len(rows) == 3000
    assert set(rows) == set(fleet.sent)
