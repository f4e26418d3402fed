"""What staff read: names instead of ids, local times, Swedish hop names (alarms.wording)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import ClassVar

from hypothesis import given
from hypothesis import strategies as st

from alarms.model import Alarm, AlarmType, Hop, HopEntry
from alarms.wording import actor, hop_name, local_time, localise, split, technical_summary

# 2026-03-29 00:30 UTC: the night the clocks go forward (01:30 CET, then 03:00 CEST).
DST_NIGHT = datetime(2026, 3, 29, 0, 30, tzinfo=UTC).timestamp()


class Book:
    """A small organisation."""

    staff: ClassVar[dict[str, str]] = {"staff-anna": "Anna Lindqvist"}
    teams: ClassVar[dict[str, str]] = {"team-norr": "Hemtjänst Norr"}
    devices: ClassVar[dict[str, tuple[str, str | None]]] = {
        "alarm-001": ("alarm_unit", "Astrid Andersson"), "temp-3": ("temperature", None)}

    def staff_name(self, staff_id: str) -> str | None:
        return self.staff.get(staff_id)

    def team_name(self, team_id: str) -> str | None:
        return self.teams.get(team_id)

    def device_type(self, device_id: str) -> str | None:
        found = self.devices.get(device_id)
        return None if found is None else found[0]

    def device_home(self, device_id: str) -> str | None:
        found = self.devices.get(device_id)
        return None if found is None else found[1]


def technical(ref: str, detail: str | None = None, device: str = "alarm-001",
              at: float = DST_NIGHT) -> Alarm:
    return Alarm("T1", device, ref, AlarmType.TECHNICAL, 4, "r-1", "team-norr", 0, None,
                 (HopEntry(Hop.RAISED, at, device),), detail=detail)


def test_local_time_is_stockholm_time_across_the_clock_change() -> None:
    assert local_time(DST_NIGHT) == "01:30"
    assert local_time(DST_NIGHT + 3600) == "03:30"  # CEST from 02:00 (01:00 UTC)
    assert local_time(DST_NIGHT - 86400, DST_NIGHT) == "28/3 01:30"


def test_offline_alarm_says_which_device_of_whom_since_when_in_local_time() -> None:
    since_ms = int((DST_NIGHT - 600) * 1000)
    text = technical_summary(technical(f"offline.{since_ms}",
                                       "Enheten tyst sedan 2026-03-29T00:20:00.000+00:00 / x"),
                             Book())
    assert text is not None
    assert text.sv == ("Trygghetslarmet hos Astrid Andersson har inte hörts av sedan 01:20: "
                       "kontrollera ström och uppkoppling.")
    assert text.en.startswith("The alarm unit of Astrid Andersson has not been heard from since")


def test_team_and_delivery_faults_name_the_team_and_the_home_never_ids() -> None:
    noclient = technical_summary(technical("noclient.team-norr.1712", "Ingen i team-norr",
                                           device="gateway"), Book())
    assert noclient is not None
    assert noclient.sv == "Ingen telefon i Hemtjänst Norr är ansluten, men laget har öppna larm."
    undelivered = technical_summary(technical("undelivered.a-123", "Ingen telefon har "
                                              "bekräftat larmet a-123"), Book())
    assert undelivered is not None and "a-123" not in undelivered.sv
    assert undelivered.sv == "Ingen telefon har bekräftat larmet från trygghetslarmet hos " \
        "Astrid Andersson i tid."


def test_other_details_keep_their_words_with_local_times_and_the_device() -> None:
    text = technical_summary(technical("battery.3", "Batteri lågt 2026-03-29T01:10:00Z / "
                                       "Battery low 2026-03-29T01:10:00Z"), Book())
    assert text is not None
    assert text.sv == "Trygghetslarmet hos Astrid Andersson: Batteri lågt 03:10"
    assert text.en == "The alarm unit of Astrid Andersson: Battery low 03:10"
    unbound = technical_summary(technical("battery.4", "Lågt", device="temp-3"), Book())
    assert unbound is not None and unbound.sv == "Temperaturgivaren temp-3: Lågt"
    care = Alarm("A", "alarm-001", "r", AlarmType.FALL, 2, None, None, 0, None, ())
    assert technical_summary(care, Book()) is None


def test_actors_are_people_teams_the_gateway_or_devices() -> None:
    book = Book()
    assert actor("staff-anna", book).name == "Anna Lindqvist"
    assert actor("team:team-norr", book) == actor("team:team-norr", book)
    assert (actor("team:team-norr", book).kind, actor("team:team-norr", book).name) == (
        "team", "Hemtjänst Norr")
    assert actor("team:*", book).kind == "everyone"
    assert actor("gateway", book).kind == "gateway"
    assert actor("device:alarm-001", book).kind == "device"
    assert actor("alarm-001", book).kind == "device"
    assert actor("someone", book).kind == "other"


def test_hop_names_are_swedish_first() -> None:
    assert hop_name("delivered").sv == "Levererat"
    assert hop_name("on_site").en == "On site"
    assert hop_name("odd").sv == "odd"


@given(st.text(max_size=80), st.integers(0, 4_000_000_000))
def test_no_utc_iso_time_survives_localising(noise: str, seconds: int) -> None:
    stamp = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds")
    out = localise(f"{noise} sedan {stamp} {noise}")
    assert stamp not in out
    assert re.search(r"\d{2}:\d{2}", out)


@given(st.text(max_size=60), st.text(max_size=60))
def test_split_never_loses_a_language(sv: str, en: str) -> None:
    text = split(f"{sv} / {en}")
    assert text.sv.strip() == text.sv and text.en.strip() == text.en
    if sv.strip() and en.strip() and " / " not in f"{sv} " and "/ " not in en[:1]:
        assert (text.sv, text.en) == (sv.strip(), en.strip())
    else:
        assert (text.sv and text.en) or not f"{sv} / {en}".strip()


@given(st.text(max_size=40), st.one_of(st.none(), st.text(max_size=120)),
       st.sampled_from(["alarm-001", "temp-3", "gateway", "unknown"]))
def test_technical_summary_never_raises(ref: str, detail: str | None, device: str) -> None:
    text = technical_summary(technical(ref, detail, device), Book())
    assert text is None or (isinstance(text.sv, str) and isinstance(text.en, str))
