"""Positions from SCAIP's ``<lge>`` (``geo``, ``tim``, ``gga``): pure parsing, never raises.

A mobile social alarm (a GPS pendant or phone) reports where the person is in the ``<lge>``
element of its ``<mrq>``. The SCAIP message model (SS 91100 / CLC/TS 50134-9, as published
in the XML schema bindings of public SCAIP implementations, see docs/scaip.md) spells it::

    <lge>
      <geo>59.329300,18.068600</geo>        WGS 84 latitude,longitude in decimal degrees
      <tim>2024-03-18T11:25:37+01</tim>      time of the fix, ISO 8601 with a UTC offset
      <gga>$GPGGA,102537.00,5919.758,N,...</gga>   optional NMEA 0183 GGA sentence
    </lge>

``geo`` gives the position; ``gga`` adds fix quality and HDOP, from which the accuracy is
estimated, and is the position when ``geo`` is missing or unreadable. A part that cannot be
read is reported with a reason; the caller decides (the SCAIP codec keeps the alarm and
drops only the position: a position must never cost an alarm).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

from alarms.model import Position, PositionSource

# Schema lengths: geo is [0-9.,]{1,23}; tim is 22 characters ("YYYY-MM-DDThh:mm:ss+hh");
# gga is an NMEA sentence of at most 82 characters. We read a little more than the schema
# allows where it costs nothing (a minus sign, "+hh:mm" and "Z" offsets) and nothing longer.
MAX_GEO = 32
MAX_TIM = 32
MAX_GGA = 82

# An accuracy radius from HDOP: horizontal error ~ HDOP x the user equivalent range error.
# 5 m is the usual figure for a single-frequency receiver without corrections; the result is
# an estimate to show staff how far to trust the point, not a guarantee.
GGA_UERE_M = 5.0

_NUMBER = r"-?\d{1,3}(?:\.\d{1,12})?"
_GEO = re.compile(rf"^({_NUMBER}),({_NUMBER})$")
_TIM = re.compile(
    r"^\d{4}-?\d{2}-?\d{2}T\d{2}:?\d{2}:?\d{2}(?:\.\d{1,6})?(?:Z|[+-]\d{2}(?::?\d{2})?)$"
)
_GGA_TALKER = re.compile(r"^\$[A-Z]{2}GGA$")


@dataclass(frozen=True, slots=True)
class GgaFix:
    """What a GGA sentence says: position, fix quality, satellites and HDOP."""

    lat: float
    lon: float
    quality: int
    satellites: int | None
    hdop: float | None

    @property
    def accuracy_m(self) -> float | None:
        """The estimated horizontal accuracy (``GGA_UERE_M`` x HDOP), if HDOP was given."""
        return None if self.hdop is None else round(self.hdop * GGA_UERE_M, 1)


@dataclass(frozen=True, slots=True)
class PositionParse:
    """The outcome of reading an ``<lge>``: a position, or None with the reasons why not."""

    position: Position | None
    problems: tuple[str, ...] = ()


def parse_geo(text: str) -> tuple[float, float] | str:
    """``lat,lon`` in decimal degrees, or the reason it is not one."""
    if len(text) > MAX_GEO:
        return f"geo longer than {MAX_GEO} characters"
    match = _GEO.match(text)
    if match is None:
        return "geo is not 'latitude,longitude' in decimal degrees"
    lat, lon = float(match.group(1)), float(match.group(2))
    if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
        return "geo out of range"
    return lat, lon


def parse_tim(text: str) -> float | str:
    """The time of a fix as epoch seconds, or the reason it is not one. An offset is required:
    a local time without one could be an hour off either way."""
    if len(text) > MAX_TIM or _TIM.match(text) is None:
        return "tim is not an ISO 8601 time with a UTC offset"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return "tim is not a valid date and time"
    if moment.tzinfo is None:  # pragma: no cover - the pattern requires an offset
        return "tim has no UTC offset"
    return moment.timestamp()


def _nmea_checksum_ok(sentence: str) -> bool:
    body, star, given = sentence[1:].partition("*")
    if not star:
        return True  # the checksum is optional in GGA as SCAIP carries it
    if not re.fullmatch(r"[0-9A-Fa-f]{2}", given):
        return False
    computed = 0
    for char in body:
        computed ^= ord(char)
    return computed == int(given, 16)


def _nmea_degrees(value: str, hemisphere: str, degree_digits: int) -> float | None:
    if not re.fullmatch(rf"\d{{{degree_digits}}}\d{{2}}(?:\.\d{{1,8}})?", value):
        return None
    degrees = int(value[:degree_digits])
    minutes = float(value[degree_digits:])
    if minutes >= 60.0:
        return None
    result = degrees + minutes / 60.0
    limit = 90.0 if degree_digits == 2 else 180.0
    if result > limit:
        return None
    if hemisphere in ("S", "W"):
        return -result
    return result if hemisphere in ("N", "E") else None


def parse_gga(text: str) -> GgaFix | str:
    """An NMEA GGA sentence, or the reason it is not a usable fix."""
    if len(text) > MAX_GGA or not text.isascii():
        return f"gga longer than {MAX_GGA} characters or not ASCII"
    if not _nmea_checksum_ok(text):
        return "gga checksum does not match"
    fields = text.split("*", 1)[0].split(",")
    if len(fields) < 9 or _GGA_TALKER.match(fields[0]) is None:
        return "gga is not a GGA sentence"
    lat = _nmea_degrees(fields[2], fields[3], 2)
    lon = _nmea_degrees(fields[4], fields[5], 3)
    if not fields[6].isdigit():
        return "gga fix quality is not a number"
    quality = int(fields[6])
    if quality == 0:
        return "gga reports no fix"
    if lat is None or lon is None:
        return "gga position is not ddmm.mmm,N/S,dddmm.mmm,E/W"
    satellites = int(fields[7]) if fields[7].isdigit() and len(fields[7]) <= 2 else None
    hdop: float | None = None
    if re.fullmatch(r"\d{1,3}(?:\.\d{1,3})?", fields[8]):
        hdop = float(fields[8])
    return GgaFix(lat, lon, quality, satellites, hdop)


def parse_lge(geo: str | None, tim: str | None, gga: str | None) -> PositionParse:
    """Combine the parts of an ``<lge>`` into one position (see the module doc)."""
    problems: list[str] = []
    fixed_at: float | None = None
    if tim:
        when = parse_tim(tim)
        if isinstance(when, str):
            problems.append(when)
        else:
            fixed_at = when
    fix: GgaFix | None = None
    if gga:
        parsed_gga = parse_gga(gga)
        if isinstance(parsed_gga, str):
            problems.append(parsed_gga)
        else:
            fix = parsed_gga
    accuracy = fix.accuracy_m if fix is not None else None
    if geo:
        parsed_geo = parse_geo(geo)
        if isinstance(parsed_geo, str):
            problems.append(parsed_geo)
        else:
            lat, lon = parsed_geo
            position = Position(lat, lon, accuracy, fixed_at, PositionSource.SCAIP_GEO)
            return PositionParse(position, tuple(problems))
    elif not gga:
        problems.append("lge without geo or gga")
    if fix is not None:
        position = Position(fix.lat, fix.lon, accuracy, fixed_at, PositionSource.SCAIP_GGA)
        return PositionParse(position, tuple(problems))
    return PositionParse(None, tuple(problems))

