"""The serial link (gateway/serial.py) over pyserial's loop:// and over a real pty pair."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import tty
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

import pytest
import serial
import serial_asyncio_fast

from alarms.model import AlarmType
from devices.contract import AlarmMessage, DeviceMessage, HeartbeatMessage, TelemetryMessage
from devices.serial import NakReason, encode_ack, encode_nak, encode_record
from firmware_sim import Backoff
from firmware_sim.serial_device import SerialReceiverSim
from gateway.serial import (
    ACK,
    MAX_PENDING_OUT,
    SerialLink,
    StateHandler,
    Verdict,
    nak,
    parse_framing,
)

SIM_BACKOFF = Backoff(initial_s=0.05, cap_s=0.2)


async def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until ``check()`` holds (test-side only: the link itself never polls)."""
    async with asyncio.timeout(timeout):
        while not check():
            await asyncio.sleep(0.01)


class Store:
    """A handler that records what it stored; ``gate`` holds it until the test allows."""

    def __init__(self, *, gated: bool = False, known: frozenset[str] | None = None) -> None:
        self.messages: list[DeviceMessage] = []
        self.stored: set[tuple[str, str]] = set()
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()
        self.known = known
        if not gated:
            self.gate.set()

    async def __call__(self, message: DeviceMessage) -> Verdict:
        self.messages.append(message)
        self.entered.set()
        if self.known is not None and message.device_id not in self.known:
            return nak(NakReason.UNKNOWN_DEVICE)
        await self.gate.wait()
        self.stored.add((message.device_id, message.ref))
        return ACK


def make_link(
    handler: Callable[[DeviceMessage], Awaitable[Verdict]],
    *,
    url: str,
    on_state: StateHandler | None = None,
    max_concurrent: int = 16,
    baudrate: int = 9600,
) -> SerialLink:
    """A link with quick reconnects, so a replugged port is found within a few 100 ms."""
    return SerialLink(
        handler,
        url=url,
        baudrate=baudrate,
        on_state=on_state,
        max_concurrent=max_concurrent,
        backoff_base_s=0.02,
        backoff_cap_s=0.1,
    )


def alarm(device: str = "dev-1", ref: str = "r1") -> AlarmMessage:
    """A manual alarm as a receiver would send it."""
    return AlarmMessage(device, ref, 1712345678901, AlarmType.MANUAL, None)


def test_framing() -> None:
    assert parse_framing("8n1") == (8, "N", 1.0)
    assert parse_framing("7E2") == (7, "E", 2.0)
    with pytest.raises(ValueError):
        parse_framing("9X1")


# -- loop:// (everything written comes back, including our own ACKs) -----------------------


async def test_loop_ack_only_after_the_handler_returns() -> None:
    store = Store(gated=True)
    states: list[bool] = []
    async with make_link(store, url="loop://", on_state=states.append) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        assert link.send(encode_record(alarm()))
        await asyncio.wait_for(store.entered.wait(), 5)
        # The resend while the first copy is in the handler is not handled twice.
        assert link.send(encode_record(alarm()))
        await eventually(lambda: link.stats.duplicates == 1)
        assert (link.stats.acks, link.stats.echoes) == (0, 0)
        store.gate.set()
        await eventually(lambda: link.stats.echoes == 1)  # our ACK, read back
        assert link.stats.acks == 1
        assert store.messages == [alarm()]
    assert states == [True, False]


async def test_loop_checksum_error_is_naked_without_the_handler() -> None:
    store = Store()
    async with make_link(store, url="loop://") as link:
        await asyncio.wait_for(link.wait_up(), 5)
        frame = encode_record(alarm())
        link.send(frame.replace(b"manual", b"manuak"))
        await eventually(lambda: link.stats.echoes == 1)  # the NAK, read back
        assert link.stats.frame_errors == {"bad_checksum": 1}
        assert link.stats.naks == {"checksum": 1}
        assert store.messages == []


async def test_loop_resyncs_after_line_noise() -> None:
    store = Store()
    async with make_link(store, url="loop://") as link:
        await asyncio.wait_for(link.wait_up(), 5)
        frame = encode_record(alarm())
        link.send(b"\x00\xff\xfe~~" + frame[:15] + b"\x99" + frame + b"\r\n#" + frame[:7])
        link.send(frame[7:].replace(b"|r1|", b"|r2|").replace(frame[-8:-3], b""))
        link.send(encode_record(alarm(ref="r3")))
        await eventually(lambda: link.stats.handled == 2)
        assert [m.ref for m in store.messages] == ["r1", "r3"]
        assert link.stats.frame_errors["noise"] == 2
        assert link.stats.frame_errors["truncated"] == 1
        assert link.stats.frame_errors["bad_frame"] == 1  # r2 lost its checksum


async def test_loop_busy_when_every_slot_is_taken() -> None:
    store = Store(gated=True)
    async with make_link(store, url="loop://", max_concurrent=1) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        link.send(encode_record(alarm("dev-1")))
        await asyncio.wait_for(store.entered.wait(), 5)
        link.send(encode_record(alarm("dev-2")))
        await eventually(lambda: link.stats.naks["busy"] == 1)
        store.gate.set()
        await eventually(lambda: link.stats.acks == 1)
        assert [m.device_id for m in store.messages] == ["dev-1"]


async def test_loop_handler_failure_is_naked_not_stored(caplog: pytest.LogCaptureFixture) -> None:
    async def broken(message: DeviceMessage) -> Verdict:
        raise RuntimeError("journal on fire")

    async with make_link(broken, url="loop://") as link:
        await asyncio.wait_for(link.wait_up(), 5)
        link.send(encode_record(alarm()))
        await eventually(lambda: link.stats.naks["not_stored"] == 1)
        assert link.stats.handler_errors == 1
    assert any("journal on fire" in str(r.exc_info) for r in caplog.records)
    caplog.clear()  # the logged exception was the point of this test


async def test_missing_port_is_reported_down_at_start(tmp_path: Path) -> None:
    states: list[bool] = []
    async with make_link(Store(), url=str(tmp_path / "nothing"), on_state=states.append) as link:
        await eventually(lambda: bool(states))
        assert states == [False]
        assert not link.up


# -- a real pty pair, with the simulated receiver on the master end ------------------------


async def _wait_state(queue: asyncio.Queue[bool], expected: bool) -> None:
    async with asyncio.timeout(5):
        while await queue.get() is not expected:
            pass


def _sim(tmp_path: Path, devices: list[str]) -> SerialReceiverSim:
    return SerialReceiverSim(devices, link_path=tmp_path / "ttyTRYGG", backoff=SIM_BACKOFF, seed=1)


def _link(
    store: Callable[[DeviceMessage], Awaitable[Verdict]],
    sim: SerialReceiverSim,
    on_state: StateHandler | None = None,
) -> SerialLink:
    return make_link(store, url=sim.path, baudrate=115200, on_state=on_state)


async def test_pty_round_trip_ack_after_store(tmp_path: Path) -> None:
    store = Store(gated=True)
    async with _sim(tmp_path, ["rx-1"]) as sim, _link(store, sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        sent = sim.raise_alarm("rx-1", "fall", battery=0.5)
        await asyncio.wait_for(store.entered.wait(), 5)
        # The receiver resends while the gateway is still storing: no ACK goes out yet.
        await eventually(lambda: link.stats.duplicates >= 1)
        assert sent.pending
        assert sim.stats.acks == 0
        store.gate.set()
        assert await sim.wait_settled([sent], timeout=5)
        assert sent.status == "stored"
        assert store.stored == {("rx-1", sent.ref)}
        assert store.messages[0] == AlarmMessage(
            "rx-1", sent.ref, store.messages[0].ts_ms, AlarmType.FALL, 0.5
        )


async def test_pty_many_devices_on_one_line(tmp_path: Path) -> None:
    devices = [f"rx-{n:02d}" for n in range(20)]
    store = Store(known=frozenset(devices[:-1]))
    async with _sim(tmp_path, devices) as sim, _link(store, sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        alarms = [sim.raise_alarm(d, AlarmType.MANUAL) for d in devices for _ in range(3)]
        for device in devices:
            sim.heartbeat(device, battery=0.9, rssi=-60)
        sim.telemetry(devices[0], "accel", (0.0, 0.1, -1.0), "g")
        assert await sim.wait_settled(alarms, timeout=10)
        assert {a.status for a in alarms if a.device_id != devices[-1]} == {"stored"}
        # The unknown device is refused for good, not resent for ever.
        assert {a.status for a in alarms if a.device_id == devices[-1]} == {"unknown_device"}
        # Alarms of the 19 known devices, their heartbeats and the telemetry sample.
        await eventually(lambda: len(store.stored) == 3 * 19 + 19 + 1)
        assert sum(isinstance(m, HeartbeatMessage) for m in store.messages) == 20
        assert any(
            isinstance(m, TelemetryMessage) and m.value == (0.0, 0.1, -1.0) for m in store.messages
        )


async def test_pty_checksum_error_and_noise(tmp_path: Path) -> None:
    store = Store()
    async with _sim(tmp_path, ["rx-1"]) as sim, _link(store, sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        broken = encode_record(alarm("rx-1", "bad-1")).replace(b"manual", b"manuaI")
        sim.send_raw(b"\xff\x00line noise" + broken)
        await eventually(lambda: sim.stats.naks["checksum"] == 1)
        good = sim.raise_alarm("rx-1")
        assert await sim.wait_settled([good], timeout=5)
        assert good.status == "stored"
        assert link.stats.frame_errors["noise"] == 1
        assert [m.ref for m in store.messages] == [good.ref]


async def test_pty_non_ascii_byte_is_naked_with_the_readable_address(tmp_path: Path) -> None:
    """Issue 18.5: a non-ASCII byte in the payload NAKs 'checksum' to the device and ref."""
    store = Store()
    async with _sim(tmp_path, ["rx-1"]) as sim, _link(store, sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        broken = encode_record(alarm("rx-1", "bad-2")).replace(b"manual", b"m\xe4nual")
        sim.send_raw(broken)
        await eventually(lambda: sim.stats.naks["checksum"] == 1)
        [nak] = [r for r in sim.replies if r.reason is not None]
        assert (nak.device_id, nak.ref) == ("rx-1", "bad-2")
        assert store.messages == []


async def test_pty_port_removed_and_restored(tmp_path: Path) -> None:
    store = Store()
    states: asyncio.Queue[bool] = asyncio.Queue()
    async with (
        _sim(tmp_path, ["rx-1"]) as sim,
        _link(store, sim, on_state=states.put_nowait) as link,
    ):
        await _wait_state(states, True)
        first = sim.raise_alarm("rx-1")
        assert await sim.wait_settled([first], timeout=5)

        sim.unplug()  # USB cable pulled: the reads fail and the path is gone
        await _wait_state(states, False)
        assert not link.up
        meanwhile = sim.raise_alarm("rx-1", "smoke")  # the receiver keeps it and resends

        sim.plug()
        await _wait_state(states, True)
        assert await sim.wait_settled([meanwhile], timeout=5)
        assert meanwhile.status == "stored"
        assert link.stats.connects == 2
        assert {ref for _, ref in store.stored} == {first.ref, meanwhile.ref}


async def test_loop_handler_failures_are_logged_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 17.7: a per-record log line is rate-limited, with the count it suppressed."""

    async def broken(message: DeviceMessage) -> Verdict:
        raise RuntimeError("journal on fire")

    async with make_link(broken, url="loop://") as link:
        await asyncio.wait_for(link.wait_up(), 5)
        for n in range(1, 51):
            link.send(encode_record(alarm(ref=f"r{n}")))
            await eventually(partial(_naked_not_stored, link, n))
    logged = [r for r in caplog.records if r.name == "gateway.serial" and r.exc_info]
    assert len(logged) == 1
    caplog.clear()  # the logged exception was the point of this test


def _naked_not_stored(link: SerialLink, count: int) -> bool:
    return link.stats.naks["not_stored"] == count


# -- a receiver that stops reading: the answers back up (issue 17.7) ------------------------


def _broken_frame(ref: str = "bad") -> bytes:
    """A frame the gateway cannot read (one changed byte): it answers a NAK."""
    return encode_record(alarm("rx-1", ref)).replace(b"manual", b"manuaI")


async def _idle_cpu_s(window_s: float = 0.5) -> float:
    """CPU time this process spends while the test only sleeps: ~0 unless a loop spins."""
    started = time.process_time()
    await asyncio.sleep(window_s)
    return time.process_time() - started


async def test_pty_slow_receiver_backlog_is_bounded_and_drains_to_an_idle_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A receiver that stops reading while its line sends junk: the NAKs fill the tty, then
    wait in the link up to ``MAX_PENDING_OUT`` and are dropped past it (one warning line).
    When it reads again everything waiting arrives, an alarm raised meanwhile is stored and
    ACKed, and the idle link costs no CPU: no writer callback is left behind ([3])."""
    store = Store()
    async with _sim(tmp_path, ["rx-1"]) as sim, _link(store, sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        sim.stop_reading()
        for n in range(3000):
            sim.send_raw(_broken_frame())
            if n % 25 == 0:
                await asyncio.sleep(0.001)  # the link reads and answers as the junk arrives
            assert link.pending_out <= MAX_PENDING_OUT
            if link.stats.replies_dropped > 100:
                break
        await eventually(lambda: link.stats.replies_dropped > 100)
        assert link.up
        meanwhile = sim.raise_alarm("rx-1")  # its ACK may be dropped: the receiver resends
        await eventually(lambda: ("rx-1", meanwhile.ref) in store.stored)
        sim.start_reading()
        assert await sim.wait_settled([meanwhile], timeout=10)
        assert meanwhile.status == "stored"
        await eventually(lambda: link.pending_out == 0)
        await eventually(lambda: sim.stats.naks["checksum"] == link.stats.naks["checksum"])
        assert link.stats.naks["checksum"] > 100
        assert await _idle_cpu_s() < 0.1
    warnings = [r for r in caplog.records if "dropping answers" in r.getMessage()]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


async def test_pty_full_tty_never_blocks_the_event_loop(tmp_path: Path) -> None:
    """A write while the tty's output queue is full is queued at once. (pyserial's
    ``Serial.write`` with a zero write timeout retries EAGAIN in a busy loop: the library's
    direct write would hang the event loop here until someone read the line.)"""
    async with _sim(tmp_path, ["rx-1"]) as sim, _link(Store(), sim) as link:
        await asyncio.wait_for(link.wait_up(), 5)
        sim.stop_reading()
        # Fill the tty's output queue through a descriptor of our own on the same line.
        filler = os.open(sim.path, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
        try:
            # Until it takes nothing more, even after a pause: the kernel moves queued bytes
            # on to the master's side a little later, which frees room once or twice.
            taken = 1
            while taken:
                taken = 0
                with contextlib.suppress(BlockingIOError):
                    while True:
                        taken += os.write(filler, b"." * 256)
                await asyncio.sleep(0.05)
            ack = encode_ack("rx-1", "r1")
            assert link.send(ack)
            assert link.pending_out == len(ack)
            sim.start_reading()
            await eventually(lambda: sim.stats.acks == 1)
            assert link.pending_out == 0
        finally:
            os.close(filler)


async def test_pty_library_transport_spins_after_a_backlog() -> None:
    """Why the link drives the descriptor itself ([3] in gateway/serial.py): the same
    backlog through ``serial_asyncio_fast.SerialTransport`` leaves its writer registered, and
    every loop iteration then fails an assert in ``_write_ready`` and logs a traceback.
    If this starts failing after an upgrade, the library is fixed."""
    master, slave = os.openpty()
    tty.setraw(slave)
    os.set_blocking(master, False)
    port = serial.serial_for_url(os.ttyname(slave), baudrate=115200)
    tracebacks: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            tracebacks.append(record)

    loop = asyncio.get_running_loop()
    asyncio_logger = logging.getLogger("asyncio")
    collect = Collect(logging.ERROR)
    asyncio_logger.addHandler(collect)
    asyncio_logger.propagate = False  # thousands of them: not for caplog
    try:
        transport, _ = await serial_asyncio_fast.connection_for_serial(
            loop, asyncio.Protocol, port)
        await asyncio.sleep(0.01)
        # One write larger than the tty takes: the rest waits in the transport's buffer.
        transport.write(encode_nak("rx-1", "r1", NakReason.BAD_CHECKSUM) * 4000)
        assert transport.get_write_buffer_size() > 0
        received = 0

        def receive() -> None:
            nonlocal received
            with contextlib.suppress(BlockingIOError):
                received += len(os.read(master, 65536))

        loop.add_reader(master, receive)  # the receiver reads again, and keeps reading
        await eventually(lambda: transport.get_write_buffer_size() == 0)
        await eventually(lambda: received == 4000 * len(encode_nak("rx-1", "r1",
                                                                   NakReason.BAD_CHECKSUM)))
        assert await _idle_cpu_s(0.3) > 0.1
        assert len(tracebacks) > 100
        assert "_write_ready" in tracebacks[0].getMessage()
        transport.abort()
        await asyncio.sleep(0.05)
    finally:
        loop.remove_reader(master)
        asyncio_logger.removeHandler(collect)
        asyncio_logger.propagate = True
        os.close(master)
        os.close(slave)


@pytest.fixture(autouse=True)
def _quiet_serial_asyncio(caplog: pytest.LogCaptureFixture) -> None:
    """serial_asyncio_fast logs its teardown of a vanished port at debug; keep output short."""
    caplog.set_level(logging.INFO, logger="serial_asyncio_fast")
