"""The SIP listener's edges over real sockets: reflection, per-source limits, idle TCP, and
the smaller conformance items (issues 17.5 and 18.5).

Sources are told apart by IP address, so the tests send from several loopback addresses
(127.0.0.x: Linux routes the whole of 127/8 to lo).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from devices.scaip import ScaipResponse, Snu, encode_mrq, parse_mrs
from devices.sip import (
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_response,
    parse_message,
)
from gateway.sip import T1, ScaipListener
from gateway.sipguard import UNVERIFIED_SLACK_BYTES
from tests.test_scaip_listener import WAIT, Recorder, run_sipp, sip_message, sipp_required


class Peer:
    """A raw UDP socket on a loopback address of its own, counting what comes back."""

    def __init__(self, ip: str, port: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((ip, 0))
        self.sock.setblocking(False)
        self.target = ("127.0.0.1", port)
        self.sent_bytes = 0
        self.received: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)
        self.sent_bytes += len(data)

    async def drain(self, quiet: float = 1.0, limit: float = WAIT) -> list[bytes]:
        """Collect datagrams until ``quiet`` seconds pass without one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        last = loop.time()
        while loop.time() < deadline and loop.time() - last < quiet:
            try:
                self.received.append(self.sock.recv(65536))
                last = loop.time()
            except BlockingIOError:
                await asyncio.sleep(0.01)
        return self.received

    async def next(self) -> SipRequest | SipResponse:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while loop.time() < deadline:
            try:
                data = self.sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.005)
                continue
            self.received.append(data)
            parsed = parse_message(data)
            assert isinstance(parsed, SipRequest | SipResponse), parsed
            return parsed
        raise TimeoutError

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def listener(recorder: Recorder) -> AsyncIterator[ScaipListener]:
    async with ScaipListener(recorder, host="127.0.0.1", port=0) as running:
        yield running


@contextlib.contextmanager
def peer(listener: ScaipListener, ip: str) -> Iterator[Peer]:
    assert listener.udp_port is not None
    client = Peer(ip, listener.udp_port)
    try:
        yield client
    finally:
        client.close()


def garbage(n: int) -> bytes:
    return sip_message(b"\x00garbage" * 4, call_id=f"g{n}", branch=f"z9hG4bKg{n}")


def alarm(n: int, cid: str = "4711") -> bytes:
    body = encode_mrq(ref=f"r{n}", cid=cid, dty="0004", stc="0010")
    return sip_message(body, user=cid, call_id=f"a{n}", branch=f"z9hG4bKa{n}")


# -- reflection ----------------------------------------------------------------------------


async def test_garbage_flood_reflects_less_than_it_costs(
    listener: ScaipListener, recorder: Recorder
) -> None:
    """500 garbage MESSAGEs: no <mrs> MESSAGE, no retransmission, bytes out <= bytes in."""
    with peer(listener, "127.0.0.11") as attacker:
        for n in range(500):
            attacker.send(garbage(n))
        back = await attacker.drain(quiet=2 * T1 * 4)
    requests = [m for m in map(parse_message, back) if isinstance(m, SipRequest)]
    assert requests == [], "no request of ours toward an unverified address"
    assert sum(map(len, back)) <= attacker.sent_bytes
    assert len(back) <= 500
    assert listener.stats.mrs_sent == 0
    assert recorder.calls == []
    assert listener.guard.stats.rate_limited > 0


async def test_valid_alarms_from_an_unverified_source_are_answered_once_never_retransmitted(
    listener: ScaipListener, recorder: Recorder
) -> None:
    with peer(listener, "127.0.0.12") as source:
        for n in range(20):
            source.send(alarm(n))
        # Nobody answers our <mrs> MESSAGEs: an unverified source gets them once.
        back = await source.drain(quiet=3 * T1 * 2)
    parsed = [parse_message(d) for d in back]
    oks = [m for m in parsed if isinstance(m, SipResponse) and m.status == 200]
    mrs = [m for m in parsed if isinstance(m, SipRequest)]
    assert len(oks) == 20
    assert len(mrs) <= 20 and len({m.branch for m in mrs}) == len(mrs), "no retransmission"
    assert sum(map(len, back)) <= source.sent_bytes + UNVERIFIED_SLACK_BYTES
    assert len(recorder.calls) == 20


async def test_a_verified_controller_gets_retransmissions(
    listener: ScaipListener, recorder: Recorder
) -> None:
    with peer(listener, "127.0.0.13") as controller:
        controller.send(alarm(1))
        assert isinstance(await controller.next(), SipResponse)
        mrs = await controller.next()
        assert isinstance(mrs, SipRequest)
        controller.send(build_response(200, request=mrs, to_tag="c"))  # verifies the source
        await asyncio.sleep(0.1)
        assert listener.guard.is_verified("127.0.0.13", time.monotonic())
        controller.send(alarm(2))
        assert isinstance(await controller.next(), SipResponse)
        first = await controller.next()
        again = await controller.next()  # not answered: retransmitted after T1
        assert isinstance(first, SipRequest) and isinstance(again, SipRequest)
        assert first.branch == again.branch
        controller.send(build_response(200, request=again, to_tag="c"))
    assert len(recorder.calls) == 2


async def test_a_flood_from_one_source_does_not_lock_out_another(
    listener: ScaipListener, recorder: Recorder
) -> None:
    with peer(listener, "127.0.0.14") as attacker, peer(listener, "127.0.0.15") as controller:

        async def flood() -> None:
            # Paced in bursts, so that what is measured is the listener's limit, not the
            # kernel's receive buffer.
            for burst in range(100):
                for n in range(20):
                    attacker.send(alarm(10_000 + burst * 20 + n, cid="4999"))
                await asyncio.sleep(0.005)

        flooding = asyncio.create_task(flood())
        await asyncio.sleep(0.05)
        controller.send(alarm(1))
        answer = await controller.next()
        await flooding
        assert isinstance(answer, SipResponse) and answer.status == 200
        mrs = await controller.next()
        assert isinstance(mrs, SipRequest)
        parsed = parse_mrs(mrs.body)
        assert isinstance(parsed, ScaipResponse) and parsed.snu == Snu.OK
    assert listener.stats.rejects["rate_limited"] > 1000
    assert any(scaip.cid == "4711" for scaip, _ in recorder.calls)


# -- TCP -----------------------------------------------------------------------------------


async def _connect(port: int, ip: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))


async def _closed_by_server(reader: asyncio.StreamReader, timeout: float = WAIT) -> bool:
    try:
        data = await asyncio.wait_for(reader.read(65536), timeout)
    except (TimeoutError, ConnectionError):
        return False
    return data == b""


async def _tcp_alarm(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int
) -> ScaipResponse:
    writer.write(alarm(n).replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))
    framer = SipStreamReader()
    got: list[object] = []
    while len(got) < 2:
        data = await asyncio.wait_for(reader.read(65536), WAIT)
        assert data, "closed"
        got += framer.feed(data)
    ok, request = got
    assert isinstance(ok, SipResponse) and isinstance(request, SipRequest)
    writer.write(build_response(200, request=request, to_tag="t"))
    mrs = parse_mrs(request.body)
    assert isinstance(mrs, ScaipResponse)
    return mrs


async def test_idle_connections_of_one_host_do_not_push_out_a_controller(
    recorder: Recorder,
) -> None:
    """260 idle connections from one host (issue 17.5): at most 8 are taken; the
    controller's connection stays and keeps working."""
    async with ScaipListener(recorder, port=0, max_connections=32) as listener:
        assert listener.tcp_port is not None
        controller = await _connect(listener.tcp_port, "127.0.0.21")
        assert (await _tcp_alarm(*controller, 1)).snu == Snu.OK
        idle = []
        for _ in range(260):
            with contextlib.suppress(OSError):
                idle.append(await _connect(listener.tcp_port, "127.0.0.22"))
        await asyncio.sleep(0.2)
        assert listener.guard.connections("127.0.0.22") <= 8
        assert listener.stats.rejects["too_many_connections_from_source"] >= 252
        assert (await _tcp_alarm(*controller, 2)).snu == Snu.OK
        # Hosts that each stay under the per-source cap fill the listener: the newest
        # push out the idle unproven ones, never the controller.
        for n in range(40):
            with contextlib.suppress(OSError):
                idle.append(await _connect(listener.tcp_port, f"127.0.1.{n}"))
        await asyncio.sleep(0.2)
        assert listener.stats.connections_evicted > 0
        assert (await _tcp_alarm(*controller, 3)).snu == Snu.OK
        for _, writer in [controller, *idle]:
            writer.close()
    assert len(recorder.calls) == 3


async def test_idle_and_dribbling_connections_are_closed(recorder: Recorder) -> None:
    async with ScaipListener(recorder, port=0, unproven_idle_s=0.5) as listener:
        assert listener.tcp_port is not None
        silent_reader, silent = await _connect(listener.tcp_port, "127.0.0.31")
        drip_reader, drip = await _connect(listener.tcp_port, "127.0.0.32")

        async def dribble() -> None:
            for byte in b"MESSAGE sip:x SIP/2.0\r\nVia: x\r\n":
                if drip.is_closing():
                    return
                drip.write(bytes([byte]))
                await asyncio.sleep(0.1)

        dribbler = asyncio.create_task(dribble())
        assert await _closed_by_server(silent_reader)
        assert await _closed_by_server(drip_reader)
        dribbler.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await dribbler
        assert listener.stats.connections_idle_closed >= 2
        silent.close()
        drip.close()


# -- issue 18.5 over both transports -------------------------------------------------------


def _variants() -> list[tuple[str, bytes, int]]:
    oversize = alarm(1).replace(b"Max-Forwards: 70", b"X-Pad: " + b"p" * (20 * 1024))
    many = alarm(2).replace(b"Max-Forwards: 70",
                            b"\r\n".join(f"X-H{i}: {i}".encode() for i in range(80)))
    lower = alarm(3).replace(b"MESSAGE sip:", b"message sip:").replace(
        b"CSeq: 1 MESSAGE", b"CSeq: 1 message")
    return [("oversize", oversize, 513), ("many_headers", many, 400), ("lower_case", lower, 405)]


@pytest.mark.parametrize(("name", "data", "status"), _variants())
async def test_refusals_are_answered_over_udp(
    listener: ScaipListener, recorder: Recorder, name: str, data: bytes, status: int
) -> None:
    with peer(listener, "127.0.0.41") as client:
        client.send(data)
        answer = await client.next()
    assert isinstance(answer, SipResponse) and answer.status == status, name
    assert recorder.calls == []


@pytest.mark.parametrize(("name", "data", "status"), _variants())
async def test_refusals_are_answered_over_tcp(
    listener: ScaipListener, recorder: Recorder, name: str, data: bytes, status: int
) -> None:
    assert listener.tcp_port is not None
    reader, writer = await _connect(listener.tcp_port, "127.0.0.42")
    try:
        writer.write(data.replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP") + b"\r\n\r\n")
        framer = SipStreamReader()
        answers: list[object] = []
        while not answers:
            chunk = await asyncio.wait_for(reader.read(65536), WAIT)
            assert chunk, "closed without an answer"
            answers += framer.feed(chunk)
        assert isinstance(answers[0], SipResponse) and answers[0].status == status, name
    finally:
        writer.close()
    assert recorder.calls == []


async def test_a_cid_in_the_from_display_name_does_not_pass(
    listener: ScaipListener, recorder: Recorder
) -> None:
    spoofed = sip_message(encode_mrq(ref="s1", cid="4711", dty="4"), user="666")
    spoofed = spoofed.replace(b"From: <sip:666@", b'From: "sip:4711@127.0.0.1" <sip:666@')
    with peer(listener, "127.0.0.43") as client:
        client.send(spoofed)
        answer = await client.next()
    assert isinstance(answer, SipResponse)
    mrs = parse_mrs(answer.body)
    assert isinstance(mrs, ScaipResponse)
    assert (mrs.ref, mrs.snu) == ("s1", Snu.WRONG_CONTENT)
    assert recorder.calls == []


async def test_another_source_cannot_answer_for_a_transaction(
    listener: ScaipListener, recorder: Recorder
) -> None:
    """The same branch and Call-ID from another address is another transaction."""
    with peer(listener, "127.0.0.51") as first, peer(listener, "127.0.0.52") as second:
        first.send(alarm(1, cid="4999"))
        assert isinstance(await first.next(), SipResponse)
        second.send(alarm(1))  # same Call-ID "a1" and branch, another controller
        answer = await second.next()
        assert isinstance(answer, SipResponse)
        assert answer.header("From") == "<sip:4711@127.0.0.1:5999>;tag=dev"
    assert sorted(scaip.cid for scaip, _ in recorder.calls) == ["4711", "4999"]


@sipp_required
@pytest.mark.network
async def test_sipp_garbage_peer_gets_one_answer_each_and_no_reflection(
    recorder: Recorder, tmp_path: Path
) -> None:
    """A real SIP peer sends 60 garbage MESSAGEs: 60 answers, no request of ours, no
    retransmission, and fewer bytes back than it sent (issue 17.5)."""
    async with ScaipListener(recorder, port=0) as listener:
        assert listener.udp_port is not None
        code, log = await run_sipp("scaip_uac_garbage.xml", "u1", listener.udp_port, tmp_path,
                                   calls=60, rate=10)
        assert code == 0, log
        stats = listener.stats
    assert stats.mrs_sent == 0 and recorder.calls == []
    assert stats.datagrams_sent == stats.datagrams_received == 60
    assert stats.bytes_sent < stats.bytes_received
