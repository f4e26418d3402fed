"""Reply codes: the short code an SMS names its alarm by, so that a reply acts on that alarm only.

A code is four characters from an alphabet without the look-alikes (0/O, 1/I/L), with at
least one letter and one digit, so that no ordinary word ("HEJA", "TACK") and no number
("2024") is ever a code. 31**4 shapes minus the all-letter and all-digit ones leave about
640,000 codes: with a few hundred alarms open, a mistyped code almost never names another
open alarm (and the confirmation SMS names the alarm it acted on).

The core assigns the code when it first texts about an alarm and journals it, so replay
gives every alarm the same code. ``assign`` is deterministic: the first candidate derived
from the alarm id that no other open alarm uses.
"""

from __future__ import annotations

import hashlib
from collections.abc import Container

ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
DIGITS = frozenset("23456789")
CODE_LENGTH = 4
# Candidates tried before giving up. With fewer codes in use than a tenth of the space the
# chance of needing even ten is negligible; the bound only keeps a bug from spinning.
MAX_CANDIDATES = 10_000


def candidate(alarm_id: str, salt: int) -> str:
    """The ``salt``-th code shape derived from ``alarm_id`` (it may lack a letter or digit)."""
    digest = hashlib.sha256(f"{alarm_id}#{salt}".encode()).digest()
    number = int.from_bytes(digest[:8], "big")
    chars = []
    for _ in range(CODE_LENGTH):
        number, index = divmod(number, len(ALPHABET))
        chars.append(ALPHABET[index])
    return "".join(chars)


def is_code(text: str) -> bool:
    """Whether ``text`` (already upper-case) has the shape of a reply code."""
    return (
        len(text) == CODE_LENGTH
        and all(c in ALPHABET for c in text)
        and any(c in DIGITS for c in text)
        and any(c not in DIGITS for c in text)
    )


def assign(alarm_id: str, in_use: Container[str]) -> str:
    """The code for ``alarm_id``: its first well-shaped candidate not in ``in_use``."""
    for salt in range(MAX_CANDIDATES):
        code = candidate(alarm_id, salt)
        if is_code(code) and code not in in_use:
            return code
    raise RuntimeError(f"no free reply code for alarm {alarm_id} in {MAX_CANDIDATES} tries")
