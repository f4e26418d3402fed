"""One MQTT connection carrying one device (the default) or many (multiplexed big fleets).

The connection reconnects by itself with jittered, capped back-off, keeps a persistent
session (``clean_session=False`` with a stable client id) so acks published while it was
down are queued by the broker and delivered on reconnect, and can be held down on purpose
(a killed device, a disconnect storm).
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn, TypeAlias

import aiomqtt

_LOGGER = logging.getLogger(__name__)

MessageHandler: TypeAlias = Callable[[str, bytes], None]
ConnectedHandler: TypeAlias = Callable[[], None]

# Nagle's algorithm holds small writes back waiting for the peer's ACK; alarm messages and
# their PUBACKs are exactly such small writes. aiomqtt applies socket options right after
# connect, on the socket paho created (the same as ``client._client.socket().setsockopt``).
_SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

# Subscriptions per SUBSCRIBE packet when multiplexing: Mosquitto accepts far more, but a
# few hundred topics per packet keeps each SUBACK small and the first ones flowing early.
_SUBSCRIBE_BATCH = 200


@dataclass(frozen=True, slots=True)
class Backoff:
    """Capped exponential back-off with jitter: ``delay(n)`` for attempt n (0-based)."""

    initial_s: float = 0.5
    cap_s: float = 5.0
    factor: float = 2.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """A delay in [ceiling/2, ceiling], ceiling = min(cap, initial * factor**attempt).

        Half fixed, half random ("equal jitter"): a fleet that lost its broker at the same
        instant spreads out its reconnects, yet no device retries almost immediately.
        """
        ceiling = min(self.cap_s, self.initial_s * self.factor ** min(attempt, 32))
        return ceiling / 2.0 + rng.uniform(0.0, ceiling / 2.0)


class Connection:
    """A reconnecting MQTT connection with a bounded outbox and a few publisher workers."""

    def __init__(
        self,
        name: str,
        *,
        host: str,
        port: int,
        client_id: str,
        subscriptions: Sequence[str],
        on_message: MessageHandler,
        on_connected: ConnectedHandler,
        backoff: Backoff,
        rng: random.Random,
        counters: Counter[str],
        outbox_size: int = 1000,
        workers: int = 1,
        keepalive: int = 30,
    ) -> None:
        self.name = name
        self._host = host
        self._port = port
        self._client_id = client_id
        self._subscriptions = tuple(subscriptions)
        self._on_message = on_message
        self._on_connected = on_connected
        self._backoff = backoff
        self._rng = rng
        self._counters = counters
        self._workers = workers
        self._keepalive = keepalive
        # Bounded: when the broker is slow, telemetry is dropped (and counted) rather than
        # buffered without limit; alarms wait for room (``publish``) and are resent anyway.
        self._outbox: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(outbox_size)
        self.connected = asyncio.Event()
        self._up = asyncio.Event()  # allowed to be connected
        self._up.set()
        self._down = asyncio.Event()  # asked to disconnect now
        self._down_until = 0.0
        self._holds = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- control -------------------------------------------------------------------------------

    def hold(self) -> None:
        """Disconnect and stay down until ``release`` (a killed device)."""
        self._holds += 1
        self._up.clear()
        self._down.set()

    def release(self) -> None:
        """Undo one ``hold``."""
        self._holds = max(0, self._holds - 1)
        if self._holds == 0 and asyncio.get_running_loop().time() >= self._down_until:
            self._up.set()

    def drop(self, seconds: float) -> None:
        """Disconnect now and stay down for ``seconds`` (a network outage)."""
        loop = asyncio.get_running_loop()
        self._down_until = max(self._down_until, loop.time() + seconds)
        self._up.clear()
        self._down.set()
        # A timer callback, not a task: it only flips an event; ``close`` cancels it.
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(self._down_until, self._end_drop)

    def close(self) -> None:
        """Cancel the pending end-of-drop timer (the fleet is shutting down)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _end_drop(self) -> None:
        self._timer = None
        if self._holds == 0 and asyncio.get_running_loop().time() >= self._down_until:
            self._up.set()

    # -- publishing ------------------------------------------------------------------------------

    def publish_nowait(self, topic: str, payload: bytes) -> bool:
        """Queue a message for QoS 1; drop it (False) if offline or the outbox is full."""
        if not self.connected.is_set():
            self._counters["dropped_offline"] += 1
            return False
        try:
            self._outbox.put_nowait((topic, payload))
        except asyncio.QueueFull:
            self._counters["dropped_full"] += 1
            return False
        return True

    async def publish(self, topic: str, payload: bytes) -> bool:
        """Queue a message, waiting for room (back-pressure); False if offline."""
        if not self.connected.is_set():
            self._counters["dropped_offline"] += 1
            return False
        await self._outbox.put((topic, payload))
        return True

    # -- the connection loop -----------------------------------------------------------------

    async def run(self) -> NoReturn:
        """Connect, serve, reconnect; forever (until cancelled)."""
        attempt = 0
        while True:
            await self._up.wait()
            self._down.clear()
            try:
                dropped = await self._session()
            except* aiomqtt.MqttError as group:
                dropped = False
                self._counters["connection_errors"] += 1
                _LOGGER.debug("%s: connection lost: %s", self.name, group.exceptions[0])
            finally:
                if self.connected.is_set():
                    self._counters["disconnects"] += 1
                self.connected.clear()
            # A TaskGroup already aborting for a child's error reports that error instead of
            # our cancellation (Python 3.11), and wait_for may drop one: never swallow it.
            _reraise_lost_cancel()
            # An intentional drop reconnects promptly once allowed again; errors back off.
            attempt = 0 if dropped else attempt + 1
            if attempt > 0:
                await asyncio.sleep(self._backoff.delay(attempt - 1, self._rng))

    async def _session(self) -> bool:
        """One connection, until it fails (raises) or is asked to go down (returns True)."""
        client = _Client(
            self._host,
            self._port,
            identifier=self._client_id,
            clean_session=False,
            keepalive=self._keepalive,
            socket_options=_SOCKET_OPTIONS,
            timeout=10.0,
        )
        async with client:
            topics = [(t, 1) for t in self._subscriptions]
            for i in range(0, len(topics), _SUBSCRIBE_BATCH):
                await client.subscribe(topics[i : i + _SUBSCRIBE_BATCH])
                _reraise_lost_cancel()
            self._counters["connects"] += 1
            self.connected.set()
            self._on_connected()
            async with asyncio.TaskGroup() as tg:
                tasks = [tg.create_task(self._receive(client), name=f"{self.name} receive")]
                tasks += [tg.create_task(self._send(client), name=f"{self.name} publish {n}")
                          for n in range(self._workers)]
                # A failing child cancels this wait and the group raises its error.
                await self._down.wait()
                for task in tasks:
                    task.cancel()
        return True

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            payload = message.payload
            if not isinstance(payload, bytes):
                continue  # aiomqtt hands over bytes for anything received over the wire
            try:
                self._on_message(message.topic.value, payload)
            except Exception:
                # One bad message must not take the connection (and its devices) down.
                _LOGGER.exception("%s: handling %s failed", self.name, message.topic.value)

    async def _send(self, client: aiomqtt.Client) -> None:
        while True:
            topic, payload = await self._outbox.get()
            # Waits for the PUBACK: the number of workers bounds messages in flight.
            await client.publish(topic, payload, qos=1)
            _reraise_lost_cancel()
            self._counters["published"] += 1


def _reraise_lost_cancel() -> None:
    """Re-raise a cancellation that an inner ``asyncio.wait_for`` swallowed.

    On Python 3.11, ``wait_for`` (used by aiomqtt for publish and subscribe) drops a
    cancellation that arrives just as the awaited operation completes; the task is still
    marked as cancelling, so check that and honour it, or shutdown would hang.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError



class _Client(aiomqtt.Client):
    """``aiomqtt.Client`` whose deferred writer registration checks the socket still lives.

    aiomqtt registers the socket writer through ``call_soon_threadsafe`` but unregisters it
    at once; when a fleet of devices goes down together, paho closes sockets in between and
    the deferred ``add_writer`` hits a closed fd (EBADF logged by the loop) or a reused one.
    The simulator does not import the gateway, so this is the gateway's ``SafeClient`` fix
    (gateway/mqtt.py) for the one callback it needs.
    """

    def _on_socket_register_write(self, client: Any, userdata: Any, sock: Any) -> None:
        def write() -> None:
            try:
                client.loop_write()
            except Exception as exc:  # noqa: BLE001 - as aiomqtt: a broken pipe ends the session
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            if client.socket() is sock:
                self._loop.add_writer(sock.fileno(), write)

        self._loop.call_soon_threadsafe(register)
