"""The SMS fallback's pure half: phone numbers, message texts, replies and Kannel's wire format.

Nothing here does I/O, and nothing raises on outside input: a malformed number, reply,
delivery report or status page comes back as a typed refusal with a reason, so that the
I/O shell (``gateway/sms.py``) can count, log and audit it and carry on.

- E.164 numbers (``normalize_e164``) for staff phones; ``normalize_sender`` for the forms
  operators deliver replies from (``+46…``, ``0046…``, ``46…``).
- ``alarm_text``: what an alarm SMS says. The least that lets staff act (alarm type, the
  address or a recipient code, the reply code, a link to the app): never the name, the
  entry information (key codes, door codes) or the action plan (diagnoses). Kept to the
  GSM 7-bit alphabet so that one or two SMS segments carry it on any phone.
- ``parse_reply``: "JA K7Q2" accepts alarm K7Q2; anything else is refused with a reason.
- Kannel: the ``sendsms`` query, its answer, the DLR callback URL (with a per-message token)
  and its status values, the MO callback, and ``status.xml``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import quote

from defusedxml import ElementTree
from defusedxml.common import DefusedXmlException

from alarms import shortcode
from alarms.model import NotificationStatus

# -- phone numbers -----------------------------------------------------------------------------

# ITU-T E.164: a country code and subscriber number, at most 15 digits, never starting with
# 0. Fewer than 8 digits is no mobile number anywhere.
_E164 = re.compile(r"\+[1-9][0-9]{7,14}")
# What people type around the digits.
_PUNCTUATION = re.compile(r"[\s\-().]")


@dataclass(frozen=True, slots=True)
class NumberRefused:
    """A phone number that is not a valid E.164 number, and why."""

    reason: str


def normalize_e164(text: str) -> str | NumberRefused:
    """``+46 70-123 45 67`` or ``0046701234567`` → ``+46701234567``; else a refusal.

    National forms ("070…") are refused rather than guessed: the gateway may serve several
    countries, and a wrong guess texts a stranger.
    """
    compact = _PUNCTUATION.sub("", text.strip())
    if compact.startswith("00"):
        compact = "+" + compact[2:]
    if not compact.startswith("+"):
        return NumberRefused("a phone number must be international: +<country code><number>")
    if not _E164.fullmatch(compact):
        return NumberRefused("not an E.164 number: + then 8 to 15 digits, not starting with 0")
    return compact


def e164(text: str) -> str:
    """``normalize_e164`` for validators: raises ``ValueError`` with the reason."""
    found = normalize_e164(text)
    if isinstance(found, str):
        return found
    raise ValueError(found.reason)


def normalize_sender(raw: str) -> str | None:
    """The E.164 form of a reply's sender as an operator delivers it; None if unusable.

    SMPP operators often deliver international numbers without the ``+`` (type of number
    "international"); a number starting with 0 is national and cannot be matched safely.
    """
    compact = _PUNCTUATION.sub("", raw.strip())
    if compact.isdigit() and not compact.startswith("0"):
        compact = "+" + compact
    found = normalize_e164(compact)
    return None if isinstance(found, NumberRefused) else found


def mask_number(number: str) -> str:
    """``+46701234567`` → ``+467012…67``, for logs (the audit keeps the whole number)."""
    return number if len(number) < 8 else f"{number[:6]}…{number[-2:]}"


# -- message texts -----------------------------------------------------------------------------

# GSM 03.38 default alphabet (plus its extension table, two septets each). Text outside it
# forces UCS-2, which halves a segment to 70 characters.
GSM7 = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    "ÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà^{}\\[~]|€"
)
_TYPOGRAPHY = {"–": "-", "—": "-", "‘": "'", "’": "'", "“": '"', "”": '"', "…": "...",
               "\u00a0": " ", "\t": " "}
# Two segments of 153 characters (a concatenated SMS) are plenty; more costs and annoys.
MAX_TEXT = 306

ALARM_TITLES = {
    "manual": "Larmknapp",
    "fall": "Fall",
    "smoke": "Brandlarm",
    "water": "Vattenlarm",
    "bed_exit": "Lämnat sängen",
    "door": "Dörrlarm",
    "inactivity": "Ingen aktivitet",
    "temperature": "Temperaturlarm",
    "test": "Provlarm",
    "technical": "Tekniskt larm",
}


def to_gsm7(text: str) -> str:
    """``text`` in the GSM 7-bit alphabet: typography mapped, anything else as ``?``."""
    mapped = "".join(_TYPOGRAPHY.get(c, c) for c in text)
    return "".join(c if c in GSM7 else "?" for c in mapped)


class RecipientField(StrEnum):
    """What an alarm SMS says about where to go."""

    ADDRESS = "address"  # the recipient's street address
    CODE = "code"  # the recipient's id, as a code staff look up (brukarkod)
    NONE = "none"  # nothing: staff open the app


@dataclass(frozen=True, slots=True)
class AlarmFacts:
    """The only facts about an alarm an SMS may draw from (built from the alarm's JSON)."""

    alarm_id: str
    type: str
    code: str
    address: str | None = None
    recipient_id: str | None = None


def alarm_text(facts: AlarmFacts, *, field: RecipientField, app_url: str | None) -> str:
    """The alarm SMS: type, where, how to accept by reply, the app link; GSM 7-bit, ≤ 306."""
    title = ALARM_TITLES.get(facts.type, "Larm")
    where = ""
    if field is RecipientField.ADDRESS and facts.address:
        where = ": " + " ".join(facts.address.split())
    elif field is RecipientField.CODE and facts.recipient_id:
        where = f": brukare {' '.join(facts.recipient_id.split())}"
    reply = f". Svara JA {facts.code} för att ta larmet."
    link = f" {app_url}" if app_url else ""
    head = f"TRYGG {title}"
    room = MAX_TEXT - len(to_gsm7(head + reply + link))
    if len(where) > room:
        where = where[: max(room, 0)].rstrip()
    return to_gsm7(head + where + reply + link)[:MAX_TEXT]


class ReplyOutcome(StrEnum):
    """What became of a reply, as the sender is told."""

    ACCEPTED = "accepted"
    TAKEN = "taken"  # someone else has it
    UNKNOWN = "unknown"  # no open alarm with that code (or closed)
    NOT_YOURS = "not_yours"  # the sender may not see the alarm
    NOT_UNDERSTOOD = "not_understood"
    UNAVAILABLE = "unavailable"  # the journal could not store it


def reply_text(outcome: ReplyOutcome, code: str | None, *, title: str | None = None,
               app_url: str | None = None) -> str:
    """The gateway's answer to a staff member's reply (never to unknown numbers)."""
    link = f" {app_url}" if app_url else ""
    if outcome is ReplyOutcome.ACCEPTED:
        what = f" ({title})" if title else ""
        text = f"TRYGG: Du har larm {code}{what}. Registrera på plats i appen.{link}"
    elif outcome is ReplyOutcome.TAKEN:
        text = f"TRYGG: Larm {code} är redan taget av en kollega.{link}"
    elif outcome is ReplyOutcome.UNAVAILABLE:
        text = f"TRYGG: Larm {code} kunde inte sparas just nu. Försök igen eller använd appen."
    elif outcome is ReplyOutcome.NOT_UNDERSTOOD:
        text = "TRYGG: Svara JA följt av larmets kod, t.ex. JA K7Q2."
    else:
        text = "TRYGG: Okänd kod eller avslutat larm."
    return to_gsm7(text)[:MAX_TEXT]


# -- replies -----------------------------------------------------------------------------------

# Words that mean "I take it". Anything else beside the code (NEJ, NO, "kan inte") refuses
# the reply: only an unambiguous yes may take an alarm.
ACCEPT_WORDS = frozenset({"JA", "OK", "OKEJ", "TAR", "TAGET", "KVITTERA", "YES", "ACCEPT"})
MAX_REPLY = 160
_TOKEN = re.compile(r"[0-9A-Za-zÅÄÖåäöÉéÜü]+")


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply that accepts the alarm with reply code ``code``."""

    code: str


@dataclass(frozen=True, slots=True)
class ReplyRefused:
    """A reply that means nothing the gateway acts on, and why; ``code`` if one was named."""

    reason: str
    code: str | None = None


def parse_reply(text: str) -> Reply | ReplyRefused:
    """``"JA K7Q2"``, ``"k7q2 ok"``, ``"K7Q2"`` → ``Reply("K7Q2")``; anything else refused."""
    if len(text) > MAX_REPLY:
        return ReplyRefused("reply too long")
    tokens = [t.upper() for t in _TOKEN.findall(text)]
    codes = [t for t in tokens if shortcode.is_code(t)]
    others = [t for t in tokens if not shortcode.is_code(t)]
    if not codes:
        return ReplyRefused("no alarm code in the reply")
    if len(set(codes)) > 1:
        return ReplyRefused("more than one alarm code in the reply")
    strange = [t for t in others if t not in ACCEPT_WORDS]
    if strange:
        return ReplyRefused(f"not understood: {' '.join(strange)[:40]}", codes[0])
    return Reply(codes[0])


# -- Kannel ------------------------------------------------------------------------------------

# DLR mask (Kannel user guide, "SMS Delivery Reports"): 1 delivered to phone, 2 not delivered
# to phone, 8 accepted by the SMSC, 16 rejected by the SMSC. Not 4 (buffered): it is not a
# status of ours, and waiting is what the delivery timeout is for.
DLR_DELIVERED = 1
DLR_UNDELIVERED = 2
DLR_BUFFERED = 4
DLR_SMSC_ACCEPTED = 8
DLR_SMSC_REJECTED = 16
DLR_MASK = DLR_DELIVERED | DLR_UNDELIVERED | DLR_SMSC_ACCEPTED | DLR_SMSC_REJECTED


def sendsms_params(*, username: str, password: str, sender: str, to: str, text: str,
                   dlr_url: str | None) -> dict[str, str]:
    """The query of one ``/cgi-bin/sendsms`` request; with ``dlr_url``, asking for delivery
    reports (answers to staff replies go without: nothing escalates on them)."""
    params = {
        "username": username,
        "password": password,
        "from": sender,
        "to": to,
        "text": text,
        "charset": "UTF-8",
        "coding": "0",
    }
    if dlr_url is not None:
        params["dlr-mask"] = str(DLR_MASK)
        params["dlr-url"] = dlr_url
    return params


@dataclass(frozen=True, slots=True)
class SendOutcome:
    """What Kannel's answer to sendsms means for the message."""

    status: NotificationStatus
    detail: str


def sendsms_outcome(status_code: int, body: str) -> SendOutcome:
    """Kannel answers 202 ``0: Accepted for delivery`` (or ``3: Queued for later delivery``
    while its SMSC link is down); anything else means it did not take the message."""
    detail = " ".join(body.split())[:120]
    if 200 <= status_code < 300:
        return SendOutcome(NotificationStatus.SENT, detail or f"HTTP {status_code}")
    return SendOutcome(NotificationStatus.FAILED, f"HTTP {status_code}: {detail}".rstrip(": "))


def _b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


def _unb64(text: str) -> str | None:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


def dlr_token(secret: str, alarm_id: str, message_id: str) -> str:
    """The token a DLR URL carries: it authorises reports about this one message only, so a
    URL read from Kannel's logs cannot report on any other."""
    mac = hmac.new(secret.encode(), f"dlr\n{alarm_id}\n{message_id}".encode(), hashlib.sha256)
    return mac.hexdigest()[:32]


def dlr_url(base: str, secret: str, alarm_id: str, message_id: str) -> str:
    """The ``dlr-url`` for one message. Ids travel base64url-encoded: Kannel substitutes
    ``%x`` escapes in the URL, so nothing of ours may contain a ``%``."""
    query = (f"a={_b64(alarm_id)}&m={_b64(message_id)}"
             f"&t={dlr_token(secret, alarm_id, message_id)}&status=%d&answer=%A")
    return f"{base.rstrip('/')}/api/v1/sms/kannel/dlr?{query}"


@dataclass(frozen=True, slots=True)
class DeliveryReport:
    """A checked delivery report: which message, and its new status (None: nothing new)."""

    alarm_id: str
    message_id: str
    status: NotificationStatus | None
    value: int
    answer: str


@dataclass(frozen=True, slots=True)
class CallbackRefused:
    """A callback that is not acted on, and why (``forbidden``: wrong or missing secret)."""

    reason: str
    forbidden: bool = False


def dlr_status(value: int) -> NotificationStatus | None:
    """Our status for a Kannel DLR value; None for one that says nothing new (buffered)."""
    if value & DLR_DELIVERED:
        return NotificationStatus.DELIVERED
    if value & (DLR_UNDELIVERED | DLR_SMSC_REJECTED):
        return NotificationStatus.FAILED
    if value & DLR_SMSC_ACCEPTED:
        return NotificationStatus.SENT
    return None


def parse_dlr(query: Mapping[str, str], secret: str) -> DeliveryReport | CallbackRefused:
    """A DLR callback's query, checked against its per-message token."""
    alarm_id = _unb64(query.get("a", ""))
    message_id = _unb64(query.get("m", ""))
    token = query.get("t", "")
    if not alarm_id or not message_id:
        return CallbackRefused("no message named", forbidden=True)
    if not hmac.compare_digest(token.encode(), dlr_token(secret, alarm_id, message_id).encode()):
        return CallbackRefused("bad token", forbidden=True)
    raw = query.get("status", "")
    if not raw.isdigit():
        return CallbackRefused(f"status {raw[:10]!r} is not a DLR value")
    value = int(raw)
    answer = " ".join(query.get("answer", "").split())[:120]
    return DeliveryReport(alarm_id, message_id, dlr_status(value), value, answer)


def mo_url(base: str, secret: str) -> str:
    """The ``get-url`` of the ``sms-service`` that hands replies to the gateway."""
    return (f"{base.rstrip('/')}/api/v1/sms/kannel/mo?secret={quote(secret, safe='')}"
            "&from=%p&to=%P&text=%a&id=%I")


@dataclass(frozen=True, slots=True)
class MoMessage:
    """A reply as Kannel delivered it: sender (E.164), text, Kannel's message id."""

    sender: str
    text: str
    kannel_id: str


def secret_ok(given: str, secret: str) -> bool:
    """Constant-time comparison of a callback's secret."""
    return hmac.compare_digest(given.encode(), secret.encode())


def parse_mo(query: Mapping[str, str], secret: str) -> MoMessage | CallbackRefused:
    """An MO callback's query: the secret, then a usable sender."""
    if not secret_ok(query.get("secret", ""), secret):
        return CallbackRefused("bad secret", forbidden=True)
    raw = query.get("from", "")
    sender = normalize_sender(raw)
    if sender is None:
        return CallbackRefused(f"sender {raw[:20]!r} is not an international number")
    return MoMessage(sender, query.get("text", "")[:MAX_REPLY + 1], query.get("id", "")[:64])


# -- Kannel status.xml -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KannelStatus:
    """What bearerbox's ``status.xml`` says: its state, its boxes and its SMSC links."""

    gateway: str
    boxes: tuple[tuple[str, str], ...]  # (type, status)
    smscs: tuple[tuple[str, str], ...]  # (id, status)

    def fault(self) -> str | None:
        """Why SMS cannot flow, or None when bearerbox runs, an smsbox is connected and an
        SMSC link is online."""
        if not self.gateway.startswith("running"):
            return f"Kannel är inte igång ({self.gateway}) / Kannel is not running"
        if not any(kind == "smsbox" and state.startswith("on-line")
                   for kind, state in self.boxes):
            return "Kannels smsbox är inte ansluten / Kannel smsbox not connected"
        if not any(state.startswith("online") for _, state in self.smscs):
            links = ", ".join(f"{i}: {s}" for i, s in self.smscs) or "none configured"
            return f"SMSC-länken är nere ({links}) / SMSC link down"
        return None


@dataclass(frozen=True, slots=True)
class StatusRefused:
    """A status page that could not be read, and why."""

    reason: str


def parse_status(xml: bytes) -> KannelStatus | StatusRefused:
    """Parse bearerbox's ``status.xml`` (defused: it comes over the network)."""
    try:
        root = ElementTree.fromstring(xml)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as exc:
        return StatusRefused(f"unreadable status page: {exc}")
    if root.tag != "gateway":
        return StatusRefused(f"not a Kannel status page (root <{root.tag}>)")
    boxes = tuple(
        ((box.findtext("type") or "").strip(), (box.findtext("status") or "").strip())
        for box in root.iterfind("boxes/box")
    )
    smscs = tuple(
        ((smsc.findtext("id") or smsc.findtext("name") or "?").strip(),
         (smsc.findtext("status") or "").strip())
        for smsc in root.iterfind("smscs/smsc")
    )
    return KannelStatus((root.findtext("status") or "").strip(), boxes, smscs)
