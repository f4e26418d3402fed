"""The HTTP server of one gateway: uvicorn on a socket the gateway bound itself."""

import asyncio
import contextlib
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

# How long uvicorn may take to close its connections on shutdown (it waits for open
# requests and WebSockets up to timeout_graceful_shutdown, 2 s).
GRACEFUL_S = 2


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def bind(host: str, port: int) -> socket.socket:
    """The listening socket (bound before serving, so the port is known at once)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(128)
    sock.setblocking(False)
    return sock


class HttpServer:
    """Serves ``app`` on ``sock``; ``serve`` is a supervised task, ``stop`` its graceful end.

    Stopping lets uvicorn close its connections itself before anything is cancelled: a
    cancelled uvicorn leaves transports to the garbage collector, which closes their sockets
    without unregistering them from the event loop — and the next socket to get that fd
    number is then deaf.
    """

    def __init__(self, app: FastAPI, sock: socket.socket) -> None:
        self._app = app
        self._sock = sock
        self._server: _Server | None = None
        self._stopping = False

    async def serve(self) -> None:
        """Serve until stopped (a new uvicorn server each time: restartable)."""
        config = uvicorn.Config(
            self._app,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_S,
            ws_ping_interval=20,
            ws_ping_timeout=20,
        )
        self._server = _Server(config)
        try:
            await self._server.serve(sockets=[self._sock])
        except asyncio.CancelledError:
            self._stopping = True
            raise
        finally:
            # The socket outlives a crashed server (the supervisor serves it again), not
            # the gateway: it is closed only once uvicorn let go of it for good.
            if self._stopping:
                self._sock.close()

    async def stop(self) -> None:
        """Ask uvicorn to finish its requests and close its connections."""
        self._stopping = True
        if self._server is not None:
            self._server.should_exit = True


