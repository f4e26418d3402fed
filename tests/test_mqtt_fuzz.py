"""A bounded fuzzer for the MQTT device contract against a real gateway (issue 17, "Fuzzing").

Each example starts a gateway on the real Mosquitto and publishes a generated mix on device
topics: valid alarms of several devices (some resent) interleaved with garbage: random bytes,
random JSON, hostile values in otherwise valid messages (lone surrogates, control
characters, integers too large for a float, NaN and Infinity, deep nesting, oversize
payloads, wrong types), unknown devices and channels. The invariants:

- no exception escapes (a logged exception fails the test, tests/conftest.py), and no
  message reaches the intake's fault path;
- the gateway stays healthy (``/healthz`` 200, journal writable, broker link up);
- every valid alarm is acked ``stored`` and stored exactly once (as its own alarm or
  attached to its device's open one). Like a real device, the client resends an alarm
  that got no ack, with the same device time, a few times.

The longer run (100,000+ inputs, sans-I/O and against a gateway) is bench/fuzz_edges.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import GatewayFactory
from tests.helpers import Device, device

pytestmark = [pytest.mark.network, pytest.mark.slow]

DEVICES = ["sim-001", "sim-002", "sim-003", "sim-004"]
KINDS = ["manual", "fall", "smoke", "door", "bed_exit", "inactivity", "water"]
WAIT = 5.0
ROUNDS = 3  # sends of an unacked alarm, first included


@dataclass(frozen=True)
class Valid:
    device: str
    ref: str
    kind: str
    resend: bool  # sent twice in a row


@dataclass(frozen=True)
class Garbage:
    kind: str
    device: str
    channel: str
    payload: bytes


# Values that must never get through the codec, nor break anything behind it.
HOSTILE: st.SearchStrategy[Any] = st.one_of(
    st.sampled_from(["\ud800", "a\udfffb", "x\x00y", "\x1b[31m", "\u202e", "\n", "", " " * 70,
                     "x" * 65, 10**400, -(10**400), 2**53, -1, 1e308, [], {}, None, True,
                     [[[[[]]]]], "NaN"]),
    st.text(max_size=70),
    st.integers(),
    st.floats(),  # NaN and infinities included: json.dumps writes them as tokens
    st.lists(st.floats(), max_size=70),
)
# The fields each channel reads: a hostile value goes where it is read.
FIELDS_OF = {"alarm": ["ref", "ts", "type", "battery", "position"],
             "telemetry": ["ref", "ts", "metric", "value", "unit"],
             "heartbeat": ["ref", "ts", "battery", "rssi"],
             "status": ["ref", "ts", "state", "firmware"]}
FIELDS = sorted({f for fields in FIELDS_OF.values() for f in fields})
JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), children, max_size=5),
    max_leaves=12,
)
TOPIC_ID = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.:ÅÄÖ åäö", min_size=1,
                   max_size=70)


# A valid body of each channel, to put one hostile value into.
_BODIES: dict[str, dict[str, Any]] = {
    "alarm": {"type": "manual"},
    "telemetry": {"metric": "temperature", "value": 21.5, "unit": "C"},
    "heartbeat": {"battery": 0.9},
    "status": {"state": "online", "firmware": "1.0"},
}


def _base(channel: str, ref: str) -> dict[str, Any]:
    return {"ref": ref, "ts": 1_712_345_678_901, **_BODIES[channel]}


@st.composite
def garbage(draw: st.DrawFn) -> Garbage:
    kind = draw(st.sampled_from(["bytes", "json", "hostile_field", "deep", "oversize",
                                 "unknown_device", "unknown_channel", "not_object"]))
    channel = draw(st.sampled_from(["alarm", "telemetry", "heartbeat", "status"]))
    device_id = draw(st.sampled_from(DEVICES))
    ref = f"g{draw(st.integers(0, 10**9))}"
    if kind == "bytes":
        payload = draw(st.binary(max_size=300))
    elif kind == "json":
        payload = json.dumps(draw(JSON)).encode()
    elif kind == "hostile_field":
        body = _base(channel, ref)
        body[draw(st.sampled_from(FIELDS_OF[channel]))] = draw(HOSTILE)
        # ensure_ascii=False writes lone surrogates raw (as UTF-8 cannot): surrogatepass
        payload = json.dumps(body, ensure_ascii=draw(st.booleans())).encode(
            "utf-8", "surrogatepass")
    elif kind == "deep":
        depth = draw(st.sampled_from([100, 1000, 100_000]))
        payload = b'{"ref": "' + ref.encode() + b'", "ts": 1, "type": ' + b"[" * depth
    elif kind == "oversize":
        body = _base(channel, ref)
        body["pad"] = "x" * draw(st.sampled_from([65_000, 200_000]))
        payload = json.dumps(body).encode()
    elif kind == "unknown_device":
        device_id = draw(TOPIC_ID)
        payload = json.dumps(_base(channel, ref)).encode()
    elif kind == "unknown_channel":
        channel = draw(st.sampled_from(["ack", "cmd", "alarms", "ALARM", "x", "alarm/x"]))
        payload = json.dumps(_base("alarm", ref)).encode()
    else:
        payload = json.dumps(draw(st.sampled_from([[], "alarm", 1, None, [{"ref": ref}]]))
                             ).encode()
    return Garbage(kind, device_id, channel, payload)


@st.composite
def mixes(draw: st.DrawFn) -> list[Valid | Garbage]:
    count = draw(st.integers(1, 10))
    valid = [Valid(draw(st.sampled_from(DEVICES)), f"v{n}", draw(st.sampled_from(KINDS)),
                   draw(st.booleans())) for n in range(count)]
    junk = draw(st.lists(garbage(), max_size=40))
    return draw(st.permutations([*valid, *junk]))


def _stored(devices: dict[str, Device], items: list[Valid]) -> Callable[[], bool]:
    return lambda: all(devices[v.device].acks.get(v.ref, {}).get("status") == "stored"
                       for v in items)


async def _until(predicate: Callable[[], bool], timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline and not predicate():
        await asyncio.sleep(0.02)


@settings(max_examples=10, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(mix=mixes())
async def test_valid_alarms_among_garbage_are_acked_and_stored_exactly_once(
    mosquitto: tuple[str, int], make_gateway: GatewayFactory, prefix: str, tmp_path: Path,
    mix: list[Valid | Garbage],
) -> None:
    data_dir = tmp_path / uuid.uuid4().hex[:8]
    async with make_gateway(mosquitto, data_dir=data_dir) as gw, \
            contextlib.AsyncExitStack() as stack:
        devices = {d: await stack.enter_async_context(device(mosquitto, prefix, d))
                   for d in DEVICES}
        sender = devices[DEVICES[0]].client
        valid = [item for item in mix if isinstance(item, Valid)]
        for n, item in enumerate(mix):
            if isinstance(item, Garbage):
                await sender.publish(f"{prefix}/{item.device}/{item.channel}", item.payload,
                                     qos=1)
            else:
                await devices[item.device].alarm(item.ref, item.kind)
                if item.resend:
                    await devices[item.device].alarm(item.ref, item.kind)
            if n % 8 == 0:
                await asyncio.sleep(0)
        await _until(_stored(devices, valid), WAIT)
        for _ in range(ROUNDS - 1):
            missing = [v for v in valid if not _stored(devices, [v])()]
            if not missing:
                break
            for item in missing:
                await devices[item.device].alarm(item.ref, item.kind)
            await _until(_stored(devices, missing), WAIT)

        for item in valid:
            assert devices[item.device].acks.get(item.ref, {}).get("status") == "stored", item
            stored = [a for a in gw.core.alarms.values()
                      if (a.device_id, a.ref) == (item.device, item.ref)
                      or any((r.device_id, r.ref) == (item.device, item.ref)
                             for r in a.attached)]
            assert len(stored) == 1, (item, stored)
        async with httpx.AsyncClient() as client:
            health = await client.get(f"http://127.0.0.1:{gw.http_port}/healthz")
        assert health.status_code == 200, health.text
        faults = gw.metrics.handler_errors.labels("mqtt")._value.get()
        assert faults == 0
