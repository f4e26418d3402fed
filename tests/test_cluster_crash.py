"""Scale-out crash safety (issue #11): three gateways, one SIGKILLed in the middle of a burst.

Three ``trygg run`` processes share one PostgreSQL journal (a throw-away database) and the
machine's Mosquitto (``$share`` group of their own). 100 simulated devices send 1,000
alarms in waves and resend until acked; staff phones are connected to two different
gateways. The gateway holding the ``escalation`` lease is SIGKILLed mid-burst, while the
escalation ladder of every alarm is still climbing and while a silent device's offline
deadline falls due. Acceptance:

- no alarm lost, none stored twice (claims in ``trygg_alarm_refs`` and journal records);
- none shown twice (one alarm id per (device, ref) on every phone), every alarm shown;
- no escalation step journaled twice, every ladder completed, the alarm centre called at
  most once per delivery attempt;
- every lease the dead gateway held has a survivor as owner within the bound;
- supervision continues: two devices that fall silent around the kill are reported
  offline exactly once each, by a survivor; every device is still watched;
- escalation keeps time: every ladder step is journaled within ESCALATION_LATE_S of when
  it fell due (or of the takeover, for steps due while nobody held the lease), and no
  gateway logs an error or an exception.

The measured takeover time and lateness are printed (``pytest -s``); the gateways' logs are
in the test's tmp_path (gw1.log .. gw3.log).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import httpx
import psycopg
import pytest

from gateway.duties import ESCALATION
from gateway.org import DeviceInfo, OrgStore
from tests.conftest import free_port, seed_small
from tests.helpers import ResendingFleet
from tests.test_crash import GatewayProcess, StaffWatcher
from tests.test_crash import write_config as crash_config
from tests.test_escalation_gateway import (
    Centre,
    centre,  # noqa: F401 - the fixture
)
from tests.test_journal_contract import fresh_database

pytestmark = [pytest.mark.network, pytest.mark.slow]

LEASE_TTL_S = 2.0
# The holder renews every TTL/3, so its rows expire at most TTL after the kill, and a
# survivor tries again every TTL/3: takeover within TTL * 4/3 of the kill (2.67 s). The
# slack is for this shared 2-core machine, where three gateways, PostgreSQL, Mosquitto and
# the test compete for the CPU (a renewal round or a /healthz poll can be late by a second).
# The test checks that takeover happens in bounded time, not how fast; it prints the value.
TAKEOVER_SLACK_S = 3.0
TAKEOVER_BOUND_S = LEASE_TTL_S * 4 / 3 + TAKEOVER_SLACK_S

# Nobody accepts, so every alarm climbs the whole ladder within seconds: the team at 1 s
# (before the kill), the next level at 4 s and the alarm centre at 7 s (around and after
# it). No reminders or centre retries within the test: each step happens exactly once.
ESCALATION_SETTINGS = {
    "team_s": 1.0,
    "next_level_s": 4.0,
    "centre_s": 7.0,
    "reminder_s": 600.0,
    "centre_retry_s": 600.0,
}
LADDER = ("team", "next_level", "centre")
# A ladder step is journaled at most this long after it fell due (the escalation timer's
# own delay, a commit, a retry after a stale decision, a loaded machine) - except for steps
# due while nobody held the lease, which may wait for the takeover on top. Generous, as the
# other bounds: the deterministic check is that no gateway logs an error (a tick that gives
# up after repeated stale decisions does, and stalls the whole ladder meanwhile).
# Measured 0.65 s (holder) and 1.31 s (survivor) worst on this 2-core machine; the bound
# is four times that so that a loaded CI machine does not make it flaky: it catches a
# stalled ladder, not a slow one.
ESCALATION_LATE_S = 6.0

DEVICES = [f"sim-{n:03d}" for n in range(100)]
LATE_DEVICE = "dev-b"


def parity(device_id: str) -> int:
    """The device's team: 1 for team-a (anna), 0 for team-b (cleo), as in seed_small."""
    return 0 if device_id == LATE_DEVICE else int(device_id[-3:]) % 2
WAVES = 10  # alarms per device: b0 opens the recipient's alarm, b1..b9 attach to it
WAVE_GAP_S = 0.8
AFTER_KILL_WAVES = 4  # sent only once the victim is dead
# Silent devices (supervision): heartbeats stop, the deadline is interval * 1.5 later.
# hb-early falls silent before the kill so that its deadline passes while no survivor
# holds the supervision lease yet (the take-over reconciliation must report it); hb-late
# falls silent at the kill and is due after the takeover (the survivor's own timer).
HB_EARLY, HB_EARLY_S = "hb-early", 2.0
HB_LATE, HB_LATE_S = "hb-late", 3.0
HEARTBEAT_EVERY_S = 0.25
# hb-early's deadline comes this long after the kill (it must be after the kill, so the
# dead gateway cannot report it, and before the earliest possible takeover, TTL * 2/3).
EARLY_DEADLINE_AFTER_KILL_S = 0.8
SUPERVISED = len(DEVICES) + 4  # the sim fleet, dev-a, dev-b and the two silent devices


@dataclass
class Node:
    """One gateway of the cluster."""

    name: str
    gateway_id: str
    data_dir: Path
    process: GatewayProcess

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.process.http_port}"

    @property
    def log(self) -> str:
        return self.process.log.read_text(errors="replace")


@dataclass
class Cluster:
    """Three configured (not yet started) gateways and what they share."""

    dsn: str
    prefix: str
    nodes: list[Node]
    centre: Centre


def write_config(path: Path, *, gateway_id: str, data_dir: Path, dsn: str,
                 group: str, prefix: str, http_port: int, centre_url: str) -> None:
    escalation = "\n".join(f"{k} = {v}" for k, v in ESCALATION_SETTINGS.items())
    crash_config(
        path, data_dir, prefix, http_port, gateway_id=gateway_id,
        top=f'journal_dsn = "{dsn}"\ndelivery_timeout_s = 30.0\n',
        tables=(f'\n[cluster]\nshared_group = "{group}"\nlease_ttl_s = {LEASE_TTL_S}\n'
                f'\n[escalation]\n{escalation}\ncentre_url = "{centre_url}"\n'),
    )


def seed(data_dir: Path) -> None:
    """The same organisation on every gateway: seed_small plus two fast-heartbeat devices."""
    org = OrgStore(data_dir / "org.sqlite3")
    try:
        seed_small(org)
        org.put_device(DeviceInfo(HB_EARLY, "alarm_unit", "r-a", heartbeat_s=HB_EARLY_S))
        org.put_device(DeviceInfo(HB_LATE, "alarm_unit", "r-a", heartbeat_s=HB_LATE_S))
    finally:
        org.close()


@pytest.fixture
async def cluster(
    tmp_path: Path, prefix: str, mosquitto: tuple[str, int],
    centre: tuple[Centre, str],  # noqa: F811 - the imported fixture
) -> AsyncIterator[Cluster]:
    """Three seeded, configured gateways on a fresh database; all stopped afterwards."""
    fake, url = centre
    tag = uuid.uuid4().hex[:8]
    async with fresh_database() as dsn:
        nodes = []
        for n in (1, 2, 3):
            name = f"gw{n}"
            data_dir = tmp_path / name
            seed(data_dir)
            http_port = free_port()
            config = tmp_path / f"{name}.toml"
            gateway_id = f"{name}-{tag}"
            write_config(config, gateway_id=gateway_id, data_dir=data_dir, dsn=dsn,
                         group=f"t{tag}", prefix=prefix, http_port=http_port, centre_url=url)
            process = GatewayProcess(config, http_port, tmp_path / f"{name}.log")
            nodes.append(Node(name, gateway_id, data_dir, process))
        try:
            yield Cluster(dsn, prefix, nodes, fake)
        finally:
            # Gateways of a cluster keep no broker session (gateway/mqtt.py SESSION_EXPIRY_S):
            # nothing is left on the shared broker once they are stopped.
            for node in nodes:
                node.process.stop()


class WaveFleet(ResendingFleet):
    """ResendingFleet whose alarms come in waves, resending unacked ones meanwhile."""

    late: frozenset[str] = frozenset()  # devices that only join the waves after the kill
    late_from = 0

    async def wave(self, n: int) -> None:
        """Every device raises alarm ``b{n}`` (a late device only from wave ``late_from``)."""
        for device_id in self.device_ids:
            if device_id in self.late and n < self.late_from:
                continue
            self.sent[(device_id, f"b{n}")] = 0
            await self._send(device_id, f"b{n}")

    async def resend_loop(self) -> None:
        """Resend every unacked alarm every ``resend_s`` (until cancelled)."""
        while True:
            await asyncio.sleep(self.resend_s)
            for key in [k for k in self.sent if k not in self.acked]:
                await self._send(*key)

    async def until_all_acked(self, timeout: float) -> None:
        async with asyncio.timeout(timeout):
            while len(self.acked) < len(self.sent):
                await asyncio.sleep(0.05)


async def heartbeats(broker: tuple[str, int], prefix: str, device_id: str,
                     stop: asyncio.Event, stopped: dict[str, float]) -> None:
    """Heartbeat every HEARTBEAT_EVERY_S until ``stop``; records the last one's time."""
    async with aiomqtt.Client(broker[0], broker[1], identifier=f"{prefix}-{device_id}") as client:
        n = 0
        while not stop.is_set():
            body = {"ref": f"h{n}", "ts": int(time.time() * 1000)}
            await client.publish(f"{prefix}/{device_id}/heartbeat", json.dumps(body), qos=1)
            stopped[device_id] = time.time()
            n += 1
            try:
                await asyncio.wait_for(stop.wait(), HEARTBEAT_EVERY_S)
            except TimeoutError:
                pass


async def health(client: httpx.AsyncClient, node: Node) -> dict[str, Any] | None:
    """A node's /healthz body (200 or 503), or None if it does not answer."""
    try:
        response = await client.get(f"{node.base}/healthz", timeout=2.0)
    except httpx.HTTPError:
        return None
    body: dict[str, Any] = response.json()
    return body


def leases_of(body: dict[str, Any] | None) -> set[str]:
    if body is None:
        return set()
    return set(body.get("cluster", {}).get("leases", []))


async def rows(dsn: str, query: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(query, params)
        return await cur.fetchall()


async def journal(dsn: str) -> list[tuple[str, dict[str, Any]]]:
    """(writing gateway, record body) of every journal row, in commit order."""
    found = await rows(dsn, "SELECT gateway_id, body FROM trygg_journal ORDER BY seq")
    return [(str(gw), json.loads(body)) for gw, body in found]


async def poll(what: str, check: Callable[[], Awaitable[bool]], timeout: float) -> None:
    """Wait until ``check()`` holds; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.1)


async def watch_takeover(survivors: list[Node], wanted: set[str], killed_at: float,
                         held_twice: list[str]) -> dict[str, float]:
    """Poll the survivors' /healthz every 50 ms until they hold ``wanted``; seconds per lease.

    Also records any moment at which two survivors claim the same lease.
    """
    taken: dict[str, float] = {}
    async with httpx.AsyncClient() as client:
        while not wanted <= set(taken):
            bodies = await asyncio.gather(*(health(client, n) for n in survivors))
            now = time.monotonic()
            held = [leases_of(b) for b in bodies]
            held_twice.extend(sorted(held[0] & held[1]))
            for name in (held[0] | held[1]) & wanted:
                taken.setdefault(name, now - killed_at)
            await asyncio.sleep(0.05)
    return taken


def offline_alarms(records: list[tuple[str, dict[str, Any]]], device_id: str
                   ) -> list[tuple[str, dict[str, Any]]]:
    return [(gw, body) for gw, body in records
            if body["kind"] == "opened" and body["type"] == "technical"
            and body["device_id"] == device_id and body["ref"].startswith("offline.")]


async def test_sigkill_of_the_lease_holder_loses_duplicates_and_misses_nothing(
    cluster: Cluster, mosquitto: tuple[str, int],
) -> None:
    began = time.monotonic()
    dsn, prefix = cluster.dsn, cluster.prefix
    stop_early, stop_late = asyncio.Event(), asyncio.Event()
    last_beat: dict[str, float] = {}
    async with asyncio.TaskGroup() as group:
        # Heartbeats flow before any gateway subscribes, so no gateway ever sees them late.
        beats = [
            group.create_task(heartbeats(mosquitto, prefix, HB_EARLY, stop_early, last_beat),
                              name="heartbeats early"),
            group.create_task(heartbeats(mosquitto, prefix, HB_LATE, stop_late, last_beat),
                              name="heartbeats late"),
        ]
        # gw1 first: it takes the leases; the others then start side by side.
        first, *others = cluster.nodes
        first.process.start()
        await first.process.wait_healthy(60)
        for node in others:
            node.process.start()
        await asyncio.gather(*(node.process.wait_healthy(60) for node in others))
        async with httpx.AsyncClient() as client:
            bodies = {n.name: await health(client, n) for n in cluster.nodes}
        holders = [n for n in cluster.nodes if ESCALATION in leases_of(bodies[n.name])]
        assert len(holders) == 1, f"escalation lease holders: {bodies}"
        victim = holders[0]
        survivors = [n for n in cluster.nodes if n is not victim]
        print(f"\nstarted in {time.monotonic() - began:.1f} s; victim {victim.name}, "
              f"leases {sorted(leases_of(bodies[victim.name]))}")

        # Staff phones on the two survivors: anna (team-a, odd devices), cleo (team-b).
        watchers = [StaffWatcher(survivors[0].process.http_port, "anna"),
                    StaffWatcher(survivors[1].process.http_port, "cleo")]
        watches = [group.create_task(w.run(), name=f"staff {w.username}") for w in watchers]
        async with asyncio.timeout(30):
            for watcher in watchers:
                await watcher.synced.wait()

        # dev-b's first alarm comes after the kill: a new alarm whose whole ladder falls to
        # the survivors, however late the machine's load makes the kill.
        fleet = WaveFleet(mosquitto, prefix, [*DEVICES, LATE_DEVICE], resend_s=1.0)
        fleet.late, fleet.late_from = frozenset({LATE_DEVICE}), WAVES - AFTER_KILL_WAVES
        async with fleet:
            killed = asyncio.Event()

            async def burst() -> None:
                # Waves every WAVE_GAP_S; the last ones only after the kill, so the kill
                # always lands mid-burst however slow the machine is.
                for n in range(1, WAVES):
                    if n == WAVES - AFTER_KILL_WAVES:
                        await killed.wait()
                    await asyncio.sleep(WAVE_GAP_S)
                    await fleet.wave(n)

            resender = group.create_task(fleet.resend_loop(), name="resends")
            burst_began = time.monotonic()
            await fleet.wave(0)
            waves = group.create_task(burst(), name="burst")

            async def escalated() -> bool:
                found = await rows(dsn, "SELECT count(*) FROM trygg_journal"
                                        " WHERE kind = 'escalated'")
                return bool(found[0][0] > 0)

            # The holder has started on the ladder (team step) before it dies.
            await poll("the first escalation", escalated, 30)
            stop_early.set()
            await beats[0]
            # hb-early is due 1.5 intervals after its last heartbeat: kill just before.
            early_deadline = last_beat[HB_EARLY] + HB_EARLY_S * 1.5
            await asyncio.sleep(max(0.0, early_deadline - EARLY_DEADLINE_AFTER_KILL_S
                                    - time.time()))
            victim_leases = {str(name) for (name,) in await rows(
                dsn, "SELECT name FROM trygg_leases WHERE owner = %s"
                     " AND expires_at > clock_timestamp()", (victim.gateway_id,))}
            acked_before_kill = dict(fleet.acked)
            killed_wall, killed_at = time.time(), time.monotonic()
            victim.process.kill()
            killed.set()
            stop_late.set()
            kill_margin = early_deadline - killed_wall
            held_twice: list[str] = []
            takeover = group.create_task(
                watch_takeover(survivors, victim_leases, killed_at, held_twice), name="takeover")
            # The rest of the burst lands on the survivors (and on the dead one's session,
            # from which nothing comes back: the devices resend).
            await waves
            async with asyncio.timeout(30):
                taken = await takeover
            await fleet.until_all_acked(timeout=90)
            resender.cancel()
            burst_s = time.monotonic() - burst_began
            sends = sum(fleet.sent.values())
        print(f"kill: {len(acked_before_kill)} of {len(fleet.sent)} acked before it; "
              f"burst settled {burst_s:.1f} s after its start, {sends} sends for "
              f"{len(fleet.sent)} alarms")
        print("takeover after SIGKILL (healthz, 50 ms polls): "
              + ", ".join(f"{k} {v:.2f} s" for k, v in sorted(taken.items()))
              + f"; bound asserted {TAKEOVER_BOUND_S:.2f} s")

        # -- every alarm stored exactly once, every ack "stored" -----------------------------
        assert 0 < len(acked_before_kill) < len(fleet.sent), "the kill must land mid-burst"
        assert set(fleet.acked) == set(fleet.sent)
        assert set(fleet.acked.values()) == {"stored"}
        claims = await rows(dsn, "SELECT device_id, ref, generation, alarm_id, kind"
                                 " FROM trygg_alarm_refs")
        claim_count = Counter((str(d), str(r)) for d, r, *_ in claims)
        sent = set(fleet.sent)
        assert {k for k, c in claim_count.items() if c > 1 and k in sent} == set(), \
            "an alarm was claimed twice in trygg_alarm_refs"
        assert sent <= set(claim_count), "an acked alarm has no claim"

        # -- escalation: the ladder completes for every alarm, no step journaled twice ---------
        def care(records: list[tuple[str, dict[str, Any]]]) -> dict[str, tuple[str, str]]:
            return {b["alarm_id"]: (b["device_id"], b["ref"]) for _, b in records
                    if b["kind"] == "opened" and b["type"] != "technical"}

        async def ladders_complete() -> bool:
            records = await journal(dsn)
            steps = {(b["alarm_id"], b["escalation"]) for _, b in records
                     if b["kind"] == "escalated"}
            return all((a, s) in steps for a in care(records) for s in LADDER)

        await poll("every alarm's ladder (team, next level, centre)", ladders_complete, 30)
        # Supervision: both silent devices reported (hb-late's deadline is 4.5 s after the kill).
        async def both_offline() -> bool:
            records = await journal(dsn)
            return all(offline_alarms(records, d) for d in (HB_EARLY, HB_LATE))

        await poll("the silent devices' offline alarms", both_offline, 30)
        # Every alarm shown to the phones (their team's, and the other's after next level).
        records = await journal(dsn)
        alarms = care(records)

        def shown() -> set[str]:
            return set(watchers[0].seen) | set(watchers[1].seen)

        async with asyncio.timeout(30):
            while not set(alarms) <= shown():
                await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # late duplicates, if any, would arrive now
        records = await journal(dsn)
        for watch in watches:
            watch.cancel()

    # -- stored once: journal claims match trygg_alarm_refs ---------------------------------
    stored = Counter((b["device_id"], b["ref"]) for _, b in records
                     if b["kind"] in ("opened", "attached") and b["type"] != "technical")
    assert {k: c for k, c in stored.items() if c > 1} == {}, "an alarm was stored twice"
    assert set(stored) == sent, "acked alarms missing from (or foreign ones in) the journal"
    assert len(alarms) >= len(DEVICES), "every device's first alarm opens an alarm"

    # -- no escalation fired twice --------------------------------------------------------
    steps = Counter((b["alarm_id"], b["escalation"], b["level"], b.get("attempt", 0))
                    for _, b in records if b["kind"] == "escalated")
    assert {k: c for k, c in steps.items() if c > 1} == {}, "an escalation step fired twice"
    writers = Counter(gw for gw, b in records if b["kind"] == "escalated")
    assert writers[victim.gateway_id] > 0, "the victim escalated nothing before the kill"
    assert sum(c for gw, c in writers.items() if gw != victim.gateway_id) > 0, \
        "no survivor took over the escalation ladder"
    print(f"escalation steps by gateway: {dict(writers)}")
    by_survivor = {b["alarm_id"] for gw, b in records if b["kind"] == "escalated"
                   and b["escalation"] == "centre" and gw != victim.gateway_id}

    async def centre_called() -> bool:
        return by_survivor <= {p["alarm"]["id"] for p in cluster.centre.received}

    # Journaled first, then delivered: every centre step a survivor journaled reaches the
    # centre (the gateways are still running).
    await poll("the survivors' calls to the alarm centre", centre_called, 30)
    posts = Counter((p["alarm"]["id"], p["attempt"]) for p in cluster.centre.received)
    assert {k: c for k, c in posts.items() if c > 1} == {}, "the alarm centre was called twice"

    # -- leases: the victim's are owned by survivors, taken over within the bound -----------
    assert ESCALATION in victim_leases
    assert set(taken) == victim_leases
    assert max(taken.values()) <= TAKEOVER_BOUND_S, f"takeover took {taken}"
    assert held_twice == [], f"two survivors believed they held {held_twice} at once"
    lease_rows = await rows(dsn, "SELECT name, owner, extract(epoch FROM acquired_at),"
                                 " expires_at > clock_timestamp() FROM trygg_leases")
    survivor_ids = {n.gateway_id for n in survivors}
    for name, owner, acquired, live in lease_rows:
        if name in victim_leases:
            assert owner in survivor_ids and live, f"lease {name}: {owner}, live {live}"
            assert float(acquired) - killed_wall <= TAKEOVER_BOUND_S, \
                f"lease {name} acquired {float(acquired) - killed_wall:.2f} s after the kill"

    # -- the phones: every alarm once per id, no (device, ref) under two ids ----------------
    anna, cleo = watchers
    for watcher, team_parity in ((anna, 1), (cleo, 0)):
        ids_by_key: defaultdict[tuple[str, str], set[str]] = defaultdict(set)
        for alarm_id, key in watcher.seen.items():
            ids_by_key[key].add(alarm_id)
        assert {k: v for k, v in ids_by_key.items() if len(v) > 1} == {}, \
            f"{watcher.username} was shown an alarm twice"
        assert set(watcher.seen) <= set(alarms), f"{watcher.username} saw unknown alarms"
        own = {a for a, (d, _) in alarms.items() if parity(d) == team_parity}
        assert own <= set(watcher.seen), f"{watcher.username} missed alarms of their team"
        for alarm_id, key in watcher.seen.items():
            assert alarms[alarm_id] == key
        print(f"{watcher.username}: {len(watcher.seen)} alarms in {watcher.messages} messages, "
              f"{watcher.connections} connection(s)")

    # -- supervision continues ------------------------------------------------------------
    for device_id in (HB_EARLY, HB_LATE):
        found = offline_alarms(records, device_id)
        assert len(found) == 1, f"{device_id} reported offline {len(found)} times: {found}"
        raised_by = found[0][0]
        if device_id == HB_LATE or kill_margin > 0:
            assert raised_by in survivor_ids, f"{device_id} offline raised by {raised_by}"
    async with httpx.AsyncClient() as client:
        for node in survivors:
            body = await health(client, node)
            assert body is not None and body["devices"]["watched"] == SUPERVISED, body
            assert body["cluster"]["following"], body
            metrics = (await client.get(f"{node.base}/metrics")).text
            counts = {line.split()[0]: line.split()[1] for line in metrics.splitlines()
                      if line.startswith(("trygg_stale_decisions_total",
                                          "trygg_duplicate_alarms_total"))}
            print(f"{node.name}: {counts}, followed {body['cluster']['followed_records']}")
    print(f"hb-early deadline {kill_margin:.2f} s after the kill; test took "
          f"{time.monotonic() - began:.1f} s")
    for node in survivors:
        assert "Traceback" not in node.log, f"{node.name} logged an exception:\n{node.log[-3000:]}"

    # -- escalation on time: the holder keeps up, the survivor catches up at takeover ------
    errors = [f"{n.name}: {line}" for n in cluster.nodes for line in n.log.splitlines()
              if " ERROR " in line]
    stored_at = {b["alarm_id"]: b["at"] for _, b in records
                 if b["kind"] == "hop" and b["hop"] == "stored" and b["alarm_id"] in alarms}
    after_s = {k: float(ESCALATION_SETTINGS[f"{k}_s"]) for k in LADDER}
    resumed = killed_wall + taken[ESCALATION]
    late: list[str] = []
    worst = {"victim": 0.0, "survivors": 0.0}
    for gw, b in records:
        if b["kind"] != "escalated" or b["alarm_id"] not in alarms:
            continue
        due = stored_at[b["alarm_id"]] + after_s[b["escalation"]]
        allowed = due if due + ESCALATION_LATE_S < killed_wall else max(due, resumed)
        side = "victim" if gw == victim.gateway_id else "survivors"
        worst[side] = max(worst[side], b["at"] - due)
        if b["at"] > allowed + ESCALATION_LATE_S:
            late.append(f"{b['alarm_id']} {b['escalation']} due {due - killed_wall:+.2f} s,"
                        f" journaled {b['at'] - killed_wall:+.2f} s from the kill by {gw}")
    print(f"escalation lateness (journaled - due), worst: victim {worst['victim']:.2f} s, "
          f"survivors {worst['survivors']:.2f} s")
    assert late == [], (f"{len(late)} ladder steps journaled late, e.g. {late[:5]}; "
                        f"gateway errors: {errors[:10]}")
    assert errors == [], f"gateways logged errors: {errors}"
