"""The kinds of once-only work in a cluster: each is done by the holder of its lease.

A lone gateway does all of them; in a cluster (``gateway.cluster``) every gateway claims
every name and ``Gateway.acts(name)`` says whether it does that work right now.
"""

from __future__ import annotations

ESCALATION = "escalation"  # escalation ladder, reminders, alarm-centre retries (ticks)
SUPERVISION = "supervision"  # offline/online technical alarms for devices
STAFFWATCH = "staffwatch"  # undelivered alarms, teams with nobody connected
PROVLARM = "provlarm"  # the daily test alarms
DUTIES = (ESCALATION, SUPERVISION, STAFFWATCH, PROVLARM)
