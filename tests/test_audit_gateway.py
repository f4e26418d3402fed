"""The gateway writes every hop, login and alarm view to the audit log; the CLI verifies it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.audit import AuditLog
from gateway.org import StaffMember
from gateway.web.deps import AUDIT_MAX_IDS
from tests.conftest import _HASH, GatewayFactory
from tests.helpers import device, login, next_alarm


async def test_chain_and_access_are_audited_and_verifiable(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("audited")
        await dev.wait_ack("audited")
        base = f"http://127.0.0.1:{gw.http_port}"
        anna = await login(base, "anna")
        alarm_id = (await anna.get("/alarms")).json()[0]["id"]
        assert (await anna.get(f"/alarms/{alarm_id}")).status_code == 200
        assert (await anna.post(f"/alarms/{alarm_id}/accept")).status_code == 200
        closed = await anna.post(f"/alarms/{alarm_id}/close", json={"cause": "ingen åtgärd"})
        assert closed.status_code == 200
        async with httpx.AsyncClient(base_url=base) as client:
            bad = await client.post("/api/v1/auth/token",
                                    data={"username": "anna", "password": "wrong"})
            assert bad.status_code == 401
        await anna.http.aclose()

    path = data_dir / "audit.sqlite3"
    with AuditLog.open(path) as log:
        records = list(log.records())
    kinds = [(r.kind, r.actor, r.subject) for r in records]
    assert ("login", "anna", "staff-api") in kinds
    assert ("login_failed", "anna", "staff-api") in kinds
    assert ("alarm_view", "anna", alarm_id) in kinds
    chain = [r.detail for r in records if r.kind == "hop" and r.subject == alarm_id]
    assert chain[0]["opened"] == "manual"
    assert [d["hop"] for d in chain[1:]] == [
        "raised", "stored", "routed", "delivered", "accepted", "closed"]

    ok = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                         "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr

    # Edit one hop's actor, as someone covering their tracks would.
    target = next(r for r in records if r.detail.get("hop") == "accepted")
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE audit SET actor = 'bo' WHERE seq = ?", (target.seq,))
    conn.close()
    tampered = subprocess.run([sys.executable, "-m", "gateway.cli", "audit", "verify",
                               "--data-dir", str(data_dir)], capture_output=True, text=True)
    assert tampered.returncode == 1
    assert str(target.seq) in tampered.stdout + tampered.stderr


async def test_bulk_reads_leave_a_trace(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    """Issue 17.4: lists and the WebSocket's opening snapshot record who read which set: the
    ids, or the count and the filter when the set is large."""
    data_dir = tmp_path / "gw"
    async with make_gateway(mosquitto, data_dir=data_dir) as gw, \
            device(mosquitto, prefix, "dev-a") as dev:
        gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        await dev.alarm("listed")
        await dev.wait_ack("listed")
        [alarm_id] = list(gw.core.alarms)
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, tove, ada = [await login(base, name) for name in ("anna", "tove", "ada")]
        assert [a["id"] for a in (await anna.get("/alarms")).json()] == [alarm_id]
        assert (await anna.get("/alarms", params={"state": "closed"})).json() == []
        team_a = sorted(r["id"] for r in (await anna.get("/recipients")).json())
        assert (await tove.get("/recipients")).status_code == 200
        for path in ("/admin/teams", "/admin/staff", "/admin/recipients", "/devices",
                     "/console/fleet"):
            assert (await ada.get(path)).status_code == 200, path
        assert (await anna.get("/admin/staff")).status_code == 403  # nothing read: no record
        async with anna.socket() as ws:
            assert (await next_alarm(ws))["id"] == alarm_id
        for client in (anna, tove, ada):
            await client.http.aclose()

    with AuditLog.open(data_dir / "audit.sqlite3") as log:
        reads = [(r.actor, r.subject, r.detail) for r in log.records() if r.kind == "bulk_read"]
    everyone = len(gw.org.recipients)
    assert ("anna", "alarms", {"count": 1, "ids": [alarm_id], "filter": {"state": "open"}}
            ) in reads
    assert ("anna", "alarms", {"count": 0, "ids": [], "filter": {"state": "closed"}}) in reads
    assert ("anna", "alarms", {"count": 1, "ids": [alarm_id],
                               "filter": {"state": "open", "via": "websocket"}}) in reads
    [anna_recipients] = [d for a, s, d in reads if (a, s) == ("anna", "recipients")]
    assert sorted(anna_recipients["ids"]) == team_a
    # Technicians see every recipient's name and address: more than AUDIT_MAX_IDS of them
    # here, so the record holds the count and the filter.
    [tove_recipients] = [d for a, s, d in reads if (a, s) == ("tove", "recipients")]
    assert everyone > AUDIT_MAX_IDS
    assert tove_recipients == {"count": everyone, "filter": {"full": False}}
    assert {s for a, s, _ in reads if a == "ada"} == {
        "admin/teams", "admin/staff", "admin/recipients", "devices", "console/fleet"}
    assert not [s for a, s, _ in reads if a == "anna" and s.startswith("admin/")]
