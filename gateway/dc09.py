"""The SIA DC-09 receiver: a thin asyncio layer over ``devices/dc09.py`` (docs/dc09.md).

For each frame, over TCP or UDP:

1. check and parse it (``parse_frame``: framing, CRC, length, account, key, timestamp);
   a refusal is answered NAK or DUH at once, counted by reason;
2. classify it (alarm / heartbeat / status) and give it a ref that its resends share;
3. ``await store(message)`` (the gateway's ``store_message``): only when that returns
   (the alarm is durably in the journal) is the ACK sent. A journal that cannot store it
   gets a NAK (the transmitter resends); a device that is not provisioned a DUH.

Null messages (link tests) are heartbeats, so the device watch supervises every account
by them. Each TCP connection is served in order (a transmitter waits for the answer to
one frame before it sends the next); UDP datagrams are handled concurrently up to
``max_concurrent``, beyond which they are answered NAK at once rather than queued.

Every task lives in one TaskGroup owned by the receiver, is named, and is cancelled and
awaited when the ``async with`` block exits. One bad frame is refused, counted and logged
(rate-limited); it never stops intake.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Self, TypeAlias

from devices.contract import AlarmMessage, DeviceMessage, HeartbeatMessage
from devices.dc09 import (
    CONTACT_ID_TABLE,
    SIA_TABLE,
    Dc09Account,
    Dc09Message,
    Dc09Refusal,
    Dc09StreamReader,
    Meaning,
    RefMemory,
    accounts_by_id,
    classify,
    device_message,
    encode_ack,
    encode_duh,
    encode_nak,
    encode_refusal,
    parse_frame,
)
from gateway.config import Dc09Settings
from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# ``Gateway.store_message``: None once stored (or nothing to store), else
# "unknown_device" (final) or "unavailable" (retry later).
Store: TypeAlias = Callable[[DeviceMessage], Awaitable[str | None]]

# Frames being stored at once (UDP). Each waits for one journal commit; 64 is far above a
# municipality's alarm rate yet bounds memory under a flood. Full: NAK at once (the
# transmitter resends), never a hidden queue.
DEFAULT_MAX_CONCURRENT = 64
DEFAULT_MAX_CONNECTIONS = 256
# A TCP connection silent this long is closed. Transmitters that keep a connection send a
# null message every 60-180 s; one that does not is holding a slot for nothing.
IDLE_TIMEOUT_S = 600.0
_READ_SIZE = 4096


@dataclass(slots=True)
class Dc09Stats:
    """Counters for /metrics and tests. ``rejects`` is keyed by ``Dc09Reason``."""

    received: int = 0
    acked: int = 0
    alarms: int = 0
    heartbeats: int = 0
    statuses: int = 0
    unknown_codes: int = 0
    not_stored: int = 0  # NAK: the journal could not store it
    unknown_devices: int = 0  # DUH: the account's device is not provisioned
    handler_errors: int = 0
    busy: int = 0
    rejects: Counter[str] = field(default_factory=Counter)


class Dc09Receiver:
    """Receive SIA DC-09 on TCP and UDP; answer each frame only after it is stored.

    ``async with Dc09Receiver(store, accounts=[...], port=0) as rx:``; ``rx.tcp_port`` and
    ``rx.udp_port`` then give the bound ports. Reusable but not re-entrant.
    """

    def __init__(
        self,
        store: Store,
        *,
        accounts: Sequence[Dc09Account],
        host: str = "127.0.0.1",
        port: int = 9000,
        udp: bool = True,
        tcp: bool = True,
        sia: Mapping[str, Meaning] = SIA_TABLE,
        contact_id: Mapping[int, Meaning] = CONTACT_ID_TABLE,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        idle_timeout_s: float = IDLE_TIMEOUT_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._store = store
        self._accounts = accounts_by_id(list(accounts))
        self._host = host
        self._port = port
        self._udp = udp
        self._tcp = tcp
        self._sia = sia
        self._contact_id = contact_id
        self._max_connections = max_connections
        self._idle_timeout_s = idle_timeout_s
        self._clock = clock
        self._slots = asyncio.Semaphore(max_concurrent)
        self._refs = RefMemory()
        self._log_limiter = LogLimiter(interval_s=60.0)
        self.stats = Dc09Stats()
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._connections = 0
        self.udp_port: int | None = None
        self.tcp_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("Dc09Receiver is already running; it is not re-entrant")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._runner = asyncio.create_task(self.run(ready), name="dc09 receiver")
        await ready
        try:
            if self._udp:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self._host, self._port)
                )
                self._udp_transport = transport
                self.udp_port = transport.get_extra_info("sockname")[1]
            if self._tcp:
                self._server = await asyncio.start_server(
                    self._on_connection, self._host, self._port
                )
                self.tcp_port = self._server.sockets[0].getsockname()[1]
        except BaseException:
            await self._stop()
            raise
        _LOGGER.info("DC-09 receiving on %s udp=%s tcp=%s (%d accounts)", self._host,
                     self.udp_port, self.tcp_port, len(self._accounts))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def wait(self) -> None:
        """Until the receiver's loops end (on close, or if they die)."""
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._udp_transport is not None:
            self._udp_transport.close()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        if self._server is not None:
            await self._server.wait_closed()
        self._server = None
        self._udp_transport = None
        self.udp_port = self.tcp_port = None
        self._tg = None

    async def run(self, ready: asyncio.Future[None] | None = None) -> None:
        """Own every per-connection and per-datagram task until cancelled."""
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if ready is not None:
                ready.set_result(None)
            await asyncio.get_running_loop().create_future()  # until cancelled

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(self._guard(coro, name), name=name)

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # Defence in depth: _answer already isolates each frame; nothing may take the
        # TaskGroup (and with it every other transmitter) down.
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - isolation: one connection, not the receiver
            self.stats.handler_errors += 1
            self._log_limiter.log(_LOGGER, logging.ERROR, f"task:{type(exc).__name__}",
                                  "DC-09 task %s failed", name, exc_info=exc)

    # -- transports ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._udp_transport
        if transport is None:
            return
        if self._slots.locked():
            # Policy: NAK rather than queue (see DEFAULT_MAX_CONCURRENT).
            self.stats.received += 1
            self.stats.busy += 1
            transport.sendto(encode_nak(self._clock()), addr)
            return
        self._spawn(self._serve_datagram(data, addr, transport), f"dc09 udp {addr[0]}:{addr[1]}")

    async def _serve_datagram(
        self, data: bytes, addr: tuple[str, int], transport: asyncio.DatagramTransport
    ) -> None:
        async with self._slots:
            answer = await self._answer(data)
        if not transport.is_closing():
            transport.sendto(answer, addr)

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._tg is None or self._connections >= self._max_connections:
            self.stats.rejects["too_many_connections"] += 1
            writer.close()
            return
        self._connections += 1
        self._spawn(self._serve(reader, writer), f"dc09 tcp {peer[0]}:{peer[1]}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        framer = Dc09StreamReader()
        try:
            while True:
                async with asyncio.timeout(self._idle_timeout_s):
                    data = await reader.read(_READ_SIZE)
                if not data:
                    break
                for item in framer.feed(data):
                    if isinstance(item, Dc09Refusal):
                        answer = self._refused(item, self._clock())
                    else:
                        answer = await self._answer(item)
                    writer.write(answer)
                await writer.drain()
        except TimeoutError:
            self._log_limiter.log(_LOGGER, logging.DEBUG, "tcp_idle",
                                  "DC-09 TCP %s idle for %.0f s, closed", peer,
                                  self._idle_timeout_s)
        except (ConnectionError, OSError) as exc:
            self._log_limiter.log(_LOGGER, logging.DEBUG, "tcp_closed",
                                  "DC-09 TCP %s closed: %s", peer, exc)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    # -- one frame -------------------------------------------------------------------------

    async def _answer(self, frame: bytes) -> bytes:
        """The answer to one frame, sent only after it is stored. Never raises."""
        now = self._clock()
        try:
            parsed = parse_frame(frame, self._accounts, now)
            if isinstance(parsed, Dc09Refusal):
                return self._refused(parsed, now)
            return await self._take(parsed, now)
        except Exception:
            # A bug, not bad input (parse_frame does not raise): NAK so the transmitter
            # resends, and keep serving everyone else.
            self.stats.handler_errors += 1
            if self._log_limiter.allow("handler_error"):
                _LOGGER.exception("DC-09 frame could not be handled%s",
                                  self._log_limiter.suppressed_note("handler_error"))
            return encode_nak(self._clock())

    def _refused(self, refusal: Dc09Refusal, now: float) -> bytes:
        self.stats.received += 1
        self.stats.rejects[refusal.reason.value] += 1
        key = f"refused:{refusal.reason.value}"
        if self._log_limiter.allow(key):
            _LOGGER.warning("DC-09 frame from account %s refused (%s, answered %s): %s%s",
                            refusal.account or "?", refusal.reason.value, refusal.reply.value,
                            refusal.detail, self._log_limiter.suppressed_note(key))
        return encode_refusal(refusal, now)

    async def _take(self, message: Dc09Message, now: float) -> bytes:
        self.stats.received += 1
        meaning = classify(message, sia=self._sia, contact_id=self._contact_id)
        if not meaning.known:
            self.stats.unknown_codes += 1
            key = f"unknown:{message.code}:{message.contact_id}"
            if self._log_limiter.allow(key):
                _LOGGER.info("DC-09 account %s: code %s / Contact ID %s not in the table, "
                             "taken as %s%s", message.account, message.code,
                             message.contact_id, meaning.alarm_type or meaning.state,
                             self._log_limiter.suppressed_note(key))
        device = device_message(message, meaning, self._refs.ref_for(message, now), now)
        outcome = await self._store(device)
        if outcome is None:
            self.stats.acked += 1
            if isinstance(device, AlarmMessage):
                self.stats.alarms += 1
            elif isinstance(device, HeartbeatMessage):
                self.stats.heartbeats += 1
            else:
                self.stats.statuses += 1
            return encode_ack(message, self._accounts[message.account].key, self._clock())
        if outcome == "unknown_device":
            self.stats.unknown_devices += 1
            return encode_duh(message.sequence, message.receiver, message.line, message.account)
        self.stats.not_stored += 1
        return encode_nak(self._clock())


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, receiver: Dc09Receiver) -> None:
        self._receiver = receiver

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._receiver._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a transmitter that went away; it resends anyway.
        _LOGGER.debug("DC-09 UDP error: %s", exc)


def dc09_receiver(settings: Dc09Settings, store: Store) -> Dc09Receiver:
    """The receiver ``[dc09]`` describes, storing through ``store``."""
    sia, contact_id = settings.code_tables()
    return Dc09Receiver(
        store, accounts=settings.receiver_accounts(), host=settings.host, port=settings.port,
        udp=settings.udp, tcp=settings.tcp, sia=sia, contact_id=contact_id,
    )
