"""The SMS fallback in the pure core: when to text, whom, reply codes, delivery reports."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms import shortcode
from alarms.actions import Notify, NotifyCentre
from alarms.core import AlarmCore, Decision
from alarms.directory import Directory, Recipient, Staff
from alarms.escalation import SmsRule, TeamPolicy, sms_schedule
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CloseRequested,
    Event,
    HandBackRequested,
    NotificationReported,
    ReceiptConfirmed,
    Tick,
)
from alarms.model import SMS_CHANNEL, AlarmType, EscalationKind, NotificationStatus
from alarms.records import Escalated, NotificationRecorded, Record, from_json, to_json

T0 = 1_768_381_200.0  # a Wednesday 10:00 in Stockholm: day shift

POLICY = TeamPolicy(
    lead_id="lena",
    next_level_teams=("team-b",),
    sms_after_s=((1, 20.0), (2, 30.0)),
    sms_delivery_timeout_s=90.0,
)

STAFF = {
    "anna": Staff("anna", frozenset({"team-a"}), sms=True),
    "bo": Staff("bo", frozenset({"team-a"}), sms=True),
    "dag": Staff("dag", frozenset({"team-a"})),  # no phone number
    "lena": Staff("lena", frozenset({"team-a"}), role="lead"),
    "cleo": Staff("cleo", frozenset({"team-b"}), sms=True),
}

DIRECTORY = Directory(
    device_recipient={"dev-a": "r-a", "dev-a2": "r-a", "dev-b": "r-b"},
    recipients={"r-a": Recipient("r-a", "team-a"), "r-b": Recipient("r-b", "team-b")},
    staff=STAFF,
    policies={"team-a": POLICY, "team-b": POLICY},
)


class Harness:
    """Decide, journal (JSON round trip), apply: as the gateway does."""

    def __init__(self, directory: Directory = DIRECTORY) -> None:
        self.directory = directory
        self.core = AlarmCore(directory)
        self.journal: list[Record] = []
        self.now = T0

    def step(self, event: Event, at: float | None = None) -> Decision:
        if at is not None:
            self.now = at
        decision = self.core.decide(event, self.now)
        records = [from_json(to_json(r)) for r in decision.records]
        self.journal.extend(records)
        self.core.apply_all(records)
        return decision

    def alarm(self, new_id: str = "A1", device: str = "dev-a",
              kind: AlarmType = AlarmType.MANUAL) -> Decision:
        return self.step(AlarmReceived(device, f"ref-{new_id}", kind, int(self.now * 1000),
                                       new_id))

    def tick(self, at: float) -> Decision:
        return self.step(Tick(), at)

    def report(self, message_id: str, status: NotificationStatus, at: float,
               alarm_id: str = "A1") -> Decision:
        return self.step(NotificationReported(alarm_id, SMS_CHANNEL, message_id, status), at)


def escalations(decision: Decision) -> list[EscalationKind]:
    return [r.kind for r in decision.records if isinstance(r, Escalated)]


def queued(decision: Decision) -> list[NotificationRecorded]:
    return [r for r in decision.records if isinstance(r, NotificationRecorded)]


def test_no_receipt_within_the_delay_texts_the_staff_on_duty_who_have_a_phone() -> None:
    h = Harness()
    h.alarm()
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and deadline.kind is EscalationKind.SMS
    assert deadline.at == T0 + 30  # manual alarms are priority 2
    decision = h.tick(T0 + 30)
    assert escalations(decision) == [EscalationKind.SMS]
    messages = queued(decision)
    assert [m.staff_id for m in messages] == ["anna", "bo"]  # dag and lena have no phone
    assert {m.status for m in messages} == {NotificationStatus.QUEUED}
    code = messages[0].code
    assert code is not None and shortcode.is_code(code)
    assert {m.code for m in messages} == {code}
    alarm = h.core.alarms["A1"]
    assert alarm.level == 0  # an SMS is not a rung: the ladder keeps its place
    assert alarm.reply_code == code and h.core.find_code(code) is alarm
    # The app is told loudly at the same moment (the SMS may still be on its way).
    notify = next(a for a in decision.actions if isinstance(a, Notify))
    assert notify.urgent
    # An SMS round is not a delivery to the alarm centre (its entry also has an attempt).
    assert not any(isinstance(a, NotifyCentre) for a in decision.actions)
    # The next thing is the first rung, at its usual time.
    after = h.core.deadline_of("A1")
    assert after is not None and after.kind is EscalationKind.TEAM and after.at == T0 + 60


def test_a_receipt_in_time_means_no_sms() -> None:
    h = Harness()
    h.alarm()
    h.step(ReceiptConfirmed("A1", "anna"), T0 + 5)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and deadline.kind is EscalationKind.TEAM
    assert escalations(h.tick(T0 + 60)) == [EscalationKind.TEAM]
    assert h.core.alarms["A1"].notifications == ()


def test_the_delay_depends_on_priority_and_uncovered_priorities_get_no_sms() -> None:
    h = Harness()
    h.alarm(kind=AlarmType.SMOKE)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and (deadline.kind, deadline.at) == (EscalationKind.SMS, T0 + 20)
    h.alarm("A2", device="dev-b", kind=AlarmType.DOOR)  # priority 3: not configured
    second = h.core.deadline_of("A2")
    assert second is not None and second.kind is EscalationKind.TEAM


def test_sms_is_sent_once_per_ownerless_period() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    later = h.tick(T0 + 60)
    assert escalations(later) == [EscalationKind.TEAM]
    assert len(h.core.alarms["A1"].messages()) == 2


def test_delivered_sms_lets_the_ladder_run_at_its_usual_pace() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    h.report("A1.1.anna", NotificationStatus.SENT, T0 + 31)
    h.report("A1.1.anna", NotificationStatus.DELIVERED, T0 + 33)
    h.report("A1.1.bo", NotificationStatus.FAILED, T0 + 34)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and (deadline.kind, deadline.at) == (EscalationKind.TEAM, T0 + 60)


def test_all_failed_brings_the_next_rung_forward_to_the_last_failure() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    h.report("A1.1.anna", NotificationStatus.FAILED, T0 + 32)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and deadline.at == T0 + 60  # bo's SMS may still arrive
    h.report("A1.1.bo", NotificationStatus.FAILED, T0 + 35)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and (deadline.kind, deadline.at) == (EscalationKind.TEAM, T0 + 35)
    assert deadline.reason == "SMS not delivered"
    assert escalations(h.tick(T0 + 35)) == [EscalationKind.TEAM]
    # Only the one rung comes early; the rest of the ladder keeps its times.
    rest = h.core.deadline_of("A1")
    assert rest is not None and (rest.kind, rest.at) == (EscalationKind.NEXT_LEVEL, T0 + 180)


def test_no_delivery_report_in_time_escalates_at_the_timeout() -> None:
    policy = dataclasses.replace(POLICY, sms_delivery_timeout_s=20.0)
    h = Harness(dataclasses.replace(DIRECTORY, policies={"team-a": policy}))
    h.alarm()
    h.tick(T0 + 30)
    h.report("A1.1.anna", NotificationStatus.SENT, T0 + 31)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and (deadline.kind, deadline.at) == (EscalationKind.TEAM, T0 + 50)


def test_nobody_with_a_phone_escalates_at_once() -> None:
    staff = {k: dataclasses.replace(v, sms=False) for k, v in STAFF.items()}
    h = Harness(dataclasses.replace(DIRECTORY, staff=staff))
    h.alarm()
    decision = h.tick(T0 + 30)
    # The SMS round reached nobody: the first rung follows in the same tick.
    assert escalations(decision) == [EscalationKind.SMS, EscalationKind.TEAM]
    assert queued(decision) == []


def test_fallback_targets_when_no_one_on_duty_has_a_phone() -> None:
    staff = {**STAFF, "anna": dataclasses.replace(STAFF["anna"], sms=False),
             "bo": dataclasses.replace(STAFF["bo"], sms=False),
             "lena": dataclasses.replace(STAFF["lena"], sms=False)}
    h = Harness(dataclasses.replace(DIRECTORY, staff=staff))
    h.alarm()
    decision = h.tick(T0 + 30)
    assert [m.staff_id for m in queued(decision)] == ["cleo"]  # the next level has one
    # ... and being texted lets her act on the alarm.
    assert h.step(AcceptRequested("A1", "cleo"), T0 + 40).refusal is None


def test_reports_only_move_a_message_forward() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    assert h.report("A1.1.anna", NotificationStatus.DELIVERED, T0 + 31).records
    # Kannel's 202 arriving after the delivery report: changes nothing.
    late = h.report("A1.1.anna", NotificationStatus.SENT, T0 + 32)
    assert late == Decision()
    again = h.report("A1.1.anna", NotificationStatus.DELIVERED, T0 + 33)
    assert again == Decision()
    unknown = h.report("A1.1.mallory", NotificationStatus.DELIVERED, T0 + 34)
    assert unknown.refusal is not None and unknown.refusal.code == 404
    queued_again = h.report("A1.1.bo", NotificationStatus.QUEUED, T0 + 34)
    assert queued_again.refusal is not None and queued_again.refusal.code == 422
    statuses = {m.message_id: m.status for m in h.core.alarms["A1"].messages().values()}
    assert statuses == {"A1.1.anna": NotificationStatus.DELIVERED,
                        "A1.1.bo": NotificationStatus.QUEUED}


def test_codes_are_unique_among_open_alarms_and_freed_on_close() -> None:
    h = Harness()
    h.alarm("A1")
    h.alarm("A2", device="dev-b")
    h.tick(T0 + 30)
    first, second = h.core.alarms["A1"].reply_code, h.core.alarms["A2"].reply_code
    assert first and second and first != second
    h.step(AcceptRequested("A1", "anna"), T0 + 40)
    h.step(CloseRequested("A1", "anna", "hjälp given"), T0 + 50)
    assert h.core.find_code(first) is None
    assert h.core.find_code(second) is h.core.alarms["A2"]


def test_after_a_hand_back_no_second_sms_since_a_phone_had_it() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    h.step(AcceptRequested("A1", "anna"), T0 + 40)
    h.step(HandBackRequested("A1", "anna"), T0 + 50)
    deadline = h.core.deadline_of("A1")
    assert deadline is not None and deadline.kind is not EscalationKind.SMS


def test_replay_rebuilds_codes_messages_and_deadlines() -> None:
    h = Harness()
    h.alarm()
    h.tick(T0 + 30)
    h.report("A1.1.bo", NotificationStatus.FAILED, T0 + 31)
    replayed = AlarmCore(DIRECTORY)
    replayed.apply_all(h.journal)
    assert replayed.alarms == h.core.alarms
    code = h.core.alarms["A1"].reply_code
    assert code is not None and replayed.find_code(code) is replayed.alarms["A1"]
    assert replayed.deadline_of("A1") == h.core.deadline_of("A1")


# -- configuration --------------------------------------------------------------------------


def test_sms_schedule_team_rules_replace_the_general_ones() -> None:
    rules = [SmsRule(30.0, 2), SmsRule(10.0, 1, frozenset({"night"})),
             SmsRule(45.0, 3, frozenset({"night"})), SmsRule(0.5, 0, frozenset({"quiet"}))]
    assert sms_schedule(rules, "day") == ((1, 30.0), (2, 30.0))
    assert sms_schedule(rules, "night") == ((1, 10.0), (2, 45.0), (3, 45.0))
    assert sms_schedule(rules, "quiet") == ()
    assert sms_schedule([], "day") == ()
    assert TeamPolicy(sms_after_s=sms_schedule(rules, "night")).sms_delay(3) == 45.0
    with pytest.raises(ValueError, match="positive"):
        TeamPolicy(sms_after_s=((1, 0.0),))


# -- reply codes ----------------------------------------------------------------------------


@given(st.text(min_size=1, max_size=40), st.sets(st.text(alphabet=shortcode.ALPHABET,
                                                             min_size=4, max_size=4)))
def test_assigned_codes_are_well_shaped_free_and_deterministic(
    alarm_id: str, in_use: set[str]
) -> None:
    code = shortcode.assign(alarm_id, in_use)
    assert shortcode.is_code(code) and code not in in_use
    assert shortcode.assign(alarm_id, in_use) == code


@given(st.text(max_size=8))
def test_is_code_accepts_only_mixed_four_character_codes(text: str) -> None:
    if shortcode.is_code(text):
        assert len(text) == 4 and set(text) <= set(shortcode.ALPHABET)
        assert set(text) & shortcode.DIGITS and set(text) - shortcode.DIGITS
    for word in ("HEJA", "TACK", "2024", "K0Q2", "k7q2", "K7Q", "K7Q2X"):
        assert not shortcode.is_code(word)
    assert shortcode.is_code("K7Q2")


# -- properties over random scripts ---------------------------------------------------------

_STATUSES = [NotificationStatus.SENT, NotificationStatus.DELIVERED, NotificationStatus.FAILED]


@st.composite
def scripts(draw: st.DrawFn) -> list[tuple[str, str, str, float]]:
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["alarm", "tick", "report", "receipt", "accept", "close", "handback"]),
        st.sampled_from(["A1", "A2", "A3"]),
        st.sampled_from(["anna", "bo", "lena", "cleo"]),
        st.floats(min_value=0.0, max_value=120.0),
    ), max_size=30))
    return [(kind, alarm, staff, gap) for kind, alarm, staff, gap in steps]


def _event(h: Harness, kind: str, alarm_id: str, staff: str, n: int) -> Event | None:
    if kind == "alarm":
        device = {"A1": "dev-a", "A2": "dev-b", "A3": "dev-a2"}[alarm_id]
        return AlarmReceived(device, f"r{n}", AlarmType.FALL, 0, f"{alarm_id}-{n}")
    if kind == "tick":
        return Tick()
    alarms = [a for a in h.core.alarms if a.startswith(alarm_id)]
    if not alarms:
        return None
    target = alarms[-1]
    if kind == "report":
        messages = list(h.core.alarms[target].messages())
        if not messages:
            return None
        return NotificationReported(target, SMS_CHANNEL, messages[n % len(messages)],
                                    _STATUSES[n % 3])
    if kind == "receipt":
        return ReceiptConfirmed(target, staff)
    if kind == "accept":
        return AcceptRequested(target, staff)
    if kind == "handback":
        return HandBackRequested(target, staff)
    return CloseRequested(target, staff, "hjälp given")


@settings(max_examples=150, deadline=None)
@given(scripts())
def test_replay_reproduces_state_and_open_codes_stay_unique(
    script: list[tuple[str, str, str, float]],
) -> None:
    h = Harness(dataclasses.replace(
        DIRECTORY, policies={"team-a": POLICY, "team-b": POLICY},
        device_recipient={**DIRECTORY.device_recipient},
    ))
    for n, (kind, alarm_id, staff, gap) in enumerate(script):
        event = _event(h, kind, alarm_id, staff, n)
        if event is not None:
            h.step(event, h.now + gap)
        open_codes = [a.reply_code for a in h.core.open_in_order() if a.reply_code]
        assert len(open_codes) == len(set(open_codes))
        for alarm in h.core.open_in_order():
            # Every message's status only ever moved forward; at most one round per
            # ownerless period means at most one SMS per staff member per round.
            rounds = [e for e in alarm.escalations if e.kind is EscalationKind.SMS]
            assert len({e.attempt for e in rounds}) == len(rounds)
    replayed = AlarmCore(h.directory)
    replayed.apply_all(h.journal)
    assert replayed.alarms == h.core.alarms
    assert replayed.next_deadline() == h.core.next_deadline()
    for alarm in h.core.open_in_order():
        if alarm.reply_code:
            assert replayed.find_code(alarm.reply_code) == alarm
