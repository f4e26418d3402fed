"""Leases in PostgreSQL: one holder per name, takeover after a holder dies, never two."""

from __future__ import annotations

import asyncio
import random
import sys
import textwrap
from collections.abc import AsyncIterator, Callable

import psycopg
import pytest

from gateway.leases import LeaseError, LeaseManager
from tests.test_journal_contract import fresh_database

pytestmark = pytest.mark.network

# Short TTLs keep the tests quick; the guarantees do not depend on the value.
TTL = 1.0
# Takeover bound: the holder's lease runs out after TTL and the taker's next round comes
# within TTL/3. Tests allow generous slack on top; they check that it happens, not how fast.
TAKEOVER_WITHIN = TTL + TTL / 3 + 3.0


@pytest.fixture
async def dsn() -> AsyncIterator[str]:
    """A fresh database for this test."""
    async with fresh_database() as url:
        yield url


class Watch:
    """Records a manager's ``on_change`` calls and lets a test wait for a condition."""

    def __init__(self) -> None:
        self.changes: list[frozenset[str]] = []
        self._changed = asyncio.Event()

    def __call__(self, held: frozenset[str]) -> None:
        self.changes.append(held)
        self._changed.set()

    async def until(self, predicate: object, timeout: float) -> None:
        """Wait until the latest ``held`` satisfies ``predicate`` (a callable)."""
        assert callable(predicate)

        async def wait() -> None:
            while not (self.changes and predicate(self.changes[-1])):
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)


async def owner_of(dsn: str, name: str) -> tuple[str | None, int, bool]:
    """(owner, token, unexpired) of a lease row, by the database's clock."""
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cur = await conn.execute(
            "SELECT owner, token, expires_at > clock_timestamp() FROM trygg_leases"
            " WHERE name = %s",
            (name,),
        )
        row = await cur.fetchone()
    assert row is not None
    return row[0], int(row[1]), bool(row[2])


async def test_one_manager_holds_the_other_waits(dsn: str) -> None:
    async with (
        LeaseManager(dsn, owner="gw-a", ttl_s=TTL) as a,
        LeaseManager(dsn, owner="gw-b", ttl_s=TTL) as b,
    ):
        assert await a.claim(["timers", "outbound:centre"]) == {"timers", "outbound:centre"}
        assert await b.claim(["timers", "outbound:centre", "outbound:push"]) == {"outbound:push"}
        assert a.held == {"timers", "outbound:centre"}
        assert b.held == {"outbound:push"}
        # Renewals keep the holder across several TTLs.
        await asyncio.sleep(TTL * 2)
        assert a.held == {"timers", "outbound:centre"}
        assert b.held == {"outbound:push"}
        assert (await owner_of(dsn, "timers"))[0] == "gw-a"


async def test_takeover_when_the_holder_stops_renewing(dsn: str) -> None:
    watch_b = Watch()
    async with (
        LeaseManager(dsn, owner="gw-a", ttl_s=TTL) as a,
        LeaseManager(dsn, owner="gw-b", ttl_s=TTL, on_change=watch_b) as b,
    ):
        assert await a.claim(["timers"]) == {"timers"}
        token_a = a.token("timers")
        assert await b.claim(["timers"]) == set()

        seen_by_a: list[frozenset[str]] = []

        def on_b(held: frozenset[str]) -> None:
            seen_by_a.append(a.held)  # what A believes at the instant B takes over
            watch_b(held)

        b.on_change = on_b
        a.fail_renewals = lambda: True  # A hangs or loses the database
        await watch_b.until(lambda held: "timers" in held, TAKEOVER_WITHIN)
        assert "timers" not in seen_by_a[-1]
        assert "timers" not in a.held
        owner, _, live = await owner_of(dsn, "timers")
        assert (owner, live) == ("gw-b", True)
        token_b = b.token("timers")
        assert token_a is not None and token_b is not None and token_b > token_a

        # A recovers: it wants the name again but must wait for B.
        a.fail_renewals = None
        assert await a.claim(["timers"]) == set()


async def test_takeover_when_the_holder_process_is_killed(dsn: str) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio, sys
        from gateway.leases import LeaseManager

        async def main():
            async with LeaseManager({dsn!r}, owner="gw-killed", ttl_s={TTL}) as leases:
                print(sorted(await leases.claim(["timers"])), flush=True)
                await asyncio.Event().wait()

        asyncio.run(main())
        """
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert line.strip() == b"['timers']"
        watch = Watch()
        async with LeaseManager(dsn, owner="gw-b", ttl_s=TTL, on_change=watch) as b:
            assert await b.claim(["timers"]) == set()
            proc.kill()  # no release, no goodbye
            await proc.wait()
            await watch.until(lambda held: "timers" in held, TAKEOVER_WITHIN)
            assert (await owner_of(dsn, "timers"))[:1] == ("gw-b",)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_exit_releases_so_another_takes_over_at_its_next_round(dsn: str) -> None:
    watch_b = Watch()
    a = LeaseManager(dsn, owner="gw-a", ttl_s=TTL)
    async with LeaseManager(dsn, owner="gw-b", ttl_s=TTL, on_change=watch_b) as b:
        async with a:
            assert await a.claim(["timers"]) == {"timers"}
            assert await b.claim(["timers"]) == set()
        assert a.held == frozenset()
        owner, _, live = await owner_of(dsn, "timers")
        assert (owner, live) == ("gw-a", False)  # released: expired now, not at TTL
        await watch_b.until(lambda held: "timers" in held, TAKEOVER_WITHIN)
        assert b.held == {"timers"}


async def test_release_frees_a_name_and_stops_wanting_it(dsn: str) -> None:
    watch = Watch()
    async with LeaseManager(dsn, owner="gw-a", ttl_s=TTL, on_change=watch) as a:
        assert await a.claim(["timers", "outbound:push"]) == {"timers", "outbound:push"}
        await a.release(["timers"])
        assert a.held == {"outbound:push"}
        assert watch.changes[-1] == {"outbound:push"}
        async with LeaseManager(dsn, owner="gw-b", ttl_s=TTL) as b:
            assert await b.claim(["timers"]) == {"timers"}
        await asyncio.sleep(TTL)  # a renewal round later, A has not taken it back
        assert a.held == {"outbound:push"}


async def test_concurrent_claims_give_exactly_one_holder(dsn: str) -> None:
    managers = [LeaseManager(dsn, owner=f"gw-{i}", ttl_s=TTL) for i in range(6)]
    for manager in managers:
        await manager.__aenter__()
    try:
        for round_ in range(5):
            name = f"contended-{round_}"
            results = await asyncio.gather(*(m.claim([name]) for m in managers))
            assert sum(1 for r in results if name in r) == 1
            assert sum(1 for m in managers if name in m.held) == 1
    finally:
        for manager in managers:
            await manager.__aexit__(None, None, None)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
async def test_never_two_holders_under_a_random_schedule(dsn: str, seed: int) -> None:
    """Random claims, releases, stalls and recoveries: at no instant two holders of a name."""
    rng = random.Random(seed)
    names = ["timers", "outbound:centre", "outbound:push"]
    managers: list[LeaseManager] = []
    violations: list[str] = []

    def check(context: str) -> None:
        for name in names:
            holders = [m.owner for m in managers if name in m.held]
            if len(holders) > 1:
                violations.append(f"{context}: {name} held by {holders}")

    def checker(i: int) -> Callable[[frozenset[str]], None]:
        return lambda _held: check(f"on_change of gw-{i}")

    for i in range(3):
        manager = LeaseManager(dsn, owner=f"gw-{i}", ttl_s=TTL, on_change=checker(i))
        managers.append(manager)
        await manager.__aenter__()
    try:
        for manager in managers:  # everyone wants everything: contention from the start
            await manager.claim(names)
        for step in range(16):
            action = rng.choice(["claim", "release", "stall", "stall", "recover", "wait"])
            holders = [m for m in managers if m.held]
            # Releases and stalls aimed at holders move leases; at others they prove little.
            if action in ("release", "stall") and holders:
                manager = rng.choice(holders)
            else:
                manager = rng.choice(managers)
            if action == "claim":
                try:
                    await manager.claim(rng.sample(names, rng.randint(1, len(names))))
                except LeaseError:
                    assert manager.fail_renewals is not None  # only a stalled one fails
            elif action == "release":
                await manager.release(rng.sample(names, rng.randint(1, len(names))))
            elif action == "stall":
                manager.fail_renewals = lambda: True
            elif action == "recover":
                manager.fail_renewals = None
            await asyncio.sleep(rng.uniform(0, TTL))  # let leases lapse and renew
            check(f"step {step} ({action} by {manager.owner})")
            # What a manager believes it holds, the database agrees is its, and unexpired.
            beliefs = [(m.owner, name) for m in managers for name in m.held]
            for owner, name in beliefs:
                db_owner, _, live = await owner_of(dsn, name)
                if (db_owner, live) != (owner, True):
                    violations.append(f"step {step}: {owner} believes in {name}, db {db_owner, live}")
        # The schedule must have moved leases between managers, or it proved little.
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            cur = await conn.execute("SELECT coalesce(sum(token), 0) FROM trygg_leases")
            row = await cur.fetchone()
        assert row is not None and row[0] > len(names)
    finally:
        for manager in managers:
            manager.fail_renewals = None
            await manager.__aexit__(None, None, None)
    assert not violations


async def test_lifecycle_rules(dsn: str) -> None:
    manager = LeaseManager(dsn, owner="gw-a", ttl_s=TTL)
    with pytest.raises(RuntimeError):
        await manager.claim(["timers"])
    async with manager:
        with pytest.raises(RuntimeError):
            await manager.__aenter__()
        assert await manager.claim(["timers"]) == {"timers"}
    async with manager:  # reusable; the lease was released on exit and is free again
        assert manager.held == frozenset()
        assert await manager.claim(["timers"]) == {"timers"}
    with pytest.raises(ValueError):
        LeaseManager(dsn, owner="gw-a", ttl_s=0)


async def test_unreachable_database_is_a_lease_error() -> None:
    manager = LeaseManager("host=127.0.0.1 port=1 dbname=none connect_timeout=2", owner="gw-a")
    with pytest.raises(LeaseError):
        async with manager:
            pass
