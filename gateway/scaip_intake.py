"""SCAIP intake: one ``<mrq>`` from the listener into the gateway, answered with its ``snu``.

The listener (``gateway.sip``) parses SIP and the ``<mrq>``; ``classify`` (``devices.scaip``)
says what the message means; this module turns it into the typed input of the pipeline and
waits until that is durable before it answers ``snu 0``:

============  ==================================================================
``ALARM``     an ``AlarmMessage`` (with its position, content key and description)
``HEARTBEAT`` a ``HeartbeatMessage`` (a sign of life for supervision)
``STATUS``    ``StatusReported``: reset, cancelled, intervention complete, presence
``FAULT``     ``FaultReported``: a technical alarm (battery low, power failure ...)
``RESTORE``   ``FaultCleared``: closes the technical alarms of that fault
``INFO``      nothing stored but the sign of life
============  ==================================================================

and a position on any message that is not an alarm becomes ``PositionReported`` (the track
of an open mobile alarm). The gateway is reached through ``IntakePort``, two methods, so the
shell can be rebuilt around it (issue 16).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from typing import Protocol

from alarms.events import (
    Event,
    FaultCleared,
    FaultReported,
    PositionReported,
    StatusReported,
)
from alarms.model import AlarmType
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    StatusMessage,
)
from devices.scaip import (
    DEFAULT_TABLES,
    EventKind,
    ScaipRequest,
    ScaipTables,
    Snu,
    classify,
    content_of,
    describe,
)
from devices.sip import SipRequest
from gateway.ids import new_alarm_id
from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# Outcomes of the port (besides None: stored, or nothing needed storing).
UNKNOWN_DEVICE = "unknown_device"  # final: the controller is not provisioned
UNAVAILABLE = "unavailable"  # the journal could not store it: the controller retries
REFUSED = "refused"  # the core refused the event (cannot happen for a known device)


class IntakePort(Protocol):
    """What the intake needs from the gateway."""

    async def store_message(self, message: DeviceMessage) -> str | None:
        """Take a device message (alarm, heartbeat, status) and wait until it is stored."""
        ...

    async def store_event(self, event: Event) -> str | None:
        """Decide a device event and wait until its records are stored."""
        ...


class ScaipIntake:
    """The SCAIP handler of ``ScaipListener``: ``snu = await intake(request, sip)``."""

    def __init__(
        self, port: IntakePort, *, tables: ScaipTables = DEFAULT_TABLES,
        log_interval_s: float = 60.0,
    ) -> None:
        self._port = port
        self._tables = tables
        self._log = LogLimiter(log_interval_s)
        # Messages by what they meant (and "unmapped" for alarms stored through a fallback).
        self.counts: Counter[str] = Counter()

    async def __call__(self, request: ScaipRequest, sip: SipRequest) -> int:
        """Answer ``snu 0`` only once what the message means is durably stored."""
        meaning = classify(request, tables=self._tables)
        self.counts[meaning.kind.value] += 1
        now_ms = int(time.time() * 1000)
        cid, ref = request.cid, request.ref
        if not meaning.known:
            self.counts["unmapped"] += 1
            self._warn("unmapped", "SCAIP codes not in the tables (dty %s, stc %s) from %s, "
                       "stored as %s%s", request.dty, request.stc, cid,
                       meaning.alarm_type or meaning.kind.value)
        if request.position_problem:
            self.counts["position_unreadable"] += 1
            self._warn("position", "SCAIP position from %s ref %s not readable: %s%s", cid, ref,
                       request.position_problem)
        if meaning.kind is EventKind.ALARM:
            alarm_type = meaning.alarm_type or AlarmType.MANUAL
            return _snu(await self._port.store_message(AlarmMessage(
                cid, ref, now_ms, alarm_type, None, request.position,
                content=content_of(request), detail=describe(request),
            )))
        if meaning.kind is EventKind.HEARTBEAT:
            outcome = await self._port.store_message(
                HeartbeatMessage(cid, ref, now_ms, None, None))
        else:
            # A sign of life (and the refusal of an unknown controller) before the event.
            outcome = await self._port.store_message(
                StatusMessage(cid, ref, now_ms, f"scaip-{meaning.kind.value}", None))
        if outcome is not None:
            return _snu(outcome)
        events: list[Event] = []
        text = describe(request)
        if meaning.kind is EventKind.STATUS and meaning.status is not None:
            events.append(StatusReported(cid, ref, meaning.status, text))
        elif meaning.kind is EventKind.FAULT:
            detail = f"Tekniskt fel / device fault: {text}"
            events.extend(FaultReported(cid, ref, kind, detail, now_ms, new_alarm_id())
                          for kind in meaning.faults)
        elif meaning.kind is EventKind.RESTORE:
            events.extend(FaultCleared(cid, kind, text) for kind in meaning.faults)
        if request.position is not None:
            events.append(PositionReported(cid, ref, request.position))
        for event in events:
            outcome = await self._port.store_event(event)
            if outcome is not None:
                return _snu(outcome)
        return Snu.OK

    def _warn(self, key: str, message: str, *args: object) -> None:
        # ``message`` ends with a %s for the count of lines suppressed meanwhile.
        if self._log.allow(key):
            _LOGGER.warning(message, *args, self._log.suppressed_note(key))


def _snu(outcome: str | None) -> int:
    if outcome is None:
        return Snu.OK
    if outcome == UNAVAILABLE:
        # The journal cannot store it now: busy, so the controller retries (or fails over).
        return Snu.BUSY
    # Unknown controller, or refused for good: wrong content, the controller must not retry.
    return Snu.WRONG_CONTENT
