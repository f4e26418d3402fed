"""The gateway writes every hop, login and alarm view to the audit log; the CLI verifies it."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx

from gateway.audit import AuditLog
from tests.conftest import GatewayFactory
from tests.helpers import device, login


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
