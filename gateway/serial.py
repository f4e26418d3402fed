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

The port is opened and configured with pyserial; a port with a file descriptor (ttys,
ptys, USB adapters) is then driven by the event loop directly (``_FdPort``, [3]). [2]
pyserial's URL handlers without one (``loop://``, ``spy://``) cannot be: for those a
blocking read runs in a worker thread instead.

[3] Not through ``serial_asyncio_fast.SerialTransport`` (0.16), which has two bugs on the
write path (issue 17.7). Its writer callback stays registered after a backlog has drained,
so the loop calls ``_write_ready`` on an empty buffer on every iteration and each call fails
an ``assert``: after a burst of NAKs to a receiver that read slowly, 853,611 tracebacks
(450 MB of log) in 95 s and a busy event loop. And a write into an empty buffer goes through
pyserial's ``Serial.write``, which with a zero write timeout retries ``EAGAIN`` in a busy
loop, stalling the event loop for as long as the tty's output buffer stays full. Our port
writes with ``os.write`` on the non-blocking descriptor, registers a writer only while bytes
wait, and bounds what may wait (``MAX_PENDING_OUT``): an answer that does not fit is dropped
and counted, and the device resends (a missing ACK means "not stored" to it).

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
import os
import random
import re
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Protocol, Self, TypeAlias

import serial

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
from gateway.ratelimit import LogLimiter

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

# Bytes per read of a ready descriptor ([3]), as serial_asyncio_fast read: at most some 25
# records a chunk, so the handler calls one chunk starts get to run (and free their slots)
# before the next chunk is read, instead of a deep tty buffer NAKing "busy" all at once.
_FD_READ_CHUNK = 1024

# [3] Answers waiting for the line, at most: 16 KiB is ~17 s of a 9600-baud line, some 500
# ACK/NAK frames. A receiver that has not read that much is not reading; the answers would
# be stale by the time it did, and an unbounded buffer would grow for as long as it is
# stalled. Past the bound an answer is dropped (counted): the receiver resends.
MAX_PENDING_OUT = 16 * 1024

# Per-message log lines (handler faults, dropped answers): one per kind per minute, with the
# count of what was suppressed. A line full of bad frames must not flood the log (17.7).
LOG_INTERVAL_S = 60.0

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
    # Answers that could not be written (port down, or [3] too many waiting for a line
    # that is not read); the device resends.
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

    def write(self, data: bytes) -> bool:
        """Send or queue ``data``; False if it was dropped (line lost, or [3] full)."""
        ...

    @property
    def pending_out(self) -> int:
        """Bytes written but not yet taken by the line."""
        ...

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
    """[3] A port with a file descriptor, read and written on the event loop directly.

    pyserial opened and configured the port (baud rate, framing, exclusive lock) and its
    descriptor is non-blocking. Reads happen when the descriptor is readable. A write goes
    out at once as far as the tty takes it; the rest waits in a bounded buffer, and a writer
    callback is registered exactly while something waits, so an idle line costs nothing.
    """

    def __init__(self, port: Any, protocol: _LineProtocol) -> None:
        self._port = port
        self._protocol = protocol
        self.lost = protocol.lost
        self._loop = asyncio.get_running_loop()
        self._fd: int = port.fileno()
        os.set_blocking(self._fd, False)
        self._out = bytearray()
        self._writing = False
        self._open = True
        self._loop.add_reader(self._fd, self._on_readable)

    @property
    def pending_out(self) -> int:
        """Bytes written but not yet taken by the tty."""
        return len(self._out)

    def _on_readable(self) -> None:
        try:
            data = os.read(self._fd, _FD_READ_CHUNK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:  # EIO: the adapter was pulled, the pty's other end closed
            self._lose(exc)
            return
        if not data:
            # Readable but nothing to read: the device is gone (pyserial says the same).
            self._lose(None)
            return
        self._protocol.data_received(data)

    def write(self, data: bytes) -> bool:
        if not self._open:
            return False
        if len(self._out) + len(data) > MAX_PENDING_OUT:
            return False
        if not self._out:
            try:
                sent = os.write(self._fd, data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._lose(exc)
                return False
            if sent == len(data):
                return True
            data = data[sent:]
        self._out += data
        if not self._writing:
            self._loop.add_writer(self._fd, self._on_writable)
            self._writing = True
        return True

    def _on_writable(self) -> None:
        try:
            sent = os.write(self._fd, self._out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lose(exc)
            return
        del self._out[:sent]
        if not self._out:
            # The library's bug [3]: leaving the writer registered here makes the loop call
            # it on every iteration from now on.
            self._loop.remove_writer(self._fd)
            self._writing = False

    def _detach(self) -> None:
        if not self._open:
            return
        self._open = False
        self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        self._out.clear()

    def _lose(self, exc: Exception | None) -> None:
        self._detach()
        self._protocol.connection_lost(exc)

    async def close(self) -> None:
        # Unsent answers are dropped, not drained: draining (tcdrain) never returns on a line
        # stalled by hardware flow control, and the devices resend what was not ACKed.
        self._detach()
        # pyserial's close can block on a wedged USB driver: a worker thread, bounded.
        with contextlib.suppress(serial.SerialException, OSError, TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(self._port.close), CLOSE_TIMEOUT_S)
        self._protocol.connection_lost(None)


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

    @property
    def pending_out(self) -> int:
        """Always 0: loop:// and friends take every write at once, into memory."""
        return 0

    def write(self, data: bytes) -> bool:
        # loop:// and friends buffer in memory, so this does not block the event loop.
        try:
            self._port.write(data)
        except (serial.SerialException, OSError) as exc:
            self._protocol.connection_lost(exc)
            return False
        return True

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
        self._log = LogLimiter(LOG_INTERVAL_S)

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
        except Exception as exc:  # noqa: BLE001 - isolation: one record, not the line
            self._log.log(_LOGGER, logging.ERROR, f"task:{type(exc).__name__}",
                          "serial task %s failed", name, exc_info=exc)

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
        try:
            return _FdPort(port, protocol)
        except BaseException:
            port.close()
            raise

    @property
    def pending_out(self) -> int:
        """Bytes of answers waiting for the line to take them (0 while it is down)."""
        port = self._port
        return 0 if port is None else port.pending_out

    def send(self, data: bytes) -> bool:
        """Write encoded frames to the line (commands, tests); False when they were dropped:
        the port is down, or [3] too much is already waiting for it."""
        port = self._port
        if port is None or port.lost.done():
            return False
        return port.write(data)

    # -- records ---------------------------------------------------------------------------

    def _on_data(self, data: bytes) -> None:
        self.stats.bytes_in += len(data)
        try:
            items = self._decoder.feed(data)
        except Exception as exc:  # noqa: BLE001 - the codec never raises; if it did, per chunk
            # A codec bug: without this, the event loop would log a traceback for every chunk
            # the line delivers (issue 17.7). Start over at the next frame; the devices resend.
            self.stats.handler_errors += 1
            self._decoder = SerialDecoder()
            self._log.log(_LOGGER, logging.ERROR, f"decoder:{type(exc).__name__}",
                          "serial line %s: the decoder failed on %d bytes", self.url, len(data),
                          exc_info=exc)
            return
        for item in items:
            self._dispatch(item)

    def _dispatch(self, item: SerialRecord | FrameError) -> None:
        if isinstance(item, FrameError):
            self.stats.frame_errors[item.reason.value] += 1
            # Debug only, and rate-limited: a noisy line produces these by the hundred; the
            # counter is the signal for monitoring.
            self._log.log(_LOGGER, logging.DEBUG, f"frame:{item.reason.value}",
                          "serial line %s: %s (%s)", self.url, item.reason.value, item.detail)
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
        except Exception as exc:  # noqa: BLE001 - isolation: one record, not the line
            # Not stored: NAK so the receiver resends, and keep serving the other devices.
            self.stats.handler_errors += 1
            self._log.log(_LOGGER, logging.ERROR, f"handler:{type(exc).__name__}",
                          "serial handler failed for %s/%s", message.device_id, message.ref,
                          exc_info=exc)
            return nak(NakReason.NOT_STORED)
        if not isinstance(verdict, Verdict):
            self.stats.handler_errors += 1
            self._log.log(_LOGGER, logging.ERROR, "verdict",
                          "serial handler returned %r, not a Verdict", verdict)
            return nak(NakReason.NOT_STORED)
        self.stats.handled += 1
        return verdict

    def _answer(self, data: bytes, reason: NakReason | None) -> None:
        if not self.send(data):
            self.stats.replies_dropped += 1
            if self._port is not None:
                # [3] Up, but the receiver does not take what we write: it is not reading.
                self._log.log(_LOGGER, logging.WARNING, "backlog",
                              "serial line %s: %d bytes of answers wait for the receiver to "
                              "read; dropping answers (the devices resend)",
                              self.url, self.pending_out)
            return
        if reason is None:
            self.stats.acks += 1
        else:
            self.stats.naks[reason.value] += 1
