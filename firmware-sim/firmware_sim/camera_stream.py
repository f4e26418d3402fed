"""A simulated night camera with a real (synthetic) MJPEG stream on loopback.

The fleet's night camera model only flips its state; this one also serves pictures, so the
gateway's relay can be tested end to end. It speaks the device contract (docs/protocol.md,
docs/night-cameras.md):

- ``{prefix}/{device_id}/cmd`` ``{"cmd": "wake", "duration_s": N}``: start the stream server
  on 127.0.0.1 (a fresh port and a fresh secret path) and answer with a status whose state
  is ``awake@<host>:<port>/<path>`` — the short-lived stream reference. The camera goes back
  to standby by itself after ``duration_s`` (defence in depth: the gateway commands it too);
- ``{"cmd": "standby"}``: stop the server (closing open streams) and answer ``standby``.

Frames are one tiny, valid baseline JPEG (8x8 grey) carrying a COM segment with the
camera's ``marker``: tests look for those bytes to prove a frame was relayed, and that no
frame was ever written anywhere. Nothing here writes to disk.

Faults for tests: ``answer_wake=False`` (the camera is offline or does not wake),
``confirm_standby=False`` (it keeps streaming after standby and never says so).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import socket
import time
from types import TracebackType
from typing import Self

import aiomqtt
from aiohttp import web

from devices.contract import topic

_LOGGER = logging.getLogger(__name__)

# The multipart boundary of the MJPEG stream.
BOUNDARY = "trygg-frame"
# Frames per second of the synthetic stream: enough to look alive, cheap on loopback.
FRAME_INTERVAL_S = 0.2
# How long the stream server may take to close its connections on standby.
STOP_TIMEOUT_S = 2.0


def tiny_jpeg(marker: bytes = b"") -> bytes:
    """A valid baseline JPEG: 8x8 pixels of mid grey, with ``marker`` in a COM segment.

    Built by hand, with no image library: quantisation table of ones; Huffman tables with
    one code each (DC category 0, AC end-of-block), so the single block is the bits
    ``0`` (DC difference 0 → grey 128) and ``0`` (EOB), padded with ones: ``0x3F``.
    """
    if len(marker) > 60000:  # a COM segment holds at most 65533 bytes
        raise ValueError("marker too long")
    parts = [b"\xff\xd8"]  # SOI
    if marker:
        parts.append(b"\xff\xfe" + (len(marker) + 2).to_bytes(2, "big") + marker)  # COM
    parts += [
        b"\xff\xdb\x00\x43\x00" + b"\x01" * 64,  # DQT: table 0, all ones
        # SOF0: 8-bit, 8x8, one component (id 1, 1x1 sampling, quant table 0).
        b"\xff\xc0\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00",
        # DHT DC table 0 and AC table 0: one code of length 1 each, for symbol 0x00.
        b"\xff\xc4\x00\x14\x00\x01" + b"\x00" * 15 + b"\x00",
        b"\xff\xc4\x00\x14\x10\x01" + b"\x00" * 15 + b"\x00",
        # SOS: one component, tables 0/0, spectral 0..63, no approximation.
        b"\xff\xda\x00\x08\x01\x01\x00\x00\x3f\x00",
        b"\x3f",  # the entropy-coded block
        b"\xff\xd9",  # EOI
    ]
    return b"".join(parts)


def mjpeg_part(frame: bytes) -> bytes:
    """One part of a ``multipart/x-mixed-replace`` stream."""
    head = (
        f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n"
    ).encode()
    return head + frame + b"\r\n"


class StreamServer:
    """The camera's loopback stream: started on wake, stopped on standby. Serves one secret
    path; every open stream ends when the server stops."""

    def __init__(self, frame: bytes, *, host: str = "127.0.0.1") -> None:
        self.frame = frame
        self.host = host
        self.ref: str | None = None
        self.frames_served = 0
        self._runner: web.AppRunner | None = None
        self._stop = asyncio.Event()

    @property
    def running(self) -> bool:
        """Whether the server is up."""
        return self._runner is not None

    async def start(self) -> str:
        """Start on a free port; the stream reference ``host:port/path``."""
        if self._runner is not None:
            assert self.ref is not None
            return self.ref
        path = secrets.token_hex(8)
        app = web.Application()
        app.router.add_get(f"/{path}", self._stream)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=STOP_TIMEOUT_S)
        await runner.setup()
        sock = socket.socket()
        try:
            sock.bind((self.host, 0))
            port = sock.getsockname()[1]
            # The site takes over the socket; cleanup() closes it.
            await web.SockSite(runner, sock).start()
        except BaseException:
            sock.close()
            await runner.cleanup()
            raise
        self._stop = asyncio.Event()
        self._runner = runner
        self.ref = f"{self.host}:{port}/{path}"
        return self.ref

    async def stop(self) -> None:
        """Stop serving and close every open stream."""
        runner, self._runner = self._runner, None
        self.ref = None
        self._stop.set()
        if runner is not None:
            await runner.cleanup()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={
            "Content-Type": f"multipart/x-mixed-replace; boundary={BOUNDARY}",
            "Cache-Control": "no-store",
        })
        await response.prepare(request)
        stop = self._stop
        with contextlib.suppress(ConnectionResetError):
            while not stop.is_set():
                await response.write(mjpeg_part(self.frame))
                self.frames_served += 1
                # The frame clock; also returns at once when the camera goes to standby.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), FRAME_INTERVAL_S)
        return response


class SimCamera:
    """A night camera on MQTT with a stream server. ``async with SimCamera(...) as cam``."""

    def __init__(
        self,
        device_id: str,
        *,
        host: str,
        port: int,
        prefix: str,
        answer_wake: bool = True,
        confirm_standby: bool = True,
        marker: bytes | None = None,
    ) -> None:
        self.device_id = device_id
        self.prefix = prefix
        self.answer_wake = answer_wake
        self.confirm_standby = confirm_standby
        self.marker = marker or f"trygg-sim-frame-{secrets.token_hex(8)}".encode()
        self.state = "standby"
        self.commands: list[str] = []
        self.server = StreamServer(tiny_jpeg(self.marker))
        self._host = host
        self._port = port
        self._seq = 0
        self._client: aiomqtt.Client | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._auto_standby: asyncio.TimerHandle | None = None
        self._jobs: asyncio.Queue[tuple[str, dict[str, object]]] = asyncio.Queue()

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("SimCamera is already running")
        stack = contextlib.AsyncExitStack()
        await stack.__aenter__()
        try:
            client = aiomqtt.Client(self._host, self._port,
                                    identifier=f"cam-{self.device_id}-{secrets.token_hex(4)}")
            self._client = await stack.enter_async_context(client)
            await client.subscribe(topic(self.prefix, self.device_id, "cmd"), qos=1)
            group = await stack.enter_async_context(asyncio.TaskGroup())
            receiver = group.create_task(self._receive(client), name=f"{self.device_id} cmd")
            worker = group.create_task(self._work(), name=f"{self.device_id} camera")
            # Callbacks run last-in first-out: stop the server, then the tasks, then the group.
            stack.callback(receiver.cancel)
            stack.callback(worker.cancel)
            stack.push_async_callback(self.server.stop)
            await self._status(self.state)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        stack, self._stack = self._stack, None
        if self._auto_standby is not None:
            self._auto_standby.cancel()
        if stack is not None:
            await stack.aclose()
        self._client = None

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            if not isinstance(message.payload, bytes):
                continue
            try:
                body = json.loads(message.payload)
            except ValueError:
                continue
            if isinstance(body, dict) and isinstance(body.get("cmd"), str):
                self._jobs.put_nowait((body["cmd"], body))

    async def _work(self) -> None:
        # Commands are carried out one at a time, in order: wake then standby never race.
        while True:
            cmd, body = await self._jobs.get()
            self.commands.append(cmd)
            if cmd == "wake":
                await self._wake(body)
            elif cmd == "standby":
                await self._standby()

    async def _wake(self, body: dict[str, object]) -> None:
        if not self.answer_wake:
            return
        ref = await self.server.start()
        self.state = "awake"
        await self._status(f"awake@{ref}")
        duration = body.get("duration_s")
        if isinstance(duration, int | float) and not isinstance(duration, bool) and duration > 0:
            if self._auto_standby is not None:
                self._auto_standby.cancel()
            job: tuple[str, dict[str, object]] = ("standby", {"cmd": "standby"})
            self._auto_standby = asyncio.get_running_loop().call_later(
                float(duration), self._jobs.put_nowait, job
            )

    async def _standby(self) -> None:
        if not self.confirm_standby:
            return  # the faulty camera ignores standby: it keeps streaming, says nothing
        if self._auto_standby is not None:
            self._auto_standby.cancel()
            self._auto_standby = None
        await self.server.stop()
        self.state = "standby"
        await self._status("standby")

    async def _status(self, state: str) -> None:
        assert self._client is not None
        self._seq += 1
        body = {"ref": f"{self.device_id}-s{self._seq}", "ts": int(time.time() * 1000),
                "state": state, "firmware": "nc-sim-1.0"}
        await self._client.publish(topic(self.prefix, self.device_id, "status"),
                                   json.dumps(body).encode(), qos=1)
