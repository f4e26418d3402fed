"""A bounded fuzzer for the serial line against a real gateway (issue 17, "Fuzzing").

Each example starts a gateway with a serial line on a pty, the simulated receiver on the
other end, and puts a generated mix on the line: valid alarms of two devices interleaved
with garbage: random bytes, valid frames with bytes flipped, frames with a correct
checksum around hostile content (unknown kinds and versions, non-ASCII, numbers with
exponents, keys twice, out-of-range values, overlong fields), oversize and truncated
frames, echoed ACK/NAK frames and records of an unknown device. The invariants:

- no exception escapes (a logged exception fails the test, tests/conftest.py), and the
  link's handler never fails;
- the gateway stays healthy (``/healthz`` 200, the line up);
- every valid alarm is ACKed as stored and stored exactly once. Like a real receiver, the
  simulator resends an alarm until it gets an answer (garbage before it may have swallowed
  the frame: the decoder resynchronises on the next STX).

The longer run (100,000+ inputs, sans-I/O and against a gateway) is bench/fuzz_edges.py.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alarms.model import AlarmType
from devices.contract import AlarmMessage
from devices.serial import MAX_FRAME, NakReason, crc16, encode_ack, encode_nak, encode_record
from firmware_sim import Backoff
from firmware_sim.serial_device import SerialAlarm, SerialReceiverSim
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import GatewayFactory, seed_small

pytestmark = [pytest.mark.network, pytest.mark.slow]

DEVICES = ["rx-a", "rx-b"]
KINDS = [AlarmType.MANUAL, AlarmType.FALL, AlarmType.SMOKE, AlarmType.DOOR, AlarmType.WATER]
WAIT = 15.0


@dataclass(frozen=True)
class Valid:
    device: str
    kind: AlarmType


@dataclass(frozen=True)
class Garbage:
    kind: str
    data: bytes


def framed(body: bytes) -> bytes:
    """``body`` as a frame with a correct checksum: only its content can be refused."""
    return b"\x02" + body + b"*" + f"{crc16(body):04X}".encode() + b"\x03\r\n"


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data)
    for index, value in flips:
        out[index % len(out)] = value
    return bytes(out)


KEYS = ["type", "battery", "rssi", "metric", "value", "unit", "state", "firmware", "reason",
        "x", "TYPE", ""]
HOSTILE_VALUES = st.sampled_from([
    "manual", "alien", "", "1e3", "nan", "inf", "-0.1", "1.5", "0." + "9" * 30, "9" * 13,
    "1,2,", "1," * 70, "1,,2", ",", "-", ".5", "5.", "m" * 40, "f" * 80, "temperature",
]) | st.text(alphabet=[chr(c) for c in range(32, 127) if chr(c) not in "|;=*"], max_size=12)
# A payload of fields the record kinds read, with values that are wrong in every way the
# grammar allows to be expressed (keys twice, empty, unknown, malformed numbers).
HOSTILE_PAYLOAD = st.lists(st.tuples(st.sampled_from(KEYS), HOSTILE_VALUES), max_size=5).map(
    lambda fields: ";".join(f"{k}={v}" for k, v in fields))


@st.composite
def garbage(draw: st.DrawFn) -> Garbage:
    # Hostile content three times as often: it reaches the most code.
    kind = draw(st.sampled_from(["bytes", "flipped", "hostile", "hostile", "hostile",
                                 "grammar", "oversize", "truncated", "echo", "unknown_device",
                                 "non_ascii"]))
    ref = f"g{draw(st.integers(0, 10**9))}"
    record = encode_record(AlarmMessage(draw(st.sampled_from(DEVICES)), ref, 1_712_345_678_901,
                                        AlarmType.MANUAL, None))
    if kind == "bytes":
        data = draw(st.binary(max_size=200))
    elif kind == "flipped":
        flips = draw(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                              min_size=1, max_size=4))
        data = _flip(record, flips)
    elif kind == "hostile":
        kind_letter = draw(st.sampled_from("AAHHTTSSKNXa"))
        data = framed(f"1|{kind_letter}|rx-a|{ref}|1712345678901|"
                      f"{draw(HOSTILE_PAYLOAD)}".encode())
    elif kind == "grammar":
        body = draw(st.sampled_from([
            f"2|A|rx-a|{ref}|1|type=manual", f"1|A|rx-a|{ref}|1e3|type=manual",
            f"1|A||{ref}|1|type=manual", "1|A|rx-a||1|type=manual",
            f"1|A|rx-a|{ref}|99999999999999999999|type=manual", f"1|A|rx a|{ref}|1|x=1",
            f"1|A|rx-a|{ref}|1", "1|A", "", "|||||", f"1|A|rx-a|{'r' * 65}|1|type=manual",
        ]))
        data = framed(body.encode())
    elif kind == "oversize":
        data = b"\x02" + b"A" * draw(st.integers(MAX_FRAME, 3 * MAX_FRAME)) + b"\x03"
    elif kind == "truncated":
        data = record[:draw(st.integers(1, len(record) - 1))]
    elif kind == "echo":
        data = draw(st.sampled_from([encode_ack("rx-a", ref),
                                     encode_nak(None, None, NakReason.BAD_FRAME)]))
    elif kind == "unknown_device":
        data = encode_record(AlarmMessage("rx-ghost", ref, 1, AlarmType.MANUAL, None))
    else:
        data = framed(f"1|A|rx-a|{ref}|1|type=m\u00e4nual".encode("latin-1"))
    return Garbage(kind, data)


@st.composite
def mixes(draw: st.DrawFn) -> list[Valid | Garbage]:
    valid = [Valid(draw(st.sampled_from(DEVICES)), draw(st.sampled_from(KINDS)))
             for _ in range(draw(st.integers(1, 8)))]
    junk = draw(st.lists(garbage(), max_size=40))
    return draw(st.permutations([*valid, *junk]))


@settings(max_examples=8, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mix=mixes())
async def test_valid_serial_alarms_among_garbage_are_acked_and_stored_exactly_once(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, tmp_path: Path,
    mix: list[Valid | Garbage],
) -> None:
    data_dir = tmp_path / uuid.uuid4().hex[:8]
    org = OrgStore(data_dir / "org.sqlite3")
    seed_small(org)
    for device_id in DEVICES:
        org.put_device(DeviceInfo(device_id, "alarm_unit", "r-a"))
    org.close()
    sim = SerialReceiverSim([*DEVICES, "rx-ghost"], link_path=data_dir / "ttyFUZZ",
                            backoff=Backoff(0.05, 0.3), seed=5)
    async with sim:
        line = {"name": "fz", "url": str(sim.path), "baudrate": 115200}
        async with make_gateway(mosquitto, data_dir=data_dir, serial=[line]) as gw:
            link = gw.serial_links["fz"]
            await asyncio.wait_for(link.wait_up(), 5)
            sent: list[SerialAlarm] = []
            for n, item in enumerate(mix):
                if isinstance(item, Garbage):
                    sim.send_raw(item.data)
                else:
                    sent.append(sim.raise_alarm(item.device, item.kind))
                if n % 8 == 0:
                    await asyncio.sleep(0)
            assert await sim.wait_settled(sent, timeout=WAIT), [a.status for a in sent]
            for alarm in sent:
                assert alarm.status == "stored", alarm
                stored = [a for a in gw.core.alarms.values()
                          if (a.device_id, a.ref) == (alarm.device_id, alarm.ref)
                          or any((r.device_id, r.ref) == (alarm.device_id, alarm.ref)
                                 for r in a.attached)]
                assert len(stored) == 1, (alarm, stored)
            async with httpx.AsyncClient() as client:
                health = await client.get(f"http://127.0.0.1:{gw.http_port}/healthz")
            assert health.status_code == 200, health.text
            assert link.up
            assert link.stats.handler_errors == 0
            assert gw.metrics.handler_errors.labels("serial")._value.get() == 0
