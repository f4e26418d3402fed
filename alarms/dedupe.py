"""Which device message is a resend of one already stored: the one rule every store applies.

A device resends an alarm until it hears that it was stored (an MQTT ack, a SCAIP ``<mrs>``,
a serial ACK); any ack can be lost, so a resend must be recognised and answered again, not
stored again. But a ref is not unique for ever: controllers restart their ref counters
(SCAIP refs are 1–16 characters, often a counter from 1), and an alarm wrongly taken for a
resend is an alarm lost. So a message is a resend only when all of these hold:

- the same device and ref were stored before (as an alarm or attached to one),
- with the same *content* (``content_key`` of what the message says: type and device time
  on MQTT, the SCAIP codes), and
- that alarm is still open, or was stored less than ``RESEND_WINDOW_S`` ago.

Anything else is a new alarm. The core (``alarms.core``), the SQLite journal and the
PostgreSQL journal all call ``is_resend`` with what they hold, so a gateway and a journal
shared by several gateways can never disagree about it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

# How long after a message was stored an identical message (same device, ref and content)
# still counts as its resend once its alarm is closed. Devices resend until answered: the
# simulator within seconds (0.5 s doubling to 5 s), SCAIP controllers a few attempts over a
# minute or two (each SIP transaction lasts at most Timer F, 32 s), an MQTT device's queued
# alarm when its link returns. While the alarm is open every identical message is a resend
# whatever its age, so the window only matters after a close, and staff rarely close an
# alarm within minutes. Five minutes covers the retries; it is short because a controller
# that restarted its ref counter may send the very same message again (the same pendant,
# the same status) for a new emergency, and that must not be taken for a resend.
RESEND_WINDOW_S = 5 * 60.0

# Length of a content key in hex characters: 64 bits, ample to tell a device's messages
# with the same ref apart, short enough to store on every claim.
_KEY_HEX = 16


@dataclass(frozen=True, slots=True)
class Claim:
    """A (device, ref) pair as stored: the alarm it went to, its content and when.

    ``content`` is None for claims written before content keys existed; such a claim never
    matches, so an old ref is at worst stored once more, never lost.
    """

    alarm_id: str
    content: str | None
    stored_at: float


def content_key(*parts: object) -> str:
    """A short, stable key of a message's content (what makes a resend the same message)."""
    text = "\x1f".join("" if part is None else str(part) for part in parts)
    return hashlib.blake2b(text.encode(), digest_size=_KEY_HEX // 2).hexdigest()


def is_resend(claim: Claim, content: str, *, alarm_open: bool, now: float) -> bool:
    """Whether a message with ``content`` for an already claimed (device, ref) is a resend."""
    if claim.content is None or content != claim.content:
        return False
    return alarm_open or now - claim.stored_at < RESEND_WINDOW_S
