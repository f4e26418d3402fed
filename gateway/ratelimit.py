"""Log rate limiting: one line per key per interval, with a count of what was suppressed."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable


class LogLimiter:
    """Allows one log line per key per ``interval_s``; counts the rest."""

    def __init__(self, interval_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval_s = interval_s
        self._clock = clock
        self._next: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str) -> bool:
        """Whether to log now for ``key``."""
        now = self._clock()
        if now >= self._next.get(key, 0.0):
            self._next[key] = now + self._interval_s
            return True
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        return False

    def suppressed_note(self, key: str) -> str:
        """`` (N similar suppressed)`` once after an allowed line, then resets."""
        count = self._suppressed.pop(key, 0)
        return f" ({count} similar suppressed)" if count else ""

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: str,
        msg: str,
        *args: object,
        exc_info: BaseException | bool | None = None,
    ) -> bool:
        """Log ``msg`` (lazy ``%s`` arguments) if ``key`` may log now; True if it did.

        The suppressed count is appended to the line, so ``msg`` needs no placeholder for it.
        """
        if not self.allow(key):
            return False
        with_note = msg + "%s"
        logger.log(level, with_note, *args, self.suppressed_note(key), exc_info=exc_info,
                   stacklevel=2)
        return True
