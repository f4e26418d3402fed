"""Device supervision: every device is watched to the second, with one deadline structure.

"Obruten digital larmkedja" means a silent device is itself an alarm (a *tekniskt larm*).
``Supervisor`` is sans-I/O: the gateway tells it when a device showed life (``seen``) and asks
what is overdue (``due``); it answers with ``DeviceOffline`` / ``DeviceOnline`` actions. The
I/O layer runs ONE timer task::

    while True:
        deadline = supervisor.next_deadline()
        await sleep_until(deadline)          # or wait for a "deadlines changed" event
        for action in supervisor.due(clock()):
            ...                              # journal the technical alarm, notify

so detection happens at the deadline itself, not at the next tick of a coarse timer (a known
failure mode of deployed systems: offline detection that lags by the tick period). Heartbeats
only move deadlines later, so the sleeping timer never needs waking for them; it must be
woken (re-armed) after ``watch``, ``restore`` and a ``seen`` that returned ``DeviceOnline``,
which can create a deadline earlier than the one it sleeps towards.

Deadlines live in one binary heap with *lazy rescheduling*: every watched, online device has
exactly one live heap entry whose deadline is never later than its real deadline. A heartbeat
only moves ``last_seen`` forward (O(1), no heap push); when the stale entry reaches the top it
is re-pushed at the real deadline (O(log n), at most once per heartbeat). So the heap holds
about one entry per device no matter how chatty devices are, and a sensor sending telemetry
every second costs no more memory than one heartbeating every five minutes.

Times are epoch seconds (floats) from one clock the caller owns. Epoch rather than monotonic
time because ``last_seen`` must survive a gateway restart (``restore``).
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TypeAlias

# Share of the interval a device may be late before it counts as offline. Heartbeats travel
# over radio, Wi-Fi and mobile networks; one lost or delayed heartbeat must not raise a
# technical alarm, but two in a row must. 50% keeps detection within 1.5 intervals.
GRACE_FRACTION = 0.5


@dataclass(frozen=True, slots=True)
class Timing:
    """How often a device must show life, and how late it may be before it is offline."""

    interval_s: float
    grace_s: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.interval_s) and self.interval_s > 0):
            raise ValueError(f"interval_s must be a positive number, not {self.interval_s!r}")
        if not (math.isfinite(self.grace_s) and self.grace_s >= 0):
            raise ValueError(f"grace_s must be a non-negative number, not {self.grace_s!r}")

    @property
    def timeout_s(self) -> float:
        """Silence after the last sign of life that makes the device offline."""
        return self.interval_s + self.grace_s

    @classmethod
    def of(cls, interval_s: float, grace_s: float | None = None) -> Timing:
        """A timing whose grace defaults to ``GRACE_FRACTION`` of the interval."""
        return cls(interval_s, interval_s * GRACE_FRACTION if grace_s is None else grace_s)


# Expected heartbeat interval per device type. Mains-powered links of the alarm chain report
# every minute, so a dead base unit or button is found within 90 s — the strictest level of
# the Swedish SOS Access supervision (90 s / 180 s). Cameras are mains-powered but woken on a
# schedule (180 s level). Battery sensors cannot afford the radio time of a minute-level
# heartbeat; five minutes keeps them at minute level while lasting years on a battery.
DEFAULT_TIMING: Mapping[str, Timing] = {
    "base_unit": Timing.of(60.0),
    "button": Timing.of(60.0),
    "camera": Timing.of(120.0),
    "sensor": Timing.of(300.0),
}


def timing_for(
    device_type: str | None = None,
    *,
    interval_s: float | None = None,
    grace_s: float | None = None,
) -> Timing:
    """The timing for a device: per-device overrides first, then its type's default.

    A grace given without an interval overrides only the grace of the type's default.
    Raises ``ValueError`` when neither an interval nor a known device type is given: guessing
    an interval for an unknown device would either flood staff or hide a dead device.
    """
    if interval_s is None:
        if device_type is None or device_type not in DEFAULT_TIMING:
            raise ValueError(f"no interval given and no default for device type {device_type!r}")
        default = DEFAULT_TIMING[device_type]
        return default if grace_s is None else Timing(default.interval_s, grace_s)
    return Timing.of(interval_s, grace_s)


@dataclass(frozen=True, slots=True)
class DeviceOffline:
    """A device stayed silent past its deadline (a technical alarm).

    ``since`` is its last sign of life, ``deadline`` when it became overdue, ``at`` when
    this was detected (``at - deadline`` is the detection delay).
    """

    device_id: str
    since: float
    deadline: float
    at: float


@dataclass(frozen=True, slots=True)
class DeviceOnline:
    """An offline device showed life again after ``outage_s`` seconds of silence.

    ``outage_s`` runs from its last sign of life before the outage to ``at``.
    """

    device_id: str
    at: float
    outage_s: float


SupervisionAction: TypeAlias = DeviceOffline | DeviceOnline


@dataclass(frozen=True, slots=True)
class WatchStatus:
    """A snapshot of one device's supervision (for technician views and persistence)."""

    device_id: str
    last_seen: float
    timing: Timing
    offline: bool

    @property
    def deadline(self) -> float | None:
        """When the device becomes offline; None while it already is."""
        return None if self.offline else self.last_seen + self.timing.timeout_s


@dataclass(frozen=True, slots=True)
class SupervisionCounts:
    """How many devices are watched, and how many of them are online and offline."""

    watched: int
    online: int
    offline: int


class _Watch:
    """Mutable per-device state; kept to six slots because there may be 100,000 of them."""

    __slots__ = ("entry", "last_seen", "offline", "timing")

    def __init__(self, last_seen: float, timing: Timing, offline: bool) -> None:
        self.last_seen = last_seen
        self.timing = timing
        self.offline = offline
        # Sequence number of this device's live heap entry, or -1 when it has none (offline).
        # An entry whose number differs is an orphan (device unwatched or rescheduled earlier).
        self.entry = -1

    @property
    def deadline(self) -> float:
        return self.last_seen + self.timing.timeout_s


# (deadline, entry sequence number, device id). The sequence number makes entries unique, so
# orphans are recognised without comparing floats, and breaks ties first-in first-out
# without ever comparing device ids.
_Entry: TypeAlias = tuple[float, int, str]

# Orphaned heap entries (left by unwatch or an earlier deadline) are normally dropped when they
# reach the top. If they ever outnumber live devices plus this slack, the heap is rebuilt, so
# memory stays O(devices) even if a provisioning tool re-watches everything in a loop.
_COMPACT_SLACK = 1024


class Supervisor:
    """Deadlines of every supervised device. Not thread-safe: one owner drives it."""

    def __init__(self) -> None:
        self._watches: dict[str, _Watch] = {}
        self._heap: list[_Entry] = []
        self._counter = itertools.count()
        self._orphans = 0
        self._offline = 0

    # -- registration ----------------------------------------------------------------------

    def watch(
        self,
        device_id: str,
        *,
        now: float,
        device_type: str | None = None,
        interval_s: float | None = None,
        grace_s: float | None = None,
    ) -> None:
        """Start supervising a device, or change the timing of one already watched.

        A new device gets one full timeout from ``now`` to speak. Re-watching keeps its last
        sign of life and its offline state; only the deadline moves.
        """
        timing = timing_for(device_type, interval_s=interval_s, grace_s=grace_s)
        watch = self._watches.get(device_id)
        if watch is None:
            watch = _Watch(now, timing, offline=False)
            self._watches[device_id] = watch
            self._push(device_id, watch)
            return
        old_deadline = watch.deadline
        watch.timing = timing
        if not watch.offline and watch.deadline < old_deadline:
            # The live entry may now be later than the real deadline; lazy rescheduling only
            # ever moves entries later, so push an earlier one and orphan the old.
            self._reschedule(device_id, watch)

    def restore(
        self,
        device_id: str,
        *,
        last_seen: float,
        interval_s: float,
        grace_s: float,
        offline: bool,
    ) -> None:
        """Rebuild a device's supervision from stored state after a gateway restart.

        A device stored as online whose deadline passed while the gateway was down is
        reported by the first ``due`` after start (``since`` is its stored last sign of
        life). A device stored as offline was already reported and is not reported again;
        it comes back with ``DeviceOnline`` when it is next seen.
        """
        timing = Timing(interval_s, grace_s)
        if device_id in self._watches:
            self.unwatch(device_id)
        watch = _Watch(last_seen, timing, offline=offline)
        self._watches[device_id] = watch
        if offline:
            self._offline += 1
        else:
            self._push(device_id, watch)

    def unwatch(self, device_id: str) -> bool:
        """Stop supervising a device (decommissioned). Returns whether it was watched."""
        watch = self._watches.pop(device_id, None)
        if watch is None:
            return False
        if watch.offline:
            self._offline -= 1
        else:
            self._orphans += 1
            self._maybe_compact()
        return True

    # -- input -----------------------------------------------------------------------------

    def seen(self, device_id: str, now: float) -> list[SupervisionAction]:
        """A valid message from the device arrived at ``now``: it is alive.

        Any authenticated, well-formed message counts (alarm, heartbeat, telemetry, status);
        broker keep-alives never do, since a wedged device can keep its TCP session open.
        Messages from devices that are not watched are ignored.

        If the device's deadline passed before this message and ``due`` has not yet run,
        the outage still happened: it is reported as ``DeviceOffline`` then ``DeviceOnline``,
        so what is reported never depends on when the timer task got to run.
        """
        watch = self._watches.get(device_id)
        if watch is None:
            return []
        # A message delayed in a queue must not move the clock backwards.
        now = max(now, watch.last_seen)
        actions: list[SupervisionAction] = []
        if not watch.offline and now >= watch.deadline:
            actions.append(self._go_offline(device_id, watch, now))
        if watch.offline:
            actions.append(DeviceOnline(device_id, now, now - watch.last_seen))
            watch.offline = False
            self._offline -= 1
            watch.last_seen = now
            self._push(device_id, watch)
        else:
            # The live entry stays where it is (earlier than the new deadline); it is moved
            # when it reaches the top of the heap.
            watch.last_seen = now
        return actions

    def due(self, now: float, *, limit: int | None = None) -> list[SupervisionAction]:
        """Devices whose deadline is at or before ``now`` and that are not yet offline.

        Each becomes offline and is reported exactly once, in deadline order. ``limit`` caps
        the actions of one call: after a long gateway outage tens of thousands of devices
        can be due at once, and the timer task should yield to the event loop between
        chunks (``next_deadline()`` stays at or before ``now`` until all are reported).
        """
        actions: list[SupervisionAction] = []
        heap = self._heap
        while heap and heap[0][0] <= now and (limit is None or len(actions) < limit):
            _, entry, device_id = heap[0]
            watch = self._watches.get(device_id)
            if watch is None or watch.entry != entry:
                heapq.heappop(heap)
                self._orphans -= 1
            elif watch.deadline > now:
                # Seen since this entry was pushed: move the entry to the real deadline.
                watch.entry = next(self._counter)
                heapq.heapreplace(heap, (watch.deadline, watch.entry, device_id))
            else:
                heapq.heappop(heap)
                watch.entry = -1
                actions.append(self._go_offline(device_id, watch, now))
        return actions

    # -- queries ---------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """The earliest deadline of any online device, or None if there is none.

        Exact, not a lower bound: stale entries at the top are moved first, so the timer task
        never wakes up for nothing.
        """
        heap = self._heap
        while heap:
            deadline, entry, device_id = heap[0]
            watch = self._watches.get(device_id)
            if watch is None or watch.entry != entry:
                heapq.heappop(heap)
                self._orphans -= 1
                continue
            real = watch.deadline
            if real > deadline:
                watch.entry = next(self._counter)
                heapq.heapreplace(heap, (real, watch.entry, device_id))
                continue
            return deadline
        return None

    def is_watched(self, device_id: str) -> bool:
        """Whether the device is supervised."""
        return device_id in self._watches

    def is_offline(self, device_id: str) -> bool:
        """Whether the device is supervised and currently offline."""
        watch = self._watches.get(device_id)
        return watch is not None and watch.offline

    def last_seen(self, device_id: str) -> float | None:
        """The device's last sign of life (or when watching began), if it is supervised."""
        watch = self._watches.get(device_id)
        return None if watch is None else watch.last_seen

    def deadline(self, device_id: str) -> float | None:
        """When the device becomes offline; None if unwatched or already offline."""
        watch = self._watches.get(device_id)
        return None if watch is None or watch.offline else watch.deadline

    def status(self, device_id: str) -> WatchStatus | None:
        """A snapshot of the device's supervision, if it is supervised."""
        watch = self._watches.get(device_id)
        if watch is None:
            return None
        return WatchStatus(device_id, watch.last_seen, watch.timing, watch.offline)

    def statuses(self) -> Iterator[WatchStatus]:
        """Snapshots of every supervised device (e.g. to persist last-seen times)."""
        for device_id, watch in self._watches.items():
            yield WatchStatus(device_id, watch.last_seen, watch.timing, watch.offline)

    def offline_devices(self) -> list[str]:
        """Ids of the devices currently offline."""
        return [device_id for device_id, watch in self._watches.items() if watch.offline]

    def counts(self) -> SupervisionCounts:
        """How many devices are watched, online and offline (for /metrics)."""
        watched = len(self._watches)
        return SupervisionCounts(watched, watched - self._offline, self._offline)

    def __len__(self) -> int:
        return len(self._watches)

    def __contains__(self, device_id: object) -> bool:
        return device_id in self._watches

    # -- internals -------------------------------------------------------------------------

    def _push(self, device_id: str, watch: _Watch) -> None:
        watch.entry = next(self._counter)
        heapq.heappush(self._heap, (watch.deadline, watch.entry, device_id))

    def _reschedule(self, device_id: str, watch: _Watch) -> None:
        if watch.entry != -1:
            self._orphans += 1
        self._push(device_id, watch)
        self._maybe_compact()

    def _go_offline(self, device_id: str, watch: _Watch, now: float) -> DeviceOffline:
        if watch.entry != -1:
            # Detected by ``seen`` before ``due`` got to it: its entry is now an orphan.
            watch.entry = -1
            self._orphans += 1
        watch.offline = True
        self._offline += 1
        return DeviceOffline(device_id, watch.last_seen, watch.deadline, now)

    def _maybe_compact(self) -> None:
        if self._orphans <= len(self._watches) + _COMPACT_SLACK:
            return
        self._heap = [
            item
            for item in self._heap
            if (watch := self._watches.get(item[2])) is not None and watch.entry == item[1]
        ]
        heapq.heapify(self._heap)
        self._orphans = 0
