"""Sending SCAIP to an alarm centre, sans-I/O (devices/scaip_out.py): no sockets here."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alarms.model import AlarmType
from devices.scaip import MessageType, ScaipRequest, ScaipResponse, Snu, parse_mrq, parse_mrs
from devices.scaip_out import (
    DEFAULT_CODES,
    T1,
    T2,
    CentreCode,
    ClientTransaction,
    LinkMonitor,
    Origin,
    TxEvent,
    TxState,
    Verdict,
    alarm_mrq,
    centre_ref,
    codes_with,
    heartbeat_mrq,
    judge_mrs,
    judge_status,
    options_request,
    parse_sip_uri,
    scaip_message,
)
from devices.sip import SipRequest, parse_message


def test_every_alarm_type_has_a_code_and_builds_a_valid_mrq() -> None:
    for alarm_type in AlarmType:
        body = alarm_mrq(ref="0123456789abcdef", cid="4711", alarm_type=alarm_type,
                         device_id=None)
        parsed = parse_mrq(body)
        assert isinstance(parsed, ScaipRequest), (alarm_type, parsed)
        code = DEFAULT_CODES[alarm_type]
        assert (parsed.ref, parsed.cid, parsed.mty) == ("0123456789abcdef", "4711",
                                                         MessageType.ALARM)
        assert (parsed.dty, parsed.stc, parsed.did) == (code.dty, code.stc, None)


def test_gateway_as_one_controller_names_the_device_in_did() -> None:
    parsed = parse_mrq(alarm_mrq(ref="r", cid="4711", alarm_type=AlarmType.SMOKE,
                                 device_id="dev-a"))
    assert isinstance(parsed, ScaipRequest)
    assert (parsed.cid, parsed.did, parsed.dty) == ("4711", "dev-a", "0023")


def test_heartbeat_mrq() -> None:
    parsed = parse_mrq(heartbeat_mrq(ref="r1", cid="4711"))
    assert isinstance(parsed, ScaipRequest)
    assert parsed.mty is MessageType.HEARTBEAT


def test_site_codes() -> None:
    codes = codes_with({"fall": {"dty": "0005"}, "door": {"dty": "0009", "stc": "0011"}})
    assert codes[AlarmType.FALL] == CentreCode("0005", "0010")
    assert codes[AlarmType.DOOR] == CentreCode("0009", "0011")
    for bad in ({"gas": {"dty": "1"}}, {"fall": {"dty": "12345"}}, {"fall": {"pri": "1"}}):
        with pytest.raises(ValueError, match="centre code"):
            codes_with(bad)


@given(st.text(min_size=1, max_size=60))
def test_centre_ref_is_a_stable_valid_scaip_ref(alarm_id: str) -> None:
    ref = centre_ref(alarm_id)
    assert ref == centre_ref(alarm_id)
    assert len(ref) == 16
    parsed = parse_mrq(alarm_mrq(ref=ref, cid="1", alarm_type=AlarmType.MANUAL, device_id=None))
    assert isinstance(parsed, ScaipRequest)
    assert parsed.ref == ref


def test_sip_uris() -> None:
    uri = parse_sip_uri("sip:larm@192.0.2.10:5070")
    assert (uri.user, uri.host, uri.port) == ("larm", "192.0.2.10", 5070)
    assert parse_sip_uri("sip:centre.example").port is None
    assert parse_sip_uri("sip:x@[2001:db8::1]:5060").host == "2001:db8::1"
    for bad in ("http://x", "sip:", "sip:a@b:99999", "larm@host"):
        with pytest.raises(ValueError, match=r"URI|port"):
            parse_sip_uri(bad)


def test_the_message_is_a_sip_request_a_scaip_receiver_accepts() -> None:
    target = parse_sip_uri("sip:larm@192.0.2.10:5070")
    raw = scaip_message(target=target, origin=Origin("192.0.2.1", 40000, "UDP"),
                        from_user="dev-a", body=b"<mrq/>", call_id="c1@x",
                        branch="z9hG4bKabc", from_tag="t1")
    request = parse_message(raw)
    assert isinstance(request, SipRequest)
    assert (request.method, request.uri) == ("MESSAGE", "sip:larm@192.0.2.10:5070")
    assert request.from_user == "dev-a"  # a SCAIP receiver checks From user == cid
    assert request.content_type == "application/scaip+xml"
    assert request.branch == "z9hG4bKabc"
    assert request.body == b"<mrq/>"
    options = parse_message(options_request(target=target, origin=Origin("::1", 5, "TCP"),
                                            from_user="trygg", call_id="c", branch="z9hG4bK1",
                                            from_tag="t"))
    assert isinstance(options, SipRequest)
    assert options.method == "OPTIONS"


# -- the client transaction ----------------------------------------------------------------


def _run(tx: ClientTransaction, start: float, responses: dict[float, int]) -> list[tuple[float, str]]:
    """Drive the transaction timer by timer; responses arrive at the given times."""
    events: list[tuple[float, str]] = []
    pending = sorted(responses.items())
    while (deadline := tx.deadline) is not None:
        if pending and pending[0][0] <= deadline:
            at, status = pending.pop(0)
            if tx.on_response(status, at):
                events.append((at, f"final {status}"))
            elif tx.deadline is not None:
                events.append((at, "provisional"))
            continue
        event = tx.on_timer(deadline)
        if event is not None:
            events.append((deadline - start, event.value))
    return events


def test_udp_retransmits_at_t1_doubling_to_t2_and_times_out_at_64_t1() -> None:
    tx = ClientTransaction(reliable=False, now=100.0)
    events = _run(tx, 100.0, {})
    times = [at for at, event in events if event == "retransmit"]
    assert times[:5] == [0.5, 1.5, 3.5, 7.5, 11.5]  # intervals 0.5, 1, 2, 4, 4 ...
    assert all(b - a <= T2 for a, b in itertools.pairwise(times))
    assert events[-1] == (64 * T1, "timeout")
    assert tx.state is TxState.TERMINATED


def test_reliable_transport_never_retransmits() -> None:
    tx = ClientTransaction(reliable=True, now=0.0)
    assert _run(tx, 0.0, {}) == [(64 * T1, "timeout")]


def test_provisional_response_slows_retransmission_to_t2_and_final_ends_it() -> None:
    tx = ClientTransaction(reliable=False, now=0.0)
    events = _run(tx, 0.0, {0.7: 100, 20.0: 200})
    retransmits = [at for at, event in events if event == "retransmit"]
    assert retransmits[0] == 0.5
    assert retransmits[1:] == pytest.approx([0.7 + T2 * n for n in range(1, 5)])
    assert events[-1] == (20.0, "final 200")
    assert tx.deadline is None
    assert tx.on_timer(1000.0) is None
    assert tx.on_response(200, 1000.0) is False


@settings(max_examples=300)
@given(
    reliable=st.booleans(),
    t1=st.floats(0.01, 2.0),
    answers=st.lists(st.tuples(st.floats(0, 200), st.sampled_from([100, 180, 200, 404, 503])),
                     max_size=4),
)
def test_transaction_properties(reliable: bool, t1: float,
                                answers: list[tuple[float, int]]) -> None:
    tx = ClientTransaction(reliable=reliable, now=0.0, t1=t1, t2=8 * t1)
    events = _run(tx, 0.0, dict(answers))
    kinds = [event for _, event in events]
    # It always ends, exactly once: a final response or the timeout, nothing after.
    assert tx.state is TxState.TERMINATED
    ends = [k for k in kinds if k == "timeout" or k.startswith("final")]
    assert len(ends) == 1
    assert kinds[-1] == ends[0]
    # Never later than Timer F, never a retransmission on a reliable transport, and never
    # more often than T1 nor less often than T2 before a response.
    assert all(at <= 64 * t1 + 1e-9 for at, _ in events)
    retransmits = [at for at, event in events if event == "retransmit"]
    if reliable:
        assert retransmits == []
    # Each retransmission comes T1..T2 after the previous one or the last provisional.
    last = 0.0
    for at, event in events:
        if event == "retransmit":
            assert t1 - 1e-9 <= at - last <= 8 * t1 + 1e-9
        if event in ("retransmit", "provisional"):
            last = at


# -- judging -------------------------------------------------------------------------------


@pytest.mark.parametrize(("snu", "verdict"), [
    (0, Verdict.CONFIRMED), (4, Verdict.RETRY), (5, Verdict.RETRY), (6, Verdict.RETRY),
    (1, Verdict.REFUSED), (2, Verdict.REFUSED), (3, Verdict.REFUSED), (7, Verdict.REFUSED),
    (42, Verdict.REFUSED),
])
def test_the_snu_decides(snu: int, verdict: Verdict) -> None:
    outcome = judge_mrs(ScaipResponse("r1", snu), "r1")
    assert outcome is not None
    assert (outcome.verdict, outcome.snu) == (verdict, snu)
    assert outcome.answered


def test_an_mrs_for_another_ref_is_not_ours() -> None:
    assert judge_mrs(ScaipResponse("other", 0), "r1") is None
    # An <mrs> without ref (the receiver could not read ours) still answers us.
    outcome = judge_mrs(ScaipResponse(None, Snu.INVALID_FORMAT), "r1")
    assert outcome is not None
    assert outcome.verdict is Verdict.REFUSED


def test_an_unreadable_mrs_is_a_refusal() -> None:
    parsed = parse_mrs(b"<mrs><snu>x</snu></mrs>")
    outcome = judge_mrs(parsed, "r1")
    assert outcome is not None
    assert outcome.verdict is Verdict.REFUSED


@pytest.mark.parametrize(("status", "verdict"), [
    (486, Verdict.RETRY), (503, Verdict.RETRY), (408, Verdict.RETRY),
    (400, Verdict.REFUSED), (403, Verdict.REFUSED), (415, Verdict.REFUSED), (404, Verdict.REFUSED),
])
def test_sip_errors(status: int, verdict: Verdict) -> None:
    assert judge_status(status, "x").verdict is verdict


# -- link supervision ----------------------------------------------------------------------


def test_link_goes_down_after_the_failures_and_up_at_the_next_answer() -> None:
    link = LinkMonitor(down_after=2)
    first = link.observe(True, "ok")  # up: clears whatever a previous run left open
    assert first is not None
    assert first.up
    assert link.observe(True, "ok") is None
    assert link.observe(False, "timeout") is None
    change = link.observe(False, "timeout")
    assert change is not None
    assert (change.up, change.detail) == (False, "timeout")
    assert link.observe(False, "timeout") is None  # reported once
    back = link.observe(True, "snu 6 (busy)")  # busy is an answer: the link works
    assert back is not None
    assert back.up


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 4))
def test_link_changes_alternate_and_follow_the_results(results: list[bool],
                                                       down_after: int) -> None:
    link = LinkMonitor(down_after)
    changes = [c.up for r in results if (c := link.observe(r, "")) is not None]
    assert all(a != b for a, b in itertools.pairwise(changes))
    if True in results[:down_after]:
        assert changes[:1] == [True]  # an early answer reports up at once
    failures_at_end = len(results) - len(
        "".join("1" if r else "0" for r in results).rstrip("0"))
    if failures_at_end >= down_after:
        assert link.up is False


def test_timers_scale_with_t1() -> None:
    tx = ClientTransaction(reliable=False, now=0.0, t1=0.01, t2=0.08)
    assert tx.deadline == pytest.approx(0.01)
    assert tx.on_timer(0.01) is TxEvent.RETRANSMIT
    assert tx.timeout_at == pytest.approx(0.64)
