"""The alarm core with a fake clock: lifecycle, refusals, dedupe, replay."""

from __future__ import annotations

import dataclasses
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms import (
    RECOMMENDED_POLICY,
    AcceptRequested,
    AckDevice,
    Alarm,
    AlarmCore,
    AlarmReceived,
    AlarmType,
    CloseRequested,
    Directory,
    Hop,
    Notify,
    OnSiteRequested,
    ReceiptConfirmed,
    Recipient,
    Record,
    Staff,
)
from alarms.core import Decision
from alarms.dedupe import RESEND_WINDOW_S
from alarms.events import Event
from alarms.model import HOP_ORDER
from alarms.records import AlarmOpened, from_json, to_json

T0 = 1_800_000_000.0

DIRECTORY = Directory(
    device_recipient={"dev-a": "r-a", "dev-b": "r-b"},
    recipients={"r-a": Recipient("r-a", "team-a"), "r-b": Recipient("r-b", "team-b")},
    staff={
        "anna": Staff("anna", frozenset({"team-a"})),
        "bo": Staff("bo", frozenset({"team-a"})),
        "cleo": Staff("cleo", frozenset({"team-b"})),
        "dan": Staff("dan", frozenset({"team-a"}), on_duty=False),
    },
)


class Harness:
    """Drives the core the way the gateway does: decide, persist (a list), apply."""

    def __init__(self) -> None:
        self.core = AlarmCore(DIRECTORY)
        self.journal: list[Record] = []
        self.now = T0

    def step(self, event: Event, advance: float = 1.0) -> Decision:
        self.now += advance
        decision = self.core.decide(event, self.now)
        # Records round-trip through their JSON encoding, as they do through the journal.
        records = [from_json(to_json(r)) for r in decision.records]
        self.journal.extend(records)
        self.core.apply_all(records)
        return decision

    def alarm(self, device: str = "dev-a", ref: str = "r1", kind: AlarmType = AlarmType.MANUAL,
              new_id: str = "A1", ts: int = int(T0 * 1000)) -> Decision:
        """An alarm message; the same arguments again are a resend of it (same device time)."""
        return self.step(AlarmReceived(device, ref, kind, ts, new_id, battery=0.8))


def test_new_alarm_is_stored_routed_and_acked_after_persisting() -> None:
    h = Harness()
    decision = h.alarm()
    assert [type(r).__name__ for r in decision.records] == [
        "AlarmOpened", "HopAdded", "HopAdded", "HopAdded"]
    assert decision.actions == (
        AckDevice("dev-a", "r1", "stored"),
        Notify("A1", frozenset({"anna", "bo"})),  # on duty in team-a; dan is off duty
    )
    alarm = h.core.alarms["A1"]
    assert [e.hop for e in alarm.hops] == [Hop.RAISED, Hop.STORED, Hop.ROUTED]
    assert alarm.state == "open"
    assert alarm.team_id == "team-a"


def test_decide_does_not_change_state() -> None:
    core = AlarmCore(DIRECTORY)
    core.decide(AlarmReceived("dev-a", "r1", AlarmType.FALL, int(T0 * 1000), "A1"), T0)
    assert core.alarms == {}
    assert core.find("dev-a", "r1") is None


def test_full_lifecycle_has_seven_hops_in_order() -> None:
    h = Harness()
    h.alarm()
    h.step(ReceiptConfirmed("A1", "bo"))
    h.step(AcceptRequested("A1", "anna"))
    h.step(OnSiteRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "hjälp given", "uppe igen"))
    alarm = h.core.alarms["A1"]
    assert [e.hop for e in alarm.hops] == list(Hop)
    assert [e.actor for e in alarm.hops][3:] == ["bo", "anna", "anna", "anna"]
    assert alarm.state == "closed" and alarm.cause == "hjälp given" and alarm.note == "uppe igen"
    times = [e.at for e in alarm.hops]
    assert times == sorted(times)


def test_resent_alarm_is_acked_again_and_stored_once() -> None:
    h = Harness()
    h.alarm()
    again = h.alarm(new_id="A2")
    assert again.records == ()
    assert again.actions == (AckDevice("dev-a", "r1", "stored"),)
    assert list(h.core.alarms) == ["A1"]


def test_resend_after_window_is_a_new_alarm_once_the_old_one_is_closed() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "felaktigt larm"))
    assert h.alarm(new_id="A2").records == (), "closed, but within the resend window"
    h.now += RESEND_WINDOW_S + 1
    later = h.alarm(new_id="A3")
    assert later.records, "an identical message long after its alarm closed is an alarm"
    assert set(h.core.alarms) == {"A1", "A3"}


def test_resend_while_old_alarm_open_is_still_a_duplicate() -> None:
    h = Harness()
    h.alarm()
    h.now += RESEND_WINDOW_S + 1
    assert h.alarm(new_id="A2").records == ()


def test_reused_ref_with_other_content_is_a_new_alarm_even_at_once() -> None:
    """A controller that restarted its ref counter: same ref, another message. Issue 18.1."""
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "felaktigt larm"))
    smoke = h.alarm(new_id="A2", kind=AlarmType.SMOKE)
    assert isinstance(smoke.records[0], AlarmOpened)
    assert smoke.actions[0] == AckDevice("dev-a", "r1", "stored")
    assert h.core.alarms["A2"].type is AlarmType.SMOKE
    # ... and the same type at another device time is another alarm too.
    again = h.alarm(new_id="A3", kind=AlarmType.SMOKE, ts=int(T0 * 1000) + 60_000)
    assert again.records, "restarted counter, same kind of alarm: still not a resend"
    # The latest message of the pair is what a resend is compared with.
    assert h.alarm(new_id="A4", kind=AlarmType.SMOKE, ts=int(T0 * 1000) + 60_000).records == ()


def test_reused_ref_with_other_content_attaches_while_an_alarm_is_open() -> None:
    h = Harness()
    h.core.directory = dataclasses.replace(DIRECTORY, default_policy=RECOMMENDED_POLICY)
    h.alarm()
    again = h.alarm(new_id="A2", ts=int(T0 * 1000) + 5_000)
    assert [type(r).__name__ for r in again.records] == ["RefAttached"]
    assert h.core.find("dev-a", "r1") is h.core.alarms["A1"]
    # Now the pair stands for the attached message: its exact resend adds nothing more.
    assert h.alarm(new_id="A3", ts=int(T0 * 1000) + 5_000).records == ()


def test_unknown_device_is_refused_with_a_reason() -> None:
    h = Harness()
    decision = h.alarm(device="ghost")
    assert decision.records == ()
    assert decision.actions == (AckDevice("ghost", "r1", "rejected", "unknown device"),)
    assert decision.refusal is not None and decision.refusal.code == 404


def test_second_accept_by_someone_else_conflicts() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    decision = h.step(AcceptRequested("A1", "bo"))
    assert decision.refusal is not None
    assert decision.refusal.code == 409 and "anna" in decision.refusal.reason
    assert h.step(AcceptRequested("A1", "anna")).records == ()  # idempotent for the owner


def test_accept_implies_delivery() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    assert [e.hop for e in h.core.alarms["A1"].hops][-2:] == [Hop.DELIVERED, Hop.ACCEPTED]


def test_only_first_receipt_is_the_delivered_hop() -> None:
    h = Harness()
    h.alarm()
    h.step(ReceiptConfirmed("A1", "anna"))
    assert h.step(ReceiptConfirmed("A1", "bo")).records == ()


@pytest.mark.parametrize(
    ("event", "code"),
    [
        (OnSiteRequested("A1", "anna"), 409),  # not accepted yet
        (CloseRequested("A1", "anna", "x"), 409),
        (AcceptRequested("A1", "cleo"), 403),  # other team
        (AcceptRequested("nope", "anna"), 404),
        (ReceiptConfirmed("A1", "stranger"), 403),
    ],
)
def test_refusals(event: Event, code: int) -> None:
    h = Harness()
    h.alarm()
    decision = h.step(event)
    assert decision.refusal is not None and decision.refusal.code == code
    assert decision.records == ()


def test_close_needs_a_cause_and_the_owner() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    blank = h.step(CloseRequested("A1", "anna", "   "))
    assert blank.refusal is not None and blank.refusal.code == 422
    other = h.step(CloseRequested("A1", "bo", "hjälp given"))
    assert other.refusal is not None and other.refusal.code == 409
    assert h.core.alarms["A1"].state == "open"


def test_closed_alarm_refuses_further_actions() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "ingen åtgärd"))
    for event in (AcceptRequested("A1", "bo"), OnSiteRequested("A1", "anna"),
                  CloseRequested("A1", "anna", "x")):
        decision = h.step(event)
        assert decision.refusal is not None and decision.refusal.code == 409


def test_device_clock_far_off_uses_receipt_time_for_raised() -> None:
    h = Harness()
    h.now += 1
    decision = h.step(AlarmReceived("dev-a", "r1", AlarmType.MANUAL, 0, "A1"), advance=0)
    assert decision.records
    alarm = h.core.alarms["A1"]
    assert alarm.hops[0].at == alarm.hops[1].at  # raised clamped to stored
    assert alarm.device_ts_ms == 0  # the raw device time is kept


def test_alarm_without_team_reaches_everyone_on_duty() -> None:
    directory = Directory(
        device_recipient={"dev-x": "r-x"}, recipients={}, staff=DIRECTORY.staff
    )
    core = AlarmCore(directory)
    decision = core.decide(AlarmReceived("dev-x", "1", AlarmType.FALL, 0, "X"), T0)
    notify = [a for a in decision.actions if isinstance(a, Notify)]
    assert notify[0].staff_ids == frozenset({"anna", "bo", "cleo"})


def test_out_of_order_hop_is_refused_by_apply() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    from alarms.records import HopAdded

    with pytest.raises(ValueError, match="out of order"):
        h.core.apply(HopAdded("A1", Hop.DELIVERED, h.now, "bo"))


# -- properties ----------------------------------------------------------------------------

devices = st.sampled_from(["dev-a", "dev-b", "ghost"])
refs = st.sampled_from(["r1", "r2", "r3"])
staff_ids = st.sampled_from(["anna", "bo", "cleo", "dan"])


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, tuple[str, ...], float]]:
    steps: list[tuple[str, tuple[str, ...], float]] = []
    for _ in range(draw(st.integers(1, 40))):
        kind = draw(st.sampled_from(["alarm", "receipt", "accept", "on_site", "close"]))
        advance = draw(st.floats(0, 120))
        if kind == "alarm":
            steps.append((kind, (draw(devices), draw(refs)), advance))
        else:
            steps.append((kind, (f"A{draw(st.integers(0, 5))}", draw(staff_ids)), advance))
    return steps


def run(script: list[tuple[str, tuple[str, ...], float]]) -> Harness:
    h = Harness()
    for n, (kind, args, advance) in enumerate(script):
        if kind == "alarm":
            h.now += advance
            h.alarm(device=args[0], ref=args[1], new_id=f"A{n % 6}" if n < 6 else f"A{n}")
            continue
        alarm_id, staff = args
        event: Event
        if kind == "receipt":
            event = ReceiptConfirmed(alarm_id, staff)
        elif kind == "accept":
            event = AcceptRequested(alarm_id, staff)
        elif kind == "on_site":
            event = OnSiteRequested(alarm_id, staff)
        else:
            event = CloseRequested(alarm_id, staff, "hjälp given")
        h.step(event, advance)
    return h


@settings(max_examples=300)
@given(scripts())
def test_hops_never_go_backwards(script: list[tuple[str, tuple[str, ...], float]]) -> None:
    h = run(script)
    for alarm in h.core.alarms.values():
        order = [HOP_ORDER[e.hop] for e in alarm.hops]
        assert order == sorted(set(order)), "hops strictly increase"
        assert alarm.hops[0].hop is Hop.RAISED and alarm.hops[1].hop is Hop.STORED
        times = [e.at for e in alarm.hops[1:]]
        assert times == sorted(times)
        if alarm.state == "closed":
            assert alarm.cause


@settings(max_examples=300)
@given(scripts())
def test_duplicates_give_exactly_one_alarm(
    script: list[tuple[str, tuple[str, ...], float]],
) -> None:
    h = run(script)
    keys = [(a.device_id, a.ref) for a in h.core.alarms.values()]
    sent = {args for kind, args, _ in script if kind == "alarm" and args[0] != "ghost"}
    assert set(keys) == sent
    # The script resends identical messages: a (device, ref) opens another alarm only after
    # the previous one closed and the resend window passed.
    by_key: dict[tuple[str, str], list[Alarm]] = {}
    for alarm in h.core.alarms.values():
        by_key.setdefault((alarm.device_id, alarm.ref), []).append(alarm)
    for alarms in by_key.values():
        for first, later in itertools.pairwise(alarms):
            closed = first.at(Hop.CLOSED)
            stored = later.at(Hop.STORED)
            assert closed is not None and stored is not None
            assert stored >= closed and stored - (first.at(Hop.STORED) or 0) >= RESEND_WINDOW_S


@settings(max_examples=300)
@given(scripts())
def test_replay_reproduces_state(script: list[tuple[str, tuple[str, ...], float]]) -> None:
    h = run(script)
    replayed = AlarmCore(DIRECTORY)
    replayed.apply_all([from_json(to_json(r)) for r in h.journal])
    assert replayed.alarms == h.core.alarms
    for alarm in h.core.alarms.values():
        # A reused ref may have opened more than one alarm: the index points where the live
        # core's does (the latest), after replay as before.
        assert replayed.find(alarm.device_id, alarm.ref) == h.core.find(alarm.device_id,
                                                                          alarm.ref)


TECH_DIRECTORY = Directory(
    device_recipient={"btn": "r-a", "temp": "r-a"},
    recipients={"r-a": Recipient("r-a", "team-a")},
    staff={
        "anna": Staff("anna", frozenset({"team-a"})),
        "tove": Staff("tove", frozenset(), role="technician"),
    },
    device_types={"btn": "alarm_unit", "temp": "temperature"},
)


def technical(device: str, ref: str = "offline.1") -> AlarmReceived:
    return AlarmReceived(device, ref, AlarmType.TECHNICAL, int(T0 * 1000), f"T-{device}",
                         detail="offline")


def test_technical_alarm_of_a_safety_device_reaches_team_and_technicians() -> None:
    core = AlarmCore(TECH_DIRECTORY)
    decision = core.decide(technical("btn"), T0)
    notify = next(a for a in decision.actions if isinstance(a, Notify))
    assert notify.staff_ids == frozenset({"anna", "tove"})
    core.apply_all(list(decision.records))
    assert core.alarms["T-btn"].detail == "offline"


def test_technical_alarm_of_a_sensor_reaches_technicians_only() -> None:
    core = AlarmCore(TECH_DIRECTORY)
    notify = [a for a in core.decide(technical("temp"), T0).actions if isinstance(a, Notify)]
    assert notify[0].staff_ids == frozenset({"tove"})


def test_gateway_may_raise_technical_alarms_about_itself_only() -> None:
    core = AlarmCore(TECH_DIRECTORY)
    assert core.decide(technical("gateway"), T0).records
    manual = AlarmReceived("gateway", "x", AlarmType.MANUAL, 0, "G")
    assert core.decide(manual, T0).refusal is not None


def test_cleared_technical_alarm_closes_with_the_outage() -> None:
    from alarms import TechnicalCleared

    core = AlarmCore(TECH_DIRECTORY)
    core.apply_all(list(core.decide(technical("btn"), T0).records))
    decision = core.decide(TechnicalCleared("btn", "offline.1", "outage 93 s"), T0 + 93)
    core.apply_all(list(decision.records))
    alarm = core.alarms["T-btn"]
    assert alarm.state == "closed"
    assert alarm.note == "outage 93 s"
    assert alarm.hops[-1].actor == "gateway"
    assert core.decide(TechnicalCleared("btn", "offline.1", "again"), T0 + 99).records == ()
