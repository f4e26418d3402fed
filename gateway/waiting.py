"""Waiting for an event with a deadline, without losing a cancellation.

Every timer loop in the gateway sleeps until its next deadline or until something moves
that deadline (an ``asyncio.Event``). ``asyncio.wait_for`` on Python 3.11 can swallow a
cancellation that races with the awaited event being set (fixed in 3.12 by re-implementing
it on ``asyncio.timeout``); a timer loop that swallows its cancellation never stops, and
shutdown hangs. ``asyncio.timeout`` does not have that race.
"""

from __future__ import annotations

import asyncio


async def wait_set(event: asyncio.Event, seconds: float | None) -> bool:
    """Wait until ``event`` is set (True) or ``seconds`` pass (False; None: never)."""
    try:
        async with asyncio.timeout(seconds):
            await event.wait()
    except TimeoutError:
        return False
    return True
