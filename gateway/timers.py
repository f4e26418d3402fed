"""The gateway's clocks: escalation deadlines, device supervision, retention.

``Timers.escalate`` is ONE timer for every alarm's next deadline (escalation steps, reminders,
centre retries). Deadlines are epoch seconds derived from journaled records, so the first pass
after a restart catches up on whatever fell due while the gateway was down. The device watch
(``gateway.watch``) reports offline and online devices here, and they become technical alarms
through the same pipeline as everything else.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

from alarms.events import TechnicalCleared, Tick
from alarms.supervision import DeviceOffline, DeviceOnline
from gateway.duties import ESCALATION, SUPERVISION
from gateway.pipeline import Pipeline, technical
from gateway.ports import Clock
from gateway.privacy import RetentionSettings, run_retention
from gateway.views import iso
from gateway.waiting import wait_set
from gateway.watch import DeviceWatch

_LOGGER = logging.getLogger(__name__)

# Retention passes are cheap and periods are days long; four a day is plenty.
RETENTION_INTERVAL_S = 6 * 3600.0


class Timers:
    """Escalation, supervision reports and retention for one gateway."""

    def __init__(self, *, pipeline: Pipeline, clock: Clock,
                 acts: Callable[[str], bool]) -> None:
        self._pipeline = pipeline
        self._clock = clock
        self._acts = acts
        self.deadlines_changed = asyncio.Event()
        self.supervision_gained = asyncio.Event()
        self.watch: DeviceWatch | None = None

    # -- escalation ------------------------------------------------------------------------

    async def escalate(self) -> None:
        """Tick the core whenever an alarm's deadline is due (a supervised task)."""
        core = self._pipeline.core
        while True:
            self.deadlines_changed.clear()
            # In a cluster only the escalation lease holder ticks; the others wait for a
            # lease change (which sets the same event).
            deadline = core.next_deadline() if self._acts(ESCALATION) else None
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            await wait_set(self.deadlines_changed, timeout)
            if not self._acts(ESCALATION):
                continue
            deadline = core.next_deadline()
            if deadline is not None and deadline <= self._clock():
                if not await self._pipeline.decide_locked(Tick()):
                    # Other gateways kept changing the due alarms (staff receipts in a
                    # storm): nothing is wrong, the deadline is still due; tick again.
                    continue
                if core.next_deadline() == deadline:
                    # A deadline the tick did not move would spin this loop; it is a bug in
                    # the core if it happens, so say so, and do not burn the CPU meanwhile.
                    _LOGGER.error("deadline %.3f did not move after a tick", deadline)
                    await asyncio.sleep(1.0)

    # -- device supervision ----------------------------------------------------------------

    async def device_offline(self, offline: DeviceOffline) -> None:
        """A device went silent past its deadline: a technical alarm (lease holder only)."""
        if not self._acts(SUPERVISION):
            return
        detail = (
            f"Enheten tyst sedan {iso(offline.since)} / device silent since {iso(offline.since)}"
        )
        await self._pipeline.submit_internal(technical(
            offline.device_id, f"offline.{int(offline.since * 1000)}", detail, offline.at))

    async def device_online(self, online: DeviceOnline) -> None:
        """A silent device was heard again: its offline alarm is closed."""
        if not self._acts(SUPERVISION):
            return
        for alarm in self._pipeline.open_technical("offline."):
            if alarm.device_id == online.device_id:
                await self._pipeline.submit_internal(TechnicalCleared(
                    online.device_id, alarm.ref, f"avbrott / outage {online.outage_s:.0f} s"))

    async def reconcile_supervision(self) -> None:
        """On taking over supervision: raise and clear what the previous holder did not.

        Every gateway keeps a warm supervision view (heartbeats reach all of them), but only
        the holder reports; this closes the gap of the take-over moment (a supervised task).
        """
        while True:
            await self.supervision_gained.wait()
            self.supervision_gained.clear()
            assert self.watch is not None
            now = self._clock()
            supervisor = self.watch.supervisor
            flagged = {a.device_id: a for a in self._pipeline.open_technical("offline.")}
            for device_id in supervisor.offline_devices():
                if device_id not in flagged and self._acts(SUPERVISION):
                    since = supervisor.last_seen(device_id) or now
                    await self.device_offline(DeviceOffline(
                        device_id, since=since, deadline=supervisor.deadline(device_id) or now,
                        at=now))
            for device_id, alarm in flagged.items():
                if device_id in supervisor and not supervisor.is_offline(device_id):
                    await self._pipeline.submit_internal(TechnicalCleared(
                        device_id, alarm.ref, "enheten hörs igen / device heard again"))

    # -- retention -------------------------------------------------------------------------

    @staticmethod
    async def retention(data_dir: Path, settings: RetentionSettings) -> None:
        """Prune data past its retention period (docs/security.md), every six hours."""
        while True:
            await asyncio.to_thread(run_retention, data_dir, settings)
            await asyncio.sleep(RETENTION_INTERVAL_S)
