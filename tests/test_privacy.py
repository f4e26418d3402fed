"""Export everything about one recipient; erase them; the audit chain still verifies."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.audit import AUDIT_FILENAME, verify
from gateway.org import StaffMember
from tests.conftest import _HASH, GatewayFactory
from tests.helpers import device, login

pytestmark = pytest.mark.network

PERSONAL = ("Astrid A", "Storgatan 1", "Nyckel under mattan", "Ring på två gånger")


async def test_export_then_erase(make_gateway: GatewayFactory, mosquitto: tuple[str, int],
                                 prefix: str, tmp_path: Path) -> None:
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir) as gw:
        gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        r_a = gw.org.recipients["r-a"]
        gw.org.put_recipient(type(r_a)(r_a.id, r_a.name, r_a.address, r_a.team_id,
                                       PERSONAL[2], PERSONAL[3]))
        base = f"http://127.0.0.1:{gw.http_port}"
        async with device(mosquitto, prefix, "dev-a") as dev:
            await dev.alarm("p1")
            await dev.wait_ack("p1")
            await dev.publish("telemetry", {"ref": "t1", "ts": int(time.time() * 1000),
                                            "metric": "temperature", "value": 21.5})
        async with asyncio.timeout(10):
            while not await gw.telemetry.query("dev-a", "temperature", 0,
                                               int(time.time() * 1000) + 1000, 10):
                await asyncio.sleep(0.05)
        alarm = next(a for a in gw.core.alarms.values() if a.ref == "p1")
        anna = await login(base, "anna")
        assert (await anna.get("/recipients/r-a")).status_code == 200  # audited access
        assert (await anna.post(f"/alarms/{alarm.id}/accept")).status_code == 200
        assert (await anna.post(f"/alarms/{alarm.id}/close",
                                json={"cause": "ingen åtgärd"})).status_code == 200
        await anna.http.aclose()
        ada = await login(base, "ada")
        # Other staff never get an export.
        cleo = await login(base, "cleo")
        assert (await cleo.get("/admin/recipients/r-a/export")).status_code == 403
        await cleo.http.aclose()

        # The audit writer is asynchronous: wait until the view is in the log.
        async with asyncio.timeout(10):
            while True:
                exported = (await ada.get("/admin/recipients/r-a/export")).json()
                if any(e["kind"] == "recipient_view" for e in exported["audit"]):
                    break
                await asyncio.sleep(0.05)
        assert exported["recipient"]["name"] == "Astrid A"
        assert exported["recipient"]["action_plan"] == PERSONAL[3]
        assert "dev-a" in {d["id"] for d in exported["devices"]}
        [exported_alarm] = [a for a in exported["alarms"] if a["id"] == alarm.id]
        assert [h["hop"] for h in exported_alarm["hops"]][-1] == "closed"
        assert {(t["device_id"], t["metric"]) for t in exported["telemetry"]} >= {
            ("dev-a", "temperature")}
        subjects = {e["subject"] for e in exported["audit"]}
        assert alarm.id in subjects and "r-a" in subjects

        erased = await ada.post("/admin/recipients/r-a/erase")
        assert erased.status_code == 200, erased.text
        assert erased.json()["telemetry_rows_deleted"] >= 1
        after = (await ada.get("/admin/recipients/r-a/export")).json()
        assert after["recipient"]["name"] != "Astrid A"
        assert after["telemetry"] == []
        assert not gw.core.directory.knows_device("dev-a")
        # Statistics survive: the alarm is still there, closed, with its hops.
        assert gw.core.alarms[alarm.id].state == "closed"
        report = (await ada.get("/reports/response-times", params={"period": "month"}))
        assert report.status_code == 200
        await ada.http.aclose()

    assert verify(data_dir / AUDIT_FILENAME).ok
    for path in data_dir.rglob("*"):
        if not path.is_file():
            continue
        raw = path.read_bytes()
        for text in PERSONAL:
            assert text.encode() not in raw, f"{text!r} left in {path.name}"


def test_retention_prunes_old_telemetry(tmp_path: Path) -> None:
    import sqlite3

    from gateway.privacy import RetentionSettings, run_retention

    now = 1_000_000_000.0
    with sqlite3.connect(tmp_path / "telemetry.sqlite3") as conn:
        conn.execute("CREATE TABLE raw (id INTEGER PRIMARY KEY, device_id TEXT, metric TEXT,"
                     " ts_ms INTEGER, received_ms INTEGER, unit TEXT, num REAL, vec BLOB)")
        conn.execute("CREATE TABLE rollup_1m (device_id TEXT, metric TEXT, minute_ms INTEGER,"
                     " min REAL, max REAL, avg REAL, count INTEGER)")
        old, new = int((now - 8 * 86400) * 1000), int((now - 3600) * 1000)
        for ts in (old, new):
            conn.execute("INSERT INTO raw (device_id, metric, ts_ms, received_ms, num)"
                         " VALUES ('d', 'm', ?, ?, 1)", (ts, ts))
    done = run_retention(tmp_path, RetentionSettings(telemetry_raw_days=7), now=now)
    assert done["telemetry_raw"] == 1
    with sqlite3.connect(tmp_path / "telemetry.sqlite3") as conn:
        assert conn.execute("SELECT count(*) FROM raw").fetchone()[0] == 1


def test_retention_before_the_registry_made_its_tables(tmp_path: Path) -> None:
    # The first pass runs as the gateway starts, perhaps between the registry creating its
    # file and its tables: that is nothing to prune, not an error.
    import sqlite3

    from gateway.privacy import RetentionSettings, run_retention

    sqlite3.connect(tmp_path / "provisioning.sqlite3").close()
    done = run_retention(tmp_path, RetentionSettings())
    assert done["provisioning"] == 0
