"""Applying records in batches: the same state as one by one, and refusals isolated.

``AlarmCore.apply_all`` refreshes an alarm's derived indexes once per batch instead of after
every record, and ``alarms.model.changed`` replaces ``dataclasses.replace`` on that path; both
must be invisible.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms import (
    AcceptRequested,
    Alarm,
    AlarmCore,
    AlarmReceived,
    AlarmType,
    CloseRequested,
    Directory,
    Hop,
    OnSiteRequested,
    ReceiptConfirmed,
    Recipient,
    Record,
    Staff,
)
from alarms.events import Event
from alarms.model import changed
from alarms.records import HopAdded

T0 = 1_800_000_000.0

DIRECTORY = Directory(
    device_recipient={f"dev-{n}": f"r-{n % 3}" for n in range(6)},
    recipients={f"r-{n}": Recipient(f"r-{n}", f"team-{n % 2}") for n in range(3)},
    staff={
        "anna": Staff("anna", frozenset({"team-0"})),
        "bo": Staff("bo", frozenset({"team-1"})),
    },
)

FIELDS = [f.name for f in dataclasses.fields(Alarm)]


def _alarm() -> Alarm:
    return Alarm(id="A", device_id="d", ref="r", type=AlarmType.FALL, priority=1,
                 recipient_id="r-0", team_id="team-0", device_ts_ms=1, battery=0.5, hops=())


@given(st.dictionaries(st.sampled_from(FIELDS), st.integers()))
def test_changed_is_dataclasses_replace(changes: dict[str, Any]) -> None:
    alarm = _alarm()
    assert changed(alarm, **changes) == dataclasses.replace(alarm, **changes)
    assert changed(alarm) == alarm


def test_changed_refuses_an_unknown_field() -> None:
    with pytest.raises(KeyError):
        changed(_alarm(), colour="red")


def _state(core: AlarmCore) -> tuple[object, ...]:
    open_ids = [a.id for a in core.open_in_order()]
    return (core.alarms, open_ids, {a: core.deadline_of(a) for a in open_ids},
            core.next_deadline(),
            {r: [a.id for a in core.open_of_recipient(r)] for r in DIRECTORY.recipients},
            {a: core.alarms[a].owner for a in open_ids})


_STEPS = st.lists(st.tuples(st.sampled_from(["alarm", "receipt", "accept", "on_site", "close"]),
                            st.integers(0, 5), st.sampled_from(["anna", "bo"])),
                  max_size=30)


@settings(max_examples=60, deadline=None)
@given(_STEPS)
def test_a_batch_applied_at_once_leaves_the_state_one_by_one_leaves(
    steps: list[tuple[str, int, str]],
) -> None:
    batched, single = AlarmCore(DIRECTORY), AlarmCore(DIRECTORY)
    now = T0
    for n, (kind, device, staff) in enumerate(steps):
        now += 7.0
        opened = [a.id for a in batched.open_in_order()]
        event: Event
        if kind == "alarm":
            event = AlarmReceived(f"dev-{device}", f"ref-{n}", AlarmType.FALL,
                                  int(now * 1000), f"A{n}")
        elif not opened:
            continue
        else:
            alarm_id = opened[device % len(opened)]
            choices: dict[str, Event] = {
                     "receipt": ReceiptConfirmed(alarm_id, staff),
                     "accept": AcceptRequested(alarm_id, staff),
                     "on_site": OnSiteRequested(alarm_id, staff),
                     "close": CloseRequested(alarm_id, staff, "hjälp given")}
            event = choices[kind]
        decision = batched.decide(event, now)
        if decision.refusal is not None:
            continue
        batched.apply_all(decision.records)
        for record in decision.records:
            single.apply(record)
        assert _state(batched) == _state(single)


def test_a_refused_record_is_handed_over_and_the_rest_applied() -> None:
    core = AlarmCore(DIRECTORY)
    decision = core.decide(AlarmReceived("dev-0", "r1", AlarmType.FALL, int(T0 * 1000), "A1"),
                           T0)
    opened, raised, stored, routed = decision.records
    backwards = HopAdded("A1", Hop.RAISED, T0, "dev-0")  # after "stored": out of order
    refused: list[tuple[Record, Exception]] = []
    core.apply_all([opened, raised, stored, backwards, routed],
                   on_refused=lambda record, exc: refused.append((record, exc)))
    assert [r for r, _ in refused] == [backwards]
    assert isinstance(refused[0][1], ValueError)
    assert [e.hop for e in core.alarms["A1"].hops] == [Hop.RAISED, Hop.STORED, Hop.ROUTED]
    assert [a.id for a in core.open_of_recipient("r-0")] == ["A1"]


def test_without_a_handler_a_refusal_raises_and_what_came_before_is_indexed() -> None:
    core = AlarmCore(DIRECTORY)
    decision = core.decide(AlarmReceived("dev-0", "r1", AlarmType.FALL, int(T0 * 1000), "A1"),
                           T0)
    opened, raised, stored, _ = decision.records
    with pytest.raises(ValueError, match="out of order"):
        core.apply_all([opened, raised, stored, HopAdded("A1", Hop.RAISED, T0, "dev-0")])
    assert [a.id for a in core.open_in_order()] == ["A1"]  # refreshed despite the raise
    assert [a.id for a in core.open_of_recipient("r-0")] == ["A1"]
