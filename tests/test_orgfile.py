"""A municipality's initial load from a TOML file, rosters included, and routing by roster."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from gateway.org import OrgStore
from tests.conftest import PASSWORD, GatewayFactory
from tests.helpers import device, login

ORG = f"""
[[teams]]
id = "team-a"
name = "Lag A"

[[teams]]
id = "team-b"
name = "Lag B"

[[staff]]
id = "anna"
username = "anna"
name = "Anna"
role = "staff"
teams = ["team-a"]
password = "{PASSWORD}"

[[staff]]
id = "bo"
username = "bo"
name = "Bo"
role = "staff"
teams = ["team-a"]
password = "{PASSWORD}"

[[recipients]]
id = "r-a"
name = "Astrid A"
address = "Storgatan 1"
team = "team-a"
action_plan = "Ring först / call first"

[[devices]]
id = "dev-a"
type = "alarm_unit"
recipient = "r-a"

[rosters.team-a]
day = ["anna"]
evening = ["anna"]
night = ["anna"]
"""


def run_import(path: Path, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli", "org", "import", str(path),
         "--data-dir", str(data_dir)],
        capture_output=True, text=True, check=False,
    )


def test_bad_file_is_refused_and_writes_nothing(tmp_path: Path) -> None:
    bad = tmp_path / "org.toml"
    bad.write_text(ORG.replace('team = "team-a"', 'team = "team-x"'))
    result = run_import(bad, tmp_path / "data")
    assert result.returncode == 1
    assert "recipient r-a: unknown team 'team-x'" in result.stderr
    org = OrgStore(tmp_path / "data" / "org.sqlite3")
    assert org.is_empty()
    org.close()


@pytest.mark.network
async def test_imported_roster_decides_who_gets_the_alarm(
    mosquitto: tuple[str, int], prefix: str, make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "org.toml"
    path.write_text(ORG)
    result = run_import(path, tmp_path / "gw")
    assert result.returncode == 0, result.stderr
    assert '"rosters": 1' in result.stdout
    async with make_gateway(mosquitto) as gw, device(mosquitto, prefix, "dev-a") as dev:
        await dev.alarm("rostered")
        await dev.wait_ack("rostered")
        anna = await login(f"http://127.0.0.1:{gw.http_port}", "anna")
        alarm = (await anna.get("/alarms")).json()[0]
        # bo is in the team but on no shift: only anna, on duty every shift, is alerted.
        routed = next(a for a in gw.core.alarms.values() if a.id == alarm["id"]).targets
        assert routed == frozenset({"anna"})
        await anna.http.aclose()


def test_staff_phones_are_e164_and_unique(tmp_path: Path) -> None:
    from gateway.orgfile import OrgFileError, RosterStore, import_file, parse

    path = tmp_path / "org.toml"
    with_phones = ORG.replace('teams = ["team-a"]\npassword', 'teams = ["team-a"]\n'
                              'phone = "+46 70-123 45 67"\npassword', 1)
    path.write_text(with_phones)
    assert [s.phone for s in parse(path).staff] == ["+46701234567", None]
    org = OrgStore(tmp_path / "org.sqlite3")
    import_file(path, org, RosterStore(tmp_path / "rosters.sqlite3"))
    assert org.staff["anna"].phone == "+46701234567" and org.staff["bo"].phone is None
    assert org.staff_by_phone("+46701234567") == org.staff["anna"]
    directory = org.directory()
    assert directory.staff["anna"].sms and not directory.staff["bo"].sms
    org.close()
    # Read back from disk, too.
    reopened = OrgStore(tmp_path / "org.sqlite3")
    assert reopened.staff["anna"].phone == "+46701234567"
    reopened.close()

    path.write_text(ORG.replace('password = "', 'phone = "0701234567"\npassword = "', 1))
    with pytest.raises(OrgFileError, match="international"):
        parse(path)
    path.write_text(ORG.replace('password = "', 'phone = "+46701234567"\npassword = "'))
    with pytest.raises(OrgFileError, match="also anna's"):
        parse(path)


def test_a_store_from_before_phones_gets_the_column(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "org.sqlite3"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE staff (id TEXT PRIMARY KEY, username TEXT NOT NULL UNIQUE, "
                 "name TEXT NOT NULL, role TEXT NOT NULL, team_ids TEXT NOT NULL, "
                 "password_hash TEXT NOT NULL, on_duty INTEGER NOT NULL DEFAULT 1)")
    conn.execute("INSERT INTO staff VALUES ('old', 'old', 'Old', 'staff', '[]', 'h', 1)")
    conn.commit()
    conn.close()
    org = OrgStore(path)
    assert org.staff["old"].phone is None
    org.close()
