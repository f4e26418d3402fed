"""Identifiers the gateway mints."""

from __future__ import annotations

import time
import uuid


def new_alarm_id() -> str:
    """A fresh, time-ordered alarm id (hex milliseconds, then randomness)."""
    return f"{int(time.time() * 1000):013x}-{uuid.uuid4().hex[:12]}"
