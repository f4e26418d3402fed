"""A sans-I/O SIA DC-09 codec: frames in, typed messages and ACK/NAK/DUH bytes out.

Alarm transmitters (premises equipment, "PE") report to a receiving centre ("CSR") over
TCP or UDP with ANSI/SIA DC-09: one line per event,

    <LF><crc><0LLL>"<id>"<seq>R<rcvr>L<line>#<acct>[<data>]<timestamp><CR>

where ``id`` is ``SIA-DCS`` (SIA DC-03 event codes), ``ADM-CID`` (Ademco Contact ID) or
``NULL`` (a link test: our heartbeat), a leading ``*`` marks data encrypted with the
account's AES key (CBC, zero IV, hex), ``crc`` is CRC-16/ARC over everything from the
first quote, and ``0LLL`` that text's length in hex. The receiver answers ``ACK`` (stored),
``NAK`` (retry; carries our clock so the transmitter can correct its own) or ``DUH``
(cannot be processed: unknown account, wrong key, unknown code). See docs/dc09.md.

Frame, CRC and content parsing and the decryption are the maintained ``pysiaalarm``
library's (``SIAEvent.from_line`` and its DC-03 code table). Its own servers do not fit
this gateway: they ACK before the user callback runs, so an alarm would be acknowledged
before it is stored (docs/dc09.md). Everything else here is pure: the checks that need a
clock take ``now``, the answers are built from the message and ``now``, and nothing raises
on input. The encoder (``encode_event``) is an independent implementation used by the
simulator and the tests, so the two sides check each other.
"""

from __future__ import annotations

import re
import secrets
import string
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from pysiaalarm.account import SIAAccount
from pysiaalarm.data.sia_codes import SIA_CODES
from pysiaalarm.errors import EventFormatError, NoAccountError
from pysiaalarm.event import SIAEvent
from pysiaalarm.utils.enums import MessageTypes
from pysiaalarm.utils.regexes import MAIN_MATCHER, OH_MATCHER

from alarms.model import AlarmType
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    StatusMessage,
    valid_id,
)

# The length field is "0LLL": at most 0xFFF characters between the CRC/length header and
# the CR. A frame is that plus the 8 header characters and LF/CR. Real messages are
# 60-200 bytes; the spec's own limit bounds what one peer can make us buffer or parse.
MAX_FRAME = 0xFFF + 8 + 2

# DC-09 timestamp window: a message stamped more than 40 s before or 20 s after the
# receiver's clock fails the timestamp test and is answered NAK (with our time), which
# defeats replayed encrypted messages. pysiaalarm's default band is the same (40, 20).
TIME_BEHIND_S = 40.0
TIME_AHEAD_S = 20.0

# A transmitter that got no ACK resends the same event with the same sequence number (and
# a fresh timestamp and padding when encrypted). Within this window such a copy gets the
# first copy's alarm ref, so the journal stores it once; sequence numbers wrap at 9999 and
# restart after a power cycle, so a later event with a reused number is a new alarm.
RESEND_WINDOW_S = 600.0
_REF_MEMORY = 4096

_TIMESTAMP_FORMAT = "%H:%M:%S,%m-%d-%Y"
_ACCOUNT = re.compile(r"^[0-9A-Fa-f]{3,16}$")
_KEY = re.compile(r"^[0-9A-Fa-f]{16}(?:[0-9A-Fa-f]{8}){0,2}$")
# Padding characters: printable, never one of the delimiters "[", "]" or "|".
_PAD_ALPHABET = string.ascii_letters + string.digits


class Dc09Kind(StrEnum):
    """The DC-09 ``id`` token (without the encryption star)."""

    NULL = "NULL"
    SIA = "SIA-DCS"
    CONTACT_ID = "ADM-CID"


class Reply(StrEnum):
    """The answer a transmitter gets."""

    ACK = "ACK"
    NAK = "NAK"
    DUH = "DUH"


class Dc09Reason(StrEnum):
    """Why a frame was refused; also the label of the reject counter."""

    OVERSIZE = "oversize"
    NOT_ASCII = "not_ascii"
    FORMAT = "format"
    UNSUPPORTED = "unsupported"
    LENGTH = "length"
    CRC = "crc"
    UNKNOWN_ACCOUNT = "unknown_account"
    NOT_ENCRYPTED = "not_encrypted"
    NO_KEY = "no_key"
    DECRYPT = "decrypt"
    MISSING_TIMESTAMP = "missing_timestamp"
    TIMESTAMP = "timestamp"
    UNKNOWN_CODE = "unknown_code"


# NAK: the frame may be fine next time (corrupted in transit, clock off): resend.
# DUH: resending the same frame cannot help (configuration): the transmitter reports a
# communication fault or uses its backup path, which is what must happen.
_REPLY_FOR: dict[Dc09Reason, Reply] = {
    Dc09Reason.OVERSIZE: Reply.NAK,
    Dc09Reason.NOT_ASCII: Reply.NAK,
    Dc09Reason.FORMAT: Reply.NAK,
    Dc09Reason.UNSUPPORTED: Reply.DUH,
    Dc09Reason.LENGTH: Reply.NAK,
    Dc09Reason.CRC: Reply.NAK,
    Dc09Reason.UNKNOWN_ACCOUNT: Reply.DUH,
    Dc09Reason.NOT_ENCRYPTED: Reply.DUH,
    Dc09Reason.NO_KEY: Reply.DUH,
    Dc09Reason.DECRYPT: Reply.DUH,
    Dc09Reason.MISSING_TIMESTAMP: Reply.NAK,
    Dc09Reason.TIMESTAMP: Reply.NAK,
    Dc09Reason.UNKNOWN_CODE: Reply.DUH,
}


@dataclass(frozen=True, slots=True)
class Dc09Account:
    """A transmitter account: its id (3-16 hex digits), the device it is, its AES key.

    ``key`` is the key as the transmitter is programmed with it: 16, 24 or 32 hex
    characters, whose ASCII bytes are the AES-128/192/256 key (pysiaalarm's convention,
    and that of the panels it serves). An account with a key accepts encrypted messages
    only. Raises ValueError on a bad id or key (configuration, not input).
    """

    account: str
    device_id: str
    key: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not _ACCOUNT.match(self.account):
            raise ValueError(f"DC-09 account {self.account!r} must be 3-16 hex digits")
        if not valid_id(self.device_id):
            raise ValueError(f"device id {self.device_id!r} is not a valid device id")
        if self.key is not None and not _KEY.match(self.key):
            raise ValueError(f"the key of account {self.account} must be 16, 24 or 32 hex "
                             "characters")
        object.__setattr__(self, "account", self.account.upper())


def accounts_by_id(accounts: list[Dc09Account]) -> Mapping[str, Dc09Account]:
    """Accounts keyed by their (upper-case) id; raises ValueError on a repeated id."""
    out: dict[str, Dc09Account] = {}
    for account in accounts:
        if account.account in out:
            raise ValueError(f"DC-09 account {account.account} is configured twice")
        out[account.account] = account
    return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class ContactId:
    """An Ademco Contact ID event: ``Q EEE GG CCC``."""

    qualifier: int  # 1 new event / opening, 3 restore / closing, 6 still present
    event: int  # e.g. 100 medical, 101 personal emergency, 110 fire
    partition: str
    zone: str


@dataclass(frozen=True, slots=True)
class Dc09Message:
    """A frame that passed every check: what it says, and how to answer it."""

    account: str
    device_id: str
    kind: Dc09Kind
    sequence: str
    receiver: str | None  # "R..." as sent, echoed in the answer
    line: str  # "L..." as sent
    encrypted: bool
    code: str | None = None  # SIA DC-03 event code (SIA-DCS), e.g. "MA"
    area: str | None = None  # SIA "ri" (area/partition)
    zone: str | None = None  # SIA zone/point (the text after the code), or the CID zone
    contact_id: ContactId | None = None
    timestamp: float | None = None  # epoch seconds (DC-09 timestamps are UTC)
    extended: tuple[tuple[str, str], ...] = ()  # x-data blocks: (identifier, value)


@dataclass(frozen=True, slots=True)
class Dc09Refusal:
    """A frame that was refused; ``reply`` is what to answer (``encode_refusal``)."""

    reason: Dc09Reason
    detail: str
    reply: Reply
    account: str | None = None
    sequence: str | None = None
    receiver: str | None = None
    line: str | None = None


class _Refused(Exception):
    def __init__(self, reason: Dc09Reason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- CRC and framing -----------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/ARC (polynomial 0x8005 reflected, initial 0), as SIA DC-07/DC-09 use."""
    crc = 0
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def _frame(body: str) -> bytes:
    """``body`` (from the first quote on) with LF, CRC, length and CR around it."""
    raw = body.encode("ascii")
    return b"\n" + f"{crc16(raw):04X}{len(raw):04X}".encode() + raw + b"\r"


@dataclass(slots=True)
class Dc09StreamReader:
    """Frames DC-09 messages out of a TCP byte stream: ``feed(bytes) -> frames``.

    A frame ends at CR (the LF before it is optional, so a transmitter that omits it is
    still understood). A run of more than ``MAX_FRAME`` bytes without a CR is dropped as
    one oversize frame, so the buffer never holds more than that plus one read.
    """

    _buffer: bytearray = field(default_factory=bytearray)
    _discarding: bool = False

    def feed(self, data: bytes) -> list[bytes | Dc09Refusal]:
        """Add received bytes; return every frame (or oversize refusal) they complete."""
        self._buffer += data
        out: list[bytes | Dc09Refusal] = []
        while True:
            end = self._buffer.find(b"\r")
            if end < 0:
                if len(self._buffer) > MAX_FRAME:
                    del self._buffer[:]
                    if not self._discarding:
                        out.append(_oversize(MAX_FRAME + 1))
                    self._discarding = True
                return out
            chunk = bytes(self._buffer[: end + 1])
            del self._buffer[: end + 1]
            if self._discarding:
                # The tail of a frame already refused as oversize.
                self._discarding = False
                continue
            if chunk.strip():
                out.append(chunk)

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buffer)


def _oversize(size: int) -> Dc09Refusal:
    return Dc09Refusal(Dc09Reason.OVERSIZE, f"frame of {size} bytes exceeds {MAX_FRAME}",
                       Reply.NAK)


# -- parsing -------------------------------------------------------------------------------


def parse_frame(
    frame: bytes, accounts: Mapping[str, Dc09Account], now: float
) -> Dc09Message | Dc09Refusal:
    """Check and parse one frame (LF/CR optional). Never raises on any input."""
    if len(frame) > MAX_FRAME:
        return _oversize(len(frame))
    try:
        text = frame.decode("ascii").strip()
    except UnicodeDecodeError:
        return Dc09Refusal(Dc09Reason.NOT_ASCII, "frame is not ASCII", Reply.NAK)
    header = MAIN_MATCHER.match(text)
    if header is None:
        if OH_MATCHER.match(text):
            return Dc09Refusal(Dc09Reason.UNSUPPORTED,
                               "Osborne-Hoffman supervision is not DC-09", Reply.DUH)
        return Dc09Refusal(Dc09Reason.FORMAT, f"not a DC-09 frame: {text[:60]!r}", Reply.NAK)
    fields = header.groupdict()
    account = (fields["account"] or "").upper() or None
    context = {
        "account": account,
        "sequence": fields["sequence"],
        "receiver": fields["receiver"],
        "line": fields["line"],
    }
    try:
        return _parse(text, fields, accounts, now)
    except _Refused as exc:
        return Dc09Refusal(exc.reason, exc.detail, _REPLY_FOR[exc.reason], **context)


def _parse(
    text: str, fields: dict[str, Any], accounts: Mapping[str, Dc09Account], now: float
) -> Dc09Message:
    body = text[8:]
    if int(fields["length"], 16) != len(body):
        raise _Refused(Dc09Reason.LENGTH,
                       f"length field {fields['length']} but {len(body):04X} characters")
    crc = f"{crc16(body.encode('ascii')):04X}"
    if fields["crc"].upper() != crc:
        raise _Refused(Dc09Reason.CRC, f"CRC {fields['crc']} but computed {crc}")
    encrypted = bool(fields["encrypted_flag"])
    header_account = (fields["account"] or "").upper() or None
    if encrypted and header_account is None:
        raise _Refused(Dc09Reason.FORMAT, "encrypted frame without #account")
    configured = accounts.get(header_account) if header_account else None
    if header_account is not None and configured is None:
        raise _Refused(Dc09Reason.UNKNOWN_ACCOUNT, f"account {header_account} is not configured")
    if configured is not None:
        if encrypted and configured.key is None:
            raise _Refused(Dc09Reason.NO_KEY, f"account {configured.account} has no key")
        if not encrypted and configured.key is not None:
            # Else anyone could send clear-text alarms in the name of an encrypted account.
            raise _Refused(Dc09Reason.NOT_ENCRYPTED,
                           f"account {configured.account} requires encrypted messages")
    event = _sia_event(text, fields["account"], configured, encrypted)
    if configured is None:
        # The account is only in the (clear-text) data block: "...L0[#1234|Nri1/MA001]".
        data_account = (event.account or "").upper()
        configured = accounts.get(data_account)
        if configured is None:
            raise _Refused(Dc09Reason.UNKNOWN_ACCOUNT,
                           f"account {data_account or '(none)'} is not configured")
        if configured.key is not None:
            raise _Refused(Dc09Reason.NOT_ENCRYPTED,
                           f"account {configured.account} requires encrypted messages")
    timestamp = _timestamp(event)
    if timestamp is None and encrypted:
        raise _Refused(Dc09Reason.MISSING_TIMESTAMP, "an encrypted message must carry its time")
    if timestamp is not None and not now - TIME_BEHIND_S <= timestamp <= now + TIME_AHEAD_S:
        raise _Refused(Dc09Reason.TIMESTAMP,
                       f"timestamp {_stamp(timestamp)} is {timestamp - now:+.0f} s from ours")
    kind = Dc09Kind(event.message_type.value if isinstance(event.message_type, MessageTypes)
                    else str(event.message_type))
    return _message(event, kind, configured, fields, encrypted, timestamp)


def _sia_event(
    text: str, sent_account: str | None, configured: Dc09Account | None, encrypted: bool
) -> SIAEvent:
    # allowed_timeband=None: the timestamp is checked here against the caller's ``now``.
    sia_accounts: dict[str, SIAAccount] = {}
    if configured is not None and sent_account:
        sia_accounts[sent_account] = SIAAccount(
            sent_account, configured.key, allowed_timeband=None
        )
    try:
        return SIAEvent.from_line(text, sia_accounts)
    except NoAccountError:
        raise _Refused(Dc09Reason.NO_KEY, "encrypted message for an account without key") from None
    except EventFormatError as exc:
        if encrypted:
            raise _Refused(Dc09Reason.DECRYPT,
                           "cannot read the data with the account's key") from None
        raise _Refused(Dc09Reason.FORMAT, str(exc)[:120]) from None
    except Exception as exc:  # noqa: BLE001 - a third-party parser on hostile input
        # Odd-length hex, a block that is not a multiple of 16, ...: whatever the
        # library raises on bytes from the network is a refusal, never our exception.
        reason = Dc09Reason.DECRYPT if encrypted else Dc09Reason.FORMAT
        raise _Refused(reason, f"{type(exc).__name__}: {exc}"[:120]) from None


def _timestamp(event: SIAEvent) -> float | None:
    stamp = event.timestamp
    if isinstance(stamp, datetime):
        return stamp.timestamp()
    return None


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime(_TIMESTAMP_FORMAT)


def _message(
    event: SIAEvent,
    kind: Dc09Kind,
    account: Dc09Account,
    fields: dict[str, Any],
    encrypted: bool,
    timestamp: float | None,
) -> Dc09Message:
    extended = tuple(
        (x.identifier, str(x.value)) for x in (event.extended_data or ()) if x.identifier
    )
    common: dict[str, Any] = {
        "account": account.account,
        "device_id": account.device_id,
        "kind": kind,
        "sequence": fields["sequence"],
        "receiver": fields["receiver"],
        "line": fields["line"],
        "encrypted": encrypted,
        "timestamp": timestamp,
        "extended": extended,
    }
    if kind is Dc09Kind.NULL:
        return Dc09Message(**common)
    if kind is Dc09Kind.CONTACT_ID:
        if event.event_qualifier is None or event.event_type is None:
            raise _Refused(Dc09Reason.FORMAT, "Contact ID data without qualifier and event")
        contact_id = ContactId(int(event.event_qualifier), int(event.event_type),
                               event.partition or "00", event.ri or "000")
        return Dc09Message(**common, code=event.code, zone=contact_id.zone,
                           contact_id=contact_id)
    code = (event.code or "").upper()
    if code not in SIA_CODES:
        raise _Refused(Dc09Reason.UNKNOWN_CODE, f"no SIA DC-03 event code {code or '(none)'!r}")
    zone = (event.message or "").strip() or None
    return Dc09Message(**common, code=code, area=event.ri or None, zone=zone)


# -- answers -------------------------------------------------------------------------------

Pad: TypeAlias = Callable[[int], str]


def random_pad(count: int) -> str:
    """``count`` random padding characters (never a delimiter)."""
    return "".join(secrets.choice(_PAD_ALPHABET) for _ in range(count))


def _aes(key: str, plain: str) -> str:
    encryptor = Cipher(algorithms.AES(key.encode("ascii")), modes.CBC(bytes(16))).encryptor()
    return (encryptor.update(plain.encode("ascii")) + encryptor.finalize()).hex().upper()


def _padded(rest: str, pad: Pad) -> str:
    # At least one pad character, and a whole number of AES blocks.
    return pad(16 - len(rest) % 16) + rest


def encode_ack(message: Dc09Message, key: str | None, now: float, pad: Pad = random_pad) -> bytes:
    """The ACK for a stored message; encrypted (with our time) when the message was."""
    head = f"{message.sequence}{message.receiver or ''}{message.line}#{message.account}["
    if not message.encrypted:
        return _frame(f'"ACK"{head}]')
    if key is None:
        raise ValueError("an encrypted message is answered with the account's key")
    return _frame(f'"*ACK"{head}' + _aes(key, _padded(f"|]_{_stamp(now)}", pad)))


def encode_nak(now: float) -> bytes:
    """A NAK: never encrypted, no account; carries our time for the transmitter's clock."""
    return _frame(f'"NAK"0000R0L0A0[]_{_stamp(now)}')


def encode_duh(sequence: str | None, receiver: str | None, line: str | None,
               account: str | None) -> bytes:
    """A DUH for a frame that was read but cannot be processed."""
    return _frame(f'"DUH"{sequence or "0000"}{receiver or ""}{line or "L0"}'
                  f'#{account or "0"}[]')


def encode_refusal(refusal: Dc09Refusal, now: float) -> bytes:
    """The answer to a refused frame: NAK, or DUH when the frame's header was readable."""
    if refusal.reply is Reply.DUH and refusal.sequence is not None:
        return encode_duh(refusal.sequence, refusal.receiver, refusal.line, refusal.account)
    return encode_nak(now)


# -- encoding (the transmitter side: simulator and tests) -----------------------------------


def encode_event(
    *,
    account: str,
    sequence: int,
    kind: Dc09Kind,
    data: str = "",
    key: str | None = None,
    now: float | None = None,
    receiver: str | None = None,
    line: str = "L0",
    extended: str = "",
    pad: Pad = random_pad,
) -> bytes:
    """A transmitter's frame. ``data`` is ``Nri1/MA001`` (SIA-DCS), ``1100 00 001``
    (ADM-CID) or empty (NULL); ``extended`` is raw x-data such as ``[X18.07][Y59.33]``.
    Encrypted frames (``key``) always carry a timestamp (``now``, required then)."""
    if key is not None and now is None:
        raise ValueError("an encrypted frame needs its timestamp (now)")
    stamp = f"_{_stamp(now)}" if now is not None else ""
    star = "*" if key is not None else ""
    head = f'"{star}{kind.value}"{sequence % 10000:04d}{receiver or ""}{line}#{account}['
    inner = f"|{data}]{extended}{stamp}" if kind is not Dc09Kind.NULL else f"]{stamp}"
    if key is None:
        clear = f"#{account}{inner}" if kind is not Dc09Kind.NULL else inner
        return _frame(head + clear)
    return _frame(head + _aes(key, _padded(inner, pad)))


@dataclass(frozen=True, slots=True)
class Answer:
    """An answer as a transmitter reads it (simulator and tests)."""

    reply: Reply
    sequence: str
    account: str | None
    timestamp: float | None
    encrypted: bool


_ANSWER = re.compile(
    r'^(?P<crc>[0-9A-F]{4})(?P<length>[0-9A-F]{4})"(?P<star>\*?)(?P<reply>ACK|NAK|DUH)"'
    r"(?P<seq>\d{4})(?P<rcvr>R[0-9A-F]{1,6})?(?P<line>L[0-9A-F]{1,6})"
    r"(?:#(?P<acct>[0-9A-F]{1,16})|A0)\[(?P<rest>.*)$"
)


def parse_answer(frame: bytes, key: str | None = None) -> Answer | None:
    """Read a receiver's answer, checking CRC and length; None if it is not one."""
    try:
        text = frame.decode("ascii").strip()
    except UnicodeDecodeError:
        return None
    match = _ANSWER.match(text)
    if match is None:
        return None
    body = text[8:]
    if (int(match["length"], 16) != len(body)
            or int(match["crc"], 16) != crc16(body.encode("ascii"))):
        return None
    rest = match["rest"]
    encrypted = bool(match["star"])
    if encrypted:
        if key is None:
            return None
        try:
            decryptor = Cipher(algorithms.AES(key.encode("ascii")),
                               modes.CBC(bytes(16))).decryptor()
            rest = (decryptor.update(bytes.fromhex(rest)) + decryptor.finalize()).decode(
                "ascii", "replace")
        except ValueError:
            return None
    timestamp = None
    stamp = re.search(r"_(\d\d:\d\d:\d\d,\d\d-\d\d-\d{4})$", rest)
    if stamp:
        try:
            timestamp = datetime.strptime(stamp[1], _TIMESTAMP_FORMAT).replace(
                tzinfo=UTC).timestamp()
        except ValueError:
            return None
    return Answer(Reply(match["reply"]), match["seq"], match["acct"], timestamp, encrypted)


# -- mapping to trygg ----------------------------------------------------------------------


class Kind(StrEnum):
    """What a DC-09 event is to the gateway."""

    ALARM = "alarm"
    HEARTBEAT = "heartbeat"
    STATUS = "status"


@dataclass(frozen=True, slots=True)
class Meaning:
    """A DC-09 event in trygg's terms: an alarm of a type, a heartbeat, or a status."""

    kind: Kind
    alarm_type: AlarmType | None = None
    state: str | None = None  # StatusMessage.state
    known: bool = True  # False: a fallback was used; the raw code is logged


def _alarm(alarm_type: AlarmType) -> Meaning:
    return Meaning(Kind.ALARM, alarm_type)


def _status(state: str) -> Meaning:
    return Meaning(Kind.STATUS, state=state)


HEARTBEAT = Meaning(Kind.HEARTBEAT)

# SIA DC-03 event codes (SIA-DCS) that mean something specific to home care. Sources in
# docs/dc09.md. Any other DC-03 code is classified by its kind: a restoral is a status
# "restore", any other "... Alarm" becomes a MANUAL alarm (never drop an alarm), the rest
# a status named after the code.
SIA_TABLE: Mapping[str, Meaning] = MappingProxyType({
    "MA": _alarm(AlarmType.MANUAL),  # medical alarm: emergency assistance request
    "QA": _alarm(AlarmType.MANUAL),  # emergency alarm
    "PA": _alarm(AlarmType.MANUAL),  # panic alarm, manually activated
    "HA": _alarm(AlarmType.MANUAL),  # holdup / duress
    "FA": _alarm(AlarmType.SMOKE),  # fire alarm (smoke detectors report FA)
    "KA": _alarm(AlarmType.SMOKE),  # heat alarm: a fire detector (Contact ID 114)
    "GA": _alarm(AlarmType.SMOKE),  # gas / CO: no gas type; same urgency as fire
    "WA": _alarm(AlarmType.WATER),  # water alarm
    "ZA": _alarm(AlarmType.TEMPERATURE),  # freeze alarm: low temperature at home
    "NA": _alarm(AlarmType.INACTIVITY),  # no activity for a programmed time
    "RX": _alarm(AlarmType.TEST),  # manual test report: the chain is tested
    "RP": HEARTBEAT,  # automatic (periodic) test report
    "TX": HEARTBEAT,  # unspecified communicator test
    "AT": _status("power_failure"),  # AC trouble
    "AR": _status("power_restored"),
    "YP": _status("power_failure"),  # power supply trouble
    "YQ": _status("power_restored"),
    "YT": _status("battery_low"),  # system battery trouble
    "YR": _status("battery_ok"),
    "XT": _status("battery_low"),  # transmitter (wireless device) battery trouble
    "XR": _status("battery_ok"),
    "TA": _status("tamper"),  # enclosure opened: technical, not a care alarm
    "TR": _status("tamper_restored"),
    "BC": _status("cancel"),  # alarm cancelled by an authorised user
    "OC": _status("cancel"),
    "FC": _status("cancel"),
})

# Ademco Contact ID event codes (ADM-CID) on a new event (qualifier 1). On a restore
# (qualifier 3) the status is "restore" unless RESTORE_STATES names another.
CONTACT_ID_TABLE: Mapping[int, Meaning] = MappingProxyType({
    100: _alarm(AlarmType.MANUAL),  # medical
    101: _alarm(AlarmType.MANUAL),  # personal emergency (pendant)
    102: _alarm(AlarmType.INACTIVITY),  # fail to report in (check-in timer)
    110: _alarm(AlarmType.SMOKE),  # fire
    111: _alarm(AlarmType.SMOKE),  # smoke
    112: _alarm(AlarmType.SMOKE),  # combustion
    114: _alarm(AlarmType.SMOKE),  # heat
    117: _alarm(AlarmType.SMOKE),  # flame
    151: _alarm(AlarmType.SMOKE),  # gas detected
    162: _alarm(AlarmType.SMOKE),  # carbon monoxide
    154: _alarm(AlarmType.WATER),  # water leakage
    113: _alarm(AlarmType.WATER),  # water flow
    158: _alarm(AlarmType.TEMPERATURE),  # high temperature
    159: _alarm(AlarmType.TEMPERATURE),  # low temperature
    120: _alarm(AlarmType.MANUAL),  # panic
    121: _alarm(AlarmType.MANUAL),  # duress
    122: _alarm(AlarmType.MANUAL),  # silent panic
    123: _alarm(AlarmType.MANUAL),  # audible panic
    601: _alarm(AlarmType.TEST),  # manual trigger test report
    602: HEARTBEAT,  # periodic test report
    301: _status("power_failure"),  # AC loss
    302: _status("battery_low"),  # low system battery
    384: _status("battery_low"),  # RF low battery
    137: _status("tamper"),  # tamper
    144: _status("tamper"),  # sensor tamper
    145: _status("tamper"),  # expansion module tamper
    406: _status("cancel"),  # cancel (user)
})
RESTORE_STATES: Mapping[int, str] = MappingProxyType({
    301: "power_restored",
    302: "battery_ok",
    384: "battery_ok",
    137: "tamper_restored",
    144: "tamper_restored",
    145: "tamper_restored",
})


def classify(
    message: Dc09Message,
    *,
    sia: Mapping[str, Meaning] = SIA_TABLE,
    contact_id: Mapping[int, Meaning] = CONTACT_ID_TABLE,
) -> Meaning:
    """What ``message`` is to the gateway. Both tables are parameters so that a site can
    correct them without a code change (``[dc09] codes``)."""
    if message.kind is Dc09Kind.NULL:
        return HEARTBEAT
    if message.contact_id is not None:
        return _classify_cid(message.contact_id, contact_id)
    code = message.code or ""
    if code in sia:
        return sia[code]
    description = SIA_CODES[code].type if code in SIA_CODES else ""
    if "restor" in description.lower():
        return Meaning(Kind.STATUS, state="restore", known=False)
    if description.endswith("Alarm"):
        # A DC-03 alarm this table does not name (burglary, untyped zone, sprinkler ...):
        # a person may need help, so it is an alarm, never a status.
        return Meaning(Kind.ALARM, AlarmType.MANUAL, known=False)
    return Meaning(Kind.STATUS, state=f"sia_{code}", known=False)


def _classify_cid(cid: ContactId, table: Mapping[int, Meaning]) -> Meaning:
    if cid.qualifier == 3:
        return _status(RESTORE_STATES.get(cid.event, "restore"))
    if cid.qualifier != 1:
        # 6: a condition reported before is still present; not a new alarm.
        return Meaning(Kind.STATUS, state=f"cid_{cid.event}_{cid.qualifier}", known=False)
    if cid.event in table:
        return table[cid.event]
    if 100 <= cid.event < 200:
        # The 1xx block is "alarms" in Contact ID: an unknown one is still an alarm.
        return Meaning(Kind.ALARM, AlarmType.MANUAL, known=False)
    return Meaning(Kind.STATUS, state=f"cid_{cid.event}", known=False)


def parse_codes(codes: Mapping[str, str]) -> tuple[dict[str, Meaning], dict[int, Meaning]]:
    """Site overrides ``{"BA": "door", "cid:130": "door", "RP": "heartbeat"}`` merged into
    the default tables. Values: an alarm type, ``heartbeat``, or ``status:<state>``.
    Raises ValueError naming the bad entry."""
    sia = dict(SIA_TABLE)
    cid = dict(CONTACT_ID_TABLE)
    for raw_code, raw_value in codes.items():
        meaning = _meaning(raw_value, raw_code)
        code = raw_code.strip()
        if code.lower().startswith("cid:"):
            number = code[4:]
            if not (number.isdigit() and len(number) == 3):
                raise ValueError(f"dc09 code {raw_code!r}: Contact ID events are cid:NNN")
            cid[int(number)] = meaning
        elif re.fullmatch(r"[A-Za-z]{2}", code):
            sia[code.upper()] = meaning
        else:
            raise ValueError(f"dc09 code {raw_code!r}: expected a SIA code (MA) or cid:NNN")
    return sia, cid


def _meaning(value: str, code: str) -> Meaning:
    if value == "heartbeat":
        return HEARTBEAT
    if value.startswith("status:") and valid_id(value[7:]):
        return _status(value[7:])
    try:
        return _alarm(AlarmType(value))
    except ValueError:
        raise ValueError(f"dc09 code {code!r}: {value!r} is not an alarm type, 'heartbeat' "
                         "or 'status:<state>'") from None


class RefMemory:
    """Names the ref of each event so that resends of one event share it.

    The key is what identifies an event in its frame: account, sequence number, kind and
    codes (not the timestamp or padding, which change on every resend). A key seen within
    ``RESEND_WINDOW_S`` gets the ref it got then; otherwise a new ref ``<seq>.<ms>``.
    Bounded: the oldest entries go first.
    """

    def __init__(self, window_s: float = RESEND_WINDOW_S, max_entries: int = _REF_MEMORY) -> None:
        self._window_s = window_s
        self._max = max_entries
        self._seen: OrderedDict[tuple[object, ...], tuple[str, float]] = OrderedDict()

    def ref_for(self, message: Dc09Message, now: float) -> str:
        """The ref for ``message`` received at ``now``."""
        key = (message.account, message.sequence, message.kind, message.code, message.area,
               message.zone, message.contact_id)
        seen = self._seen.get(key)
        if seen is not None and now - seen[1] <= self._window_s:
            return seen[0]
        ref = f"{message.sequence}.{int(now * 1000)}"
        self._seen[key] = (ref, now)
        self._seen.move_to_end(key)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return ref


def device_message(message: Dc09Message, meaning: Meaning, ref: str, now: float) -> DeviceMessage:
    """The typed device message (the MQTT contract's) for a classified DC-09 event."""
    ts_ms = int((message.timestamp if message.timestamp is not None else now) * 1000)
    if meaning.kind is Kind.ALARM:
        return AlarmMessage(message.device_id, ref, ts_ms, meaning.alarm_type or AlarmType.MANUAL,
                            None)
    if meaning.kind is Kind.HEARTBEAT:
        return HeartbeatMessage(message.device_id, ref, ts_ms, None, None)
    return StatusMessage(message.device_id, ref, ts_ms, meaning.state or "info", None)
