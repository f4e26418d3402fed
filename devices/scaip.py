"""A sans-I/O SCAIP codec (SS 91100 / CLC/TS 50134-9): ``<mrq>`` in, ``<mrs>`` out.

A SCAIP controller (the base unit in the home, or a mobile alarm) sends an ``<mrq>`` XML
document in a SIP MESSAGE with ``Content-Type: application/scaip+xml``; the receiver answers
with an ``<mrs>`` that echoes ``ref`` and carries a status number ``snu``. This module parses
the ``<mrq>`` into a frozen ``ScaipRequest`` or a ``ScaipError`` that already knows which
``snu`` to answer with (and the ``ref`` whenever it could be read), encodes the ``<mrs>``,
and maps SCAIP codes to trygg's terms (``classify``).

Security: the XML comes from the network, so it is size-limited before parsing and parsed
with defusedxml with DTDs, entity declarations and external references all forbidden
(billion laughs, XXE). Nothing here does I/O and ``parse_mrq`` never raises.

Field patterns, the ``<lge>`` structure and the code tables follow the SCAIP message model as
public sources give it (docs/scaip.md, "Sources"): the standard itself is not public, so
every table row says where it comes from, and a site can override rows in its configuration.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from types import MappingProxyType
from typing import TypeAlias
from xml.etree.ElementTree import Element, ParseError
from xml.sax.saxutils import escape

import defusedxml
import defusedxml.ElementTree

from alarms.dedupe import content_key
from alarms.model import AlarmType, DeviceStatus, Position
from devices.geo import parse_lge

CONTENT_TYPE = "application/scaip+xml"

# Real <mrq> documents are 100-400 bytes (ten short tags). 4 KiB allows generous optional
# fields and whitespace; anything bigger is answered snu 1 ("too long") before any parsing,
# so a hostile peer cannot make us build large trees.
MAX_SCAIP_XML = 4 * 1024

# One tag's text: long enough for the longest field of the message model (crd, a caller
# URI, 256), short enough to log and store without surprise.
MAX_FIELD_LEN = 256
MAX_FIELDS = 48

# The message model's patterns for the identity fields (docs/scaip.md): ref is what the
# <mrs> echoes and what dedupe keys on, cid must match a provisioned device, ver says which
# protocol version the controller speaks. Anything else is refused (snu 3), not guessed at.
MAX_REF_LEN = 16
MAX_CID_LEN = 16
_REF = re.compile(r"^[0-9A-Za-z]{1,16}$")
_CID = re.compile(r"^[0-9]{1,16}$")
_VER = re.compile(r"^[0-9]{2}\.[0-9]{2}$")
_CODE = re.compile(r"^\d{1,4}$")
_SHORT_CODE = re.compile(r"^\d{1,3}$")
# A readable ref in a document that cannot be parsed as a whole (broken XML, a refused
# construct): one <ref> element with a valid ref, found by a bounded search of the bytes.
_RAW_REF = re.compile(rb"<ref>\s*([0-9A-Za-z]{1,16})\s*</ref>")

# The parts of <lge>, a position (devices/geo.py): the one element with children.
_LGE_PARTS = frozenset({"geo", "tim", "gga"})


class Snu(IntEnum):
    """``<snu>`` status numbers of the ``<mrs>`` response."""

    OK = 0
    TOO_LONG = 1
    INVALID_FORMAT = 2
    WRONG_CONTENT = 3
    HOLD = 4
    NOT_TREATED = 5
    BUSY = 6
    MANDATORY_MISSING = 7


class MessageType(StrEnum):
    """``<mty>``. Absent means ME: deployed controllers omit it on alarms."""

    ALARM = "ME"
    RESET = "RE"
    INFO = "IN"
    HEARTBEAT = "PI"


class ScaipReason(StrEnum):
    """Why an ``<mrq>`` was refused; also the label of the reject counter."""

    OVERSIZE = "oversize"
    FORBIDDEN_XML = "forbidden_xml"
    NOT_XML = "not_xml"
    WRONG_ROOT = "wrong_root"
    NESTED = "nested"
    DUPLICATE_TAG = "duplicate_tag"
    TOO_MANY_FIELDS = "too_many_fields"
    MISSING_TAG = "missing_tag"
    BAD_FIELD = "bad_field"
    UNKNOWN_MTY = "unknown_mty"
    CID_MISMATCH = "cid_mismatch"


_SNU_FOR: dict[ScaipReason, Snu] = {
    ScaipReason.OVERSIZE: Snu.TOO_LONG,
    ScaipReason.FORBIDDEN_XML: Snu.INVALID_FORMAT,
    ScaipReason.NOT_XML: Snu.INVALID_FORMAT,
    ScaipReason.WRONG_ROOT: Snu.INVALID_FORMAT,
    ScaipReason.NESTED: Snu.INVALID_FORMAT,
    ScaipReason.DUPLICATE_TAG: Snu.INVALID_FORMAT,
    ScaipReason.TOO_MANY_FIELDS: Snu.INVALID_FORMAT,
    ScaipReason.MISSING_TAG: Snu.MANDATORY_MISSING,
    ScaipReason.BAD_FIELD: Snu.WRONG_CONTENT,
    ScaipReason.UNKNOWN_MTY: Snu.WRONG_CONTENT,
    ScaipReason.CID_MISMATCH: Snu.WRONG_CONTENT,
}


@dataclass(frozen=True, slots=True)
class Location:
    """Where the alarm was raised, as a fixed place: ``lco`` code, ``lva`` value, ``lte`` text.

    (A mobile position is ``ScaipRequest.position``, from ``<lge>``.)
    """

    code: str | None = None  # lco, e.g. "021" (kitchen): LOCATION_CODES
    value: str | None = None  # lva, e.g. a room or zone number
    text: str | None = None  # lte, free text

    @property
    def code_meaning(self) -> str | None:
        """What ``code`` means in the public location-code list, if it is listed."""
        if self.code is None or not self.code.isdigit():
            return None
        return LOCATION_CODES.get(int(self.code))


@dataclass(frozen=True, slots=True)
class ScaipRequest:
    """A valid ``<mrq>``. Codes are kept as sent; ``*_code`` give their numeric value."""

    ref: str
    cid: str
    dty: str
    mty: MessageType
    stc: str | None = None
    pri: int | None = None
    did: str | None = None
    crd: tuple[str, ...] = ()
    location: Location = Location()
    # Every other tag, in document order (cha, ame, dte, hbo, mreq, sco, stt, ...).
    extra: tuple[tuple[str, str], ...] = ()
    ver: str | None = None
    dco: str | None = None
    # Where a mobile alarm is (<lge>), and why a position that was sent could not be read.
    # An unreadable position never refuses the message: the alarm matters more.
    position: Position | None = None
    position_problem: str | None = None

    @property
    def dty_code(self) -> int:
        """Device type as a number: controllers pad it differently ("2", "02", "0002")."""
        return int(self.dty)

    @property
    def stc_code(self) -> int | None:
        """Status code as a number, or None when absent."""
        return int(self.stc) if self.stc is not None else None

    @property
    def extras(self) -> Mapping[str, str]:
        """``extra`` as a read-only mapping (first value wins for repeated tags)."""
        out: dict[str, str] = {}
        for tag, text in self.extra:
            out.setdefault(tag, text)
        return MappingProxyType(out)


@dataclass(frozen=True, slots=True)
class ScaipError:
    """A refused ``<mrq>``: answer it with ``<mrs>`` carrying ``snu`` and ``ref`` (if known)."""

    snu: Snu
    reason: ScaipReason
    detail: str
    ref: str | None = None
    cid: str | None = None


@dataclass(frozen=True, slots=True)
class ScaipResponse:
    """A parsed ``<mrs>`` (used by tests and by anything that sends ``<mrq>``)."""

    ref: str | None
    snu: int
    extra: tuple[tuple[str, str], ...] = ()


class _Invalid(Exception):
    def __init__(self, reason: ScaipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# -- parsing -------------------------------------------------------------------------------


def _parse_xml(data: bytes) -> Element:
    try:
        root: Element = defusedxml.ElementTree.fromstring(
            data, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
    except defusedxml.DefusedXmlException as exc:
        raise _Invalid(ScaipReason.FORBIDDEN_XML, f"refused XML construct: {exc}"[:200]) from None
    except (ParseError, ValueError, LookupError, RecursionError) as exc:
        # ParseError for malformed XML; LookupError for an unknown declared encoding;
        # ValueError/RecursionError are defensive for pathological inputs.
        raise _Invalid(ScaipReason.NOT_XML, f"not XML: {exc}"[:200]) from None
    return root


def _check_root(root: Element, root_tag: str) -> None:
    if not isinstance(root.tag, str) or root.tag != root_tag:
        raise _Invalid(ScaipReason.WRONG_ROOT, f"root element must be <{root_tag}>")


def _leaf_text(element: Element, where: str) -> str:
    if len(element):
        raise _Invalid(ScaipReason.NESTED, f"<{where}> must not contain elements")
    text = (element.text or "").strip()
    if len(text) > MAX_FIELD_LEN:
        raise _Invalid(ScaipReason.BAD_FIELD, f"<{where}> longer than {MAX_FIELD_LEN}")
    return text


@dataclass(slots=True)
class _Fields:
    leaves: list[tuple[str, str]] = field(default_factory=list)
    lge: dict[str, str] | None = None
    count: int = 0

    def bump(self) -> None:
        self.count += 1
        if self.count > MAX_FIELDS:
            raise _Invalid(ScaipReason.TOO_MANY_FIELDS, f"more than {MAX_FIELDS} elements")


def _fields(root: Element) -> _Fields:
    """The children of the root as (tag, stripped text), and <lge>'s parts; refuses any other
    structure."""
    if (root.text or "").strip():
        raise _Invalid(ScaipReason.NESTED, "text directly inside the root element")
    out = _Fields()
    for child in root:
        if not isinstance(child.tag, str):  # comments and processing instructions
            continue
        if (child.tail or "").strip():
            raise _Invalid(ScaipReason.NESTED, "text between elements")
        out.bump()
        if child.tag == "lge" and len(child):
            if out.lge is not None:
                raise _Invalid(ScaipReason.DUPLICATE_TAG, "<lge> given twice")
            out.lge = _lge_parts(child, out)
            continue
        out.leaves.append((child.tag, _leaf_text(child, child.tag)))
    return out


def _lge_parts(lge: Element, fields: _Fields) -> dict[str, str]:
    if (lge.text or "").strip():
        raise _Invalid(ScaipReason.NESTED, "text directly inside <lge>")
    parts: dict[str, str] = {}
    for part in lge:
        if not isinstance(part.tag, str):
            continue
        if (part.tail or "").strip():
            raise _Invalid(ScaipReason.NESTED, "text between the elements of <lge>")
        fields.bump()
        text = _leaf_text(part, f"lge/{part.tag}")
        if part.tag in parts:
            raise _Invalid(ScaipReason.DUPLICATE_TAG, f"<lge><{part.tag}> given twice")
        # Parts other than geo/tim/gga are allowed by the model (the element is open) and
        # ignored here: nothing in them could be acted on.
        parts[part.tag] = text
    return {tag: text for tag, text in parts.items() if tag in _LGE_PARTS}


# Tags that may appear more than once: a controller may list several caller ids.
_REPEATABLE = frozenset({"crd"})
_KNOWN = frozenset(
    {"ref", "cid", "dty", "mty", "stc", "pri", "did", "crd", "lco", "lva", "lte", "lge", "ver",
     "dco"}
)


def readable_ref(data: bytes) -> str | None:
    """The ``ref`` of a document that could not be parsed, when exactly one valid one is in it.

    Lets a refusal be correlated by the sender even when the XML around it is broken.
    """
    found = _RAW_REF.findall(data[: MAX_SCAIP_XML * 4])
    if len(set(found)) != 1:
        return None
    return bytes(found[0]).decode("ascii")


def _ref_of(root: Element) -> str | None:
    refs = {
        (child.text or "").strip()
        for child in root
        if isinstance(child.tag, str) and child.tag == "ref" and not len(child)
    }
    if len(refs) != 1:
        return None
    ref = refs.pop()
    return ref if _REF.match(ref) else None


def _cid_of(root: Element) -> str | None:
    cids = {(c.text or "").strip() for c in root if isinstance(c.tag, str) and c.tag == "cid"}
    if len(cids) != 1:
        return None
    cid = cids.pop()
    return cid if _CID.match(cid) else None


def parse_mrq(data: bytes) -> ScaipRequest | ScaipError:
    """Parse an ``<mrq>`` document. Never raises on any input.

    Every refusal carries the ``ref`` whenever one could be read (issue 18.5), so the
    controller can tie the ``<mrs>`` to its request even when the rest was refused.
    """
    if len(data) > MAX_SCAIP_XML:
        return ScaipError(
            Snu.TOO_LONG,
            ScaipReason.OVERSIZE,
            f"document of {len(data)} bytes exceeds {MAX_SCAIP_XML}",
            ref=readable_ref(data),
        )
    try:
        root = _parse_xml(data)
    except _Invalid as exc:
        return ScaipError(_SNU_FOR[exc.reason], exc.reason, exc.detail, ref=readable_ref(data))
    # Pick ref/cid out first so even a refusal can be correlated by the sender.
    ref, cid = _ref_of(root), _cid_of(root)
    try:
        _check_root(root, "mrq")
        fields = _fields(root)
        single = _index(fields.leaves)
        return _build(single, fields)
    except _Invalid as exc:
        return ScaipError(_SNU_FOR[exc.reason], exc.reason, exc.detail, ref=ref, cid=cid)


def _index(fields: list[tuple[str, str]]) -> dict[str, str]:
    single: dict[str, str] = {}
    for tag, text in fields:
        if tag in _KNOWN and tag not in _REPEATABLE:
            if tag in single:
                raise _Invalid(ScaipReason.DUPLICATE_TAG, f"<{tag}> given twice")
            single[tag] = text
    return single


def _build(single: dict[str, str], fields: _Fields) -> ScaipRequest:
    for tag in ("ref", "cid", "dty"):
        if not single.get(tag):
            raise _Invalid(ScaipReason.MISSING_TAG, f"mandatory <{tag}> missing or empty")
    ref = single["ref"]
    if not _REF.match(ref):
        raise _Invalid(ScaipReason.BAD_FIELD, f"<ref> must be 1-{MAX_REF_LEN} letters or digits")
    cid = single["cid"]
    if not _CID.match(cid):
        raise _Invalid(ScaipReason.BAD_FIELD, f"<cid> must be 1-{MAX_CID_LEN} digits")
    dty = single["dty"]
    if not _CODE.match(dty):
        raise _Invalid(ScaipReason.BAD_FIELD, "<dty> must be 1-4 digits")
    ver = single.get("ver") or None
    if ver is not None and not _VER.match(ver):
        raise _Invalid(ScaipReason.BAD_FIELD, "<ver> must be NN.NN (e.g. 01.00)")
    raw_mty = single.get("mty") or MessageType.ALARM.value
    try:
        mty = MessageType(raw_mty.upper())
    except ValueError:
        raise _Invalid(ScaipReason.UNKNOWN_MTY, f"unknown <mty> {raw_mty[:8]!r}") from None
    stc = single.get("stc") or None
    if stc is not None and not _CODE.match(stc):
        raise _Invalid(ScaipReason.BAD_FIELD, "<stc> must be 1-4 digits")
    dco = single.get("dco") or None
    if dco is not None and not _SHORT_CODE.match(dco):
        raise _Invalid(ScaipReason.BAD_FIELD, "<dco> must be 1-3 digits")
    raw_pri = single.get("pri") or None
    if raw_pri is not None and not re.fullmatch(r"\d{1,2}", raw_pri):
        raise _Invalid(ScaipReason.BAD_FIELD, "<pri> must be a number 0-99")
    pri = int(raw_pri) if raw_pri is not None else None
    position: Position | None = None
    problem: str | None = None
    lge = fields.lge
    if lge is None and single.get("lge"):
        problem = "<lge> without <geo>, <tim> or <gga>"
    elif lge is not None:
        parsed = parse_lge(lge.get("geo") or None, lge.get("tim") or None, lge.get("gga") or None)
        position = parsed.position
        problem = "; ".join(parsed.problems) or None
    return ScaipRequest(
        ref=ref,
        cid=cid,
        dty=dty,
        mty=mty,
        stc=stc,
        pri=pri,
        did=single.get("did") or None,
        crd=tuple(text for tag, text in fields.leaves if tag == "crd"),
        location=Location(
            code=single.get("lco") or None,
            value=single.get("lva") or None,
            text=single.get("lte") or None,
        ),
        extra=tuple((tag, text) for tag, text in fields.leaves if tag not in _KNOWN),
        ver=ver,
        dco=dco,
        position=position,
        position_problem=problem,
    )


def check_sender(request: ScaipRequest, from_user: str | None) -> ScaipError | None:
    """SCAIP requires the SIP From user to be the controller id; else answer snu 3."""
    if from_user == request.cid:
        return None
    return ScaipError(
        Snu.WRONG_CONTENT,
        ScaipReason.CID_MISMATCH,
        f"SIP From user {str(from_user)[:64]!r} is not <cid> {request.cid!r}",
        ref=request.ref,
        cid=request.cid,
    )


# -- encoding ------------------------------------------------------------------------------


def encode_mrs(ref: str | None, snu: int, extra: Iterable[tuple[str, str]] = ()) -> bytes:
    """An ``<mrs>`` answering ``ref`` with ``snu``. ``ref`` is omitted if it was unreadable."""
    parts = ["<mrs>"]
    if ref is not None:
        parts.append(f"<ref>{escape(ref)}</ref>")
    parts.append(f"<snu>{int(snu)}</snu>")
    parts.extend(f"<{tag}>{escape(text)}</{tag}>" for tag, text in extra if _is_tag(tag))
    parts.append("</mrs>")
    return "".join(parts).encode()


def encode_mrq(
    *,
    ref: str,
    cid: str,
    dty: str,
    mty: MessageType | str = MessageType.ALARM,
    stc: str | None = None,
    extra: Iterable[tuple[str, str]] = (),
    lge: Mapping[str, str] | None = None,
) -> bytes:
    """An ``<mrq>``: for tests, the simulator and anything that talks SCAIP upstream.

    ``lge`` gives the parts of a position (``geo``, ``tim``, ``gga``).
    """
    fields: list[tuple[str, str]] = [("ref", ref), ("mty", str(mty)), ("cid", cid), ("dty", dty)]
    if stc is not None:
        fields.append(("stc", stc))
    fields.extend(extra)
    body = "".join(f"<{tag}>{escape(text)}</{tag}>" for tag, text in fields if _is_tag(tag))
    if lge:
        parts = "".join(f"<{tag}>{escape(text)}</{tag}>" for tag, text in lge.items()
                        if _is_tag(tag))
        body += f"<lge>{parts}</lge>"
    return f"<mrq>{body}</mrq>".encode()


def _is_tag(tag: str) -> bool:
    return re.fullmatch(r"[a-z][a-z0-9]{0,15}", tag) is not None


def _snu(raw: str) -> int:
    if not re.fullmatch(r"\d{1,3}", raw):
        raise _Invalid(ScaipReason.MISSING_TAG, "<snu> missing or not a number")
    return int(raw)


def parse_mrs(data: bytes) -> ScaipResponse | ScaipError:
    """Parse an ``<mrs>``. Never raises on any input."""
    if len(data) > MAX_SCAIP_XML:
        return ScaipError(Snu.TOO_LONG, ScaipReason.OVERSIZE, "document too long")
    try:
        root = _parse_xml(data)
        _check_root(root, "mrs")
        fields = _fields(root).leaves
        values = dict(fields)
        return ScaipResponse(
            ref=values.get("ref") or None,
            snu=_snu(values.get("snu", "")),
            extra=tuple((t, v) for t, v in fields if t not in ("ref", "snu")),
        )
    except _Invalid as exc:
        return ScaipError(_SNU_FOR[exc.reason], exc.reason, exc.detail)


# -- mapping to trygg ----------------------------------------------------------------------


class EventKind(StrEnum):
    """What a SCAIP request means to the alarm core."""

    ALARM = "alarm"  # a care alarm (or a test alarm)
    HEARTBEAT = "heartbeat"  # PI: a sign of life
    INFO = "info"  # nothing to act on (noted in the logs and metrics only)
    STATUS = "status"  # about the alarm in progress: reset, cancelled, complete, presence
    FAULT = "fault"  # a technical fault: raises a technical alarm
    RESTORE = "restore"  # a fault gone: closes its technical alarm


class StatusMeaning(StrEnum):
    """What an ``<stc>`` means, before the device type and message type are considered."""

    ALARM = "alarm"  # an alarm; its type comes from the device type
    TEST = "test"  # a test transmission (provlarm)
    CANCEL = "cancel"  # cancelled at the unit
    RESET = "reset"  # reset at the unit
    COMPLETE = "complete"  # intervention complete
    PRESENCE = "presence"  # presence (of staff) registered after an alarm: on_site
    FAULT = "fault"  # a technical fault of kind ``StatusRule.fault``
    RESTORE = "restore"  # that fault is gone ("*": every fault of the device)
    INFO = "info"  # a state report that asks for nothing


_STATUS_OF: dict[StatusMeaning, DeviceStatus] = {
    StatusMeaning.CANCEL: DeviceStatus.CANCELLED,
    StatusMeaning.RESET: DeviceStatus.RESET,
    StatusMeaning.COMPLETE: DeviceStatus.COMPLETE,
    StatusMeaning.PRESENCE: DeviceStatus.PRESENCE,
}

# Fault kinds whose state is the controller's as a whole (it has one power supply and one
# uplink); the others (battery, tamper, device) belong to the device that reported them, so
# a pendant's flat battery is not cleared by the smoke detector's new one.
CONTROLLER_FAULTS = frozenset({"power", "link", "radio"})
DEVICE_FAULTS = frozenset({"battery", "tamper", "device"})
_FAULT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
ANY_FAULT = "*"


@dataclass(frozen=True, slots=True)
class StatusRule:
    """How trygg treats one status code: its meaning and, for faults, the fault kind."""

    meaning: StatusMeaning
    fault: str | None = None

    def __str__(self) -> str:
        return self.meaning.value if self.fault is None else f"{self.meaning}:{self.fault}"


def parse_status_rule(text: str) -> StatusRule:
    """``alarm``, ``reset``, ``fault:battery``, ``restore:*`` ... (site configuration).

    Raises ``ValueError`` with the reason for anything else.
    """
    name, _, fault = text.strip().partition(":")
    try:
        meaning = StatusMeaning(name)
    except ValueError:
        allowed = ", ".join(m.value for m in StatusMeaning)
        raise ValueError(f"unknown status meaning {name!r}; one of {allowed}") from None
    needs_fault = meaning in (StatusMeaning.FAULT, StatusMeaning.RESTORE)
    if not needs_fault:
        if fault:
            raise ValueError(f"{meaning.value!r} takes no fault kind")
        return StatusRule(meaning)
    if not fault:
        raise ValueError(f"{meaning.value!r} needs a fault kind, e.g. {meaning.value}:battery")
    if fault == ANY_FAULT and meaning is StatusMeaning.RESTORE:
        return StatusRule(meaning, fault)
    if not _FAULT_NAME.match(fault):
        raise ValueError(f"fault kind {fault!r} must be 1-16 of a-z 0-9 _")
    return StatusRule(meaning, fault)


@dataclass(frozen=True, slots=True)
class CodeRow:
    """One row of a code table: the code, what the public code list calls it, and whether
    the code list is the source (False: trygg's own choice, see docs/scaip.md)."""

    code: int
    meaning: str
    verified: bool


def _rows(table: str) -> tuple[tuple[CodeRow, str], ...]:
    rows: list[tuple[CodeRow, str]] = []
    for line in table.strip().splitlines():
        code, meaning, target = (part.strip() for part in line.split("|"))
        rows.append((CodeRow(int(code), meaning, True), target))
    return tuple(rows)


# Device types (<dty>): the code list of the SCAIP message model (docs/scaip.md, sources),
# and the trygg alarm type an alarm from such a device gets. ``technical``: the device is
# infrastructure (a router, a power supply): its alarms are faults, raised as technical
# alarms. Unknown device types on an alarm become MANUAL alarms, flagged: never dropped.
_DEVICE_TABLE = """
0 | unknown | manual
1 | undefined | manual
2 | local unit and controller | manual
3 | personal trigger | manual
4 | fixed trigger | manual
5 | fall detector | fall
6 | personal attack trigger | manual
7 | panic button | manual
8 | duty switch (remote) | manual
9 | duty switch (local) | manual
10 | activity detector | inactivity
11 | pill dispenser | medication
12 | bed monitor | bed_exit
13 | mat sensor | bed_exit
14 | door sensor | door
15 | wandering sensor | door
16 | enuresis detector | manual
17 | epilepsy detector | manual
18 | occupancy detector | inactivity
19 | heart rate monitor | manual
20 | environmental monitor | temperature
21 | gas detector | smoke
22 | lighting circuit monitor | inactivity
23 | smoke detector | smoke
24 | heating system monitor | temperature
25 | heat detector | smoke
26 | carbon monoxide detector | smoke
27 | bogus caller switch | manual
28 | intruder detector | manual
29 | boundary detector | door
30 | automatic man-down detector | fall
31 | system monitor | technical
32 | communication link monitor | technical
33 | flood detector | water
34 | bath sensor | water
35 | latch key | door
36 | perimeter | door
37 | sprinkler | smoke
38 | tamper | technical
39 | printer | technical
40 | router | technical
41 | power supply | technical
43 | access controller | door
44 | chair monitor | bed_exit
45 | controller | manual
46 | elevator alarm unit | manual
47 | fire alarm system | smoke
48 | local unit | manual
49 | monitoring device | manual
50 | radio unit | technical
51 | tracking device | manual
"""
DEVICE_TYPE_ROWS: tuple[tuple[CodeRow, AlarmType], ...] = tuple(
    (row, AlarmType(target)) for row, target in _rows(_DEVICE_TABLE)
)
DEVICE_TYPES: Mapping[int, AlarmType] = MappingProxyType(
    {row.code: alarm_type for row, alarm_type in DEVICE_TYPE_ROWS}
)

# Status codes (<stc>): the code list of the message model and what trygg does with each.
# Codes absent from the table on an ME message are alarms, flagged: never dropped.
_STATUS_TABLE = """
0 | unknown | alarm
1 | undefined | alarm
2 | abort | cancel
3 | absent | alarm
4 | accepted | info
5 | acknowledge | info
6 | activated | alarm
7 | active | alarm
8 | added | info
9 | automatic alarm | alarm
10 | manual alarm | alarm
11 | alert | alarm
12 | armed | info
13 | assigned | info
14 | battery failure | fault:battery
15 | battery OK | restore:battery
16 | battery low | fault:battery
17 | busy | info
18 | bypass | info
19 | cancel | cancel
20 | charged | restore:battery
21 | closed | info
22 | closed too long | alarm
23 | IP connection failure | fault:link
24 | mobile network connection failure | fault:link
25 | POTS connection failure | fault:link
26 | primary communication link failure | fault:link
27 | redundant communication link failure | fault:link
28 | deleted | info
29 | denied | info
30 | disarmed | info
31 | disconnected | fault:device
32 | error code 1 | fault:device
33 | error code 2 | fault:device
34 | error code 3 | fault:device
35 | error code 4 | fault:device
36 | error code 5 | fault:device
37 | error code 6 | fault:device
38 | error code 7 | fault:device
39 | error code 8 | fault:device
40 | error code 9 | fault:device
41 | executed | info
42 | failure | fault:device
43 | frequency drifted | fault:radio
44 | frequency drifted to lower level | fault:radio
45 | frequency drifted to upper level | fault:radio
46 | high level | alarm
47 | in progress | info
48 | in service | restore:device
50 | inactive / initiated | info
51 | interrupted | fault:device
52 | jammed | fault:radio
53 | level 1 | info
54 | level 2 | info
55 | level 3 | info
56 | level 4 | info
57 | level 5 | info
58 | level 6 | info
59 | level 7 | info
60 | level 8 | info
61 | level 9 | info
62 | log | info
63 | loss | fault:device
64 | low level | alarm
65 | maintenance needed | fault:device
66 | urgent maintenance needed | fault:device
67 | malfunction | fault:device
68 | memory full | fault:device
69 | non active | info
70 | normal state | info
71 | occupied | info
72 | off | info
73 | offline | fault:link
74 | on | info
75 | online | restore:link
76 | open | alarm
77 | open too long | alarm
78 | out of service | fault:device
79 | overflow | alarm
80 | pending | info
81 | pill not taken | alarm
82 | pill reminder | info
83 | pill taken | info
84 | planned | info
85 | power failure | fault:power
86 | power restored | restore:power
87 | planned presence | info
88 | presence after alarm | presence
89 | privacy switch operated | info
90 | pulse | info
91 | re-established | restore:link
92 | automatic reset | reset
93 | manual reset | reset
94 | restoral | restore:*
95 | RF interference | fault:radio
96 | started | info
97 | ended | info
98 | substituted | info
99 | succeeded | info
100 | temperature high | alarm
101 | temperature low | alarm
102 | test transmission over primary channel | test
103 | test transmission over redundant channel | test
104 | time out | alarm
105 | trouble | fault:device
106 | trespass | alarm
107 | unauthorized access | alarm
108 | unbypass | info
109 | verified | info
110 | assistance | alarm
111 | intervention complete | complete
112 | IP connection re-established | restore:link
113 | mobile network connection re-established | restore:link
114 | POTS connection re-established | restore:link
115 | primary communication link re-established | restore:link
116 | redundant communication link re-established | restore:link
117 | lying in bed | info
118 | locked | info
119 | movement | info
120 | occupancy | info
121 | present | info
122 | radio interference | fault:radio
123 | radio test transmission missing | fault:radio
124 | radio test transmission re-established | restore:radio
125 | tamper alarm | fault:tamper
126 | temperature rate of rise | alarm
127 | unlocked | info
"""
STATUS_CODE_ROWS: tuple[tuple[CodeRow, StatusRule], ...] = tuple(
    (row, parse_status_rule(target)) for row, target in _rows(_STATUS_TABLE)
)
STATUS_CODES: Mapping[int, StatusRule] = MappingProxyType(
    {row.code: rule for row, rule in STATUS_CODE_ROWS}
)
_DEVICE_NAMES = {row.code: row.meaning for row, _ in DEVICE_TYPE_ROWS}
_STATUS_NAMES = {row.code: row.meaning for row, _ in STATUS_CODE_ROWS}

# Location codes (<lco>), for the description staff see.
LOCATION_CODES: Mapping[int, str] = MappingProxyType({
    0: "unknown", 1: "undefined", 2: "home", 3: "away", 4: "indoors", 5: "outdoors",
    6: "inside", 7: "outside", 8: "area", 9: "zone", 10: "basement", 11: "bathroom",
    12: "bedroom", 13: "dining room", 14: "floor", 15: "garage", 16: "garden",
    17: "back garden", 18: "front garden", 19: "geo-fence", 20: "gym", 21: "kitchen",
    22: "laundry", 23: "relax room", 24: "sauna", 25: "stairs", 26: "study", 27: "workshop",
    28: "loft", 29: "shed", 30: "temporary address", 31: "summer house", 32: "winter cottage",
    33: "mobile", 34: "geo position attached", 35: "GPS position attached", 36: "property",
    37: "accessible bathroom", 38: "door", 39: "front door", 40: "back door", 41: "fire door",
    42: "hallway", 43: "living room", 44: "apartment", 45: "bungalow", 46: "lounge",
    47: "communal area", 48: "office", 49: "room", 50: "site", 51: "ward", 52: "wing",
})

StatusTable: TypeAlias = Mapping[int, StatusRule | StatusMeaning]
Table: TypeAlias = Mapping[int, AlarmType]


@dataclass(frozen=True, slots=True)
class ScaipTables:
    """The code tables a site uses: the defaults with the site's rows on top."""

    device_types: Table = field(default_factory=lambda: DEVICE_TYPES)
    status_codes: StatusTable = field(default_factory=lambda: STATUS_CODES)

    @classmethod
    def with_overrides(
        cls, device_types: Mapping[int, AlarmType], status_codes: Mapping[int, StatusRule]
    ) -> ScaipTables:
        """The default tables with a site's rows replacing or adding to them."""
        for code in (*device_types, *status_codes):
            if not 0 <= code <= 9999:
                raise ValueError(f"code {code} is not 0-9999")
        if AlarmType.TEST in device_types.values():
            raise ValueError("a device type cannot map to 'test': tests are a status code")
        return cls(
            MappingProxyType({**DEVICE_TYPES, **device_types}),
            MappingProxyType({**STATUS_CODES, **status_codes}),
        )


DEFAULT_TABLES = ScaipTables()


@dataclass(frozen=True, slots=True)
class Classification:
    """A SCAIP request in trygg's terms.

    ``alarm_type`` is set for ALARM, ``status`` for STATUS, ``faults`` (fault kinds: the ref
    prefixes of the technical alarms) for FAULT (one) and RESTORE (one or more). ``known`` is
    False when a fallback was used (an unknown dty or stc): store it, log the raw codes.
    """

    kind: EventKind
    alarm_type: AlarmType | None
    known: bool
    status: DeviceStatus | None = None
    faults: tuple[str, ...] = ()


def _rule(status_codes: StatusTable, code: int | None) -> StatusRule | None:
    if code is None:
        return StatusRule(StatusMeaning.ALARM)
    rule = status_codes.get(code)
    if isinstance(rule, StatusMeaning):
        return StatusRule(rule)
    return rule


def fault_kind(request: ScaipRequest, fault: str) -> str:
    """The ref prefix of the technical alarms for ``fault`` reported by ``request``'s device.

    Controller-wide faults (power, link, radio) are one per controller; any other fault is
    one per reporting device (device type and, when it is a plain id, device id).
    """
    if fault in CONTROLLER_FAULTS:
        return f"scaip.{fault}"
    did = request.did if request.did and re.fullmatch(r"[0-9A-Za-z]{1,8}", request.did) else "-"
    return f"scaip.{fault}.{request.dty_code}.{did}"


def classify(
    request: ScaipRequest,
    *,
    device_types: Table = DEVICE_TYPES,
    status_codes: StatusTable = STATUS_CODES,
    tables: ScaipTables | None = None,
) -> Classification:
    """Map a request to what it means to trygg (see ``EventKind`` and docs/scaip.md).

    PI is a heartbeat whatever its status code (controllers put their state there). RE is a
    reset. IN never raises an alarm but may report a status, a fault or its restore. ME is
    an alarm unless its status code says otherwise; the alarm type comes from the device
    type. The tables are parameters so a site can correct them without a code change.
    """
    if tables is not None:
        device_types, status_codes = tables.device_types, tables.status_codes
    if request.mty is MessageType.HEARTBEAT:
        return Classification(EventKind.HEARTBEAT, None, known=True)
    if request.mty is MessageType.RESET:
        return Classification(EventKind.STATUS, None, known=True, status=DeviceStatus.RESET)
    rule = _rule(status_codes, request.stc_code)
    stc_known = rule is not None
    if rule is None:
        rule = StatusRule(StatusMeaning.ALARM)
    device_type = device_types.get(request.dty_code)
    meaning = rule.meaning
    if meaning is StatusMeaning.ALARM and device_type is AlarmType.TECHNICAL:
        # An "alarm" from infrastructure (a router, a power supply) is a fault of it.
        rule = StatusRule(StatusMeaning.FAULT, "device")
        meaning = rule.meaning
    if meaning in _STATUS_OF:
        return Classification(
            EventKind.STATUS, None, known=stc_known, status=_STATUS_OF[meaning]
        )
    if meaning is StatusMeaning.FAULT and rule.fault is not None:
        return Classification(
            EventKind.FAULT, None, known=stc_known, faults=(fault_kind(request, rule.fault),)
        )
    if meaning is StatusMeaning.RESTORE and rule.fault is not None:
        groups = sorted(DEVICE_FAULTS) if rule.fault == ANY_FAULT else [rule.fault]
        return Classification(
            EventKind.RESTORE, None, known=stc_known,
            faults=tuple(fault_kind(request, group) for group in groups),
        )
    if request.mty is MessageType.INFO or meaning is StatusMeaning.INFO:
        # An information message is never an alarm, whatever its code says.
        return Classification(EventKind.INFO, None, known=stc_known)
    if meaning is StatusMeaning.TEST:
        return Classification(EventKind.ALARM, AlarmType.TEST, known=stc_known)
    if device_type is None:
        return Classification(EventKind.ALARM, AlarmType.MANUAL, known=False)
    return Classification(EventKind.ALARM, device_type, known=stc_known)


def content_of(request: ScaipRequest) -> str:
    """The content key of an ``<mrq>`` (``alarms.dedupe``): everything it says but its ref
    and position. A controller resending a message resends all of it; one that restarted its
    ref counter sends another message (another device, status, place, caller id ...)."""
    return content_key(
        "scaip",
        request.cid,
        request.mty.value,
        request.dty_code,
        request.stc_code,
        request.pri,
        request.did,
        request.dco,
        request.ver,
        request.location.code,
        request.location.value,
        request.location.text,
        "\x1e".join(request.crd),
        "\x1e".join(f"{tag}={text}" for tag, text in request.extra),
    )


def describe(request: ScaipRequest) -> str:
    """What the controller said, for staff and technicians: device, status and place."""
    device = _DEVICE_NAMES.get(request.dty_code, "unknown device type")
    parts = [f"SCAIP {device} (dty {request.dty})"]
    if request.stc_code is not None:
        status = _STATUS_NAMES.get(request.stc_code, "unknown status")
        parts.append(f"{status} (stc {request.stc})")
    location = request.location
    place = [p for p in (location.code_meaning, location.value, location.text) if p]
    if place:
        parts.append("at " + " / ".join(place))
    if request.position_problem:
        parts.append(f"position not readable: {request.position_problem}")
    return ", ".join(parts)[:256]
