"""Close causes (orsak): the code list an alarm is closed with.

Causes feed follow-up and statistics ("how many false alarms did team north have"), so
free text is refused: one typo makes a new category. Matching forgives what people type on
a phone (case, surrounding space, a hyphen for the en dash) and stores the canonical text.
"""

from __future__ import annotations

import re

DEFAULT_CLOSE_CAUSES: tuple[str, ...] = (
    "hjälp given",
    "fall – hjälpt upp",
    "felaktigt larm",
    "tekniskt fel",
    "ingen åtgärd",
)

# Written by the gateway when the fault behind a technical alarm is gone (TechnicalCleared),
# and allowed for staff closing a technical alarm by hand.
RESTORED_CAUSE = "återställd / restored"
# The gateway closes a test alarm (provlarm) that passed every hop with this cause.
TEST_PASSED_CAUSE = "provlarm genomfört / test passed"
# ... and one that did not pass in time with this one (the note says why). Closed, it leaves
# the care staff's list: the failure is a technician's technical alarm, not a care task.
TEST_FAILED_CAUSE = "provlarm misslyckat / test failed"

_DASHES = re.compile(r"\s*[-‐‑‒–—]\s*")  # hyphen-minus, hyphens, figure/en/em dash
_SPACE = re.compile(r"\s+")


def _key(text: str) -> str:
    return _SPACE.sub(" ", _DASHES.sub(" – ", text.strip())).casefold()


def match_cause(text: str, allowed: tuple[str, ...]) -> str | None:
    """The canonical entry of ``allowed`` that ``text`` names, or None."""
    key = _key(text)
    for cause in allowed:
        if _key(cause) == key:
            return cause
    return None
