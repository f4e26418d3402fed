"""ScaipListener end to end on 127.0.0.1: a Python SIP client over UDP/TCP, and sipp."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import cast

import pytest

from devices.scaip import ScaipRequest, ScaipResponse, Snu, encode_mrq, parse_mrs
from devices.sip import (
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_response,
    parse_message,
)
from gateway.sip import ScaipListener

SIPP = shutil.which("sipp")
SCENARIOS = Path(__file__).parent / "sipp"
# Bounds for waiting on the network; a healthy run takes milliseconds. Not speed checks.
WAIT = 10.0


class Recorder:
    """A handler that records what it got and answers a configurable snu."""

    def __init__(self, snu: int = 0) -> None:
        self.snu = snu
        self.calls: list[tuple[ScaipRequest, SipRequest]] = []
        self.gate: asyncio.Event | None = None
        self.entered = asyncio.Event()
        self.error: Exception | None = None

    async def __call__(self, request: ScaipRequest, sip: SipRequest) -> int:
        self.calls.append((request, sip))
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return self.snu


def sip_message(
    body: bytes,
    *,
    user: str = "4711",
    call_id: str = "c1",
    branch: str = "z9hG4bK1",
    transport: str = "UDP",
    method: str = "MESSAGE",
    content_type: str = "application/scaip+xml",
) -> bytes:
    head = (
        f"{method} sip:trygg@127.0.0.1 SIP/2.0\r\n"
        f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch={branch}\r\n"
        f"From: <sip:{user}@127.0.0.1:5999>;tag=dev\r\n"
        "To: <sip:trygg@127.0.0.1>\r\n"
        f"Call-ID: {call_id}\r\n"
        f"CSeq: 1 {method}\r\n"
        "Max-Forwards: 70\r\n"
        f"Content-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


ALARM = encode_mrq(ref="r1", cid="4711", dty="0004", stc="0010")


class UdpClient(asyncio.DatagramProtocol):
    """A SIP peer over UDP that queues every parsed message it receives."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[SipRequest | SipResponse] = asyncio.Queue()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # The selector transport does not subclass DatagramTransport on 3.11.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        parsed = parse_message(data)
        assert isinstance(parsed, SipRequest | SipResponse), parsed
        self.inbox.put_nowait(parsed)

    async def next(self) -> SipRequest | SipResponse:
        return await asyncio.wait_for(self.inbox.get(), WAIT)

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.sendto(data)


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
async def listener(recorder: Recorder) -> AsyncIterator[ScaipListener]:
    async with ScaipListener(recorder, port=0, mrs_in_response={"4700"}) as running:
        yield running


@pytest.fixture
async def udp(listener: ScaipListener) -> AsyncIterator[UdpClient]:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(
        UdpClient, remote_addr=("127.0.0.1", listener.udp_port or 0)
    )
    yield client
    transport.close()


async def expect_mrs(client: UdpClient) -> ScaipResponse:
    """Read the listener's <mrs> MESSAGE, answer it 200 OK, return the parsed <mrs>."""
    request = await client.next()
    assert isinstance(request, SipRequest)
    assert request.method == "MESSAGE"
    assert request.content_type == "application/scaip+xml"
    client.send(build_response(200, request=request, to_tag="dev2"))
    mrs = parse_mrs(request.body)
    assert isinstance(mrs, ScaipResponse)
    return mrs


async def test_udp_alarm_is_handled_and_answered(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder
) -> None:
    udp.send(sip_message(ALARM))
    ok = await udp.next()
    assert isinstance(ok, SipResponse)
    assert ok.status == 200
    assert ok.header("Call-ID") == "c1"
    assert ";tag=" in (ok.header("To") or "")
    mrs = await expect_mrs(udp)
    assert (mrs.ref, mrs.snu) == ("r1", 0)
    [(scaip, sip)] = recorder.calls
    assert (scaip.cid, scaip.ref, scaip.dty, scaip.stc) == ("4711", "r1", "0004", "0010")
    assert sip.call_id == "c1"
    assert listener.stats.handled == 1


async def test_handler_snu_is_passed_through(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder
) -> None:
    recorder.snu = Snu.HOLD
    udp.send(sip_message(ALARM))
    assert isinstance(await udp.next(), SipResponse)
    assert (await expect_mrs(udp)).snu == Snu.HOLD


REFUSED = [
    (encode_mrq(ref="r1", cid="4711", dty="4"), "9999", Snu.WRONG_CONTENT, "cid_mismatch", "r1"),
    (b"<mrq><ref>r1</ref><cid>4711</cid></mrq>", "4711", Snu.MANDATORY_MISSING, "missing_tag",
     "r1"),
    (b"<mrq><ref>r1</ref><cid>", "4711", Snu.INVALID_FORMAT, "not_xml", "r1"),
    (b"<mrq><ref>r1</ref", "4711", Snu.INVALID_FORMAT, "not_xml", None),
    (b'<!DOCTYPE m [<!ENTITY a "b">]><mrq/>', "4711", Snu.INVALID_FORMAT, "forbidden_xml", None),
    (b"<mrq>" + b" " * 5000 + b"</mrq>", "4711", Snu.TOO_LONG, "oversize", None),
    (encode_mrq(ref="r-1", cid="4711", dty="4"), "4711", Snu.WRONG_CONTENT, "bad_field", None),
]


@pytest.mark.parametrize(("body", "user", "snu", "reason", "ref"), REFUSED)
async def test_refused_mrq_from_an_unverified_source_is_answered_in_the_200(
    listener: ScaipListener,
    udp: UdpClient,
    recorder: Recorder,
    body: bytes,
    user: str,
    snu: Snu,
    reason: str,
    ref: str | None,
) -> None:
    """No request of ours toward an address that never proved it receives (issue 17.5)."""
    udp.send(sip_message(body, user=user))
    ok = await udp.next()
    assert isinstance(ok, SipResponse)
    assert ok.status == 200
    mrs = parse_mrs(ok.body)
    assert isinstance(mrs, ScaipResponse)
    assert (mrs.ref, mrs.snu) == (ref, snu)
    assert recorder.calls == []
    assert listener.stats.rejects[reason] == 1
    assert listener.stats.mrs_sent == 0
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(udp.inbox.get(), 1.0)


@pytest.mark.parametrize(("body", "user", "snu", "reason", "ref"), REFUSED)
async def test_refused_mrq_from_a_verified_controller_gets_its_mrs_message(
    listener: ScaipListener,
    udp: UdpClient,
    recorder: Recorder,
    body: bytes,
    user: str,
    snu: Snu,
    reason: str,
    ref: str | None,
) -> None:
    udp.send(sip_message(ALARM, call_id="first", branch="z9hG4bKv"))
    assert isinstance(await udp.next(), SipResponse)
    assert (await expect_mrs(udp)).snu == Snu.OK  # answering our <mrs> verifies the source
    await asyncio.sleep(0.05)
    udp.send(sip_message(body, user=user))
    ok = await udp.next()
    assert isinstance(ok, SipResponse) and ok.status == 200 and ok.body == b""
    mrs = await expect_mrs(udp)
    assert (mrs.ref, mrs.snu) == (ref, snu)
    assert len(recorder.calls) == 1
    assert listener.stats.rejects[reason] == 1


async def test_malformed_sip_gets_400_with_a_reason(
    listener: ScaipListener, udp: UdpClient
) -> None:
    udp.send(sip_message(ALARM).replace(b"CSeq: 1 MESSAGE", b"CSeq: one"))
    response = await udp.next()
    assert isinstance(response, SipResponse)
    assert response.status == 400
    assert "CSeq" in response.reason
    assert listener.stats.rejects["sip_bad_cseq"] == 1


async def test_other_methods_and_media_types_are_refused(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder
) -> None:
    udp.send(sip_message(b"", method="INVITE", branch="z9hG4bKi"))
    invite = await udp.next()
    assert isinstance(invite, SipResponse)
    assert (invite.status, invite.header("Allow")) == (405, "MESSAGE, OPTIONS")
    udp.send(sip_message(b"hi", content_type="text/plain", branch="z9hG4bKt"))
    text = await udp.next()
    assert isinstance(text, SipResponse)
    assert text.status == 415
    udp.send(sip_message(b"", method="OPTIONS", branch="z9hG4bKo"))
    options = await udp.next()
    assert isinstance(options, SipResponse)
    assert options.status == 200
    assert recorder.calls == []


async def test_retransmission_does_not_call_the_handler_twice(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder
) -> None:
    udp.send(sip_message(ALARM))
    first = await udp.next()
    await expect_mrs(udp)
    udp.send(sip_message(ALARM))
    again = await udp.next()
    assert isinstance(first, SipResponse)
    assert isinstance(again, SipResponse)
    assert again.header("To") == first.header("To")
    assert len(recorder.calls) == 1
    assert listener.stats.retransmissions == 1


async def test_handler_exception_answers_not_treated_and_keeps_serving(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    recorder.error = RuntimeError("disk full")
    udp.send(sip_message(ALARM))
    assert isinstance(await udp.next(), SipResponse)
    assert (await expect_mrs(udp)).snu == Snu.NOT_TREATED
    assert listener.stats.handler_errors == 1
    assert "disk full" in caplog.text
    caplog.clear()  # the logged exception was the point of this test
    recorder.error = None
    udp.send(sip_message(ALARM, call_id="c2", branch="z9hG4bK2"))
    assert isinstance(await udp.next(), SipResponse)
    assert (await expect_mrs(udp)).snu == Snu.OK


async def test_handler_failures_are_logged_once_a_minute(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17.7: a fault per message is one log line a minute, not one per message."""
    recorder.error = RuntimeError("disk full")
    for n in range(20):
        udp.send(sip_message(ALARM, call_id=f"f{n}", branch=f"z9hG4bKf{n}"))
        assert isinstance(await udp.next(), SipResponse)
        assert (await expect_mrs(udp)).snu == Snu.NOT_TREATED
    assert listener.stats.handler_errors == 20
    assert len([r for r in caplog.records if r.exc_info]) == 1
    caplog.clear()  # the logged exception was the point of this test


async def test_saturated_handler_answers_busy(recorder: Recorder) -> None:
    recorder.gate = asyncio.Event()
    async with ScaipListener(recorder, port=0, max_concurrent=1) as listener:
        loop = asyncio.get_running_loop()
        transport, udp = await loop.create_datagram_endpoint(
            UdpClient, remote_addr=("127.0.0.1", listener.udp_port or 0)
        )
        try:
            udp.send(sip_message(ALARM, call_id="slow", branch="z9hG4bKs"))
            assert isinstance(await udp.next(), SipResponse)
            await asyncio.wait_for(recorder.entered.wait(), WAIT)
            udp.send(sip_message(ALARM, call_id="busy", branch="z9hG4bKb"))
            assert isinstance(await udp.next(), SipResponse)
            busy = await expect_mrs(udp)
            assert busy.snu == Snu.BUSY
            recorder.gate.set()
            assert (await expect_mrs(udp)).snu == Snu.OK
            assert len(recorder.calls) == 1
            assert listener.stats.rejects["busy"] == 1
        finally:
            transport.close()


async def test_mrs_in_the_200_ok_for_configured_controllers(
    listener: ScaipListener, udp: UdpClient, recorder: Recorder
) -> None:
    udp.send(sip_message(encode_mrq(ref="r9", cid="4700", dty="5"), user="4700"))
    ok = await udp.next()
    assert isinstance(ok, SipResponse)
    assert ok.status == 200
    mrs = parse_mrs(ok.body)
    assert isinstance(mrs, ScaipResponse)
    assert (mrs.ref, mrs.snu) == ("r9", 0)
    assert len(recorder.calls) == 1
    assert listener.stats.mrs_sent == 0


async def test_tcp_alarm_with_garbage_first(listener: ScaipListener, recorder: Recorder) -> None:
    assert listener.tcp_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", listener.tcp_port)
    try:
        writer.write(b"GET / HTTP/1.1\r\n\r\n" + sip_message(ALARM, transport="TCP"))
        framer = SipStreamReader()
        received: list[SipRequest | SipResponse] = []
        while len(received) < 2:
            data = await asyncio.wait_for(reader.read(65536), WAIT)
            assert data, "listener closed the connection"
            for item in framer.feed(data):
                assert isinstance(item, SipRequest | SipResponse)
                received.append(item)
        ok, mrs_request = received
        assert isinstance(ok, SipResponse)
        assert ok.status == 200
        assert isinstance(mrs_request, SipRequest)
        assert (mrs_request.header("Via") or "").startswith("SIP/2.0/TCP")
        writer.write(build_response(200, request=mrs_request, to_tag="d"))
        await writer.drain()
        mrs = parse_mrs(mrs_request.body)
        assert isinstance(mrs, ScaipResponse)
        assert (mrs.ref, mrs.snu) == ("r1", 0)
        assert len(recorder.calls) == 1
        assert listener.stats.rejects["sip_garbage"] == 1
    finally:
        writer.close()
        await writer.wait_closed()


async def test_listener_is_not_reentrant_and_is_reusable(recorder: Recorder) -> None:
    listener = ScaipListener(recorder, port=0)
    async with listener:
        with pytest.raises(RuntimeError):
            await listener.__aenter__()
    assert listener.udp_port is None
    async with listener:
        assert listener.udp_port is not None


# -- sipp, a real SIP peer -----------------------------------------------------------------


def _free_port() -> int:
    """A loopback port free for UDP and for TCP right now: sipp's ``-p`` binds the port in
    the transport it runs (a port only checked on UDP was once taken on TCP)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port: int = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port


# What sipp says when its local port was taken between our check and its bind.
_BIND_TAKEN = "Unable to bind main socket"


async def run_sipp(
    scenario: str, transport: str, port: int, cwd: Path, *, calls: int = 1,
    rate: float | None = None,
) -> tuple[int, str]:
    """Run ``calls`` sipp calls (at ``rate`` per second) with a global timeout; return
    (exit code, stderr tail). A local port taken before sipp could bind it (nothing was
    sent yet) is retried on another, twice at most."""
    for _ in range(3):
        code, log = await _sipp_once(scenario, transport, port, cwd, calls=calls, rate=rate)
        if code == 0 or _BIND_TAKEN not in log:
            break
        _clear_error_logs(cwd)
    return code, log


async def _sipp_once(
    scenario: str, transport: str, port: int, cwd: Path, *, calls: int,
    rate: float | None,
) -> tuple[int, str]:
    assert SIPP is not None
    process = await asyncio.create_subprocess_exec(
        SIPP,
        f"127.0.0.1:{port}",
        "-sf", str(SCENARIOS / scenario),
        "-t", transport,  # u1 = UDP, t1 = one TCP connection
        "-m", str(calls),
        *(("-r", str(rate)) if rate is not None else ()),
        "-i", "127.0.0.1",
        "-p", str(_free_port()),
        "-timeout", "20s",
        "-timeout_error",
        "-nostdin",
        "-trace_err",
        cwd=cwd,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    errors = _sipp_error_logs(cwd)
    return process.returncode or 0, stderr.decode(errors="replace")[-500:] + errors[-1500:]


def _clear_error_logs(cwd: Path) -> None:
    for stale in cwd.glob("*_errors.log"):
        stale.unlink()


def _sipp_error_logs(cwd: Path) -> str:
    """What sipp wrote with -trace_err, for the assertion message."""
    return "".join(p.read_text(errors="replace") for p in cwd.glob("*_errors.log"))


sipp_required = pytest.mark.skipif(
    SIPP is None, reason="sipp not installed (Debian/Ubuntu package: sip-tester)"
)


@sipp_required
@pytest.mark.network
@pytest.mark.parametrize(
    ("scenario", "transport", "cid"),
    [
        ("scaip_uac_udp.xml", "u1", "4711"),
        ("scaip_uac_tcp.xml", "t1", "4711"),
        ("scaip_uac_mrs_in_200.xml", "u1", "4712"),
        ("scaip_uac_mrs_in_200.xml", "t1", "4712"),
    ],
)
async def test_sipp_controller(
    recorder: Recorder, tmp_path: Path, scenario: str, transport: str, cid: str
) -> None:
    async with ScaipListener(recorder, port=0, mrs_in_response={"4712"}) as listener:
        port = listener.udp_port if transport == "u1" else listener.tcp_port
        assert port is not None
        code, log = await run_sipp(scenario, transport, port, tmp_path)
        assert code == 0, log
    [(scaip, sip)] = recorder.calls
    assert (scaip.cid, scaip.ref, scaip.stc) == (cid, "sipp1", "0010")
    assert sip.from_user == cid


@sipp_required
@pytest.mark.network
async def test_sipp_fails_when_the_alarm_is_not_stored(recorder: Recorder, tmp_path: Path) -> None:
    # Proves the scenario really checks the <mrs>: snu 5 must fail sipp's check.
    recorder.snu = Snu.NOT_TREATED
    async with ScaipListener(recorder, port=0) as listener:
        assert listener.udp_port is not None
        code, _ = await run_sipp("scaip_uac_udp.xml", "u1", listener.udp_port, tmp_path)
    assert code != 0
    assert len(recorder.calls) == 1
