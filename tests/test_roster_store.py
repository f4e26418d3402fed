"""One contract for the roster store, on SQLite (one gateway) and PostgreSQL (a cluster);
and ``trygg org import`` into a cluster: written once, seen by every running gateway."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from alarms.roster import Shift
from gateway.cli import main
from gateway.orgfile import RosterStore
from gateway.runtime import Gateway
from gateway.stores.rosters import PostgresRosterStore, RosterBook
from tests.conftest import MOSQUITTO, GatewayFactory
from tests.pgdb import fresh_database_sync, store_opener
from tests.test_journal_contract import pg_dsn  # noqa: F401 - the fixture
from tests.test_orgfile import ORG

Opener = Callable[[], RosterBook]


@pytest.fixture(params=["sqlite", "postgres"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens another store on the same storage (another gateway, or after a restart)."""
    def sqlite() -> RosterBook:
        return RosterStore(tmp_path / "rosters.sqlite3")

    def postgres(dsn: str, gateway_id: str) -> RosterBook:
        return PostgresRosterStore(dsn, gateway_id=gateway_id)

    with store_opener(request.param, sqlite, postgres) as open_store:
        yield open_store


def on_shift(book: RosterBook, team: str, shift: Shift) -> frozenset[str]:
    roster = book.rosters()[team]
    return next(iter({v for k, v in roster.weekly.items() if k[-1] is shift}), frozenset())


def test_rosters_written_by_one_are_read_by_another(opener: Opener) -> None:
    one, two = opener(), opener()
    assert one.rosters() == {}
    one.put_many({"team-a": {"night": ["anna"], "day": ["bo"]},
                  "team-b": {"night": ["cia"], "on_call_night": ["dan"]}})
    two.refresh()
    assert set(two.rosters()) == {"team-a", "team-b"}
    assert two.rosters() == one.rosters()
    assert on_shift(two, "team-a", Shift.NIGHT) == {"anna"}
    # Replacing one team's roster leaves the other's.
    two.put("team-a", {"night": ["bo"]})
    one.refresh()
    assert on_shift(one, "team-a", Shift.NIGHT) == {"bo"}
    assert one.rosters()["team-b"] == two.rosters()["team-b"]
    # Nothing changed since: nothing to reload.
    assert not one.refresh()


def test_rosters_survive_a_restart(opener: Opener) -> None:
    first = opener()
    first.put("team-a", {"evening": ["anna"]})
    expected = first.rosters()
    first.close()
    assert opener().rosters() == expected


async def test_a_clustered_import_reaches_every_running_gateway_once(
    tmp_path: Path, make_gateway: GatewayFactory, pg_dsn: str,  # noqa: F811 - the fixture
) -> None:
    org_file = tmp_path / "org.toml"
    org_file.write_text(ORG.replace('"Astrid A"', '"Astrid Andersson"').replace(
        'night = ["anna"]', 'night = ["anna", "bo"]'))
    cluster = {"shared_group": f"g{tmp_path.name[-8:]}", "lease_ttl_s": 1.0}
    async with make_gateway(MOSQUITTO, data_dir=tmp_path / "gw1", gateway_id="gw1",
                            journal_dsn=pg_dsn, cluster=cluster) as one, \
            make_gateway(MOSQUITTO, data_dir=tmp_path / "gw2", gateway_id="gw2",
                         journal_dsn=pg_dsn, cluster=cluster) as two:
        assert "team-a" not in one.rosters.rosters()
        code = await asyncio.to_thread(main, ["org", "import", str(org_file), "--dsn", pg_dsn])
        assert code == 0

        def imported(gw: Gateway) -> bool:
            recipient = gw.org.recipients.get("r-a")
            return ("team-a" in gw.core.directory.rosters and recipient is not None
                    and recipient.name == "Astrid Andersson")

        async with asyncio.timeout(15):
            while not (imported(one) and imported(two)):
                await asyncio.sleep(0.05)
        for gw in (one, two):
            night = {v for k, v in gw.core.directory.rosters["team-a"].weekly.items()
                     if k[-1] is Shift.NIGHT}
            assert night == {frozenset({"anna", "bo"})}
    # A gateway that was not running applies it on its first start, without an import.
    async with make_gateway(MOSQUITTO, data_dir=tmp_path / "gw3", gateway_id="gw3",
                            journal_dsn=pg_dsn, cluster=cluster) as three:
        async with asyncio.timeout(15):
            while not imported(three):
                await asyncio.sleep(0.05)


def test_an_invalid_file_writes_nothing_to_the_cluster(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(ORG.replace('team = "team-a"', 'team = "team-x"'))
    with fresh_database_sync() as dsn:
        assert main(["org", "import", str(bad), "--dsn", dsn]) == 1
        with psycopg.connect(dsn) as conn:
            found = conn.execute(
                "SELECT to_regclass('trygg_org'), to_regclass('trygg_rosters')").fetchone()
        assert found == (None, None)
