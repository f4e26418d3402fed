"""SCAIP conformance corpus: each case (message -> expected snu / SIP status -> effect) sent
over UDP and over TCP to the real listener of a real gateway (issue 18).

A case is run in order on one gateway per transport; between cases every open alarm is
closed, so each starts from a clean home. The table of case -> expected -> got is written
to ``$TRYGG_CONFORMANCE_OUT`` (markdown) when that variable is set, for the closing note:

    TRYGG_CONFORMANCE_OUT=/tmp/conformance.md .venv/bin/pytest tests/test_scaip_conformance.py
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from alarms.events import AcceptRequested, CloseRequested
from alarms.model import AlarmType, Hop
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
from gateway.errors import RefusedError
from gateway.org import DeviceInfo, OrgStore
from gateway.runtime import Gateway
from gateway.views import alarm_json
from tests.conftest import GatewayFactory, seed_small

pytestmark = pytest.mark.network

WAIT = 10.0
QUIET = 1.0  # how long to listen for something that must not come
GEO = {"geo": "59.329300,18.068600", "tim": "2024-03-18T11:25:37+01",
       "gga": "$GPGGA,102537.00,5919.758,N,01804.116,E,1,08,0.9,45.0,M,24.0,M,,*5D"}


@pytest.fixture(autouse=True)
def _controllers(tmp_path: Path) -> None:
    """Controller 4711 protects r-a (team-a), 4712 r-b (team-b); 4713 is not provisioned."""
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo("4711", "alarm_unit", "r-a", model="SCAIP controller"))
    org.put_device(DeviceInfo("4712", "alarm_unit", "r-b", model="SCAIP controller"))
    org.close()


# -- a controller over UDP or TCP ----------------------------------------------------------


@dataclass
class Answer:
    """What the listener answered: the SIP status and, if any, the <mrs>."""

    status: int
    snu: int | None = None
    ref: str | None = None
    extra: list[SipMessage] = field(default_factory=list)

    def __str__(self) -> str:
        if self.status != 200 or self.snu is None:
            return f"SIP {self.status}"
        return f"snu {self.snu}" + (f" ref {self.ref}" if self.ref else "")


class Controller:
    """A SCAIP controller: sends a MESSAGE, takes the 200 and the <mrs> (answering it)."""

    def __init__(self, transport: str) -> None:
        self.transport = transport
        self.inbox: asyncio.Queue[SipMessage | SipError] = asyncio.Queue()
        self._send: Callable[[bytes], None] = lambda _: None
        self._close: Callable[[], None] = lambda: None
        self._numbers = itertools.count(1)

    @contextlib.asynccontextmanager
    async def connected(self, port: int) -> AsyncIterator[Controller]:
        loop = asyncio.get_running_loop()
        if self.transport == "UDP":
            inbox = self.inbox

            class Protocol(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
                    inbox.put_nowait(parse_message(data))

            udp, _ = await loop.create_datagram_endpoint(
                Protocol, remote_addr=("127.0.0.1", port))
            self._send = udp.sendto
            self._close = udp.close
            try:
                yield self
            finally:
                udp.close()
            return
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self._send = writer.write

        async def pump() -> None:
            framer = SipStreamReader()
            while data := await reader.read(65536):
                for item in framer.feed(data):
                    self.inbox.put_nowait(item)

        task = asyncio.create_task(pump(), name="conformance tcp reader")
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def ref(self) -> str:
        """A ref of its own for every case: letters and digits, like the message model."""
        return f"{self.transport[0]}{next(self._numbers)}"

    def message(self, body: bytes, *, user: str = "4711", call: str | None = None,
                method: str = "MESSAGE", content_type: str = "application/scaip+xml",
                from_header: str | None = None, extra_headers: str = "") -> bytes:
        call = call or f"call-{self.ref()}"
        head = (
            f"{method} sip:trygg@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{self.transport} 127.0.0.1:5999;branch=z9hG4bK{call}\r\n"
            f"From: {from_header or f'<sip:{user}@127.0.0.1:5999>'};tag=ctl\r\n"
            "To: <sip:trygg@127.0.0.1>\r\n"
            f"Call-ID: {call}\r\n"
            f"CSeq: 1 {method}\r\n"
            f"{extra_headers}"
            f"Content-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def _next(self, timeout: float = WAIT) -> SipMessage | SipError:
        return await asyncio.wait_for(self.inbox.get(), timeout)

    async def exchange(self, data: bytes) -> Answer:
        """Send; return the final answer and the <mrs> (from the 200 or a MESSAGE)."""
        self._send(data)
        while True:
            first = await self._next()
            if isinstance(first, SipResponse):
                break

        if first.status != 200:
            return Answer(first.status)
        if first.body:
            return _answer(first.status, first.body)
        while True:
            request = await self._next()
            if isinstance(request, SipRequest) and request.method == "MESSAGE":
                break

        self._send(build_response(200, request=request, to_tag="ctl"))
        return _answer(200, request.body)

    async def silence(self) -> list[SipMessage | SipError]:
        """Whatever arrives within QUIET seconds (nothing, when nothing is owed)."""
        got: list[SipMessage | SipError] = []
        with contextlib.suppress(TimeoutError):
            while True:
                got.append(await self._next(QUIET))
        return got


def _answer(status: int, body: bytes) -> Answer:
    mrs = parse_mrs(body)
    assert isinstance(mrs, ScaipResponse), mrs
    return Answer(status, mrs.snu, mrs.ref)


# -- effects -------------------------------------------------------------------------------


@dataclass
class Ctx:
    gw: Gateway
    ctl: Controller
    before: set[str] = field(default_factory=set)

    def mark(self) -> None:
        self.before = set(self.gw.core.alarms)

    def new(self) -> list[Any]:
        return [a for i, a in self.gw.core.alarms.items() if i not in self.before]

    def effect(self) -> str:
        """The new alarms since ``mark``, as "alarm <type> p<priority>" ..."""
        new = self.new()
        if not new:
            return "no alarm"
        return ", ".join(f"alarm {a.type.value} p{a.priority}" for a in new)

    def open_care(self, device: str = "4711") -> Any:
        [alarm] = [a for a in self.gw.core.open_from_device(device)
                   if a.type not in (AlarmType.TECHNICAL, AlarmType.TEST)]
        return alarm

    async def settle(self) -> None:
        """Close every open alarm, as staff would."""
        for alarm in self.gw.core.open_in_order():
            staff = "anna" if alarm.team_id == "team-a" else "cleo"
            with contextlib.suppress(RefusedError):
                await self.gw.act(AcceptRequested(alarm.id, staff))
            cause = "tekniskt fel" if alarm.type is AlarmType.TECHNICAL else "hjälp given"
            with contextlib.suppress(RefusedError):
                await self.gw.act(CloseRequested(alarm.id, staff, cause))


def mrq(ref: str, *, cid: str = "4711", dty: str = "0004", stc: str | None = "0010",
        mty: str = "ME", extra: tuple[tuple[str, str], ...] = (),
        lge: dict[str, str] | None = None) -> bytes:
    return encode_mrq(ref=ref, cid=cid, dty=dty, mty=mty, stc=stc, extra=extra, lge=lge)


# -- the corpus ----------------------------------------------------------------------------
# Each case returns (answer, effect) as strings; the table compares them with the expected.

CaseFn = Callable[[Ctx], Awaitable[tuple[str, str]]]


@dataclass(frozen=True)
class Case:
    name: str
    expect_answer: str
    expect_effect: str
    run: CaseFn


CASES: list[Case] = []


def case(name: str, answer: str, effect: str) -> Callable[[CaseFn], CaseFn]:
    def register(fn: CaseFn) -> CaseFn:
        CASES.append(Case(name, answer, effect, fn))
        return fn
    return register


async def _alarm(c: Ctx, body: bytes, **kw: Any) -> tuple[str, str]:
    answer = await c.ctl.exchange(c.ctl.message(body, **kw))
    return str(answer).split(" ref")[0], c.effect()


for _dty, _stc, _name, _effect in [
    ("0004", "0010", "fixed trigger, manual alarm", "alarm manual p2"),
    ("0003", "0010", "personal trigger", "alarm manual p2"),
    ("0005", "0009", "fall detector", "alarm fall p2"),
    ("0006", "0010", "personal attack trigger (0006)", "alarm manual p2"),
    ("0007", "0010", "panic button (0007)", "alarm manual p2"),
    ("0008", "0010", "duty switch (0008)", "alarm manual p2"),
    ("0011", "0081", "pill dispenser, pill not taken (0011)", "alarm medication p3"),
    ("0023", "0010", "smoke detector (0023)", "alarm smoke p1"),
    ("0033", "0009", "flood detector (0033)", "alarm water p1"),
    ("0014", "0076", "door sensor, open", "alarm door p3"),
    ("0012", "0003", "bed monitor, absent", "alarm bed_exit p3"),
    ("0015", "0010", "wandering sensor", "alarm door p3"),
    ("0010", "0104", "activity detector, time out", "alarm inactivity p3"),
    ("0004", "0102", "test transmission", "alarm test p9"),
    ("9999", "0010", "unknown device type (fallback)", "alarm manual p2"),
    ("0004", None, "no stc (an alarm)", "alarm manual p2"),
]:
    def _make(dty: str, stc: str | None) -> CaseFn:
        async def run(c: Ctx) -> tuple[str, str]:
            return await _alarm(c, mrq(c.ctl.ref(), dty=dty, stc=stc))
        return run
    case(_name, "snu 0", _effect)(_make(_dty, _stc))


@case("resend in a new transaction", "snu 0", "no alarm, stored once")
async def _resend(c: Ctx) -> tuple[str, str]:
    ref = c.ctl.ref()
    await c.ctl.exchange(c.ctl.message(mrq(ref)))
    c.mark()
    answer = await c.ctl.exchange(c.ctl.message(mrq(ref)))
    stored = sum(1 for a in c.gw.core.alarms.values() if a.ref == ref)
    return str(answer).split(" ref")[0], f"{c.effect()}, stored {'once' if stored == 1 else stored}"


@case("SIP retransmission of the same transaction", "SIP 200 again, no 2nd <mrs>",
      "no alarm, handler once")
async def _retransmission(c: Ctx) -> tuple[str, str]:
    data = c.ctl.message(mrq(c.ctl.ref()), call=f"rt{c.ctl.ref()}")
    await c.ctl.exchange(data)
    c.mark()
    handled = c.gw.scaip.stats.handled if c.gw.scaip else -1
    c.ctl._send(data)
    got = await c.ctl.silence()
    again = [m for m in got if isinstance(m, SipResponse) and m.status == 200]
    extra = [m for m in got if isinstance(m, SipRequest)]
    answer = "SIP 200 again, no 2nd <mrs>" if len(again) == 1 and not extra else f"{got}"
    same = c.gw.scaip is not None and c.gw.scaip.stats.handled == handled
    return answer, f"{c.effect()}, handler {'once' if same else 'twice'}"


@case("reused ref, other content, after close (18.1)", "snu 0", "alarm smoke p1")
async def _reused(c: Ctx) -> tuple[str, str]:
    ref = c.ctl.ref()
    await c.ctl.exchange(c.ctl.message(mrq(ref)))
    await c.settle()
    c.mark()
    return await _alarm(c, mrq(ref, dty="0023"))


@case("reused ref, same content, just after close", "snu 0", "no alarm (resend window)")
async def _reused_same(c: Ctx) -> tuple[str, str]:
    ref = c.ctl.ref()
    await c.ctl.exchange(c.ctl.message(mrq(ref)))
    await c.settle()
    c.mark()
    answer, effect = await _alarm(c, mrq(ref))
    return answer, effect + (" (resend window)" if effect == "no alarm" else "")


@case("reused ref, other content, while open", "snu 0", "attached to the open alarm")
async def _reused_open(c: Ctx) -> tuple[str, str]:
    ref = c.ctl.ref()
    await c.ctl.exchange(c.ctl.message(mrq(ref)))
    c.mark()
    answer, effect = await _alarm(c, mrq(ref, dty="0005"))
    attached = [r.ref for r in c.open_care().attached]
    return answer, "attached to the open alarm" if attached == [ref] else effect


@case("alarm with <lge> geo+tim+gga (18.2)", "snu 0",
      "alarm manual p2, position 59.329300,18.068600 u=4.5")
async def _position(c: Ctx) -> tuple[str, str]:
    answer, effect = await _alarm(c, mrq(c.ctl.ref(), dty="0051", lge=GEO))
    body = alarm_json(c.new()[0])
    pos = body["position"]
    return answer, f"{effect}, position {pos['geo_uri'].removeprefix('geo:').replace(';', ' ')}"


@case("position update: IN with <lge> while open", "snu 0", "no alarm, 2 positions")
async def _position_update(c: Ctx) -> tuple[str, str]:
    await c.ctl.exchange(c.ctl.message(mrq(c.ctl.ref(), dty="0051", lge=GEO)))
    c.mark()
    moved = {"geo": "59.330000,18.070000", "tim": "2024-03-18T11:26:37+01"}
    answer, effect = await _alarm(c, mrq(c.ctl.ref(), dty="0051", mty="IN", stc=None,
                                         lge=moved))
    return answer, f"{effect}, {len(c.open_care().positions)} positions"


@case("resend with a new position", "snu 0", "no alarm, 2 positions")
async def _position_resend(c: Ctx) -> tuple[str, str]:
    ref = c.ctl.ref()
    await c.ctl.exchange(c.ctl.message(mrq(ref, dty="0051", lge=GEO)))
    c.mark()
    moved = {"geo": "59.331000,18.071000", "tim": "2024-03-18T11:27:37+01"}
    answer, effect = await _alarm(c, mrq(ref, dty="0051", lge=moved))
    return answer, f"{effect}, {len(c.open_care().positions)} positions"


@case("unreadable position", "snu 0", "alarm manual p2, no position")
async def _bad_position(c: Ctx) -> tuple[str, str]:
    answer, effect = await _alarm(c, mrq(c.ctl.ref(), dty="0051", lge={"geo": "north"}))
    return answer, f"{effect}, {'no position' if c.new()[0].position is None else 'position'}"


def _status_case(name: str, stc: str | None, mty: str, note: str) -> None:
    @case(name, "snu 0", f"no alarm, noted {note}")
    async def run(c: Ctx) -> tuple[str, str]:
        await c.ctl.exchange(c.ctl.message(mrq(c.ctl.ref())))
        c.mark()
        answer, effect = await _alarm(c, mrq(c.ctl.ref(), stc=stc, mty=mty))
        notes = [n.status.value for n in c.open_care().device_notes]
        return answer, f"{effect}, noted {', '.join(notes) or 'nothing'}"


_status_case("manual reset 0093 (18.4)", "0093", "ME", "reset")
_status_case("intervention complete 0111 (18.4)", "0111", "ME", "complete")
_status_case("cancel 0019", "0019", "ME", "cancelled")
_status_case("RE message", None, "RE", "reset")


@case("presence after alarm 0088, accepted (18.4)", "snu 0", "no alarm, on_site hop")
async def _presence(c: Ctx) -> tuple[str, str]:
    await c.ctl.exchange(c.ctl.message(mrq(c.ctl.ref())))
    await c.gw.act(AcceptRequested(c.open_care().id, "anna"))
    c.mark()
    answer, effect = await _alarm(c, mrq(c.ctl.ref(), stc="0088"))
    last = c.open_care().last_hop
    return answer, f"{effect}, {'on_site hop' if last is Hop.ON_SITE else last.value}"


def _fault_case(name: str, dty: str, fault: str, restore: str) -> None:
    @case(name, "snu 0 / snu 0", "technical alarm raised / closed")
    async def run(c: Ctx) -> tuple[str, str]:
        first = await c.ctl.exchange(c.ctl.message(mrq(c.ctl.ref(), dty=dty, stc=fault)))
        raised = [a for a in c.new() if a.type is AlarmType.TECHNICAL and a.state == "open"]
        second = await c.ctl.exchange(c.ctl.message(mrq(c.ctl.ref(), dty=dty, stc=restore)))
        closed = all(c.gw.core.alarms[a.id].state == "closed" for a in raised)
        care = [a for a in c.new() if a.type is not AlarmType.TECHNICAL]
        effect = (f"technical alarm {'raised' if len(raised) == 1 else len(raised)} / "
                  f"{'closed' if closed and raised else 'open'}"
                  + (f", {len(care)} care alarms" if care else ""))
        answer = f"{str(first).split(' ref')[0]} / {str(second).split(' ref')[0]}"
        return answer, effect


_fault_case("battery low 0016 / battery OK 0015 (18.4)", "0003", "0016", "0015")
_fault_case("power failure 0085 / restored 0086 (18.4)", "0002", "0085", "0086")


@case("heartbeat PI", "snu 0", "no alarm")
async def _heartbeat(c: Ctx) -> tuple[str, str]:
    return await _alarm(c, mrq(c.ctl.ref(), dty="0002", mty="PI", stc="0009"))


@case("IN with an alarm status code", "snu 0", "no alarm")
async def _info(c: Ctx) -> tuple[str, str]:
    return await _alarm(c, mrq(c.ctl.ref(), mty="IN"))


@case("ver 01.00", "snu 0", "alarm manual p2")
async def _ver(c: Ctx) -> tuple[str, str]:
    return await _alarm(c, mrq(c.ctl.ref(), extra=(("ver", "01.00"),)))


def _refusal(name: str, answer: str, body: Callable[[str], bytes], **kw: Any) -> None:
    @case(name, answer, "no alarm")
    async def run(c: Ctx) -> tuple[str, str]:
        ref = c.ctl.ref()
        got = await c.ctl.exchange(c.ctl.message(body(ref), **kw))
        text = str(got).replace(f"ref {ref}", "ref <ref>")
        return text, c.effect()


_refusal("unknown controller", "snu 3 ref <ref>", lambda r: mrq(r, cid="4713"), user="4713")
_refusal("From user is not cid", "snu 3 ref <ref>", lambda r: mrq(r), user="4712")
_refusal("cid in the From display name (18.5)", "snu 3 ref <ref>", lambda r: mrq(r),
         from_header='"sip:4711@127.0.0.1" <sip:666@127.0.0.1:5999>')
_refusal("mandatory cid missing", "snu 7 ref <ref>",
         lambda r: f"<mrq><ref>{r}</ref><dty>4</dty></mrq>".encode())
_refusal("ref with '-' (18.5)", "snu 3", lambda r: mrq(f"{r}-x"))
_refusal("non-numeric cid (18.5)", "snu 3 ref <ref>", lambda r: mrq(r, cid="ab12"),
         user="ab12")
_refusal("ver 1.0 (18.5)", "snu 3 ref <ref>", lambda r: mrq(r, extra=(("ver", "1.0"),)))
_refusal("nested element in a field", "snu 2 ref <ref>",
         lambda r: f"<mrq><ref>{r}</ref><cid>4711</cid><dty><x/></dty></mrq>".encode())
_refusal("broken XML, ref readable (18.5)", "snu 2 ref <ref>",
         lambda r: f"<mrq><ref>{r}</ref><cid>4711".encode())
_refusal("DTD / entity, ref readable", "snu 2 ref <ref>",
         lambda r: f'<!DOCTYPE m [<!ENTITY a "b">]><mrq><ref>{r}</ref></mrq>'.encode())
_refusal("document over 4 KiB", "snu 1 ref <ref>",
         lambda r: mrq(r, extra=(("lte", "x" * 250),) * 20))
_refusal("garbage body", "snu 2", lambda r: b"\x00\x01 not xml")
_refusal("lower-case method (18.5)", "SIP 405", lambda r: mrq(r), method="message")
_refusal("INVITE", "SIP 405", lambda r: b"", method="INVITE")
_refusal("wrong Content-Type", "SIP 415", lambda r: mrq(r), content_type="text/plain")
_refusal("20 KiB header (18.5)", "SIP 513", lambda r: mrq(r),
         extra_headers="X-Pad: " + "p" * 20 * 1024 + "\r\n")
_refusal("80 headers (18.5)", "SIP 400", lambda r: mrq(r),
         extra_headers="".join(f"X-H{i}: {i}\r\n" for i in range(80)))


# -- the run -------------------------------------------------------------------------------

RESULTS: list[tuple[str, str, str, str, str, str]] = []


@pytest.mark.parametrize("transport", ["UDP", "TCP"])
async def test_conformance_corpus(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, transport: str
) -> None:
    failures = []
    # The corpus controller sends faster than any real one (and does not retransmit): the
    # per-source rate limit is tested in tests/test_scaip_edges.py, not here.
    async with make_gateway(mosquitto, scaip={"port": 0, "datagrams_per_s": 1000}) as gw:
        assert gw.scaip is not None
        port = gw.scaip.udp_port if transport == "UDP" else gw.scaip.tcp_port
        assert port is not None
        ctl = Controller(transport)
        async with ctl.connected(port):
            ctx = Ctx(gw, ctl)
            for item in CASES:
                await ctx.settle()
                while not ctl.inbox.empty():  # nothing of an earlier case may answer this one
                    ctl.inbox.get_nowait()
                ctx.mark()
                try:
                    answer, effect = await item.run(ctx)
                except Exception as exc:  # a case that breaks is a row that failed
                    answer, effect = "error", f"{type(exc).__name__}: {exc}"[:120]
                RESULTS.append((transport, item.name, item.expect_answer, item.expect_effect,
                                answer, effect))
                if (answer, effect) != (item.expect_answer, item.expect_effect):
                    failures.append(f"{item.name}: expected {item.expect_answer} / "
                                    f"{item.expect_effect}, got {answer} / {effect}")
    _write_table()
    assert not failures, "\n".join(failures)


def _write_table() -> None:
    out = os.environ.get("TRYGG_CONFORMANCE_OUT")
    if not out:
        return
    lines = ["| transport | case | expected | got | |", "| --- | --- | --- | --- | --- |"]
    for transport, name, exp_a, exp_e, got_a, got_e in RESULTS:
        ok = "ok" if (exp_a, exp_e) == (got_a, got_e) else "**FAIL**"
        lines.append(f"| {transport} | {name} | {exp_a}; {exp_e} | {got_a}; {got_e} | {ok} |")
    Path(out).write_text("\n".join(lines) + "\n")
