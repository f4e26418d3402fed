"""Supervision of the last link: from the gateway to a staff member's phone.

Two faults raise technical alarms (to technicians and administrators):
- an alarm that no staff client has confirmed (``delivered``) within the configured time
  (default 15 s) — ref ``undelivered.<alarm id>``, closed when a phone confirms it;
- a team with an open alarm and no staff client of that team connected — ref
  ``noclient.<team>.<ms>``, closed when one connects.
One timer task; woken by alarm changes and by staff connecting or disconnecting.
"""

from __future__ import annotations

import asyncio
import heapq
import time
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Self

from alarms.events import AlarmReceived, TechnicalCleared
from alarms.model import GATEWAY_DEVICE, Alarm, AlarmType, Hop
from gateway.duties import STAFFWATCH
from gateway.ids import new_alarm_id
from gateway.waiting import wait_set

if TYPE_CHECKING:
    from gateway.ports import ServiceHost

# A team with no phone connected gets this long before it is a fault: a phone switching
# from Wi-Fi to mobile data reconnects within seconds and must not raise an alarm.
NO_CLIENT_GRACE_S = 10.0
# At most one pass over the open alarms per this many seconds.
PASS_INTERVAL_S = 0.2


class StaffWatch:
    """Watches delivery to phones and staff presence per team."""

    def __init__(
        self, gateway: ServiceHost, delivery_timeout_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway
        self.delivery_timeout_s = delivery_timeout_s
        self.no_client_grace_s = NO_CLIENT_GRACE_S
        self._clock = clock
        self._deadlines: list[tuple[float, str]] = []
        self._scheduled: set[str] = set()
        self._wake = asyncio.Event()

    async def __aenter__(self) -> Self:
        for alarm in self._gateway.core.open_alarms():
            self.on_alarm(alarm)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._deadlines.clear()
        self._scheduled.clear()

    async def wait(self) -> None:
        """The watch's timer (a supervised task while the service is open)."""
        await self._timer()

    def on_alarm(self, alarm: Alarm) -> None:
        """Every alarm change: schedule its delivery check, or note it was delivered."""
        if alarm.type in (AlarmType.TECHNICAL, AlarmType.TEST):
            return
        waiting = alarm.state == "open" and not alarm.reached(Hop.DELIVERED)
        if waiting and alarm.id not in self._scheduled:
            stored = alarm.at(Hop.STORED) or alarm.hops[0].at
            heapq.heappush(self._deadlines, (stored + self.delivery_timeout_s, alarm.id))
            self._scheduled.add(alarm.id)
        self._wake.set()

    def on_presence(self) -> None:
        """A staff client connected or disconnected."""
        self._wake.set()

    async def _timer(self) -> None:
        no_client_since: dict[str, float] = {}
        last_pass = -PASS_INTERVAL_S
        while True:
            # Every alarm change wakes this task; in a burst, one pass per interval covers
            # them all (each pass looks at every open alarm). Deadlines here are seconds.
            rest = last_pass + PASS_INTERVAL_S - time.monotonic()
            if rest > 0:
                await asyncio.sleep(rest)
            last_pass = time.monotonic()
            self._wake.clear()
            now = self._clock()
            if not self._gateway.acts(STAFFWATCH):
                # Another gateway of the cluster watches; keep the heap warm for a
                # take-over (the lease change wakes this task) and drop what is settled.
                self._forget_settled()
                no_client_since.clear()
                await self._wake.wait()
                continue
            await self._check_deliveries(now)
            next_team_check = await self._check_teams(now, no_client_since)
            deadline = min(
                [t for t in (next_team_check,) if t is not None]
                + ([self._deadlines[0][0]] if self._deadlines else []),
                default=None,
            )
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            await wait_set(self._wake, timeout)

    def _forget_settled(self) -> None:
        alarms = self._gateway.core.alarms
        keep = [
            (deadline, alarm_id) for deadline, alarm_id in self._deadlines
            if (alarm := alarms.get(alarm_id)) is not None
            and alarm.state == "open" and not alarm.reached(Hop.DELIVERED)
        ]
        if len(keep) != len(self._deadlines):
            heapq.heapify(keep)
            self._scheduled = {alarm_id for _, alarm_id in keep}
            self._deadlines = keep

    async def _check_deliveries(self, now: float) -> None:
        gateway = self._gateway
        while self._deadlines and self._deadlines[0][0] <= now:
            _, alarm_id = heapq.heappop(self._deadlines)
            self._scheduled.discard(alarm_id)
            alarm = gateway.core.alarms.get(alarm_id)
            if alarm is None or alarm.state == "closed" or alarm.reached(Hop.DELIVERED):
                continue
            await gateway.submit_internal(AlarmReceived(
                alarm.device_id, f"undelivered.{alarm.id}", AlarmType.TECHNICAL,
                int(now * 1000), new_alarm_id(),
                detail=(f"Ingen telefon har bekräftat larmet {alarm.id} på "
                        f"{self.delivery_timeout_s:.0f} s / no phone confirmed alarm "
                        f"{alarm.id} within {self.delivery_timeout_s:.0f} s"),
            ))
        # Close the delivery alarms whose alarm has since been delivered (or closed).
        for technical in gateway.open_technical("undelivered."):
            if gateway.settling(technical.id):
                continue  # its close is on the way; applying it wakes this task again
            original = gateway.core.alarms.get(technical.ref.removeprefix("undelivered."))
            if original is None or original.state == "closed" or original.reached(
                Hop.DELIVERED
            ):
                await gateway.submit_internal(TechnicalCleared(
                    technical.device_id, technical.ref, "larmet bekräftat / alarm confirmed"))

    async def _check_teams(self, now: float, since: dict[str, float]) -> float | None:
        gateway = self._gateway
        connected = gateway.connected_staff()
        teams_with_alarms = {
            a.team_id for a in gateway.core.open_in_order()
            if a.team_id is not None and a.type not in (AlarmType.TECHNICAL, AlarmType.TEST)
        }
        next_check: float | None = None
        for team_id in teams_with_alarms | set(since):
            members = {s.id for s in gateway.org.staff.values() if team_id in s.team_ids}
            uncovered = team_id in teams_with_alarms and not (members & connected)
            open_fault = list(gateway.open_technical(f"noclient.{team_id}."))
            if not uncovered:
                since.pop(team_id, None)
                for alarm in open_fault:
                    if gateway.settling(alarm.id):
                        continue  # its close is on the way
                    await gateway.submit_internal(TechnicalCleared(
                        GATEWAY_DEVICE, alarm.ref, "en telefon är ansluten / a phone connected"))
                continue
            first = since.setdefault(team_id, now)
            if open_fault:
                continue
            if now - first >= self.no_client_grace_s:
                await gateway.submit_internal(AlarmReceived(
                    GATEWAY_DEVICE, f"noclient.{team_id}.{int(now * 1000)}", AlarmType.TECHNICAL,
                    int(now * 1000), new_alarm_id(),
                    detail=(f"Ingen i {team_id} är ansluten men laget har öppna larm / nobody "
                            f"of {team_id} is connected while it has open alarms"),
                ))
            else:
                check = first + self.no_client_grace_s
                next_check = check if next_check is None else min(next_check, check)
        return next_check

