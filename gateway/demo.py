"""The demo organisation: two teams, their staff, twenty care recipients and their devices."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.auth import hash_password
from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember, Team

TEAMS = (("team-norr", "Hemtjänst Norr"), ("team-soder", "Hemtjänst Söder"))
STAFF = (
    ("anna", "Anna Lindqvist", "staff", "team-norr"),
    ("erik", "Erik Johansson", "staff", "team-norr"),
    ("sara", "Sara Nilsson", "lead", "team-norr"),
    ("omar", "Omar Hassan", "staff", "team-soder"),
    ("lena", "Lena Berg", "staff", "team-soder"),
    ("johan", "Johan Ek", "lead", "team-soder"),
    ("tekniker", "Tove Tekniker", "technician", None),
    ("admin", "Ali Admin", "admin", None),
)
FIRST = ("Astrid", "Gustav", "Margit", "Sven", "Karin", "Olle", "Britt", "Nils", "Inga", "Bengt")
LAST = ("Andersson", "Karlsson", "Persson", "Svensson", "Olsson")
STREETS = ("Storgatan", "Kyrkvägen", "Björkvägen", "Skolgatan", "Ängsvägen")
# Every recipient has a safety alarm; some homes also have sensors, as in real fleets.
SENSORS = ("bed", "door", "motion", "temperature", "fall", "smoke", "water")


@dataclass(frozen=True, slots=True)
class DemoLogin:
    """A seeded login and its password (demo only)."""

    username: str
    password: str


def seed(org: OrgStore, recipients: int = 20) -> dict[str, str]:
    """Fill an empty organisation; returns username -> password."""
    if recipients > len(FIRST) * len(LAST):
        raise ValueError(f"at most {len(FIRST) * len(LAST)} demo recipients have unique names")
    passwords: dict[str, str] = {}
    for team_id, name in TEAMS:
        org.put_team(Team(team_id, name))
    for username, name, role, team in STAFF:
        password = secrets.token_urlsafe(9)
        passwords[username] = password
        teams = (team,) if team else tuple(t for t, _ in TEAMS) if role == "admin" else ()
        org.put_staff(
            StaffMember(f"staff-{username}", username, name, role, teams, hash_password(password))
        )
    for n in range(1, recipients + 1):
        team_id = TEAMS[(n - 1) % len(TEAMS)][0]
        recipient_id = f"rcp-{n:03d}"
        name = demo_name(n - 1)
        org.put_recipient(
            RecipientInfo(
                recipient_id,
                name,
                f"{STREETS[n % len(STREETS)]} {n * 3}, Trygghem",
                team_id,
                entry_info=f"Nyckelgömma kod {1000 + n * 7} / Key box code {1000 + n * 7}",
                action_plan="Ring först. Diabetes: kontrollera blodsocker. / Call first. "
                "Diabetes: check blood sugar.",
                # The range the Swedish regulator keeps for fiction (070-174 06 05 to 99).
                phone=f"+4670174{605 + n:04d}",
            )
        )
        org.put_device(DeviceInfo(f"alarm-{n:03d}", "alarm_unit", recipient_id, "TrygghetsKnapp 2"))
        if n % 3 == 0:
            sensor = SENSORS[(n // 3 - 1) % len(SENSORS)]
            org.put_device(
                DeviceInfo(f"{sensor}-{n:03d}", sensor, recipient_id, f"{sensor}-sensor")
            )
    return passwords


def demo_name(index: int) -> str:
    """A recipient's name; unique for the first ``len(FIRST) * len(LAST)`` indices.

    The surname moves on by one each time the first names come round again, so a first name
    never meets the same surname twice (gcd(len(FIRST) + 1, len(LAST)) == 1).
    """
    first = FIRST[index % len(FIRST)]
    last = LAST[(index + index // len(FIRST)) % len(LAST)]
    return f"{first} {last}"


def describe(org: OrgStore, passwords: dict[str, str], urls: dict[str, str],
             mqtt: dict[str, Any]) -> dict[str, Any]:
    """The demo organisation as printed and written to ``demo.json``."""
    return {
        "urls": urls,
        "mqtt": mqtt,
        "teams": [
            {
                "id": t.id,
                "name": t.name,
                "staff": [s.username for s in org.staff.values() if t.id in s.team_ids],
            }
            for t in org.teams.values()
        ],
        "staff": [
            {
                "id": s.id,
                "username": s.username,
                "password": passwords.get(s.username),
                "name": s.name,
                "role": s.role,
                "team_ids": list(s.team_ids),
            }
            for s in org.staff.values()
        ],
        "recipients": [
            {
                "id": r.id,
                "name": r.name,
                "address": r.address,
                "team_id": r.team_id,
                "devices": [d.id for d in org.devices.values() if d.recipient_id == r.id],
            }
            for r in org.recipients.values()
        ],
        "devices": [
            {"id": d.id, "type": d.type, "recipient_id": d.recipient_id}
            for d in org.devices.values()
        ],
    }


def load_passwords(path: Path) -> dict[str, str]:
    """Passwords from an earlier run's ``demo.json`` (the hashes alone cannot give them)."""
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    return {s["username"]: s["password"] for s in data.get("staff", []) if s.get("password")}


def print_summary(info: dict[str, Any]) -> str:
    """A human summary of the demo."""
    lines = [
        "trygg demo is running — Ctrl-C stops it.",
        "",
        f"  Staff app      {info['urls']['app']}",
        f"  Technicians    {info['urls']['console']}",
        f"  Operations     {info['urls']['ops']}",
        f"  API docs       {info['urls']['docs']}  (ReDoc: {info['urls']['redoc']})",
        f"  Health         {info['urls']['healthz']}",
        f"  Metrics        {info['urls']['metrics']}",
        f"  MQTT broker    {info['urls']['mqtt']}  (prefix {info['mqtt']['prefix']})",
        "",
        "  Logins (username / password, role, teams):",
    ]
    for s in info["staff"]:
        teams = ",".join(s["team_ids"]) or "-"
        lines.append(f"    {s['username']:<9} {s['password'] or '?':<14} {s['role']:<10} {teams}")
    lines.append("")
    lines.append("  Teams: " + "; ".join(f"{t['id']} ({t['name']})" for t in info["teams"]))
    lines.append(f"  Recipients: {len(info['recipients'])}, devices: {len(info['devices'])}")
    for r in info["recipients"][:4]:
        lines.append(f"    {r['id']} {r['name']:<20} {r['team_id']:<11} {', '.join(r['devices'])}")
    if len(info["recipients"]) > 4:
        lines.append(f"    … and {len(info['recipients']) - 4} more (all in demo.json)")
    return "\n".join(lines)
