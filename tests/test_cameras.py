"""Night camera looks end to end: gateway + CameraService + a simulated camera on Mosquitto.

The service runs on a fake clock (time inside the agreed window, expiry and retries moved
by the test); MQTT, HTTP and the camera's stream server are real, on loopback.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import websockets

from alarms.nattillsyn import STOCKHOLM
from firmware_sim.camera_stream import SimCamera, tiny_jpeg
from gateway.audit import AuditLog
from gateway.cameras import CameraService, parse_stream_ref
from gateway.org import DeviceInfo, OrgStore, StaffMember
from gateway.runtime import Gateway
from tests.conftest import _HASH, MOSQUITTO, seed_small, settings_for
from tests.helpers import Staff, login

pytestmark = pytest.mark.network

# 02:05 on an ordinary winter night, Stockholm time: inside the 02:00 ± 15 min window.
NIGHT = dt.datetime(2024, 1, 16, 2, 5, tzinfo=STOCKHOLM).timestamp()
CAMERA = "cam-a"
# Files the gateway legitimately appends to while running (journal, audit, telemetry,
# supervision state, org) — their names; their content is still searched for frames.
_DB_SUFFIXES = (".sqlite3", ".sqlite3-wal", ".sqlite3-shm", ".sqlite3-journal")


class FakeClock:
    """The service's clock; the test moves it."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass
class Rig:
    gateway: Gateway
    service: CameraService
    clock: FakeClock
    base: str
    prefix: str


@asynccontextmanager
async def rig(tmp_path: Path, prefix: str, *, now: float = NIGHT,
              **options: Any) -> AsyncIterator[Rig]:
    directory = tmp_path / "gw"
    org = OrgStore(directory / "org.sqlite3")
    seed_small(org)
    org.put_device(DeviceInfo(CAMERA, "camera", "r-a"))
    org.put_staff(StaffMember("adam", "adam", "Adam", "admin", (), _HASH[0]))
    clock = FakeClock(now)
    try:
        # This test's service (on the fake clock) replaces the gateway's own.
        gateway = Gateway(settings_for(directory, MOSQUITTO, prefix), org=org, overrides={
            "cameras": lambda host: CameraService(host, clock=clock, **options)})
        async with gateway:
            service = gateway.cameras
            await asyncio.wait_for(gateway.wait_connected(), 10)
            yield Rig(gateway, service, clock, f"http://127.0.0.1:{gateway.http_port}", prefix)
    finally:
        org.close()


async def setup_consent_and_schedule(r: Rig, *, scope: list[str] | None = None) -> None:
    admin = await login(r.base, "adam")
    resp = await admin.http.put("/api/v1/cameras/consents/r-a", json={
        "given_by": "Astrid A", "scope": scope or ["scheduled"], "consented_at": NIGHT - 86400})
    assert resp.status_code == 200, resp.text
    resp = await admin.http.put("/api/v1/cameras/schedules/r-a", json={
        "team_id": "team-a", "times": ["23:00", "02:00", "05:00"], "tolerance_min": 15})
    assert resp.status_code == 200, resp.text
    await admin.http.aclose()


async def read_until(staff: Staff, url: str, marker: bytes, token: str) -> bytes:
    """Open the relayed stream and read until a frame with ``marker`` has arrived."""
    seen = b""
    async with staff.http.stream("GET", url, params={"token": token}) as resp:
        assert resp.status_code == 200, await resp.aread()
        assert resp.headers["content-type"].startswith("multipart/x-mixed-replace")
        assert "no-store" in resp.headers["cache-control"]
        async for chunk in resp.aiter_bytes():
            seen += chunk
            if marker in seen:
                break
    return seen


def audit_records(r: Rig) -> list[tuple[str, str, dict[str, Any]]]:
    with AuditLog.open(r.gateway.audit.path) as log:
        return [(rec.kind, rec.actor, rec.detail) for rec in log.records()]


async def next_message(ws: websockets.ClientConnection, kind: str, **match: Any
                       ) -> dict[str, Any]:
    async with asyncio.timeout(10):
        while True:
            message: dict[str, Any] = json.loads(await ws.recv())
            if message["type"] != kind:
                continue
            body: dict[str, Any] = message.get("alarm", message)
            if all(body.get(k) == v for k, v in match.items()):
                return body


def snapshot(root: Path) -> dict[str, int]:
    """Files under ``root`` and their sizes, except the gateway's databases."""
    found: dict[str, int] = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath, name)
            if not name.endswith(_DB_SUFFIXES):
                found[str(path)] = path.stat().st_size
    return found


def files_containing(roots: list[Path], marker: bytes, since: float) -> list[str]:
    """Files under ``roots`` changed since ``since`` that hold ``marker``."""
    hits = []
    for root in roots:
        for dirpath, _, names in os.walk(root):
            for name in names:
                path = Path(dirpath, name)
                try:
                    if path.stat().st_mtime < since or path.stat().st_size > 50_000_000:
                        continue
                    if marker in path.read_bytes():
                        hits.append(str(path))
                except OSError:
                    continue
    return hits


# -- unit-level pieces --------------------------------------------------------------------------


def test_tiny_jpeg_is_a_well_formed_baseline_jpeg() -> None:
    frame = tiny_jpeg(b"hello")
    assert frame.startswith(b"\xff\xd8\xff\xfe")
    assert frame.endswith(b"\xff\xd9")
    assert b"\xff\xc0" in frame  # baseline SOF
    # Walk the marker segments up to SOS: every length must fit.
    pos = 2
    while frame[pos + 1] != 0xDA:
        assert frame[pos] == 0xFF
        pos += 2 + int.from_bytes(frame[pos + 2 : pos + 4], "big")
    assert frame[pos : pos + 2] == b"\xff\xda"


def test_stream_refs_only_on_loopback_or_private_networks() -> None:
    assert parse_stream_ref("awake@127.0.0.1:4000/abc") == "http://127.0.0.1:4000/abc"
    assert parse_stream_ref("awake@192.168.1.20:80/s") == "http://192.168.1.20:80/s"
    for bad in ("awake", "awake@", "awake@8.8.8.8:80/x", "awake@example.com:80/x",
                "awake@127.0.0.1:0/x", "awake@127.0.0.1/x"):
        assert parse_stream_ref(bad) is None


# -- the whole look -----------------------------------------------------------------------------


async def test_scheduled_look_relays_frames_writes_nothing_and_ends_in_standby(
    tmp_path: Path, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    private_tmp = tmp_path / "tmp"
    private_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(private_tmp))
    monkeypatch.setattr(tempfile, "tempdir", str(private_tmp))
    async with rig(tmp_path, prefix) as r, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix
    ) as camera:
        await setup_consent_and_schedule(r)
        anna = await login(r.base, "anna")
        before = snapshot(tmp_path)
        started = time.time() - 1

        resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
        assert resp.status_code == 201, resp.text
        look = resp.json()
        assert look["state"] == "camera_woken"
        assert look["window"] is not None
        assert look["expires_at"] == pytest.approx(NIGHT + 60)
        assert camera.state == "awake"

        seen = await read_until(anna, look["stream_url"], camera.marker, look["token"])
        assert seen.count(b"\xff\xd8") >= 1

        resp = await anna.post(f"/cameras/looks/{look['id']}/end", json={"outcome": "sover"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["outcome"] == "sover"
        async with asyncio.timeout(10):
            await r.service.wait_until(lambda: look["id"] in r.service.standby_confirmed)
        assert camera.state == "standby"
        assert not camera.server.running
        assert camera.commands == ["wake", "standby"]

        # The look token is dead with the look.
        resp = await anna.get(look["stream_url"].removeprefix("/api/v1"),
                              params={"token": look["token"]})
        assert resp.status_code == 403
        assert resp.json()["detail"]["code"] == "look_ended"
        await anna.http.aclose()

        after = snapshot(tmp_path)
        assert after == before, "a look changed files outside the gateway's databases"
        assert list(private_tmp.iterdir()) == []
        roots = [tmp_path, Path(tempfile.gettempdir()), Path("/tmp")]
        assert files_containing(roots, camera.marker, started) == []
    kinds = [(kind, actor, detail.get("event")) for kind, actor, detail in audit_records(r)]
    assert ("config_change", "adam", None) in kinds
    assert ("camera_view", "anna", "allowed") in kinds
    assert ("camera_view", "anna", "ended") in kinds
    ended = next(d for k, _, d in audit_records(r) if k == "camera_view"
                 and d.get("event") == "ended")
    assert ended["outcome"] == "sover"
    assert ended["duration_s"] == 0.0  # fake clock: no time passed
    assert ended["ended_by"] == "viewer"
    assert camera.marker.decode() not in json.dumps(audit_records(r))


async def test_refusals_are_audited(tmp_path: Path, prefix: str) -> None:
    async with rig(tmp_path, prefix, now=NIGHT) as r:
        anna = await login(r.base, "anna")
        cleo = await login(r.base, "cleo")
        codes = []

        async def attempt(staff: Staff, **body: Any) -> None:
            resp = await staff.post("/cameras/looks", json={"recipient_id": "r-a", **body})
            assert resp.status_code == 403, resp.text
            codes.append(resp.json()["detail"]["code"])

        await attempt(anna)  # no consent yet
        await setup_consent_and_schedule(r)
        # Another team's recipient answers as a missing one (404, same body), and the
        # attempt is audited all the same (issue 17, item 10).
        other = await cleo.post("/cameras/looks", json={"recipient_id": "r-a"})
        missing = await cleo.post("/cameras/looks", json={"recipient_id": "r-nobody"})
        assert (other.status_code, other.json()) == (missing.status_code, missing.json())
        assert other.status_code == 404, other.text
        for path in ("/cameras/consents/r-a", "/cameras/schedules/r-a"):
            theirs = await cleo.get(path)
            absent = await cleo.get(path.replace("r-a", "r-nobody"))
            assert (theirs.status_code, theirs.json()) == (absent.status_code, absent.json())
        theirs = await cleo.http.delete("/api/v1/cameras/consents/r-a")
        assert theirs.status_code == 404
        await attempt(anna, duration_s=120)  # longer than the maximum
        await attempt(anna, reason="orolig", alarm_id="nope")  # ad hoc is not in scope
        r.clock.now = NIGHT + 3600  # 03:05: outside every window
        await attempt(anna)
        r.clock.now = NIGHT
        resp = await anna.http.delete("/api/v1/cameras/consents/r-a")
        assert resp.status_code == 200, resp.text
        await attempt(anna)  # withdrawn
        assert codes == ["no_consent", "too_long", "out_of_scope",
                         "outside_window", "consent_withdrawn"]
        for staff in (anna, cleo):
            await staff.http.aclose()
    refused = [(actor, d["code"]) for kind, actor, d in audit_records(r)
               if kind == "camera_view" and d.get("event") == "refused"]
    assert refused == [("anna", "no_consent"), ("cleo", "wrong_team"), ("anna", "too_long"),
                       ("anna", "out_of_scope"), ("anna", "outside_window"),
                       ("anna", "consent_withdrawn")]


async def test_timeout_expired_token_wrong_viewer_and_visit_outcome(
    tmp_path: Path, prefix: str
) -> None:
    async with rig(tmp_path, prefix) as r, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix
    ) as camera:
        await setup_consent_and_schedule(r)
        anna = await login(r.base, "anna")
        bo = await login(r.base, "bo")
        resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
        assert resp.status_code == 201, resp.text
        look = resp.json()
        path = look["stream_url"].removeprefix("/api/v1")

        resp = await bo.get(path, params={"token": look["token"]})  # same team, not the viewer
        assert resp.json()["detail"]["code"] == "wrong_viewer"
        resp = await anna.get(path, params={"token": "forged"})
        assert resp.json()["detail"]["code"] == "token_invalid"

        r.clock.now = NIGHT + 61  # past the maximum look duration
        resp = await anna.get(path, params={"token": look["token"]})
        assert resp.status_code == 403
        assert resp.json()["detail"]["code"] == "token_expired"

        await r.service.check()  # the timer's pass: the look times out
        assert r.service.looks[look["id"]].ended_by == "timeout"
        async with asyncio.timeout(10):
            await r.service.wait_until(lambda: look["id"] in r.service.standby_confirmed)
        assert camera.state == "standby"

        async with anna.socket() as ws:
            resp = await anna.post(f"/cameras/looks/{look['id']}/end",
                                   json={"outcome": "behöver besök"})
            assert resp.status_code == 200, resp.text
            await r.service.check()
            alarm = await next_message(ws, "alarm", type="inactivity", device_id=CAMERA)
            assert "besök" in alarm["detail"]
        for staff in (anna, bo):
            await staff.http.aclose()
    refused = [d["code"] for kind, _, d in audit_records(r)
               if kind == "camera_view" and d.get("event") == "refused"]
    assert refused == ["wrong_viewer", "token_invalid", "token_expired"]


async def test_camera_that_stays_awake_is_a_technical_alarm(tmp_path: Path, prefix: str) -> None:
    async with rig(tmp_path, prefix) as r, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix, confirm_standby=False
    ):
        await setup_consent_and_schedule(r)
        anna = await login(r.base, "anna")
        tove = await login(r.base, "tove")
        resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
        assert resp.status_code == 201, resp.text
        look = resp.json()
        async with tove.socket() as ws:
            resp = await anna.post(f"/cameras/looks/{look['id']}/end",
                                   json={"outcome": "vaken – ok"})
            assert resp.status_code == 200
            r.clock.now += r.service.standby_timeout_s + 1
            await r.service.check()
            alarm = await next_message(ws, "alarm", type="technical", device_id=CAMERA)
            assert "standby" in alarm["detail"]
        assert look["id"] in r.service.standby_failed
        for staff in (anna, tove):
            await staff.http.aclose()


async def test_offline_camera_gives_technical_alarm_and_visit(tmp_path: Path, prefix: str) -> None:
    async with rig(tmp_path, prefix, wake_timeout_s=0.5) as r, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix, answer_wake=False
    ):
        await setup_consent_and_schedule(r)
        anna = await login(r.base, "anna")
        tove = await login(r.base, "tove")
        async with anna.socket() as care, tove.socket() as tech:
            resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
            assert resp.status_code == 504, resp.text
            assert resp.json()["detail"]["code"] == "camera_failed"
            await r.service.check()
            technical = await next_message(tech, "alarm", type="technical", device_id=CAMERA)
            assert "Nattkamera" in technical["detail"]
            visit = await next_message(care, "alarm", type="inactivity", device_id=CAMERA)
            assert visit["recipient_id"] == "r-a" or visit.get("recipient", {}).get("id") == "r-a"
        for staff in (anna, tove):
            await staff.http.aclose()


async def test_missed_look_reminds_then_sends_a_visit(tmp_path: Path, prefix: str) -> None:
    # 01:30, before the 02:00 window opens.
    start = dt.datetime(2024, 1, 16, 1, 30, tzinfo=STOCKHOLM).timestamp()
    async with rig(tmp_path, prefix, now=start, retry_s=15 * 60) as r:
        await setup_consent_and_schedule(r)
        anna = await login(r.base, "anna")
        async with anna.socket() as ws:
            r.clock.now = dt.datetime(2024, 1, 16, 2, 16, tzinfo=STOCKHOLM).timestamp()
            await r.service.check()
            notice = await next_message(ws, "notice", code="nattillsyn_reminder")
            assert notice["window"] == "2024-01-16T02:00"
            assert [rem.window.local for rem in r.service.reminders] == ["2024-01-16T02:00"]
            assert "anna" in r.service.reminders[0].staff_ids

            r.clock.now += 10 * 60  # 02:26: still within the retry time
            await r.service.check()
            assert len(r.service.reminders) == 1

            r.clock.now += 5 * 60  # 02:31: 15 minutes after the window closed
            await r.service.check()
            visit = await next_message(ws, "alarm", type="inactivity", device_id=CAMERA)
            assert "02:00" in visit["detail"]
        await anna.http.aclose()
