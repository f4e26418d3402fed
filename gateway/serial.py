"""The serial line: one RS-232/USB port with many devices behind it (docs/serial.md).

Protocol work lives in the sans-I/O codec ``devices/serial.py``; this module only moves
bytes, owns the tasks and calls the injected handler, like ``gateway/sip.py`` does for SCAIP.

For each record read off the line:

1. A frame error (bad checksum, truncated, oversize, bad grammar) is counted by reason and
   answered with a NAK at once; the handler is not called. Noise outside frames is only
   counted (see ``devices.serial._NAK_FOR``).
2. A record is handed to ``handle(message) -> Verdict`` (the gateway stores it durably);
   its verdict is written back as the ACK or NAK. The ACK is never sent before the handler
   has returned, so an ACK always means "stored".
3. [1] Concurrency is bounded: at most ``max_concurrent`` handler calls run at once, and a
   record that finds every slot taken is NAKed ``busy`` at once, never queued. A serial
   line has no flow control worth the name: a queue would only hide overload until the
   kernel's tty buffer overflowed and frames were lost as noise, while a ``busy`` NAK makes
   the receiver resend after its back-off (the protocol requires it for alarms).
4. A resend of a record whose first copy is still in the handler is counted and dropped:
   the first copy's ACK answers both.

The port is opened with pyserial; ports with a file descriptor (ttys, ptys, USB adapters)
run on ``serial_asyncio_fast``. [2] pyserial's URL handlers without one (``loop://``,
``spy://``) cannot: ``serial_asyncio_fast`` registers ``fileno()`` with the event loop and
fails there, so for those a blocking read runs in a worker thread instead.

When the port goes away (USB unplugged: the read fails or reports EOF) the link reports
``on_state(False)``, and tries to reopen with full-jitter, capped exponential back-off; when
it opens again it reports ``on_state(True)``. The first outcome after start is always
reported, so a port that is missing from the beginning raises the technical alarm too.

Every task lives in one TaskGroup owned by the link, is named, and is cancelled and
awaited when the ``async with`` block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias

import serial
import serial_asyncio_fast

from devices.contract import DeviceMessage
from devices.serial import (
    FrameError,
    NakReason,
    Reply,
    SerialDecoder,
    SerialRecord,
    encode_ack,
    encode_nak,
)

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The handler's answer for one record: ACK (``reason`` None) or NAK with a reason."""

    reason: NakReason | None = None

    @property
    def acked(self) -> bool:
        """Whether the record was durably stored and is to be ACKed."""
        return self.reason is None


ACK = Verdict()


def nak(reason: NakReason) -> Verdict:
    """A NAK verdict."""
    return Verdict(reason)


Handler: TypeAlias = Callable[[DeviceMessage], Awaitable[Verdict]]
StateHandler: TypeAlias = Callable[[bool], None]

# [1] Concurrent handler calls per line. A line at 9600 baud carries at most ~10 records a
# second and a handler call is one journal append (milliseconds); 16 in flight absorbs a
# stalled group commit without letting one line hold many database waits.
DEFAULT_MAX_CONCURRENT = 16

# Reopen back-off: full jitter over an exponentially growing window. The cap keeps a
# re-plugged USB adapter in use within seconds; the jitter keeps several lines on one hub
# from reopening in lock-step.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0

# A line that stayed open this long counts as healthy again, and back-off restarts at the
# base. A port that opens and fails at once keeps backing off instead of spinning.
STABLE_S = 10.0

# How long closing a port may take. Closing runs in a worker thread (pyserial's close can
# block on a wedged USB driver); past this the link moves on rather than hang shutdown.
CLOSE_TIMEOUT_S = 5.0

# Bytes per blocking read on a thread-driven port ([2]).
_READ_CHUNK = 4096

_FRAMING = re.compile(r"^([5-8])([NEOMS])(1|1\.5|2)$")


@dataclass(slots=True)
class LinkStats:
    """Counters for /metrics and tests. ``frame_errors`` and ``naks`` are keyed by reason."""

    connects: int = 0
    bytes_in: int = 0
    records: int = 0
    handled: int = 0
    acks: int = 0
    naks: Counter[str] = field(default_factory=Counter)
    frame_errors: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    handler_errors: int = 0
    # ACK/NAK frames read back: our own echo (loop://, a half-duplex RS-485 converter).
    echoes: int = 0
    # Answers that could not be written because the port was down; the device resends.
    replies_dropped: int = 0


def parse_framing(framing: str) -> tuple[int, str, float]:
    """``"8N1"`` -> (bytesize, parity, stopbits); raises ValueError on anything else."""
    match = _FRAMING.match(framing.upper())
    if match is None:
        raise ValueError(f"framing {framing!r} is not like 8N1, 7E1 or 8N2")
    return int(match.group(1)), match.group(2), float(match.group(3))


class _Port(Protocol):
    """An open line: the link writes to it and awaits its loss."""

    lost: asyncio.Future[Exception | None]

    def write(self, data: bytes) -> None: ...

    async def close(self) -> None: ...


class _LineProtocol(asyncio.Protocol):
    """Bytes in -> the link's decoder; the end of the line -> ``lost``."""

    def __init__(self, on_data: Callable[[bytes], None]) -> None:
        self._on_data = on_data
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        self._on_data(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)


class _FdPort:
    """A port with a file descriptor, driven by ``serial_asyncio_fast``."""

    def __init__(self, transport: serial_asyncio_fast.SerialTransport, protocol: _LineProtocol):
        self._transport = transport
        self.lost = protocol.lost

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    async def close(self) -> None:
        # Abort, not close: close() drains the output first (tcdrain), which never returns
        # on a line stalled by hardware flow control. Unsent ACKs are resent-for anyway.
        # Once the transport is closing it is already on its way to connection_lost, and
        # aborting twice would run its teardown twice.
        if not self._transport.is_closing():
            self._transport.abort()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self.lost), CLOSE_TIMEOUT_S)


class _ThreadPort:
    """[2] A pyserial URL port without a file descriptor: reads block in a worker thread."""

    def __init__(self, port: Any, protocol: _LineProtocol, spawn: _Spawn, name: str) -> None:
        self._port = port
        self._protocol = protocol
        self.lost = protocol.lost
        # Blocking reads, so the worker thread sleeps in the driver instead of polling.
        port.timeout = None
        self._reader = spawn(self._read_loop(), name)

    async def _read_loop(self) -> None:
        while True:
            try:
                data = await asyncio.to_thread(_read_some, self._port)
            except (serial.SerialException, OSError) as exc:
                self._protocol.connection_lost(exc)
                return
            if not data:
                self._protocol.connection_lost(None)  # closed under us: EOF
                return
            self._protocol.data_received(data)

    def write(self, data: bytes) -> None:
        # loop:// and friends buffer in memory, so this does not block the event loop.
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            self._protocol.connection_lost(exc)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        # Unblocks a read still sleeping in the worker thread, then releases the port.
        with contextlib.suppress(serial.SerialException, OSError, AttributeError):
            self._port.cancel_read()
        with contextlib.suppress(serial.SerialException, OSError, TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._port.close), CLOSE_TIMEOUT_S)
        self._protocol.connection_lost(None)


def _read_some(port: Any) -> bytes:
    first: bytes = port.read(1)  # blocks until a byte, cancel_read() or close()
    if not first or not port.is_open:
        return first
    waiting: int = port.in_waiting
    rest: bytes = port.read(min(waiting, _READ_CHUNK)) if waiting else b""
    return first + rest


_Spawn: TypeAlias = Callable[[Coroutine[Any, Any, None], str], "asyncio.Task[None] | None"]


class SerialLink:
    """One serial line: read records, hand them to ``handler``, answer ACK/NAK.

    Use as ``async with SerialLink(handle, url="/dev/ttyUSB0") as link:``. ``url`` is a
    device path or any pyserial URL (``loop://`` for tests). Reusable, not re-entrant.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        url: str,
        baudrate: int = 9600,
        framing: str = "8N1",
        rtscts: bool = False,
        on_state: StateHandler | None = None,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        if baudrate < 1:
            raise ValueError("baudrate must be positive")
        self._bytesize, self._parity, self._stopbits = parse_framing(framing)
        self._handler = handler
        self.url = url
        self._baudrate = baudrate
        self._rtscts = rtscts
        self._on_state = on_state
        self._max_concurrent = max_concurrent
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self.stats = LinkStats()
        self._decoder = SerialDecoder()
        self._port: _Port | None = None
        self._state: bool | None = None
        self._up = asyncio.Event()
        self._active = 0
        self._in_flight: set[tuple[str, str]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def up(self) -> bool:
        """Whether the port is open right now."""
        return self._up.is_set()

    async def wait_up(self) -> None:
        """Return once the port is open."""
        await self._up.wait()

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("SerialLink is already running; it is not re-entrant")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(ready), name=f"serial link {self.url}")
        await ready
        return self

    async def wait(self) -> None:
        """Until the link's loops end (on close, or if they die)."""
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._tg = None
        self._in_flight.clear()
        self._active = 0
        self._set_state(False)
        self._state = None

    async def _run(self, ready: asyncio.Future[None]) -> None:
        # The TaskGroup lives in this task so that cancelling it (in __aexit__) cancels and
        # awaits the connect loop, every handler call and a thread port's reader.
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._connect_loop(), name=f"serial connect {self.url}")
            ready.set_result(None)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None] | None:
        if self._tg is None:
            coro.close()
            return None
        return self._tg.create_task(self._guard(coro, name), name=name)

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # One bad record must never take the TaskGroup (and so the line) down.
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("serial task %s failed", name)

    def _set_state(self, up: bool) -> None:
        if up == self._state:
            return
        self._state = up
        if up:
            self._up.set()
        else:
            self._up.clear()
        if self._on_state is not None:
            try:
                self._on_state(up)
            except Exception:
                _LOGGER.exception("serial on_state callback failed")

    # -- the port --------------------------------------------------------------------------

    async def _connect_loop(self) -> None:
        attempt = 0
        while True:
            try:
                port = await self._open()
            except (serial.SerialException, OSError, ValueError) as exc:
                self._set_state(False)
                delay = self._backoff(attempt)
                attempt += 1
                # Once per outage at warning; the retries are routine until it is back.
                log = _LOGGER.warning if attempt == 1 else _LOGGER.debug
                log("serial line %s unavailable (%s); retrying in %.1f s", self.url, exc, delay)
                await asyncio.sleep(delay)
                continue
            opened = time.monotonic()
            self._decoder = SerialDecoder()  # a half frame from before is not ours to finish
            self._port = port
            self.stats.connects += 1
            self._set_state(True)
            _LOGGER.info("serial line %s up", self.url)
            try:
                reason = await asyncio.shield(port.lost)
            finally:
                self._port = None
                await port.close()
            self._set_state(False)
            _LOGGER.warning("serial line %s lost: %s", self.url, reason or "end of file")
            if time.monotonic() - opened >= STABLE_S:
                attempt = 0
            delay = self._backoff(attempt)
            attempt += 1
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return random.uniform(0, min(self._backoff_cap_s, self._backoff_base_s * 2**attempt))

    async def _open(self) -> _Port:
        # Opening (termios, lock files) can block on a wedged USB driver: a worker thread.
        port = await asyncio.to_thread(
            serial.serial_for_url,
            self.url,
            baudrate=self._baudrate,
            bytesize=self._bytesize,
            parity=self._parity,
            stopbits=self._stopbits,
            rtscts=self._rtscts,
            # Another process reading the same tty would steal half the frames.
            exclusive=True,
        )
        protocol = _LineProtocol(self._on_data)
        try:
            port.fileno()
        except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation: [2]
            return _ThreadPort(port, protocol, self._spawn, f"serial reader {self.url}")
        transport, _ = await serial_asyncio_fast.connection_for_serial(
            asyncio.get_running_loop(), lambda: protocol, port
        )
        return _FdPort(transport, protocol)

    def send(self, data: bytes) -> bool:
        """Write encoded frames to the line (commands, tests); False when the port is down."""
        port = self._port
        if port is None or port.lost.done():
            return False
        port.write(data)
        return True

    # -- records ---------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        for item in self._decoder.feed(data):
            self._dispatch(item)

    def _dispatch(self, item: SerialRecord | FrameError) -> None:
        if isinstance(item, FrameError):
            self.stats.frame_errors[item.reason.value] += 1
            # Debug only: a noisy line produces these by the hundred; the counter is the
            # signal for monitoring.
            _LOGGER.debug("serial line %s: %s (%s)", self.url, item.reason.value, item.detail)
            if item.nak_reason is not None:
                self._answer(encode_nak(item.device_id, item.ref, item.nak_reason), item.nak_reason)
            return
        if isinstance(item, Reply):
            self.stats.echoes += 1
            return
        self.stats.records += 1
        key = (item.device_id, item.ref)
        if key in self._in_flight:
            self.stats.duplicates += 1
            return
        if self._active >= self._max_concurrent:
            # [1] Busy, never queued.
            self._answer(encode_nak(item.device_id, item.ref, NakReason.BUSY), NakReason.BUSY)
            return
        self._active += 1
        self._in_flight.add(key)
        self._spawn(self._handle(item, key), f"serial record {item.device_id}/{item.ref}")

    async def _handle(self, message: DeviceMessage, key: tuple[str, str]) -> None:
        try:
            verdict = await self._call_handler(message)
        finally:
            self._active -= 1
            self._in_flight.discard(key)
        if verdict.reason is None:
            self._answer(encode_ack(message.device_id, message.ref), None)
        else:
            self._answer(encode_nak(message.device_id, message.ref, verdict.reason), verdict.reason)

    async def _call_handler(self, message: DeviceMessage) -> Verdict:
        try:
            verdict = await self._handler(message)
        except Exception:
            # Not stored: NAK so the receiver resends, and keep serving the other devices.
            self.stats.handler_errors += 1
            _LOGGER.exception("serial handler failed for %s/%s", message.device_id, message.ref)
            return nak(NakReason.NOT_STORED)
        if not isinstance(verdict, Verdict):
            self.stats.handler_errors += 1
            _LOGGER.error("serial handler returned %r, not a Verdict", verdict)
            return nak(NakReason.NOT_STORED)
        self.stats.handled += 1
        return verdict

    def _answer(self, data: bytes, reason: NakReason | None) -> None:
        if not self.send(data):
            self.stats.replies_dropped += 1
            return
        if reason is None:
            self.stats.acks += 1
        else:
            self.stats.naks[reason.value] += 1
