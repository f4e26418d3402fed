"""What a cluster now shares beyond the journal (#22 part B), with two real gateways.

Two gateways on one PostgreSQL database and the real Mosquitto: a night-camera look
started through one is seen, continued and finished through the other, also after the
first has stopped, and both write one audit chain that verifies.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest

from alarms.nattillsyn import LookState
from firmware_sim.camera_stream import SimCamera
from gateway.audit_target import PostgresAudit, verify_audit
from gateway.cameras import CameraService
from gateway.org import DeviceInfo, OrgStore, StaffMember
from gateway.runtime import Gateway
from tests.conftest import _HASH, MOSQUITTO, seed_small, settings_for
from tests.helpers import login
from tests.test_cameras import CAMERA, NIGHT, FakeClock, read_until, setup_consent_and_schedule
from tests.test_cameras import Rig as CameraRig
from tests.test_journal_contract import pg_dsn  # noqa: F401 - the fixture

pytestmark = pytest.mark.network


@asynccontextmanager
async def member(tmp_path: Path, prefix: str, dsn: str, name: str, clock: FakeClock
                 ) -> AsyncIterator[Gateway]:
    """One clustered gateway whose camera service runs on ``clock``."""
    directory = tmp_path / name
    org = OrgStore(directory / "org.sqlite3")
    if org.is_empty():
        seed_small(org)
        org.put_device(DeviceInfo(CAMERA, "camera", "r-a"))
        org.put_staff(StaffMember("adam", "adam", "Adam", "admin", (), _HASH[0]))
    settings = settings_for(directory, MOSQUITTO, prefix, gateway_id=name, journal_dsn=dsn,
                            cluster={"shared_group": f"g{tmp_path.name[-8:]}",
                                     "lease_ttl_s": 1.0})
    try:
        gateway = Gateway(settings, org=org, overrides={
            "cameras": lambda host: CameraService(host, clock=clock)})
        async with gateway:
            await asyncio.wait_for(gateway.wait_connected(), 10)
            yield gateway
    finally:
        org.close()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


def base(gw: Gateway) -> str:
    return f"http://127.0.0.1:{gw.http_port}"


async def test_a_look_started_on_one_gateway_is_continued_and_ended_on_the_other(
    tmp_path: Path, prefix: str, pg_dsn: str,  # noqa: F811 - the imported fixture
) -> None:
    clock = FakeClock(NIGHT)
    async with member(tmp_path, prefix, pg_dsn, "gw1", clock) as watcher, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix
    ) as camera, member(tmp_path, prefix, pg_dsn, "gw2", clock) as two:
        async with member(tmp_path, prefix, pg_dsn, "gw3", clock) as one:
            # gw1 only watches; gw3 starts the look, gw2 continues and ends it.
            # Consent and schedule set through gw3 are gw2's too.
            rig = CameraRig(one, one.cameras, clock, base(one), prefix)
            await setup_consent_and_schedule(rig)
            assert await two.cameras.schedule("r-a") is not None
            assert [c.given_by for c in await two.cameras.consent_history("r-a")] == [
                "Astrid A"]

            anna = await login(base(one), "anna")
            resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
            assert resp.status_code == 201, resp.text
            look = resp.json()
            assert camera.state == "awake"
            # Seen at once through the other gateways.
            in_progress = await two.cameras.looks_in_progress()
            assert [(lk.id, lk.state) for lk in in_progress] == [
                (look["id"], LookState.WOKEN)]
            # A second look at the same person through another gateway is refused.
            again = await login(base(two), "anna")
            resp = await again.post("/cameras/looks", json={"recipient_id": "r-a"})
            assert resp.status_code in (403, 409), resp.text
            await anna.http.aclose()
        # gw3, which started the look, is gone; the look goes on through gw2.
        anna = await login(base(two), "anna")
        seen = await read_until(anna, look["stream_url"], camera.marker, look["token"])
        assert camera.marker in seen
        # A wrong token is still refused there.
        resp = await anna.get(look["stream_url"].removeprefix("/api/v1"),
                              params={"token": "x" * 43})
        assert resp.status_code == 403
        resp = await anna.post(f"/cameras/looks/{look['id']}/end", json={"outcome": "sover"})
        assert resp.status_code == 200, resp.text
        assert resp.json()["outcome"] == "sover"
        await until(lambda: camera.state == "standby")
        assert camera.commands == ["wake", "standby"]
        await anna.http.aclose()
        await again.http.aclose()
        ended = await watcher.cameras.find_look(look["id"])
        assert ended is not None
        assert ended.state is LookState.ENDED
        assert await watcher.cameras.looks_in_progress() == []
    # After a restart the look is still there, ended, with its outcome.
    async with member(tmp_path, prefix, pg_dsn, "gw3", clock) as restarted:
        found = await restarted.cameras.find_look(look["id"])
        assert found is not None
        assert found.outcome is not None
        assert found.outcome.value == "sover"

    # Every gateway wrote into one chain, and it verifies.
    result = verify_audit(PostgresAudit(pg_dsn))
    assert result.ok, result.reason
    with psycopg.connect(pg_dsn) as conn:
        writers = {gw for (gw,) in conn.execute("SELECT DISTINCT gateway_id FROM trygg_audit")}
        views = conn.execute(
            "SELECT gateway_id, detail FROM trygg_audit WHERE kind = 'camera_view'"
            " ORDER BY seq").fetchall()
    assert {"gw2", "gw3"} <= writers
    assert next((gw, '"event":"allowed"' in d) for gw, d in views) == ("gw3", True)
    assert any(gw == "gw2" and '"event":"ended"' in d for gw, d in views)
    assert result.records >= len(views)


async def test_a_look_whose_gateway_stopped_is_ended_by_another(
    tmp_path: Path, prefix: str, pg_dsn: str,  # noqa: F811 - the imported fixture
) -> None:
    clock = FakeClock(NIGHT)
    async with member(tmp_path, prefix, pg_dsn, "gw1", clock) as survivor, SimCamera(
        CAMERA, host=MOSQUITTO[0], port=MOSQUITTO[1], prefix=prefix
    ) as camera:
        async with member(tmp_path, prefix, pg_dsn, "gw2", clock) as doomed:
            await setup_consent_and_schedule(
                CameraRig(doomed, doomed.cameras, clock, base(doomed), prefix))
            anna = await login(base(doomed), "anna")
            resp = await anna.post("/cameras/looks", json={"recipient_id": "r-a"})
            assert resp.status_code == 201, resp.text
            look = resp.json()
            await anna.http.aclose()
        assert camera.state == "awake"
        # Within its time nobody else touches it: the owner might only be slow.
        await asyncio.sleep(0.5)
        found = await survivor.cameras.find_look(look["id"])
        assert found is not None
        assert found.state is LookState.WOKEN
        # Past its end (and the grace), the surviving gateway ends it and sends standby.
        clock.now = NIGHT + 60 + 6
        await until(lambda: camera.state == "standby")
        found = await survivor.cameras.find_look(look["id"])
        assert found is not None
        assert found.state is LookState.ENDED
        assert found.ended_by is not None
        assert found.ended_by.value == "timeout"
        assert await survivor.cameras.looks_in_progress() == []
