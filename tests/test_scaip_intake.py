"""ScaipIntake against a fake port: what each kind of <mrq> becomes, and the snu it gets."""

from __future__ import annotations

import pytest

from alarms.events import Event, FaultCleared, FaultReported, PositionReported, StatusReported
from alarms.model import AlarmType, DeviceStatus
from devices.contract import AlarmMessage, DeviceMessage, HeartbeatMessage, StatusMessage
from devices.scaip import (
    ScaipRequest,
    ScaipTables,
    Snu,
    content_of,
    encode_mrq,
    parse_mrq,
)
from devices.sip import SipRequest
from gateway.scaip_intake import UNAVAILABLE, UNKNOWN_DEVICE, ScaipIntake

SIP = SipRequest("MESSAGE", "sip:t@h", ())
GEO = {"geo": "59.3293,18.0686", "tim": "2024-03-18T11:25:37+01"}


class FakePort:
    def __init__(self, message_outcome: str | None = None,
                 event_outcome: str | None = None) -> None:
        self.messages: list[DeviceMessage] = []
        self.events: list[Event] = []
        self.message_outcome = message_outcome
        self.event_outcome = event_outcome

    async def store_message(self, message: DeviceMessage) -> str | None:
        self.messages.append(message)
        return self.message_outcome

    async def store_event(self, event: Event) -> str | None:
        self.events.append(event)
        return self.event_outcome


def mrq(*, ref: str = "r1", dty: str = "0004", mty: str = "ME", stc: str | None = None,
        lge: dict[str, str] | None = None) -> ScaipRequest:
    body = encode_mrq(ref=ref, cid="4711", dty=dty, mty=mty, stc=stc, lge=lge)
    parsed = parse_mrq(body)
    assert isinstance(parsed, ScaipRequest), parsed
    return parsed


async def test_an_alarm_is_stored_with_type_content_detail_and_position() -> None:
    port = FakePort()
    request = mrq(dty="0023", stc="0010", lge=GEO)
    assert await ScaipIntake(port)(request, SIP) == Snu.OK
    [message] = port.messages
    assert isinstance(message, AlarmMessage)
    assert (message.device_id, message.ref, message.type) == ("4711", "r1", AlarmType.SMOKE)
    assert message.content == content_of(request)
    assert message.detail is not None and "smoke detector" in message.detail
    assert message.position is not None and message.position.lat == 59.3293
    assert port.events == []


@pytest.mark.parametrize(("fields", "expected"), [
    ({"stc": "0093"}, StatusReported("4711", "r1", DeviceStatus.RESET)),
    ({"stc": "0111"}, StatusReported("4711", "r1", DeviceStatus.COMPLETE)),
    ({"stc": "0019"}, StatusReported("4711", "r1", DeviceStatus.CANCELLED)),
    ({"stc": "0088"}, StatusReported("4711", "r1", DeviceStatus.PRESENCE)),
    ({"mty": "RE"}, StatusReported("4711", "r1", DeviceStatus.RESET)),
])
async def test_status_events_are_not_alarms(fields: dict[str, str],
                                            expected: StatusReported) -> None:
    port = FakePort()
    assert await ScaipIntake(port)(mrq(stc=fields.get("stc"), mty=fields.get("mty", "ME")),
                                   SIP) == Snu.OK
    [sign_of_life] = port.messages
    assert isinstance(sign_of_life, StatusMessage)
    [event] = port.events
    assert isinstance(event, StatusReported)
    assert (event.device_id, event.ref, event.status) == (
        expected.device_id, expected.ref, expected.status)


async def test_faults_raise_and_restores_clear_technical_alarms() -> None:
    port = FakePort()
    intake = ScaipIntake(port)
    assert await intake(mrq(dty="0002", stc="0085"), SIP) == Snu.OK
    assert await intake(mrq(dty="0003", stc="0016", ref="r2"), SIP) == Snu.OK
    assert await intake(mrq(dty="0002", stc="0086", ref="r3"), SIP) == Snu.OK
    power, battery, restored = port.events
    assert isinstance(power, FaultReported) and power.kind == "scaip.power"
    assert isinstance(battery, FaultReported) and battery.kind == "scaip.battery.3.-"
    assert "battery low" in battery.detail
    assert isinstance(restored, FaultCleared)
    assert (restored.device_id, restored.kind) == ("4711", "scaip.power")


async def test_heartbeats_info_and_position_reports() -> None:
    port = FakePort()
    intake = ScaipIntake(port)
    assert await intake(mrq(mty="PI"), SIP) == Snu.OK
    assert await intake(mrq(mty="IN", stc="0010"), SIP) == Snu.OK
    assert await intake(mrq(mty="IN", lge=GEO, ref="r9"), SIP) == Snu.OK
    assert isinstance(port.messages[0], HeartbeatMessage)
    assert [type(m) for m in port.messages[1:]] == [StatusMessage, StatusMessage]
    [moved] = port.events
    assert isinstance(moved, PositionReported) and moved.ref == "r9"
    assert intake.counts["info"] == 2 and intake.counts["heartbeat"] == 1


@pytest.mark.parametrize(("message_outcome", "event_outcome", "snu"), [
    (UNKNOWN_DEVICE, None, Snu.WRONG_CONTENT),
    (UNAVAILABLE, None, Snu.BUSY),
    (None, UNAVAILABLE, Snu.BUSY),
    (None, "refused", Snu.WRONG_CONTENT),
])
async def test_outcomes_become_snu(message_outcome: str | None, event_outcome: str | None,
                                   snu: Snu) -> None:
    port = FakePort(message_outcome, event_outcome)
    assert await ScaipIntake(port)(mrq(stc="0093"), SIP) == snu
    if message_outcome is not None:
        assert port.events == [], "nothing decided for an unknown or unstored controller"


async def test_unmapped_codes_are_stored_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    port = FakePort()
    intake = ScaipIntake(port)
    for n in range(3):
        assert await intake(mrq(dty="0999", stc="0777", ref=f"u{n}"), SIP) == Snu.OK
    assert all(isinstance(m, AlarmMessage) and m.type is AlarmType.MANUAL
               for m in port.messages)
    assert intake.counts["unmapped"] == 3
    assert caplog.text.count("not in the tables") == 1, "logged at most once a minute"


async def test_site_tables_are_used() -> None:
    port = FakePort()
    tables = ScaipTables.with_overrides({4: AlarmType.FALL}, {})
    assert await ScaipIntake(port, tables=tables)(mrq(dty="4", stc="10"), SIP) == Snu.OK
    [message] = port.messages
    assert isinstance(message, AlarmMessage) and message.type is AlarmType.FALL


def test_site_tables_and_limits_from_the_configuration() -> None:
    from pydantic import ValidationError

    from gateway.config import ScaipSettings

    settings = ScaipSettings(device_types={"0004": "fall", "99": "technical"},
                             status_codes={"200": "fault:door_lock", "201": "restore:*"},
                             trusted_networks=["10.20.0.0/16"])
    tables = settings.tables()
    assert tables.device_types[4] is AlarmType.FALL
    assert tables.device_types[99] is AlarmType.TECHNICAL
    assert tables.device_types[23] is AlarmType.SMOKE, "defaults stay"
    assert str(tables.status_codes[200]) == "fault:door_lock"
    for bad in ({"device_types": {"23": "fire"}}, {"device_types": {"x": "fall"}},
                {"device_types": {"12345": "fall"}}, {"device_types": {"1": "test"}},
                {"status_codes": {"10": "alarm:x"}}, {"status_codes": {"10": "nonsense"}},
                {"trusted_networks": ["not a net"]}, {"datagrams_per_s": 0}):
        with pytest.raises(ValidationError):
            ScaipSettings.model_validate(bad)
