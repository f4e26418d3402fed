"""The alarm path with the journal on the machine's real PostgreSQL, restart included."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import GatewayFactory
from tests.helpers import device, login
from tests.test_journal_contract import pg_dsn  # noqa: F401 - the fixture

pytestmark = pytest.mark.network


async def test_alarm_chain_on_postgres_survives_restart(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory,
    pg_dsn: str,  # noqa: F811 - the imported fixture
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir, journal_dsn=pg_dsn) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("pg-1", "fall")
        assert (await dev.wait_ack("pg-1"))["status"] == "stored"
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        alarm_id = (await anna.get("/alarms")).json()[0]["id"]
        assert (await anna.post(f"/alarms/{alarm_id}/accept")).status_code == 200
        await anna.http.aclose()
    assert not (data_dir / "journal.sqlite3").exists(), "the SQLite journal was not used"
    async with make_gateway(mosquitto, data_dir=data_dir, journal_dsn=pg_dsn) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("pg-1", "fall")  # a resend after the restart: acked, not stored again
        assert (await dev.wait_ack("pg-1"))["status"] == "stored"
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        alarms = (await anna.get("/alarms?state=all")).json()
        assert [(a["ref"], a["owner"]) for a in alarms if a["type"] == "fall"] == [("pg-1", "anna")]
        await anna.http.aclose()
