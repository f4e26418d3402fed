"""Which gateway of a cluster evaluates the sensor rules for a device: rendezvous hashing.

Every gateway of a cluster receives every telemetry sample (the telemetry lane does not use
a shared subscription: Mosquitto hands a group's messages out round-robin, not by client,
so one device's samples would be spread over all gateways and no gateway would see the
whole series a rule needs). Each gateway stores what it receives for its own graphs, but
only the device's *owner* runs the sensor rules on it (and writes it to the long-term sink),
so one device's rules run in exactly one place.

The owner is chosen by highest random weight (rendezvous) hashing over the live members:
each member scores ``hash(member, device)``, the highest score owns the device. Pure, no
I/O, the same answer on every gateway that sees the same member set, and when a member
leaves only its own devices move (each to its runner-up); when one joins, it takes only
the devices it now wins.

The live members are the gateways with an unexpired presence row (gateway.cluster); a
gateway that dies is dropped when its row expires, and its devices' rules start again on
their new owners (without the window the dead gateway had built up).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["owner", "weight"]


def weight(member: str, device_id: str) -> int:
    """The member's score for the device: 64 bits of BLAKE2b over both names."""
    digest = hashlib.blake2b(f"{member}\x00{device_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def owner(device_id: str, members: Iterable[str]) -> str | None:
    """The member that owns ``device_id`` (None without members).

    Ties (never in practice with 64-bit scores) go to the smallest member name, so every
    gateway still agrees.
    """
    best: tuple[int, str] | None = None
    for member in members:
        score = weight(member, device_id)
        if best is None or score > best[0] or (score == best[0] and member < best[1]):
            best = (score, member)
    return None if best is None else best[1]
