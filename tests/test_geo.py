"""Positions from SCAIP's <lge>: geo, tim, gga, and their combination; never raises."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.model import Position, PositionSource
from devices.geo import GGA_UERE_M, GgaFix, parse_geo, parse_gga, parse_lge, parse_tim


def _gga(body: str) -> str:
    checksum = 0
    for char in body:
        checksum ^= ord(char)
    return f"${body}*{checksum:02X}"


GGA = _gga("GPGGA,102537.00,5919.758,N,01804.116,E,1,08,1.2,45.0,M,24.0,M,,")


@pytest.mark.parametrize(("text", "expected"), [
    ("59.329300,18.068600", (59.3293, 18.0686)),
    ("0,0", (0.0, 0.0)),
    ("-33.8688,151.2093", (-33.8688, 151.2093)),
    ("90,180", (90.0, 180.0)),
])
def test_geo(text: str, expected: tuple[float, float]) -> None:
    assert parse_geo(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", [
    "", "59.3", "59.3;18.0", "91,18", "59,181", "north,east", "1e3,2", " 59,18", "59,18,0",
    "5" * 40])
def test_bad_geo_says_why(text: str) -> None:
    assert isinstance(parse_geo(text), str)


@pytest.mark.parametrize(("text", "epoch"), [
    ("2024-03-18T11:25:37+01", 1710757537.0),  # the message model's 22-character form
    ("2024-03-18T11:25:37+01:00", 1710757537.0),
    ("2024-03-18T10:25:37Z", 1710757537.0),
    ("20240318T112537+0100", 1710757537.0),
])
def test_tim(text: str, epoch: float) -> None:
    assert parse_tim(text) == epoch


@pytest.mark.parametrize("text", [
    "2024-03-18T11:25:37", "2024-13-18T11:25:37+01", "yesterday", "2024-03-18 11:25:37+01", ""])
def test_tim_needs_a_valid_time_with_an_offset(text: str) -> None:
    assert isinstance(parse_tim(text), str)


def test_gga() -> None:
    fix = parse_gga(GGA)
    assert isinstance(fix, GgaFix)
    assert (fix.lat, fix.lon) == pytest.approx((59 + 19.758 / 60, 18 + 4.116 / 60))
    assert (fix.quality, fix.satellites, fix.hdop) == (1, 8, 1.2)
    assert fix.accuracy_m == round(1.2 * GGA_UERE_M, 1)
    south_west = parse_gga(_gga("GNGGA,0,3352.128,S,15112.558,W,2,,,,,,,,"))
    assert isinstance(south_west, GgaFix)
    assert south_west.lat < 0 and south_west.lon < 0 and south_west.accuracy_m is None
    # Without a checksum (it is optional as SCAIP carries the sentence).
    assert isinstance(parse_gga(GGA.split("*")[0]), GgaFix)


@pytest.mark.parametrize("text", [
    GGA[:-2] + "00",  # wrong checksum
    _gga("GPGGA,102537.00,5919.758,N,01804.116,E,0,00,,,,,,,"),  # no fix
    _gga("GPRMC,102537.00,A,5919.758,N,01804.116,E,,,"),  # not GGA
    _gga("GPGGA,102537.00,5960.000,N,01804.116,E,1,08,1.2,,,,,,"),  # 60 minutes
    _gga("GPGGA,102537.00,5919.758,X,01804.116,E,1,08,1.2,,,,,,"),  # no hemisphere
    "$GPGGA," + "1," * 50,  # too long
    "$GPGGA,ä",
])
def test_bad_gga_says_why(text: str) -> None:
    assert isinstance(parse_gga(text), str)


def test_lge_prefers_geo_and_takes_accuracy_from_gga() -> None:
    parsed = parse_lge("59.3293,18.0686", "2024-03-18T11:25:37+01", GGA)
    assert parsed.problems == ()
    assert parsed.position == Position(59.3293, 18.0686, 6.0, 1710757537.0,
                                       PositionSource.SCAIP_GEO)


def test_lge_falls_back_to_gga_and_keeps_what_it_can() -> None:
    parsed = parse_lge("garbage", "not a time", GGA)
    assert parsed.position is not None
    assert parsed.position.source is PositionSource.SCAIP_GGA
    assert parsed.position.fixed_at is None
    assert len(parsed.problems) == 2
    assert parse_lge(None, None, None) == parse_lge("", "", "")
    assert parse_lge(None, "2024-03-18T11:25:37+01", None).position is None


@settings(max_examples=300)
@given(st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.none(), st.text(max_size=40)),
       st.one_of(st.none(), st.text(max_size=90)))
def test_lge_never_raises_and_positions_are_in_range(
    geo: str | None, tim: str | None, gga: str | None
) -> None:
    parsed = parse_lge(geo, tim, gga)
    if parsed.position is not None:
        assert -90 <= parsed.position.lat <= 90 and -180 <= parsed.position.lon <= 180
    else:
        assert parsed.problems


@settings(max_examples=200)
@given(st.floats(-90, 90), st.floats(-180, 180))
def test_geo_round_trips(lat: float, lon: float) -> None:
    assert parse_geo(f"{lat:.6f},{lon:.6f}") == pytest.approx((lat, lon), abs=1e-6)
