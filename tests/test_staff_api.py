"""What the staff app and the technician console need from the API for a night shift:
names beside ids, the recipient's phone, whom to hand an alarm to, a claim code's QR image.

A real gateway on the real Mosquitto; a device raises an alarm over MQTT.
"""

from __future__ import annotations

import base64
import sqlite3
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest

from gateway.org import OrgStore, RecipientInfo, StaffMember
from gateway.orgfile import OrgFileError, parse
from tests.conftest import _HASH, GatewayFactory
from tests.helpers import Staff, device, login

pytestmark = pytest.mark.network

PHONE = "+46701740605"


async def raise_alarm(broker: tuple[str, int], prefix: str, ref: str, kind: str = "fall",
                      device_id: str = "dev-a") -> None:
    async with device(broker, prefix, device_id) as dev:
        await dev.alarm(ref, kind)
        assert (await dev.wait_ack(ref))["status"] == "stored"


async def the_alarm(staff: Staff, ref: str) -> dict[str, Any]:
    alarms = [a for a in (await staff.get("/alarms?state=all")).json() if a["ref"] == ref]
    assert len(alarms) == 1, alarms
    return dict(alarms[0])


async def test_alarm_json_names_people_teams_and_handovers(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, bo = await login(base, "anna"), await login(base, "bo")
        await raise_alarm(mosquitto, prefix, "n1")
        alarm = await the_alarm(anna, "n1")
        assert alarm["team_name"] == "Lag A"
        assert alarm["owner_name"] is None
        routed = next(h for h in alarm["hops"] if h["hop"] == "routed")
        assert (routed["actor"], routed["actor_name"], routed["actor_kind"]) == (
            "team:team-a", "Lag A", "team")
        stored = next(h for h in alarm["hops"] if h["hop"] == "stored")
        assert stored["actor_kind"] == "gateway"
        assert alarm["hops"][0]["actor_kind"] == "device"
        assert alarm["summary"] is None  # a care alarm speaks for itself

        accepted = (await anna.post(f"/alarms/{alarm['id']}/accept")).json()
        assert accepted["owner"] == "anna" and accepted["owner_name"] == "Anna"
        assert accepted["hops"][-1]["actor_name"] == "Anna"

        # Whom anna can hand it to: bo (same team, on duty), never herself or team B.
        colleagues = (await anna.get(f"/alarms/{alarm['id']}/colleagues")).json()
        assert [(c["id"], c["name"], c["team_names"]) for c in colleagues] == [
            ("bo", "Bo", ["Lag A"])]
        assert colleagues[0]["connected"] is False
        async with bo.socket():
            colleagues = (await anna.get(f"/alarms/{alarm['id']}/colleagues")).json()
            assert colleagues[0]["connected"] is True
        forwarded = (await anna.post(f"/alarms/{alarm['id']}/forward",
                                     json={"to": colleagues[0]["id"]})).json()
        assert forwarded["owner_name"] == "Bo"
        assert forwarded["handovers"] == [{
            "kind": "forwarded", "at": forwarded["handovers"][0]["at"], "actor": "anna",
            "actor_name": "Anna", "actor_kind": "staff", "owner": "bo", "owner_name": "Bo"}]
        # ... and anna may take it back over.
        taken = (await anna.post(f"/alarms/{alarm['id']}/take-over")).json()
        assert taken["owner_name"] == "Anna"
        assert [h["kind"] for h in taken["handovers"]] == ["forwarded", "taken_over"]
        # Another team's alarm: no colleagues to see (the same 404 as a missing alarm).
        cleo = await login(base, "cleo")
        assert (await cleo.get(f"/alarms/{alarm['id']}/colleagues")).status_code == 404
        for staff in (anna, bo, cleo):
            await staff.http.aclose()


async def test_recipient_phone_through_admin_api_alarm_and_export(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw:
        gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        base = f"http://127.0.0.1:{gw.http_port}"
        ada, anna, tove = [await login(base, u) for u in ("ada", "anna", "tove")]
        body = {"id": "r-a", "name": "Astrid A", "address": "Storgatan 1", "team_id": "team-a",
                "action_plan": "Ring först", "phone": "+46 70-174 06 05"}
        response = await ada.http.put("/api/v1/admin/recipients/r-a", json=body)
        assert response.status_code == 200, response.text
        assert response.json()["phone"] == PHONE  # normalised to E.164
        bad = await ada.http.put("/api/v1/admin/recipients/r-a", json={**body, "phone": "12"})
        assert bad.status_code == 422
        assert gw.org.recipients["r-a"].phone == PHONE

        await raise_alarm(mosquitto, prefix, "p1")
        alarm = await the_alarm(anna, "p1")
        assert alarm["recipient"]["phone"] == PHONE
        # Technicians see name and address only.
        technician_view = await tove.get("/recipients/r-a")
        assert "phone" not in technician_view.json()
        export = (await ada.get("/admin/recipients/r-a/export")).json()
        assert export["recipient"]["phone"] == PHONE
        for staff in (ada, anna, tove):
            await staff.http.aclose()


def test_org_store_adds_the_phone_column_to_an_old_store(tmp_path: Path) -> None:
    path = tmp_path / "org.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.executescript(
            "CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL);"
            "CREATE TABLE recipients (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT"
            " NOT NULL, team_id TEXT NOT NULL, entry_info TEXT NOT NULL DEFAULT '',"
            " action_plan TEXT NOT NULL DEFAULT '');"
            "INSERT INTO teams VALUES ('t', 'T');"
            "INSERT INTO recipients VALUES ('r', 'R', 'A', 't', '', '');")
    conn.close()
    org = OrgStore(path)
    assert org.recipients["r"].phone is None
    org.put_recipient(RecipientInfo("r", "R", "A", "t", phone=PHONE))
    org.close()
    again = OrgStore(path)
    assert again.recipients["r"].phone == PHONE
    again.close()


def test_org_file_recipient_phone_is_e164(tmp_path: Path) -> None:
    file = tmp_path / "org.toml"
    rows = ('[[teams]]\nid = "t"\nname = "T"\n[[recipients]]\nid = "r"\nname = "R"\n'
            'address = "A"\nteam = "t"\nphone = "{}"\n')
    file.write_text(rows.format("+46 70 174 06 05"))
    assert parse(file).recipients[0].phone == PHONE
    file.write_text(rows.format("not a number"))
    with pytest.raises(OrgFileError):
        parse(file)


async def test_claim_code_comes_with_a_qr_image_of_its_payload(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory
) -> None:
    async with make_gateway(mosquitto) as gw:
        tove = await login(f"http://127.0.0.1:{gw.http_port}", "tove")
        claim = (await tove.post("/devices/dev-a/claim-code")).json()
        assert claim["qr"] == f"TRYGG:1;D=dev-a;C={claim['code']}"
        image = claim["qr_image"]
        assert image.startswith("data:image/svg+xml")
        svg = unquote(image.split(",", 1)[1]) if ";base64" not in image else \
            base64.b64decode(image.split(",", 1)[1]).decode()
        assert svg.startswith("<svg") and "<path" in svg
        await tove.http.aclose()
