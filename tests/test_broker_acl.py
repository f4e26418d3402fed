"""Per-device credentials and topic ACLs, enforced by a real (private) Mosquitto and by amqtt.

With MQTT 3.1.1 a broker acks a denied publish and drops it silently, so "refused" is
asserted as "did not arrive": every denied message is followed by an allowed one from the
same client, and the subscriber must see the allowed one without the denied one before it
(the broker keeps one client's QoS 1 messages in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import aiomqtt
import pytest
from amqtt.broker import Broker

from gateway.broker_auth import (
    BrokerFiles,
    accounts_with_gateway,
    allowed,
    embedded_plugins,
    mosquitto_conf,
    mosquitto_hash,
    verify_mosquitto_hash,
)
from tests.conftest import free_port

PREFIX = "trygg/v1"
GATEWAY = "trygg-gateway"
GW_PASSWORD = "gateway-password-for-tests"
PASSWORDS = {"dev-a": "secret-of-a", "dev-b": "secret-of-b"}


class Rig:
    """A broker with generated files; ``revoke`` rewrites them and reloads."""

    def __init__(self, files: BrokerFiles, port: int) -> None:
        self.files = files
        self.port = port
        self.passwords = dict(PASSWORDS)

    def write(self) -> None:
        devices = [(u, mosquitto_hash(p)) for u, p in self.passwords.items()]
        self.files.write(accounts_with_gateway(devices, GATEWAY, GW_PASSWORD), PREFIX, GATEWAY)

    def revoke(self, device_id: str) -> None:
        del self.passwords[device_id]
        self.write()
        self.files.reload()

    def client(self, username: str | None, password: str | None = None,
               ident: str | None = None) -> aiomqtt.Client:
        if username is not None and password is None:
            password = GW_PASSWORD if username == GATEWAY else PASSWORDS[username]
        return aiomqtt.Client("127.0.0.1", self.port, username=username, password=password,
                              identifier=ident or f"c-{username}-{time.monotonic_ns()}")


def _wait_port(port: int, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    if proc is not None:
        proc.kill()
    pytest.fail("broker did not start")


@pytest.fixture
def mosquitto_rig(tmp_path: Path) -> Iterator[Rig]:
    """A private Mosquitto reading generated credentials and ACLs."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    files = BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    Rig(files, port).write()
    config = tmp_path / "mosquitto.conf"
    # As root, Mosquitto drops to the `mosquitto` user, which cannot read our 0600 files in
    # a private temp dir; a deployment gives the files to the broker's group instead.
    as_root = "user root\n" if os.geteuid() == 0 else ""
    config.write_text(mosquitto_conf(files, port=port) + as_root
                      + "persistence false\nlog_type error\n")
    proc = subprocess.Popen([binary, "-c", str(config)], stderr=subprocess.DEVNULL)
    _wait_port(port, proc)
    rig = Rig(dataclasses.replace(files, pid=proc.pid), port)
    yield rig
    proc.terminate()
    proc.wait(10)


@pytest.fixture
async def amqtt_rig(tmp_path: Path) -> AsyncIterator[Rig]:
    """The embedded broker with the same files through the trygg plugins."""
    port = free_port()
    files = BrokerFiles(tmp_path / "passwd", tmp_path / "acl")
    rig = Rig(files, port)
    rig.write()
    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": embedded_plugins(files),
    })
    await broker.start()
    try:
        yield rig
    finally:
        await broker.shutdown()


@pytest.fixture(params=["mosquitto", "amqtt"])
def rig(request: pytest.FixtureRequest) -> Rig:
    """Each broker the rules must hold on."""
    return request.getfixturevalue(f"{request.param}_rig")  # type: ignore[no-any-return]


@asynccontextmanager
async def watcher(rig: Rig, topic: str) -> AsyncIterator[asyncio.Queue[str]]:
    """The gateway account subscribed to ``topic``; arriving topics land in a queue."""
    found: asyncio.Queue[str] = asyncio.Queue()
    async with rig.client(GATEWAY) as client:
        await client.subscribe(topic, qos=1)

        async def pump() -> None:
            async for message in client.messages:
                found.put_nowait(str(message.topic))

        task = asyncio.create_task(pump(), name="watcher")
        try:
            yield found
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def _next(queue: asyncio.Queue[str]) -> str:
    return await asyncio.wait_for(queue.get(), 10)


def test_hash_matches_mosquitto_passwd(tmp_path: Path) -> None:
    """Our $7$ hashes verify, and mosquitto_passwd's own hashes verify with our code."""
    encoded = mosquitto_hash("pw")
    assert encoded.startswith("$7$101$")
    assert verify_mosquitto_hash(encoded, "pw")
    assert not verify_mosquitto_hash(encoded, "other")
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        pytest.skip("mosquitto_passwd not installed")
    path = tmp_path / "pw"
    subprocess.run([tool, "-c", "-b", str(path), "u", "their-password"], check=True,
                   capture_output=True)
    theirs = path.read_text().strip().split(":", 1)[1]
    assert theirs.startswith("$7$")
    assert verify_mosquitto_hash(theirs, "their-password")


def test_acl_decisions() -> None:
    """The shared rule function: own topics only, gateway everything under the prefix."""
    assert allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/dev-a/alarm", "publish")
    assert not allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/dev-b/alarm", "publish")
    assert not allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/dev-a/ack", "publish")
    assert allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/dev-a/cmd", "subscribe")
    assert not allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/+/cmd", "subscribe")
    assert not allowed("dev-a", GATEWAY, PREFIX, f"{PREFIX}/#", "subscribe")
    assert allowed(GATEWAY, GATEWAY, PREFIX, f"{PREFIX}/#", "subscribe")
    assert not allowed(GATEWAY, GATEWAY, PREFIX, "elsewhere/x", "publish")
    assert not allowed(None, GATEWAY, PREFIX, f"{PREFIX}/dev-a/alarm", "publish")


@pytest.mark.network
async def test_device_cannot_publish_as_another(rig: Rig) -> None:
    async with watcher(rig, f"{PREFIX}/#") as seen, rig.client("dev-a") as a:
        await a.publish(f"{PREFIX}/dev-b/alarm", b"{}", qos=1)  # impersonation: dropped
        await a.publish(f"{PREFIX}/dev-a/ack", b"{}", qos=1)  # gateway's channel: dropped
        await a.publish(f"{PREFIX}/dev-a/alarm", b"{}", qos=1)  # own: delivered
        assert await _next(seen) == f"{PREFIX}/dev-a/alarm"
        assert seen.empty()


@pytest.mark.network
async def test_device_cannot_read_another_devices_cmd_or_ack(rig: Rig) -> None:
    async with rig.client("dev-a") as a, rig.client(GATEWAY) as gw:
        for channel in ("cmd", "ack"):
            # A denied subscription may be refused (0x80) or granted and never delivered.
            await a.subscribe(f"{PREFIX}/dev-b/{channel}", qos=1)
            await a.subscribe(f"{PREFIX}/+/{channel}", qos=1)
            await a.subscribe(f"{PREFIX}/dev-a/{channel}", qos=1)
        got: list[str] = []
        for channel in ("cmd", "ack"):
            await gw.publish(f"{PREFIX}/dev-b/{channel}", b"{}", qos=1)
            await gw.publish(f"{PREFIX}/dev-a/{channel}", b"{}", qos=1)
        async with asyncio.timeout(10):
            async for message in a.messages:
                got.append(str(message.topic))
                if f"{PREFIX}/dev-a/ack" in got:
                    break
        assert not any("dev-b" in topic for topic in got), got
        assert f"{PREFIX}/dev-a/cmd" in got


@pytest.mark.network
async def test_wrong_password_and_anonymous_refused(rig: Rig) -> None:
    with pytest.raises(aiomqtt.MqttError):
        async with rig.client("dev-a", "wrong"):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with rig.client(None):
            pass
    with pytest.raises(aiomqtt.MqttError):
        async with rig.client("nobody", "x"):
            pass


async def _refused(rig: Rig, device_id: str) -> bool:
    try:
        async with rig.client(device_id, PASSWORDS[device_id]):
            return False
    except aiomqtt.MqttError:
        return True


@pytest.mark.network
async def test_decommissioned_device_refused_at_once(rig: Rig) -> None:
    async with watcher(rig, f"{PREFIX}/#") as seen:
        async with rig.client("dev-a") as a:
            await a.publish(f"{PREFIX}/dev-a/alarm", b"{}", qos=1)
            assert await _next(seen) == f"{PREFIX}/dev-a/alarm"
            rig.revoke("dev-a")
            # The reload is asynchronous (a signal): wait until it took effect, i.e. a new
            # connection with the old password is refused.
            async with asyncio.timeout(10):
                while not await _refused(rig, "dev-a"):
                    await asyncio.sleep(0.05)
            # The session opened before must not get anything through either: the broker
            # either closed it or drops what it sends. dev-b's message marks "moved on".
            try:
                await a.publish(f"{PREFIX}/dev-a/alarm", json.dumps({"late": 1}).encode(),
                                qos=1, timeout=5)
            except aiomqtt.MqttError:
                pass
        async with rig.client("dev-b") as b:
            await b.publish(f"{PREFIX}/dev-b/alarm", b"{}", qos=1)
        assert await _next(seen) == f"{PREFIX}/dev-b/alarm"


async def test_tls_listener_with_dev_ca(tmp_path: Path) -> None:
    """The development CA's server certificate is accepted by a client that trusts the CA."""
    import ssl

    from gateway.tls import create_ca, issue

    ca = create_ca(tmp_path / "ca")
    server = issue(ca, tmp_path / "certs", "localhost", server=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(server.cert, server.key)
    tls_server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0, ssl=context)
    port = tls_server.sockets[0].getsockname()[1]
    try:
        client = ssl.create_default_context(cafile=str(ca.cert))
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client,
                                                  server_hostname="localhost")
        writer.close()
        with contextlib.suppress(ssl.SSLError, ConnectionError):
            await writer.wait_closed()
        untrusting = ssl.create_default_context()
        with pytest.raises(ssl.SSLCertVerificationError):
            await asyncio.open_connection("127.0.0.1", port, ssl=untrusting,
                                          server_hostname="localhost")
    finally:
        tls_server.close()
        await tls_server.wait_closed()
