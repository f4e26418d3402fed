"""The firmware simulator against the real Mosquitto on 127.0.0.1:1883.

Each test gets its own topic prefix; a tiny in-test acker plays the gateway: it records
every device message and acks alarms (optionally ignoring the first sends, or refusing).
Timeouts are generous upper bounds for waits, never assertions about speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import TracebackType
from typing import Self

import aiomqtt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.contract import (
    AlarmMessage,
    HeartbeatMessage,
    Reason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    decode,
    encode_ack,
    encode_command,
    topic,
)
from firmware_sim import (
    ALL_FAULTS,
    MODELS,
    Backoff,
    DeviceKind,
    DeviceSpec,
    FaultKind,
    FaultPlan,
    Fleet,
    make_specs,
    malformed_payload,
    oversize_payload,
    percentile,
)
from firmware_sim.cli import main
from firmware_sim.device import SimDevice
from firmware_sim.models import Person, kind_of

pytestmark = pytest.mark.network

HOST, PORT = "127.0.0.1", 1883
FAST_RESEND = Backoff(0.05, 0.3)
FAST_RECONNECT = Backoff(0.05, 0.5)


@pytest.fixture
def prefix() -> str:
    return f"test/{uuid.uuid4().hex}/trygg/v1"


class Acker:
    """A stand-in gateway: records device messages, acks alarms per a policy."""

    def __init__(self, prefix: str, *, ignore_first: int = 0, status: str = "stored",
                 reason: str | None = None, ack_once: bool = False, delay: float = 0.0) -> None:
        self.prefix = prefix
        self.ignore_first = ignore_first
        self.status = status
        self.reason = reason
        self.ack_once = ack_once
        self.delay = delay
        self.messages: list[tuple[str, bytes]] = []
        self.sends: Counter[tuple[str, str]] = Counter()  # (device, ref) -> alarm sends seen
        self.acked: Counter[tuple[str, str]] = Counter()
        self.changed = asyncio.Condition()
        self._client: aiomqtt.Client | None = None
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        client = aiomqtt.Client(HOST, PORT, identifier=f"acker-{uuid.uuid4().hex[:12]}")
        self._client = await self._stack.enter_async_context(client)
        await client.subscribe(f"{self.prefix}/#", qos=1)
        tg = await self._stack.enter_async_context(asyncio.TaskGroup())
        task = tg.create_task(self._receive(client), name="acker receive")
        self._stack.callback(task.cancel)  # runs before the TaskGroup exits (LIFO)
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self._stack.aclose()

    async def _receive(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            leaf = message.topic.value.rsplit("/", 1)[-1]
            if leaf in ("ack", "cmd") or not isinstance(message.payload, bytes):
                continue
            self.messages.append((message.topic.value, message.payload))
            parsed = decode(message.topic.value, message.payload, self.prefix)
            if not isinstance(parsed, AlarmMessage):
                await self._notify()
                continue
            key = (parsed.device_id, parsed.ref)
            self.sends[key] += 1
            await self._notify()
            if self.sends[key] > self.ignore_first and not (self.ack_once and self.acked[key]):
                if self.delay:
                    await asyncio.sleep(self.delay)
                await client.publish(topic(self.prefix, parsed.device_id, "ack"),
                                     encode_ack(parsed.ref, self.status, self.reason), qos=1)
                # Python 3.11's wait_for (inside aiomqtt) can swallow a cancel; honour it.
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError
                self.acked[key] += 1
                await self._notify()

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def command(self, device_id: str, cmd: str, **args: str | int | float | bool) -> None:
        assert self._client is not None
        await self._client.publish(topic(self.prefix, device_id, "cmd"),
                                   encode_command(uuid.uuid4().hex[:16], cmd, **args), qos=1)

    def decoded(self) -> list[object]:
        return [decode(t, p, self.prefix) for t, p in self.messages]

    def count(self, predicate: Callable[[object], bool]) -> int:
        return sum(1 for m in self.decoded() if predicate(m))

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)


def heartbeats_of(acker: Acker, device_id: str) -> int:
    return acker.count(lambda m: isinstance(m, HeartbeatMessage) and m.device_id == device_id)


@contextlib.asynccontextmanager
async def fleet_of(prefix: str, specs: list[DeviceSpec], **kwargs: object) -> AsyncIterator[Fleet]:
    options: dict[str, object] = {"resend": FAST_RESEND, "reconnect": FAST_RECONNECT,
                                  "heartbeat_s": 30.0, "telemetry": False}
    options.update(kwargs)
    async with Fleet(specs, host=HOST, port=PORT, prefix=prefix, seed=1,
                     **options) as fleet:  # type: ignore[arg-type]
        yield fleet


# -- alarms and acks -------------------------------------------------------------------------


async def test_every_alarm_is_acked_eventually_through_resends(prefix: str) -> None:
    specs = make_specs(4, "alarms", seed=1, id_prefix="a")
    async with Acker(prefix, ignore_first=2) as acker, fleet_of(prefix, specs) as fleet:
        refs = {d: fleet.raise_alarm(d, "manual") for d in fleet.device_ids}
        assert await fleet.wait_all_acked(timeout=10)
        for device_id, ref in refs.items():
            result = fleet.alarm(device_id, ref)
            assert result.status == "stored"
            assert result.sends >= 3  # the acker ignored the first two
            assert acker.sends[device_id, ref] == result.sends
        stats = fleet.stats()
        assert stats.alarms_acked == 4
        assert stats.alarms_pending == 0
        assert stats.resends >= 8
        assert stats.latency_p50_s is not None
        assert stats.latency_p99_s is not None


async def test_resends_stop_after_ack(prefix: str) -> None:
    specs = make_specs(1, "alarms", id_prefix="r")
    async with Acker(prefix) as acker, fleet_of(prefix, specs) as fleet:
        ref = fleet.raise_alarm(specs[0].device_id, "fall")
        assert await fleet.wait_all_acked(timeout=5)
        await asyncio.sleep(FAST_RESEND.cap_s)  # a resend already in flight may still land
        sends = acker.sends[specs[0].device_id, ref]
        assert fleet.alarm(specs[0].device_id, ref).sends == sends
        await asyncio.sleep(4 * FAST_RESEND.cap_s)  # several resend periods
        assert acker.sends[specs[0].device_id, ref] == sends


async def test_rejected_ack_is_final(prefix: str) -> None:
    specs = make_specs(1, "alarms", id_prefix="x")
    device_id = specs[0].device_id
    async with (Acker(prefix, status="rejected", reason="unknown_device") as acker,
                fleet_of(prefix, specs) as fleet):
        ref = fleet.raise_alarm(device_id)
        assert await fleet.wait_all_acked(timeout=5)
        result = fleet.alarm(device_id, ref)
        assert (result.status, result.reason) == ("rejected", "unknown_device")
        await asyncio.sleep(FAST_RESEND.cap_s)  # a resend already in flight may still land
        sends = acker.sends[device_id, ref]
        assert result.sends == sends
        await asyncio.sleep(4 * FAST_RESEND.cap_s)
        assert acker.sends[device_id, ref] == sends
        stats = fleet.stats()
        assert (stats.alarms_refused, stats.alarms_acked) == (1, 0)
        assert stats.refusals == {"rejected": 1}


async def test_ack_queued_while_device_is_down_arrives_on_revive(prefix: str) -> None:
    specs = make_specs(1, "alarms", id_prefix="q")
    device_id = specs[0].device_id
    slow = Backoff(30.0, 30.0)  # no resend within the test: only the revive may resend
    async with (Acker(prefix, ack_once=True, delay=0.5) as acker,
                fleet_of(prefix, specs, resend=slow) as fleet):
        ref = fleet.raise_alarm(device_id)
        await acker.wait_for(lambda: acker.sends[device_id, ref] >= 1)
        fleet.kill(device_id)  # down before the (delayed) ack is published
        await acker.wait_for(lambda: acker.acked[device_id, ref] == 1)
        assert fleet.alarm(device_id, ref).status is None
        fleet.revive(device_id)
        assert await fleet.wait_all_acked(timeout=5)
        assert fleet.alarm(device_id, ref).status == "stored"
        assert acker.acked[device_id, ref] == 1  # the one ack, held by the broker


# -- commands --------------------------------------------------------------------------------


async def test_cmd_test_alarm_sends_a_test_alarm(prefix: str) -> None:
    specs = make_specs(1, "alarms", id_prefix="c")
    device_id = specs[0].device_id
    async with Acker(prefix) as acker, fleet_of(prefix, specs) as fleet:
        await acker.command(device_id, "test_alarm")

        def test_alarm_seen() -> bool:
            return acker.count(lambda m: isinstance(m, AlarmMessage) and m.type == "test") > 0

        await acker.wait_for(test_alarm_seen)
        assert await fleet.wait_all_acked(timeout=5)
        assert [(a.type, a.status) for a in fleet.alarms()] == [("test", "stored")]


async def test_camera_wake_standby_and_config(prefix: str) -> None:
    camera = DeviceSpec("cam-1", DeviceKind.NIGHT_CAMERA)
    async with Acker(prefix) as acker, fleet_of(prefix, [camera], heartbeat_s=60.0):

        def states() -> list[str]:
            return [m.state for m in acker.decoded() if isinstance(m, StatusMessage)]

        await acker.command("cam-1", "wake")
        await acker.wait_for(lambda: "awake" in states())
        await acker.command("cam-1", "standby")
        await acker.wait_for(lambda: states()[-1:] == ["standby"])
        assert heartbeats_of(acker, "cam-1") <= 1
        await acker.command("cam-1", "config", heartbeat_interval=0.05)
        await acker.wait_for(lambda: heartbeats_of(acker, "cam-1") >= 4)


# -- kill / revive ---------------------------------------------------------------------------


@pytest.mark.parametrize("per_connection", [1, 2])
async def test_killed_device_goes_silent_and_revived_resumes(prefix: str,
                                                             per_connection: int) -> None:
    specs = make_specs(2, "sensors", id_prefix="k")
    victim, other = specs[0].device_id, specs[1].device_id
    async with (Acker(prefix) as acker,
                fleet_of(prefix, specs, heartbeat_s=0.05,
                         devices_per_connection=per_connection) as fleet):
        await acker.wait_for(lambda: heartbeats_of(acker, victim) >= 2)
        fleet.kill(victim)
        assert not fleet.alive(victim)
        await asyncio.sleep(0.3)  # let anything already in flight land
        silent = heartbeats_of(acker, victim)
        others = heartbeats_of(acker, other)
        await acker.wait_for(lambda: heartbeats_of(acker, other) >= others + 5)
        assert heartbeats_of(acker, victim) == silent
        fleet.revive(victim)
        await acker.wait_for(lambda: heartbeats_of(acker, victim) >= silent + 2)


# -- contract conformance --------------------------------------------------------------------


def test_every_model_emits_payloads_the_contract_accepts() -> None:
    prefix = "trygg/v1"
    rng = random.Random(5)
    for kind in DeviceKind:
        device = SimDevice(DeviceSpec(f"dev-{kind.value}", kind, Person()), rng,
                           heartbeat_s=60.0, telemetry_s=30.0)
        device.skew_ms = -86_400_000  # a skewed clock still yields a valid ts
        wall = 1_700_000_000_000
        emitted: list[tuple[str, bytes]] = []
        for hour in range(24):
            device.flapping = hour % 2 == 0
            emitted.append(("heartbeat", device.heartbeat(wall)))
            emitted.append(("status", device.status(wall, "online")))
            if (t := device.telemetry(wall, float(hour))) is not None:
                emitted.append(("telemetry", t))
            if (b := device.battery_telemetry(wall)) is not None:
                emitted.append(("telemetry", b))
        for alarm_type in [*MODELS[kind].alarm_weights, "test"]:
            emitted.append(("alarm", device.new_alarm(str(alarm_type), 0.0, wall).payload))
        refs = set()
        for channel, payload in emitted:
            parsed = decode(topic(prefix, device.device_id, channel), payload, prefix)
            assert not isinstance(parsed, Rejected), (kind, channel, payload, parsed)
            refs.add(parsed.ref)
        assert len(refs) == len(emitted)  # refs are unique per device message
        has_telemetry = MODELS[kind].telemetry_s is not None
        assert has_telemetry == any(c == "telemetry" and b'"battery"' not in p
                                    for c, p in emitted)


async def test_live_fleet_messages_are_accepted_by_the_contract(prefix: str) -> None:
    specs = [DeviceSpec(f"m-{kind.value}", kind) for kind in DeviceKind]
    async with (Acker(prefix) as acker,
                fleet_of(prefix, specs, heartbeat_s=0.1, telemetry=True, telemetry_s=0.1) as fleet):
        for spec in specs:
            fleet.raise_alarm(spec.device_id, "manual")
        await acker.command("m-night_camera", "wake")
        assert await fleet.wait_all_acked(timeout=10)

        def covered() -> bool:
            seen = {(type(m), getattr(m, "device_id", None)) for m in acker.decoded()}
            return all((HeartbeatMessage, s.device_id) in seen
                       and (StatusMessage, s.device_id) in seen
                       and (s.model.telemetry_s is None
                            or (TelemetryMessage, s.device_id) in seen)
                       for s in specs)

        await acker.wait_for(covered)
        rejected = [m for m in acker.decoded() if isinstance(m, Rejected)]
        assert rejected == []


def test_malformed_variants_are_rejected_by_the_contract() -> None:
    prefix = "trygg/v1"
    for variant in range(12):
        channel, payload = malformed_payload(variant, "ref-1", 1_700_000_000_000)
        assert isinstance(decode(topic(prefix, "d1", channel), payload, prefix), Rejected)
    channel, payload = oversize_payload("ref-2", 1_700_000_000_000)
    parsed = decode(topic(prefix, "d1", channel), payload, prefix)
    assert isinstance(parsed, Rejected)
    assert parsed.reason is Reason.OVERSIZE


async def test_injected_malformed_payloads_reach_the_broker_and_are_rejected(prefix: str) -> None:
    specs = make_specs(1, "alarms", id_prefix="bad")
    device_id = specs[0].device_id
    async with Acker(prefix) as acker, fleet_of(prefix, specs) as fleet:
        for variant in range(12):
            fleet.send_malformed(device_id, variant)
        fleet.send_oversize(device_id)

        def all_seen() -> bool:
            return acker.count(lambda m: isinstance(m, Rejected)) == 13

        await acker.wait_for(all_seen)
        assert fleet.stats().malformed == 13


# -- faults ----------------------------------------------------------------------------------


def test_fault_plan_is_reproducible_from_its_seed() -> None:
    specs = make_specs(40, "mixed", seed=3)
    plan = FaultPlan.generate(7, specs, 120.0)
    assert plan == FaultPlan.generate(7, specs, 120.0)
    assert plan != FaultPlan.generate(8, specs, 120.0)
    assert plan.kinds() == set(ALL_FAULTS)
    # Enabling another kind leaves the others' schedule unchanged.
    only = FaultPlan.generate(7, specs, 120.0, [FaultKind.DUPLICATE])
    assert only.events == tuple(e for e in plan.events if e.kind is FaultKind.DUPLICATE)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32), n=st.integers(1, 30), duration=st.floats(1.0, 3600.0))
def test_fault_plans_stay_within_the_run_and_fleet(seed: int, n: int, duration: float) -> None:
    specs = make_specs(n, "mixed", seed=seed)
    ids = {s.device_id for s in specs}
    plan = FaultPlan.generate(seed, specs, duration)
    assert plan == FaultPlan.generate(seed, specs, duration)
    for event in plan.events:
        assert 0.0 <= event.at <= duration
        assert event.device_ids and set(event.device_ids) <= ids
        if event.kind is FaultKind.FLAPPING:
            flappy = {s.device_id for s in specs if s.kind in (
                DeviceKind.BED_SENSOR, DeviceKind.DOOR_SENSOR, DeviceKind.MOTION_SENSOR,
                DeviceKind.WATER_SENSOR)}
            assert set(event.device_ids) <= (flappy or ids)


async def test_fleet_under_faults_still_gets_every_alarm_acked(prefix: str) -> None:
    specs = make_specs(8, "mixed", seed=2, id_prefix="f")
    kinds = [k for k in ALL_FAULTS if k is not FaultKind.SILENT]
    plan = FaultPlan.generate(11, specs, 2.0, kinds, intensity=3.0)
    async with (Acker(prefix) as acker,
                fleet_of(prefix, specs, faults=plan, heartbeat_s=0.2, telemetry=True,
                         telemetry_s=0.2) as fleet):
        for round_ in range(4):
            for device_id in fleet.device_ids:
                fleet.raise_alarm(device_id, "manual")
            await asyncio.sleep(0.5)
            assert round_ < 4
        assert await fleet.wait_all_acked(timeout=20)
        stats = fleet.stats()
        assert stats.alarms_acked == 32
        for kind in kinds:
            assert stats.counters.get(f"fault_{kind.value}", 0) >= 1, kind
        # Duplicates reach the "gateway" as the same ref twice; the sim counts one alarm.
        assert max(acker.sends.values()) >= 2
        rejected = acker.count(lambda m: isinstance(m, Rejected))
        assert rejected == stats.malformed


# -- big fleets, CLI, helpers ----------------------------------------------------------------


async def test_multiplexed_fleet_acks_everything(prefix: str) -> None:
    specs = make_specs(60, "mixed", seed=4, id_prefix="mx")
    async with Acker(prefix) as acker, fleet_of(prefix, specs, devices_per_connection=25) as fleet:
        for device_id in fleet.device_ids:
            fleet.raise_alarm(device_id, "manual")
        assert await fleet.wait_all_acked(timeout=15)
        stats = fleet.stats()
        assert (stats.connections, stats.connected, stats.alarms_acked) == (3, 3, 60)
        assert len(acker.sends) == 60


def test_cli_runs_a_short_fleet_and_prints_a_json_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = tmp_path / "demo.json"
    devices.write_text(json.dumps({"devices": [
        {"id": "demo-au-1", "type": "alarm_unit"},
        {"id": "demo-cam-1", "type": "camera"},
        {"id": "demo-bed-1", "type": "bed"},
    ]}))
    prefix = f"test/{uuid.uuid4().hex}/trygg/v1"
    code = main(["--host", HOST, "--port", str(PORT), "--prefix", prefix, "--devices-file",
                 str(devices), "--duration", "1", "--rate", "0", "--seed", "3",
                 "--faults", "duplicate,clock_skew", "--no-progress"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["devices"] == 3
    assert summary["faults"] == ["clock_skew", "duplicate"]
    assert summary["stats"]["connected"] == 3


def test_cli_rejects_unknown_fault(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--faults", "gremlins", "--duration", "1"])
    assert "gremlins" in capsys.readouterr().err


def test_kind_aliases_and_percentiles() -> None:
    assert kind_of("Night camera") is DeviceKind.NIGHT_CAMERA
    assert kind_of("trygghetslarm") is DeviceKind.ALARM_UNIT
    assert kind_of("smoke_detector") is DeviceKind.SMOKE_DETECTOR
    assert percentile([], 50) is None
    assert percentile([3.0, 1.0, 2.0, 4.0], 50) == 2.0
    assert percentile([3.0, 1.0, 2.0, 4.0], 99) == 4.0
