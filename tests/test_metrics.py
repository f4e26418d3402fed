"""``/metrics`` as Prometheus and its operators read it: names, types and the new series.

A real gateway on Mosquitto is scraped and the text parsed with the Prometheus client's own
parser, so a counter exported as a gauge, a counter without ``_total`` or a unit that is not a
base unit fails here rather than in a municipality's Grafana.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from gateway import __version__
from gateway.buildinfo import build_info, git_commit
from gateway.metrics import Metrics, Totals
from gateway.runtime import Gateway
from tests.conftest import GatewayFactory
from tests.helpers import device

# Family name (as the parser reports it: a counter's without ``_total``) -> type.
EXPECTED_TYPES = {
    "trygg_telemetry_shed": "counter",
    "trygg_telemetry_written": "counter",
    "trygg_mqtt_outbound_dropped": "counter",
    "trygg_push_notifications": "counter",
    "trygg_provlarm_results": "counter",
    "trygg_probe_round_trips": "counter",
    "trygg_probe_misses": "counter",
    "trygg_ingest_messages": "counter",
    "trygg_device_acks": "counter",
    "trygg_journal_failures": "counter",
    "trygg_devices": "gauge",
    "trygg_build_info": "gauge",
    "trygg_alarms": "gauge",
    "trygg_mqtt_connected": "gauge",
    "trygg_probe_age_seconds": "gauge",
    "trygg_journal_commit_seconds": "histogram",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}
# Units Prometheus wants replaced by base units (seconds, bytes).
NON_BASE_UNITS = re.compile(r"_(ms|milliseconds|minutes|hours|kb|kilobytes|mb|megabytes)(_|$)")


async def scrape(gw: Gateway) -> dict[str, tuple[str, list[Sample]]]:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"http://127.0.0.1:{gw.http_port}/metrics")
    assert response.status_code == 200
    return {family.name: (family.type, family.samples)
            for family in text_string_to_metric_families(response.text)}


def value(families: dict[str, tuple[str, list[Sample]]], name: str, **labels: str) -> float:
    return sum(s.value for s in families[name][1]
               if s.name.endswith("_total") and labels.items() <= s.labels.items())


@pytest.mark.network
async def test_scraped_metrics_follow_prometheus_naming(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("m1")
        assert (await dev.wait_ack("m1"))["status"] == "stored"
        families = await scrape(gw)
        # The probe's first round trip is counted (it runs every few seconds).
        async with asyncio.timeout(20):
            while value(families, "trygg_probe_round_trips") < 1:
                await asyncio.sleep(0.5)
                families = await scrape(gw)

    for name, expected in EXPECTED_TYPES.items():
        assert name in families, name
        assert families[name][0] == expected, (name, families[name][0])
    for name, (kind, samples) in families.items():
        assert not NON_BASE_UNITS.search(name), name
        if kind == "counter":
            for sample in samples:
                assert sample.name.endswith(("_total", "_created")), sample.name
        else:
            # A cumulative count exported as a gauge would end in _total without being one.
            assert not name.endswith("_total"), name
    assert value(families, "trygg_device_acks", status="stored") >= 1
    assert value(families, "trygg_probe_misses") == 0
    # Zero counts are exported too, so that rate() has a series from the start.
    assert {s.labels["outcome"] for s in families["trygg_push_notifications"][1]} >= {
        "sent", "failed"}
    assert {s.labels["outcome"] for s in families["trygg_provlarm_results"][1]} == {
        "passed", "failed"}

    (build,) = families["trygg_build_info"][1]
    assert build.labels["version"] == __version__
    assert build.labels["commit"]
    assert build.value == 1

    # seed_small: dev-a, dev-b and 100 simulated alarm units, split between team-a and -b.
    devices = {(s.labels["type"], s.labels["team"], s.labels["state"]): s.value
               for s in families["trygg_devices"][1]}
    assert {key[0] for key in devices} == {"alarm_unit"}
    per_team = {team: sum(v for (_, t, _), v in devices.items() if t == team)
                for team in ("team-a", "team-b")}
    assert per_team == {"team-a": 51, "team-b": 51}
    assert {key[2] for key in devices} <= {"online", "offline"}


def test_device_states_and_totals_reach_the_exposition() -> None:
    from prometheus_client import generate_latest

    metrics = Metrics(
        dict,
        totals=lambda: Totals(telemetry_shed=3, push=(("sent", 2), ("failed", 1))),
        devices=lambda: {("camera", "team-a", "offline"): 4},
    )
    text = generate_latest(metrics.registry).decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    assert [s.value for s in families["trygg_telemetry_shed"].samples
            if s.name.endswith("_total")] == [3]
    assert {s.labels["outcome"]: s.value for s in families["trygg_push_notifications"].samples
            if s.name.endswith("_total")} == {"sent": 2, "failed": 1}
    (sample,) = families["trygg_devices"].samples
    assert sample.labels == {"type": "camera", "team": "team-a", "state": "offline"}
    assert sample.value == 4


def test_commit_lookup_never_raises(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert git_commit(tmp_path) is None  # not a checkout
    assert git_commit(tmp_path / "missing") is None  # no such directory
    checkout = git_commit(Path(__file__).parent)
    if checkout is not None:  # the tests run from a checkout where git is installed
        assert re.fullmatch(r"[0-9a-f]{12}", checkout)
    monkeypatch.setenv("PATH", str(tmp_path))  # no git at all
    assert git_commit(Path(__file__).parent) is None


def test_version_prints_version_and_commit(capsys: pytest.CaptureFixture[str]) -> None:
    from gateway.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    out = capsys.readouterr().out.strip()
    assert out == build_info().line()
    assert out.startswith(f"trygg {__version__} (commit ")


def test_device_states_count_supervised_devices_by_type_team_and_state() -> None:
    from types import SimpleNamespace
    from typing import Any

    from alarms.supervision import Supervisor
    from gateway.org import DeviceInfo, RecipientInfo
    from gateway.scrape import device_states

    supervisor = Supervisor()
    for device_id in ("cam-1", "cam-2", "door-1", "gone-1"):
        supervisor.watch(device_id, now=0.0, interval_s=60.0, grace_s=60.0)
    supervisor.due(1_000.0)  # every watched device is now offline ...
    supervisor.seen("cam-1", 1_000.0)  # ... but cam-1, heard again
    org = SimpleNamespace(
        devices={d.id: d for d in (DeviceInfo("cam-1", "camera", "r-a"),
                                   DeviceInfo("cam-2", "camera", "r-a"),
                                   DeviceInfo("door-1", "door", None),
                                   DeviceInfo("spare-1", "door", None))},  # not watched
        recipients={"r-a": RecipientInfo("r-a", "A", "", "team-a")})
    gw: Any = SimpleNamespace(org=org, watch=SimpleNamespace(supervisor=supervisor))
    assert dict(device_states(gw)) == {
        ("camera", "team-a", "online"): 1,
        ("camera", "team-a", "offline"): 1,
        ("door", "-", "offline"): 1,
        ("unknown", "-", "offline"): 1,  # gone-1: watched, no longer in the organisation
    }
