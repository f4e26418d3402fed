"""Device supervision: deadlines, grace, offline/online reporting, restart, and properties."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from alarms.supervision import (
    DEFAULT_TIMING,
    GRACE_FRACTION,
    DeviceOffline,
    DeviceOnline,
    SupervisionAction,
    SupervisionCounts,
    Supervisor,
    Timing,
    timing_for,
)

T0 = 1_700_000_000.0


def offline_ids(actions: list[SupervisionAction]) -> list[str]:
    """Ids of the devices reported offline."""
    return [a.device_id for a in actions if isinstance(a, DeviceOffline)]


# -- timing --------------------------------------------------------------------------------


def test_default_timing_table_covers_the_device_types() -> None:
    """Base unit and button at 60 s, camera 120 s, sensors 300 s, grace half the interval."""
    assert DEFAULT_TIMING["base_unit"] == Timing(60.0, 30.0)
    assert DEFAULT_TIMING["button"] == Timing(60.0, 30.0)
    assert DEFAULT_TIMING["camera"] == Timing(120.0, 60.0)
    assert DEFAULT_TIMING["sensor"] == Timing(300.0, 150.0)
    assert GRACE_FRACTION == 0.5


def test_timing_for_prefers_overrides() -> None:
    """Per-device interval and grace override the type's default, separately."""
    assert timing_for("sensor") == Timing(300.0, 150.0)
    assert timing_for("sensor", grace_s=10.0) == Timing(300.0, 10.0)
    assert timing_for("sensor", interval_s=30.0) == Timing(30.0, 15.0)
    assert timing_for(interval_s=30.0, grace_s=0.0) == Timing(30.0, 0.0)


@pytest.mark.parametrize("device_type", [None, "toaster"])
def test_timing_for_unknown_type_without_interval_is_refused(device_type: str | None) -> None:
    """An interval is never guessed."""
    with pytest.raises(ValueError, match="no interval"):
        timing_for(device_type)


@pytest.mark.parametrize(
    ("interval", "grace"),
    [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (float("inf"), 1.0), (1.0, -1.0)],
)
def test_timing_rejects_nonsense(interval: float, grace: float) -> None:
    """Intervals must be positive and finite, grace non-negative and finite."""
    with pytest.raises(ValueError):
        Timing(interval, grace)


# -- deadlines -----------------------------------------------------------------------------


def test_new_device_gets_one_timeout_from_watch() -> None:
    """Deadline = watch time + interval + grace."""
    sup = Supervisor()
    sup.watch("b1", now=T0, device_type="button")
    assert sup.deadline("b1") == T0 + 90.0
    assert sup.next_deadline() == T0 + 90.0
    assert sup.last_seen("b1") == T0


def test_offline_exactly_at_deadline_not_before() -> None:
    """Nothing is due a hair before the deadline; at the deadline the device is offline."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    assert sup.due(T0 + 89.999) == []
    assert not sup.is_offline("b1")
    assert sup.due(T0 + 90.0) == [DeviceOffline("b1", since=T0, deadline=T0 + 90.0, at=T0 + 90.0)]
    assert sup.is_offline("b1")
    assert sup.deadline("b1") is None


def test_grace_delays_offline() -> None:
    """A missed heartbeat within the grace is not an outage."""
    sup = Supervisor()
    sup.watch("s1", now=T0, interval_s=300.0, grace_s=150.0)
    assert sup.due(T0 + 300.0) == []
    assert sup.due(T0 + 449.0) == []
    assert offline_ids(sup.due(T0 + 450.0)) == ["s1"]


def test_zero_grace() -> None:
    """Grace 0: offline at exactly one interval of silence."""
    sup = Supervisor()
    sup.watch("x", now=T0, interval_s=10.0, grace_s=0.0)
    assert sup.due(T0 + 9.5) == []
    assert offline_ids(sup.due(T0 + 10.0)) == ["x"]


def test_heartbeats_push_the_deadline() -> None:
    """Every sign of life restarts the timeout."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    for k in range(1, 20):
        assert sup.seen("b1", T0 + 60.0 * k) == []
        assert sup.due(T0 + 60.0 * k + 89.0) == []
    assert sup.deadline("b1") == T0 + 60.0 * 19 + 90.0
    assert sup.next_deadline() == T0 + 60.0 * 19 + 90.0


def test_detection_at_late_due_reports_real_deadline() -> None:
    """A late timer still reports when the deadline was; ``at`` shows the detection delay."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    sup.seen("b1", T0 + 50.0)
    [action] = sup.due(T0 + 500.0)
    assert action == DeviceOffline("b1", since=T0 + 50.0, deadline=T0 + 140.0, at=T0 + 500.0)


def test_reported_once_per_outage() -> None:
    """An offline device is not reported again by later ``due`` calls."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    assert offline_ids(sup.due(T0 + 90.0)) == ["b1"]
    assert sup.due(T0 + 1000.0) == []
    assert sup.due(T0 + 100000.0) == []
    assert sup.next_deadline() is None


def test_back_online_with_outage_duration() -> None:
    """Seen again: DeviceOnline with the silence since the last sign of life."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    sup.seen("b1", T0 + 10.0)
    sup.due(T0 + 200.0)
    assert sup.seen("b1", T0 + 310.0) == [DeviceOnline("b1", at=T0 + 310.0, outage_s=300.0)]
    assert not sup.is_offline("b1")
    assert sup.deadline("b1") == T0 + 400.0
    assert sup.next_deadline() == T0 + 400.0
    # A second outage is reported again.
    assert offline_ids(sup.due(T0 + 400.0)) == ["b1"]


def test_overdue_heartbeat_before_timer_reports_the_outage() -> None:
    """Deadline passed but ``due`` has not run: the outage is still reported, then resolved."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    assert sup.seen("b1", T0 + 95.0) == [
        DeviceOffline("b1", since=T0, deadline=T0 + 90.0, at=T0 + 95.0),
        DeviceOnline("b1", at=T0 + 95.0, outage_s=95.0),
    ]
    assert sup.due(T0 + 120.0) == []
    assert sup.next_deadline() == T0 + 185.0


def test_heartbeat_exactly_at_deadline_is_late() -> None:
    """The deadline is the first instant of the outage."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    assert offline_ids(sup.seen("b1", T0 + 90.0)) == ["b1"]


def test_out_of_order_message_does_not_move_last_seen_back() -> None:
    """A message timestamped before the last sign of life cannot shorten the deadline."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    sup.seen("b1", T0 + 50.0)
    assert sup.seen("b1", T0 + 20.0) == []
    assert sup.last_seen("b1") == T0 + 50.0


def test_unknown_device_is_ignored() -> None:
    """Messages from unsupervised devices produce nothing."""
    sup = Supervisor()
    assert sup.seen("nobody", T0) == []
    assert sup.status("nobody") is None
    assert sup.last_seen("nobody") is None
    assert not sup.is_offline("nobody")


def test_due_orders_by_deadline() -> None:
    """Several overdue devices are reported oldest deadline first."""
    sup = Supervisor()
    sup.watch("late", now=T0 + 5.0, interval_s=10.0, grace_s=0.0)
    sup.watch("early", now=T0, interval_s=10.0, grace_s=0.0)
    sup.watch("fine", now=T0, interval_s=100.0, grace_s=0.0)
    assert offline_ids(sup.due(T0 + 50.0)) == ["early", "late"]


def test_due_limit_reports_in_chunks() -> None:
    """A capped ``due`` leaves the rest due, and next_deadline says so."""
    sup = Supervisor()
    for i in range(10):
        sup.watch(f"d{i}", now=T0 + i, interval_s=10.0, grace_s=0.0)
    first = sup.due(T0 + 100.0, limit=4)
    assert offline_ids(first) == ["d0", "d1", "d2", "d3"]
    assert sup.next_deadline() == T0 + 14.0
    rest = sup.due(T0 + 100.0, limit=100)
    assert offline_ids(rest) == [f"d{i}" for i in range(4, 10)]
    assert sup.next_deadline() is None


# -- unwatch and overrides -----------------------------------------------------------------


def test_unwatch_stops_supervision() -> None:
    """An unwatched device is never reported, and its deadline disappears."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=60.0, grace_s=30.0)
    sup.watch("b2", now=T0, interval_s=120.0, grace_s=30.0)
    assert sup.unwatch("b1") is True
    assert sup.unwatch("b1") is False
    assert sup.next_deadline() == T0 + 150.0
    assert offline_ids(sup.due(T0 + 1000.0)) == ["b2"]
    assert sup.seen("b1", T0 + 1000.0) == []


def test_unwatch_offline_device_updates_counts() -> None:
    """Counts follow unwatching an offline device."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=1.0, grace_s=0.0)
    sup.due(T0 + 5.0)
    assert sup.counts() == SupervisionCounts(watched=1, online=0, offline=1)
    sup.unwatch("b1")
    assert sup.counts() == SupervisionCounts(watched=0, online=0, offline=0)


def test_rewatch_after_unwatch_ignores_old_entry() -> None:
    """The old heap entry of an unwatched device does not fire for its new incarnation."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=10.0, grace_s=0.0)
    sup.unwatch("b1")
    sup.watch("b1", now=T0 + 5.0, interval_s=10.0, grace_s=0.0)
    assert sup.due(T0 + 10.0) == []
    assert sup.next_deadline() == T0 + 15.0
    assert offline_ids(sup.due(T0 + 15.0)) == ["b1"]


def test_override_shorter_interval_moves_deadline_earlier() -> None:
    """Re-watching with a shorter interval takes effect at once, keeping last_seen."""
    sup = Supervisor()
    sup.watch("s1", now=T0, device_type="sensor")
    sup.seen("s1", T0 + 100.0)
    sup.watch("s1", now=T0 + 110.0, interval_s=20.0, grace_s=5.0)
    assert sup.deadline("s1") == T0 + 125.0
    assert sup.next_deadline() == T0 + 125.0
    assert offline_ids(sup.due(T0 + 125.0)) == ["s1"]
    assert sup.due(T0 + 450.0) == []


def test_override_longer_interval_moves_deadline_later() -> None:
    """Re-watching with a longer interval postpones the outage."""
    sup = Supervisor()
    sup.watch("b1", now=T0, device_type="button")
    sup.watch("b1", now=T0 + 1.0, interval_s=600.0)
    assert sup.due(T0 + 90.0) == []
    assert sup.next_deadline() == T0 + 900.0


def test_watch_with_grace_override_only() -> None:
    """A device type's interval with a device-specific grace."""
    sup = Supervisor()
    sup.watch("c1", now=T0, device_type="camera", grace_s=0.0)
    assert sup.deadline("c1") == T0 + 120.0


def test_rewatch_keeps_offline_state() -> None:
    """Changing the timing of an offline device does not hide or repeat its outage."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=10.0, grace_s=0.0)
    sup.due(T0 + 10.0)
    sup.watch("b1", now=T0 + 20.0, interval_s=100.0, grace_s=0.0)
    assert sup.is_offline("b1")
    assert sup.due(T0 + 1000.0) == []
    assert sup.seen("b1", T0 + 30.0) == [DeviceOnline("b1", at=T0 + 30.0, outage_s=30.0)]


def test_many_rewatches_keep_heap_bounded() -> None:
    """Orphaned heap entries are compacted, so memory stays O(devices)."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=10_000.0, grace_s=0.0)
    for k in range(5000):
        sup.watch("b1", now=T0, interval_s=10_000.0 - k, grace_s=0.0)
    assert len(sup._heap) < 2000
    assert sup.next_deadline() == T0 + 10_000.0 - 4999


def test_chatty_device_does_not_grow_the_heap() -> None:
    """Thousands of messages keep one heap entry per device."""
    sup = Supervisor()
    sup.watch("s1", now=T0, interval_s=300.0, grace_s=150.0)
    for k in range(10_000):
        sup.seen("s1", T0 + k * 0.1)
    assert len(sup._heap) == 1
    assert sup.next_deadline() == T0 + 9999 * 0.1 + 450.0


# -- restart -------------------------------------------------------------------------------


def test_restore_reports_device_silent_while_gateway_was_down() -> None:
    """The first ``due`` after start reports devices whose deadline passed during downtime."""
    sup = Supervisor()
    start = T0 + 3600.0
    sup.restore("silent", last_seen=T0, interval_s=60.0, grace_s=30.0, offline=False)
    sup.restore("fresh", last_seen=start - 10.0, interval_s=60.0, grace_s=30.0, offline=False)
    assert sup.next_deadline() == T0 + 90.0
    assert sup.due(start) == [DeviceOffline("silent", since=T0, deadline=T0 + 90.0, at=start)]
    assert sup.next_deadline() == start + 80.0


def test_restore_offline_device_is_not_reported_again() -> None:
    """Already reported before the restart: no second report; online when seen."""
    sup = Supervisor()
    sup.restore("b1", last_seen=T0, interval_s=60.0, grace_s=30.0, offline=True)
    assert sup.is_offline("b1")
    assert sup.counts() == SupervisionCounts(watched=1, online=0, offline=1)
    assert sup.due(T0 + 10_000.0) == []
    assert sup.seen("b1", T0 + 10_000.0) == [
        DeviceOnline("b1", at=T0 + 10_000.0, outage_s=10_000.0)
    ]


def test_restore_replaces_existing_state() -> None:
    """Restoring a watched device replaces its state and keeps the counts right."""
    sup = Supervisor()
    sup.watch("b1", now=T0, interval_s=10.0, grace_s=0.0)
    sup.due(T0 + 10.0)
    sup.restore("b1", last_seen=T0 + 20.0, interval_s=10.0, grace_s=0.0, offline=False)
    assert sup.counts() == SupervisionCounts(watched=1, online=1, offline=0)
    assert sup.next_deadline() == T0 + 30.0


def test_statuses_round_trip_through_restore() -> None:
    """What ``statuses`` exports, ``restore`` rebuilds into the same supervision."""
    sup = Supervisor()
    sup.watch("a", now=T0, interval_s=10.0, grace_s=5.0)
    sup.watch("b", now=T0, device_type="sensor")
    sup.seen("b", T0 + 3.0)
    sup.due(T0 + 15.0)
    rebuilt = Supervisor()
    for s in sup.statuses():
        rebuilt.restore(
            s.device_id,
            last_seen=s.last_seen,
            interval_s=s.timing.interval_s,
            grace_s=s.timing.grace_s,
            offline=s.offline,
        )
    assert sorted(rebuilt.statuses(), key=lambda s: s.device_id) == sorted(
        sup.statuses(), key=lambda s: s.device_id
    )
    assert rebuilt.next_deadline() == sup.next_deadline()
    assert rebuilt.offline_devices() == ["a"]


def test_counts_and_queries() -> None:
    """State queries agree with each other."""
    sup = Supervisor()
    for i in range(5):
        sup.watch(f"d{i}", now=T0 + i, interval_s=10.0, grace_s=0.0)
    sup.due(T0 + 12.0)
    assert sup.counts() == SupervisionCounts(watched=5, online=2, offline=3)
    assert sorted(sup.offline_devices()) == ["d0", "d1", "d2"]
    assert len(sup) == 5
    assert "d4" in sup
    assert sup.is_watched("d4")
    status = sup.status("d4")
    assert status is not None
    assert status.deadline == T0 + 14.0
    offline = sup.status("d0")
    assert offline is not None
    assert offline.deadline is None


# -- properties ----------------------------------------------------------------------------


class Model:
    """A brute-force reference: scans every device on every call."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.timeout: dict[str, float] = {}
        self.offline: dict[str, bool] = {}

    def deadline(self, d: str) -> float:
        """When ``d`` becomes offline."""
        return self.last[d] + self.timeout[d]

    def due(self, now: float) -> list[str]:
        """Devices that must be reported offline at ``now``."""
        found = [d for d in self.last if not self.offline[d] and self.deadline(d) <= now]
        for d in found:
            self.offline[d] = True
        return sorted(found)

    def seen(self, d: str, now: float) -> tuple[bool, bool]:
        """(reported offline, reported online) for a message from ``d``."""
        if d not in self.last:
            return False, False
        now = max(now, self.last[d])
        went_offline = not self.offline[d] and now >= self.deadline(d)
        came_back = went_offline or self.offline[d]
        self.offline[d] = False
        self.last[d] = now
        return went_offline, came_back

    def next_deadline(self) -> float | None:
        """Min deadline of online devices."""
        live = [self.deadline(d) for d in self.last if not self.offline[d]]
        return min(live) if live else None


DEVICES = ["a", "b", "c", "d", "e"]
# Half-second steps keep all arithmetic exact in binary floating point.
steps = st.integers(min_value=0, max_value=40).map(lambda n: n / 2)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("seen"), st.sampled_from(DEVICES), steps),
        st.tuples(st.just("advance"), st.just(""), steps),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(
    timeouts=st.lists(st.integers(1, 20), min_size=len(DEVICES), max_size=len(DEVICES)),
    program=ops,
)
def test_offline_iff_deadline_passed_without_message(
    timeouts: list[int], program: list[tuple[str, str, float]]
) -> None:
    """Random heartbeats and clock advances: reports match the brute-force model exactly."""
    sup = Supervisor()
    model = Model()
    now = T0
    for d, timeout in zip(DEVICES, timeouts, strict=True):
        sup.watch(d, now=now, interval_s=float(timeout), grace_s=timeout / 2)
        model.last[d] = now
        model.timeout[d] = timeout * 1.5
        model.offline[d] = False
    reports: dict[str, int] = dict.fromkeys(DEVICES, 0)
    for op, device, step in program:
        now += step
        if op == "seen":
            actions = sup.seen(device, now)
            went_offline, came_back = model.seen(device, now)
            assert [type(a) for a in actions] == (
                [DeviceOffline] * went_offline + [DeviceOnline] * came_back
            )
            if came_back:
                reports[device] = 0
        else:
            # The timer wakes exactly at next_deadline() when that comes first.
            nxt = sup.next_deadline()
            assert nxt == model.next_deadline()
            when = min(now, nxt) if nxt is not None else now
            got = sup.due(when)
            assert sorted(offline_ids(got)) == model.due(when)
            for a in got:
                assert isinstance(a, DeviceOffline)
                assert a.deadline <= when
                assert a.deadline == a.since + model.timeout[a.device_id]
                reports[a.device_id] += 1
                assert reports[a.device_id] == 1, "reported twice in one outage"
            got = sup.due(now)
            assert sorted(offline_ids(got)) == model.due(now)
            for a in got:
                reports[a.device_id] += 1
                assert reports[a.device_id] == 1, "reported twice in one outage"
        assert sup.next_deadline() == model.next_deadline()
        for d in DEVICES:
            assert sup.is_offline(d) == model.offline[d]


class SupervisorMachine(RuleBasedStateMachine):
    """Watch, unwatch, restore, heartbeats and timer wake-ups in any order."""

    def __init__(self) -> None:
        super().__init__()
        self.sup = Supervisor()
        self.model = Model()
        self.now = T0

    def _forget(self, d: str) -> None:
        for table in (self.model.last, self.model.timeout, self.model.offline):
            table.pop(d, None)

    @rule(d=st.sampled_from(DEVICES), interval=st.integers(1, 20), grace=st.integers(0, 10))
    def watch(self, d: str, interval: int, grace: int) -> None:
        """Watch a new device or change a watched one's timing."""
        self.sup.watch(d, now=self.now, interval_s=float(interval), grace_s=float(grace))
        if d not in self.model.last:
            self.model.last[d] = self.now
            self.model.offline[d] = False
        self.model.timeout[d] = float(interval + grace)

    @rule(d=st.sampled_from(DEVICES))
    def unwatch(self, d: str) -> None:
        """Stop watching."""
        assert self.sup.unwatch(d) == (d in self.model.last)
        self._forget(d)

    @rule(
        d=st.sampled_from(DEVICES),
        ago=st.integers(0, 40),
        interval=st.integers(1, 20),
        offline=st.booleans(),
    )
    def restore(self, d: str, ago: int, interval: int, offline: bool) -> None:
        """Restore from stored state (possibly long silent)."""
        last = self.now - ago
        self.sup.restore(
            d, last_seen=last, interval_s=float(interval), grace_s=0.0, offline=offline
        )
        self.model.last[d] = last
        self.model.timeout[d] = float(interval)
        self.model.offline[d] = offline

    @rule(d=st.sampled_from(DEVICES), step=steps)
    def seen(self, d: str, step: float) -> None:
        """A message from ``d`` after ``step`` seconds."""
        self.now += step
        actions = self.sup.seen(d, self.now)
        went_offline, came_back = self.model.seen(d, self.now)
        assert [type(a) for a in actions] == (
            [DeviceOffline] * went_offline + [DeviceOnline] * came_back
        )

    @rule(step=steps)
    def timer(self, step: float) -> None:
        """The timer task wakes at the next deadline or after ``step``, whichever is first."""
        nxt = self.sup.next_deadline()
        target = self.now + step
        self.now = max(self.now, min(target, nxt)) if nxt is not None else target
        got = self.sup.due(self.now)
        assert sorted(offline_ids(got)) == self.model.due(self.now)
        assert all(isinstance(a, DeviceOffline) and a.at >= a.deadline for a in got)

    @invariant()
    def next_deadline_is_min_live_deadline(self) -> None:
        """The timer always sleeps until exactly the earliest live deadline."""
        assert self.sup.next_deadline() == self.model.next_deadline()

    @invariant()
    def states_agree(self) -> None:
        """Offline flags and counts match the model."""
        offline = sum(self.model.offline.values())
        assert self.sup.counts() == SupervisionCounts(
            len(self.model.last), len(self.model.last) - offline, offline
        )
        for d in DEVICES:
            assert self.sup.is_offline(d) == self.model.offline.get(d, False)
            assert self.sup.last_seen(d) == self.model.last.get(d)


SupervisorMachine.TestCase.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None
)
TestSupervisorMachine = SupervisorMachine.TestCase
