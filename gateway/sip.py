"""The SCAIP receiver: a thin asyncio SIP listener on UDP and TCP (docs/scaip.md).

Protocol work lives in the sans-I/O codecs ``devices/sip.py`` and ``devices/scaip.py``;
this module only moves bytes, owns the tasks and calls the injected handler.

Flow for one SIP MESSAGE carrying an ``<mrq>``:

1. [1] Answer the SIP transaction with 200 OK at once (the default), which only says "the
   SIP layer has it" and stops UDP retransmissions while the handler writes to disk.
2. Parse the ``<mrq>``; check that the SIP From user is the ``<cid>``. A refusal is answered
   with its ``snu`` and the handler is not called.
3. Call ``handle(request, sip) -> snu`` under a bounded number of concurrent calls.
4. Send the ``<mrs>`` back to the sender in a SIP MESSAGE of its own (retransmitted on UDP
   until answered, as RFC 3261 section 17.1.2 asks), or, for controllers configured so,
   carry it in the body of the 200 OK instead (then step 1 waits for step 3).

Every task lives in one TaskGroup owned by the listener, is named, and is cancelled and
awaited when the ``async with`` block exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from devices.scaip import (
    CONTENT_TYPE,
    ScaipError,
    ScaipRequest,
    Snu,
    check_sender,
    encode_mrs,
    parse_mrq,
)
from devices.sip import (
    REASONS,
    SipError,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_request,
    build_response,
    header_uri,
    new_branch,
    new_tag,
    parse_message,
)

_LOGGER = logging.getLogger(__name__)

Handler: TypeAlias = Callable[[ScaipRequest, SipRequest], Awaitable[int]]
MrsInResponse: TypeAlias = Callable[[str], bool] | Collection[str]

# RFC 3261 timers for our own non-INVITE client transaction (the <mrs> MESSAGE): resend
# after T1, doubling up to T2, give up after 64*T1 (Timer F). Not tunable on purpose: these
# are what every SIP peer expects.
T1 = 0.5
T2 = 4.0
TIMER_F = 64 * T1

# Concurrent handler calls. The handler does a durable write (one journal append); 64 in
# flight is far above a municipality's alarm rate (a few per minute) yet bounds memory and
# database connections under a flood. When all slots are taken the policy is to answer
# snu 6 (busy) at once, never to queue: a SCAIP controller retries a busy answer, while a
# queue would hide overload until every controller times out together.
DEFAULT_MAX_CONCURRENT = 64

# Simultaneous TCP connections; each holds at most MAX_SIP_MESSAGE of buffer.
DEFAULT_MAX_CONNECTIONS = 256

# Finished server transactions remembered so a retransmitted MESSAGE gets the same answer
# without running the handler again. Bounded LRU: a retransmission arrives within Timer F
# (32 s), and at this size that covers more than 100 messages a second.
_TRANSACTION_MEMORY = 4096

_ALLOW = "MESSAGE, OPTIONS"


@dataclass(slots=True)
class ListenerStats:
    """Counters for /metrics and tests. ``rejects`` is keyed by reason."""

    received: int = 0
    handled: int = 0
    retransmissions: int = 0
    handler_errors: int = 0
    mrs_sent: int = 0
    mrs_acked: int = 0
    mrs_failed: int = 0
    rejects: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Link:
    """Where a message came from and how to answer it."""

    transport: str  # "UDP" or "TCP"
    peer: tuple[str, int]
    local: tuple[str, int]
    send: Callable[[bytes], None]


_TxKey: TypeAlias = tuple[str, str, int, str]


class ScaipListener:
    """Receive SCAIP over SIP on UDP and TCP and hand each ``<mrq>`` to ``handler``.

    Use as ``async with ScaipListener(handle, port=0) as listener:``; ``udp_port`` and
    ``tcp_port`` then give the bound ports (different when ``port=0``). Reusable but not
    re-entrant.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        host: str = "127.0.0.1",
        port: int = 5060,
        udp: bool = True,
        tcp: bool = True,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        mrs_in_response: MrsInResponse = frozenset(),
        user: str = "trygg",
        tls: ssl.SSLContext | None = None,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._handler = handler
        self._host = host
        self._port = port
        self._udp = udp
        self._tcp = tcp
        self._max_connections = max_connections
        self._mrs_in_response = mrs_in_response
        self._user = user
        # With a server context the stream listener speaks SIP over TLS (RFC 3261 §26.2):
        # the same framing and <mrs> path, inside an encrypted, authenticated connection.
        self._tls = tls
        self._slots = asyncio.Semaphore(max_concurrent)
        self.stats = ListenerStats()
        self._runner: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._transactions: OrderedDict[_TxKey, bytes | None] = OrderedDict()
        self._pending: dict[str, asyncio.Future[SipResponse]] = {}
        self._udp_port: int | None = None
        self._tcp_port: int | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def udp_port(self) -> int | None:
        """The bound UDP port, or None when UDP is off or not running."""
        return self._udp_port

    @property
    def tcp_port(self) -> int | None:
        """The bound TCP port, or None when TCP is off or not running."""
        return self._tcp_port

    async def __aenter__(self) -> ScaipListener:
        if self._runner is not None:
            raise RuntimeError("ScaipListener is already running; it is not re-entrant")
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = loop.create_future()
        self._runner = asyncio.create_task(self._run(ready), name="scaip listener")
        await ready
        try:
            if self._udp:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self._host, self._port)
                )
                self._udp_transport = transport
                self._udp_port = transport.get_extra_info("sockname")[1]
            if self._tcp:
                self._server = await asyncio.start_server(
                    self._on_connection, self._host, self._port, ssl=self._tls
                )
                self._tcp_port = self._server.sockets[0].getsockname()[1]
        except BaseException:
            await self._stop()
            raise
        _LOGGER.info(
            "SCAIP listening on %s udp=%s tcp=%s", self._host, self._udp_port, self._tcp_port
        )
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._stop()

    async def wait(self) -> None:
        """Until the listener's loops end (on close, or if they die)."""
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
        self._udp_port = self._tcp_port = None
        self._tg = None
        self._pending.clear()
        self._transactions.clear()

    async def _run(self, ready: asyncio.Future[None]) -> None:
        # The TaskGroup lives in this task so that cancelling it (in _stop) cancels and
        # awaits every per-message and per-connection task.
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            ready.set_result(None)
            await asyncio.get_running_loop().create_future()  # until cancelled

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None:
            coro.close()
            return
        self._tg.create_task(self._guard(coro, name), name=name)

    async def _guard(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # One bad message must never take the TaskGroup (and so the listener) down.
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:
            _LOGGER.exception("SCAIP task %s failed", name)

    # -- transports ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._udp_transport
        if transport is None:
            return
        local = transport.get_extra_info("sockname")
        link = _Link("UDP", (addr[0], addr[1]), (local[0], local[1]), _udp_sender(transport, addr))
        self._dispatch(parse_message(data), link)

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if self._tg is None or self._connections >= self._max_connections:
            self.stats.rejects["too_many_connections"] += 1
            writer.close()
            return
        self._connections += 1
        self._spawn(self._serve(reader, writer), f"scaip tcp {peer[0]}:{peer[1]}")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        link = _Link("TCP", (peer[0], peer[1]), (local[0], local[1]), _tcp_sender(writer))
        framer = SipStreamReader()
        try:
            while data := await reader.read(65536):
                for item in framer.feed(data):
                    self._dispatch(item, link)
        except (ConnectionError, OSError) as exc:
            _LOGGER.debug("SCAIP TCP %s closed: %s", peer, exc)
        finally:
            self._connections -= 1
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    # -- SIP -------------------------------------------------------------------------------

    def _dispatch(self, message: SipMessage | SipError, link: _Link) -> None:
        self.stats.received += 1
        if isinstance(message, SipError):
            self.stats.rejects[f"sip_{message.reason}"] += 1
            _LOGGER.info("SIP from %s refused: %s", link.peer, message.detail)
            if message.is_request and message.header("Via") is not None:
                reason = f"{REASONS.get(message.status, 'Bad Request')} ({message.detail})"
                link.send(build_response(message.status, request=message, reason=reason))
            return
        if isinstance(message, SipResponse):
            future = self._pending.get(message.branch or "")
            if future is not None and not future.done() and message.status >= 200:
                future.set_result(message)
            return
        self._on_request(message, link)

    def _on_request(self, request: SipRequest, link: _Link) -> None:
        if request.method == "ACK":
            return
        key: _TxKey = (request.branch or "", request.call_id, request.cseq[0], request.method)
        if key in self._transactions:
            self.stats.retransmissions += 1
            answer = self._transactions[key]
            if answer is not None:
                link.send(answer)
            return
        if request.method == "OPTIONS":
            self._answer(
                key,
                link,
                build_response(
                    200, request=request, to_tag=new_tag(), extra_headers=[("Allow", _ALLOW)]
                ),
            )
            return
        if request.method != "MESSAGE":
            self.stats.rejects["method_not_allowed"] += 1
            self._answer(
                key,
                link,
                build_response(
                    405, request=request, to_tag=new_tag(), extra_headers=[("Allow", _ALLOW)]
                ),
            )
            return
        if request.content_type != CONTENT_TYPE:
            self.stats.rejects["unsupported_media_type"] += 1
            self._answer(
                key,
                link,
                build_response(
                    415, request=request, to_tag=new_tag(), extra_headers=[("Accept", CONTENT_TYPE)]
                ),
            )
            return
        self._remember(key, None)
        self._spawn(
            self._on_message(request, link, key), f"scaip {link.transport} {request.call_id[:40]}"
        )

    def _remember(self, key: _TxKey, answer: bytes | None) -> None:
        self._transactions[key] = answer
        self._transactions.move_to_end(key)
        while len(self._transactions) > _TRANSACTION_MEMORY:
            self._transactions.popitem(last=False)

    def _answer(self, key: _TxKey, link: _Link, data: bytes) -> None:
        self._remember(key, data)
        link.send(data)

    def _wants_mrs_in_response(self, user: str | None) -> bool:
        if user is None:
            return False
        if callable(self._mrs_in_response):
            return bool(self._mrs_in_response(user))
        return user in self._mrs_in_response

    # -- SCAIP -----------------------------------------------------------------------------

    async def _on_message(self, request: SipRequest, link: _Link, key: _TxKey) -> None:
        to_tag = new_tag()
        in_response = self._wants_mrs_in_response(request.from_user)
        if not in_response:
            self._answer(key, link, build_response(200, request=request, to_tag=to_tag))  # [1]
        ref, snu = await self._process(request)
        mrs = encode_mrs(ref, snu)
        if in_response:
            self._answer(
                key,
                link,
                build_response(
                    200, request=request, to_tag=to_tag, body=mrs, content_type=CONTENT_TYPE
                ),
            )
        else:
            await self._send_mrs(request, link, mrs)

    async def _process(self, request: SipRequest) -> tuple[str | None, int]:
        parsed: ScaipRequest | ScaipError = parse_mrq(request.body)
        if isinstance(parsed, ScaipRequest):
            parsed = check_sender(parsed, request.from_user) or parsed
        if isinstance(parsed, ScaipError):
            self.stats.rejects[str(parsed.reason)] += 1
            _LOGGER.info(
                "SCAIP from %s refused (snu %d): %s", request.from_user, parsed.snu, parsed.detail
            )
            return parsed.ref, parsed.snu
        if self._slots.locked():
            # Policy: answer busy rather than queue (see DEFAULT_MAX_CONCURRENT).
            self.stats.rejects["busy"] += 1
            return parsed.ref, Snu.BUSY
        async with self._slots:
            return parsed.ref, await self._call_handler(parsed, request)

    async def _call_handler(self, scaip: ScaipRequest, sip: SipRequest) -> int:
        try:
            result = await self._handler(scaip, sip)
        except Exception:
            # The alarm was not stored: answer "not treated" so the controller retries or
            # falls back to its secondary receiver, and keep serving everyone else.
            self.stats.handler_errors += 1
            _LOGGER.exception("SCAIP handler failed for cid=%s ref=%s", scaip.cid, scaip.ref)
            return Snu.NOT_TREATED
        try:
            snu = Snu(result)
        except ValueError:
            self.stats.handler_errors += 1
            _LOGGER.error("SCAIP handler returned %r, not an snu", result)
            return Snu.NOT_TREATED
        self.stats.handled += 1
        return snu

    async def _send_mrs(self, request: SipRequest, link: _Link, mrs: bytes) -> None:
        branch = new_branch()
        peer_uri = header_uri(request.header("From") or "")
        message = build_request(
            "MESSAGE",
            peer_uri,
            via_host=link.local[0],
            via_port=link.local[1],
            transport=link.transport,
            branch=branch,
            from_uri=header_uri(request.header("To") or "") or f"sip:{self._user}@{link.local[0]}",
            from_tag=new_tag(),
            to_uri=peer_uri,
            # Same Call-ID as the <mrq>: lets the controller (and sipp, which maps messages
            # to calls by Call-ID) tie the <mrs> to its request.
            call_id=request.call_id,
            cseq=1,
            body=mrs,
            content_type=CONTENT_TYPE,
        )
        future: asyncio.Future[SipResponse] = asyncio.get_running_loop().create_future()
        self._pending[branch] = future
        self.stats.mrs_sent += 1
        try:
            response = await self._transact(future, link, message)
        finally:
            self._pending.pop(branch, None)
        if response is not None and 200 <= response.status < 300:
            self.stats.mrs_acked += 1
        else:
            self.stats.mrs_failed += 1
            _LOGGER.warning(
                "SCAIP <mrs> to %s not accepted: %s",
                link.peer,
                response.status if response else "timeout",
            )

    async def _transact(
        self, future: asyncio.Future[SipResponse], link: _Link, message: bytes
    ) -> SipResponse | None:
        link.send(message)
        if link.transport != "UDP":
            # Reliable transport: no retransmission, only Timer F.
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), TIMER_F)
            return None
        interval, waited = T1, 0.0
        while waited < TIMER_F:
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(asyncio.shield(future), interval)
            waited += interval
            interval = min(interval * 2, T2)
            link.send(message)
        return None


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, listener: ScaipListener) -> None:
        self._listener = listener

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        self._listener._on_datagram(data, (str(addr[0]), int(addr[1])))

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable from a vanished peer; the retransmission timer copes.
        _LOGGER.debug("SCAIP UDP error: %s", exc)


def _udp_sender(
    transport: asyncio.DatagramTransport, addr: tuple[str, int]
) -> Callable[[bytes], None]:
    def send(data: bytes) -> None:
        if not transport.is_closing():
            transport.sendto(data, addr)

    return send


def _tcp_sender(writer: asyncio.StreamWriter) -> Callable[[bytes], None]:
    def send(data: bytes) -> None:
        if not writer.is_closing():
            writer.write(data)

    return send
