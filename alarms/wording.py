"""What staff read about an alarm: names instead of ids, local times, Swedish first.

Pure functions over an alarm and a ``NameBook`` (who is who); nothing here does I/O. The
API adds their results to the alarm JSON as extra fields (``summary``, ``actor_name``,
...), so ids stay where they were for clients that use them.

- ``technical_summary``: what is wrong, in words, for a technical alarm: which device of
  whose home, since when in local time, which team. Kinds the gateway raises itself are
  written from their ref (``offline.<since ms>``, ``noclient.<team>.<ms>``); for the rest
  the stored detail is used, with any ISO-8601 UTC time in it turned into local time.
- ``actor``: who recorded a hop, as a kind and a name (a person, a team, the gateway, a
  device).

Texts are pairs (Swedish, English): the staff app shows the language the user chose.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from alarms.model import GATEWAY_DEVICE, Alarm, AlarmType, technical_kind

ZONE = ZoneInfo("Europe/Stockholm")


@dataclass(frozen=True, slots=True)
class Text:
    """One text in both languages."""

    sv: str
    en: str


# The links of the chain as staff read them (the app's i18n.js has the same words).
HOPS: dict[str, Text] = {
    "raised": Text("Utlöst", "Raised"),
    "stored": Text("Lagrat", "Stored"),
    "routed": Text("Skickat till lag", "Routed"),
    "delivered": Text("Levererat", "Delivered"),
    "accepted": Text("Accepterat", "Accepted"),
    "on_site": Text("På plats", "On site"),
    "closed": Text("Avslutat", "Closed"),
}

# Device types in the definite form ("the fall detector"), for sentences about one device.
DEVICE_TYPES: dict[str, Text] = {
    "alarm_unit": Text("trygghetslarmet", "the alarm unit"),
    "button": Text("larmknappen", "the alarm button"),
    "base_unit": Text("basenheten", "the base unit"),
    "fall": Text("falldetektorn", "the fall detector"),
    "bed": Text("sängsensorn", "the bed sensor"),
    "door": Text("dörrsensorn", "the door sensor"),
    "motion": Text("rörelsesensorn", "the motion sensor"),
    "temperature": Text("temperaturgivaren", "the temperature sensor"),
    "smoke": Text("brandvarnaren", "the smoke detector"),
    "water": Text("vattenlarmet", "the water sensor"),
    "camera": Text("nattkameran", "the night camera"),
    "medication": Text("medicinautomaten", "the pill dispenser"),
}

# ``2026-03-29T01:02:03.456+00:00`` or ``...Z``: the gateway's own ``iso()`` times.
_ISO_UTC = re.compile(
    r"\b(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:Z|\+00:00)"
)


class NameBook(Protocol):
    """Who is who: names for the ids alarms carry (the organisation)."""

    def staff_name(self, staff_id: str) -> str | None:
        """A staff member's name."""

    def team_name(self, team_id: str) -> str | None:
        """A team's name."""

    def device_type(self, device_id: str) -> str | None:
        """A device's type (``alarm_unit``, ``fall``, ...)."""

    def device_home(self, device_id: str) -> str | None:
        """The name of the recipient a device protects."""


def hop_name(hop: str) -> Text:
    """A hop's name; an unknown hop as it is."""
    return HOPS.get(hop, Text(hop, hop))


def local_time(ts: float, reference: float | None = None) -> str:
    """``14:03`` in Stockholm time; with the date (``3/5 14:03``) when not ``reference``'s
    local day."""
    moment = datetime.fromtimestamp(ts, ZONE)
    clock = moment.strftime("%H:%M")
    if reference is not None and datetime.fromtimestamp(reference, ZONE).date() != moment.date():
        return f"{moment.day}/{moment.month} {clock}"
    return clock


def localise(text: str, reference: float | None = None) -> str:
    """``text`` with every ISO-8601 UTC time in it as local time (see ``local_time``)."""

    def local(match: re.Match[str]) -> str:
        try:
            moment = datetime.fromisoformat(f"{match[1]}T{match[2]}").replace(tzinfo=UTC)
        except ValueError:
            return match[0]
        return local_time(moment.timestamp(), reference)

    return _ISO_UTC.sub(local, text)


def split(text: str) -> Text:
    """A stored ``"svenska / English"`` text as its two halves (one half: both the same)."""
    sv, sep, en = text.partition(" / ")
    return Text(sv.strip(), en.strip()) if sep and sv.strip() and en.strip() else Text(
        text.strip(), text.strip())


def _device(alarm: Alarm, names: NameBook) -> Text:
    """``trygghetslarmet hos Astrid A`` / ``the alarm unit of Astrid A``."""
    kind = names.device_type(alarm.device_id)
    what = DEVICE_TYPES.get(kind or "", Text("enheten", "the device"))
    home = names.device_home(alarm.device_id)
    if home is None:
        return Text(f"{what.sv} {alarm.device_id}", f"{what.en} {alarm.device_id}")
    return Text(f"{what.sv} hos {home}", f"{what.en} of {home}")


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _ms(part: str) -> float | None:
    return int(part) / 1000 if part.isdigit() else None


def technical_summary(alarm: Alarm, names: NameBook) -> Text | None:
    """What a technical alarm is about, in words; None for other alarms."""
    if alarm.type is not AlarmType.TECHNICAL:
        return None
    raised = alarm.hops[0].at if alarm.hops else None
    kind = technical_kind(alarm.ref)
    rest = alarm.ref[len(kind) + 1:]
    if kind == "offline" and alarm.device_id != GATEWAY_DEVICE:
        device = _device(alarm, names)
        since = _ms(rest)
        if since is not None:
            at = local_time(since, raised)
            return Text(
                f"{_capital(device.sv)} har inte hörts av sedan {at}: kontrollera ström och "
                "uppkoppling.",
                f"{_capital(device.en)} has not been heard from since {at}: check its power "
                "and connection.")
    if kind == "noclient":
        team_id, _, _ = rest.rpartition(".")
        team = names.team_name(team_id) or team_id
        return Text(f"Ingen telefon i {team} är ansluten, men laget har öppna larm.",
                    f"No phone of {team} is connected, but the team has open alarms.")
    if kind == "undelivered" and alarm.device_id != GATEWAY_DEVICE:
        device = _device(alarm, names)
        return Text(f"Ingen telefon har bekräftat larmet från {device.sv} i tid.",
                    f"No phone confirmed the alarm from {device.en} in time.")
    if alarm.detail is None:
        return None
    text = split(localise(alarm.detail, raised))
    if alarm.device_id == GATEWAY_DEVICE:
        return text
    device = _device(alarm, names)
    # Whose device it is, unless the stored text already says so.
    return Text(f"{_capital(device.sv)}: {text.sv}", f"{_capital(device.en)}: {text.en}")


@dataclass(frozen=True, slots=True)
class Actor:
    """Who recorded a hop: ``kind`` (staff, team, everyone, gateway, device, other) and a
    name to show (empty for ``everyone``)."""

    kind: str
    name: str


def actor(name: str, names: NameBook) -> Actor:
    """The actor string of a hop or handover as people read it."""
    if name == "gateway":
        return Actor("gateway", "trygg")
    if name.startswith("team:"):
        team_id = name.removeprefix("team:")
        if team_id == "*":
            return Actor("everyone", "")  # no team: everyone on duty (the app words it)
        return Actor("team", names.team_name(team_id) or team_id)
    if name.startswith("device:"):
        return Actor("device", name.removeprefix("device:"))
    person = names.staff_name(name)
    if person is not None:
        return Actor("staff", person)
    if names.device_type(name) is not None:
        return Actor("device", name)
    return Actor("other", name)
