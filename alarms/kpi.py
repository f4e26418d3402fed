"""Response-time KPIs: pure functions over alarms.

Every duration counts from the ``stored`` hop, the gateway's own clock: the ``raised`` hop
carries the device's time, which may drift (it is only clamped to within a day). The chain
delay from device to gateway is reported separately as ``to_stored``.

Technical and test alarms are left out by default: they measure the equipment, not the
care, and a night of offline devices would drown the numbers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date
from enum import StrEnum

from alarms.escalation import PRESENCE_DEADLINE_S
from alarms.model import Alarm, AlarmType, Hop
from alarms.roster import Shift, ShiftTimes

# Histogram buckets (seconds) for the Prometheus view, spanning "seen at once" to "the
# 30-minute target missed twice over".
BUCKETS_S: tuple[float, ...] = (5, 15, 30, 60, 120, 180, 300, 600, 900, 1200, 1800, 3600, 7200)

EXCLUDED_TYPES = frozenset({AlarmType.TECHNICAL, AlarmType.TEST})


class Period(StrEnum):
    """Calendar periods in local time."""

    DAY = "day"
    WEEK = "week"
    MONTH = "month"


@dataclass(frozen=True, slots=True)
class ResponseTimes:
    """One alarm's durations (seconds from ``stored``; None for a hop not reached)."""

    alarm_id: str
    team_id: str | None
    type: AlarmType
    stored_at: float
    shift: Shift
    period: str
    to_stored: float
    to_delivered: float | None
    to_accepted: float | None
    to_on_site: float | None
    to_closed: float | None
    open: bool = False


def period_key(local_date_iso: str, period: Period) -> str:
    """``2026-03-29`` as the key of its day, ISO week (``2026-W13``) or month (``2026-03``)."""
    day = date.fromisoformat(local_date_iso)
    if period is Period.DAY:
        return day.isoformat()
    if period is Period.WEEK:
        year, week, _ = day.isocalendar()
        return f"{year}-W{week:02d}"
    return f"{day.year}-{day.month:02d}"


def response_times(
    alarm: Alarm, times: ShiftTimes | None = None, period: Period = Period.DAY
) -> ResponseTimes:
    """The durations of one alarm, with the shift and local period it was stored in."""
    times = times or ShiftTimes()
    stored = alarm.at(Hop.STORED)
    if stored is None:
        stored = alarm.hops[0].at

    def since(hop: Hop) -> float | None:
        at = alarm.at(hop)
        return None if at is None else at - stored

    return ResponseTimes(
        alarm_id=alarm.id,
        team_id=alarm.team_id,
        type=alarm.type,
        stored_at=stored,
        shift=times.slot_at(stored).shift,
        period=period_key(times.local(stored).date().isoformat(), period),
        to_stored=stored - alarm.hops[0].at,
        to_delivered=since(Hop.DELIVERED),
        to_accepted=since(Hop.ACCEPTED),
        to_on_site=since(Hop.ON_SITE),
        to_closed=since(Hop.CLOSED),
        open=alarm.state == "open",
    )


@dataclass(frozen=True, slots=True)
class Stats:
    """Summary of one duration over a group of alarms."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    max: float | None

    @staticmethod
    def of(values: Iterable[float]) -> Stats:
        """Nearest-rank percentiles: every reported value is one that really occurred."""
        ordered = sorted(values)
        if not ordered:
            return Stats(0, None, None, None, None)

        def rank(q: float) -> float:
            return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]

        return Stats(len(ordered), sum(ordered) / len(ordered), rank(0.5), rank(0.9), ordered[-1])


@dataclass(frozen=True, slots=True)
class KpiRow:
    """KPIs of one group. Key fields not grouped by are None."""

    team_id: str | None
    shift: Shift | None
    period: str | None
    alarms: int
    delivered: Stats
    accepted: Stats
    on_site: Stats
    closed: Stats
    # Alarms with staff on site within the target, and their share of the alarms that
    # could be judged: an alarm never reached on site counts as missed once the target time
    # has passed, and is left out while it still has time.
    on_site_within_target: int
    on_site_share: float | None
    # What the share is made of, so that nobody reads "100 %" without its n: ``judged`` is
    # the n (within + missed); ``missed`` counts alarms on site late and alarms not on site
    # once the target time has passed, open ones included (``missed_open`` of them are still
    # open: the ones to act on now); ``pending`` are not on site yet but still have time.
    on_site_judged: int = 0
    on_site_missed: int = 0
    on_site_missed_open: int = 0
    on_site_pending: int = 0


def summarize(
    alarms: Iterable[Alarm],
    *,
    by: frozenset[str] = frozenset({"team"}),
    period: Period = Period.DAY,
    start: float | None = None,
    end: float | None = None,
    times: ShiftTimes | None = None,
    target_s: float = PRESENCE_DEADLINE_S,
    exclude: frozenset[AlarmType] = EXCLUDED_TYPES,
    now: float | None = None,
) -> list[KpiRow]:
    """KPIs grouped by any of ``team``, ``shift``, ``period``; stored in [start, end).

    ``now`` keeps alarms that still have time to reach the target out of the share.
    """
    unknown = by - {"team", "shift", "period"}
    if unknown:
        raise ValueError(f"cannot group by {sorted(unknown)}")
    groups: dict[tuple[str | None, Shift | None, str | None], list[ResponseTimes]] = {}
    for alarm in alarms:
        if alarm.type in exclude or not alarm.hops:
            continue
        rt = response_times(alarm, times, period)
        too_early = start is not None and rt.stored_at < start
        if too_early or (end is not None and rt.stored_at >= end):
            continue
        key = (
            rt.team_id if "team" in by else None,
            rt.shift if "shift" in by else None,
            rt.period if "period" in by else None,
        )
        groups.setdefault(key, []).append(rt)
    rows = []
    for (team_id, shift, key_period), members in groups.items():
        within = sum(1 for m in members if m.to_on_site is not None and m.to_on_site <= target_s)
        judged_members = [
            m for m in members
            if m.to_on_site is not None or now is None or now - m.stored_at > target_s
        ]
        judged = len(judged_members)
        missed_open = sum(1 for m in judged_members if m.open and m.to_on_site is None)
        rows.append(
            KpiRow(
                team_id=team_id,
                shift=shift,
                period=key_period,
                alarms=len(members),
                delivered=Stats.of(m.to_delivered for m in members if m.to_delivered is not None),
                accepted=Stats.of(m.to_accepted for m in members if m.to_accepted is not None),
                on_site=Stats.of(m.to_on_site for m in members if m.to_on_site is not None),
                closed=Stats.of(m.to_closed for m in members if m.to_closed is not None),
                on_site_within_target=within,
                on_site_share=within / judged if judged else None,
                on_site_judged=judged,
                on_site_missed=judged - within,
                on_site_missed_open=missed_open,
                on_site_pending=len(members) - judged,
            )
        )
    rows.sort(key=lambda r: (r.team_id or "", r.shift or "", r.period or ""))
    return rows
