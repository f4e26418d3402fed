"""Test clients: a device over MQTT and a staff member over HTTP + WebSocket."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiomqtt
import httpx
import websockets

from tests.conftest import PASSWORD


class Device:
    """A minimal device: publishes alarms and collects acks by ref."""

    def __init__(self, client: aiomqtt.Client, prefix: str, device_id: str) -> None:
        self.client = client
        self.prefix = prefix
        self.device_id = device_id
        self.acks: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # The device time each (ref, type) was first sent with: sending it again is a true
        # resend (the same message), as a real device's retry is.
        self._sent_ts: dict[tuple[str, str], int] = {}

    async def publish(self, channel: str, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{self.prefix}/{self.device_id}/{channel}", payload, qos=1)

    async def alarm(self, ref: str, kind: str = "manual", ts: int | None = None) -> None:
        """Send an alarm; the same ``ref`` and ``kind`` again resend it (same ``ts``)."""
        if ts is None:
            ts = self._sent_ts.setdefault((ref, kind), int(time.time() * 1000))
        await self.publish("alarm", {"ref": ref, "ts": ts, "type": kind})

    async def wait_ack(self, ref: str, timeout: float = 10) -> dict[str, Any]:
        if ref in self.acks:
            return self.acks[ref]
        future = self._waiters.setdefault(ref, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(future), timeout)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            body = json.loads(message.payload)
            self.acks[body["ref"]] = body
            waiter = self._waiters.pop(body["ref"], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(body)


@asynccontextmanager
async def device(
    broker: tuple[str, int], prefix: str, device_id: str,
    tls_context: ssl.SSLContext | None = None,
) -> AsyncIterator[Device]:
    """A connected device subscribed to its ack topic (over TLS with ``tls_context``)."""
    async with aiomqtt.Client(
        # A client id of this test's own: other test runs share the machine's Mosquitto, and
        # a broker drops the older of two sessions with one id.
        broker[0], broker[1], identifier=f"dev-{device_id}-{uuid.uuid4().hex[:8]}",
        tls_context=tls_context
    ) as client:
        await client.subscribe(f"{prefix}/{device_id}/ack", qos=1)
        dev = Device(client, prefix, device_id)
        listener = asyncio.create_task(dev._listen(), name=f"device {device_id} listener")
        try:
            yield dev
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


class Staff:
    """A staff member's phone: an HTTP client and a WebSocket."""

    def __init__(self, base: str, token: str) -> None:
        self.base = base
        self.token = token
        self.http = httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=10
        )

    async def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.post(f"/api/v1{path}", **kwargs)

    async def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return await self.http.get(f"/api/v1{path}", **kwargs)

    @asynccontextmanager
    async def socket(self) -> AsyncIterator[websockets.ClientConnection]:
        url = self.base.replace("http://", "ws://") + f"/api/v1/ws?token={self.token}"
        async with websockets.connect(url) as ws:
            yield ws


async def login(base: str, username: str, password: str = PASSWORD) -> Staff:
    """Log in through the OAuth2 password form."""
    async with httpx.AsyncClient(base_url=base) as client:
        response = await client.post(
            "/api/v1/auth/token", data={"username": username, "password": password}
        )
        response.raise_for_status()
        body = response.json()
        assert body["token_type"] == "bearer"
        return Staff(base, body["access_token"])


async def next_alarm(ws: websockets.ClientConnection, timeout: float = 10) -> dict[str, Any]:
    """The next ``alarm`` message on a staff socket (skipping hello/sync)."""
    async with asyncio.timeout(timeout):
        while True:
            message = json.loads(await ws.recv())
            if message["type"] == "alarm":
                alarm: dict[str, Any] = message["alarm"]
                return alarm


class ResendingFleet:
    """Devices that resend every alarm until it is acked, as the contract requires.

    Each device has its own MQTT connection and a persistent session, so an ack published
    while it is briefly disconnected still reaches it.
    """

    def __init__(self, broker: tuple[str, int], prefix: str, device_ids: list[str],
                 resend_s: float = 1.0) -> None:
        self.broker = broker
        self.prefix = prefix
        self.device_ids = device_ids
        self.resend_s = resend_s
        self.sent: dict[tuple[str, str], int] = {}
        self.acked: dict[tuple[str, str], str] = {}
        # A resend is the same message: the device time of its first send.
        self._ts: dict[tuple[str, str], int] = {}
        self._clients: dict[str, aiomqtt.Client] = {}
        self._all_acked = asyncio.Event()
        self._group: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> ResendingFleet:
        self._group = asyncio.TaskGroup()
        await self._group.__aenter__()
        ready = [asyncio.get_running_loop().create_future() for _ in self.device_ids]
        for device_id, up in zip(self.device_ids, ready, strict=True):
            self._group.create_task(self._device(device_id, up), name=f"sim {device_id}")
        try:
            await asyncio.gather(*ready)
        except BaseException as exc:
            # Surface the failing device's own error rather than the cancellation it caused.
            await self._group.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._group is not None
        for task in list(self._group._tasks):
            task.cancel()
        await self._group.__aexit__(None, None, None)

    async def _device(self, device_id: str, up: asyncio.Future[None]) -> None:
        client = aiomqtt.Client(
            self.broker[0], self.broker[1], identifier=f"{self.prefix}-{device_id}",
            clean_session=False, max_concurrent_outgoing_calls=None,
        )
        async with client:
            await client.subscribe(f"{self.prefix}/{device_id}/ack", qos=1)
            self._clients[device_id] = client
            up.set_result(None)
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                body = json.loads(message.payload)
                key = (device_id, body["ref"])
                if key in self.sent:
                    self.acked.setdefault(key, body["status"])
                    if len(self.acked) == len(self.sent):
                        self._all_acked.set()

    async def burst(self, per_device: int) -> None:
        """Every device raises ``per_device`` alarms at once."""
        for n in range(per_device):
            for device_id in self.device_ids:
                ref = f"b{n}"
                self.sent[(device_id, ref)] = 0
                await self._send(device_id, ref)

    async def _send(self, device_id: str, ref: str) -> None:
        self.sent[(device_id, ref)] += 1
        ts = self._ts.setdefault((device_id, ref), int(time.time() * 1000))
        body = {"ref": ref, "ts": ts, "type": "manual"}
        try:
            await self._clients[device_id].publish(
                f"{self.prefix}/{device_id}/alarm", json.dumps(body).encode(), qos=1
            )
        except aiomqtt.MqttError:
            pass  # the resend loop tries again

    async def resend_until_acked(self, deadline_s: float) -> None:
        """Resend every unacked alarm every ``resend_s`` until all are acked."""
        async with asyncio.timeout(deadline_s):
            while not self._all_acked.is_set():
                try:
                    await asyncio.wait_for(self._all_acked.wait(), self.resend_s)
                except TimeoutError:
                    for key in [k for k in self.sent if k not in self.acked]:
                        await self._send(*key)


@asynccontextmanager
async def running(link: Any) -> AsyncIterator[Any]:
    """Open a supervised component and run its loops, as the gateway's supervisor would."""
    async with link, asyncio.TaskGroup() as group:
        task = group.create_task(link.wait(), name=f"test run {type(link).__name__}")
        try:
            yield link
        finally:
            task.cancel()
