"""The core and what devices report besides alarms: positions, status events, faults.

Issue 18.2 (positions of mobile alarms) and 18.4 (status events are not alarms), on the pure
core with a fake clock; every record round-trips through the journal encoding.
"""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from alarms import (
    RECOMMENDED_POLICY,
    AcceptRequested,
    AlarmCore,
    AlarmReceived,
    AlarmType,
    CloseRequested,
    Directory,
    Hop,
    Recipient,
    Record,
    Staff,
)
from alarms.core import Decision
from alarms.dedupe import RESEND_WINDOW_S
from alarms.events import (
    Event,
    FaultCleared,
    FaultReported,
    PositionReported,
    StatusReported,
)
from alarms.model import MAX_POSITIONS, DeviceStatus, Position, PositionSource
from alarms.records import DeviceNoted, HopAdded, PositionAdded, from_json, to_json

T0 = 1_800_000_000.0
DIRECTORY = Directory(
    device_recipient={"ctl": "r-a", "pendant": "r-a", "other": "r-b"},
    recipients={"r-a": Recipient("r-a", "team-a"), "r-b": Recipient("r-b", "team-b")},
    staff={"anna": Staff("anna", frozenset({"team-a"})), "bo": Staff("bo", frozenset({"team-b"}))},
    default_policy=RECOMMENDED_POLICY,
)


def here(lat: float = 59.33, fixed: float | None = T0) -> Position:
    return Position(lat, 18.07, 8.0, fixed, PositionSource.SCAIP_GEO)


class Harness:
    def __init__(self) -> None:
        self.core = AlarmCore(DIRECTORY)
        self.journal: list[Record] = []
        self.now = T0

    def step(self, event: Event, advance: float = 1.0) -> Decision:
        self.now += advance
        decision = self.core.decide(event, self.now)
        records = [from_json(to_json(r)) for r in decision.records]
        assert records == list(decision.records)
        self.journal.extend(records)
        self.core.apply_all(records)
        return decision

    def alarm(self, ref: str = "1", *, device: str = "ctl", position: Position | None = None,
              content: str = "c1", new_id: str = "A1",
              kind: AlarmType = AlarmType.MANUAL) -> Decision:
        return self.step(AlarmReceived(device, ref, kind, 0, new_id, content=content,
                                       position=position))

    def replayed(self) -> AlarmCore:
        core = AlarmCore(DIRECTORY)
        core.apply_all(self.journal)
        return core


# -- positions -----------------------------------------------------------------------------


def test_an_alarm_with_a_position_carries_it() -> None:
    h = Harness()
    decision = h.alarm(position=here())
    assert isinstance(decision.records[-1], PositionAdded)
    alarm = h.core.alarms["A1"]
    assert alarm.position is not None and alarm.position.position == here()
    assert alarm.position.received_at == h.now and alarm.position.device_id == "ctl"
    assert h.replayed().alarms["A1"] == alarm


def test_positions_of_an_open_alarm_update_from_resends_repeats_and_reports() -> None:
    h = Harness()
    h.alarm(position=here(59.30, T0))
    # The same message resent with where the person is now: the track grows, nothing else.
    resend = h.alarm(position=here(59.31, T0 + 60), new_id="A9")
    assert [type(r) for r in resend.records] == [PositionAdded]
    # The exact same fix again adds nothing.
    assert h.alarm(position=here(59.31, T0 + 60), new_id="A9").records == ()
    # A further alarm from the recipient attaches, with its position.
    h.alarm("2", device="pendant", position=here(59.32, T0 + 120), new_id="A8")
    # A report that is not an alarm (SCAIP IN with <lge>) moves it on.
    h.step(PositionReported("ctl", "7", here(59.33, T0 + 180)))
    alarm = h.core.alarms["A1"]
    assert [p.position.lat for p in alarm.positions] == [59.30, 59.31, 59.32, 59.33]
    assert list(h.core.alarms) == ["A1"]
    assert h.replayed().alarms["A1"].positions == alarm.positions


def test_positions_stop_with_the_alarm_and_are_bounded() -> None:
    h = Harness()
    h.alarm(position=here(0.0))
    for n in range(1, MAX_POSITIONS + 10):
        h.step(PositionReported("ctl", f"p{n}", here(n / 1000)))
    alarm = h.core.alarms["A1"]
    assert len(alarm.positions) == MAX_POSITIONS
    assert alarm.positions[-1].position.lat == (MAX_POSITIONS + 9) / 1000
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "hjälp given"))
    assert h.step(PositionReported("ctl", "late", here(1.0))).records == ()
    assert h.alarm(position=here(2.0)).records == (), "a resend of a closed alarm: no update"


def test_a_position_report_without_an_open_alarm_is_nothing() -> None:
    h = Harness()
    assert h.step(PositionReported("ctl", "p", here())) == Decision()
    h.alarm(device="other", new_id="B1")
    assert h.step(PositionReported("ctl", "p", here())).records == (), "another recipient's"


# -- status events -------------------------------------------------------------------------


def test_reset_cancel_and_complete_are_noted_never_alarms() -> None:
    h = Harness()
    h.alarm()
    for ref, status in (("2", DeviceStatus.CANCELLED), ("3", DeviceStatus.RESET),
                        ("4", DeviceStatus.COMPLETE)):
        decision = h.step(StatusReported("ctl", ref, status, "SCAIP ..."))
        assert [type(r) for r in decision.records] == [DeviceNoted]
    alarm = h.core.alarms["A1"]
    assert [n.status for n in alarm.device_notes] == [
        DeviceStatus.CANCELLED, DeviceStatus.RESET, DeviceStatus.COMPLETE]
    assert alarm.state == "open", "closing takes a person and a cause"
    assert list(h.core.alarms) == ["A1"]
    # A resend of the same report notes nothing more.
    assert h.step(StatusReported("ctl", "3", DeviceStatus.RESET)).records == ()
    assert h.replayed().alarms["A1"] == alarm


def test_presence_is_the_on_site_hop_once_someone_has_the_alarm() -> None:
    h = Harness()
    h.alarm()
    early = h.step(StatusReported("ctl", "p1", DeviceStatus.PRESENCE))
    assert [type(r) for r in early.records] == [DeviceNoted], "nobody accepted yet"
    h.step(AcceptRequested("A1", "anna"))
    on_site = h.step(StatusReported("ctl", "p2", DeviceStatus.PRESENCE))
    assert on_site.records == (HopAdded("A1", Hop.ON_SITE, h.now, "device:ctl"),)
    assert h.core.alarms["A1"].last_hop is Hop.ON_SITE
    assert h.step(StatusReported("ctl", "p3", DeviceStatus.PRESENCE)).records == ()
    # The owner can still close it.
    assert h.step(CloseRequested("A1", "anna", "hjälp given")).refusal is None


def test_status_without_an_open_alarm_opens_nothing() -> None:
    h = Harness()
    for status in DeviceStatus:
        assert h.step(StatusReported("ctl", "x", status)) == Decision()
    assert h.core.alarms == {}


# -- faults --------------------------------------------------------------------------------


def fault(ref: str, kind: str = "scaip.battery.3.01", new_id: str = "F1") -> FaultReported:
    return FaultReported("ctl", ref, kind, "battery low", int(T0 * 1000), new_id)


def test_a_fault_raises_one_technical_alarm_and_its_restore_closes_it() -> None:
    h = Harness()
    raised = h.step(fault("10"))
    technical = h.core.alarms["F1"]
    assert technical.type is AlarmType.TECHNICAL
    assert (technical.device_id, technical.ref) == ("ctl", "scaip.battery.3.01.10")
    assert raised.records
    # Reported again (a new message) while open: still one alarm.
    assert h.step(fault("11", new_id="F2")).records == ()
    # Another fault kind is another technical alarm; a care alarm stays apart from both.
    h.step(fault("12", kind="scaip.power", new_id="F3"))
    h.alarm()
    assert {a.id for a in h.core.open_in_order()} == {"F1", "F3", "A1"}
    cleared = h.step(FaultCleared("ctl", "scaip.battery.3.01", "battery OK"))
    assert [type(r) for r in cleared.records] == [HopAdded]
    assert h.core.alarms["F1"].state == "closed"
    assert h.core.alarms["F3"].state == "open" and h.core.alarms["A1"].state == "open"
    assert h.step(FaultCleared("ctl", "scaip.battery.3.01", "again")).records == ()
    # The same report resent after the clear is a resend, not a new fault ...
    assert h.step(fault("10", new_id="F4")).records == ()
    # ... until the resend window has passed.
    h.now += RESEND_WINDOW_S
    assert h.step(fault("10", new_id="F5")).records


def test_an_unknown_device_fault_is_refused() -> None:
    h = Harness()
    decision = h.step(dataclasses.replace(fault("1"), device_id="ghost"))
    assert decision.refusal is not None and decision.records == ()


# -- a property: whatever the order, replay rebuilds the same state --------------------------

_EVENTS = st.lists(
    st.one_of(
        st.tuples(st.just("alarm"), st.sampled_from(["1", "2"]), st.sampled_from(["c1", "c2"])),
        st.tuples(st.just("status"), st.sampled_from(list(DeviceStatus)), st.sampled_from("ab")),
        st.tuples(st.just("position"), st.floats(-90, 90), st.sampled_from(["p1", "p2"])),
        st.tuples(st.just("fault"), st.sampled_from(["scaip.power", "scaip.link"]),
                  st.sampled_from(["f1", "f2"])),
        st.tuples(st.just("clear"), st.sampled_from(["scaip.power", "scaip.link"]), st.just("")),
        st.tuples(st.just("accept"), st.just(""), st.just("")),
    ),
    max_size=30,
)


@settings(max_examples=200)
@given(_EVENTS)
def test_device_events_replay_to_the_same_state_and_never_open_care_alarms(
    script: list[tuple[str, object, object]],
) -> None:
    h = Harness()
    alarms_sent = 0
    for n, (kind, a, b) in enumerate(script):
        event: Event
        if kind == "alarm":
            alarms_sent += 1
            event = AlarmReceived("ctl", str(a), AlarmType.MANUAL, 0, f"A{n}", content=str(b))
        elif kind == "status":
            assert isinstance(a, DeviceStatus)
            event = StatusReported("ctl", str(b), a)
        elif kind == "position":
            assert isinstance(a, float)
            event = PositionReported("ctl", str(b), here(a))
        elif kind == "fault":
            event = FaultReported("ctl", str(b), str(a), "fault", 0, f"F{n}")
        elif kind == "clear":
            event = FaultCleared("ctl", str(a), "ok")
        else:
            opened = [x for x in h.core.open_in_order() if x.type is not AlarmType.TECHNICAL]
            if not opened:
                continue
            event = AcceptRequested(opened[0].id, "anna")
        h.step(event, 7.0)
    care = [a for a in h.core.alarms.values() if a.type is not AlarmType.TECHNICAL]
    assert len(care) <= alarms_sent
    assert h.replayed().alarms == h.core.alarms
