"""Scheduled end-to-end test alarms (provlarm): proof, every day, that the whole chain works.

Each safety device is commanded (``cmd: test_alarm``) once a day at the configured local
time plus a per-device offset, so a fleet of thousands does not fire at once. The device's
test alarm must then pass the chain like any alarm: ``stored`` (it reached the journal),
``routed``, and ``delivered`` — a staff client confirmed it (the app shows test alarms
quietly). The gateway then closes it with "provlarm genomfört". A hop not reached in time
raises a technical alarm (to technicians: ``alarms.routing``) that names the hop in Swedish
and says why, as far as the gateway can know: the command could not be sent, the device
did not answer, or no phone of the team was connected when the alarm was routed. The test
alarm itself is then closed as failed, so it does not linger in the care staff's list. The
verdict reads the alarm's own chain, so a test that arrived is never reported failed (a
known failure mode of deployed systems).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self
from zoneinfo import ZoneInfo

from alarms.events import AlarmReceived, TestCompleted
from alarms.model import SAFETY_DEVICE_TYPES, Alarm, AlarmType, Hop
from alarms.wording import Text, hop_name
from devices.contract import encode_command
from gateway.duties import PROVLARM
from gateway.ids import new_alarm_id
from gateway.ports import Alarms, DeviceCommands
from gateway.views import iso
from gateway.waiting import wait_set

if TYPE_CHECKING:
    from gateway.config import ProvlarmSettings
    from gateway.org import OrgStore


class ProvlarmHost(Alarms, DeviceCommands, Protocol):
    """What the test-alarm service uses of the gateway."""

    @property
    def org(self) -> OrgStore:
        """The organisation: which devices there are."""

    def connected_staff(self) -> frozenset[str]:
        """Staff with a client connected (whose phones could confirm the test alarm)."""

_LOGGER = logging.getLogger(__name__)
_ZONE = ZoneInfo("Europe/Stockholm")


@dataclass(slots=True)
class _Run:
    device_id: str
    started: float
    alarm_id: str | None = None
    stored_at: float | None = None
    command_sent: bool = True
    # Noted when the test alarm is routed: its team, and how many of the phones that could
    # confirm it (the team's staff and whoever it was routed to) were connected then.
    routed: bool = False
    team: str | None = None
    phones: int = 0


def failure_reason(
    hop: str, *, command_sent: bool, routed: bool, team: str | None, phones: int,
    store_timeout_s: float, delivery_timeout_s: float,
) -> Text:
    """Why a test alarm did not reach ``hop`` in time, as far as the gateway can tell."""
    if hop == Hop.STORED.value:
        if not command_sent:
            return Text(
                "kommandot kunde inte skickas: gatewayen hade ingen förbindelse med "
                "MQTT-brokern",
                "the command could not be sent: the gateway was not connected to the MQTT "
                "broker")
        return Text(f"enheten skickade inget provlarm inom {store_timeout_s:.0f} s",
                    f"the device sent no test alarm within {store_timeout_s:.0f} s")
    where_sv = team or "laget"
    where_en = team or "the team"
    if not routed:
        return Text("larmet kom aldrig fram till något lag", "the alarm was never routed")
    if phones == 0:
        return Text(f"ingen telefon i {where_sv} var ansluten",
                    f"no phone of {where_en} was connected")
    sv_phones = "1 telefon" if phones == 1 else f"{phones} telefoner"
    en_phones = "1 phone" if phones == 1 else f"{phones} phones"
    return Text(
        f"{sv_phones} i {where_sv} var {'ansluten' if phones == 1 else 'anslutna'}, men ingen "
        f"bekräftade larmet inom {delivery_timeout_s:.0f} s",
        f"{en_phones} of {where_en} {'was' if phones == 1 else 'were'} connected, but none "
        f"confirmed the alarm within {delivery_timeout_s:.0f} s")


def daily_offset_s(device_id: str, spread_s: float) -> float:
    """A stable per-device offset in [0, spread_s): the same device, the same minute."""
    digest = int(hashlib.sha256(device_id.encode()).hexdigest()[:12], 16)
    return float(digest % max(1, int(spread_s)))


def next_slot(device_id: str, now: float, at: str, spread_s: float) -> float:
    """The device's next daily test time after ``now`` (local time, DST-correct)."""
    hour, minute = (int(part) for part in at.split(":"))
    local = datetime.fromtimestamp(now, _ZONE)
    offset = daily_offset_s(device_id, spread_s)
    for day in range(3):
        date = (local + timedelta(days=day)).date()
        start = datetime(date.year, date.month, date.day, hour, minute, tzinfo=_ZONE)
        slot = start.timestamp() + offset
        if slot > now:
            return slot
    raise AssertionError("unreachable: a slot exists within three days")


class Provlarm:
    """Schedules, commands and judges test alarms. One timer task for the whole fleet."""

    def __init__(
        self,
        gateway: ProvlarmHost,
        settings: ProvlarmSettings,
        path: Path,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway = gateway
        self.settings = settings
        self.path = path
        self._clock = clock
        self._schedule: list[tuple[float, str]] = []
        self._runs: dict[str, _Run] = {}
        self._closing: list[tuple[str, str, str]] = []
        self._wake = asyncio.Event()
        self.passed = 0
        self.failed = 0

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        await asyncio.to_thread(self._init_db)
        now = self._clock()
        if self.settings.enabled:
            for device in self._gateway.org.devices.values():
                if device.type in SAFETY_DEVICE_TYPES:
                    slot = next_slot(device.id, now, self.settings.at, self.settings.spread_s)
                    heapq.heappush(self._schedule, (slot, device.id))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._schedule.clear()

    async def wait(self) -> None:
        """The schedule's timer (a supervised task while the service is open)."""
        await self._timer()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path)
        conn.execute(
            "CREATE TABLE IF NOT EXISTS provlarm (device_id TEXT PRIMARY KEY, last_at REAL,"
            " last_result TEXT, last_ok REAL, failed_hop TEXT, reason TEXT)"
        )
        return conn

    def _init_db(self) -> None:
        conn = self._connect()
        try:
            columns = {row[1] for row in conn.execute("PRAGMA table_info(provlarm)")}
            if "reason" not in columns:
                # A table from before failures said why (JSON {"sv", "en"}).
                with conn:
                    conn.execute("ALTER TABLE provlarm ADD COLUMN reason TEXT")
        finally:
            conn.close()

    # -- running tests ---------------------------------------------------------------------

    def run_now(self, device_id: str) -> bool:
        """Command one device to send a test alarm now. False if one is already running."""
        if device_id in self._runs:
            return False
        now = self._clock()
        run = self._runs[device_id] = _Run(device_id, now)
        # A command lost with the broker away is no different from a device that does not
        # answer: the run fails at its store deadline and says which of the two it was.
        run.command_sent = self._gateway.send_command(
            device_id, encode_command(f"provlarm-{int(now * 1000)}", "test_alarm"))
        self._wake.set()
        return True

    def wake(self) -> None:
        """Look at the schedule again (the provlarm lease changed hands)."""
        self._wake.set()

    def on_alarm(self, alarm: Alarm) -> None:
        """Every alarm change (a gateway notifier): follow the test alarms of running tests."""
        if alarm.type is not AlarmType.TEST:
            return
        run = self._runs.get(alarm.device_id)
        if run is None or alarm.hops[0].at < run.started - 1.0:
            return
        run.alarm_id = alarm.id
        if not run.routed and alarm.reached(Hop.ROUTED):
            run.routed = True
            run.team = self._team_name(alarm.team_id)
            org = self._gateway.org
            could = alarm.targets | {
                s.id for s in org.staff.values() if alarm.team_id in s.team_ids}
            run.phones = len(could & self._gateway.connected_staff())
        stored = alarm.at(Hop.STORED)
        if stored is not None and run.stored_at is None:
            run.stored_at = stored
            self._wake.set()
        if alarm.reached(Hop.DELIVERED) and alarm.state == "open":
            del self._runs[alarm.device_id]
            self.passed += 1
            delivered = alarm.at(Hop.DELIVERED) or self._clock()
            note = f"hela kedjan på {delivered - run.started:.1f} s / whole chain in " \
                   f"{delivered - run.started:.1f} s"
            self._queue_close(alarm.device_id, alarm.id, note)

    def _team_name(self, team_id: str | None) -> str | None:
        team = self._gateway.org.teams.get(team_id or "")
        return team.name if team is not None else team_id

    def _queue_close(self, device_id: str, alarm_id: str, note: str) -> None:
        # on_alarm runs synchronously inside the commit follower; the close is journaled
        # (and the result written) from the timer task instead, so the follower neither
        # waits on its own pipeline nor blocks the loop on a database write.
        self._closing.append((device_id, alarm_id, note))
        self._wake.set()

    async def _timer(self) -> None:
        while True:
            self._wake.clear()
            closing, self._closing = self._closing, []
            for device_id, alarm_id, note in closing:
                await asyncio.to_thread(self._record, device_id, "passed", None, None)
                await self._gateway.submit_internal(TestCompleted(alarm_id, note))
            now = self._clock()
            # In a cluster only the provlarm lease holder commands tests; the others keep
            # their schedule moving so that a take-over starts from the right slots.
            acting = self._gateway.acts(PROVLARM)
            while self._schedule and self._schedule[0][0] <= now:
                _, device_id = heapq.heappop(self._schedule)
                if acting:
                    self.run_now(device_id)
                heapq.heappush(self._schedule, (
                    next_slot(device_id, now, self.settings.at, self.settings.spread_s),
                    device_id,
                ))
            for run in list(self._runs.values()):
                hop = self._overdue(run, now)
                if hop is not None:
                    await self._fail(run, hop, now)
            deadline = self._next_deadline()
            timeout = None if deadline is None else max(0.0, deadline - self._clock())
            await wait_set(self._wake, timeout)

    def _overdue(self, run: _Run, now: float) -> str | None:
        if run.stored_at is None:
            if now >= run.started + self.settings.store_timeout_s:
                return Hop.STORED.value
            return None
        if now >= run.stored_at + self.settings.delivery_timeout_s:
            return Hop.DELIVERED.value
        return None

    def _next_deadline(self) -> float | None:
        times = [self._schedule[0][0]] if self._schedule else []
        for run in self._runs.values():
            if run.stored_at is None:
                times.append(run.started + self.settings.store_timeout_s)
            else:
                times.append(run.stored_at + self.settings.delivery_timeout_s)
        return min(times, default=None)

    def _reason(self, run: _Run, hop: str) -> Text:
        return failure_reason(
            hop, command_sent=run.command_sent, routed=run.routed, team=run.team,
            phones=run.phones, store_timeout_s=self.settings.store_timeout_s,
            delivery_timeout_s=self.settings.delivery_timeout_s)

    async def _fail(self, run: _Run, hop: str, now: float) -> None:
        del self._runs[run.device_id]
        self.failed += 1
        reason = self._reason(run, hop)
        await asyncio.to_thread(self._record, run.device_id, "failed", hop, reason)
        _LOGGER.warning("test alarm of %s failed at hop %s: %s", run.device_id, hop, reason.en,
                        extra={"device_id": run.device_id, "alarm_id": run.alarm_id, "hop": hop})
        name = hop_name(hop)
        detail = (f"Provlarmet misslyckades vid {name.sv}: {reason.sv} / "
                  f"The test alarm failed at {name.en}: {reason.en}")
        await self._gateway.submit_internal(AlarmReceived(
            run.device_id, f"test.{int(now * 1000)}", AlarmType.TECHNICAL, int(now * 1000),
            new_alarm_id(), detail=detail,
        ))
        if run.alarm_id is not None:
            # The failure is now the technicians' alarm; the test alarm itself would
            # otherwise stay open in the care staff's list for ever.
            await self._gateway.submit_internal(TestCompleted(
                run.alarm_id, f"vid {name.sv}: {reason.sv} / at {name.en}: {reason.en}",
                passed=False))

    def _record(
        self, device_id: str, result: str, failed_hop: str | None, reason: Text | None
    ) -> None:
        now = self._clock()
        conn = self._connect()
        try:
            with conn:
                conn.execute(
                    "INSERT INTO provlarm (device_id, last_at, last_result, last_ok, failed_hop,"
                    " reason) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(device_id) DO UPDATE"
                    " SET last_at = excluded.last_at, last_result = excluded.last_result,"
                    " failed_hop = excluded.failed_hop, reason = excluded.reason,"
                    " last_ok = COALESCE(excluded.last_ok, provlarm.last_ok)",
                    (device_id, now, result, now if result == "passed" else None, failed_hop,
                     None if reason is None else json.dumps(
                         {"sv": reason.sv, "en": reason.en}, ensure_ascii=False)),
                )
        finally:
            conn.close()

    def status(self, device_id: str) -> dict[str, Any]:
        """The device's last test and whether one is running now."""
        conn = self._connect()
        try:
            row = conn.execute(
                "SELECT last_at, last_result, last_ok, failed_hop, reason FROM provlarm"
                " WHERE device_id = ?", (device_id,),
            ).fetchone()
        finally:
            conn.close()
        run = self._runs.get(device_id)
        next_at = next((t for t, d in self._schedule if d == device_id), None)
        return {
            "device_id": device_id,
            "running": run is not None,
            "last_at": None if row is None or row[0] is None else iso(row[0]),
            "last_result": None if row is None else row[1],
            "last_ok": None if row is None or row[2] is None else iso(row[2]),
            "failed_hop": None if row is None else row[3],
            # Why it failed, {"sv", "en"} (None: passed, or failed before reasons were kept).
            "reason": parse_reason(None if row is None else row[4]),
            # While running: what it waits for, when the gateway can already tell it will
            # likely fail (the test alarm was routed while no phone of the team was on).
            "waiting": None if run is None else self._waiting(run),
            "next_at": None if next_at is None else iso(next_at),
        }

    @staticmethod
    def _waiting(run: _Run) -> dict[str, str] | None:
        if not run.routed or run.phones:
            return None
        return {"sv": f"ingen telefon i {run.team or 'laget'} är ansluten",
                "en": f"no phone of {run.team or 'the team'} is connected"}


def parse_reason(stored: str | None) -> dict[str, str] | None:
    """A stored reason (JSON) as ``{"sv", "en"}``; None for none or an unreadable one."""
    if not stored:
        return None
    try:
        value = json.loads(stored)
    except ValueError:
        return None
    if isinstance(value, dict) and isinstance(value.get("sv"), str) \
            and isinstance(value.get("en"), str):
        return {"sv": value["sv"], "en": value["en"]}
    return None
