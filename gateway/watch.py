"""Device supervision, the I/O half: one timer task over ``alarms.supervision.Supervisor``.

Last-seen times are persisted every few seconds (a small SQLite table) so that a device that
went silent while the gateway was down is detected right after start. Whether a device is
offline is not stored here: the journal says it (an open ``offline.*`` technical alarm).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from alarms.supervision import GRACE_FRACTION, DeviceOffline, DeviceOnline, Supervisor
from devices.types import heartbeat_s
from gateway.ratelimit import LogLimiter
from gateway.sqlrows import insert_rows
from gateway.waiting import wait_set

_LOGGER = logging.getLogger(__name__)

# How often changed last-seen times are written. A restart can then misjudge a device by at
# most this much, well inside the smallest grace (30 s).
PERSIST_INTERVAL_S = 5.0

OfflineHandler = Callable[[DeviceOffline], Awaitable[None]]
OnlineHandler = Callable[[DeviceOnline], Awaitable[None]]


class DeviceWatch:
    """Supervises every provisioned device; reports offline/online through two handlers."""

    def __init__(
        self,
        path: Path,
        *,
        on_offline: OfflineHandler,
        on_online: OnlineHandler,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path
        self.supervisor = Supervisor()
        self._on_offline = on_offline
        self._on_online = on_online
        self._clock = clock
        self._wake = asyncio.Event()
        self._dirty: dict[str, float] = {}
        self._events: asyncio.Queue[DeviceOffline | DeviceOnline] = asyncio.Queue()
        # One line a minute per direction: after an outage or a restart thousands of devices
        # change state at once; each change is a technical alarm (journaled) anyway.
        self._log = LogLimiter(60.0)

    # -- set-up ----------------------------------------------------------------------------

    def load(self, devices: Iterable[tuple[str, str, float | None]], offline: set[str]) -> None:
        """Watch ``(device_id, type, interval override)``; restore stored last-seen times."""
        stored = self._read()
        now = self._clock()
        for device_id, device_type, interval in devices:
            interval_s = interval or heartbeat_s(device_type)
            grace_s = interval_s * GRACE_FRACTION
            last_seen = stored.get(device_id)
            if last_seen is None and device_id not in offline:
                self.supervisor.watch(device_id, now=now, interval_s=interval_s, grace_s=grace_s)
            else:
                self.supervisor.restore(
                    device_id,
                    last_seen=last_seen if last_seen is not None else now,
                    interval_s=interval_s,
                    grace_s=grace_s,
                    offline=device_id in offline,
                )
        self._wake.set()

    def watch(self, device_id: str, device_type: str, interval: float | None = None) -> None:
        """Start watching a newly provisioned device."""
        interval_s = interval or heartbeat_s(device_type)
        self.supervisor.watch(
            device_id, now=self._clock(), interval_s=interval_s,
            grace_s=interval_s * GRACE_FRACTION,
        )
        self._wake.set()

    def _read(self) -> dict[str, float]:
        conn = self._connect()
        try:
            return dict(conn.execute("SELECT device_id, last_seen FROM last_seen").fetchall())
        finally:
            conn.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS last_seen (device_id TEXT PRIMARY KEY, last_seen REAL)"
        )
        return conn

    # -- life signs ------------------------------------------------------------------------

    def seen(self, device_id: str, now: float) -> None:
        """Any valid message from the device. Broker keep-alives never come here."""
        if device_id not in self.supervisor:
            return
        actions = self.supervisor.seen(device_id, now)
        self._dirty[device_id] = now
        for action in actions:
            self._events.put_nowait(action)
        if actions:
            self._wake.set()

    # -- lifecycle -------------------------------------------------------------------------

    async def close(self) -> None:
        """Write the last-seen times not yet persisted (on shutdown)."""
        await asyncio.to_thread(self._persist, dict(self._dirty))
        self._dirty.clear()

    async def run(self) -> None:
        """The timer, the reports and the persistence (a supervised task)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._timer(), name="supervision timer")
            group.create_task(self._report(), name="supervision reports")
            group.create_task(self._persist_loop(), name="supervision persist")

    async def _timer(self) -> None:
        # ONE timer for every device: sleep exactly until the earliest deadline, or until
        # something moved a deadline earlier (watch, restore, a device back online).
        while True:
            self._wake.clear()
            deadline = self.supervisor.next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            await wait_set(self._wake, timeout)
            # Chunked so that a restart with thousands of overdue devices cannot stall the
            # loop for a second; the next round comes straight back for the rest.
            for action in self.supervisor.due(self._clock(), limit=500):
                self._events.put_nowait(action)

    async def _report(self) -> None:
        while True:
            action = await self._events.get()
            if isinstance(action, DeviceOffline):
                self._log.log(
                    _LOGGER, logging.WARNING, "offline",
                    "device %s offline: silent since %.0f s before its deadline",
                    action.device_id, action.deadline - action.since,
                )
                await self._on_offline(action)
            else:
                self._log.log(_LOGGER, logging.INFO, "online",
                              "device %s back online after %.0f s", action.device_id,
                              action.outage_s)
                await self._on_online(action)

    async def _persist_loop(self) -> None:
        while True:
            await asyncio.sleep(PERSIST_INTERVAL_S)
            if self._dirty:
                batch, self._dirty = self._dirty, {}
                await asyncio.to_thread(self._persist, batch)

    def _persist(self, batch: dict[str, float]) -> None:
        if not batch:
            return
        conn = self._connect()
        try:
            with conn:
                insert_rows(
                    conn, "INSERT INTO last_seen (device_id, last_seen)", list(batch.items()),
                    "ON CONFLICT(device_id) DO UPDATE "
                    "SET last_seen = max(last_seen, excluded.last_seen)")
        finally:
            conn.close()
