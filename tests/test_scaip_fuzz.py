"""A bounded fuzzer for SCAIP over SIP against a real gateway (issue 17, "Fuzzing").

Each example starts a gateway and throws a generated mix at its listener, over UDP or one
TCP connection: valid alarms (some of them resent) interleaved with garbage (random bytes,
random SIP, mutated <mrq>s, oversize and malformed messages). The invariants:

- no exception escapes (a logged exception fails the test, tests/conftest.py);
- the gateway stays healthy (journal writable, listener serving);
- every valid alarm is answered snu 0 and stored exactly once. Like a real controller, the
  fuzzing client resends an alarm that got no answer (garbage may have broken the TCP framing
  it travelled in, or a datagram was dropped) in a new transaction, a few times.

The longer run (100,000+ inputs, sans-I/O and against a listener) is bench/fuzz_scaip.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devices.scaip import ScaipResponse, encode_mrq, parse_mrs
from devices.sip import (
    SipError,
    SipMessage,
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_response,
    parse_message,
)
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small

pytestmark = [pytest.mark.network, pytest.mark.slow]

CID = "4711"
WAIT = 3.0
ROUNDS = 4  # sends of an unanswered alarm, first included


def sip(body: bytes, *, call: str, transport: str, user: str = CID, method: str = "MESSAGE",
        content_type: str = "application/scaip+xml", extra: str = "") -> bytes:
    head = (f"{method} sip:trygg@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK{call}\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag=f\r\nTo: <sip:trygg@127.0.0.1>\r\n"
            f"Call-ID: {call}\r\nCSeq: 1 {method}\r\n{extra}"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@dataclass(frozen=True)
class Valid:
    ref: str
    dty: str
    resend: bool  # sent twice in a row, in two transactions


@dataclass(frozen=True)
class Garbage:
    kind: str
    data: bytes


_DTY = st.sampled_from(["0004", "0003", "0005", "0023", "0033", "0014"])


def _mutate(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in flips:
        if out:
            out[index % len(out)] = value
    return bytes(out)


@st.composite
def garbage(draw: st.DrawFn) -> Garbage:
    kind = draw(st.sampled_from(
        ["bytes", "sip_random_body", "mutated_mrq", "mutated_sip", "lower_case", "oversize",
         "many_headers", "wrong_from", "crlf"]))
    ref = f"g{draw(st.integers(100, 10**6))}"
    mrq = encode_mrq(ref=ref, cid=CID, dty=draw(_DTY), stc="0010")
    flips = draw(st.lists(st.tuples(st.integers(0, 4000), st.integers(0, 255)), max_size=6))
    if kind == "bytes":
        data = draw(st.binary(max_size=300))
    elif kind == "sip_random_body":
        data = sip(draw(st.binary(max_size=200)), call=ref, transport="T")
    elif kind == "mutated_mrq":
        data = sip(_mutate(mrq, flips), call=ref, transport="T")
    elif kind == "mutated_sip":
        data = _mutate(sip(mrq, call=ref, transport="T"), flips)
    elif kind == "lower_case":
        data = sip(mrq, call=ref, transport="T", method="message")
    elif kind == "oversize":
        data = sip(mrq, call=ref, transport="T", extra="X-Pad: " + "p" * 17_000 + "\r\n")
    elif kind == "many_headers":
        data = sip(mrq, call=ref, transport="T",
                   extra="".join(f"X-{i}: {i}\r\n" for i in range(70)))
    elif kind == "wrong_from":
        data = sip(mrq, call=ref, transport="T", user="666")
    else:
        data = b"\r\n\r\n"
    return Garbage(kind, data)


@st.composite
def mixes(draw: st.DrawFn) -> list[Valid | Garbage]:
    count = draw(st.integers(1, 8))
    valid = [Valid(f"v{n}", draw(_DTY), draw(st.booleans())) for n in range(count)]
    junk = draw(st.lists(garbage(), max_size=24))
    items: list[Valid | Garbage] = [*valid, *junk]
    return draw(st.permutations(items))


@dataclass
class Client:
    """A controller that sends and collects every <mrs> by ref (answering MESSAGEs)."""

    transport: str
    answers: dict[str, list[int]] = field(default_factory=dict)
    _send: object = None

    def take(self, item: SipMessage | SipError, reply: object) -> None:
        body = b""
        if isinstance(item, SipResponse) and item.status == 200:
            body = item.body
        elif isinstance(item, SipRequest) and item.method == "MESSAGE":
            body = item.body
            assert callable(reply)
            reply(build_response(200, request=item, to_tag="fz"))
        if body:
            mrs = parse_mrs(body)
            if isinstance(mrs, ScaipResponse) and mrs.ref is not None:
                self.answers.setdefault(mrs.ref, []).append(mrs.snu)


@contextlib.asynccontextmanager
async def connection(client: Client, port: int) -> AsyncIterator[object]:
    """A send function over UDP or a fresh TCP connection; received items go to client."""
    loop = asyncio.get_running_loop()
    if client.transport == "UDP":

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                client.take(parse_message(data), send)

        udp, _ = await loop.create_datagram_endpoint(Protocol, remote_addr=("127.0.0.1", port))
        send = udp.sendto
        try:
            yield send
        finally:
            udp.close()
        return
    reader, writer = await asyncio.open_connection("127.0.0.1", port)

    async def pump() -> None:
        framer = SipStreamReader()
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                for item in framer.feed(data):
                    client.take(item, writer.write)

    task = asyncio.create_task(pump(), name="fuzz tcp reader")
    try:
        yield writer.write
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        writer.close()


def answered(client: Client, items: list[Valid]) -> Callable[[], bool]:
    """Whether every one of ``items`` has been answered snu 0."""
    return lambda: all(0 in client.answers.get(v.ref, []) for v in items)


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and not predicate():
        await asyncio.sleep(0.02)


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mix=mixes())
async def test_valid_alarms_among_garbage_are_answered_and_stored_exactly_once(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path,
    transport: str, mix: list[Valid | Garbage],
) -> None:
    data_dir = tmp_path / uuid.uuid4().hex[:8]
    org = OrgStore(data_dir / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo(CID, "alarm_unit", "r-a"))
    org.close()
    scaip = {"port": 0, "datagrams_per_s": 10_000}
    async with make_gateway(mosquitto, data_dir=data_dir, scaip=scaip) as gw:
        assert gw.scaip is not None
        port = gw.scaip.udp_port if transport == "UDP" else gw.scaip.tcp_port
        assert port is not None
        t = "UDP" if transport == "UDP" else "TCP"
        client = Client(transport)
        valid = [item for item in mix if isinstance(item, Valid)]
        calls = 0

        def alarm(item: Valid) -> bytes:
            nonlocal calls
            calls += 1
            body = encode_mrq(ref=item.ref, cid=CID, dty=item.dty, stc="0010")
            return sip(body, call=f"{item.ref}c{calls}", transport=t)

        async with connection(client, port) as send:
            assert callable(send)
            for item in mix:
                if isinstance(item, Garbage):
                    send(item.data.replace(b"SIP/2.0/T ", f"SIP/2.0/{t} ".encode()))
                else:
                    send(alarm(item))
                    if item.resend:
                        send(alarm(item))
                await asyncio.sleep(0)
            await _until(answered(client, valid), WAIT)
        for _ in range(ROUNDS - 1):
            missing = [v for v in valid if 0 not in client.answers.get(v.ref, [])]
            if not missing:
                break
            async with connection(client, port) as send:
                assert callable(send)
                for item in missing:
                    send(alarm(item))
                await _until(answered(client, missing), WAIT)
        for item in valid:
            assert 0 in client.answers.get(item.ref, []), (item, client.answers)
            stored = [a for a in gw.core.alarms.values()
                      if a.ref == item.ref or any(r.ref == item.ref for r in a.attached)]
            assert len(stored) == 1, (item, stored)
        health = gw.health()
        assert health["status"] == "ok", health
        assert gw.scaip.stats.handler_errors == 0
