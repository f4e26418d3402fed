"""A simulated SIA DC-09 alarm transmitter, and ``trygg sim dc09`` (docs/dc09.md).

It behaves as premises equipment does: one event at a time, each with the next sequence
number (0001-9999, wrapping); it waits for the receiver's answer and resends the same
event (same sequence number, fresh timestamp and padding when encrypted) with capped,
jittered back-off after a NAK or no answer; a NAK's timestamp corrects its clock; a DUH
ends the attempt (resending cannot help). Between events it sends null messages (link
tests) every ``null_interval_s``, which the gateway counts as heartbeats::

    async with Dc09Transmitter("127.0.0.1", port, account="1234", key=KEY) as tx:
        answer = await tx.alarm("MA")      # an ACK only after the gateway stored it
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import random
import sys
import time
from dataclasses import asdict, dataclass
from types import TracebackType
from typing import Self

from devices.dc09 import Answer, Dc09Kind, Reply, encode_event, parse_answer

from .connection import Backoff

_LOGGER = logging.getLogger(__name__)

DEFAULT_BACKOFF = Backoff(initial_s=0.5, cap_s=5.0)


@dataclass(slots=True)
class TransmitterStats:
    """What the transmitter did; ``as_dict`` for the CLI's JSON summary."""

    events: int = 0
    frames: int = 0
    resends: int = 0
    acks: int = 0
    naks: int = 0
    duhs: int = 0
    timeouts: int = 0
    nulls: int = 0
    failed: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a dict."""
        return asdict(self)


class Dc09Transmitter:
    """One DC-09 account talking to one receiver over TCP or UDP. Not re-entrant."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        account: str,
        key: str | None = None,
        transport: str = "tcp",
        receiver: str | None = "R1",
        line: str = "L1",
        null_interval_s: float | None = None,
        answer_timeout_s: float = 5.0,
        max_attempts: int = 8,
        backoff: Backoff = DEFAULT_BACKOFF,
        clock_offset_s: float = 0.0,
        seed: int | None = None,
    ) -> None:
        if transport not in ("tcp", "udp"):
            raise ValueError("transport must be tcp or udp")
        self.host, self.port = host, port
        self.account = account
        self.key = key
        self.transport = transport
        self.receiver, self.line = receiver, line
        self.null_interval_s = null_interval_s
        self.answer_timeout_s = answer_timeout_s
        self.max_attempts = max_attempts
        self.backoff = backoff
        # Seconds this transmitter's clock is off; a NAK's timestamp corrects it.
        self.clock_offset_s = clock_offset_s
        self.stats = TransmitterStats()
        self._rng = random.Random(seed)
        self._sequence = 0
        self._lock = asyncio.Lock()
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._udp: asyncio.DatagramTransport | None = None
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(64)
        self._nulls: asyncio.Task[None] | None = None
        self._entered = False

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("Dc09Transmitter is not re-entrant")
        self._entered = True
        if self.null_interval_s:
            self._nulls = asyncio.create_task(self._null_loop(), name=f"dc09 nulls {self.account}")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._nulls is not None:
            self._nulls.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._nulls
            self._nulls = None
        await self._disconnect()
        self._entered = False

    # -- events ----------------------------------------------------------------------------

    async def alarm(self, code: str = "MA", zone: str = "001", area: str = "1") -> Answer | None:
        """A SIA DC-03 event (``MA`` medical alarm by default)."""
        return await self.send(Dc09Kind.SIA, f"Nri{area}/{code}{zone}")

    async def contact_id(self, event: int = 100, qualifier: int = 1, zone: str = "001",
                         partition: str = "00") -> Answer | None:
        """A Contact ID event (``100`` medical by default)."""
        return await self.send(Dc09Kind.CONTACT_ID, f"{qualifier}{event:03d} {partition} {zone}")

    async def null(self) -> Answer | None:
        """A null message (link test)."""
        self.stats.nulls += 1
        return await self.send(Dc09Kind.NULL)

    async def send(self, kind: Dc09Kind, data: str = "") -> Answer | None:
        """Send one event until ACK or DUH (returned) or ``max_attempts`` (None)."""
        async with self._lock:
            self._sequence = self._sequence % 9999 + 1
            self.stats.events += 1
            for attempt in range(self.max_attempts):
                if attempt:
                    self.stats.resends += 1
                    await asyncio.sleep(self.backoff.delay(attempt - 1, self._rng))
                answer = await self._exchange(kind, data)
                if answer is None:
                    self.stats.timeouts += 1
                    continue
                if answer.reply is Reply.ACK:
                    self.stats.acks += 1
                    return answer
                if answer.reply is Reply.DUH:
                    self.stats.duhs += 1
                    return answer
                self.stats.naks += 1
                if answer.timestamp is not None:
                    self.clock_offset_s = answer.timestamp - time.time()
            self.stats.failed += 1
            return None

    async def _exchange(self, kind: Dc09Kind, data: str) -> Answer | None:
        # A real transmitter always stamps encrypted frames and, here, clear ones too.
        frame = encode_event(
            account=self.account, sequence=self._sequence, kind=kind, data=data, key=self.key,
            now=time.time() + self.clock_offset_s, receiver=self.receiver, line=self.line,
        )
        self.stats.frames += 1
        try:
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation
            # that races with the answer, and the null loop would then never stop.
            async with asyncio.timeout(self.answer_timeout_s):
                return await self._roundtrip(frame)
        except (TimeoutError, ConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            _LOGGER.debug("DC-09 %s: no answer (%s)", self.account, exc)
            await self._disconnect()
            return None

    async def _roundtrip(self, frame: bytes) -> Answer | None:
        if self.transport == "udp":
            transport = await self._udp_transport()
            while not self._inbox.empty():  # late answers to an earlier attempt
                self._inbox.get_nowait()
            transport.sendto(frame)
            while True:
                answer = parse_answer(await self._inbox.get(), self.key)
                if answer is not None and answer.sequence in (f"{self._sequence:04d}", "0000"):
                    return answer
        reader, writer = await self._stream()
        writer.write(frame)
        await writer.drain()
        while True:
            raw = await reader.readuntil(b"\r")
            answer = parse_answer(raw, self.key)
            if answer is not None and answer.sequence in (f"{self._sequence:04d}", "0000"):
                return answer

    # -- links -----------------------------------------------------------------------------

    async def _stream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None or self._writer.is_closing():
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def _udp_transport(self) -> asyncio.DatagramTransport:
        if self._udp is None or self._udp.is_closing():
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _Inbox(self._inbox), remote_addr=(self.host, self.port)
            )
            self._udp = transport
        return self._udp

    async def _disconnect(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
        if self._udp is not None:
            self._udp.close()
            self._udp = None

    async def _null_loop(self) -> None:
        assert self.null_interval_s
        while True:
            await asyncio.sleep(self.null_interval_s)
            await self.null()


class _Inbox(asyncio.DatagramProtocol):
    def __init__(self, inbox: asyncio.Queue[bytes]) -> None:
        self._inbox = inbox

    def datagram_received(self, data: bytes, addr: object) -> None:
        with contextlib.suppress(asyncio.QueueFull):  # a flood of stale answers
            self._inbox.put_nowait(data)


# -- trygg sim dc09 ---------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``trygg sim dc09`` argument parser."""
    p = argparse.ArgumentParser(prog="trygg sim dc09",
                                description="A simulated SIA DC-09 alarm transmitter.")
    p.add_argument("--host", default="127.0.0.1", help="receiver host")
    p.add_argument("--port", type=int, default=9000, help="receiver port")
    p.add_argument("--transport", choices=("tcp", "udp"), default="tcp")
    p.add_argument("--account", required=True, help="account id (3-16 hex digits)")
    p.add_argument("--key", help="AES key as programmed (16, 24 or 32 hex characters)")
    p.add_argument("--alarms", type=int, default=1, help="alarms to send")
    p.add_argument("--code", default="MA", help="SIA event code of the alarms (MA, FA, ...)")
    p.add_argument("--contact-id", type=int,
                   help="send Contact ID events with this event code instead (e.g. 101)")
    p.add_argument("--zone", default="001")
    p.add_argument("--interval", type=float, default=1.0, help="seconds between alarms")
    p.add_argument("--null-interval", type=float, default=0.0,
                   help="null messages (link tests) every N s (0: none)")
    p.add_argument("--duration", type=float, default=0.0,
                   help="keep sending null messages this long after the alarms (s)")
    p.add_argument("--log-level", default="WARNING")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trygg sim dc09``; prints a JSON summary, returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    answers: list[str] = []
    async with Dc09Transmitter(
        args.host, args.port, account=args.account, key=args.key, transport=args.transport,
        null_interval_s=args.null_interval or None,
    ) as tx:
        for n in range(args.alarms):
            if n:
                await asyncio.sleep(args.interval)
            if args.contact_id is not None:
                answer = await tx.contact_id(args.contact_id, zone=args.zone)
            else:
                answer = await tx.alarm(args.code, zone=args.zone)
            answers.append(answer.reply.value if answer is not None else "none")
        if args.duration > 0:
            await asyncio.sleep(args.duration)
        stats = tx.stats.as_dict()
    print(json.dumps({"account": args.account, "answers": answers, "stats": stats},
                     separators=(",", ":")))
    return 0 if all(a == "ACK" for a in answers) else 1
