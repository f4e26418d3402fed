"""Transports that answer in-band (SCAIP, serial): their requests into typed device messages.

They await the same commit as MQTT before they answer OK (``snu 0``, ACK); a journal that
cannot store answers busy / NAK so the sender retries, and an unknown device is refused for
good. A fault while handling one request is isolated by ``Ingest.isolated`` (answered busy /
NAK, counted), never the listener's end.
"""

from __future__ import annotations

from alarms.events import Event
from devices.contract import DeviceMessage
from devices.serial import NakReason
from gateway.ingest import Ingest
from gateway.ports import Clock
from gateway.serial import ACK, Verdict, nak


class InBand:
    """The serial handler of one gateway, and the port of its SCAIP intake
    (``gateway.scaip_intake``, which maps each ``<mrq>`` into typed input)."""

    def __init__(self, ingest: Ingest, clock: Clock) -> None:
        self._ingest = ingest
        self._clock = clock

    async def store_message(self, message: DeviceMessage) -> str | None:
        """A SCAIP controller's message, waited on until stored (``ScaipIntake``'s port)."""
        return await self._ingest.store(message, "scaip")

    async def store_event(self, event: Event) -> str | None:
        """A SCAIP device event (status, position, fault), waited on until stored."""
        self._ingest.last_message_at["scaip"] = self._clock()
        return await self._ingest.pipeline.store_event(event)

    async def serial(self, message: DeviceMessage) -> Verdict:
        """A serial record: ACK only once stored; NAK says why."""
        outcome = await self._ingest.store(message, "serial")
        if outcome is None:
            return ACK
        return nak(
            NakReason.UNKNOWN_DEVICE if outcome == "unknown_device" else NakReason.NOT_STORED
        )
