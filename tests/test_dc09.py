"""The SIA DC-09 codec (devices/dc09.py): framing, checks, answers, mapping. No I/O."""

from __future__ import annotations

import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pysiaalarm.event import SIAEvent

from alarms.model import AlarmType
from devices.contract import AlarmMessage, HeartbeatMessage, StatusMessage
from devices.dc09 import (
    CONTACT_ID_TABLE,
    MAX_FRAME,
    SIA_TABLE,
    TIME_AHEAD_S,
    TIME_BEHIND_S,
    ContactId,
    Dc09Account,
    Dc09Kind,
    Dc09Message,
    Dc09Reason,
    Dc09Refusal,
    Dc09StreamReader,
    Kind,
    RefMemory,
    Reply,
    accounts_by_id,
    classify,
    crc16,
    device_message,
    encode_ack,
    encode_duh,
    encode_event,
    encode_nak,
    encode_refusal,
    parse_answer,
    parse_codes,
    parse_frame,
)

NOW = 1_750_000_000.0
KEY16 = "0123456789ABCDEF"
KEY24 = "0123456789ABCDEF01234567"
KEY32 = "0123456789ABCDEF0123456789ABCDEF"
ACCOUNTS = accounts_by_id([
    Dc09Account("1234", "dev-a"),
    Dc09Account("ABC", "dev-b", key=KEY16),
    Dc09Account("00FF01", "dev-c", key=KEY24),
    Dc09Account("9876543210ABCDEF", "dev-d", key=KEY32),
])
KEYS = {a.account: a.key for a in ACCOUNTS.values()}


def frame(account: str = "1234", data: str = "Nri1/MA001", *, kind: Dc09Kind = Dc09Kind.SIA,
          sequence: int = 7, now: float | None = NOW, key: str | None = None,
          receiver: str | None = "R1") -> bytes:
    return encode_event(account=account, sequence=sequence, kind=kind, data=data, key=key,
                        now=now, receiver=receiver, line="L2")


def refused(result: Dc09Message | Dc09Refusal) -> Dc09Refusal:
    assert isinstance(result, Dc09Refusal), result
    return result


def accepted(result: Dc09Message | Dc09Refusal) -> Dc09Message:
    assert isinstance(result, Dc09Message), result
    return result


# -- CRC and round trips ------------------------------------------------------------------


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300))
def test_crc_is_the_one_pysiaalarm_computes(text: str) -> None:
    assert f"{crc16(text.encode()):04X}" == SIAEvent._crc_calc(text)


def test_crc_known_value() -> None:
    # CRC-16/ARC check value (the CRC of "123456789").
    assert crc16(b"123456789") == 0xBB3D


SIA_CODES_USED = sorted(SIA_TABLE)
ACCOUNT_IDS = sorted(ACCOUNTS)


@settings(max_examples=300)
@given(
    account=st.sampled_from(ACCOUNT_IDS),
    sequence=st.integers(0, 20000),
    code=st.sampled_from(SIA_CODES_USED),
    zone=st.from_regex(r"\A[0-9]{1,4}\Z"),
    area=st.from_regex(r"\A[0-9]{1,2}\Z"),
    receiver=st.one_of(st.none(), st.from_regex(r"\AR[0-9A-F]{1,6}\Z")),
    skew=st.floats(-TIME_BEHIND_S + 1, TIME_AHEAD_S - 1),
)
def test_sia_events_round_trip(account: str, sequence: int, code: str, zone: str, area: str,
                               receiver: str | None, skew: float) -> None:
    key = KEYS[account]
    raw = frame(account, f"Nri{area}/{code}{zone}", sequence=sequence, key=key,
                receiver=receiver, now=NOW + skew)
    message = accepted(parse_frame(raw, ACCOUNTS, NOW))
    assert message.account == account
    assert message.device_id == ACCOUNTS[account].device_id
    assert message.kind is Dc09Kind.SIA
    assert message.sequence == f"{sequence % 10000:04d}"
    assert (message.code, message.area, message.zone) == (code, area, zone)
    assert message.receiver == receiver
    assert message.encrypted is (key is not None)
    assert message.timestamp == pytest.approx(int(NOW + skew), abs=1)


@settings(max_examples=200)
@given(
    account=st.sampled_from(ACCOUNT_IDS),
    qualifier=st.sampled_from([1, 3, 6]),
    event=st.integers(100, 999),
    partition=st.from_regex(r"\A[0-9]{2}\Z"),
    zone=st.from_regex(r"\A[0-9]{3}\Z"),
)
def test_contact_id_events_round_trip(account: str, qualifier: int, event: int, partition: str,
                                      zone: str) -> None:
    raw = frame(account, f"{qualifier}{event} {partition} {zone}", kind=Dc09Kind.CONTACT_ID,
                key=KEYS[account])
    message = accepted(parse_frame(raw, ACCOUNTS, NOW))
    assert message.contact_id == ContactId(qualifier, event, partition, zone)
    assert message.zone == zone


@pytest.mark.parametrize("account", ACCOUNT_IDS)
def test_null_messages_are_heartbeats(account: str) -> None:
    message = accepted(parse_frame(frame(account, kind=Dc09Kind.NULL, key=KEYS[account]),
                                   ACCOUNTS, NOW))
    assert message.kind is Dc09Kind.NULL
    assert classify(message).kind is Kind.HEARTBEAT


def test_a_clear_null_message_needs_no_timestamp() -> None:
    raw = frame(kind=Dc09Kind.NULL, now=None)
    assert raw.endswith(b'"NULL"0007R1L2#1234[]\r')
    assert accepted(parse_frame(raw, ACCOUNTS, NOW)).timestamp is None


def test_published_example_frames_parse() -> None:
    # Lines from pysiaalarm's test cases (ADM-CID with receiver and line numbers) and a
    # DC-09 frame with the account only inside the data block.
    accounts = accounts_by_id([Dc09Account("12345A", "dev-x"), Dc09Account("006969", "dev-y")])
    body = '"ADM-CID"9876R579BDFL789ABC#12345A[#12345A|1110 00 129]'
    raw = f"{crc16(body.encode()):04X}{len(body):04X}{body}".encode()
    message = accepted(parse_frame(raw, accounts, NOW))
    assert (message.receiver, message.line) == ("R579BDF", "L789ABC")
    assert message.contact_id == ContactId(1, 110, "00", "129")
    assert classify(message).alarm_type is AlarmType.SMOKE
    body = '"SIA-DCS"4738R0001L0001[#006969|Nri04/OP001NM]'
    raw = f"{crc16(body.encode()):04X}{len(body):04X}{body}".encode()
    message = accepted(parse_frame(raw, accounts, NOW))
    assert (message.account, message.code, message.area) == ("006969", "OP", "04")


# -- nothing raises; tampering is never accepted -------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_parse_never_raises_on_bytes(data: bytes) -> None:
    result = parse_frame(data, ACCOUNTS, NOW)
    assert isinstance(result, Dc09Message | Dc09Refusal)
    if isinstance(result, Dc09Refusal):
        assert result.reply in (Reply.NAK, Reply.DUH)
        assert encode_refusal(result, NOW).endswith(b"\r")


@settings(max_examples=500)
@given(
    account=st.sampled_from(ACCOUNT_IDS),
    position=st.integers(0, 10_000),
    replacement=st.integers(0, 255),
)
def test_a_changed_byte_is_refused_or_changes_nothing(account: str, position: int,
                                                      replacement: int) -> None:
    original = frame(account, "Nri1/FA005", key=KEYS[account])
    expected = accepted(parse_frame(original, ACCOUNTS, NOW))
    data = bytearray(original)
    data[position % len(data)] = replacement
    result = parse_frame(bytes(data), ACCOUNTS, NOW)
    # Only a change the framing ignores (the LF/CR around a frame becoming other
    # whitespace) may still parse, and then it must say exactly the same.
    assert isinstance(result, Dc09Refusal) or result == expected


@settings(max_examples=200)
@given(st.text(alphabet="0123456789ABCDEF", min_size=1, max_size=80))
def test_garbage_ciphertext_is_refused_not_raised(cipher: str) -> None:
    body = f'"*SIA-DCS"0001L0#ABC[{cipher}'
    raw = f"{crc16(body.encode()):04X}{len(body):04X}{body}".encode()
    result = refused(parse_frame(raw, ACCOUNTS, NOW))
    assert result.reason in (Dc09Reason.DECRYPT, Dc09Reason.MISSING_TIMESTAMP,
                             Dc09Reason.TIMESTAMP, Dc09Reason.FORMAT)


# -- refusals -----------------------------------------------------------------------------


def test_bad_crc_is_naked() -> None:
    raw = bytearray(frame())
    raw[1:5] = b"0000" if raw[1:5] != b"0000" else b"FFFF"
    result = refused(parse_frame(bytes(raw), ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.CRC, Reply.NAK)
    assert parse_answer(encode_refusal(result, NOW)) is not None


def test_bad_length_is_naked() -> None:
    raw = bytearray(frame())
    raw[5:9] = b"0001"
    assert refused(parse_frame(bytes(raw), ACCOUNTS, NOW)).reason is Dc09Reason.LENGTH


def test_unknown_account_gets_duh_naming_the_frame() -> None:
    result = refused(parse_frame(frame("5555"), ACCOUNTS, NOW))
    assert (result.reason, result.reply, result.account, result.sequence) == (
        Dc09Reason.UNKNOWN_ACCOUNT, Reply.DUH, "5555", "0007")
    answer = parse_answer(encode_refusal(result, NOW))
    assert answer is not None
    assert (answer.reply, answer.sequence, answer.account) == (Reply.DUH, "0007", "5555")


def test_encrypted_account_refuses_clear_text() -> None:
    # Else anyone could raise alarms in an encrypted account's name.
    result = refused(parse_frame(frame("ABC"), ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.NOT_ENCRYPTED, Reply.DUH)


def test_encrypted_message_for_an_account_without_key() -> None:
    result = refused(parse_frame(frame("1234", key=KEY16), ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.NO_KEY, Reply.DUH)


def test_wrong_key_is_refused() -> None:
    result = refused(parse_frame(frame("ABC", key="FEDCBA9876543210"), ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.DECRYPT, Reply.DUH)


def test_encrypted_message_needs_a_timestamp() -> None:
    # Built by hand: the encoder always stamps encrypted frames.
    from devices.dc09 import _aes  # the same AES the encoder uses

    body = '"*SIA-DCS"0001L0#ABC[' + _aes(KEY16, "x" * 20 + "|Nri1/MA001]")
    raw = f"{crc16(body.encode()):04X}{len(body):04X}{body}".encode()
    result = refused(parse_frame(raw, ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.MISSING_TIMESTAMP, Reply.NAK)


@pytest.mark.parametrize(("skew", "ok"), [
    (-TIME_BEHIND_S - 2, False), (-TIME_BEHIND_S + 1, True), (0.0, True),
    (TIME_AHEAD_S - 1, True), (TIME_AHEAD_S + 2, False), (-3600.0, False),
])
@pytest.mark.parametrize("key", [None, KEY16])
def test_timestamp_window(skew: float, ok: bool, key: str | None) -> None:
    account = "ABC" if key else "1234"
    result = parse_frame(frame(account, now=NOW + skew, key=key), ACCOUNTS, NOW)
    if ok:
        accepted(result)
    else:
        assert (refused(result).reason, refused(result).reply) == (Dc09Reason.TIMESTAMP,
                                                                   Reply.NAK)


def test_unknown_sia_code_gets_duh() -> None:
    result = refused(parse_frame(frame(data="Nri1/QQ001"), ACCOUNTS, NOW))
    assert (result.reason, result.reply) == (Dc09Reason.UNKNOWN_CODE, Reply.DUH)


@pytest.mark.parametrize("data", [
    b"", b"\n\r", b"hello\r", "\n6F2B0010\"SIA-DCS\"åäö\r".encode(),
    b"SR0001L0001    006969XX    [ID00000000]", b"x" * (MAX_FRAME + 1),
])
def test_junk_is_refused(data: bytes) -> None:
    result = refused(parse_frame(data, ACCOUNTS, NOW))
    assert result.reason in (Dc09Reason.FORMAT, Dc09Reason.NOT_ASCII, Dc09Reason.UNSUPPORTED,
                             Dc09Reason.OVERSIZE)


# -- answers ------------------------------------------------------------------------------


def test_clear_ack_echoes_sequence_receiver_line_account() -> None:
    message = accepted(parse_frame(frame(), ACCOUNTS, NOW))
    ack = encode_ack(message, None, NOW)
    assert re.fullmatch(rb'\n[0-9A-F]{8}"ACK"0007R1L2#1234\[\]\r', ack)
    answer = parse_answer(ack)
    assert answer is not None
    assert (answer.reply, answer.sequence, answer.encrypted) == (Reply.ACK, "0007", False)


@pytest.mark.parametrize("account", ["ABC", "00FF01", "9876543210ABCDEF"])
def test_encrypted_ack_carries_our_time_under_the_accounts_key(account: str) -> None:
    message = accepted(parse_frame(frame(account, key=KEYS[account]), ACCOUNTS, NOW))
    ack = encode_ack(message, KEYS[account], NOW + 1)
    assert b'"*ACK"0007R1L2#' in ack
    assert parse_answer(ack, None) is None  # unreadable without the key
    answer = parse_answer(ack, KEYS[account])
    assert answer is not None
    assert (answer.reply, answer.encrypted, answer.timestamp) == (Reply.ACK, True, NOW + 1)


def test_nak_is_clear_and_carries_our_time() -> None:
    nak = encode_nak(NOW)
    assert b'"NAK"0000R0L0A0[]_' in nak
    answer = parse_answer(nak)
    assert answer is not None
    assert (answer.reply, answer.timestamp) == (Reply.NAK, NOW)


def test_duh() -> None:
    answer = parse_answer(encode_duh("0042", None, "L1", "1234"))
    assert answer is not None
    assert (answer.reply, answer.sequence, answer.account) == (Reply.DUH, "0042", "1234")


# -- stream framing -----------------------------------------------------------------------


@settings(max_examples=200)
@given(
    codes=st.lists(st.sampled_from(SIA_CODES_USED), min_size=1, max_size=6),
    cuts=st.lists(st.integers(1, 40), max_size=30),
)
def test_stream_reader_frames_whatever_the_chunking(codes: list[str], cuts: list[int]) -> None:
    frames = [frame("ABC", f"Nri1/{code}001", sequence=n, key=KEY16)
              for n, code in enumerate(codes)]
    stream = b"".join(frames)
    reader = Dc09StreamReader()
    out: list[bytes | Dc09Refusal] = []
    position = 0
    for cut in cuts:
        out += reader.feed(stream[position:position + cut])
        position += cut
    out += reader.feed(stream[position:])
    assert out == frames
    assert reader.buffered == 0


def test_stream_reader_drops_an_oversize_run_and_recovers() -> None:
    reader = Dc09StreamReader()
    out = reader.feed(b"x" * (MAX_FRAME + 10))
    assert len(out) == 1
    assert isinstance(out[0], Dc09Refusal)
    assert out[0].reason is Dc09Reason.OVERSIZE
    assert reader.buffered == 0
    assert reader.feed(b"yyy\r" + frame()) == [frame()]


# -- mapping ------------------------------------------------------------------------------


def _sia(code: str) -> Dc09Message:
    return accepted(parse_frame(frame(data=f"Nri1/{code}001"), ACCOUNTS, NOW))


def _cid(qualifier: int, event: int) -> Dc09Message:
    return accepted(parse_frame(frame(data=f"{qualifier}{event:03d} 00 001",
                                      kind=Dc09Kind.CONTACT_ID), ACCOUNTS, NOW))


@pytest.mark.parametrize(("code", "kind", "alarm_type", "state"), [
    ("MA", Kind.ALARM, AlarmType.MANUAL, None),
    ("PA", Kind.ALARM, AlarmType.MANUAL, None),
    ("FA", Kind.ALARM, AlarmType.SMOKE, None),
    ("WA", Kind.ALARM, AlarmType.WATER, None),
    ("NA", Kind.ALARM, AlarmType.INACTIVITY, None),
    ("RX", Kind.ALARM, AlarmType.TEST, None),
    ("RP", Kind.HEARTBEAT, None, None),
    ("AT", Kind.STATUS, None, "power_failure"),
    ("XT", Kind.STATUS, None, "battery_low"),
    ("TA", Kind.STATUS, None, "tamper"),
])
def test_sia_table(code: str, kind: Kind, alarm_type: AlarmType | None, state: str | None) -> None:
    meaning = classify(_sia(code))
    assert (meaning.kind, meaning.alarm_type, meaning.state, meaning.known) == (
        kind, alarm_type, state, True)


def test_sia_codes_outside_the_table_fall_back_by_their_kind() -> None:
    burglary = classify(_sia("BA"))  # "Burglary Alarm": an alarm is never dropped
    assert (burglary.kind, burglary.alarm_type, burglary.known) == (Kind.ALARM,
                                                                     AlarmType.MANUAL, False)
    restore = classify(_sia("MH"))  # "Medical Alarm Restore"
    assert (restore.kind, restore.state) == (Kind.STATUS, "restore")
    opening = classify(_sia("OP"))  # "Opening Report"
    assert (opening.kind, opening.state, opening.known) == (Kind.STATUS, "sia_OP", False)


@pytest.mark.parametrize(("qualifier", "event", "kind", "value"), [
    (1, 100, Kind.ALARM, AlarmType.MANUAL),
    (1, 101, Kind.ALARM, AlarmType.MANUAL),
    (1, 111, Kind.ALARM, AlarmType.SMOKE),
    (1, 154, Kind.ALARM, AlarmType.WATER),
    (1, 601, Kind.ALARM, AlarmType.TEST),
    (1, 602, Kind.HEARTBEAT, None),
    (1, 301, Kind.STATUS, "power_failure"),
    (3, 301, Kind.STATUS, "power_restored"),
    (3, 101, Kind.STATUS, "restore"),
    (1, 199, Kind.ALARM, AlarmType.MANUAL),  # unknown 1xx: still an alarm
    (1, 401, Kind.STATUS, "cid_401"),
    (6, 100, Kind.STATUS, "cid_100_6"),
])
def test_contact_id_table(qualifier: int, event: int, kind: Kind,
                          value: AlarmType | str | None) -> None:
    meaning = classify(_cid(qualifier, event))
    assert meaning.kind is kind
    assert (meaning.alarm_type if kind is Kind.ALARM else meaning.state) == value
    assert meaning.known is ((event in CONTACT_ID_TABLE and qualifier == 1) or qualifier == 3)


def test_site_codes_override_the_tables() -> None:
    sia, cid = parse_codes({"BA": "door", "cid:130": "door", "OP": "status:opened",
                            "ma": "fall", "cid:602": "heartbeat"})
    assert classify(_sia("BA"), sia=sia, contact_id=cid).alarm_type is AlarmType.DOOR
    assert classify(_sia("OP"), sia=sia, contact_id=cid).state == "opened"
    assert classify(_sia("MA"), sia=sia, contact_id=cid).alarm_type is AlarmType.FALL
    assert classify(_cid(1, 130), sia=sia, contact_id=cid).alarm_type is AlarmType.DOOR


@pytest.mark.parametrize("codes", [{"BA": "burglary"}, {"B": "door"}, {"cid:13": "door"},
                                   {"MA": "status:bad state"}])
def test_bad_site_codes_are_refused(codes: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="dc09 code"):
        parse_codes(codes)


@pytest.mark.parametrize(("account", "key"), [("12", None), ("12345678901234567", None),
                                              ("XYZ", None), ("123", "short"),
                                              ("123", "0123456789ABCDEFG")])
def test_bad_accounts_are_refused(account: str, key: str | None) -> None:
    with pytest.raises(ValueError, match=r"DC-09 account|key of account"):
        Dc09Account(account, "dev", key)


def test_an_account_configured_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        accounts_by_id([Dc09Account("123", "a"), Dc09Account("123", "b")])


# -- refs and device messages -------------------------------------------------------------


def test_resends_share_a_ref_new_events_do_not() -> None:
    memory = RefMemory(window_s=600)
    first = _sia("MA")
    # A resend: same sequence and event; fresh timestamp and padding (encrypted).
    resend = accepted(parse_frame(frame(data="Nri1/MA001", now=NOW + 15), ACCOUNTS, NOW + 15))
    ref = memory.ref_for(first, NOW)
    assert memory.ref_for(resend, NOW + 15) == ref
    # The sequence number reused later (wrapped, or the transmitter restarted): new alarm.
    assert memory.ref_for(first, NOW + 601) != ref
    other = accepted(parse_frame(frame(data="Nri1/MA001", sequence=8), ACCOUNTS, NOW))
    assert memory.ref_for(other, NOW) != ref


def test_ref_memory_is_bounded() -> None:
    memory = RefMemory(max_entries=3)
    messages = [accepted(parse_frame(frame(sequence=n), ACCOUNTS, NOW)) for n in range(5)]
    refs = [memory.ref_for(m, NOW + n) for n, m in enumerate(messages)]
    assert len(set(refs)) == 5
    assert len(memory._seen) == 3


def test_device_messages() -> None:
    alarm = _sia("FA")
    built = device_message(alarm, classify(alarm), "0007.1", NOW + 1)
    assert built == AlarmMessage("dev-a", "0007.1", int(NOW * 1000), AlarmType.SMOKE, None)
    null = accepted(parse_frame(frame(kind=Dc09Kind.NULL, now=None), ACCOUNTS, NOW))
    assert device_message(null, classify(null), "n", NOW) == HeartbeatMessage(
        "dev-a", "n", int(NOW * 1000), None, None)
    power = _sia("AT")
    assert device_message(power, classify(power), "p", NOW) == StatusMessage(
        "dev-a", "p", int(NOW * 1000), "power_failure", None)
