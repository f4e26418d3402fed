"""Routing, the escalation ladder and the staff workflow, on a fake clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms import (
    AcceptRequested,
    AckDevice,
    AlarmCore,
    AlarmReceived,
    AlarmType,
    CentreConfirmed,
    CloseRequested,
    Decision,
    Directory,
    Escalated,
    EscalationKind,
    ForwardRequested,
    HandBackRequested,
    Hop,
    Notify,
    NotifyCentre,
    OnSiteRequested,
    ReceiptConfirmed,
    Recipient,
    Record,
    Roster,
    Shift,
    Staff,
    TakeOverRequested,
    TeamPolicy,
    Tick,
)
from alarms.events import Event, StaffConnected, StaffDisconnected
from alarms.kpi import Period, response_times, summarize
from alarms.records import from_json, to_json
from alarms.roster import every_day

# 2026-01-14 10:00 Europe/Stockholm (CET, UTC+1): a Wednesday day shift.
T0 = 1_768_381_200.0

POLICY = TeamPolicy(
    lead_id="lena",
    next_level_teams=("team-b",),
    night_patrol_teams=("patrol",),
    attach_repeats=True,
)

DIRECTORY = Directory(
    device_recipient={"dev-a": "r-a", "dev-a2": "r-a", "dev-b": "r-b", "smoke-a": "r-a"},
    recipients={"r-a": Recipient("r-a", "team-a"), "r-b": Recipient("r-b", "team-b")},
    staff={
        "anna": Staff("anna", frozenset({"team-a"})),
        "bo": Staff("bo", frozenset({"team-a"})),
        "lena": Staff("lena", frozenset({"team-a"}), role="lead"),
        "cleo": Staff("cleo", frozenset({"team-b"})),
        "nils": Staff("nils", frozenset({"patrol"})),
        "dan": Staff("dan", frozenset({"team-a"}), on_duty=False),
    },
    rosters={
        "team-a": Roster(
            "team-a",
            weekly={
                **every_day(Shift.DAY, frozenset({"anna", "bo"})),
                **every_day(Shift.EVENING, frozenset({"bo"})),
                **every_day(Shift.NIGHT, frozenset()),
            },
        ),
    },
    policies={"team-a": POLICY},
)


class Harness:
    """Decide, persist (a list, JSON round-trip), apply: as the gateway does."""

    def __init__(self, directory: Directory = DIRECTORY, *, presence: bool = False) -> None:
        self.directory = directory
        self.core = AlarmCore(directory, track_presence=presence)
        self.journal: list[Record] = []
        self.now = T0
        self.sent_ts: dict[tuple[str, str, AlarmType], int] = {}

    def step(self, event: Event, advance: float = 0.0) -> Decision:
        self.now += advance
        decision = self.core.decide(event, self.now)
        records = [from_json(to_json(r)) for r in decision.records]
        self.journal.extend(records)
        self.core.apply_all(records)
        return decision

    def alarm(self, device: str = "dev-a", ref: str = "r1",
              kind: AlarmType = AlarmType.MANUAL, new_id: str = "A1") -> Decision:
        """An alarm message; the same device, ref and kind again resend it (same device time)."""
        ts = self.sent_ts.setdefault((device, ref, kind), int(self.now * 1000))
        return self.step(AlarmReceived(device, ref, kind, ts, new_id))

    def tick_at(self, at: float) -> Decision:
        self.now = at
        return self.step(Tick())

    def tick_next(self) -> Decision:
        deadline = self.core.next_deadline()
        assert deadline is not None
        return self.tick_at(deadline)

    def replayed(self) -> AlarmCore:
        core = AlarmCore(self.directory)
        core.apply_all([from_json(to_json(r)) for r in self.journal])
        return core


def kinds(decision: Decision) -> list[tuple[EscalationKind, int]]:
    return [(r.kind, r.level) for r in decision.records if isinstance(r, Escalated)]


def notify_of(decision: Decision) -> Notify:
    return next(a for a in decision.actions if isinstance(a, Notify))


# -- routing -------------------------------------------------------------------------------


def test_routing_follows_the_roster_shift() -> None:
    h = Harness()
    assert notify_of(h.alarm()).staff_ids == {"anna", "bo"}  # day shift
    h.now = T0 + 8 * 3600  # 18:00, evening: only bo
    assert notify_of(h.alarm(ref="e1", device="dev-b", new_id="B")).staff_ids == {"cleo"}
    evening = AlarmCore(DIRECTORY).decide(AlarmReceived("dev-a2", "x", AlarmType.FALL, 0, "E"),
                                          h.now)
    assert notify_of(evening).staff_ids == {"bo"}


def test_nobody_on_the_night_roster_falls_back_to_the_night_patrol() -> None:
    core = AlarmCore(DIRECTORY)
    night = T0 + 14 * 3600  # 00:00
    decision = core.decide(AlarmReceived("dev-a", "n", AlarmType.FALL, 0, "N"), night)
    assert notify_of(decision).staff_ids == {"nils"}


def test_presence_prefers_connected_staff_but_never_leaves_nobody() -> None:
    h = Harness(presence=True)
    h.core.observe(StaffConnected("bo"))
    assert notify_of(h.alarm()).staff_ids == {"bo"}
    h.core.observe(StaffDisconnected("bo"))
    decision = h.core.decide(AlarmReceived("dev-b", "z", AlarmType.FALL, 0, "Z"), h.now)
    assert notify_of(decision).staff_ids == {"cleo"}  # nobody connected: the roster


def test_presence_counts_connections() -> None:
    core = AlarmCore(DIRECTORY, track_presence=True)
    core.observe(StaffConnected("anna"))
    core.observe(StaffConnected("anna"))
    core.observe(StaffDisconnected("anna"))
    assert core.connected() == frozenset({"anna"})
    core.observe(StaffDisconnected("anna"))
    assert core.connected() == frozenset()
    assert AlarmCore(DIRECTORY).connected() is None


def test_busy_staff_are_skipped_when_configured() -> None:
    busy = Directory(
        device_recipient=DIRECTORY.device_recipient,
        recipients=DIRECTORY.recipients,
        staff=DIRECTORY.staff,
        rosters=DIRECTORY.rosters,
        policies={"team-a": TeamPolicy(busy_excludes=True)},
    )
    h = Harness(busy)
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(AlarmReceived("dev-b", "r9", AlarmType.MANUAL, 0, "X"))  # other recipient
    decision = h.core.decide(AlarmReceived("dev-a", "r2", AlarmType.SMOKE, 0, "S"), h.now)
    assert notify_of(decision).staff_ids == {"anna", "bo"}  # fire: everyone, busy or not
    decision = h.core.decide(AlarmReceived("dev-a2", "r3", AlarmType.FALL, 0, "F"), h.now)
    assert notify_of(decision).staff_ids == {"bo"}


def test_smoke_goes_to_whole_team_and_centre_immediately_when_configured() -> None:
    fire = Directory(
        device_recipient=DIRECTORY.device_recipient,
        recipients=DIRECTORY.recipients,
        staff=DIRECTORY.staff,
        policies={"team-a": TeamPolicy(centre_immediately=frozenset({AlarmType.SMOKE}))},
    )
    h = Harness(fire, presence=True)
    h.core.observe(StaffConnected("anna"))
    decision = h.alarm(device="smoke-a", kind=AlarmType.SMOKE)
    assert decision.actions == (
        AckDevice("smoke-a", "r1", "stored"),
        Notify("A1", frozenset({"anna", "bo", "lena"})),
        NotifyCentre("A1", 1),
    )
    alarm = h.core.alarms["A1"]
    assert [e.hop for e in alarm.hops] == [Hop.RAISED, Hop.STORED, Hop.ROUTED]
    assert alarm.centre_attempts == 1 and alarm.level == 0
    retry = h.core.deadline_of("A1")
    assert retry is not None and retry.kind is EscalationKind.CENTRE and retry.at == h.now + 30


# -- the ladder ----------------------------------------------------------------------------


def test_every_ladder_step_then_centre_retries_until_confirmed() -> None:
    h = Harness()
    h.alarm()
    stored = h.now
    assert h.core.next_deadline() == stored + 60

    team = h.tick_next()
    assert kinds(team) == [(EscalationKind.TEAM, 1)]
    assert notify_of(team).urgent and notify_of(team).staff_ids == {"anna", "bo"}
    assert h.core.next_deadline() == stored + 180

    nxt = h.tick_next()
    assert kinds(nxt) == [(EscalationKind.NEXT_LEVEL, 2)]
    assert {"cleo", "lena"} <= notify_of(nxt).staff_ids  # neighbouring team + lead
    assert {"cleo", "lena"} <= h.core.alarms["A1"].targets  # they may now act on it
    assert h.core.next_deadline() == stored + 300

    centre = h.tick_next()
    assert kinds(centre) == [(EscalationKind.CENTRE, 3)]
    assert NotifyCentre("A1", 1) in centre.actions
    assert h.core.next_deadline() == h.now + 30

    retry = h.tick_next()
    assert retry.actions == (NotifyCentre("A1", 2),)  # staff are not re-notified per retry
    assert h.core.next_deadline() == h.now + 60  # backoff doubles

    confirmed = h.step(CentreConfirmed("A1", 2, "LC-7"), advance=5)
    assert confirmed.records and h.core.alarms["A1"].centre_reference == "LC-7"
    assert h.step(CentreConfirmed("A1", 2)).records == ()  # idempotent
    # Ladder exhausted and the centre has it: remind everyone every five minutes.
    reminder = h.core.deadline_of("A1")
    assert reminder is not None and reminder.kind is EscalationKind.REMINDER
    assert reminder.at == stored + 300 + 300


def test_night_next_level_is_the_night_patrol() -> None:
    h = Harness()
    h.now = T0 + 12 * 3600  # 22:00
    h.alarm()
    h.tick_next()
    nxt = h.tick_next()
    assert "nils" in notify_of(nxt).staff_ids and "cleo" not in notify_of(nxt).staff_ids


def test_accept_stops_the_ladder_and_arms_the_presence_deadline() -> None:
    h = Harness()
    h.alarm()
    h.tick_next()  # level 1
    h.step(AcceptRequested("A1", "bo"), advance=10)
    accepted = h.now
    due = h.core.deadline_of("A1")
    assert due is not None and due.kind is EscalationKind.LEAD
    assert due.at == accepted + 1800
    lead = h.tick_next()
    assert kinds(lead) == [(EscalationKind.LEAD, 1)]  # level unchanged
    assert "lena" in notify_of(lead).staff_ids
    assert h.core.next_deadline() == h.now + 300  # then reminders to the lead
    h.step(OnSiteRequested("A1", "bo"), advance=20)
    due = h.core.deadline_of("A1")
    assert due is not None and due.kind is EscalationKind.REMINDER and due.at == h.now + 3600
    h.step(CloseRequested("A1", "bo", "hjälp given"), advance=60)
    assert h.core.deadline_of("A1") is None and h.core.next_deadline() is None


def test_tick_after_an_outage_catches_up_in_one_decision() -> None:
    h = Harness()
    h.alarm()
    late = h.tick_at(h.now + 1000)
    assert kinds(late) == [(EscalationKind.TEAM, 1), (EscalationKind.NEXT_LEVEL, 2),
                           (EscalationKind.CENTRE, 3)]
    assert next(a for a in late.actions if isinstance(a, Notify)).urgent
    assert sum(isinstance(a, Notify) for a in late.actions) == 1  # one push, not three
    assert NotifyCentre("A1", 1) in late.actions
    assert h.step(Tick()).records == ()  # nothing more is due


def test_technical_and_test_alarms_never_climb_the_ladder() -> None:
    h = Harness()
    h.alarm(kind=AlarmType.TEST, ref="t")
    due = h.core.deadline_of("A1")
    assert due is not None and due.kind is EscalationKind.REMINDER and due.at == h.now + 3600
    reminder = h.tick_next()
    assert kinds(reminder) == [(EscalationKind.REMINDER, 0)]
    assert not any(isinstance(a, NotifyCentre) for a in reminder.actions)


def test_restart_mid_escalation_gives_same_deadline_and_next_actions() -> None:
    h = Harness()
    h.alarm()
    h.tick_next()
    h.tick_next()  # level 2, centre due at +300
    restarted = h.replayed()
    assert restarted.alarms == h.core.alarms
    assert restarted.next_deadline() == h.core.next_deadline()
    deadline = h.core.next_deadline()
    assert deadline is not None
    assert restarted.decide(Tick(), deadline) == h.core.decide(Tick(), deadline)


def test_decide_tick_is_pure() -> None:
    h = Harness()
    h.alarm()
    before = dict(h.core.alarms)
    h.core.decide(Tick(), h.now + 1000)
    assert h.core.alarms == before and h.core.next_deadline() == h.now + 60


# -- staff workflow ------------------------------------------------------------------------


def test_simultaneous_accept_exactly_one_wins() -> None:
    h = Harness()
    h.alarm()
    first = h.core.decide(AcceptRequested("A1", "anna"), h.now)
    # The gateway serialises staff actions: the second is decided after the first applied.
    h.core.apply_all(list(first.records))
    second = h.core.decide(AcceptRequested("A1", "bo"), h.now)
    assert second.refusal is not None and second.refusal.code == 409
    assert "anna" in second.refusal.reason
    assert h.core.alarms["A1"].owner == "anna"


def test_forward_to_a_named_colleague() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"), advance=5)
    accepted = h.now
    fwd = h.step(ForwardRequested("A1", "anna", "bo"), advance=5)
    assert fwd.refusal is None
    alarm = h.core.alarms["A1"]
    assert alarm.owner == "bo" and alarm.handovers[-1].actor == "anna"
    assert notify_of(fwd).urgent and "bo" in notify_of(fwd).staff_ids
    # The recipient has been waiting since the acceptance: the deadline does not restart.
    due = h.core.deadline_of("A1")
    assert due is not None and due.at == accepted + 1800
    assert h.step(OnSiteRequested("A1", "anna")).refusal is not None
    assert h.step(OnSiteRequested("A1", "bo")).refusal is None


@pytest.mark.parametrize(
    ("event", "code", "words"),
    [
        (ForwardRequested("A1", "bo", "anna"), 409, "accepted by anna"),
        (ForwardRequested("A1", "anna", "anna"), 422, "yourself"),
        (ForwardRequested("A1", "anna", "ghost"), 422, "no colleague"),
        (ForwardRequested("A1", "anna", "cleo"), 422, "does not answer"),
        (ForwardRequested("A1", "anna", "dan"), 422, "not on duty"),
        (HandBackRequested("A1", "bo"), 409, "accepted by anna"),
        (TakeOverRequested("A1", "cleo"), 403, "another team"),
    ],
)
def test_workflow_refusals(event: Event, code: int, words: str) -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    decision = h.step(event)
    assert decision.refusal is not None and decision.refusal.code == code
    assert words in decision.refusal.reason
    assert decision.records == ()


def test_forward_before_accept_is_refused() -> None:
    h = Harness()
    h.alarm()
    decision = h.step(ForwardRequested("A1", "anna", "bo"))
    assert decision.refusal is not None and "accepted first" in decision.refusal.reason


def test_take_over_and_hand_back() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(TakeOverRequested("A1", "bo"), advance=30)
    assert h.core.alarms["A1"].owner == "bo"
    assert h.step(TakeOverRequested("A1", "bo")).records == ()  # already his
    back = h.step(HandBackRequested("A1", "bo"), advance=30)
    assert notify_of(back).urgent
    assert h.core.alarms["A1"].owner is None
    # Nobody owns it: the ladder resumes at level 0 from the hand-back.
    assert h.core.next_deadline() == h.now + 60
    again = h.step(AcceptRequested("A1", "anna"), advance=10)
    assert again.refusal is None and h.core.alarms["A1"].owner == "anna"
    assert [e.hop for e in h.core.alarms["A1"].hops].count(Hop.ACCEPTED) == 1
    due = h.core.deadline_of("A1")
    assert due is not None and due.at == h.now + 1800  # a new owner, a new presence clock


def test_hand_back_resumes_the_ladder_where_it_was() -> None:
    h = Harness()
    h.alarm()
    h.tick_next()
    h.tick_next()  # level 2 at +180
    h.step(AcceptRequested("A1", "cleo"), advance=10)  # the neighbouring team may take it
    h.step(HandBackRequested("A1", "cleo"), advance=10)
    assert h.core.alarms["A1"].level == 2
    assert h.core.next_deadline() == h.now + 120  # the gap to the centre step, not 5 min
    assert kinds(h.tick_next()) == [(EscalationKind.CENTRE, 3)]


def test_hand_back_after_on_site_is_refused() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(OnSiteRequested("A1", "anna"))
    decision = h.step(HandBackRequested("A1", "anna"))
    assert decision.refusal is not None and decision.refusal.code == 409


def test_take_over_of_an_unowned_alarm_accepts_it() -> None:
    h = Harness()
    h.alarm()
    h.step(TakeOverRequested("A1", "bo"))
    assert h.core.alarms["A1"].owner == "bo"
    assert h.core.alarms["A1"].last_hop is Hop.ACCEPTED


# -- close causes --------------------------------------------------------------------------


def test_close_with_unknown_cause_lists_the_allowed_ones() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    wrong = h.step(CloseRequested("A1", "anna", "klart"))
    assert wrong.refusal is not None and wrong.refusal.code == 422
    assert "hjälp given" in wrong.refusal.reason and "ingen åtgärd" in wrong.refusal.reason
    h.step(CloseRequested("A1", "anna", "  Fall - hjälpt upp "))
    assert h.core.alarms["A1"].cause == "fall – hjälpt upp"  # stored canonical


def test_technical_alarm_may_be_closed_as_restored_by_staff() -> None:
    h = Harness()
    h.alarm(kind=AlarmType.TECHNICAL)
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "återställd / restored"))
    assert h.core.alarms["A1"].state == "closed"


# -- dedupe and flapping -------------------------------------------------------------------


def test_repeats_from_the_same_recipient_attach_and_stay_exactly_once() -> None:
    h = Harness()
    h.alarm()
    again = h.alarm(device="dev-a2", ref="x1", new_id="A2", kind=AlarmType.FALL)
    assert again.actions == (AckDevice("dev-a2", "x1", "stored"),)  # within a minute: quiet
    h.now += 61
    third = h.alarm(ref="r2", new_id="A3")
    assert isinstance(third.actions[1], Notify)
    alarm = h.core.alarms["A1"]
    assert set(h.core.alarms) == {"A1"}
    assert [(a.device_id, a.ref) for a in alarm.attached] == [("dev-a2", "x1"), ("dev-a", "r2")]
    assert h.core.find("dev-a2", "x1") is alarm
    resent = h.alarm(device="dev-a2", ref="x1", new_id="A4", kind=AlarmType.FALL)
    assert resent.records == () and resent.actions == (AckDevice("dev-a2", "x1", "stored"),)
    assert h.replayed().find("dev-a", "r2") == alarm


def test_a_more_urgent_type_opens_a_new_alarm() -> None:
    h = Harness()
    h.alarm()
    h.alarm(device="smoke-a", ref="s1", kind=AlarmType.SMOKE, new_id="S")
    assert set(h.core.alarms) == {"A1", "S"}


def test_attach_stops_once_the_alarm_is_closed() -> None:
    h = Harness()
    h.alarm()
    h.step(AcceptRequested("A1", "anna"))
    h.step(CloseRequested("A1", "anna", "ingen åtgärd"))
    h.alarm(ref="r2", new_id="A2")
    assert set(h.core.alarms) == {"A1", "A2"}


# -- KPIs ----------------------------------------------------------------------------------


def test_kpis_per_team_shift_and_period() -> None:
    h = Harness()
    h.alarm()
    h.step(ReceiptConfirmed("A1", "anna"), advance=4)
    h.step(AcceptRequested("A1", "anna"), advance=6)
    h.step(OnSiteRequested("A1", "anna"), advance=600)
    h.step(CloseRequested("A1", "anna", "hjälp given"), advance=300)
    h.now = T0 + 8 * 3600
    h.alarm(device="dev-b", ref="b", new_id="B")
    h.step(AcceptRequested("B", "cleo"), advance=60)
    h.step(OnSiteRequested("B", "cleo"), advance=2400)

    rt = response_times(h.core.alarms["A1"])
    assert (rt.to_delivered, rt.to_accepted, rt.to_on_site, rt.to_closed) == (4, 10, 610, 910)
    assert rt.shift is Shift.DAY and rt.period == "2026-01-14"

    rows = summarize(h.core.alarms.values(), by=frozenset({"team"}))
    by_team = {r.team_id: r for r in rows}
    assert by_team["team-a"].on_site_share == 1.0
    assert by_team["team-b"].on_site_share == 0.0  # 41 minutes: target missed
    rows = summarize(h.core.alarms.values(), by=frozenset({"shift", "period"}),
                     period=Period.WEEK)
    assert {(r.shift, r.period) for r in rows} == {
        (Shift.DAY, "2026-W03"), (Shift.EVENING, "2026-W03")}
    total = summarize(h.core.alarms.values(), by=frozenset())
    assert total[0].alarms == 2 and total[0].on_site.p50 == 610


def test_kpi_leaves_open_alarms_out_of_the_share_while_they_still_have_time() -> None:
    h = Harness()
    h.alarm()
    rows = summarize(h.core.alarms.values(), now=h.now + 60)
    assert rows[0].on_site_share is None
    assert (rows[0].on_site_judged, rows[0].on_site_pending) == (0, 1)
    rows = summarize(h.core.alarms.values(), now=h.now + 3600)
    assert rows[0].on_site_share == 0.0
    assert (rows[0].on_site_judged, rows[0].on_site_missed, rows[0].on_site_missed_open) == (
        1, 1, 1)


# One device per recipient: every alarm is an alarm of its own (no attaching).
KPI_DIRECTORY = Directory(
    device_recipient={f"d{n}": f"r{n}" for n in range(30)},
    recipients={f"r{n}": Recipient(f"r{n}", "team-a") for n in range(30)},
    staff={"anna": Staff("anna", frozenset({"team-a"}))},
)


def test_kpi_one_alarm_on_time_and_six_open_past_the_target_is_not_100_percent() -> None:
    """The ops card's case: one alarm on site in time while six stay open past the target."""
    h = Harness(KPI_DIRECTORY)
    h.alarm(device="d0", new_id="A0")
    h.step(AcceptRequested("A0", "anna"), advance=60)
    h.step(OnSiteRequested("A0", "anna"), advance=600)
    for n in range(1, 7):
        h.alarm(device=f"d{n}", ref=f"b{n}", new_id=f"B{n}")
    row = summarize(h.core.alarms.values(), by=frozenset(), now=h.now + 1801)[0]
    assert row.alarms == 7
    assert (row.on_site_judged, row.on_site_within_target, row.on_site_missed) == (7, 1, 6)
    assert row.on_site_missed_open == 6 and row.on_site_pending == 0
    assert row.on_site_share == pytest.approx(1 / 7)
    early = summarize(h.core.alarms.values(), by=frozenset(), now=h.now + 60)[0]
    assert (early.on_site_judged, early.on_site_pending, early.on_site_share) == (1, 6, 1.0)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 7200), st.one_of(st.none(), st.floats(0, 7200))),
                min_size=1, max_size=20), st.floats(0, 10_000))
def test_kpi_share_parts_add_up(
    alarms: list[tuple[float, float | None]], later: float
) -> None:
    """Within + missed = n, n + pending = all, and the share is within / n."""
    h = Harness(KPI_DIRECTORY)
    for index, (offset, on_site_after) in enumerate(sorted(alarms, key=lambda a: a[0])):
        h.now = max(h.now, T0 + offset)
        h.alarm(device=f"d{index}", ref=f"r{index}", new_id=f"X{index}")
        if on_site_after is not None:
            h.step(AcceptRequested(f"X{index}", "anna"))
            h.step(OnSiteRequested(f"X{index}", "anna"), advance=on_site_after)
    now = h.now + later
    for row in summarize(h.core.alarms.values(), by=frozenset(), now=now):
        assert row.on_site_within_target + row.on_site_missed == row.on_site_judged
        assert row.on_site_judged + row.on_site_pending == row.alarms
        assert row.on_site_missed_open <= row.on_site_missed
        if row.on_site_judged:
            assert row.on_site_share == row.on_site_within_target / row.on_site_judged
