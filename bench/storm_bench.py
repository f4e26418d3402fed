"""An alarm storm: every device reconnects after a network outage with an alarm and a status.

    .venv/bin/python bench/storm_bench.py [--devices 10000] [--journal sqlite,postgres]

On a private Mosquitto (ingest_bench's), ``--devices`` provisioned devices each publish one
alarm and one status message at once (a raw publisher process, at the broker's pace). The
figure: alarms stored and acked per second, from the first publish to the last ``stored``
ack, for ``trygg run`` on the SQLite journal and on PostgreSQL (a fresh database), next to
the ceiling in the same run: a bare paho client that acks every alarm at once and stores
nothing. Also: the gateway's CPU time per alarm (user + system, /proc), acks missing, and
alarms stored more than once (read back from the journal).

Prints JSON, then a markdown table. Importable: ``run.py`` calls ``bench()``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import cluster_bench
from bench.ingest_bench import (
    PUBLISH_INFLIGHT,
    PYTHON,
    GatewayUnderTest,
    _connect_packet,
    _publish_packet,
    _string,
    _varint,
    broker,
    load_avg,
    seed_org,
    stop,
    wait_healthy,
)

LIMIT_S = 180.0


def device_list(n: int) -> list[str]:
    """The storm's devices."""
    return [f"storm-{i:05d}" for i in range(n)]


# -- the storm ---------------------------------------------------------------------------------


def publisher_main(port: int, prefix: str, devices: int) -> None:
    """Child process: every device's alarm and status, as fast as the broker takes them."""
    now_ms = int(time.time() * 1000)
    packets: list[bytes] = []
    for n, device in enumerate(device_list(devices)):
        packets.append(_publish_packet(
            f"{prefix}/{device}/alarm".encode(),
            b'{"ref":"storm-%d","ts":%d,"type":"manual"}' % (n, now_ms), (2 * n) % 65535 + 1))
        packets.append(_publish_packet(
            f"{prefix}/{device}/status".encode(),
            b'{"ref":"s-%d","ts":%d,"state":"online"}' % (n, now_ms), (2 * n + 1) % 65535 + 1))
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(_connect_packet(f"storm-pub-{os.getpid()}"))
    connack = b""
    while len(connack) < 4:
        connack += sock.recv(4 - len(connack))
    acked = [0]
    window = threading.Condition()

    def read_acks() -> None:
        pending = 0
        while acked[0] < len(packets):
            data = sock.recv(65536)
            if not data:
                return
            pending += len(data)
            with window:
                acked[0] = pending // 4
                window.notify_all()

    threading.Thread(target=read_acks, daemon=True).start()
    def room(sent: int) -> bool:
        return sent - acked[0] < PUBLISH_INFLIGHT

    began = time.time()
    for n in range(0, len(packets), 200):
        with window:
            window.wait_for(functools.partial(room, n), LIMIT_S)
        sock.sendall(b"".join(packets[n : n + 200]))
    print(json.dumps({"t0": began, "sent": len(packets)}), flush=True)
    with window:
        window.wait_for(lambda: acked[0] >= len(packets), LIMIT_S)
    with contextlib.suppress(OSError):
        sock.sendall(b"\xe0\x00")
    sock.close()


class AckCounter:
    """A raw MQTT subscriber on ``prefix/+/ack`` (QoS 0): counts distinct ``stored`` refs."""

    def __init__(self, port: int, prefix: str, expected: int) -> None:
        self.expected = expected
        self.stored: set[bytes] = set()
        self.last = 0.0
        self.done = threading.Event()
        self._sock = socket.create_connection(("127.0.0.1", port))
        self._sock.sendall(_connect_packet(f"storm-acks-{os.getpid()}-{time.time_ns()}"))
        self._buffer = self._recv_exactly(4)  # CONNACK
        topic = _string(f"{prefix}/+/ack".encode())
        body = (1).to_bytes(2, "big") + topic + b"\x00"
        self._sock.sendall(b"\x82" + _varint(len(body)) + body)
        self._recv_exactly(5)  # SUBACK
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _recv_exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            data += self._sock.recv(n - len(data))
        return data

    def _run(self) -> None:
        buffer = b""
        while not self.done.is_set():
            chunk = self._sock.recv(1 << 20)
            if not chunk:
                return
            buffer += chunk
            offset = 0
            while True:
                if len(buffer) - offset < 2:
                    break
                length, shift, i = 0, 0, offset + 1
                while i < len(buffer) and buffer[i] & 0x80:
                    length |= (buffer[i] & 0x7F) << shift
                    shift += 7
                    i += 1
                if i >= len(buffer):
                    break
                length |= buffer[i] << shift
                start, end = i + 1, i + 1 + length
                if end > len(buffer):
                    break
                if buffer[offset] >> 4 == 3:  # PUBLISH (QoS 0: no packet id)
                    topic_len = int.from_bytes(buffer[start : start + 2], "big")
                    payload = buffer[start + 2 + topic_len : end]
                    if b'"stored"' in payload:
                        self.stored.add(json.loads(payload)["ref"].encode())
                        self.last = time.time()
                offset = end
            buffer = buffer[offset:]
            if len(self.stored) >= self.expected:
                self.done.set()

    def wait(self, limit: float) -> None:
        """Until every expected ack arrived, or nothing new came for ``limit`` s."""
        count = -1
        while not self.done.wait(limit):
            if len(self.stored) == count:
                return
            count = len(self.stored)

    def close(self) -> None:
        """Stop reading."""
        self.done.set()
        self._sock.close()


def paho_echo_main(port: int, prefix: str) -> None:
    """Child process, the ceiling: ack every alarm at once, store nothing."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        parts = message.topic.split("/")
        if parts[-1] == "alarm":
            ref = json.loads(message.payload)["ref"]
            client.publish(f"{prefix}/{parts[-2]}/ack",
                           json.dumps({"ref": ref, "status": "stored"}), qos=1)

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"storm-echo-{os.getpid()}")
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.on_message = on_message
    client.connect("127.0.0.1", port)
    client.subscribe([(f"{prefix}/+/alarm", 1), (f"{prefix}/+/status", 1)])
    print("ready", flush=True)
    client.loop_forever()


def storm(port: int, prefix: str, devices: int, pid: int | None) -> dict[str, Any]:
    """One storm against whatever consumes ``prefix``; ``pid``: whose CPU to count."""
    counter = AckCounter(port, prefix, devices)
    cpu_before = cluster_bench.process_cpu_s([pid]) if pid else 0.0
    spy = None
    if pid and os.environ.get("STORM_PROFILE"):
        # py-spy (pip install py-spy) on the consumer while the storm lasts.
        out = Path(os.environ["STORM_PROFILE"]) / f"storm-{pid}.txt"
        spy = subprocess.Popen([str(Path(PYTHON).parent / "py-spy"), "record", "-p", str(pid),
                                "-f", "raw", "-r", "200", "--gil", "-o", str(out)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.Popen([PYTHON, __file__, "--publisher", str(port), prefix, str(devices)],
                            stdout=subprocess.PIPE)
    assert proc.stdout is not None
    started = json.loads(proc.stdout.readline())["t0"]
    counter.wait(15.0)
    cpu = (cluster_bench.process_cpu_s([pid]) - cpu_before) if pid else None
    if spy is not None:
        spy.send_signal(2)
        spy.wait(60)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(30)
    stop(proc)
    counter.close()
    acked = len(counter.stored)
    seconds = max(1e-6, counter.last - started)
    return {"devices": devices, "acked": acked, "missing": devices - acked,
            "seconds": round(seconds, 3), "alarms_per_s": round(acked / seconds),
            "cpu_ms_per_alarm": None if cpu is None or not acked else round(cpu * 1000 / acked, 3)}


def _stored_twice_sqlite(journal: Path) -> int:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        bodies = [json.loads(b) for (b,) in conn.execute("SELECT body FROM journal")]
    finally:
        conn.close()
    keys = Counter((b["device_id"], b["ref"]) for b in bodies
                   if b.get("kind") in ("opened", "attached") and b.get("ref", "").startswith("storm"))
    return sum(n - 1 for n in keys.values() if n > 1)


@contextlib.contextmanager
def _gateway(directory: Path, port: int, devices: int, dsn: str | None
             ) -> Iterator[GatewayUnderTest]:
    gw = GatewayUnderTest(directory, port, "pg" if dsn else "sqlite")
    seed_org(gw.data_dir, device_list(devices))
    if dsn:
        with gw.config.open("a") as out:
            out.write(f'journal_dsn = "{dsn}"\n')
        # TOML: a top-level key must come before the tables; rewrite in order.
        lines = gw.config.read_text().splitlines()
        top = [line for line in lines if line.startswith("journal_dsn")]
        rest = [line for line in lines if not line.startswith("journal_dsn")]
        gw.config.write_text("\n".join(top + rest) + "\n")
    proc = gw.start()
    try:
        wait_healthy(gw.http_port, proc, limit=120)
        yield gw
    finally:
        gw.stop()


def bench(devices: int = 10_000, journals: tuple[str, ...] = ("sqlite", "postgres")
          ) -> dict[str, Any]:
    """The ceiling, then the gateway on each journal."""
    result: dict[str, Any] = {"devices": devices, "load_before": load_avg()}
    with broker() as port, tempfile.TemporaryDirectory() as tmp:
        prefix = f"bench/storm-echo-{os.getpid()}/trygg/v1"
        echo = subprocess.Popen([PYTHON, __file__, "--echo", str(port), prefix],
                                stdout=subprocess.PIPE)
        assert echo.stdout is not None
        echo.stdout.readline()
        try:
            result["ceiling_paho_echo"] = storm(port, prefix, devices, echo.pid)
        finally:
            stop(echo)
        for journal in journals:
            dsn_context = (cluster_bench.database() if journal == "postgres"
                           else contextlib.nullcontext(None))
            with dsn_context as dsn, _gateway(Path(tmp) / journal, port, devices, dsn) as gw:
                assert gw.proc is not None
                figures = storm(port, gw.prefix, devices, gw.proc.pid)
                if dsn is None:
                    figures["stored_twice"] = _stored_twice_sqlite(gw.data_dir / "journal.sqlite3")
                result[journal] = figures
    result["load_after"] = load_avg()
    return result


def table(result: dict[str, Any]) -> str:
    """A markdown summary."""
    c = result["ceiling_paho_echo"]
    rows = ["| figure | value | ceiling, same run | goal |", "| --- | --- | --- | --- |"]
    goals = {"sqlite": "≥ 5,000/s", "postgres": "≥ 2,000/s"}
    for journal in ("sqlite", "postgres"):
        r = result.get(journal)
        if r is None:
            continue
        rows.append(
            f"| storm of {result['devices']:,} alarms, {journal}: stored+acked/s "
            f"(missing, CPU ms/alarm) | {r['alarms_per_s']:,} ({r['missing']}, "
            f"{r['cpu_ms_per_alarm']}) | paho echo {c['alarms_per_s']:,}/s | {goals[journal]} |")
    return "\n".join(rows)


def main() -> None:
    """Command line (and the child processes' entry points)."""
    if sys.argv[1:2] == ["--publisher"]:
        publisher_main(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
        return
    if sys.argv[1:2] == ["--echo"]:
        paho_echo_main(int(sys.argv[2]), sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--devices", type=int, default=10_000)
    parser.add_argument("--journal", default="sqlite,postgres")
    args = parser.parse_args()
    result = bench(args.devices, tuple(args.journal.split(",")))
    print(json.dumps(result, indent=2))
    print()
    print(table(result))


if __name__ == "__main__":
    main()
