"""Sending SCAIP to an alarm centre (larmcentral), sans-I/O.

The gateway forwards an alarm to a SCAIP alarm centre the way a SCAIP controller would:
a SIP MESSAGE carrying an ``<mrq>``, answered by the centre's ``<mrs>`` (in the body of the
200 OK, or in a MESSAGE of its own after it). This module builds those requests, runs the
RFC 3261 non-INVITE client transaction timers as a pure state machine, judges the answer
(``<mrs>`` ``snu`` or SIP status) and supervises the link, all from events and ``now``;
``gateway/centre_scaip.py`` is the asyncio shell. See docs/scaip.md, "Sending to an alarm
centre".
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

from alarms.model import AlarmType
from devices.scaip import (
    CONTENT_TYPE,
    MAX_REF_LEN,
    MessageType,
    ScaipError,
    ScaipResponse,
    Snu,
    encode_mrq,
)
from devices.sip import build_request

# RFC 3261 §17.1.2.2 timers of a non-INVITE client transaction: Timer E starts at T1 and
# doubles up to T2 (UDP only), Timer F gives up after 64*T1; after a provisional response
# the request is resent every T2. The values every SIP peer expects.
T1 = 0.5
T2 = 4.0


@dataclass(frozen=True, slots=True)
class CentreCode:
    """What an alarm type is called in the ``<mrq>``: device type and status code."""

    dty: str
    stc: str


# Alarm type -> (dty, stc) in the <mrq> to the centre. The codes are the ones
# devices/scaip.py and docs/scaip.md cite: dty 0004 personal trigger and stc 0010 alarm
# (observed in deployed traffic), dty 0023 smoke and 0033 flood detector (public SCAIP
# code lists), stc 0102 test transmission (observed). For the types with no public code
# (fall, bed, door, inactivity, temperature) the gateway reports its alarm unit (dty
# 0002, observed) with an ordinary alarm; a site sets the right codes in
# [escalation.centre_scaip.codes] once the centre's table is known.
DEFAULT_CODES: Mapping[AlarmType, CentreCode] = MappingProxyType({
    # dty from the message model's device-type list (devices/scaip.py, docs/scaip.md): the
    # same table the intake reads, run backwards; stc 0010 "alarm".
    AlarmType.MANUAL: CentreCode("0004", "0010"),  # fixed trigger
    AlarmType.SMOKE: CentreCode("0023", "0010"),  # smoke detector
    AlarmType.WATER: CentreCode("0033", "0010"),  # flood detector
    AlarmType.FALL: CentreCode("0005", "0010"),  # fall detector
    AlarmType.BED_EXIT: CentreCode("0012", "0010"),  # bed monitor
    AlarmType.DOOR: CentreCode("0014", "0010"),  # door sensor
    AlarmType.INACTIVITY: CentreCode("0010", "0010"),  # activity detector
    AlarmType.TEMPERATURE: CentreCode("0020", "0010"),  # environmental monitor
    AlarmType.MEDICATION: CentreCode("0011", "0010"),  # pill dispenser
    AlarmType.TEST: CentreCode("0002", "0102"),  # local unit, test transmission
    AlarmType.TECHNICAL: CentreCode("0031", "0010"),  # system monitor
})

_CODE = re.compile(r"^\d{1,4}$")
_USER = re.compile(r"^[A-Za-z0-9\-_.!~*'()&=+$,;?/]{1,64}$")
_SIP_URI = re.compile(
    r"^(?P<scheme>sips?):(?:(?P<user>[^@;>\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-]+)"
    r"(?::(?P<port>\d{1,5}))?(?P<params>;[^\s>]*)?$"
)


def codes_with(overrides: Mapping[str, Mapping[str, str]]) -> dict[AlarmType, CentreCode]:
    """``DEFAULT_CODES`` with site overrides ``{"fall": {"dty": "0005", "stc": "0010"}}``.

    Raises ValueError naming a bad entry."""
    codes = dict(DEFAULT_CODES)
    for name, value in overrides.items():
        try:
            alarm_type = AlarmType(name)
        except ValueError:
            raise ValueError(f"centre code {name!r} is not an alarm type") from None
        base = codes[alarm_type]
        dty, stc = value.get("dty", base.dty), value.get("stc", base.stc)
        if set(value) - {"dty", "stc"} or not _CODE.match(dty) or not _CODE.match(stc):
            raise ValueError(f"centre code {name!r}: dty and stc must be 1-4 digits")
        codes[alarm_type] = CentreCode(dty, stc)
    return codes


@dataclass(frozen=True, slots=True)
class SipUri:
    """The parts of a ``sip:user@host:port`` URI the sender needs."""

    uri: str
    user: str | None
    host: str
    port: int | None


def parse_sip_uri(uri: str) -> SipUri:
    """Split a SIP URI; raises ValueError if it is not one (configuration, not input)."""
    match = _SIP_URI.match(uri.strip())
    if match is None:
        raise ValueError(f"{uri!r} is not a sip: URI (sip:user@host[:port])")
    port = int(match["port"]) if match["port"] else None
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"{uri!r}: port out of range")
    return SipUri(uri.strip(), match["user"], match["host"].strip("[]"), port)


def valid_user(user: str) -> bool:
    """Whether ``user`` can be the user part of our SIP URI (and a SCAIP cid)."""
    return _USER.match(user) is not None and len(user) <= 64


def centre_ref(alarm_id: str) -> str:
    """The ``<ref>`` for an alarm: 16 hex characters, the same on every attempt.

    The alarm id (26 characters) does not fit SCAIP's 16; a 64-bit digest of it keeps the
    one property that matters: the centre can treat every attempt for one alarm as one.
    """
    return hashlib.blake2b(alarm_id.encode(), digest_size=MAX_REF_LEN // 2).hexdigest()


def alarm_mrq(*, ref: str, cid: str, alarm_type: AlarmType, device_id: str | None,
              codes: Mapping[AlarmType, CentreCode] = DEFAULT_CODES) -> bytes:
    """The ``<mrq>`` (ME) for an alarm. ``device_id`` goes in ``<did>`` when the gateway
    speaks as one controller for many devices (``cid`` is then the gateway's)."""
    code = codes.get(alarm_type, DEFAULT_CODES[AlarmType.MANUAL])
    extra = [("did", device_id)] if device_id else []
    return encode_mrq(ref=ref, cid=cid, dty=code.dty, mty=MessageType.ALARM, stc=code.stc,
                      extra=extra)


def heartbeat_mrq(*, ref: str, cid: str, dty: str = "0002") -> bytes:
    """A ``PI`` (heartbeat) ``<mrq>``: how a SCAIP controller shows its link is alive."""
    return encode_mrq(ref=ref, cid=cid, dty=dty, mty=MessageType.HEARTBEAT)


@dataclass(frozen=True, slots=True)
class Origin:
    """Who we are on the SIP link: our address (Via/From host) and transport."""

    host: str
    port: int
    transport: str  # "UDP", "TCP" or "TLS"


def scaip_message(*, target: SipUri, origin: Origin, from_user: str, body: bytes,
                  call_id: str, branch: str, from_tag: str, cseq: int = 1) -> bytes:
    """A SIP MESSAGE to the centre carrying ``body`` (an ``<mrq>``)."""
    return build_request(
        "MESSAGE", target.uri, via_host=origin.host, via_port=origin.port,
        transport=origin.transport, branch=branch,
        from_uri=f"sip:{from_user}@{_uri_host(origin.host)}", from_tag=from_tag,
        to_uri=target.uri, call_id=call_id, cseq=cseq, body=body, content_type=CONTENT_TYPE,
    )


def options_request(*, target: SipUri, origin: Origin, from_user: str, call_id: str,
                    branch: str, from_tag: str) -> bytes:
    """A SIP OPTIONS "ping": any final answer proves the centre's SIP stack is alive."""
    return build_request(
        "OPTIONS", target.uri, via_host=origin.host, via_port=origin.port,
        transport=origin.transport, branch=branch,
        from_uri=f"sip:{from_user}@{_uri_host(origin.host)}", from_tag=from_tag,
        to_uri=target.uri, call_id=call_id, cseq=1,
    )


def _uri_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


# -- the client transaction -----------------------------------------------------------------


class TxState(StrEnum):
    """RFC 3261 §17.1.2.2 states (Completed is folded into Terminated: we do not need to
    absorb retransmitted final responses, the shell ignores unmatched ones)."""

    TRYING = "trying"
    PROCEEDING = "proceeding"
    TERMINATED = "terminated"


class TxEvent(StrEnum):
    """What the shell must do after a timer fired."""

    RETRANSMIT = "retransmit"
    TIMEOUT = "timeout"


class ClientTransaction:
    """The timers of one non-INVITE client transaction, driven by ``now``.

    ``deadline`` is when to call ``on_timer`` next (None once terminated). On an
    unreliable transport the request is resent at T1, 2T1, 4T1 ... capped at T2 (every T2
    after a provisional response); on a reliable one never. Either way the transaction
    times out 64*T1 after it started (Timer F).
    """

    def __init__(self, *, reliable: bool, now: float, t1: float = T1, t2: float = T2) -> None:
        self.reliable = reliable
        self.t1, self.t2 = t1, t2
        self.state = TxState.TRYING
        self.timeout_at = now + 64 * t1
        self._interval = t1
        self._retransmit_at: float | None = None if reliable else now + t1
        self.retransmissions = 0

    @property
    def deadline(self) -> float | None:
        """The next moment ``on_timer`` has something to do."""
        if self.state is TxState.TERMINATED:
            return None
        if self._retransmit_at is None:
            return self.timeout_at
        return min(self._retransmit_at, self.timeout_at)

    def on_timer(self, now: float) -> TxEvent | None:
        """Timer E or F, if due at ``now``."""
        if self.state is TxState.TERMINATED:
            return None
        if now >= self.timeout_at:
            self.state = TxState.TERMINATED
            return TxEvent.TIMEOUT
        if self._retransmit_at is not None and now >= self._retransmit_at:
            self._interval = (self.t2 if self.state is TxState.PROCEEDING
                              else min(self._interval * 2, self.t2))
            self._retransmit_at = now + self._interval
            self.retransmissions += 1
            return TxEvent.RETRANSMIT
        return None

    def on_response(self, status: int, now: float) -> bool:
        """A response arrived; True when it is final (the transaction is over)."""
        if self.state is TxState.TERMINATED:
            return False
        if status < 200:
            self.state = TxState.PROCEEDING
            if self._retransmit_at is not None:
                self._interval = self.t2
                self._retransmit_at = now + self.t2
            return False
        self.state = TxState.TERMINATED
        return True


# -- judging the centre's answer ------------------------------------------------------------


class Verdict(StrEnum):
    """What the centre's answer means for this delivery."""

    CONFIRMED = "confirmed"  # snu 0: the centre has the alarm
    RETRY = "retry"  # busy, hold, not treated, SIP 408/480/486/5xx: ask again later
    REFUSED = "refused"  # the centre cannot take what we send: a technical alarm
    NO_ANSWER = "no_answer"  # nothing (in time): the link is down


@dataclass(frozen=True, slots=True)
class Outcome:
    """A delivery's result: the verdict, the ``snu`` if any, and why, for logs and alarms."""

    verdict: Verdict
    detail: str
    snu: int | None = None

    @property
    def answered(self) -> bool:
        """Whether the centre answered at all (the link works)."""
        return self.verdict is not Verdict.NO_ANSWER


_RETRY_SNU = frozenset({Snu.HOLD, Snu.NOT_TREATED, Snu.BUSY})
# Statuses that say "not now": the request itself may be fine.
_RETRY_SIP = frozenset({408, 480, 486, 491, 500, 503, 504, 600, 603})


def judge_mrs(mrs: ScaipResponse | ScaipError, ref: str) -> Outcome | None:
    """The verdict of an ``<mrs>``; None when it answers another ``ref`` (not ours)."""
    if isinstance(mrs, ScaipError):
        return Outcome(Verdict.REFUSED, f"unreadable <mrs>: {mrs.detail}")
    if mrs.ref is not None and mrs.ref != ref:
        return None
    if mrs.snu == Snu.OK:
        return Outcome(Verdict.CONFIRMED, "snu 0", mrs.snu)
    try:
        name = Snu(mrs.snu).name.lower()
    except ValueError:
        name = "unknown"
    if mrs.snu in _RETRY_SNU:
        return Outcome(Verdict.RETRY, f"snu {mrs.snu} ({name})", mrs.snu)
    # 1 too long, 2 invalid format, 3 wrong content, 7 mandatory tag missing, or a number
    # the standard does not define: resending the same <mrq> cannot help.
    return Outcome(Verdict.REFUSED, f"snu {mrs.snu} ({name})", mrs.snu)


def judge_status(status: int, reason: str) -> Outcome:
    """The verdict of a final SIP response that carries no ``<mrs>`` (not 2xx)."""
    detail = f"SIP {status} {reason}"[:120]
    if status in _RETRY_SIP:
        return Outcome(Verdict.RETRY, detail)
    return Outcome(Verdict.REFUSED, detail)


# -- link supervision -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LinkChange:
    """The link to the centre went down (``up=False``) or came back."""

    up: bool
    detail: str


class LinkMonitor:
    """Down after ``down_after`` unanswered transactions in a row; up at the next answer.

    Starts "unknown": the first answer reports up too, so that a fault left open by a
    previous run of the gateway is cleared once the centre is heard.
    """

    def __init__(self, down_after: int = 1) -> None:
        if down_after < 1:
            raise ValueError("down_after must be at least 1")
        self._down_after = down_after
        self._failures = 0
        self.up: bool | None = None

    def observe(self, answered: bool, detail: str) -> LinkChange | None:
        """Feed one transaction's result; returns a change to report, if any."""
        if answered:
            self._failures = 0
            was, self.up = self.up, True
            return LinkChange(True, detail) if was is not True else None
        self._failures += 1
        if self._failures >= self._down_after and self.up is not False:
            self.up = False
            return LinkChange(False, detail)
        return None
