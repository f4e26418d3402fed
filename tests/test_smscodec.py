"""The SMS codec: numbers, texts (privacy), replies and Kannel's wire format. No I/O."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from alarms import shortcode
from alarms.model import NotificationStatus
from gateway.smscodec import (
    DLR_MASK,
    GSM7,
    MAX_TEXT,
    AlarmFacts,
    CallbackRefused,
    DeliveryReport,
    KannelStatus,
    MoMessage,
    NumberRefused,
    RecipientField,
    Reply,
    ReplyOutcome,
    ReplyRefused,
    StatusRefused,
    alarm_text,
    dlr_status,
    dlr_token,
    dlr_url,
    e164,
    mo_url,
    normalize_e164,
    normalize_sender,
    parse_dlr,
    parse_mo,
    parse_reply,
    parse_status,
    reply_text,
    sendsms_outcome,
    sendsms_params,
    to_gsm7,
)

SECRET = "s3cret-for-callbacks-0123456789"


# -- numbers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("raw", "expected"), [
    ("+46701234567", "+46701234567"),
    ("+46 70-123 45 67", "+46701234567"),
    ("0046701234567", "+46701234567"),
    ("+1 (555) 010-9999", "+15550109999"),
])
def test_e164_numbers_are_normalised(raw: str, expected: str) -> None:
    assert normalize_e164(raw) == expected
    assert e164(raw) == expected


@pytest.mark.parametrize("raw", ["0701234567", "+0701234567", "+4670", "+46 70 12x", "",
                                 "+1234567890123456", "46701234567"])
def test_not_e164_is_refused_with_a_reason(raw: str) -> None:
    found = normalize_e164(raw)
    assert isinstance(found, NumberRefused) and found.reason
    with pytest.raises(ValueError, match=r"E\.164|international"):
        e164(raw)


@given(st.text(max_size=30))
def test_normalize_never_raises_and_returns_e164_or_a_refusal(raw: str) -> None:
    found = normalize_e164(raw)
    if isinstance(found, str):
        assert found.startswith("+") and found[1:].isdigit() and 9 <= len(found) <= 16
        assert normalize_e164(found) == found  # idempotent


@pytest.mark.parametrize(("raw", "expected"), [
    ("+46701234567", "+46701234567"), ("46701234567", "+46701234567"),
    ("0046701234567", "+46701234567"), ("0701234567", None), ("TRYGG", None), ("", None),
])
def test_reply_senders_in_the_forms_operators_deliver(raw: str, expected: str | None) -> None:
    assert normalize_sender(raw) == expected


# -- texts ------------------------------------------------------------------------------------

FACTS = AlarmFacts("A1", "fall", "K7Q2", address="Storgatan 1, lgh 1102", recipient_id="r-4711")


def test_alarm_text_says_type_where_code_and_link() -> None:
    text = alarm_text(FACTS, field=RecipientField.ADDRESS, app_url="https://trygg.example/app/")
    assert text == ("TRYGG Fall: Storgatan 1, lgh 1102. Svara JA K7Q2 för att ta larmet. "
                    "https://trygg.example/app/")
    coded = alarm_text(FACTS, field=RecipientField.CODE, app_url=None)
    assert "brukare r-4711" in coded and "Storgatan" not in coded
    bare = alarm_text(FACTS, field=RecipientField.NONE, app_url=None)
    assert bare == "TRYGG Fall. Svara JA K7Q2 för att ta larmet."


_marker = st.text(alphabet="QXZqxz", min_size=6, max_size=20)


@given(address=st.text(max_size=400), recipient_id=st.text(max_size=40),
       secret=_marker, field=st.sampled_from(list(RecipientField)),
       kind=st.sampled_from(["manual", "fall", "smoke", "weird", "technical"]))
def test_alarm_text_is_gsm7_bounded_and_carries_nothing_but_its_facts(
    address: str, recipient_id: str, secret: str, field: RecipientField, kind: str
) -> None:
    # A name, door code or diagnosis is never an input: the text is built from AlarmFacts
    # alone, so it can only say what they say. Check it does not invent them either.
    assume(secret.lower() not in address.lower() and secret.lower() not in recipient_id.lower())
    text = alarm_text(AlarmFacts("A1", kind, "K7Q2", address, recipient_id), field=field,
                      app_url="https://x.example/app/")
    assert len(text) <= MAX_TEXT
    assert set(text) <= GSM7
    assert "JA K7Q2" in text and text.endswith("https://x.example/app/")
    assert secret.lower() not in text.lower()


def test_gsm7_maps_typography_and_keeps_swedish() -> None:
    assert to_gsm7("Åsa – Öster’s “väg”…") == "Åsa - Öster's \"väg\"..."
    assert to_gsm7("🚑") == "?"


def test_reply_texts_are_short_and_gsm7() -> None:
    for outcome in ReplyOutcome:
        text = reply_text(outcome, "K7Q2", title="Fall", app_url="https://x.example/app/")
        assert set(text) <= GSM7 and len(text) <= 160
    assert "K7Q2" in reply_text(ReplyOutcome.ACCEPTED, "K7Q2")


# -- replies ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["JA K7Q2", "ja k7q2", "K7Q2", "k7q2 ok", " Ja,  K7Q2! ",
                                  "TAR K7Q2"])
def test_replies_that_accept(text: str) -> None:
    assert parse_reply(text) == Reply("K7Q2")


@pytest.mark.parametrize(("text", "words"), [
    ("NEJ K7Q2", "not understood"), ("kan inte K7Q2", "not understood"),
    ("JA", "no alarm code"), ("", "no alarm code"), ("JA K7Q2 K8Q3", "more than one"),
    ("JA " + "x" * 200, "too long"), ("HEJA", "no alarm code"),
])
def test_replies_that_are_refused(text: str, words: str) -> None:
    found = parse_reply(text)
    assert isinstance(found, ReplyRefused) and words in found.reason


@given(st.text(max_size=200))
def test_parse_reply_never_raises_and_only_accepts_a_well_shaped_code(text: str) -> None:
    found = parse_reply(text)
    if isinstance(found, Reply):
        assert shortcode.is_code(found.code)
        assert found.code in text.upper()


# -- Kannel -----------------------------------------------------------------------------------


def test_sendsms_asks_for_delivery_reports() -> None:
    params = sendsms_params(username="u", password="p", sender="TRYGG", to="+46701234567",
                            text="hej", dlr_url="http://gw/dlr")
    assert params["dlr-mask"] == str(DLR_MASK) == "27"
    assert params["dlr-url"] == "http://gw/dlr" and params["charset"] == "UTF-8"
    answer = sendsms_params(username="u", password="p", sender="TRYGG", to="+46701234567",
                            text="hej", dlr_url=None)
    assert "dlr-mask" not in answer and "dlr-url" not in answer


@pytest.mark.parametrize(("code", "body", "status"), [
    (202, "0: Accepted for delivery", NotificationStatus.SENT),
    (202, "3: Queued for later delivery", NotificationStatus.SENT),
    (403, "Authorization failed for sendsms", NotificationStatus.FAILED),
    (400, "", NotificationStatus.FAILED),
])
def test_sendsms_answers(code: int, body: str, status: NotificationStatus) -> None:
    outcome = sendsms_outcome(code, body)
    assert outcome.status is status and outcome.detail


def _query(url: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}


def test_dlr_url_round_trip_and_token_binds_the_message() -> None:
    url = dlr_url("http://127.0.0.1:8080/", SECRET, "018f-ab", "018f-ab.1.anna:x")
    assert "%d" in url and "%A" in url
    # No % of ours: Kannel substitutes %-escapes in the URL.
    assert url.count("%") == 2
    query = _query(url.replace("%d", "1").replace("%A", "ok"))
    report = parse_dlr(query, SECRET)
    assert report == DeliveryReport("018f-ab", "018f-ab.1.anna:x",
                                    NotificationStatus.DELIVERED, 1, "ok")
    # The token of one message does not authorise another.
    other = dict(query, m=_query(dlr_url("http://h", SECRET, "018f-ab", "018f-ab.1.bo"))["m"])
    refused = parse_dlr(other, SECRET)
    assert isinstance(refused, CallbackRefused) and refused.forbidden
    assert isinstance(parse_dlr(query, "another-secret-xxxxxxxxxxxxxxxx"), CallbackRefused)
    assert dlr_token(SECRET, "a", "m") != dlr_token(SECRET, "a", "n")


@pytest.mark.parametrize(("value", "status"), [
    (1, NotificationStatus.DELIVERED), (2, NotificationStatus.FAILED),
    (16, NotificationStatus.FAILED), (8, NotificationStatus.SENT), (4, None), (0, None),
])
def test_dlr_values(value: int, status: NotificationStatus | None) -> None:
    assert dlr_status(value) is status


@given(st.dictionaries(st.sampled_from(["a", "m", "t", "status", "answer", "x"]),
                       st.text(max_size=50)))
def test_parse_dlr_never_raises(query: dict[str, str]) -> None:
    assert isinstance(parse_dlr(query, SECRET), DeliveryReport | CallbackRefused)


def test_mo_callback() -> None:
    url = mo_url("http://127.0.0.1:8080", SECRET)
    assert "from=%p" in url and "text=%a" in url
    query = {"secret": SECRET, "from": "46701234567", "to": "TRYGG", "text": "JA K7Q2",
             "id": "abc"}
    assert parse_mo(query, SECRET) == MoMessage("+46701234567", "JA K7Q2", "abc")
    bad = parse_mo(dict(query, secret="guess"), SECRET)
    assert isinstance(bad, CallbackRefused) and bad.forbidden
    national = parse_mo(dict(query, **{"from": "0701234567"}), SECRET)
    assert isinstance(national, CallbackRefused) and not national.forbidden


STATUS_XML = b"""<?xml version="1.0"?>
<gateway><version>Kannel bearerbox version `1.4.5'.</version>
<status>running, uptime 0d 0h 0m 2s</status>
<boxes><box><type>smsbox</type><id></id><IP>127.0.0.1</IP><queue>0</queue>
<status>on-line 0d 0h 0m 1s</status><ssl>no</ssl></box></boxes>
<smscs><count>1</count><smsc><name>FAKE:23002</name><admin-id>fake</admin-id><id>fake</id>
<status>%s</status><failed>0</failed><queued>0</queued></smsc></smscs></gateway>"""


def test_status_page_online_and_link_down() -> None:
    up = parse_status(STATUS_XML.replace(b"%s", b"online 2s"))
    assert isinstance(up, KannelStatus) and up.fault() is None
    assert up.smscs == (("fake", "online 2s"),) and up.boxes == (("smsbox", "on-line 0d 0h 0m 1s"),)
    down = parse_status(STATUS_XML.replace(b"%s", b"re-connecting"))
    assert isinstance(down, KannelStatus)
    fault = down.fault()
    assert fault is not None and "SMSC link down" in fault and "re-connecting" in fault
    assert KannelStatus("running", (), (("fake", "online"),)).fault() is not None
    assert KannelStatus("suspended", (("smsbox", "on-line"),), ()).fault() is not None


@given(st.binary(max_size=300))
def test_parse_status_never_raises(data: bytes) -> None:
    assert isinstance(parse_status(data), KannelStatus | StatusRefused)


def test_status_page_refuses_entities() -> None:
    bomb = (b'<?xml version="1.0"?><!DOCTYPE g [<!ENTITY a "aaaa">]>'
            b"<gateway><status>&a;</status></gateway>")
    assert isinstance(parse_status(bomb), StatusRefused)


# -- the simulator reads what the gateway writes ----------------------------------------------


@given(st.text(max_size=100), st.sampled_from(list(RecipientField)))
def test_the_simulated_phone_finds_the_code_in_every_alarm_text(
    address: str, field: RecipientField
) -> None:
    from firmware_sim.smsphone import reply_code

    code = shortcode.assign(address, ())
    text = alarm_text(AlarmFacts("A1", "fall", code, address, "r-1"), field=field,
                      app_url="https://x.example/app/")
    assert reply_code(text) == code


def test_fakesmsc_lines_are_parsed() -> None:
    from firmware_sim.smsphone import MtMessage, parse_line

    line = ("2026-12-05 09:19:34 [20993] [0] DEBUG: Got message 1: "
            "<+46700999000 +46701234567 text TRYGG Fall: Storgatan 1. Svara JA K7Q2>")
    assert parse_line(line) == MtMessage("+46700999000", "+46701234567",
                                         "TRYGG Fall: Storgatan 1. Svara JA K7Q2")
    assert parse_line("... Got message 2: <a b data %C3%A5+x>") == MtMessage("a", "b", "å x")
    assert parse_line("... Got message 3: <a b ucs-2 %00%E5>") == MtMessage("a", "b", "å")
    assert parse_line("INFO: fakesmsc starting") is None
    assert parse_line("Got message 4: <a b weird x>") is None
