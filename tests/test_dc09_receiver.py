"""The DC-09 receiver over real sockets: the simulated transmitter, raw frames, the gateway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from alarms.model import AlarmType
from devices.contract import AlarmMessage, DeviceMessage, HeartbeatMessage, StatusMessage
from devices.dc09 import Dc09Account, Dc09Kind, Reply, encode_event, parse_answer
from firmware_sim.connection import Backoff
from firmware_sim.dc09_device import Dc09Transmitter
from gateway.dc09 import Dc09Receiver
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small
from tests.helpers import login, next_alarm

KEY = "00112233445566778899AABBCCDDEEFF"
ACCOUNTS = [Dc09Account("1234", "dev-a"), Dc09Account("ABCD", "dev-b", key=KEY)]
WAIT = 10.0
FAST = Backoff(initial_s=0.05, cap_s=0.2)


class Store:
    """Records what the receiver stores; can hold a store open and answer refusals."""

    def __init__(self) -> None:
        self.stored: list[DeviceMessage] = []
        self.entered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.outcome: str | None = None
        self.error: Exception | None = None

    async def __call__(self, message: DeviceMessage) -> str | None:
        self.entered.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        if self.outcome is None:
            self.stored.append(message)
        return self.outcome


@pytest.fixture
def store() -> Store:
    return Store()


@pytest.fixture
async def receiver(store: Store) -> AsyncIterator[Dc09Receiver]:
    async with Dc09Receiver(store, accounts=ACCOUNTS, port=0) as running:
        yield running


def tx(receiver: Dc09Receiver, transport: str, **kwargs: object) -> Dc09Transmitter:
    port = receiver.tcp_port if transport == "tcp" else receiver.udp_port
    assert port is not None
    options: dict[str, object] = {"account": "ABCD", "key": KEY, "transport": transport,
                                  "backoff": FAST, "answer_timeout_s": 2.0}
    options.update(kwargs)
    return Dc09Transmitter("127.0.0.1", port, **options)  # type: ignore[arg-type]


@pytest.mark.network
@pytest.mark.parametrize("transport", ["tcp", "udp"])
@pytest.mark.parametrize(("account", "key"), [("1234", None), ("ABCD", KEY)])
async def test_alarms_nulls_and_statuses_are_stored_then_acked(
    receiver: Dc09Receiver, store: Store, transport: str, account: str, key: str | None
) -> None:
    async with tx(receiver, transport, account=account, key=key) as sender:
        answer = await sender.alarm("MA")
        assert answer is not None
        assert answer.reply is Reply.ACK
        assert answer.encrypted is (key is not None)
        assert (await sender.contact_id(111)).reply is Reply.ACK  # type: ignore[union-attr]
        assert (await sender.null()).reply is Reply.ACK  # type: ignore[union-attr]
        assert (await sender.alarm("AT", zone="000")).reply is Reply.ACK  # type: ignore[union-attr]
    device = "dev-a" if account == "1234" else "dev-b"
    manual, smoke, null, power = store.stored
    assert isinstance(manual, AlarmMessage)
    assert (manual.device_id, manual.type) == (device, AlarmType.MANUAL)
    assert isinstance(smoke, AlarmMessage)
    assert smoke.type is AlarmType.SMOKE
    assert isinstance(null, HeartbeatMessage)
    assert isinstance(power, StatusMessage)
    assert power.state == "power_failure"
    assert (receiver.stats.alarms, receiver.stats.heartbeats, receiver.stats.statuses) == (2, 1, 1)
    assert len({m.ref for m in store.stored}) == 4


@pytest.mark.network
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_the_ack_is_sent_only_after_the_store_returns(
    receiver: Dc09Receiver, store: Store, transport: str
) -> None:
    store.gate = asyncio.Event()
    order: list[str] = []

    async def send() -> None:
        async with tx(receiver, transport, answer_timeout_s=WAIT, max_attempts=1) as sender:
            answer = await sender.alarm("MA")
            order.append(f"answer {answer.reply if answer else None}")

    task = asyncio.create_task(send())
    await asyncio.wait_for(store.entered.wait(), WAIT)
    # The store is in progress: nothing is answered while it is.
    await asyncio.sleep(0.3)
    assert order == []
    order.append("stored")
    store.gate.set()
    await asyncio.wait_for(task, WAIT)
    assert order == ["stored", "answer ACK"]


@pytest.mark.network
@pytest.mark.parametrize(("outcome", "reply"), [("unavailable", Reply.NAK),
                                                ("unknown_device", Reply.DUH)])
async def test_store_refusals_become_nak_or_duh(
    receiver: Dc09Receiver, store: Store, outcome: str, reply: Reply
) -> None:
    store.outcome = outcome
    async with tx(receiver, "tcp", max_attempts=1) as sender:
        answer = await sender.alarm("MA")
    if reply is Reply.DUH:
        assert answer is not None
        assert answer.reply is Reply.DUH
    else:
        assert answer is None  # one attempt, NAKed: not delivered
        assert sender.stats.naks == 1
    assert receiver.stats.acked == 0


@pytest.mark.network
async def test_a_nak_makes_the_transmitter_resend_the_same_event(
    receiver: Dc09Receiver, store: Store
) -> None:
    store.outcome = "unavailable"
    async with tx(receiver, "udp", max_attempts=20) as sender:
        task = asyncio.create_task(sender.alarm("FA"))
        async with asyncio.timeout(WAIT):
            while sender.stats.naks < 2:
                await asyncio.sleep(0.02)
        store.outcome = None  # the journal recovers
        answer = await asyncio.wait_for(task, WAIT)
    assert answer is not None
    assert answer.reply is Reply.ACK
    [alarm] = store.stored
    assert isinstance(alarm, AlarmMessage)
    assert alarm.type is AlarmType.SMOKE


@pytest.mark.network
async def test_a_failing_store_is_isolated(
    receiver: Dc09Receiver, store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    store.error = RuntimeError("boom")
    async with tx(receiver, "tcp", max_attempts=1) as sender:
        assert await sender.alarm("MA") is None
        assert receiver.stats.handler_errors == 1
        store.error = None
        answer = await sender.alarm("MA")  # same connection, next frame
    assert answer is not None
    assert answer.reply is Reply.ACK
    assert any("could not be handled" in r.getMessage() for r in caplog.records)
    caplog.clear()  # the logged exception was the point of this test


async def _raw_tcp(receiver: Dc09Receiver, data: bytes) -> bytes:
    assert receiver.tcp_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.tcp_port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.readuntil(b"\r"), WAIT)
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.mark.network
@pytest.mark.parametrize(("frame", "reason", "reply"), [
    (encode_event(account="9999", sequence=1, kind=Dc09Kind.SIA, data="Nri1/MA001"),
     "unknown_account", Reply.DUH),
    (encode_event(account="ABCD", sequence=1, kind=Dc09Kind.SIA, data="Nri1/MA001"),
     "not_encrypted", Reply.DUH),
    (encode_event(account="ABCD", sequence=1, kind=Dc09Kind.SIA, data="Nri1/MA001",
                  key="FFEEDDCCBBAA99887766554433221100", now=1.0e9),
     "decrypt", Reply.DUH),
    (encode_event(account="ABCD", sequence=1, kind=Dc09Kind.SIA, data="Nri1/MA001", key=KEY,
                  now=1.0e9), "timestamp", Reply.NAK),
    (b"\n0000001A\"SIA-DCS\"0001L0#1234[]\r", "length", Reply.NAK),
    (b"\n00000016\"SIA-DCS\"0001L0#1234[]\r", "crc", Reply.NAK),
    (b"garbage\r", "format", Reply.NAK),
])
async def test_bad_frames_are_refused_with_a_reason_and_counted(
    receiver: Dc09Receiver, store: Store, frame: bytes, reason: str, reply: Reply
) -> None:
    answer = parse_answer(await _raw_tcp(receiver, frame))
    assert answer is not None
    assert answer.reply is reply
    assert receiver.stats.rejects[reason] == 1
    assert store.stored == []
    assert not store.entered.is_set()


@pytest.mark.network
async def test_a_replayed_encrypted_frame_is_refused(receiver: Dc09Receiver) -> None:
    # A captured frame sent again later: its timestamp gives it away.
    import time

    frame = encode_event(account="ABCD", sequence=3, kind=Dc09Kind.SIA, data="Nri1/MA001",
                         key=KEY, now=time.time() - 120)
    answer = parse_answer(await _raw_tcp(receiver, frame))
    assert answer is not None
    assert answer.reply is Reply.NAK
    assert answer.timestamp is not None  # our clock, for the transmitter to correct its own


@pytest.mark.network
async def test_a_transmitter_with_a_wrong_clock_corrects_it_from_the_nak(
    receiver: Dc09Receiver, store: Store
) -> None:
    async with tx(receiver, "tcp", clock_offset_s=-300.0) as sender:
        answer = await sender.alarm("MA")
    assert answer is not None
    assert answer.reply is Reply.ACK
    assert sender.stats.naks == 1
    assert abs(sender.clock_offset_s) < 5
    assert len(store.stored) == 1


@pytest.mark.network
async def test_tcp_garbage_between_frames_does_not_stop_the_connection(
    receiver: Dc09Receiver, store: Store
) -> None:
    import time

    good = encode_event(account="1234", sequence=5, kind=Dc09Kind.SIA, data="Nri1/MA001",
                        now=time.time())
    assert receiver.tcp_port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", receiver.tcp_port)
    writer.write(b"junk\r" + good)
    await writer.drain()
    first = parse_answer(await asyncio.wait_for(reader.readuntil(b"\r"), WAIT))
    second = parse_answer(await asyncio.wait_for(reader.readuntil(b"\r"), WAIT))
    writer.close()
    await writer.wait_closed()
    assert first is not None
    assert second is not None
    assert (first.reply, second.reply) == (Reply.NAK, Reply.ACK)
    assert len(store.stored) == 1


async def test_the_receiver_is_reusable_but_not_reentrant(store: Store) -> None:
    receiver = Dc09Receiver(store, accounts=ACCOUNTS, port=0, udp=False)
    async with receiver:
        with pytest.raises(RuntimeError, match="re-entrant"):
            await receiver.__aenter__()
    assert receiver.tcp_port is None
    async with receiver:
        assert receiver.tcp_port is not None


@pytest.mark.network
async def test_sim_cli(receiver: Dc09Receiver, capsys: pytest.CaptureFixture[str]) -> None:
    assert receiver.udp_port is not None
    args = ["dc09", "--port", str(receiver.udp_port), "--transport", "udp", "--account", "ABCD",
            "--key", KEY, "--alarms", "2", "--interval", "0", "--contact-id", "101"]
    from firmware_sim.cli import main

    code = await asyncio.to_thread(main, args)
    assert code == 0
    assert '"answers":["ACK","ACK"]' in capsys.readouterr().out


# -- the whole gateway ----------------------------------------------------------------------


@pytest.fixture
def _dc09_devices(tmp_path: Path) -> None:
    org = OrgStore(tmp_path / "gw" / "org.sqlite3")
    seed_small(org)
    # A transmitter that sends a null message every second is supervised at that pace.
    org.put_device(DeviceInfo("dc09-enc", "alarm_unit", "r-a", model="DC-09", heartbeat_s=2.0))
    org.close()


DC09 = {"port": 0, "accounts": [
    {"account": "1234", "device_id": "dev-a"},
    {"account": "ABCD", "device_id": "dc09-enc", "key": KEY},
    {"account": "5555", "device_id": "not-provisioned"},
]}


@pytest.mark.network
@pytest.mark.usefixtures("_dc09_devices")
@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_gateway_stores_before_ack_and_staff_see_the_alarm(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, transport: str
) -> None:
    async with make_gateway(mosquitto, dc09=DC09) as gw:
        assert gw.dc09 is not None
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        async with anna.socket() as ws, tx(gw.dc09, transport) as sender:
            answer = await sender.alarm("MA")
            assert answer is not None
            assert answer.reply is Reply.ACK
            # Acked means stored: the alarm is in the core, which only applies records
            # after their journal commit.
            [alarm_id] = [a.id for a in gw.core.alarms.values() if a.device_id == "dc09-enc"]
            assert gw.core.alarms[alarm_id].type is AlarmType.MANUAL
            shown = await next_alarm(ws)
            assert (shown["id"], shown["device_id"]) == (alarm_id, "dc09-enc")
            assert [h["hop"] for h in shown["hops"]][:2] == ["raised", "stored"]
        await anna.http.aclose()
        stored = [r for r in await gw.journal.load() if r.alarm_id == alarm_id]
        assert stored


@pytest.mark.network
@pytest.mark.usefixtures("_dc09_devices")
async def test_gateway_naks_while_the_journal_fails_and_acks_the_resend(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with make_gateway(mosquitto, dc09=DC09) as gw:
        assert gw.dc09 is not None
        failing = True
        gw.journal.fail_writes = lambda: failing
        async with tx(gw.dc09, "tcp", max_attempts=50, account="1234", key=None) as sender:
            task = asyncio.create_task(sender.alarm("FA"))
            async with asyncio.timeout(WAIT):
                while sender.stats.naks < 1:
                    await asyncio.sleep(0.02)
            assert gw.dc09.stats.not_stored >= 1
            failing = False
            answer = await asyncio.wait_for(task, WAIT)
        assert answer is not None
        assert answer.reply is Reply.ACK
        [alarm] = [a for a in gw.core.alarms.values() if a.device_id == "dev-a"]
        assert alarm.type is AlarmType.SMOKE
    caplog.clear()  # the journal failure is logged at critical, on purpose


@pytest.mark.network
@pytest.mark.usefixtures("_dc09_devices")
async def test_gateway_duh_for_an_account_whose_device_is_not_provisioned(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, dc09=DC09) as gw:
        assert gw.dc09 is not None
        async with tx(gw.dc09, "udp", account="5555", key=None) as sender:
            answer = await sender.alarm("MA")
        assert answer is not None
        assert answer.reply is Reply.DUH
        assert not any(a.device_id == "not-provisioned" for a in gw.core.alarms.values())


@pytest.mark.network
@pytest.mark.usefixtures("_dc09_devices")
async def test_null_messages_supervise_the_account(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto, dc09=DC09) as gw:
        assert gw.dc09 is not None
        async with tx(gw.dc09, "tcp", null_interval_s=0.3), asyncio.timeout(WAIT):
            while gw.dc09.stats.heartbeats < 3:
                await asyncio.sleep(0.05)
            assert gw.devices["dc09-enc"].counts["HeartbeatMessage"] >= 3
            assert not gw.open_technical("offline.")
        # The transmitter falls silent: past its interval (2 s x 1.5) it is offline.
        async with asyncio.timeout(WAIT):
            while not [a for a in gw.open_technical("offline.") if a.device_id == "dc09-enc"]:
                await asyncio.sleep(0.1)
        # ... and its null messages close that technical alarm again.
        async with tx(gw.dc09, "tcp") as sender:
            await sender.null()
        async with asyncio.timeout(WAIT):
            while [a for a in gw.open_technical("offline.") if a.device_id == "dc09-enc"]:
                await asyncio.sleep(0.1)


def test_settings_validate_accounts_and_codes(tmp_path: Path) -> None:
    from pydantic import ValidationError

    from gateway.config import Dc09Settings

    with pytest.raises(ValidationError, match="key of account"):
        Dc09Settings.model_validate(
            {"accounts": [{"account": "1234", "device_id": "d", "key": "short"}]})
    with pytest.raises(ValidationError, match="configured twice"):
        Dc09Settings.model_validate({"accounts": [{"account": "1234", "device_id": "d"},
                                                  {"account": "1234", "device_id": "e"}]})
    with pytest.raises(ValidationError, match="dc09 code"):
        Dc09Settings(codes={"BA": "burglary"})
