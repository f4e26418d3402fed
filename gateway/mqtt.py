"""The MQTT link: one persistent session to the broker, reconnected for ever.

The link owns its tasks (connect/reconnect loop, receive loop, publisher workers) in one
TaskGroup. Incoming messages go to an async handler, one at a time, in broker order — the
handler applies back-pressure simply by taking its time. Outgoing messages go through a
bounded queue drained by a few publisher workers so that waiting for one PUBACK does not
hold up the next ack.

The gateway runs two links, two *lanes*, each its own broker session: the alarm lane
(alarms, heartbeats, status; it publishes the acks, commands and the retained gateway
status) and the telemetry lane (telemetry only). A broker queues and delivers per session,
so a backlog of telemetry — thousands of samples queued after an outage, or a sensor storm —
can never stand in front of an alarm: the alarm's session has nothing else queued.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import aiomqtt
from paho.mqtt.enums import MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devices.contract import Channel
from gateway.waiting import wait_set

_LOGGER = logging.getLogger(__name__)

# Nagle's algorithm holds small writes back for up to ~40 ms waiting for an ACK; an alarm
# ack is exactly such a small write. Measured here: it removes a ~40 ms p99.9 tail.
NODELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

# Reconnect back-off: full jitter over an exponentially growing window, capped so that a
# broker that comes back is found again within seconds, not minutes.
BACKOFF_BASE_S = 0.2
BACKOFF_CAP_S = 5.0

# Outbound QoS 1 messages the client may have sent and not yet had acknowledged: enough for
# acks to stream on loopback or a LAN without waiting on each round trip (paho's default is
# 20), few enough that paho's scan of its in-flight messages at every PUBACK stays short.
MAX_INFLIGHT = 32
# Outbound messages waiting in the client beyond those. Acks beyond this are dropped and
# counted; the device resends and is acked again, so this never loses an alarm.
MAX_OUTBOUND = 10_000


# Messages taken from the client's queue before the receiver yields to the event loop: at
# ~30 µs a message, 32 keep the delay they can add to anything else around a millisecond.
RECEIVE_BURST = 32

# How long a clean shutdown may take before the link is cancelled outright.
STOP_TIMEOUT_S = 5.0

# With a shared-subscription group (several gateways), alarms are consumed through
# ``$share/<group>/...``: each message reaches one gateway of the group. Heartbeats
# and status reach every gateway, so each keeps a warm supervision view of the whole fleet
# and can take over the supervision lease without a blind spot; they are small and rare.
# Telemetry is not shared either: every gateway gets every sample, and only the device's
# owner runs the sensor rules on it (gateway.partition). A shared subscription would spread
# one device's samples round-robin over the gateways, and no rule would see its series.
SHARED_CHANNELS = frozenset({Channel.ALARM})
# MQTT 5 session expiry of a gateway in a group: none. A broker keeps handing a share of
# the group's messages to the session of a gateway that died for as long as the session
# lives (measured on Mosquitto 2: half of them with two members), so the session must end
# with the connection. What was in flight to the dead gateway is resent by the devices
# (unacked) and reaches a live member; with no member left, devices keep resending.
SESSION_EXPIRY_S = 0

# MQTT 5 DISCONNECT reason code "Session taken over": another client connected with this
# client id. A broker that sends it makes a single take-over visible (Mosquitto 2.0.11 just
# closes the socket); otherwise LinkWatch sees the take-overs as flapping (alarms.flapping).
SESSION_TAKEN_OVER = 0x8E


# A received message: topic and payload, nothing else (see SafeClient._on_message).
Received = tuple[str, bytes]

# Packets read per wake-up of the event loop at most (SafeClient._on_socket_open).
READ_BURST = 64
# Bytes taken from the socket per system call at most ([4] in SafeClient._on_socket_open).
RECV_CHUNK = 65536


class _NoFilters:
    """paho's per-topic callback matcher, for a client with no per-topic callbacks."""

    @staticmethod
    def iter_match(topic: str) -> tuple[()]:
        """No callback for any topic."""
        return ()


_NO_FILTERS = _NoFilters()


class SafeClient(aiomqtt.Client):
    """``aiomqtt.Client`` whose deferred writer registration checks the socket still lives.

    aiomqtt registers the socket writer through ``call_soon_threadsafe`` (paho may ask from
    the connect thread) but unregisters it immediately. If paho closes the socket in
    between (a disconnect right after a publish), the deferred call would register a dead
    fd, or an fd number already reused by the next connection. Registering only while paho
    still holds this very socket closes that window.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._wire: _Wire | None = None
        # [3] paho walks its per-topic callback trie for every message; the gateway registers
        # no per-topic callbacks, so the walk always finds nothing.
        self._client._on_message_filtered = _NO_FILTERS  # type: ignore[assignment] # see [3]

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        # [1] The receive path carries (topic, payload) only: aiomqtt's Message (topic
        # parsing and validation per message) was the largest single cost of ingest.
        self._queue.put_nowait((message.topic, message.payload))  # type: ignore[arg-type]

    def _on_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        # Replaces aiomqtt's, which registers a reader that reads one packet per wake-up
        # and does so by an fd number that may be closed (or reused) by the time it runs.
        wire = self._wire = _Wire(client, sock)

        def read() -> None:
            # [2] Every packet that is already in the socket, not one per wake-up of the
            # event loop (paho's loop_read reads one when nothing is in flight), bounded so
            # that a flood on one connection cannot starve the other lane and the timers.
            try:
                for _ in range(READ_BURST):
                    rc = client._packet_read()  # private: see [2]
                    if rc == MQTTErrorCode.MQTT_ERR_AGAIN:
                        break
                    if rc > 0:
                        client._loop_rc_handle(rc)  # what loop_read does
                        break
                else:
                    if wire.incoming and client.socket() is sock:
                        # The burst ended with packets already read from the socket: the
                        # socket may not wake the loop again for them, so come back.
                        self._loop.call_soon(read)
            except Exception as exc:  # noqa: BLE001 - mirrors aiomqtt: a broken pipe ends it
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def register() -> None:
            # Only while paho still holds this very socket (as for the writer, below).
            if client.socket() is sock:
                self._loop.add_reader(sock.fileno(), read)

        def keep_alive() -> None:
            # aiomqtt's ping loop, as its own _on_socket_open starts it (and only for a
            # socket still open: its _on_socket_close cancels the loop it finds).
            if client.socket() is sock:
                self._misc_task = self._loop.create_task(self._misc_loop())

        # paho may call this from the thread that connects (aiomqtt's executor).
        self._loop.call_soon_threadsafe(register)
        self._loop.call_soon_threadsafe(keep_alive)

    def _on_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho closes the socket right after it "wrote" a DISCONNECT: what is still
        # buffered goes out first (best effort, as paho's own last write), straight to the
        # socket, since paho has already let go of it (its _sock_send would refuse).
        # Without this the broker sees a dropped connection and publishes the will.
        wire = self._wire
        if wire is not None and wire.sock is sock:
            with contextlib.suppress(OSError):
                if wire.outgoing:
                    sock.send(wire.outgoing)
            self._wire = None
        super()._on_socket_close(client, userdata, sock)

    def queued(self) -> Received | None:
        """The next received message if one is already waiting, else None.

        aiomqtt's message iterator starts a task and an ``asyncio.wait`` for every message
        (to notice a disconnect while waiting); when messages are already queued — a burst,
        a backlog after a reconnect — taking them directly skips that per-message cost.
        """
        try:
            item: Received = self._queue.get_nowait()  # type: ignore[assignment]
        except asyncio.QueueEmpty:
            return None
        return item

    def disconnect_reason(self) -> int | None:
        """The reason code the session ended with, if it ended unexpectedly (MQTT 5: the
        broker's DISCONNECT reason, e.g. ``SESSION_TAKEN_OVER``)."""
        ended = self._disconnected
        if not ended.done() or ended.cancelled():
            return None
        error = ended.exception()
        if not isinstance(error, aiomqtt.MqttCodeError) or error.rc is None:
            return None
        return int(error.rc.value) if hasattr(error.rc, "value") else int(error.rc)

    def _on_socket_register_write(
        self, client: Any, userdata: Any, sock: Any
    ) -> None:
        def write() -> None:
            try:
                client.loop_write()
                flush()
            except Exception as exc:  # noqa: BLE001 - mirrors aiomqtt: a broken pipe ends the session
                if not self._disconnected.done():
                    self._disconnected.set_exception(exc)

        def flush() -> None:
            # [4] What paho wrote in this wake-up, in one system call; what the socket did
            # not take is written when it is writable again.
            wire = self._wire
            if wire is None or wire.sock is not sock or client.socket() is not sock:
                return
            if not wire.flush():
                self._loop.add_writer(sock.fileno(), write)

        def register() -> None:
            if client.socket() is sock:
                self._loop.add_writer(sock.fileno(), write)

        self._loop.call_soon_threadsafe(register)


class _Wire:
    """[4] paho's reads and writes on one socket, batched.

    paho reads a packet in three or more system calls (the command byte, each byte of the
    remaining length, the rest) and writes each packet with its own ``send``. Here a read
    takes up to ``RECV_CHUNK`` bytes and hands paho the bytes it asks for from that buffer;
    a write appends to a buffer that the link sends in one call per wake-up. What paho does
    with the bytes is unchanged; errors and the end of the stream come from paho's own
    ``_sock_recv``/``_sock_send`` (which turn TLS's want-read/want-write into
    ``BlockingIOError``). Measured with ``bench/storm_bench.py``: 91,000 ``recv`` and 30,000
    ``send`` calls for 10,000 alarms and 10,000 status messages before.
    """

    def __init__(self, client: Any, sock: Any) -> None:
        self.sock = sock
        base = type(client)
        # paho's own methods, not whatever an earlier _Wire put on the instance.
        self._recv = functools.partial(base._sock_recv, client)
        self._send = functools.partial(base._sock_send, client)
        self.incoming = bytearray()
        self.outgoing = bytearray()
        client._sock_recv = self.recv
        client._sock_send = self.queue

    def recv(self, size: int) -> bytes:
        """Up to ``size`` bytes: buffered ones first, else one read of the socket."""
        incoming = self.incoming
        if not incoming:
            chunk: bytes = self._recv(RECV_CHUNK)
            if len(chunk) <= size:
                return chunk
            incoming.extend(chunk)
        data = bytes(incoming[:size])
        del incoming[:size]
        return data

    def queue(self, data: bytes | bytearray) -> int:
        """paho's write: buffered, all of it taken."""
        self.outgoing.extend(data)
        return len(data)

    def flush(self) -> bool:
        """Send what is buffered; True when nothing is left."""
        outgoing = self.outgoing
        if not outgoing:
            return True
        try:
            sent: int = self._send(outgoing)
        except BlockingIOError:
            sent = 0
        del outgoing[:sent]
        return not outgoing


class _ClosingSSLSocket(ssl.SSLSocket):
    """An ``SSLSocket`` that closes itself when its handshake fails.

    paho-mqtt (2.2) wraps the socket, runs the handshake, and on failure (an untrusted or
    misnamed broker certificate) drops the socket without closing it: one file descriptor
    and a ResourceWarning per refused attempt, while the link retries for ever.
    """

    def do_handshake(self, block: bool = False) -> None:
        """``SSLSocket.do_handshake``; the socket is closed if it fails."""
        try:
            super().do_handshake(block)
        except BaseException:
            self.close()
            raise


class BrokerTlsContext(ssl.SSLContext):
    """The TLS client context of the broker link.

    paho-mqtt wraps its socket with ``server_hostname`` = the host it connects to, and
    neither it nor aiomqtt can be given another name. When ``server_name`` is set (the
    broker is reached by an address its certificate does not carry, e.g. an IP address),
    it is sent as SNI and checked against the certificate instead; the host name check
    itself stays on. A failed handshake closes its socket (``_ClosingSSLSocket``).
    """

    sslsocket_class = _ClosingSSLSocket
    server_name: str | None = None

    def wrap_socket(
        self,
        sock: socket.socket,
        server_side: bool = False,
        do_handshake_on_connect: bool = True,
        suppress_ragged_eofs: bool = True,
        server_hostname: str | bytes | None = None,
        session: ssl.SSLSession | None = None,
    ) -> ssl.SSLSocket:
        """``SSLContext.wrap_socket``, checking ``server_name`` instead of the host if set."""
        return super().wrap_socket(
            sock,
            server_side=server_side,
            do_handshake_on_connect=do_handshake_on_connect,
            suppress_ragged_eofs=suppress_ragged_eofs,
            server_hostname=self.server_name or server_hostname,
            session=session,
        )


class _StoppingError(Exception):
    """Raised inside the session's task group to leave it cleanly on shutdown."""


@dataclass(frozen=True, slots=True)
class Outbound:
    """A message to publish."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


MessageHandler = Callable[[str, bytes], Awaitable[None]]
StateHandler = Callable[[bool], None]


class MqttLink:
    """A supervised connection to the broker. Reusable, not re-entrant."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        prefix: str,
        client_id: str,
        gateway_id: str,
        version: str,
        on_message: MessageHandler,
        on_state: StateHandler | None = None,
        username: str | None = None,
        password: str | None = None,
        keepalive_s: int = 30,
        shared_group: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        channels: frozenset[Channel] = frozenset(Channel),
        announce: bool = True,
        name: str = "mqtt",
    ) -> None:
        self.host = host
        self.port = port
        self.prefix = prefix
        self.client_id = client_id
        self.gateway_id = gateway_id
        self._version = version
        self._on_message = on_message
        self._on_state = on_state
        self._username = username
        self._password = password
        self._keepalive_s = keepalive_s
        self.shared_group = shared_group
        self._tls_context = tls_context
        # The device channels this lane subscribes to; whether it carries the retained
        # gateway status and its will (the alarm lane does, the telemetry lane does not).
        self.channels = channels
        self.announce = announce
        self.name = name
        # The connected client (None between sessions): outbound messages are handed to it
        # directly (publish_nowait), never through a task per message.
        self._client: SafeClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._stopping = asyncio.Event()
        self._lock = asyncio.Lock()
        self.started_at = time.time()
        self.connects = 0
        self.dropped_outbound = 0
        # Why the last session ended, when the broker said (``SafeClient.disconnect_reason``).
        self.disconnect_reason: int | None = None

    @property
    def status_topic(self) -> str:
        """The retained gateway status topic that upstream monitors watch."""
        return f"{self.prefix}/gateway/{self.gateway_id}/status"

    @property
    def connected(self) -> bool:
        """Whether the session is up right now."""
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        """Return once the link is connected and subscribed."""
        await self._connected.wait()

    async def __aenter__(self) -> Self:
        if self._lock.locked():
            raise RuntimeError("MqttLink is not re-entrant")
        await self._lock.acquire()
        self._stopping.clear()
        self._log_transport()
        self._task = asyncio.create_task(self._run(), name=f"mqtt link {self.client_id}")
        return self

    async def wait(self) -> None:
        """Until the link's loops end (only on close, or a bug: it reconnects for ever)."""
        assert self._task is not None
        await asyncio.shield(self._task)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            # Leave the session by returning, not by cancellation: aiomqtt then sends
            # DISCONNECT and tears its socket callbacks down in order. Cancelling mid-way
            # can leave a deferred add_writer for a closed (and possibly reused) fd.
            self._stopping.set()
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_TIMEOUT_S)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            self._task = None
        self._set_state(False)
        self._lock.release()

    def _log_transport(self) -> None:
        context = self._tls_context
        if context is None:
            _LOGGER.info("MQTT link to %s:%d: plain TCP, no TLS", self.host, self.port)
            return
        server_name = self.host
        if isinstance(context, BrokerTlsContext) and context.server_name:
            server_name = context.server_name
        _LOGGER.info(
            "MQTT link to %s:%d: TLS (minimum %s, certificate %s, host name %s)",
            self.host,
            self.port,
            context.minimum_version.name,
            "verified" if context.verify_mode is ssl.CERT_REQUIRED else "NOT verified",
            f"checked against {server_name}" if context.check_hostname else "NOT checked",
        )

    def publish_nowait(self, message: Outbound) -> bool:
        """Hand a message to the client; False (counted) when disconnected or backed up.

        paho queues it and the event loop writes it (its socket writer); the broker's PUBACK
        is paho's business. No task and no await per message: an ack costs what it must.
        """
        client = self._client
        if client is None or not self.connected:
            self.dropped_outbound += 1
            return False
        paho = client._client  # aiomqtt's paho client (private); see the docstring
        if len(paho._out_messages) >= MAX_OUTBOUND:  # its backlog (private)
            self.dropped_outbound += 1
            return False
        info = paho.publish(message.topic, message.payload, message.qos, message.retain)
        if info.rc != 0:
            self.dropped_outbound += 1
            return False
        return True

    def publish_status(self, state: str) -> None:
        """Publish the retained gateway status (e.g. ``degraded`` while the journal fails)."""
        if self.announce:
            self.publish_nowait(Outbound(self.status_topic, self._status(state), retain=True))

    def _status(self, state: str) -> bytes:
        return json.dumps(
            {
                "state": state,
                "gateway_id": self.gateway_id,
                "version": self._version,
                "started_at": self.started_at,
                "ts": int(time.time() * 1000),
            },
            separators=(",", ":"),
        ).encode()

    def _set_state(self, up: bool) -> None:
        if not up:
            self._client = None
        if up == self._connected.is_set():
            return
        if up:
            self._connected.set()
        else:
            self._connected.clear()
        if self._on_state is not None:
            self._on_state(up)

    async def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            client = SafeClient(
                self.host,
                self.port,
                identifier=self.client_id,
                # A persistent session: QoS 1 messages published while we are away are
                # queued by the broker and delivered when we come back.
                **self._session_options(),
                username=self._username,
                password=self._password,
                keepalive=self._keepalive_s,
                will=(aiomqtt.Will(self.status_topic, self._status("offline"), qos=1, retain=True)
                      if self.announce else None),
                socket_options=NODELAY,
                tls_context=self._tls_context,
                timeout=10,
                max_inflight_messages=MAX_INFLIGHT,
            )
            try:
                async with client:
                    attempt = 0
                    self.disconnect_reason = None
                    await self._session(client)
            except aiomqtt.MqttError as exc:
                self.disconnect_reason = client.disconnect_reason()
                self._set_state(False)
                if self._stopping.is_set():
                    return
                delay = random.uniform(0, min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2**attempt))
                attempt += 1
                _LOGGER.warning(
                    "MQTT link to %s:%d down (%s); reconnecting in %.1f s",
                    self.host,
                    self.port,
                    exc,
                    delay,
                )
                await wait_set(self._stopping, delay)

    def _session_options(self) -> dict[str, Any]:
        if self.shared_group is None:
            return {"clean_session": False}
        # Shared subscriptions are an MQTT 5 feature. No persistent session in a group
        # (see SESSION_EXPIRY_S): the other members take the traffic.
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY_S
        return {
            "protocol": aiomqtt.ProtocolVersion.V5,
            "clean_start": False,
            "properties": properties,
        }

    def subscriptions(self) -> list[str]:
        """The topic filters this link subscribes to."""
        filters = []
        for channel in Channel:
            if channel not in self.channels:
                continue
            plain = f"{self.prefix}/+/{channel.value}"
            if self.shared_group is not None and channel in SHARED_CHANNELS:
                filters.append(f"$share/{self.shared_group}/{plain}")
            else:
                filters.append(plain)
        return filters

    async def _session(self, client: SafeClient) -> None:
        for topic_filter in self.subscriptions():
            await client.subscribe(topic_filter, qos=1)
        if self.announce:
            await client.publish(self.status_topic, self._status("online"), qos=1, retain=True)
        self.connects += 1
        self._client = client
        self._set_state(True)
        _LOGGER.info("MQTT %s link to %s:%d up (session %d)", self.name, self.host, self.port,
                     self.connects)
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._receiver(client), name="mqtt receiver")
                group.create_task(self._until_stopped(), name="mqtt stop watch")
        except ExceptionGroup as errors:
            if errors.subgroup(_StoppingError) is not None and self._stopping.is_set():
                self._set_state(False)
                if self.announce:
                    # The will is only for an unclean end; say goodbye ourselves.
                    await client.publish(self.status_topic, self._status("offline"), qos=1,
                                         retain=True)
                return
            # A lost connection surfaces in whichever task noticed first; report it as the
            # single MqttError the reconnect loop expects. Anything else is a bug: re-raise.
            mqtt_errors, others = errors.split(aiomqtt.MqttError)
            if others is not None or mqtt_errors is None:
                raise
            raise aiomqtt.MqttError(str(mqtt_errors.exceptions[0])) from None

    async def _until_stopped(self) -> None:
        await self._stopping.wait()
        raise _StoppingError

    async def _receiver(self, client: SafeClient) -> None:
        messages: Any = client.messages  # yields Received items (SafeClient._on_message)
        burst = 0
        while True:
            message: Received | None = client.queued()
            if message is None:
                # Nothing waiting: block (and notice a disconnect) the iterator's way.
                burst = 0
                message = await anext(messages)
                assert message is not None
            else:
                burst += 1
                if burst >= RECEIVE_BURST:
                    # Draining a backlog: let the other lane, the web side and the timers
                    # run between bursts (a handler that never suspends would starve them).
                    burst = 0
                    await asyncio.sleep(0)
            topic_name, payload = message
            await self._on_message(topic_name, payload)
