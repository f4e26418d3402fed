"""Alarm texts: Swedish first (what staff read), then English, separated by `` / ``.

Times are local wall-clock ``HH:MM``; numbers use a decimal comma in Swedish.
"""

from __future__ import annotations

from alarms.sensors.localtime import hhmm


def _sv(value: float, digits: int = 1) -> str:
    return _en(value, digits).replace(".", ",")


def _en(value: float, digits: int = 1) -> str:
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def bed_exit(left_ms: int, minutes: int, tz: str) -> str:
    """Left bed at night, not back."""
    t = hhmm(left_ms, tz)
    return (
        f"Sängen lämnad {t}, ej tillbaka på {minutes} min / "
        f"Left bed at {t}, not back within {minutes} min"
    )


def door(opened_ms: int, tz: str) -> str:
    """Exit door opened at night."""
    t = hhmm(opened_ms, tz)
    return f"Ytterdörren öppnad {t} nattetid / Exit door opened at {t} during the night"


def temperature(
    *, low: bool, value: float, limit: float, since_ms: int, minutes: int, tz: str
) -> str:
    """Indoor temperature outside a limit for a while."""
    t = hhmm(since_ms, tz)
    sv_side, en_side = ("under", "below") if low else ("över", "above")
    return (
        f"Inomhustemperatur {_sv(value)} °C, {sv_side} {_sv(limit)} °C sedan {t} "
        f"(mer än {minutes} min) / Indoor temperature {_en(value)} °C, {en_side} "
        f"{_en(limit)} °C since {t} (over {minutes} min)"
    )


def smoke(at_ms: int, tz: str) -> str:
    """Smoke detected."""
    t = hhmm(at_ms, tz)
    return f"Brandvarnare: rök upptäckt {t} / Smoke alarm: smoke detected at {t}"


def water(at_ms: int, tz: str) -> str:
    """Water leak detected."""
    t = hhmm(at_ms, tz)
    return f"Vattenläcka upptäckt {t} / Water leak detected at {t}"


def no_motion_morning(by_ms: int, last_ms: int | None, tz: str) -> str:
    """No motion in the morning by the configured time."""
    by = hhmm(by_ms, tz)
    if last_ms is None:
        return f"Ingen rörelse i morse före {by} / No motion this morning by {by}"
    last = hhmm(last_ms, tz)
    return (
        f"Ingen rörelse i morse före {by} (senast {last}) / "
        f"No motion this morning by {by} (last at {last})"
    )


def no_motion_day(hours: float, since_ms: int, tz: str) -> str:
    """No motion for a number of hours in the day."""
    since = hhmm(since_ms, tz)
    return (
        f"Ingen rörelse på {_sv(hours)} h, sedan {since} / "
        f"No motion for {_en(hours)} h, since {since}"
    )


def battery(days_left: float, level: float) -> str:
    """Battery predicted to run out."""
    pct = round(level * 100)
    return (
        f"Batteriet beräknas ta slut om {_sv(days_left)} dygn (nu {pct} %) / "
        f"Battery predicted empty in {_en(days_left)} days (now {pct}%)"
    )


def fall(at_ms: int, peak_g: float, angle_deg: float, tz: str) -> str:
    """Possible fall."""
    t = hhmm(at_ms, tz)
    angle = round(angle_deg)
    return (
        f"Möjligt fall {t}: stöt {_sv(peak_g)} g, lägesändring {angle}°, därefter stilla / "
        f"Possible fall at {t}: impact {_en(peak_g)} g, orientation change {angle}°, then still"
    )
