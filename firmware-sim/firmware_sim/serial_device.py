"""A simulated serial receiver: many devices behind one serial line (docs/serial.md).

Older base stations and radio receivers pass their devices' messages to the gateway over
RS-232/USB. This simulator is such a receiver. It owns the master end of a pseudo-terminal
pair (``os.openpty()``); the gateway opens the slave end as if it were ``/dev/ttyUSB0``::

    async with SerialReceiverSim(["rx-1", "rx-2"], link_path=tmp / "ttyTRYGG") as rx:
        async with SerialLink(handle, url=rx.path):
            alarm = rx.raise_alarm("rx-1", "fall")
            assert await rx.wait_settled([alarm], timeout=5)

Like a real receiver it resends each alarm byte for byte (same ref, same ts) with capped,
jittered back-off until the gateway ACKs it, stops on a NAK that cannot be cured by
resending (``content``, ``unknown_device``), and resends everything pending at once when
the line comes back or a NAK arrives that names no frame. ``unplug()`` / ``plug()`` pull
and re-insert the "USB cable": the pty pair is closed and the ``link_path`` symlink removed,
then a new pair is made and the symlink points at its slave.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import secrets
import time
import tty
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Self

from alarms.model import AlarmType
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    StatusMessage,
    TelemetryMessage,
)
from devices.serial import (
    RETRYABLE,
    FrameError,
    Reply,
    SerialDecoder,
    encode_record,
)

from .connection import Backoff

# Bytes waiting to go out while the gateway does not read the line. A real receiver's UART
# buffer is far smaller; beyond this the oldest-first queue stops growing and new bytes are
# dropped (counted), and the alarms among them are resent anyway.
MAX_OUTPUT = 64 * 1024

# Default alarm resend back-off: quick first retries (a line glitch), then every few seconds.
DEFAULT_BACKOFF = Backoff(initial_s=0.5, cap_s=5.0)


@dataclass(slots=True, eq=False)
class SerialAlarm:
    """One alarm's delivery over the line. ``status`` is None while pending, then "stored"
    or the NAK reason that ended it. Times are ``time.monotonic()`` seconds.
    """

    device_id: str
    ref: str
    type: AlarmType
    frame: bytes
    raised_at: float
    sends: int = 0
    naks: list[str] = field(default_factory=list)
    status: str | None = None
    acked_at: float | None = None
    # Set on ACK/final NAK (stop) and on plug/unaddressed NAK (resend now).
    wake: asyncio.Event = field(default_factory=asyncio.Event, repr=False)
    # Set once, with the final answer.
    settled: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    @property
    def pending(self) -> bool:
        """Whether the alarm still waits for its final answer."""
        return self.status is None


@dataclass(slots=True)
class ReceiverStats:
    """What went over the simulated line."""

    sent: Counter[str] = field(default_factory=Counter)  # by message class name
    resends: int = 0
    acks: int = 0
    naks: Counter[str] = field(default_factory=Counter)
    reply_errors: Counter[str] = field(default_factory=Counter)
    dropped_bytes: int = 0
    plugs: int = 0


class SerialReceiverSim:
    """A receiver with ``device_ids`` behind it, on the master end of a pty. Not re-entrant."""

    def __init__(
        self,
        device_ids: Sequence[str],
        *,
        link_path: str | os.PathLike[str] | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
        heartbeat_s: float | None = None,
        seed: int | None = None,
    ) -> None:
        if not device_ids:
            raise ValueError("a receiver needs at least one device")
        self.device_ids = tuple(device_ids)
        self._link_path = Path(link_path) if link_path is not None else None
        self._backoff = backoff
        self._heartbeat_s = heartbeat_s
        self._rng = random.Random(seed)
        # Random, not seeded: refs must not repeat across simulator runs, or the gateway's
        # de-duplication would swallow a new alarm as a resend of an old one.
        self._boot = secrets.token_hex(3)
        self._seq = 0
        self.stats = ReceiverStats()
        self.alarms: list[SerialAlarm] = []
        self.replies: list[Reply] = []
        self._pending: dict[tuple[str, str], SerialAlarm] = {}
        self._decoder = SerialDecoder()
        self._master: int | None = None
        self._slave: int | None = None
        self._slave_name = ""
        self._out = bytearray()
        self._writing = False
        self._reading = True
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None

    @property
    def path(self) -> str:
        """What the gateway opens: the symlink if one was asked for, else the pty slave."""
        return str(self._link_path) if self._link_path is not None else self._slave_name

    @property
    def plugged(self) -> bool:
        """Whether the line exists right now."""
        return self._master is not None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._runner is not None:
            raise RuntimeError("SerialReceiverSim is already running; it is not re-entrant")
        ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(ready), name="serial receiver sim")
        await ready
        self.plug()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.unplug()
        runner, self._runner = self._runner, None
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        self._tg = None

    async def _run(self, ready: asyncio.Future[None]) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            if self._heartbeat_s is not None:
                tg.create_task(self._heartbeats(self._heartbeat_s), name="serial sim heartbeats")
            ready.set_result(None)
            await asyncio.get_running_loop().create_future()  # until cancelled

    def plug(self) -> None:
        """Create the line (a new pty pair) and point ``link_path`` at it."""
        if self._master is not None:
            return
        master, slave = os.openpty()
        # Raw mode before anyone opens the slave: in the default cooked mode the line
        # discipline would echo our frames back to us and turn CR into LF.
        tty.setraw(slave)
        os.set_blocking(master, False)
        # We keep the slave open ourselves so that the master does not read EIO while the
        # gateway has it closed (between its reconnects).
        self._master, self._slave = master, slave
        self._slave_name = os.ttyname(slave)
        if self._link_path is not None:
            tmp = self._link_path.with_name(self._link_path.name + ".new")
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            tmp.symlink_to(self._slave_name)
            tmp.replace(self._link_path)  # atomic: the gateway never sees a half-made link
        if self._reading:
            asyncio.get_running_loop().add_reader(master, self._on_readable)
        self._decoder = SerialDecoder()
        self.stats.plugs += 1
        for alarm in self._pending.values():
            alarm.wake.set()

    def unplug(self) -> None:
        """Remove the line: the symlink goes, then both pty ends close (the gateway's reads
        fail as when a USB adapter is pulled)."""
        if self._link_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self._link_path.unlink()
        master, slave = self._master, self._slave
        self._master = self._slave = None
        if master is not None:
            loop = asyncio.get_running_loop()
            if self._reading:
                loop.remove_reader(master)
            if self._writing:
                loop.remove_writer(master)
            os.close(master)
        if slave is not None:
            os.close(slave)
        self._writing = False
        self._out.clear()

    def stop_reading(self) -> None:
        """Stop reading the line, like a receiver busy with its radio: the gateway's answers
        back up in the tty and then in the gateway. ``start_reading`` catches up."""
        if self._master is not None and self._reading:
            asyncio.get_running_loop().remove_reader(self._master)
        self._reading = False

    def start_reading(self) -> None:
        """Read the line again (and everything that waited in the tty)."""
        if self._master is not None and not self._reading:
            asyncio.get_running_loop().add_reader(self._master, self._on_readable)
        self._reading = True

    # -- sending ---------------------------------------------------------------------------

    def _next_ref(self, kind: str) -> str:
        self._seq += 1
        return f"{self._boot}-{kind}{self._seq}"

    def _check(self, device_id: str) -> None:
        if device_id not in self.device_ids:
            raise ValueError(f"{device_id!r} is not behind this receiver")

    def raise_alarm(
        self,
        device_id: str,
        alarm_type: AlarmType | str = AlarmType.MANUAL,
        *,
        battery: float | None = None,
    ) -> SerialAlarm:
        """Raise an alarm: sent now and resent until the gateway answers it for good."""
        self._check(device_id)
        if self._tg is None:
            raise RuntimeError("the receiver is not running")
        kind = AlarmType(alarm_type)
        ref = self._next_ref("a")
        message = AlarmMessage(device_id, ref, _now_ms(), kind, battery)
        alarm = SerialAlarm(device_id, ref, kind, encode_record(message), time.monotonic())
        self.alarms.append(alarm)
        self._pending[(device_id, ref)] = alarm
        self.stats.sent["AlarmMessage"] += 1
        self._tg.create_task(self._deliver(alarm), name=f"serial sim alarm {device_id}/{ref}")
        return alarm

    def heartbeat(
        self, device_id: str, *, battery: float | None = None, rssi: float | None = None
    ) -> str:
        """Send one heartbeat (not resent); returns its ref."""
        self._check(device_id)
        return self.send(HeartbeatMessage(device_id, self._next_ref("h"), _now_ms(), battery, rssi))

    def telemetry(
        self, device_id: str, metric: str, value: float | tuple[float, ...], unit: str | None = None
    ) -> str:
        """Send one telemetry sample (not resent); returns its ref."""
        self._check(device_id)
        ref = self._next_ref("t")
        return self.send(TelemetryMessage(device_id, ref, _now_ms(), metric, value, unit))

    def status(self, device_id: str, state: str = "online", firmware: str | None = None) -> str:
        """Send one status report (not resent); returns its ref."""
        self._check(device_id)
        return self.send(StatusMessage(device_id, self._next_ref("s"), _now_ms(), state, firmware))

    def send(self, message: DeviceMessage) -> str:
        """Put one message on the line once; returns its ref."""
        self.stats.sent[type(message).__name__] += 1
        self.send_raw(encode_record(message))
        return message.ref

    def send_raw(self, data: bytes) -> None:
        """Put bytes on the line as they are (noise, corrupted frames)."""
        master = self._master
        if master is None:
            self.stats.dropped_bytes += len(data)
            return
        room = MAX_OUTPUT - len(self._out)
        if len(data) > room:
            self.stats.dropped_bytes += len(data) - room
            data = data[:room]
        self._out += data
        self._flush()

    def _flush(self) -> None:
        master = self._master
        if master is None:
            return
        while self._out:
            try:
                written = os.write(master, self._out)
            except BlockingIOError:
                break
            except OSError:
                # The line is gone under us; unplug() will clean up.
                self.stats.dropped_bytes += len(self._out)
                self._out.clear()
                break
            del self._out[:written]
        loop = asyncio.get_running_loop()
        if self._out and not self._writing:
            loop.add_writer(master, self._flush)
            self._writing = True
        elif not self._out and self._writing:
            loop.remove_writer(master)
            self._writing = False

    async def _deliver(self, alarm: SerialAlarm) -> None:
        attempt = 0
        while alarm.pending:
            alarm.wake.clear()
            if alarm.sends:
                self.stats.resends += 1
            alarm.sends += 1
            self.send_raw(alarm.frame)
            delay = self._backoff.delay(attempt, self._rng)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(alarm.wake.wait(), delay)

    async def _heartbeats(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s * self._rng.uniform(0.9, 1.1))
            if self.plugged:
                for device_id in self.device_ids:
                    self.heartbeat(device_id)

    # -- receiving -------------------------------------------------------------------------

    def _on_readable(self) -> None:
        master = self._master
        if master is None:
            return
        try:
            data = os.read(master, 4096)
        except BlockingIOError:
            return
        except OSError:
            return  # EIO: nobody holds the slave; cannot happen while we keep it open
        for item in self._decoder.feed(data):
            if isinstance(item, FrameError):
                self.stats.reply_errors[item.reason.value] += 1
            elif isinstance(item, Reply):
                self._on_reply(item)
            # Device records coming back would mean a loop on the line; ignore them.

    def _on_reply(self, reply: Reply) -> None:
        self.replies.append(reply)
        if reply.reason is None:
            self.stats.acks += 1
        else:
            self.stats.naks[reply.reason.value] += 1
        if reply.device_id is None or reply.ref is None:
            if reply.reason is not None:
                # The gateway could not read some frame: whatever is pending may be it.
                for pending in self._pending.values():
                    pending.wake.set()
            return
        alarm = self._pending.get((reply.device_id, reply.ref))
        if alarm is None:
            return
        if reply.reason is None:
            alarm.status = "stored"
            alarm.acked_at = time.monotonic()
        elif reply.reason in RETRYABLE:
            alarm.naks.append(reply.reason.value)
            return  # resent when its back-off runs out
        else:
            alarm.naks.append(reply.reason.value)
            alarm.status = reply.reason.value
        del self._pending[(reply.device_id, reply.ref)]
        alarm.settled.set()
        alarm.wake.set()

    async def wait_settled(
        self,
        alarms: Iterable[SerialAlarm] | None = None,
        *,
        timeout: float,  # noqa: ASYNC109 (same shape as Fleet.wait_all_acked)
    ) -> bool:
        """Wait until ``alarms`` (default: all raised so far) have a final answer."""
        targets = list(self.alarms if alarms is None else alarms)

        async def settled() -> None:
            for alarm in targets:
                await alarm.settled.wait()

        try:
            await asyncio.wait_for(settled(), timeout)
        except TimeoutError:
            return False
        return True


def _now_ms() -> int:
    return int(time.time() * 1000)
