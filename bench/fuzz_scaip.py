"""A long SCAIP/SIP fuzz run (issue 17, "Fuzzing"): 100,000+ inputs, figures printed as JSON.

Part 1, sans-I/O: generated and mutated datagrams through ``parse_message``, the same bytes
in random chunks through ``SipStreamReader``, every body through ``parse_mrq`` and, when
valid, ``classify`` / ``content_of`` / ``describe``. Invariant: nothing raises; every
refusal of a body whose ref was readable carries it.

Part 2, live: a ``ScaipListener`` on loopback with a handler that stores by (cid, ref) and
answers snu 0. Several sources send valid alarms interleaved with garbage; a forger sends
garbage and valid messages from an address that never answers. Invariants: every valid
alarm is answered snu 0 and handled exactly once per (cid, ref) (the client resends what
got no answer, as a controller does), no exception is logged, and toward the forger's
address the listener sends no request of its own and fewer bytes than it received plus
the budget's slack per window.

    .venv/bin/python bench/fuzz_scaip.py --inputs 100000 --live 20000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import socket
import time
from collections import Counter
from typing import Any

from devices.scaip import (
    ScaipError,
    ScaipRequest,
    classify,
    content_of,
    describe,
    encode_mrq,
    parse_mrq,
    parse_mrs,
    readable_ref,
)
from devices.sip import (
    SipError,
    SipRequest,
    SipResponse,
    SipStreamReader,
    build_response,
    parse_message,
)
from gateway.sip import ScaipListener
from gateway.sipguard import BUDGET_WINDOW_S, UNVERIFIED_SLACK_BYTES

DTY = ["0004", "0003", "0005", "0023", "0033", "0014", "0012", "0002", "9999", "12"]
STC = ["0010", "0009", "0093", "0111", "0088", "0016", "0085", "0086", "0102", "0777", None]
TAGS = ["ref", "cid", "dty", "mty", "stc", "pri", "did", "crd", "lco", "lva", "lte", "ver",
        "dco", "cha", "lge", "geo", "x"]


def sip(body: bytes, rng: random.Random, *, user: str, call: str, method: str = "MESSAGE",
        transport: str = "UDP") -> bytes:
    head = (f"{method} sip:trygg@127.0.0.1 SIP/2.0\r\n"
            f"Via: SIP/2.0/{transport} 127.0.0.1:5999;branch=z9hG4bK{call}\r\n"
            f"From: <sip:{user}@127.0.0.1>;tag=f\r\nTo: <sip:trygg@127.0.0.1>\r\n"
            f"Call-ID: {call}\r\nCSeq: {rng.randint(1, 9)} {method}\r\n"
            f"Content-Type: application/scaip+xml\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def random_mrq(rng: random.Random) -> bytes:
    fields = []
    for _ in range(rng.randint(0, 12)):
        tag = rng.choice(TAGS)
        text = rng.choice(["", "1", "0010", "ME", "PI", "4711", "a-b", "01.00", "1.0",
                           "59.3,18.0", "x" * rng.randint(0, 300), "<", "&amp;"])
        fields.append(f"<{tag}>{text}</{tag}>")
    return ("<mrq>" + "".join(fields) + "</mrq>").encode()


def mutate(data: bytes, rng: random.Random) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            break
        op = rng.random()
        i = rng.randrange(len(out))
        if op < 0.5:
            out[i] = rng.randrange(256)
        elif op < 0.75:
            del out[i]
        else:
            out[i:i] = bytes([rng.randrange(256)])
    return bytes(out)


def generate(rng: random.Random, n: int) -> bytes:
    kind = rng.random()
    valid = encode_mrq(ref=f"r{n}", cid="4711", dty=rng.choice(DTY),
                       stc=rng.choice(STC), mty=rng.choice(["ME", "ME", "IN", "PI", "RE"]))
    if kind < 0.25:
        return sip(valid, rng, user="4711", call=f"c{n}")
    if kind < 0.45:
        return sip(mutate(valid, rng), rng, user="4711", call=f"c{n}")
    if kind < 0.6:
        return mutate(sip(valid, rng, user="4711", call=f"c{n}"), rng)
    if kind < 0.75:
        return sip(random_mrq(rng), rng, user=rng.choice(["4711", "1", "x"]), call=f"c{n}")
    if kind < 0.85:
        return bytes(rng.randrange(256) for _ in range(rng.randint(0, 400)))
    if kind < 0.9:
        return sip(valid, rng, user="4711", call=f"c{n}", method="message")
    if kind < 0.95:
        return sip(valid, rng, user="4711", call=f"c{n}") + b"X" * rng.choice([0, 17_000])
    return b"\r\n" * rng.randint(0, 4)


def sans_io(count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    outcomes: Counter[str] = Counter()
    refs_kept = refs_readable = 0
    started = time.perf_counter()
    stream = SipStreamReader()
    for n in range(count):
        data = generate(rng, n)
        parsed = parse_message(data)
        # The same bytes through the TCP framer, in random chunks.
        at = 0
        while at < len(data):
            step = rng.randint(1, 512)
            for item in stream.feed(data[at:at + step]):
                assert isinstance(item, SipRequest | SipResponse | SipError)
            at += step
        assert stream.buffered <= 16 * 1024 + 512
        if isinstance(parsed, SipError):
            outcomes[f"sip_{parsed.reason}"] += 1
            continue
        if not isinstance(parsed, SipRequest):
            outcomes["sip_response"] += 1
            continue
        mrq = parse_mrq(parsed.body)
        if isinstance(mrq, ScaipRequest):
            meaning = classify(mrq)
            content_of(mrq)
            describe(mrq)
            outcomes[f"valid_{meaning.kind}"] += 1
        else:
            assert isinstance(mrq, ScaipError)
            outcomes[f"refused_{mrq.reason}"] += 1
            if readable_ref(parsed.body) is not None:
                refs_readable += 1
                refs_kept += mrq.ref is not None
                # The only refusals without their ref: two <ref> elements, which is which?
                assert mrq.ref is not None or parsed.body.count(b"<ref") >= 2
        parse_mrs(parsed.body)
    seconds = time.perf_counter() - started
    return {
        "inputs": count,
        "seconds": round(seconds, 2),
        "inputs_per_s": round(count / seconds),
        "exceptions": 0,  # any exception stops the run
        "refusals_with_a_raw_readable_ref": refs_readable,
        "of_which_answered_with_the_ref": refs_kept,
        "without_it_all_had_two_ref_elements": True,
        "outcomes": dict(outcomes.most_common()),
    }


class Store:
    """A handler that counts each (cid, ref) it handles."""

    def __init__(self) -> None:
        self.handled: Counter[tuple[str, str]] = Counter()

    async def __call__(self, request: ScaipRequest, sip_request: SipRequest) -> int:
        self.handled[(request.cid, request.ref)] += 1
        return 0


async def live(count: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    store = Store()
    errors: list[str] = []

    class Catch(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.exc_info:
                errors.append(record.getMessage())

    logging.getLogger("gateway").addHandler(Catch())
    # The per-source rate limit is measured elsewhere (tests/test_scaip_edges.py); here it
    # would only turn the run into a test of the client's resends.
    async with ScaipListener(store, port=0, datagrams_per_s=2000) as listener:
        assert listener.udp_port is not None
        target = ("127.0.0.1", listener.udp_port)
        controllers = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
        for n, sock in enumerate(controllers):
            sock.bind((f"127.0.2.{n + 1}", 0))
            sock.setblocking(False)
        forger = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        forger.bind(("127.0.2.99", 0))
        forger.setblocking(False)
        answered: set[str] = set()
        forger_in = forger_out = forger_requests = 0
        forger_branches: set[str] = set()
        valid: dict[str, tuple[socket.socket, bytes]] = {}
        started = time.perf_counter()

        def drain() -> None:
            nonlocal forger_in, forger_requests
            for sock in controllers:
                while True:
                    try:
                        data = sock.recv(65536)
                    except BlockingIOError:
                        break
                    item = parse_message(data)
                    body = b""
                    if isinstance(item, SipResponse) and item.status == 200:
                        body = item.body
                    elif isinstance(item, SipRequest):
                        body = item.body
                        sock.sendto(build_response(200, request=item, to_tag="c"), target)
                    mrs = parse_mrs(body) if body else None
                    if mrs is not None and not isinstance(mrs, ScaipError) and mrs.snu == 0:
                        answered.add(mrs.ref or "")
            while True:
                try:
                    data = forger.recv(65536)
                except BlockingIOError:
                    break
                forger_in += len(data)
                item = parse_message(data)
                if isinstance(item, SipRequest):
                    forger_requests += 1
                    forger_branches.add(item.branch or "")

        for n in range(count):
            if rng.random() < 0.25:
                sock = controllers[n % len(controllers)]
                ref = f"v{n}"
                data = sip(encode_mrq(ref=ref, cid="4711", dty="0004", stc="0010"), rng,
                           user="4711", call=f"v{n}")
                valid[ref] = (sock, data)
                sock.sendto(data, target)
            elif rng.random() < 0.5:
                data = generate(rng, n)
                forger.sendto(data, target)
                forger_out += len(data)
            else:
                controllers[n % len(controllers)].sendto(generate(rng, n), target)
            if n % 20 == 0:
                await asyncio.sleep(0.01)  # paced: the figure is the listener's, not the kernel's
                drain()
        resent = 0
        for _ in range(6):
            await asyncio.sleep(0.5)
            drain()
            missing = [ref for ref in valid if ref not in answered]
            if not missing:
                break
            for ref in missing:
                sock, data = valid[ref]
                # A new transaction, as a controller resends after its timeout.
                sock.sendto(data.replace(f"z9hG4bKv{ref[1:]}".encode(),
                                         f"z9hG4bKr{resent}x".encode()), target)
                resent += 1
                await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        drain()
        once = all(store.handled[("4711", ref)] >= 1 for ref in valid)
        stats = listener.stats
        guard = listener.guard.stats
        windows = max(1.0, seconds / BUDGET_WINDOW_S + 1)
        return {
            "datagrams": count,
            "seconds": round(seconds, 2),
            "valid_alarms": len(valid),
            "valid_answered_snu0": sum(ref in answered for ref in valid),
            "valid_handled_at_least_once": once,
            "handler_calls_per_valid_alarm_max": max(store.handled.values(), default=0),
            "resent_after_no_answer": resent,
            "logged_exceptions": len(errors),
            "forger_bytes_sent": forger_out,
            "forger_bytes_received": forger_in,
            # Only valid <mrq>s of a known controller draw a <mrs> MESSAGE: once, never again.
            "forger_mrs_messages_received": forger_requests,
            "forger_mrs_retransmissions": forger_requests - len(forger_branches),
            "forger_bound_bytes": forger_out + int(UNVERIFIED_SLACK_BYTES * windows),
            "rate_limited": guard.rate_limited,
            "budget_dropped": guard.budget_dropped,
            "listener_datagrams_sent": stats.datagrams_sent,
            "listener_bytes_in": stats.bytes_received,
            "listener_bytes_out": stats.bytes_sent,
        }


async def reflection(requests: int, rate: float | None, valid: bool) -> dict[str, Any]:
    """The issue 17.5 measurement: ``requests`` MESSAGEs from an address that never answers
    (garbage bodies, or valid alarms of a known controller), then 40 s of listening (longer
    than Timer F, 32 s): what comes back, in datagrams and bytes."""
    store = Store()
    async with ScaipListener(store, port=0, datagrams_per_s=rate) as listener:
        assert listener.udp_port is not None
        target = ("127.0.0.1", listener.udp_port)
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind(("127.0.3.1", 0))
        sock.setblocking(False)
        rng = random.Random(17)
        sent_bytes = back_bytes = back = requests_back = 0
        for n in range(requests):
            body = (encode_mrq(ref=f"a{n}", cid="4711", dty="0004", stc="0010") if valid
                    else b"garbage " * 8)
            data = sip(body, rng, user="4711", call=f"x{n}")
            sock.sendto(data, target)
            sent_bytes += len(data)
            if n % 5 == 0:
                await asyncio.sleep(0.005)  # ~1,000/s: the kernel's buffer is not the limit
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        while loop.time() < deadline:
            try:
                data = sock.recv(65536)
            except BlockingIOError:
                await asyncio.sleep(0.01)
                continue
            back += 1
            back_bytes += len(data)
            requests_back += isinstance(parse_message(data), SipRequest)
        sock.close()
        stats = listener.stats
        return {
            "requests": requests,
            "body": "valid alarm" if valid else "garbage",
            "rate_limit_per_s": rate if rate is not None else "default",
            "bytes_sent": sent_bytes,
            "datagrams_back": back,
            "of_which_requests": requests_back,
            "bytes_back": back_bytes,
            "amplification": round(back_bytes / sent_bytes, 3),
            # The listener's own count (the socket above may drop under load).
            "listener_datagrams_sent": stats.datagrams_sent,
            "listener_bytes_sent": stats.bytes_sent,
            "listener_amplification": round(stats.bytes_sent / stats.bytes_received, 3),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--inputs", type=int, default=100_000)
    parser.add_argument("--live", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--reflection", action="store_true",
                        help="also measure reflection (4 x 40 s)")
    args = parser.parse_args()
    report: dict[str, Any] = {"sans_io": sans_io(args.inputs, args.seed)}
    if args.live:
        report["live"] = asyncio.run(live(args.live, args.seed))
    if args.reflection:
        report["reflection"] = [
            asyncio.run(reflection(500, rate, valid))
            for rate in (None, 100_000.0) for valid in (False, True)
        ]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
