"""The fleet runner: many simulated devices on real MQTT connections, with fault injection.

``Fleet`` is an async context manager. On entry it starts one runner task holding a single
``asyncio.TaskGroup``: the connections (each reconnecting by itself), one scheduler that
runs every device's heartbeat/telemetry/alarm schedule from a heap, the fault plan, and one
delivery task per pending alarm. On exit the runner is cancelled and awaited, which cancels
and awaits everything else; nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import heapq
import logging
import math
import random
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType
from typing import Any, Self

from devices.contract import DEFAULT_PREFIX, topic

from .connection import Backoff, Connection
from .device import (
    ACK_STORED,
    AckOutcome,
    AlarmRecord,
    AlarmResult,
    SimDevice,
    configured_heartbeat,
)
from .faults import FaultEvent, FaultKind, FaultPlan, malformed_payload, oversize_payload
from .models import DeviceKind, DeviceSpec

_LOGGER = logging.getLogger(__name__)

# A flapping contact reports on every bounce; this is how often it does so in the sim.
FLAP_INTERVAL_S = 0.5
# Battery devices report the battery as telemetry every this many heartbeats.
BATTERY_EVERY = 10
# Per-connection publisher workers (each awaits one PUBACK): a single device sends one
# message at a time like real firmware; a multiplexed connection needs a few in flight.
_WORKERS_SINGLE = 1
_WORKERS_MUX = 8


class _Job(Enum):
    HEARTBEAT = "heartbeat"
    TELEMETRY = "telemetry"
    ALARM = "alarm"
    STANDBY = "standby"


@dataclass(frozen=True, slots=True)
class FleetStats:
    """A snapshot of the fleet's counters and alarm latencies (seconds)."""

    devices: int
    alive: int
    connections: int
    connected: int
    alarms_raised: int
    alarms_acked: int
    alarms_refused: int
    alarms_pending: int
    alarm_sends: int
    resends: int
    duplicate_acks: int
    unmatched_acks: int
    heartbeats: int
    telemetry: int
    status: int
    commands: int
    malformed: int
    dropped: int
    reconnects: int
    latency_p50_s: float | None
    latency_p90_s: float | None
    latency_p99_s: float | None
    latency_max_s: float | None
    refusals: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, object]:
        """JSON-ready form (the CLI's summary)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile ``q`` (0-100) of ``values``; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


class Fleet:
    """Simulated devices speaking the MQTT device contract against a broker.

    Intervals default to each model's; tests pass short ``heartbeat_s``/``telemetry_s`` and
    a fast ``resend`` policy. ``alarm_rate_per_hour`` is per device (0: alarms only when
    raised through ``raise_alarm`` or a ``test_alarm`` command).
    """

    def __init__(
        self,
        specs: Sequence[DeviceSpec],
        *,
        host: str = "127.0.0.1",
        port: int = 1883,
        prefix: str = DEFAULT_PREFIX,
        seed: int = 0,
        devices_per_connection: int = 1,
        heartbeat_s: float | None = None,
        telemetry_s: float | None = None,
        telemetry: bool = True,
        alarm_rate_per_hour: float = 0.0,
        resend: Backoff = Backoff(0.5, 5.0),  # noqa: B008 - frozen dataclass, safe default
        reconnect: Backoff = Backoff(0.5, 10.0),  # noqa: B008
        faults: FaultPlan | None = None,
        client_id_prefix: str = "trygg-sim",
        day_length_s: float | None = None,
        connect_timeout: float = 10.0,
    ) -> None:
        if not specs:
            msg = "a fleet needs at least one device"
            raise ValueError(msg)
        ids = [s.device_id for s in specs]
        if len(set(ids)) != len(ids):
            msg = "device ids must be unique"
            raise ValueError(msg)
        if devices_per_connection < 1:
            msg = "devices_per_connection must be at least 1"
            raise ValueError(msg)
        self.specs = tuple(specs)
        self.prefix = prefix
        self.seed = seed
        self._host = host
        self._port = port
        self._per_conn = devices_per_connection
        self._telemetry = telemetry
        self._alarm_rate = alarm_rate_per_hour
        self._resend = resend
        self._reconnect = reconnect
        self._plan = faults or FaultPlan.none()
        self._client_id_prefix = client_id_prefix
        self._day_length_s = day_length_s
        self._connect_timeout = connect_timeout
        self._rng = random.Random(f"trygg-fleet:{seed}")
        self.counters: Counter[str] = Counter()
        self._devices: dict[str, SimDevice] = {}
        for spec in self.specs:
            model = spec.model
            self._devices[spec.device_id] = SimDevice(
                spec,
                random.Random(f"trygg-device:{seed}:{spec.device_id}"),
                heartbeat_s=heartbeat_s or model.heartbeat_s,
                telemetry_s=(telemetry_s or model.telemetry_s) if model.telemetry_s else None,
            )
        self._connections: list[Connection] = []
        self._conn_of: dict[str, Connection] = {}
        self._conn_devices: dict[str, list[SimDevice]] = {}
        self._heap: list[tuple[float, int, str, _Job, int]] = []
        self._heap_seq = 0
        self._generation: Counter[tuple[str, _Job]] = Counter()
        self._heap_changed = asyncio.Event()
        self._active: Counter[tuple[FaultKind, str]] = Counter()
        self._held: dict[str, tuple[str, bytes]] = {}
        self._inboxes: dict[str, asyncio.Queue[tuple[str, bytes] | None]] = {}
        self._pending = 0
        self._settled = asyncio.Event()
        self._settled.set()
        self._latencies: list[float] = []
        self._refusals: Counter[str] = Counter()
        self._tg: asyncio.TaskGroup | None = None
        self._runner: asyncio.Task[None] | None = None
        self._started = asyncio.Event()
        self._t0 = 0.0

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start every device; wait (up to ``connect_timeout``) until all are connected."""
        if self._runner is not None:
            msg = "a Fleet can be entered only once"
            raise RuntimeError(msg)
        self._build_connections()
        self._runner = asyncio.create_task(self._run(), name="firmware-sim fleet")
        await self._until(self._started.wait(), None)
        if not await self._until(self._all_connected(), self._connect_timeout):
            _LOGGER.warning("not all simulated devices connected within %.1f s; they keep "
                            "retrying", self._connect_timeout)
        # Schedules start once connected, so the first reports are not dropped as offline.
        self._t0 = asyncio.get_running_loop().time()
        self._start_schedules()
        self._spawn(self._run_faults(), "firmware-sim faults")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop every device and connection, and wait until they are stopped."""
        runner = self._runner
        if runner is None:
            return
        runner.cancel()
        try:
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        finally:
            for conn in self._connections:
                conn.close()
            self._tg = None

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            for conn in self._connections:
                tg.create_task(conn.run(), name=f"{conn.name} loop")
            tg.create_task(self._scheduler(), name="firmware-sim schedule")
            self._started.set()

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        if self._tg is None:
            coro.close()
            msg = "the fleet is not running (use it as 'async with Fleet(...)')"
            raise RuntimeError(msg)
        self._tg.create_task(coro, name=name)

    async def _until(self, coro: Coroutine[Any, Any, Any], limit: float | None) -> bool:
        """Await ``coro`` unless the runner dies first (re-raising its error) or time runs out."""
        assert self._runner is not None
        waiter = asyncio.ensure_future(coro)
        try:
            done, _ = await asyncio.wait({waiter, self._runner}, timeout=limit,
                                         return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        if waiter in done:
            return True
        if self._runner in done:
            self._runner.result()  # raises the runner's error
            msg = "the fleet stopped"
            raise RuntimeError(msg)
        return False

    async def _all_connected(self) -> None:
        for conn in self._connections:
            await conn.connected.wait()

    def _build_connections(self) -> None:
        tag = hashlib.sha256(self.prefix.encode()).hexdigest()[:8]
        devices = list(self._devices.values())
        per = self._per_conn
        groups = [devices[i : i + per] for i in range(0, len(devices), per)]
        for n, group in enumerate(groups):
            if per == 1:
                name = f"sim {group[0].device_id}"
                client_id = f"{self._client_id_prefix}-{tag}-{group[0].device_id}"
            else:
                name = f"sim mux {n}/{len(groups)}"
                client_id = f"{self._client_id_prefix}-{tag}-mux{n}of{len(groups)}"
            subs = [topic(self.prefix, d.device_id, leaf) for d in group for leaf in ("ack", "cmd")]
            conn = Connection(
                name,
                host=self._host,
                port=self._port,
                client_id=client_id,
                subscriptions=subs,
                on_message=self._on_message,
                on_connected=functools.partial(self._on_connected, tuple(group)),
                backoff=self._reconnect,
                rng=random.Random(f"trygg-conn:{self.seed}:{n}"),
                counters=self.counters,
                outbox_size=min(10_000, 100 * len(group)),
                workers=_WORKERS_SINGLE if per == 1 else _WORKERS_MUX,
            )
            self._connections.append(conn)
            self._conn_devices[conn.name] = group
            for device in group:
                self._conn_of[device.device_id] = conn

    # -- public API ------------------------------------------------------------------------------

    @property
    def device_ids(self) -> list[str]:
        """All device ids, in spec order."""
        return [s.device_id for s in self.specs]

    def raise_alarm(self, device_id: str, alarm_type: str = "manual") -> str:
        """Raise an alarm on ``device_id``; it is resent until acked. Returns its ref."""
        device = self._device(device_id)
        now = time.monotonic()
        record = device.new_alarm(alarm_type, now, _wall_ms())
        self.counters["alarms_raised"] += 1
        self._pending += 1
        self._settled.clear()
        self._spawn(self._deliver(device, record), f"alarm {device_id} {record.ref}")
        return record.ref

    # The timeout parameter is the agreed test API; internally it is asyncio.wait's timeout.
    async def wait_all_acked(self, timeout: float) -> bool:  # noqa: ASYNC109
        """Wait until no alarm is pending (each acked or finally refused); False on timeout."""
        return await self._until(self._settled.wait(), timeout)

    def kill(self, device_id: str) -> None:
        """The device goes silent: no heartbeats, telemetry, alarm sends; ignores acks/cmds.

        With one connection per device it also disconnects, so the broker queues its acks
        and commands in the persistent session until ``revive``.
        """
        device = self._device(device_id)
        if not device.alive:
            return
        device.alive = False
        device.booted = False
        self.counters["kills"] += 1
        if self._per_conn == 1:
            self._conn_of[device_id].hold()

    def revive(self, device_id: str) -> None:
        """Bring a killed device back: it reboots (status "online") and resends pending alarms."""
        device = self._device(device_id)
        if device.alive:
            return
        device.alive = True
        self.counters["revives"] += 1
        conn = self._conn_of[device_id]
        if self._per_conn == 1:
            conn.release()
        elif conn.connected.is_set():
            self._on_connected((device,))

    def alive(self, device_id: str) -> bool:
        """Whether the device is alive (not killed)."""
        return self._device(device_id).alive

    def alarm(self, device_id: str, ref: str) -> AlarmResult:
        """What happened to one alarm."""
        return self._device(device_id).alarms[ref].snapshot()

    def alarms(self) -> list[AlarmResult]:
        """Every alarm raised so far, per device in raise order."""
        return [r.snapshot() for d in self._devices.values() for r in d.alarms.values()]

    def send_malformed(self, device_id: str, variant: int) -> tuple[str, bytes]:
        """Publish malformed payload ``variant`` as ``device_id``; returns (topic, payload)."""
        device = self._device(device_id)
        channel, payload = malformed_payload(variant, device.next_ref("x"),
                                             device.device_ts(_wall_ms()))
        return self._send_raw(device, channel, payload)

    def send_oversize(self, device_id: str) -> tuple[str, bytes]:
        """Publish an oversize alarm payload as ``device_id``; returns (topic, payload)."""
        device = self._device(device_id)
        channel, payload = oversize_payload(device.next_ref("x"), device.device_ts(_wall_ms()))
        return self._send_raw(device, channel, payload)

    def stats(self) -> FleetStats:
        """A snapshot of counters and latency percentiles."""
        c = self.counters
        lat = self._latencies
        return FleetStats(
            devices=len(self._devices),
            alive=sum(d.alive for d in self._devices.values()),
            connections=len(self._connections),
            connected=sum(conn.connected.is_set() for conn in self._connections),
            alarms_raised=c["alarms_raised"],
            alarms_acked=c["alarms_acked"],
            alarms_refused=c["alarms_refused"],
            alarms_pending=self._pending,
            alarm_sends=c["alarm_sends"],
            resends=c["resends"],
            duplicate_acks=c["duplicate_acks"],
            unmatched_acks=c["unmatched_acks"],
            heartbeats=c["heartbeat"],
            telemetry=c["telemetry"],
            status=c["status"],
            commands=c["commands"],
            malformed=c["malformed"],
            dropped=c["dropped_offline"] + c["dropped_full"] + c["dropped_dead"],
            reconnects=max(0, c["connects"] - len(self._connections)),
            latency_p50_s=percentile(lat, 50),
            latency_p90_s=percentile(lat, 90),
            latency_p99_s=percentile(lat, 99),
            latency_max_s=max(lat) if lat else None,
            refusals=dict(self._refusals),
            counters=dict(c),
        )

    def _device(self, device_id: str) -> SimDevice:
        try:
            return self._devices[device_id]
        except KeyError:
            msg = f"no simulated device {device_id!r}"
            raise KeyError(msg) from None

    # -- alarms ----------------------------------------------------------------------------------

    async def _deliver(self, device: SimDevice, record: AlarmRecord) -> None:
        """Send, then resend with capped jittered back-off, until a final ack arrives."""
        attempt = 0
        while record.pending:
            record.wake.clear()
            if device.alive:
                await self._send_alarm(device, record)
            try:
                async with asyncio.timeout(self._resend.delay(attempt, self._rng)):
                    # Woken early by the ack (done) or by a reconnect/revive (send now).
                    await record.wake.wait()
            except TimeoutError:
                attempt += 1

    async def _send_alarm(self, device: SimDevice, record: AlarmRecord) -> None:
        conn = self._conn_of[device.device_id]
        sent = False
        for t, payload in self._shape(device, topic(self.prefix, device.device_id, "alarm"),
                                      record.payload):
            sent = await conn.publish(t, payload) or sent
        if sent and record.pending:
            record.sends += 1
            self.counters["alarm_sends"] += 1
            if record.sent_at is None:
                record.sent_at = time.monotonic()
            else:
                self.counters["resends"] += 1

    def _settle(self, record: AlarmRecord) -> None:
        self._pending -= 1
        if record.status == ACK_STORED:
            self.counters["alarms_acked"] += 1
            if record.latency_s is not None:
                self._latencies.append(record.latency_s)
        else:
            self.counters["alarms_refused"] += 1
            self._refusals[record.status or "?"] += 1
        if self._pending == 0:
            self._settled.set()

    # -- incoming --------------------------------------------------------------------------------

    def _on_message(self, topic_name: str, payload: bytes) -> None:
        head = self.prefix + "/"
        if not topic_name.startswith(head):
            return
        device_id, _, leaf = topic_name[len(head) :].partition("/")
        device = self._devices.get(device_id)
        if device is None:
            return
        if not device.alive:
            self.counters["dropped_dead"] += 1
            return
        inbox = self._inboxes.get(device_id)
        if inbox is not None:
            inbox.put_nowait((leaf, payload))
            return
        self._handle(device, leaf, payload)

    def _handle(self, device: SimDevice, leaf: str, payload: bytes) -> None:
        if leaf == "ack":
            outcome, record = device.on_ack(payload, time.monotonic())
            self.counters[f"{outcome.value}_acks"] += 1
            if outcome is AckOutcome.SETTLED and record is not None:
                self._settle(record)
        elif leaf == "cmd":
            self._command(device, payload)

    def _command(self, device: SimDevice, payload: bytes) -> None:
        command = SimDevice.parse_command(payload)
        if command is None:
            self.counters["invalid_commands"] += 1
            return
        self.counters["commands"] += 1
        is_camera = device.kind is DeviceKind.NIGHT_CAMERA
        if command.cmd == "test_alarm":
            self.raise_alarm(device.device_id, "test")
        elif command.cmd in ("wake", "standby") and is_camera:
            device.camera_state = "awake" if command.cmd == "wake" else "standby"
            self._send(device, "status", device.status(_wall_ms(), device.camera_state))
            duration = command.args.get("duration_s", command.args.get("duration"))
            if command.cmd == "wake" and isinstance(duration, int | float) and duration > 0:
                self._schedule(device, _Job.STANDBY, float(duration), bump=True)
        elif command.cmd == "config":
            interval = configured_heartbeat(command.args)
            if interval is not None:
                device.heartbeat_s = interval
                self._schedule(device, _Job.HEARTBEAT, self._jitter(interval), bump=True)
        else:
            self.counters["unsupported_commands"] += 1

    async def _slow_reader(self, device: SimDevice, inbox: asyncio.Queue[tuple[str, bytes] | None],
                           delay: float) -> None:
        """A device that reads acks and commands slowly: each takes ``delay`` to process."""
        while (item := await inbox.get()) is not None:
            await asyncio.sleep(delay)
            if device.alive:
                self._handle(device, *item)

    def _on_connected(self, devices: Sequence[SimDevice]) -> None:
        for device in devices:
            if not device.alive:
                continue
            if not device.booted:
                device.booted = True
                state = device.camera_state if device.kind is DeviceKind.NIGHT_CAMERA else "online"
                self._send(device, "status", device.status(_wall_ms(), state))
            for record in device.pending.values():
                record.wake.set()

    # -- outgoing --------------------------------------------------------------------------------

    def _send(self, device: SimDevice, channel: str, payload: bytes) -> None:
        if not device.alive:
            return
        conn = self._conn_of[device.device_id]
        for t, p in self._shape(device, topic(self.prefix, device.device_id, channel), payload):
            if conn.publish_nowait(t, p):
                self.counters[channel] += 1

    def _send_raw(self, device: SimDevice, channel: str, payload: bytes) -> tuple[str, bytes]:
        t = topic(self.prefix, device.device_id, channel)
        if device.alive and self._conn_of[device.device_id].publish_nowait(t, payload):
            self.counters["malformed"] += 1
        return t, payload

    def _shape(self, device: SimDevice, t: str, payload: bytes) -> list[tuple[str, bytes]]:
        """Apply the duplicate and out-of-order faults to one outgoing message."""
        out = [(t, payload)]
        if self._active[FaultKind.DUPLICATE, device.device_id]:
            out.append((t, payload))
            self.counters["duplicates_sent"] += 1
        if self._active[FaultKind.OUT_OF_ORDER, device.device_id]:
            held = self._held.pop(device.device_id, None)
            if held is None:
                self._held[device.device_id] = out.pop(0)  # goes out after the next one
            else:
                out.append(held)
                self.counters["reordered"] += 1
        return out

    # -- schedules -------------------------------------------------------------------------------

    def _jitter(self, interval: float) -> float:
        # ±10 %: devices powered on together drift apart instead of beating in lockstep.
        return interval * self._rng.uniform(0.9, 1.1)

    def _start_schedules(self) -> None:
        for device in self._devices.values():
            # The first report lands anywhere within one interval, so a fleet started at once
            # does not send all its heartbeats in the same instant.
            self._schedule(device, _Job.HEARTBEAT, self._rng.uniform(0.0, device.heartbeat_s))
            if self._telemetry and device.telemetry_s:
                self._schedule(device, _Job.TELEMETRY, self._rng.uniform(0.0, device.telemetry_s))
            if self._alarm_rate > 0 and device.spec.model.alarm_weights:
                self._schedule(device, _Job.ALARM, self._next_alarm_in())

    def _next_alarm_in(self) -> float:
        return self._rng.expovariate(self._alarm_rate / 3600.0)

    def _schedule(self, device: SimDevice, job: _Job, delay: float, *, bump: bool = False) -> None:
        key = (device.device_id, job)
        if bump:
            self._generation[key] += 1  # earlier entries of this job become stale
        due = asyncio.get_running_loop().time() + delay
        self._heap_seq += 1
        heapq.heappush(self._heap, (due, self._heap_seq, device.device_id, job,
                                    self._generation[key]))
        self._heap_changed.set()

    async def _scheduler(self) -> None:
        """Run every device's schedule: sleep until the earliest due job, or a new job."""
        loop = asyncio.get_running_loop()
        while True:
            self._heap_changed.clear()
            if not self._heap:
                await self._heap_changed.wait()
                continue
            delay = self._heap[0][0] - loop.time()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(delay):
                        await self._heap_changed.wait()
                continue
            _, _, device_id, job, generation = heapq.heappop(self._heap)
            device = self._devices[device_id]
            if generation != self._generation[device_id, job]:
                continue
            try:
                self._run_job(device, job)
            except Exception:
                _LOGGER.exception("schedule job %s of %s failed", job.value, device_id)

    def _run_job(self, device: SimDevice, job: _Job) -> None:
        wall = _wall_ms()
        if job is _Job.HEARTBEAT:
            self._schedule(device, job, self._jitter(device.heartbeat_s))
            if device.alive:
                self._send(device, "heartbeat", device.heartbeat(wall))
                self.counters["heartbeats_total"] += 1
                if self.counters["heartbeats_total"] % BATTERY_EVERY == 0:
                    battery = device.battery_telemetry(wall)
                    if battery is not None and self._telemetry:
                        self._send(device, "telemetry", battery)
        elif job is _Job.TELEMETRY:
            interval = device.telemetry_s or 60.0
            if device.flapping:
                interval = min(interval, FLAP_INTERVAL_S)
            self._schedule(device, job, self._jitter(interval))
            payload = device.telemetry(wall, self._hour()) if device.alive else None
            if payload is not None:
                self._send(device, "telemetry", payload)
        elif job is _Job.ALARM:
            self._schedule(device, job, self._next_alarm_in())
            weights = device.spec.model.alarm_weights
            alarm_type = device.rng.choices(list(weights), list(weights.values()))[0]
            night_only = alarm_type in device.spec.model.night_alarms
            if device.alive and (not night_only or device.spec.person.asleep(self._hour())):
                self.raise_alarm(device.device_id, alarm_type.value)
        elif job is _Job.STANDBY and device.camera_state == "awake":
            device.camera_state = "standby"
            self._send(device, "status", device.status(wall, "standby"))

    def _hour(self) -> float:
        """Local hour of day for activity patterns; a compressed day if ``day_length_s``."""
        if self._day_length_s:
            elapsed = asyncio.get_running_loop().time() - self._t0
            return (8.0 + elapsed / self._day_length_s * 24.0) % 24.0
        now = time.localtime()
        return now.tm_hour + now.tm_min / 60.0

    # -- faults ----------------------------------------------------------------------------------

    async def _run_faults(self) -> None:
        """Execute the fault plan: starts and ends in time order, relative to fleet start."""
        loop = asyncio.get_running_loop()
        timeline: list[tuple[float, int, int, bool]] = []
        for n, event in enumerate(self._plan.events):
            timeline.append((event.at, 1, n, True))
            if event.duration > 0 and math.isfinite(event.duration):
                timeline.append((event.ends, 0, n, False))
        timeline.sort()
        for at, _, n, starting in timeline:
            delay = self._t0 + at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            event = self._plan.events[n]
            try:
                self._apply(event, starting=starting)
            except Exception:
                _LOGGER.exception("fault %s failed", event)

    def _apply(self, event: FaultEvent, *, starting: bool) -> None:
        kind = event.kind
        self.counters[f"fault_{kind.value}" if starting else f"fault_{kind.value}_end"] += 1
        if kind is FaultKind.DISCONNECT_STORM:
            for conn in {self._conn_of[d].name: self._conn_of[d] for d in event.device_ids
                         if d in self._conn_of}.values():
                conn.drop(event.duration)
            return
        for device_id in event.device_ids:
            device = self._devices.get(device_id)
            if device is None:
                continue
            self._apply_one(event, device, starting=starting)

    def _apply_one(self, event: FaultEvent, device: SimDevice, *, starting: bool) -> None:
        kind, key = event.kind, (event.kind, device.device_id)
        if kind in (FaultKind.DUPLICATE, FaultKind.OUT_OF_ORDER):
            self._active[key] += 1 if starting else -1
            if not self._active[key] and kind is FaultKind.OUT_OF_ORDER:
                held = self._held.pop(device.device_id, None)
                if held is not None and device.alive:
                    self._conn_of[device.device_id].publish_nowait(*held)
        elif kind is FaultKind.CLOCK_SKEW:
            device.skew_ms = round(event.param * 1000) if starting else 0
        elif kind is FaultKind.MALFORMED:
            self.send_malformed(device.device_id, int(event.param))
        elif kind is FaultKind.OVERSIZE:
            self.send_oversize(device.device_id)
        elif kind is FaultKind.FLAPPING:
            device.flapping = starting
            if starting and self._telemetry and device.telemetry_s:
                self._schedule(device, _Job.TELEMETRY, 0.0, bump=True)
        elif kind is FaultKind.SILENT:
            if starting:
                self.kill(device.device_id)
            else:
                self.revive(device.device_id)
        elif kind is FaultKind.SLOW_CONSUMER:
            if starting and device.device_id not in self._inboxes:
                inbox: asyncio.Queue[tuple[str, bytes] | None] = asyncio.Queue()
                self._inboxes[device.device_id] = inbox
                self._spawn(self._slow_reader(device, inbox, event.param),
                            f"slow reader {device.device_id}")
            elif not starting and (inbox_ := self._inboxes.pop(device.device_id, None)):
                inbox_.put_nowait(None)


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000
