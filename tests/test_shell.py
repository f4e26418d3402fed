"""The self-supervising shell: isolation per message, supervised tasks, the probe, lanes.

Every test runs a real gateway on a real broker (Mosquitto, and the embedded one where the
behaviour could differ) and injects the fault the way it happens in the field: a hostile
message, a handler bug, a service whose loop dies, a commit follower that fails, an intake
that silently stops, a telemetry backlog in front of an alarm.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import pytest

from alarms.events import AcceptRequested
from alarms.model import AlarmType, EscalationKind
from devices.contract import TelemetryMessage
from gateway.health import Watchdog
from gateway.runtime import Gateway
from gateway.supervisor import FatalError, Policy, Supervisor
from tests.conftest import GatewayFactory
from tests.helpers import device

pytestmark = pytest.mark.network


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


async def healthz(gw: Gateway) -> httpx.Response:
    async with httpx.AsyncClient() as client:
        return await client.get(f"http://127.0.0.1:{gw.http_port}/healthz")


async def metric(gw: Gateway, name: str) -> float:
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{gw.http_port}/metrics")).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and not line.startswith("#"))


def forget_logged_errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Take the errors a test provoked on purpose out of the log (the suite fails on them)."""
    records = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    caplog.clear()
    return [r.getMessage() for r in records]


# -- isolation per message -----------------------------------------------------------------


async def test_a_huge_integer_stops_nothing(
    broker: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    """The 400-digit ``ts`` that once stopped all MQTT intake is refused; others go on."""
    async with make_gateway(broker) as gw, device(broker, prefix, "dev-a") as a, \
            device(broker, prefix, "dev-b") as b:
        huge = "1" + "0" * 400
        await a.publish("alarm", f'{{"ref":"huge","ts":{huge},"type":"manual"}}'.encode())
        refused = await a.wait_ack("huge")
        assert refused["status"] == "rejected" and "ts" in refused["reason"]
        await b.alarm("next")
        async with asyncio.timeout(1.0):
            assert (await b.wait_ack("next"))["status"] == "stored"
        health = (await healthz(gw)).json()
        assert health["status"] == "ok"
        assert health["intake"]["rejected"] >= 1
        assert await metric(gw, "trygg_rejected_messages_total") >= 1


async def test_a_handler_bug_is_isolated_counted_and_answered(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as a, \
            device(mosquitto, prefix, "dev-b") as b:
        take = gw.ingest.take

        async def buggy(message: Any, now: float, **kwargs: Any) -> Any:
            if message.device_id == "dev-a":
                raise RuntimeError("a bug in a handler")
            return await take(message, now, **kwargs)

        monkeypatch.setattr(gw.ingest, "take", buggy)
        await a.alarm("bug")
        answer = await a.wait_ack("bug")
        assert answer["status"] == "rejected" and "RuntimeError" in answer["reason"]
        await b.alarm("fine")
        assert (await b.wait_ack("fine"))["status"] == "stored"
        assert gw.ingest.faults == 1
        assert await metric(gw, 'trygg_handler_errors_total{transport="mqtt"}') == 1
        assert (await healthz(gw)).json()["intake"]["handler_errors"] == 1
    assert any("not handled" in m for m in forget_logged_errors(caplog))


async def test_a_status_listener_bug_stops_no_alarm(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Camera status listeners run inside the intake: a bug there is theirs alone."""
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as a:
        def broken(message: Any) -> None:
            raise ValueError("camera code bug")

        gw.ingest.status_listeners.insert(0, broken)
        await a.publish("status", {"ref": "s1", "ts": 1_700_000_000_000, "state": "online"})
        await a.alarm("after-status")
        assert (await a.wait_ack("after-status"))["status"] == "stored"
        await until(lambda: gw.ingest.faults == 1)
    forget_logged_errors(caplog)


async def test_an_in_band_handler_bug_answers_the_refusal(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """SCAIP, serial and DC-09 handlers are wrapped the same way: a fault is a refusal."""
    async with make_gateway(mosquitto) as gw:
        async def handler(*args: Any) -> int:
            raise KeyError("bug")

        guarded = gw.ingest.isolated("scaip", handler, 6)
        assert await guarded("request", "sip") == 6
        assert gw.ingest.faults == 1
    forget_logged_errors(caplog)


# -- supervised tasks ------------------------------------------------------------------------


async def test_a_failing_service_is_restarted_and_shown(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with make_gateway(mosquitto) as gw:
        watch = gw.staff_watch
        check = watch._check_deliveries
        failures = iter([True])

        async def buggy(now: float) -> None:
            if next(failures, False):
                raise RuntimeError("staff watch bug")
            await check(now)

        monkeypatch.setattr(watch, "_check_deliveries", buggy)
        watch.on_presence()  # wakes the watch's loop, which now fails once
        state = gw.supervisor.states()["staff watch"]
        await until(lambda: state.restarts == 1 and state.state == "running")
        health = (await healthz(gw)).json()
        assert health["tasks"]["staff watch"]["restarts"] == 1
        assert "staff watch bug" in health["tasks"]["staff watch"]["last_error"]
        assert health["status"] == "ok"  # running again
        assert await metric(gw, 'trygg_task_restarts_total{task="staff watch"}') == 1
    assert any("restarting" in m for m in forget_logged_errors(caplog))


async def test_a_failing_commit_follower_stops_the_gateway_loudly(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as a:
        def broken(records: Any) -> None:
            raise RuntimeError("core state cannot be trusted")

        monkeypatch.setattr(gw.pipeline, "apply", broken)
        await a.alarm("fatal")
        with pytest.raises(FatalError) as stopped:
            async with asyncio.timeout(10):
                await gw.wait()
        assert stopped.value.task == "commit follower"
        assert "fatal" not in a.acks  # never acked: it was not applied
    assert any("the gateway stops" in m for m in forget_logged_errors(caplog))


async def test_the_supervisor_backs_off_and_counts(caplog: pytest.LogCaptureFixture) -> None:
    restarts: list[str] = []
    runs = 0

    async def flaky() -> None:
        nonlocal runs
        runs += 1
        if runs < 4:
            raise OSError("transient")

    async with Supervisor(on_restart=restarts.append, backoff_base_s=0.001,
                          backoff_cap_s=0.01) as sup:
        state = sup.start("flaky", flaky, Policy.RESTART)
        await until(lambda: state.state == "done")
    assert runs == 4 and restarts == ["flaky"] * 3 and state.restarts == 3
    # Logged once with its traceback; the repeats within a minute are counted, not logged.
    assert forget_logged_errors(caplog) == ["flaky failed; restarting it in 0.0 s (restart 1)"]


# -- liveness ----------------------------------------------------------------------------------


async def test_a_stalled_intake_raises_a_technical_alarm_and_degrades_health(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with make_gateway(mosquitto) as gw, aiomqtt.Client(*mosquitto) as watcher:
        await watcher.subscribe(f"{prefix}/gateway/+/status", qos=1)
        probe = gw.probe
        await until(lambda: probe.last_ok is not None)
        assert (await healthz(gw)).status_code == 200
        probe.interval_s, probe.stall_s = 0.1, 1.0
        arrived = gw.ingest.internal[probe.device_id]
        gw.ingest.internal[probe.device_id] = lambda message: None  # the intake "hangs"
        await until(lambda: bool(gw.open_technical("ingest.")))
        answer = await healthz(gw)
        assert answer.status_code == 503 and answer.json()["probe"]["ok"] is False
        async with asyncio.timeout(10):
            async for message in watcher.messages:
                assert isinstance(message.payload, bytes)
                if json.loads(message.payload)["state"] == "degraded":
                    break
        assert not probe.passing()
        gw.ingest.internal[probe.device_id] = arrived
        await until(lambda: not gw.open_technical("ingest."))
        assert (await healthz(gw)).status_code == 200
    forget_logged_errors(caplog)


async def test_health_lists_tasks_links_and_the_probe(
    broker: tuple[str, int], make_gateway: GatewayFactory
) -> None:
    async with make_gateway(broker) as gw:
        await until(lambda: gw.probe.last_ok is not None)
        health = (await healthz(gw)).json()
    assert health["status"] == "ok"
    assert health["links"]["mqtt"]["up"] and health["links"]["mqtt"]["telemetry_up"]
    assert health["links"]["mqtt"]["last_message_age_s"] < 10
    assert health["probe"]["ok"] and health["probe"]["round_trip_ms"] is not None
    for name in ("journal", "commit follower", "mqtt alarm lane", "mqtt telemetry lane",
                 "escalation timer", "http server", "probe", "web push"):
        assert health["tasks"][name]["state"] == "running", name


async def test_the_watchdog_is_fed_only_while_the_probe_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
        systemd.bind(str(path))
        systemd.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "100000")  # fed every 50 ms
        passing = True
        watchdog = Watchdog(lambda: passing)
        watchdog.notify("READY=1")
        task = asyncio.create_task(watchdog.run())
        try:
            await asyncio.sleep(0.2)
            sent = _drain(systemd)
            assert sent[0] == "READY=1" and sent.count("WATCHDOG=1") >= 2
            passing = False
            await asyncio.sleep(0.2)
            assert "WATCHDOG=1" not in _drain(systemd)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    assert os.environ["NOTIFY_SOCKET"] == str(path)


def _drain(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(256).decode())
        except BlockingIOError:
            return out


# -- alarms first ----------------------------------------------------------------------------


async def test_an_alarm_is_not_queued_behind_ten_thousand_telemetry_messages(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    """10,000 telemetry messages wait in the gateway; an alarm published after them is stored
    and acked before one of them is handled: alarms have their own broker session."""
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as a:
        handled: list[TelemetryMessage] = []
        path = gw.ingest.telemetry
        assert path is not None

        def intake(message: TelemetryMessage, now: float) -> None:
            handled.append(message)
            path(message, now)

        gw.ingest.telemetry = intake
        release = asyncio.Event()
        on_message = gw.telemetry_link._on_message

        async def held(topic_name: str, payload: bytes) -> None:
            await release.wait()  # the telemetry lane is busy (a backlog being drained)
            await on_message(topic_name, payload)

        gw.telemetry_link._on_message = held
        total = 10_000
        for n in range(total):
            await a.publish("telemetry", {"ref": f"t{n}", "ts": 1_700_000_000_000 + n,
                                          "metric": "temperature", "value": 21.0})
        await a.alarm("behind-the-backlog", AlarmType.FALL.value)
        assert (await a.wait_ack("behind-the-backlog"))["status"] == "stored"
        assert handled == []  # stored before any of the telemetry sent before it
        release.set()
        await until(lambda: len(handled) == total, timeout=120)


# -- the clock port ---------------------------------------------------------------------------


class FakeClock:
    """The gateway's clock; the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_escalation_on_a_fake_clock(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    """The ladder's first step, a minute away, taken at once: the test moves the clock."""
    import time

    clock = FakeClock(time.time())
    async with make_gateway(mosquitto, clock=clock) as gw, \
            device(mosquitto, prefix, "dev-a") as a:
        await a.alarm("waits")
        await a.wait_ack("waits")
        alarm = next(iter(gw.core.alarms.values()))
        before = len(alarm.escalations)
        await asyncio.sleep(0.5)
        assert len(gw.core.alarms[alarm.id].escalations) == before  # nothing due yet
        clock.now += 61.0
        gw.timers.deadlines_changed.set()
        await until(lambda: any(e.kind is EscalationKind.TEAM
                                for e in gw.core.alarms[alarm.id].escalations[before:]))



async def test_repeated_refusals_log_one_line_a_minute(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A phone repeating an accept for an alarm that is not there is refused every time,
    but the log gets one line (with the count of the rest), not one per request."""
    async with make_gateway(mosquitto) as gw:
        caplog.set_level(logging.WARNING, logger="gateway.pipeline")
        for _ in range(50):
            assert await gw.pipeline.decide_locked(AcceptRequested("no-such-alarm", "s1"))
        refused = [r for r in caplog.get_records("call")
                   if r.name == "gateway.pipeline" and "refused" in r.getMessage()]
        assert len(refused) == 1, [r.getMessage() for r in refused]
