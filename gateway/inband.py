"""Transports that answer in-band (SCAIP, serial): their requests into typed device messages.

They await the same commit as MQTT before they answer OK (``snu 0``, ACK); a journal that
cannot store answers busy / NAK so the sender retries, and an unknown device is refused for
good. A fault while handling one request is isolated by ``Ingest.isolated`` (answered busy /
NAK, counted), never the listener's end.
"""

from __future__ import annotations

from alarms.model import AlarmType
from devices.contract import AlarmMessage, DeviceMessage, HeartbeatMessage, StatusMessage, valid_id
from devices.scaip import EventKind, ScaipRequest, Snu, classify
from devices.serial import NakReason
from devices.sip import SipRequest
from gateway.ingest import Ingest
from gateway.ports import Clock
from gateway.serial import ACK, Verdict, nak


class InBand:
    """The SCAIP and serial handlers of one gateway."""

    def __init__(self, ingest: Ingest, clock: Clock) -> None:
        self._ingest = ingest
        self._clock = clock

    async def scaip(self, request: ScaipRequest, sip: SipRequest) -> int:
        """A SCAIP <mrq>: answered OK (snu 0) only once it is durably stored."""
        device_id = request.cid
        if not valid_id(device_id):
            return Snu.WRONG_CONTENT
        ts_ms = int(self._clock() * 1000)
        meaning = classify(request)
        message: DeviceMessage
        if meaning.kind is EventKind.ALARM:
            message = AlarmMessage(
                device_id, request.ref, ts_ms, meaning.alarm_type or AlarmType.MANUAL, None
            )
        elif meaning.kind is EventKind.HEARTBEAT:
            message = HeartbeatMessage(device_id, request.ref, ts_ms, None, None)
        else:
            message = StatusMessage(device_id, request.ref, ts_ms, meaning.kind.value, None)
        outcome = await self._ingest.store(message, "scaip")
        if outcome is None:
            return Snu.OK
        # Unknown controllers are refused for good; a journal that cannot store says busy,
        # and the controller retries.
        return Snu.WRONG_CONTENT if outcome == "unknown_device" else Snu.BUSY

    async def serial(self, message: DeviceMessage) -> Verdict:
        """A serial record: ACK only once stored; NAK says why."""
        outcome = await self._ingest.store(message, "serial")
        if outcome is None:
            return ACK
        return nak(
            NakReason.UNKNOWN_DEVICE if outcome == "unknown_device" else NakReason.NOT_STORED
        )
