"""Transport messages → typed events: the gateway's intake from every device transport.

Each transport (MQTT, SCAIP, serial, ...) hands raw messages here. Every message is handled
in isolation: a codec that refuses it answers the device with the reason where it can, and a
bug in any handler is logged (rate-limited, with context), counted in
``trygg_handler_errors_total`` and answered ``rejected`` to an alarm's device — the next
message is handled normally. One hostile message once stopped all MQTT intake; here it
cannot (DESIGN.md: the shell supervises itself).

Alarms and telemetry take separate paths: alarms (and heartbeats and status) go to the
pipeline's lane, telemetry to the sinks and the sensor rules, which shed under overload. They
never wait for each other (docs/architecture.md, "Alarms first").
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from alarms.actions import AckDevice
from alarms.core import AlarmCore
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    Reason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    decode,
    split_topic,
)
from gateway.effects import Effects
from gateway.errors import UnavailableError
from gateway.metrics import Metrics
from gateway.pipeline import Pipeline
from gateway.ports import Clock
from gateway.ratelimit import LogLimiter
from gateway.watch import DeviceWatch

_LOGGER = logging.getLogger(__name__)

# One log line per kind of fault per minute (with a count of what was suppressed): a device
# sending garbage ten times a second must not flood the log.
LOG_INTERVAL_S = 60.0


@dataclass(slots=True)
class DeviceSeen:
    """What the gateway last heard from a device (for the technician view)."""

    last_seen: float
    battery: float | None = None
    rssi: float | None = None
    firmware: str | None = None
    state: str | None = None
    counts: Counter[str] = field(default_factory=Counter)


class TelemetryIntake(Protocol):
    """Where valid telemetry goes (sinks and sensor rules): never blocks, may shed."""

    def __call__(self, message: TelemetryMessage, now: float) -> None:
        """Offer one sample."""


StatusListener = Callable[[StatusMessage], None]
# Outcome of an in-band message: None stored (or nothing to store), else why not.
InBandOutcome = str | None


class Ingest:
    """Typed device messages into the pipeline and the telemetry intake, one at a time."""

    def __init__(self, *, core: AlarmCore, pipeline: Pipeline, effects: Effects,
                 watch: DeviceWatch, metrics: Metrics, prefix: str, clock: Clock) -> None:
        self.core = core
        self.pipeline = pipeline
        self.effects = effects
        self.watch = watch
        self.metrics = metrics
        self.prefix = prefix
        self._clock = clock
        self.devices: dict[str, DeviceSeen] = {}
        self.status_listeners: list[StatusListener] = []
        # Set once the telemetry path is up (stage 2); until then samples are counted, shed.
        self.telemetry: TelemetryIntake | None = None
        # Internal messages (the health probe) by device id: handled, never stored.
        self.internal: dict[str, Callable[[DeviceMessage], None]] = {}
        self._ignored_topics: set[str] = {effects.centre_topic}
        self._log_limiter = LogLimiter(interval_s=LOG_INTERVAL_S)
        self._ingest_counters: dict[type, Any] = {}
        self.last_message_at: dict[str, float] = {}
        # Totals for /healthz (the metrics have them by reason and transport).
        self.rejected = 0
        self.faults = 0

    # -- MQTT ----------------------------------------------------------------------------

    async def mqtt(self, topic_name: str, payload: bytes) -> None:
        """One MQTT message from a device (either lane). Never raises."""
        try:
            message = self._decoded(topic_name, payload)
            if message is None:
                return
            now = self._clock()
            self.last_message_at["mqtt"] = now
            if isinstance(message, AlarmMessage):
                await self.take(message, now)
            elif self._admit(message, now, ack=True):
                # Telemetry, heartbeats and status need no await: no coroutine per message
                # for the bulk of what devices send.
                self._route(message, now)
        except Exception as exc:  # noqa: BLE001 - isolation: one message, not the intake
            self.fault("mqtt", exc, topic_name=topic_name, payload=payload)

    def _decoded(self, topic_name: str, payload: bytes) -> DeviceMessage | None:
        """The typed message, or None once a message that cannot be taken is answered."""
        if topic_name in self._ignored_topics:
            return None  # our own copy for the alarm centre: it matches the devices' +/alarm
        message = decode(topic_name, payload, self.prefix)
        if isinstance(message, Rejected):
            self.last_message_at["mqtt"] = self._clock()
            self.reject(message)
            if message.device_id and message.ref and topic_name.endswith("/alarm"):
                # An alarm we could read the ref of but not accept: say so, with the
                # reason, rather than leave the device resending into silence.
                self.effects.ack(AckDevice(message.device_id, message.ref, "rejected",
                                           f"{message.reason.value}: {message.detail}"[:200]))
            return None
        return message

    def fault(self, transport: str, exc: BaseException, *, topic_name: str | None = None,
              payload: bytes | None = None, message: DeviceMessage | None = None) -> None:
        """A handler failed on one message: log it (rate-limited), count it, answer it."""
        self.metrics.handler_errors.labels(transport).inc()
        self.faults += 1
        key = f"{transport}:{type(exc).__name__}"
        if self._log_limiter.allow(key):
            _LOGGER.error(
                "%s message %s not handled (the next one will be)%s",
                transport, topic_name or (message and f"{message.device_id}/{message.ref}"),
                self._log_limiter.suppressed_note(key), exc_info=exc,
                extra={"device_id": message.device_id if message is not None else None},
            )
        device_ref = None
        if isinstance(message, AlarmMessage):
            device_ref = (message.device_id, message.ref)
        elif topic_name is not None and topic_name.endswith("/alarm") and payload is not None:
            parsed = split_topic(topic_name, self.prefix)
            ref = _ref_of(payload)
            if parsed is not None and ref is not None:
                device_ref = (parsed[0], ref)
        if device_ref is not None:
            try:
                self.effects.ack(AckDevice(*device_ref, "rejected",
                                           f"internal error: {type(exc).__name__}"))
            except Exception:  # noqa: BLE001 - answering is best effort; never raise here
                _LOGGER.debug("could not answer %s after a fault", device_ref)

    # -- every transport -----------------------------------------------------------------

    async def take(self, message: DeviceMessage, now: float, *, ack: bool = True
                   ) -> asyncio.Future[None] | None:
        """A decoded device message: supervision, telemetry, or an alarm into the pipeline.

        Returns the alarm's commit (for in-band transports to await), else None.
        """
        if not self._admit(message, now, ack=ack):
            return None
        if isinstance(message, AlarmMessage):
            return await self.pipeline.alarm(message, now, ack=ack)
        self._route(message, now)
        return None

    def _admit(self, message: DeviceMessage, now: float, *, ack: bool) -> bool:
        """Count and supervise a message; False when it goes no further (an internal
        device's message, handled here, or an unknown device's, refused)."""
        internal = self.internal.get(message.device_id)
        if internal is not None:
            internal(message)
            return False
        self._count(message)
        if not self.core.directory.knows_device(message.device_id):
            self.reject(Rejected(Reason.UNKNOWN_DEVICE, "device is not provisioned",
                                 message.device_id, message.ref))
            if isinstance(message, AlarmMessage) and ack:
                # A refused alarm is answered, never ignored: the device (and the
                # technician looking at it) must learn that nobody will come.
                self.effects.ack(AckDevice(message.device_id, message.ref, "rejected",
                                           "unknown device"))
            return False
        self._saw(message, now)
        self.watch.seen(message.device_id, now)
        return True

    def _route(self, message: DeviceMessage, now: float) -> None:
        """An admitted message that is not an alarm: telemetry to its path."""
        if isinstance(message, TelemetryMessage):
            if self.telemetry is not None:
                self.telemetry(message, now)
            else:
                self.metrics.rejects.labels("telemetry_not_started").inc()

    async def store(self, message: DeviceMessage, transport: str) -> InBandOutcome:
        """Take one message from an in-band transport (SCAIP, serial) and wait until stored.

        Returns None when it is stored (or needed no storing), else the refusal reason:
        ``unknown_device`` (final) or ``unavailable`` (the journal failed: retry later).
        """
        self.last_message_at[transport] = self._clock()
        if not self.core.directory.knows_device(message.device_id):
            self.reject(Rejected(Reason.UNKNOWN_DEVICE, "device is not provisioned",
                                 message.device_id, message.ref))
            return "unknown_device"
        done = await self.take(message, self._clock(), ack=False)
        if done is None:
            return None
        try:
            await asyncio.shield(done)
        except UnavailableError:
            return "unavailable"
        return None

    def isolated(self, transport: str, handler: Callable[..., Awaitable[Any]],
                 refusal: Any) -> Callable[..., Awaitable[Any]]:
        """Wrap an in-band transport's handler: a fault answers ``refusal`` and is counted."""

        async def guarded(*args: Any) -> Any:
            try:
                return await handler(*args)
            except Exception as exc:  # noqa: BLE001 - isolation: one message, not the link
                self.fault(transport, exc)
                return refusal

        return guarded

    def reject(self, rejected: Rejected) -> None:
        """Count and (rate-limited) log a refused device message."""
        self.metrics.rejects.labels(rejected.reason.value).inc()
        self.rejected += 1
        if self._log_limiter.allow(rejected.reason.value):
            _LOGGER.warning(
                "rejected device message (%s) from %s: %s%s",
                rejected.reason.value,
                rejected.device_id or "?",
                rejected.detail,
                self._log_limiter.suppressed_note(rejected.reason.value),
                extra={"device_id": rejected.device_id},
            )

    def _count(self, message: DeviceMessage) -> None:
        kind = type(message)
        counter = self._ingest_counters.get(kind)
        if counter is None:
            label = kind.__name__.removesuffix("Message").lower()
            counter = self._ingest_counters[kind] = self.metrics.ingest.labels(label)
        counter.inc()

    def _saw(self, message: DeviceMessage, now: float) -> None:
        seen = self.devices.get(message.device_id)
        if seen is None:
            seen = self.devices[message.device_id] = DeviceSeen(now)
        seen.last_seen = now
        seen.counts[type(message).__name__] += 1
        if isinstance(message, HeartbeatMessage):
            seen.battery = message.battery if message.battery is not None else seen.battery
            seen.rssi = message.rssi if message.rssi is not None else seen.rssi
        elif isinstance(message, StatusMessage):
            seen.state = message.state
            seen.firmware = message.firmware or seen.firmware
            for listener in self.status_listeners:
                # A listener's bug (camera state, say) is that listener's fault, not the
                # intake's: isolated like a handler.
                try:
                    listener(message)
                except Exception as exc:  # noqa: BLE001 - isolation per listener
                    self.fault("status-listener", exc, message=message)
        elif isinstance(message, AlarmMessage) and message.battery is not None:
            seen.battery = message.battery


def _ref_of(payload: bytes) -> str | None:
    """The ``ref`` of a payload the codec could not take, if it can be read safely."""
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    ref = body.get("ref") if isinstance(body, dict) else None
    if isinstance(ref, str) and 0 < len(ref) <= 64 and ref.isprintable():
        return ref
    return None
