"""Staff phones that answer alarm SMS, through Kannel's ``fakesmsc`` (``trygg sim sms-phone``).

``fakesmsc`` (Debian's ``kannel-extras``) plays the operator's SMS centre towards Kannel's
bearerbox (an ``smsc = fake`` group): every SMS Kannel sends comes out of it as a line, and
every line written to it in interactive mode goes into Kannel as an SMS from a phone.

- ``FakeSmsc`` runs one ``fakesmsc`` process and parses what it prints (``parse_line``);
- ``SmsPhone`` is one staff member's phone on it: it reads the alarm SMS sent to its number
  and, after a human's pause, answers ``JA <code>`` (or whatever ``answer`` says), or stays
  silent (``answer=None``: the phone is in a drawer).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import unquote_plus, unquote_to_bytes

_LOGGER = logging.getLogger(__name__)

FAKESMSC = Path("/usr/lib/kannel/test/fakesmsc")
# fakesmsc reads stdin with a 256-byte buffer: a longer line would arrive as two messages.
MAX_LINE = 250
_GOT = re.compile(r"Got message \d+: <(.*)>\s*$")
_SENT = re.compile(r"fakesmsc: sent message (\d+)")
# How long fakesmsc may take to pick up a line: it polls stdin once a second when idle.
PICKUP_S = 5.0
# What an alarm SMS asks for (gateway/smscodec.py): "Svara JA K7Q2".
_CODE = re.compile(r"\bJA ([2-9A-Z]{4})\b")


@dataclass(frozen=True, slots=True)
class MtMessage:
    """An SMS Kannel sent towards a phone."""

    sender: str
    receiver: str
    text: str


def parse_line(line: str) -> MtMessage | None:
    """A message from fakesmsc's log line ``Got message N: <from to type data>``; else None."""
    found = _GOT.search(line)
    if found is None:
        return None
    parts = found.group(1).split(" ", 3)
    if len(parts) < 3:
        return None
    sender, receiver, kind = parts[:3]
    data = parts[3] if len(parts) > 3 else ""
    if kind == "text":
        text = data
    elif kind == "data":
        text = unquote_plus(data, errors="replace")
    elif kind in ("ucs-2", "ucs2"):
        text = unquote_to_bytes(data.replace("+", " ")).decode("utf-16-be", errors="replace")
    elif kind == "udh":
        text = unquote_plus(data.partition(" ")[2], errors="replace")
    else:
        return None
    return MtMessage(sender, receiver, text)


def reply_code(text: str) -> str | None:
    """The code an alarm SMS asks to be answered with, as a person reads it."""
    found = _CODE.search(text)
    return None if found is None else found.group(1)


class FakeSmsc:
    """One ``fakesmsc`` process connected to bearerbox's fake SMSC port. Reusable, not
    re-entrant; ``messages`` holds everything Kannel sent through it."""

    def __init__(self, port: int, *, host: str = "127.0.0.1",
                 binary: Path = FAKESMSC) -> None:
        self.host = host
        self.port = port
        self.binary = binary
        self.messages: list[MtMessage] = []
        self._listeners: list[Callable[[MtMessage], None]] = []
        self._changed = asyncio.Condition()
        self._sending = asyncio.Lock()
        self.sent = 0
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Self:
        if self._process is not None:
            raise RuntimeError("FakeSmsc is already running")
        # No messages on the command line: interactive mode, MO messages come from stdin.
        self._process = await asyncio.create_subprocess_exec(
            str(self.binary), "-H", self.host, "-r", str(self.port), "-i", "0",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(), name=f"fakesmsc {self.port} reader")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        process, self._process = self._process, None
        reader, self._reader = self._reader, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGINT)  # fakesmsc closes its connection cleanly
            try:
                async with asyncio.timeout(5):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader

    @property
    def running(self) -> bool:
        """Whether the process is alive (it exits when bearerbox goes away)."""
        return self._process is not None and self._process.returncode is None

    def subscribe(self, listener: Callable[[MtMessage], None]) -> Callable[[], None]:
        """Call ``listener`` with every message from now on; returns the unsubscribe."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener)

    async def _read(self) -> None:
        assert self._process is not None
        assert self._process.stderr is not None
        stream = self._process.stderr
        while raw := await stream.readline():
            line = raw.decode("utf-8", errors="replace")
            message = parse_line(line)
            if message is None:
                _LOGGER.debug("fakesmsc: %s", line.rstrip())
                if (sent := _SENT.search(line)) is not None:
                    self.sent = int(sent.group(1))
                    async with self._changed:
                        self._changed.notify_all()
                continue
            self.messages.append(message)
            for listener in list(self._listeners):
                listener(message)
            async with self._changed:
                self._changed.notify_all()

    async def send(self, sender: str, receiver: str, text: str) -> None:
        """An SMS from the phone ``sender`` to ``receiver`` (the gateway's number).

        One line at a time, each after fakesmsc reported sending the one before: it reads
        stdin through stdio but polls the descriptor, so a second line written at once sits
        in its buffer until more input comes.
        """
        if self._process is None or self._process.stdin is None:
            raise RuntimeError("FakeSmsc is not running")
        line = f"{sender} {receiver} text {' '.join(text.split())}"
        encoded = line.encode()[:MAX_LINE] + b"\n"
        async with self._sending:
            expected = self.sent + 1
            self._process.stdin.write(encoded)
            await self._process.stdin.drain()
            async with asyncio.timeout(PICKUP_S), self._changed:
                while self.sent < expected:
                    await self._changed.wait()

    async def wait_for(self, receiver: str, count: int = 1) -> list[MtMessage]:
        """The first ``count`` messages to ``receiver``, once there are that many (bound the
        wait with ``asyncio.timeout``)."""
        async with self._changed:
            while True:
                found = [m for m in self.messages if m.receiver == receiver]
                if len(found) >= count:
                    return found[:count]
                await self._changed.wait()


class SmsPhone:
    """A staff member's phone that answers alarm SMS after ``delay_s``.

    ``answer`` is a format string with ``{code}`` (None: never answer). ``run`` until
    cancelled; ``answered`` lists the codes it answered.
    """

    def __init__(self, smsc: FakeSmsc, number: str, *, answer: str | None = "JA {code}",
                 delay_s: float = 1.0) -> None:
        self.smsc = smsc
        self.number = number
        self.answer = answer
        self.delay_s = delay_s
        self.received: list[MtMessage] = []
        self.answered: list[str] = []
        self._inbox: asyncio.Queue[MtMessage] = asyncio.Queue()

    def _offer(self, message: MtMessage) -> None:
        if message.receiver == self.number:
            self._inbox.put_nowait(message)

    async def run(self) -> None:
        """Read and answer alarm SMS until cancelled."""
        unsubscribe = self.smsc.subscribe(self._offer)
        try:
            while True:
                message = await self._inbox.get()
                self.received.append(message)
                code = reply_code(message.text)
                if code is None or self.answer is None:
                    continue  # a confirmation, or a phone that never answers
                await asyncio.sleep(self.delay_s)
                await self.smsc.send(self.number, message.sender,
                                     self.answer.format(code=code))
                self.answered.append(code)
                _LOGGER.info("phone %s answered %s", self.number, code)
        finally:
            unsubscribe()


def build_parser() -> argparse.ArgumentParser:
    """``trygg sim sms-phone``."""
    p = argparse.ArgumentParser(
        prog="trygg sim sms-phone",
        description="Staff phones answering alarm SMS through Kannel's fakesmsc.")
    p.add_argument("--host", default="127.0.0.1", help="bearerbox host")
    p.add_argument("--port", type=int, default=10000,
                   help="the port of bearerbox's 'smsc = fake' group")
    p.add_argument("--number", action="append", required=True,
                   help="a staff phone number (E.164); repeat for several phones")
    p.add_argument("--answer", default="JA {code}",
                   help="reply text, {code} is the alarm's code; '' to never answer")
    p.add_argument("--delay", type=float, default=2.0, help="seconds before answering")
    p.add_argument("--duration", type=float, default=0.0, help="seconds to run (0: forever)")
    p.add_argument("--fakesmsc", type=Path, default=FAKESMSC, help="the fakesmsc binary")
    p.add_argument("--log-level", default="INFO")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``trygg sim sms-phone``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.fakesmsc.exists():
        print(f"trygg sim sms-phone: no {args.fakesmsc} (apt-get install kannel-extras)",
              file=sys.stderr)
        return 2
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with FakeSmsc(args.port, host=args.host, binary=args.fakesmsc) as smsc, \
            asyncio.TaskGroup() as group:
        phones = [SmsPhone(smsc, n, answer=args.answer or None, delay_s=args.delay)
                  for n in args.number]
        tasks = [group.create_task(p.run(), name=f"sms phone {p.number}") for p in phones]
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(args.duration or None):
                await stop.wait()
        for task in tasks:
            task.cancel()
    for phone in phones:
        print(f"{phone.number}: received {len(phone.received)}, answered "
              f"{', '.join(phone.answered) or 'none'}")
    return 0
