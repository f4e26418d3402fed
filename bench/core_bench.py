"""Alarm core decisions per second, in-process: ``AlarmCore.decide`` + ``apply_all``.

    .venv/bin/python bench/core_bench.py [--alarms 20000] [--teams 20] [--staff-per-team 5]

Phases on one core, the way the gateway drives it (decide, then apply the records, which
the gateway does after the journal commit); each device has its own recipient (no attaching):

1. steady state: a new alarm, then receipt, accept, on site and close, then the next alarm —
   the open set stays small, as in a city with tens of open alarms;
2. resends: every (device, ref) again — the dedup path a resending device hits;
3. pile-up: ``--pile`` new alarms that nobody handles, all left open; the rate of the first
   and the last tenth shows how the cost per alarm grows with the open set.

The directory uses the gateway's recommended team policy (attach repeats, escalation ladder
to the other teams), as ``OrgStore.directory`` builds it. No I/O. Prints JSON, then a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alarms.causes import DEFAULT_CLOSE_CAUSES
from alarms.core import AlarmCore
from alarms.directory import Directory, Recipient, Staff
from alarms.escalation import RECOMMENDED_POLICY
from alarms.events import (
    AcceptRequested,
    AlarmReceived,
    CloseRequested,
    Event,
    OnSiteRequested,
    ReceiptConfirmed,
)
from alarms.model import AlarmType

T0 = 1_718_000_000.0


def directory(alarms: int, teams: int, staff_per_team: int) -> Directory:
    """One device per recipient, recipients spread over teams, staff on duty in each team."""
    team_ids = [f"team-{t}" for t in range(teams)]
    policies = {
        t: dataclasses.replace(RECOMMENDED_POLICY,
                               next_level_teams=tuple(o for o in team_ids if o != t))
        for t in team_ids
    }
    return Directory(
        default_policy=RECOMMENDED_POLICY,
        policies=policies,
        device_recipient={f"dev-{n:06d}": f"rec-{n:06d}" for n in range(alarms)},
        recipients={f"rec-{n:06d}": Recipient(f"rec-{n:06d}", team_ids[n % teams])
                    for n in range(alarms)},
        staff={f"staff-{t}-{s}": Staff(f"staff-{t}-{s}", frozenset({f"team-{t}"}))
               for t in range(teams) for s in range(staff_per_team)},
        device_types={f"dev-{n:06d}": "alarm_unit" for n in range(alarms)},
    )


def _run(core: AlarmCore, events: list[Event], start: float) -> dict[str, list[float]]:
    """Decide and apply each event; per event class: [count, seconds, records, refusals]."""
    out: dict[str, list[float]] = {}
    clock = time.perf_counter
    for n, event in enumerate(events):
        began = clock()
        decision = core.decide(event, start + n * 1e-3)
        if decision.refusal is None:
            core.apply_all(decision.records)
        took = clock() - began
        row = out.setdefault(type(event).__name__, [0, 0.0, 0, 0])
        row[0] += 1
        row[1] += took
        row[2] += len(decision.records)
        row[3] += decision.refusal is not None
    return out


def _rate(row: list[float]) -> dict[str, Any]:
    return {"events": int(row[0]), "seconds": round(row[1], 4),
            "per_s": round(row[0] / row[1]) if row[1] else None,
            "records": int(row[2]), "refused": int(row[3])}


def _alarm(n: int, tag: str = "") -> AlarmReceived:
    return AlarmReceived(f"dev-{n:06d}", f"ref{tag}-{n}", AlarmType.MANUAL,
                         int(T0 * 1000) + n, f"alarm{tag}-{n:08d}")


def _staff(alarm_id: str, n: int, teams: int, per_team: int) -> list[Event]:
    staff_id = f"staff-{n % teams}-{n % per_team}"
    return [ReceiptConfirmed(alarm_id, staff_id), AcceptRequested(alarm_id, staff_id),
            OnSiteRequested(alarm_id, staff_id),
            CloseRequested(alarm_id, staff_id, DEFAULT_CLOSE_CAUSES[0])]


def bench(alarms: int, pile: int, teams: int, staff_per_team: int) -> dict[str, Any]:
    """Run the phases; rates are decide+apply per second of core time."""
    core = AlarmCore(directory(max(alarms, pile), teams, staff_per_team), track_presence=True)
    # 1. steady state: each alarm goes through its whole life before the next arrives,
    # so the open set stays small (a city has tens of open alarms, not thousands).
    steady: list[Event] = []
    for n in range(alarms):
        alarm = _alarm(n)
        steady += [alarm, *_staff(alarm.new_id, n, teams, staff_per_team)]
    phases = _run(core, steady, T0)
    staff = [0.0, 0.0, 0.0, 0.0]
    for name in ("ReceiptConfirmed", "AcceptRequested", "OnSiteRequested", "CloseRequested"):
        staff = [a + b for a, b in zip(staff, phases[name], strict=True)]
    # 2. resends of stored alarms (dedup).
    resends = _run(core, [_alarm(n) for n in range(alarms)], T0 + 10 * alarms * 1e-3)
    # 3. pile-up: ``pile`` alarms that nobody handles, every one left open.
    tenth = max(1, pile // 10)
    first = _run(core, [_alarm(n, "p") for n in range(tenth)], T0 + 20 * alarms * 1e-3)
    _run(core, [_alarm(n, "p") for n in range(tenth, pile - tenth)], T0 + 30 * alarms * 1e-3)
    last = _run(core, [_alarm(n, "p") for n in range(pile - tenth, pile)],
                T0 + 40 * alarms * 1e-3)
    return {
        "alarms": alarms,
        "pile": pile,
        "teams": teams,
        "staff": teams * staff_per_team,
        "new_alarms": _rate(phases["AlarmReceived"]),
        "staff_actions": _rate(staff),
        "resends": _rate(resends["AlarmReceived"]),
        "pileup_first_tenth": _rate(first["AlarmReceived"]),
        "pileup_last_tenth": _rate(last["AlarmReceived"]),
        "open_after": len(core.open_alarms()),
    }


def table(result: dict[str, Any]) -> str:
    """A markdown table of the rates."""
    rows = ["| core path | events | decisions/s (decide + apply) |", "| --- | --- | --- |"]
    pile = result["pile"]
    for label, key in (
        ("new alarm, steady state (open set small)", "new_alarms"),
        ("staff action (receipt/accept/on site/close)", "staff_actions"),
        ("resend of a stored alarm (dedup)", "resends"),
        (f"new alarm, pile-up: first tenth of {pile:,} left open", "pileup_first_tenth"),
        (f"new alarm, pile-up: last tenth of {pile:,} left open", "pileup_last_tenth"),
    ):
        per_s = result[key]["per_s"]
        rows.append(f"| {label} | {result[key]['events']:,} | {per_s:,} |")
    return "\n".join(rows)


def main() -> None:
    """Parse arguments, run, print JSON and the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--alarms", type=int, default=20_000)
    parser.add_argument("--pile", type=int, default=3_000,
                        help="alarms left open in the pile-up phase")
    parser.add_argument("--teams", type=int, default=20)
    parser.add_argument("--staff-per-team", type=int, default=5)
    args = parser.parse_args()
    result = bench(args.alarms, args.pile, args.teams, args.staff_per_team)
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
