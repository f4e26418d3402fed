"""Test clients: a device over MQTT and a staff member over HTTP + WebSocket."""

from __future__ import annotations

import asyncio
import json
import time
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

    async def publish(self, channel: str, body: dict[str, Any] | bytes) -> None:
        payload = body if isinstance(body, bytes) else json.dumps(body).encode()
        await self.client.publish(f"{self.prefix}/{self.device_id}/{channel}", payload, qos=1)

    async def alarm(self, ref: str, kind: str = "manual") -> None:
        await self.publish("alarm", {"ref": ref, "ts": int(time.time() * 1000), "type": kind})

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
async def device(broker: tuple[str, int], prefix: str, device_id: str) -> AsyncIterator[Device]:
    """A connected device subscribed to its ack topic."""
    async with aiomqtt.Client(broker[0], broker[1], identifier=f"dev-{device_id}") as client:
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
