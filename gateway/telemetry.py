"""The telemetry path: every valid sample to the sinks and the sensor rules, never blocking.

A full sink sheds (counted) rather than delay anything; while any sink sheds, a technical
alarm says so, and it is closed when telemetry flows again. The alarm is raised by a task of
its own, woken by the intake, so the intake itself never waits for the journal.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from alarms.events import TechnicalCleared
from alarms.model import GATEWAY_DEVICE
from devices.contract import TelemetryMessage
from gateway.pipeline import Pipeline, technical
from gateway.ports import Clock
from gateway.tsdb import Sample, TelemetrySink

if TYPE_CHECKING:
    from gateway.sensors import SensorService

_LOGGER = logging.getLogger(__name__)


class TelemetryPath:
    """Offers samples to the sinks and the sensor rules; watches for shedding."""

    def __init__(self, sinks: Sequence[TelemetrySink], sensors: SensorService | None,
                 pipeline: Pipeline, clock: Clock,
                 owns: Callable[[str], bool] | None = None) -> None:
        self.sinks = list(sinks)
        self.sensors = sensors
        # In a cluster every gateway receives every sample; only the device's owner runs
        # the rules and writes the shared long-term sinks (gateway.partition). The first
        # sink is this gateway's own graph store, which keeps everything it receives.
        self._owns = owns
        self._pipeline = pipeline
        self._clock = clock
        self._shedding = False
        self._check = asyncio.Event()

    def __call__(self, message: TelemetryMessage, now: float) -> None:
        """Offer one sample to every sink and the rules (the ingest's telemetry intake)."""
        sample = Sample.from_message(message, int(now * 1000))
        shed = False
        mine = self._owns is None or self._owns(message.device_id)
        for n, sink in enumerate(self.sinks):
            if n == 0 or mine:
                shed |= not sink.offer(sample)
        if self.sensors is not None and mine:
            self.sensors.offer(message)
        if shed != self._shedding:
            # Looked at only while shedding starts or stops: no cost per sample else.
            self._check.set()

    async def watch_shedding(self) -> None:
        """A technical alarm while telemetry is being shed; cleared when it stops."""
        while True:
            await self._check.wait()
            self._check.clear()
            shedding = any(sink.stats.shedding for sink in self.sinks)
            if shedding == self._shedding:
                continue
            self._shedding = shedding
            now = self._clock()
            if shedding:
                await self._pipeline.submit_internal(technical(
                    GATEWAY_DEVICE, f"telemetry.{int(now * 1000)}",
                    "Telemetri kastas vid överlast / telemetry is being shed (overload)", now))
            else:
                for alarm in self._pipeline.open_technical("telemetry."):
                    await self._pipeline.submit_internal(
                        TechnicalCleared(GATEWAY_DEVICE, alarm.ref, "telemetry flows again"))
