"""The core as a state machine: random alarms, receipts, staff actions and clock jumps.

Hypothesis drives the core the way the gateway does (decide, journal as JSON, apply) and
checks after every step what must always hold.
"""

from __future__ import annotations

import math

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from alarms import (
    AcceptRequested,
    AlarmCore,
    AlarmReceived,
    AlarmType,
    CentreConfirmed,
    CloseRequested,
    Decision,
    Directory,
    ForwardRequested,
    HandBackRequested,
    HandoverKind,
    Hop,
    OnSiteRequested,
    OwnerChanged,
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
from alarms.model import HOP_ORDER
from alarms.records import HopAdded, from_json, to_json
from alarms.roster import every_day

T0 = 1_774_735_200.0  # 2026-03-28 23:00 CET: the spring-forward night is in reach

STAFF = ("anna", "bo", "lena", "cleo", "nils")
DIRECTORY = Directory(
    device_recipient={"dev-a": "r-a", "btn-a": "r-a", "dev-b": "r-b", "dev-c": "r-c"},
    recipients={
        "r-a": Recipient("r-a", "team-a"),
        "r-b": Recipient("r-b", "team-b"),
        "r-c": Recipient("r-c", "team-a"),
    },
    staff={
        "anna": Staff("anna", frozenset({"team-a"})),
        "bo": Staff("bo", frozenset({"team-a"})),
        "lena": Staff("lena", frozenset({"team-a"}), role="lead"),
        "cleo": Staff("cleo", frozenset({"team-b"})),
        "nils": Staff("nils", frozenset({"patrol"})),
    },
    rosters={
        "team-a": Roster(
            "team-a",
            weekly={
                **every_day(Shift.DAY, frozenset({"anna", "bo"})),
                **every_day(Shift.EVENING, frozenset({"bo"})),
            },
        )
    },
    policies={
        "team-a": TeamPolicy(
            lead_id="lena",
            next_level_teams=("team-b",),
            night_patrol_teams=("patrol",),
            attach_repeats=True,
            centre_immediately=frozenset({AlarmType.SMOKE}),
        ),
        "team-b": TeamPolicy(busy_excludes=True, attach_repeats=True),
    },
)

CAUSES = ("hjälp given", "felaktigt larm", "ingen åtgärd", "nonsense", "återställd / restored")
TYPES = (AlarmType.MANUAL, AlarmType.FALL, AlarmType.SMOKE, AlarmType.BED_EXIT,
         AlarmType.TEST, AlarmType.TECHNICAL)


class CoreMachine(RuleBasedStateMachine):
    """Random sequences; invariants after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.core = AlarmCore(DIRECTORY, track_presence=True)
        self.journal: list[Record] = []
        self.now = T0
        self.serial = 0
        self.levels: dict[str, int] = {}
        self.refs: set[tuple[str, str]] = set()

    # -- driving -------------------------------------------------------------------------

    def step(self, event: Event) -> Decision:
        decision = self.core.decide(event, self.now)
        if decision.refusal is not None:
            assert decision.records == ()
        records = [from_json(to_json(r)) for r in decision.records]
        self.journal.extend(records)
        self.core.apply_all(records)
        return decision

    def pick(self, index: int) -> str:
        ids = sorted(self.core.alarms)
        return ids[index % len(ids)] if ids else "none"

    # -- rules -----------------------------------------------------------------------------

    @rule(device=st.sampled_from(["dev-a", "btn-a", "dev-b", "dev-c", "ghost"]),
          ref=st.sampled_from(["1", "2", "3", "4"]), kind=st.sampled_from(TYPES))
    def alarm(self, device: str, ref: str, kind: AlarmType) -> None:
        self.serial += 1
        event = AlarmReceived(device, ref, kind, int(self.now * 1000), f"A{self.serial:03d}")
        decision = self.step(event)
        if device != "ghost":
            self.refs.add((device, ref))
            assert self.core.find(device, ref) is not None  # exactly once per ref
            assert any(getattr(a, "status", None) == "stored" for a in decision.actions)

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF))
    def receipt(self, index: int, staff: str) -> None:
        self.step(ReceiptConfirmed(self.pick(index), staff))

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF))
    def accept(self, index: int, staff: str) -> None:
        alarm_id = self.pick(index)
        before = self.core.alarms.get(alarm_id)
        decision = self.step(AcceptRequested(alarm_id, staff))
        if before is not None and before.owner not in (None, staff):
            assert decision.refusal is not None
            if decision.refusal.code == 409 and before.state == "open":
                assert before.owner in decision.refusal.reason

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF))
    def on_site(self, index: int, staff: str) -> None:
        self.step(OnSiteRequested(self.pick(index), staff))

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF), cause=st.sampled_from(CAUSES))
    def close(self, index: int, staff: str, cause: str) -> None:
        decision = self.step(CloseRequested(self.pick(index), staff, cause))
        if cause == "nonsense":
            assert decision.records == ()

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF), to=st.sampled_from(STAFF))
    def forward(self, index: int, staff: str, to: str) -> None:
        self.step(ForwardRequested(self.pick(index), staff, to))

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF))
    def hand_back(self, index: int, staff: str) -> None:
        self.step(HandBackRequested(self.pick(index), staff))

    @rule(index=st.integers(0, 30), staff=st.sampled_from(STAFF))
    def take_over(self, index: int, staff: str) -> None:
        self.step(TakeOverRequested(self.pick(index), staff))

    @rule(index=st.integers(0, 30), attempt=st.integers(0, 4))
    def centre_confirms(self, index: int, attempt: int) -> None:
        self.step(CentreConfirmed(self.pick(index), attempt))

    @rule(staff=st.sampled_from(STAFF), up=st.booleans())
    def presence(self, staff: str, up: bool) -> None:
        if up:
            self.core.observe(StaffConnected(staff))
        elif staff in (self.core.connected() or ()):
            self.core.observe(StaffDisconnected(staff))

    @rule(seconds=st.floats(0, 4 * 3600, allow_nan=False))
    def advance_and_tick(self, seconds: float) -> None:
        self.now += seconds
        self.step(Tick())
        # Every deadline up to now was handled: none is left behind.
        deadline = self.core.next_deadline()
        assert deadline is None or deadline > self.now

    @precondition(lambda self: self.core.next_deadline() is not None)
    @rule()
    def tick_at_next_deadline(self) -> None:
        deadline = self.core.next_deadline()
        assert deadline is not None
        self.now = max(self.now, deadline)
        decision = self.step(Tick())
        assert decision.records, "a passed deadline always does something"

    # -- invariants ------------------------------------------------------------------------

    @invariant()
    def one_deadline_per_open_alarm(self) -> None:
        for alarm in self.core.alarms.values():
            due = self.core.deadline_of(alarm.id)
            if alarm.state == "open":
                assert due is not None and math.isfinite(due.at)
            else:
                assert due is None
        expected = [self.core.deadline_of(a.id) for a in self.core.open_alarms()]
        assert self.core.next_deadline() == min(
            (d.at for d in expected if d is not None), default=None
        )

    @invariant()
    def indexes_match_a_scan_of_the_open_alarms(self) -> None:
        # busy() and attaching repeats use indexes kept on apply; they must say exactly
        # what a scan of the open alarms says.
        open_alarms = self.core.open_alarms()
        assert self.core.busy() == frozenset(a.owner for a in open_alarms if a.owner)
        recipients = {a.recipient_id for a in self.core.alarms.values()}
        for recipient in (r for r in recipients if r is not None):
            scan = [a.id for a in sorted(open_alarms, key=lambda a: a.hops[0].at)
                    if a.recipient_id == recipient]
            indexed = list(self.core._open_by_recipient.get(recipient, {}))  # under test
            assert sorted(indexed) == sorted(scan)

    @invariant()
    def level_never_decreases(self) -> None:
        for alarm in self.core.alarms.values():
            assert alarm.level >= self.levels.get(alarm.id, 0)
            levels = [e.level for e in alarm.escalations]
            assert levels == sorted(levels)
            self.levels[alarm.id] = alarm.level

    @invariant()
    def at_most_one_owner(self) -> None:
        owners: dict[str, str | None] = {}
        for record in self.journal:
            if isinstance(record, HopAdded) and record.hop is Hop.ACCEPTED:
                assert owners.get(record.alarm_id) is None
                owners[record.alarm_id] = record.actor
            elif isinstance(record, OwnerChanged):
                previous = owners.get(record.alarm_id)
                if record.kind is HandoverKind.ACCEPTED:
                    assert previous is None
                else:
                    assert previous is not None
                owners[record.alarm_id] = record.owner
        for alarm in self.core.alarms.values():
            assert alarm.owner == owners.get(alarm.id)

    @invariant()
    def closed_alarms_have_a_cause_from_the_list(self) -> None:
        for alarm in self.core.alarms.values():
            order = [HOP_ORDER[e.hop] for e in alarm.hops]
            assert order == sorted(set(order))
            if alarm.state == "closed":
                assert alarm.cause in self.core.allowed_causes(alarm)

    @invariant()
    def replay_reproduces_the_state(self) -> None:
        replayed = AlarmCore(DIRECTORY)
        replayed.apply_all([from_json(to_json(r)) for r in self.journal])
        assert replayed.alarms == self.core.alarms
        assert replayed.next_deadline() == self.core.next_deadline()
        for alarm_id in self.core.alarms:
            assert replayed.deadline_of(alarm_id) == self.core.deadline_of(alarm_id)
        for key in self.refs:
            assert replayed.find(*key) == self.core.find(*key)


CoreMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=40,
                                         deadline=None)
TestCoreMachine = CoreMachine.TestCase
