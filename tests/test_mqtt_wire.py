"""The broker link's batched socket reads and writes (``gateway.mqtt._Wire``).

paho asks for a packet's bytes a few at a time; the wire hands them out of one larger read,
and sends what paho wrote in one call. Unit tests over a socket pair, then the whole link on
each broker with a read burst of one packet, so that every packet after the first of a read
must be picked up from the buffer rather than from a socket that will not wake the loop.
"""

from __future__ import annotations

import asyncio
import gc
import socket
import uuid
import weakref
from collections.abc import Iterator
from typing import Any

import aiomqtt
import pytest

from gateway import heap, mqtt
from gateway.mqtt import SafeClient, _Wire


class _PahoLike:
    """What _Wire takes from paho: ``_sock_recv``/``_sock_send`` on the socket."""

    def __init__(self, sock: socket.socket, send_limit: int | None = None) -> None:
        self._sock = sock
        self.send_limit = send_limit

    def _sock_recv(self, size: int) -> bytes:
        return self._sock.recv(size)

    def _sock_send(self, buf: bytes | bytearray) -> int:
        limit = len(buf) if self.send_limit is None else self.send_limit
        return self._sock.send(bytes(buf[:limit]))


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_reads_hand_out_a_larger_read_in_the_pieces_asked_for(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    client = _PahoLike(ours)
    wire = _Wire(client, ours)
    assert client._sock_recv == wire.recv  # the instance's reads go through the wire
    peer.sendall(b"\x30\x05hello\x40\x02\x00\x01")
    assert wire.recv(1) == b"\x30"
    assert wire.incoming == b"\x05hello\x40\x02\x00\x01"  # one read took all of it
    assert wire.recv(1) == b"\x05"
    assert wire.recv(5) == b"hello"
    assert wire.recv(1) == b"\x40"
    assert wire.recv(10) == b"\x02\x00\x01"  # no more than is there
    assert not wire.incoming
    with pytest.raises(BlockingIOError):
        wire.recv(1)  # nothing buffered, nothing in the socket: paho's "try again"
    peer.close()
    assert wire.recv(1) == b""  # end of stream, as paho's own read says it


def test_a_second_wire_reads_through_paho_not_through_the_first(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    client = _PahoLike(ours)
    first = _Wire(client, ours)
    peer.sendall(b"abcdef")
    assert first.recv(1) == b"a"  # "bcdef" stays in the first (old connection's) buffer
    second = _Wire(client, ours)
    peer.sendall(b"xyz")
    assert second.recv(3) == b"xyz"  # not the old connection's bytes


def test_writes_are_sent_in_one_call_and_what_is_not_taken_stays(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, peer = pair
    client = _PahoLike(ours, send_limit=4)
    wire = _Wire(client, ours)
    assert client._sock_send(b"\x40\x02\x00\x01") == 4  # taken in full, buffered
    assert client._sock_send(b"\x40\x02\x00\x02") == 4
    assert not wire.flush()  # the socket took 4 of 8 bytes
    assert wire.outgoing == b"\x40\x02\x00\x02"
    assert wire.flush()
    assert peer.recv(100) == b"\x40\x02\x00\x01\x40\x02\x00\x02"
    assert wire.flush()  # nothing left: nothing sent


async def test_every_packet_of_a_burst_arrives_when_the_loop_reads_one_at_a_time(
    broker: tuple[str, int], prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mqtt, "READ_BURST", 1)
    host, port = broker
    count = 300
    topic = f"{prefix}/wire/telemetry"
    received: list[Any] = []
    async with SafeClient(host, port, identifier=f"wire-{uuid.uuid4().hex[:8]}") as sub:
        await sub.subscribe(topic, qos=1)
        async with aiomqtt.Client(host, port, identifier=f"pub-{uuid.uuid4().hex[:8]}") as pub:
            await asyncio.gather(*(pub.publish(topic, b"%d" % n, qos=1)
                                   for n in range(count)))

        async def take() -> None:
            async for message in sub.messages:
                received.append(message)
                if len(received) == count:
                    return

        # A bound, not a speed claim: without the wire's re-read the rest never arrives.
        await asyncio.wait_for(take(), 30)
    assert [payload for _, payload in received] == [b"%d" % n for n in range(count)]


class _Node:
    other: _Node | None = None


def test_settle_freezes_the_started_heap_and_collects_the_young_less_often() -> None:
    before = gc.get_threshold()
    try:
        cycle = _Node()
        cycle.other = cycle  # start-up garbage: collected before the freeze, not frozen
        gone = weakref.ref(cycle)
        del cycle
        heap.settle()
        assert gone() is None
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold()[0] == heap.YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


async def test_a_clean_disconnect_still_reaches_the_broker(
    broker: tuple[str, int], prefix: str
) -> None:
    """paho closes the socket right after it wrote DISCONNECT into the wire's buffer: the
    buffer must go out first, or the broker sees a dropped connection and sends the will."""
    host, port = broker
    will_topic = f"{prefix}/wire/will"
    async with aiomqtt.Client(host, port, identifier=f"watch-{uuid.uuid4().hex[:8]}") as watch:
        await watch.subscribe(will_topic, qos=1)
        async with SafeClient(host, port, identifier=f"wire-{uuid.uuid4().hex[:8]}",
                              will=aiomqtt.Will(will_topic, b"dropped", qos=1)):
            pass

        async def first() -> Any:
            async for message in watch.messages:
                return message.payload
            return None

        # An abrupt close is reported at once on loopback; a clean one never. A bound
        # for the negative: the will would arrive well within it.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(first(), 2.0)
