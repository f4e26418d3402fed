"""Crash safety: SIGKILL in the middle of a burst loses nothing and duplicates nothing.

The gateway runs as a real process (``trygg run``) against the real Mosquitto; 100
simulated devices send 1,000 alarms in a burst and resend until acked, like real devices.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import websockets

from gateway.org import OrgStore
from tests.conftest import PASSWORD, TEST_SECRET, free_port, seed_small
from tests.helpers import ResendingFleet

pytestmark = [pytest.mark.network, pytest.mark.slow]


def write_config(
    path: Path, data_dir: Path, prefix: str, http_port: int, *,
    gateway_id: str | None = None, top: str = "", tables: str = "",
) -> None:
    """A ``trygg run`` config on the machine's Mosquitto; ``top`` adds top-level keys,
    ``tables`` more TOML tables."""
    path.write_text(
        f"""
gateway_id = "{gateway_id or f"crash-{http_port}"}"
data_dir = "{data_dir}"
secret_key = "{TEST_SECRET}"
{top}
[mqtt]
host = "127.0.0.1"
port = 1883
prefix = "{prefix}"

[http]
host = "127.0.0.1"
port = {http_port}
{tables}"""
    )


class GatewayProcess:
    """``trygg run`` in a child process."""

    def __init__(self, config: Path, http_port: int, log: Path) -> None:
        self.config = config
        self.http_port = http_port
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "gateway.cli", "run", "--config", str(self.config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONWARNINGS": "ignore"},
            )

    async def wait_healthy(self, timeout: float = 30) -> None:
        async with httpx.AsyncClient() as client:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                assert self.proc is not None and self.proc.poll() is None, self.log.read_text()
                try:
                    response = await client.get(f"http://127.0.0.1:{self.http_port}/healthz")
                    if response.status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
        raise AssertionError(f"gateway not healthy: {self.log.read_text()[-2000:]}")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture
def gateway_process(
    tmp_path: Path, prefix: str, mosquitto: tuple[str, int]
) -> Iterator[GatewayProcess]:
    data_dir = tmp_path / "data"
    org = OrgStore(data_dir / "org.sqlite3")
    seed_small(org)
    org.close()
    http_port = free_port()
    config = tmp_path / "trygg.toml"
    write_config(config, data_dir, prefix, http_port)
    process = GatewayProcess(config, http_port, tmp_path / "gateway.log")
    process.start()
    yield process
    process.stop()


class StaffWatcher:
    """A staff phone that stays connected across gateway restarts and dedupes by id."""

    def __init__(self, http_port: int, username: str) -> None:
        self.http_port = http_port
        self.username = username
        self.seen: dict[str, tuple[str, str]] = {}
        self.messages = 0
        self.connections = 0
        self.synced = asyncio.Event()

    async def run(self) -> None:
        base = f"http://127.0.0.1:{self.http_port}"
        while True:
            try:
                async with httpx.AsyncClient(base_url=base) as client:
                    token = (await client.post(
                        "/api/v1/auth/token", data={"username": self.username, "password": PASSWORD}
                    )).json()["access_token"]
                async with websockets.connect(
                    f"ws://127.0.0.1:{self.http_port}/api/v1/ws?token={token}"
                ) as ws:
                    self.connections += 1
                    async for raw in ws:
                        message = json.loads(raw)
                        if message["type"] == "sync":
                            self.synced.set()
                        if message["type"] != "alarm":
                            continue
                        alarm = message["alarm"]
                        if alarm["type"] == "technical":
                            continue  # seed devices that never speak go offline meanwhile
                        self.messages += 1
                        key = (alarm["device_id"], alarm["ref"])
                        assert self.seen.setdefault(alarm["id"], key) == key
                        if not any(h["hop"] == "delivered" for h in alarm["hops"]):
                            await ws.send(json.dumps({"type": "receipt", "alarm_id": alarm["id"]}))
            except (OSError, httpx.HTTPError, websockets.WebSocketException, KeyError):
                await asyncio.sleep(0.2)


def journal_alarms(data_dir: Path) -> list[tuple[str, str, str]]:
    conn = sqlite3.connect(data_dir / "journal.sqlite3")
    try:
        rows = conn.execute("SELECT body FROM journal ORDER BY seq").fetchall()
    finally:
        conn.close()
    opened = [json.loads(b) for (b,) in rows]
    # Technical alarms (devices of the seed that never speak go offline) are not the burst's.
    # A further alarm of a recipient with one open is attached to it: still stored once.
    return [
        (o["alarm_id"], o["device_id"], o["ref"])
        for o in opened
        if o["kind"] in ("opened", "attached") and o["type"] != "technical"
    ]


async def test_sigkill_mid_burst_loses_and_duplicates_nothing(
    gateway_process: GatewayProcess, prefix: str, tmp_path: Path
) -> None:
    await gateway_process.wait_healthy()
    devices = [f"sim-{n:03d}" for n in range(100)]
    # Odd-numbered devices belong to team-a (anna), even ones to team-b (cleo).
    watchers = [StaffWatcher(gateway_process.http_port, name) for name in ("anna", "cleo")]
    async with asyncio.TaskGroup() as group:
        watches = [group.create_task(w.run(), name=f"staff {w.username}") for w in watchers]
        # Both phones are connected before the burst, so the crash is one they live through.
        async with asyncio.timeout(30):
            for watcher in watchers:
                await watcher.synced.wait()
        async with ResendingFleet(("127.0.0.1", 1883), prefix, devices, resend_s=1.0) as fleet:
            await fleet.burst(per_device=10)
            # Kill once some, but not all, alarms are acked: the crash lands mid-burst.
            async with asyncio.timeout(60):
                while len(fleet.acked) < 100:
                    await asyncio.sleep(0.005)
            acked_before_kill = dict(fleet.acked)
            gateway_process.kill()
            assert len(acked_before_kill) < 1000, "the kill must land mid-burst"
            gateway_process.start()
            await gateway_process.wait_healthy()
            await fleet.resend_until_acked(deadline_s=120)
            total_sends = sum(fleet.sent.values())

        # Every alarm acked, every ack "stored".
        assert len(fleet.acked) == 1000
        assert set(fleet.acked.values()) == {"stored"}

        stored = journal_alarms(tmp_path / "data")
        keys = [(d, r) for _, d, r in stored]
        assert len(keys) == len(set(keys)), "an alarm was stored twice"
        assert set(keys) == set(fleet.sent), "an acked alarm is missing from the journal"
        assert set(acked_before_kill) <= set(keys)

        # The staff phones saw every alarm of their team exactly once by id after resync.
        # (A device's further alarms while its first is open are attached to that alarm.)
        alarm_ids = {a for a, _, _ in stored}
        async with asyncio.timeout(30):
            # Both phones reconnect to the restarted gateway and resync ...
            while any(w.connections < 2 for w in watchers):
                await asyncio.sleep(0.05)
            # ... and between them have seen every alarm.
            while len(set(watchers[0].seen) | set(watchers[1].seen)) < len(alarm_ids):
                await asyncio.sleep(0.05)
        for watch in watches:
            watch.cancel()
    anna, cleo = watchers
    assert set(anna.seen) | set(cleo.seen) == alarm_ids
    assert not set(anna.seen) & set(cleo.seen), "an alarm reached the wrong team"
    assert all(int(d[-3:]) % 2 == 1 for d, _ in anna.seen.values())
    assert len(alarm_ids) >= 100, "every device's first alarm is an alarm of its own"
    assert all(w.connections >= 2 for w in watchers), "the phones reconnected after the crash"
    assert total_sends >= 1000
