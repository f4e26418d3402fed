"""Sensor rules in the running gateway: telemetry in, alarms through the same chain out.

Telemetry is collected for a short batch window and evaluated in one vectorised call of
``alarms.sensors.SensorRuleEngine`` (no per-sample Python loop in the hot path); absence
rules (no motion by morning, not back in bed) run on the engine's ``tick``. A firing becomes
an ``AlarmReceived`` with a ref derived from the rule and episode, so re-fed telemetry after a
restart cannot raise it twice. The evidence — the samples around the event — is the
telemetry itself, served from the time-series store at ``/api/v1/alarms/{id}/evidence``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from alarms.events import AlarmReceived
from alarms.model import AlarmType
from alarms.sensors import SensorRuleEngine, alarm_received
from alarms.sensors.engine import RuleFiring
from devices.contract import TelemetryMessage
from gateway.ids import new_alarm_id
from gateway.ports import Alarms
from gateway.waiting import wait_set

if TYPE_CHECKING:
    from gateway.org import OrgStore
    from gateway.tsdb import TelemetrySink


class SensorHost(Alarms, Protocol):
    """What the sensor rules use of the gateway."""

    @property
    def org(self) -> OrgStore:
        """The organisation: whose home each device is in."""

    @property
    def telemetry(self) -> TelemetrySink:
        """The time-series store the evidence is read from."""

_LOGGER = logging.getLogger(__name__)

# Samples wait at most this long for their batch: sensor alarms (bed exit, door at night)
# are minutes-scale rules, so a second of batching costs nothing and buys vectorisation.
BATCH_S = 1.0
# Samples evaluated in one go before the rules yield to the event loop (well under a
# millisecond of work each).
FEED_SLICE = 256
# Absence rules are evaluated this often even when no telemetry arrives.
TICK_S = 30.0
# Evidence shown with an alarm: this long before the firing, and a little after.
EVIDENCE_BEFORE_MS = 30 * 60 * 1000
EVIDENCE_AFTER_MS = 60 * 1000


class SensorService:
    """Feeds telemetry to the rules engine and turns firings into alarms."""

    def __init__(self, gateway: SensorHost) -> None:
        self._gateway = gateway
        self.engine = SensorRuleEngine()
        self._batch: list[TelemetryMessage] = []
        self._arrived = asyncio.Event()
        self.firings = 0
        # alarm id -> (device, metric) of the firing, for the evidence endpoint
        self._evidence: dict[str, tuple[str, str]] = {}

    def assign_all(self) -> None:
        """Tell the engine whose home each device is in (after start and org changes)."""
        for device in self._gateway.org.devices.values():
            self.engine.assign_device(device.id, device.recipient_id)

    def offer(self, message: TelemetryMessage) -> None:
        """A telemetry sample (called on the loop for every valid one)."""
        self._batch.append(message)
        self._arrived.set()

    async def __aenter__(self) -> Self:
        self.assign_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._batch.clear()

    async def wait(self) -> None:
        """The rules' batch and tick loop (a supervised task while the service is open)."""
        await self._run()

    async def _run(self) -> None:
        while True:
            await wait_set(self._arrived, TICK_S)
            await asyncio.sleep(BATCH_S)  # gather the rest of the batch
            self._arrived.clear()
            batch, self._batch = self._batch, []
            now_ms = int(time.time() * 1000)
            firings = [] if batch else self.engine.tick(now_ms)
            # In slices, yielding between them: a second of a sensor storm is thousands of
            # samples, and the event loop that acks alarms must not wait for all of them.
            for start in range(0, len(batch), FEED_SLICE):
                firings += self.engine.feed(batch[start : start + FEED_SLICE], now_ms)
                await asyncio.sleep(0)
            for firing in firings:
                await self._raise(firing)

    async def _raise(self, firing: RuleFiring) -> None:
        self.firings += 1
        alarm_id = new_alarm_id()
        event = alarm_received(firing, alarm_id)
        if event is None:  # a technical firing (battery trend)
            event = AlarmReceived(
                firing.device_id, firing.ref, AlarmType.TECHNICAL, firing.at_ms, alarm_id,
                detail=firing.summary,
            )
        else:
            event = AlarmReceived(
                event.device_id, event.ref, event.type, event.device_ts_ms, event.new_id,
                detail=firing.summary,
            )
        _LOGGER.info("sensor rule %s fired for %s", firing.rule_id, firing.device_id)
        metric = _metric_of(firing)
        if metric is not None:
            self._evidence[alarm_id] = (firing.device_id, metric)
        await self._gateway.submit_internal(event)

    async def evidence(self, alarm_id: str) -> dict[str, Any]:
        """The telemetry around a sensor alarm, from the time-series store."""
        alarm = self._gateway.core.alarms[alarm_id]
        device_id, metric = self._evidence.get(alarm_id, (alarm.device_id, ""))
        metric = metric or _METRIC_OF_TYPE.get(alarm.type.value, "")
        if not metric:
            return {"alarm_id": alarm_id, "metric": None, "points": []}
        at_ms = alarm.device_ts_ms
        points = await self._gateway.telemetry.query(
            device_id, metric, at_ms - EVIDENCE_BEFORE_MS, at_ms + EVIDENCE_AFTER_MS, 500
        )
        return {
            "alarm_id": alarm_id,
            "device_id": device_id,
            "metric": metric,
            "points": [[ts, list(v) if isinstance(v, tuple) else v] for ts, v in points],
        }


_METRIC_OF_TYPE = {
    "bed_exit": "bed_occupied",
    "door": "door_open",
    "inactivity": "motion",
    "temperature": "temperature",
    "smoke": "smoke",
    "water": "water",
    "fall": "accel",
}


def _metric_of(firing: RuleFiring) -> str | None:
    if firing.type == "battery_low":
        return "battery"
    return _METRIC_OF_TYPE.get(firing.type)
