"""The SCAIP receiver: a thin asyncio SIP listener on UDP and TCP (docs/scaip.md).

Protocol work lives in the sans-I/O codecs ``devices/sip.py`` and ``devices/scaip.py``;
this module only moves bytes, owns the tasks and calls the injected handler.

Flow for one SIP MESSAGE carrying an ``<mrq>``:

1. Parse the ``<mrq>``; check that the SIP From user is the ``<cid>``. A refusal is answered
   with its ``snu`` (and the ``ref`` when readable) and the handler is not called.
2. [1] Answer the SIP transaction with 200 OK at once (the default), which only says "the
   SIP layer has it" and stops UDP retransmissions while the handler writes to disk.
3. Call ``handle(request, sip) -> snu`` under a bounded number of concurrent calls.
4. Send the ``<mrs>`` back to the sender in a SIP MESSAGE of its own (retransmitted on UDP
   until answered, as RFC 3261 section 17.1.2 asks), or, for controllers configured so,
   carry it in the body of the 200 OK instead (then step 2 waits for step 3).

Toward a UDP source that has not proved it receives at its address (``gateway.sipguard``)
the listener never amplifies [2]: a refusal travels in the body of the one 200 OK, the
``<mrs>`` MESSAGE of a valid request goes once and is never retransmitted, and every byte
sent stays within what that source sent. Sources are rate-limited one by one, and TCP
connections are bounded per source, closed when idle, and the only ones ever closed to make
room are idle ones that never delivered a stored message, so a flood of idle connections
cannot push out the controllers.

Every task lives in one TaskGroup owned by the listener, is named, and is cancelled and
awaited when the ``async with`` block exits.

[2] RFC 3261 asks a UAS to answer every request, and the answer goes to the source address;
    it does not ask for a new request (our <mrs> MESSAGE) toward an unproven address, let
    alone retransmissions of it. Answering within the budget keeps the RFC's promise to real
    peers (they retransmit, which pays for the answer) and makes reflection pointless.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import ssl
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Collection, Coroutine, Iterable
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
from gateway.ratelimit import LogLimiter
from gateway.sipguard import MAX_CONNECTIONS_PER_SOURCE, SourceGuard

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

# A TCP connection that has not yet delivered a message we stored is closed after this long
# without a complete SIP message: a controller sends its MESSAGE right after connecting, and
# a peer that dribbles bytes (or nothing) must not hold a slot.
UNPROVEN_IDLE_S = 30.0
# A controller's connection is kept this long without a complete message: longer than the
# slowest heartbeat interval of the supervision levels (180 s), so a controller keeping its
# connection open for heartbeats keeps it.
IDLE_S = 600.0

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
    # Datagrams and bytes sent, and the <mrs> MESSAGEs the budget toward an unverified
    # source did not allow (the controller retransmits and gets the answer then).
    datagrams_received: int = 0
    bytes_received: int = 0
    datagrams_sent: int = 0
    bytes_sent: int = 0
    mrs_unsent: int = 0
    connections_evicted: int = 0
    connections_idle_closed: int = 0
    rejects: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True, slots=True)
class _Link:
    """Where a message came from and how to answer it."""

    transport: str  # "UDP" or "TCP"
    peer: tuple[str, int]
    local: tuple[str, int]
    send: Callable[[bytes], bool]  # False: not sent (closed, or over the budget)
    conn: _Conn | None = None  # the TCP connection, for its idle bookkeeping


@dataclass(slots=True)
class _Conn:
    """A TCP connection: when it last delivered a message, and whether it proved itself
    (an <mrq> of it was answered snu 0, i.e. stored)."""

    ip: str
    writer: asyncio.StreamWriter
    active: float
    proven: bool = False


# A server transaction: the peer's address, branch, Call-ID, CSeq number and method. The
# address is part of it so that nobody can answer for, or replay into, another source's
# transaction by reusing its branch (RFC 3261 17.2.3 matches on the Via, which the sender
# writes itself; the address it sends from is what we answer to anyway).
_TxKey: TypeAlias = tuple[tuple[str, int], str, str, int, str]


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
        trusted_networks: Iterable[str] = (),
        datagrams_per_s: float | None = None,
        max_connections_per_source: int = MAX_CONNECTIONS_PER_SOURCE,
        idle_s: float = IDLE_S,
        unproven_idle_s: float = UNPROVEN_IDLE_S,
    ) -> None:
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        # Per-source limits and the reflection budget (gateway.sipguard).
        self.guard = (
            SourceGuard.with_trusted(trusted_networks,
                                     max_connections_per_source=max_connections_per_source)
            if datagrams_per_s is None
            else SourceGuard.with_trusted(trusted_networks, datagrams_per_s=datagrams_per_s,
                                          max_connections_per_source=max_connections_per_source)
        )
        self._idle_s = idle_s
        self._unproven_idle_s = unproven_idle_s
        self._conns: dict[int, _Conn] = {}
        self._conn_ids = itertools.count()
        self._log = LogLimiter(60.0)
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
        # Our <mrs> MESSAGEs waiting for their answer, by branch: the answer and the IP it
        # was sent to (an answer from there proves the source receives at its address).
        self._pending: dict[str, tuple[asyncio.Future[SipResponse], str]] = {}
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
        self._conns.clear()

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
        except Exception as exc:  # noqa: BLE001 - isolation: one message, not the listener
            self._log.log(_LOGGER, logging.ERROR, f"task:{type(exc).__name__}",
                          "SCAIP task %s failed", name, exc_info=exc)

    # -- transports ------------------------------------------------------------------------

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        transport = self._udp_transport
        if transport is None:
            return
        self.stats.datagrams_received += 1
        self.stats.bytes_received += len(data)
        if not self.guard.admit(addr[0], len(data), time.monotonic()):
            # Over this source's rate: dropped before any parsing (counted by the guard).
            self.stats.rejects["rate_limited"] += 1
            return
        local = transport.get_extra_info("sockname")
        link = _Link("UDP", (addr[0], addr[1]), (local[0], local[1]),
                     self._udp_sender(transport, addr))
        self._dispatch(parse_message(data), link)

    def _udp_sender(
        self, transport: asyncio.DatagramTransport, addr: tuple[str, int]
    ) -> Callable[[bytes], bool]:
        def send(data: bytes) -> bool:
            if transport.is_closing():
                return False
            if not self.guard.may_send(addr[0], len(data), time.monotonic()):
                return False  # over the budget toward an unverified source: stay silent
            self.stats.datagrams_sent += 1
            self.stats.bytes_sent += len(data)
            transport.sendto(data, addr)
            return True

        return send

    def _on_connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        ip = str(peer[0])
        if self._tg is None:
            writer.close()
            return
        if not self.guard.open_connection(ip):
            self.stats.rejects["too_many_connections_from_source"] += 1
            writer.close()
            return
        if len(self._conns) >= self._max_connections and not self._evict_one():
            self.guard.close_connection(ip)
            self.stats.rejects["too_many_connections"] += 1
            writer.close()
            return
        conn_id = next(self._conn_ids)
        self._conns[conn_id] = _Conn(ip, writer, time.monotonic())
        self._spawn(self._serve(reader, writer, conn_id), f"scaip tcp {peer[0]}:{peer[1]}")

    def _evict_one(self) -> bool:
        """Make room: close the longest-idle connection that never had a message stored.

        A connection of a controller (proven) is never closed for a newcomer: an idle flood
        from anywhere cannot push a controller off.
        """
        unproven = [(c.active, i) for i, c in self._conns.items() if not c.proven]
        if not unproven:
            return False
        _, conn_id = min(unproven)
        conn = self._conns.pop(conn_id)
        self.guard.close_connection(conn.ip)
        self.stats.connections_evicted += 1
        conn.writer.close()
        return True

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn_id: int
    ) -> None:
        peer = writer.get_extra_info("peername")
        local = writer.get_extra_info("sockname")
        conn = self._conns.get(conn_id)
        if conn is None:  # evicted before it was served
            writer.close()
            return
        link = _Link("TCP", (peer[0], peer[1]), (local[0], local[1]), _tcp_sender(writer),
                     conn)
        framer = SipStreamReader()
        try:
            while True:
                # Idle counts from the last complete message, not the last byte: a peer
                # dribbling a header one byte a minute is as idle as a silent one.
                try:
                    async with asyncio.timeout_at(self._deadline(self._idle_until(conn))):
                        data = await reader.read(65536)
                except TimeoutError:
                    if self._idle_until(conn) > time.monotonic():
                        continue  # it proved itself meanwhile: a longer allowance
                    self.stats.connections_idle_closed += 1
                    self._log.log(_LOGGER, logging.DEBUG, "tcp_idle",
                                  "SCAIP TCP %s idle, closed", peer)
                    break
                if not data:
                    break
                for item in framer.feed(data):
                    if not isinstance(item, SipError):
                        conn.active = time.monotonic()
                    self._dispatch(item, link)
        except (ConnectionError, OSError) as exc:
            self._log.log(_LOGGER, logging.DEBUG, "tcp_closed",
                          "SCAIP TCP %s closed: %s", peer, exc)
        finally:
            if self._conns.pop(conn_id, None) is not None:
                self.guard.close_connection(conn.ip)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    def _idle_until(self, conn: _Conn) -> float:
        return conn.active + (self._idle_s if conn.proven else self._unproven_idle_s)

    @staticmethod
    def _deadline(monotonic_at: float) -> float:
        # asyncio.timeout_at takes the loop's clock, which is time.monotonic on every
        # supported platform; converted explicitly so a different loop clock still works.
        loop = asyncio.get_running_loop()
        return loop.time() + (monotonic_at - time.monotonic())

    # -- SIP -------------------------------------------------------------------------------

    def _refused(self, key: str, message: str, *args: object) -> None:
        """Count and log (at most once a minute per reason) a refused message."""
        self.stats.rejects[key] += 1
        if self._log.allow(key):
            # ``message`` ends with a %s for the count of lines suppressed meanwhile.
            _LOGGER.info(message, *args, self._log.suppressed_note(key))

    def _verified(self, link: _Link) -> bool:
        """Whether the peer proved it receives at its address (TCP/TLS always has)."""
        return link.transport != "UDP" or self.guard.is_verified(link.peer[0], time.monotonic())

    def _dispatch(self, message: SipMessage | SipError, link: _Link) -> None:
        self.stats.received += 1
        if isinstance(message, SipError):
            self._refused(f"sip_{message.reason}", "SIP from %s refused: %s%s", link.peer,
                          message.detail)
            if message.is_request and message.header("Via") is not None:
                reason = f"{REASONS.get(message.status, 'Bad Request')} ({message.detail})"
                link.send(build_response(message.status, request=message, reason=reason))
            return
        if isinstance(message, SipResponse):
            pending = self._pending.get(message.branch or "")
            if pending is None or message.status < 200:
                return
            future, sent_to = pending
            if 200 <= message.status < 300 and link.peer[0] == sent_to:
                # Our random branch came back from where we sent it: that address receives.
                self.guard.verify(sent_to, time.monotonic())
            if not future.done():
                future.set_result(message)
            return
        self._on_request(message, link)

    def _on_request(self, request: SipRequest, link: _Link) -> None:
        if request.method == "ACK":
            return
        key: _TxKey = (
            link.peer, request.branch or "", request.call_id, request.cseq[0], request.method
        )
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
            # Methods are case-sensitive: "message" is refused like any unknown method, on
            # every transport (issue 18.5).
            self._refused("method_not_allowed", "SIP method %r from %s refused%s",
                          request.method[:32], link.peer)
            self._answer(
                key,
                link,
                build_response(
                    405, request=request, to_tag=new_tag(), extra_headers=[("Allow", _ALLOW)]
                ),
            )
            return
        if request.content_type != CONTENT_TYPE:
            self._refused("unsupported_media_type", "SIP MESSAGE from %s with %r refused%s",
                          link.peer, (request.content_type or "")[:64])
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

    def _parse(self, request: SipRequest) -> ScaipRequest | ScaipError:
        parsed: ScaipRequest | ScaipError = parse_mrq(request.body)
        if isinstance(parsed, ScaipRequest):
            parsed = check_sender(parsed, request.from_user) or parsed
        return parsed

    async def _on_message(self, request: SipRequest, link: _Link, key: _TxKey) -> None:
        to_tag = new_tag()
        parsed = self._parse(request)
        verified = self._verified(link)
        # A refusal to an unproven address travels in the one 200 OK: a garbage MESSAGE
        # must not draw a request of ours, let alone its retransmissions (issue 17.5).
        in_response = self._wants_mrs_in_response(request.from_user) or (
            isinstance(parsed, ScaipError) and not verified
        )
        if not in_response:
            self._answer(key, link, build_response(200, request=request, to_tag=to_tag))  # [1]
        ref, snu = await self._process(parsed, request)
        if snu == Snu.OK and link.conn is not None:
            link.conn.proven = True  # a controller: never evicted for a newcomer
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
            await self._send_mrs(request, link, mrs, retransmit=verified)

    async def _process(
        self, parsed: ScaipRequest | ScaipError, request: SipRequest
    ) -> tuple[str | None, int]:
        if isinstance(parsed, ScaipError):
            self._refused(str(parsed.reason), "SCAIP from %s ref %s refused (snu %d): %s%s",
                          request.from_user, parsed.ref, parsed.snu, parsed.detail)
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
        except Exception as exc:  # noqa: BLE001 - isolation: one message, not the listener
            # The alarm was not stored: answer "not treated" so the controller retries or
            # falls back to its secondary receiver, and keep serving everyone else.
            self.stats.handler_errors += 1
            self._log.log(_LOGGER, logging.ERROR, f"handler:{type(exc).__name__}",
                          "SCAIP handler failed for cid=%s ref=%s", scaip.cid, scaip.ref,
                          exc_info=exc)
            return Snu.NOT_TREATED
        try:
            snu = Snu(result)
        except ValueError:
            self.stats.handler_errors += 1
            self._log.log(_LOGGER, logging.ERROR, "snu",
                          "SCAIP handler returned %r, not an snu", result)
            return Snu.NOT_TREATED
        self.stats.handled += 1
        return snu

    async def _send_mrs(
        self, request: SipRequest, link: _Link, mrs: bytes, *, retransmit: bool
    ) -> None:
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
        self._pending[branch] = (future, link.peer[0])
        self.stats.mrs_sent += 1
        try:
            if not link.send(message):
                response, unsent = None, True
            else:
                response, unsent = await self._transact(future, link, message, retransmit), False
        finally:
            self._pending.pop(branch, None)
        if response is not None and 200 <= response.status < 300:
            self.stats.mrs_acked += 1
        elif unsent:
            # The budget toward this unverified source held the <mrs> back: the alarm is
            # stored; the controller's retransmission will carry the answer.
            self.stats.mrs_unsent += 1
        else:
            self.stats.mrs_failed += 1
            if self._log.allow("mrs_failed"):
                _LOGGER.warning(
                    "SCAIP <mrs> to %s not accepted: %s%s",
                    link.peer,
                    response.status if response else "timeout",
                    self._log.suppressed_note("mrs_failed"),
                )

    async def _transact(
        self,
        future: asyncio.Future[SipResponse],
        link: _Link,
        message: bytes,
        retransmit: bool,
    ) -> SipResponse | None:
        """Wait for the answer to ``message`` (already sent once), resending it on UDP."""
        if link.transport != "UDP" or not retransmit:
            # Reliable transport, or an unverified source: no retransmission, only Timer F.
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


def _tcp_sender(writer: asyncio.StreamWriter) -> Callable[[bytes], bool]:
    def send(data: bytes) -> bool:
        if writer.is_closing():
            return False
        writer.write(data)
        return True

    return send
