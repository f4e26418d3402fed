"""One contract for the RegistryStore port (device registry, claim codes, credentials),
run on every adapter; a claim code redeemed at once on two gateways (PostgreSQL, for real)
is redeemed exactly once.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.stores.registry import (
    HistoryEvent,
    PgRegistryStore,
    RegisteredDevice,
    RegistryStore,
    SqliteRegistryStore,
)
from tests.pgdb import fresh_database_sync as fresh_database

NOW = 1_700_000_000.0


def device(device_id: str) -> RegisteredDevice:
    """A registry row just registered."""
    return RegisteredDevice(device_id, f"SN-{device_id}", "alarm_unit", "m1", "1.0",
                            "registered", NOW)


def event(device_id: str, name: str, at: float = NOW, **detail: str) -> HistoryEvent:
    """A history entry."""
    return HistoryEvent.of(device_id, at, name, "tove", **detail)


class RegistryContract(ABC):
    """Behaviour every registry store has."""

    @abstractmethod
    def make(self) -> RegistryStore:
        """A store (a second call: another gateway's store on the same data)."""

    @pytest.fixture
    def store(self) -> RegistryStore:
        """A store on fresh data."""
        return self.make()

    def test_register_get_all(self, store: RegistryStore) -> None:
        """Registered rows read back as written, listed by id."""
        assert store.register(device("dev-2"), event("dev-2", "registered"))
        assert store.register(device("dev-1"), event("dev-1", "registered"))
        assert store.get("dev-1") == device("dev-1")
        assert store.get("nope") is None
        assert [r.device_id for r in store.all()] == ["dev-1", "dev-2"]

    def test_register_twice_is_refused_without_writing(self, store: RegistryStore) -> None:
        """An id taken (by any gateway) is not registered again, and nothing is logged."""
        assert store.register(device("dev-1"), event("dev-1", "registered"))
        assert not store.register(device("dev-1"), event("dev-1", "registered", serial="x"))
        assert [e.detail for e in store.history(["dev-1"])] == ["{}"]

    def test_adopt_keeps_an_existing_row(self, store: RegistryStore) -> None:
        """Adopting is idempotent."""
        store.adopt(device("dev-1"))
        store.adopt(RegisteredDevice("dev-1", "other", "x", "", "", "registered", NOW + 1))
        assert store.get("dev-1") == device("dev-1")

    def test_history_in_order(self, store: RegistryStore) -> None:
        """Events come back oldest first, for the devices asked about only."""
        store.register(device("dev-1"), event("dev-1", "registered"))
        store.register(device("dev-2"), event("dev-2", "registered"))
        store.log(event("dev-1", "bound", NOW + 1, recipient_id="r-a"))
        store.log(event("dev-2", "bound", NOW + 2))
        names = [(e.device_id, e.event) for e in store.history(["dev-1"])]
        assert names == [("dev-1", "registered"), ("dev-1", "bound")]
        assert store.history(["dev-1"])[1].detail == '{"recipient_id": "r-a"}'

    def test_claim_redeems_once(self, store: RegistryStore) -> None:
        """A code gives credentials once; the device is enrolled and its hash listed."""
        store.register(device("dev-1"), event("dev-1", "registered"))
        store.issue_claim("h1", "dev-1", NOW + 100, event("dev-1", "claim_issued"))
        assert store.redeem("h1", NOW + 1, "$7$hash") == "dev-1"
        assert store.redeem("h1", NOW + 2, "$7$other") is None
        assert store.credentials() == [("dev-1", "$7$hash")]
        assert store.has_credentials("dev-1")
        row = store.get("dev-1")
        assert row is not None
        assert row.state == "enrolled"
        assert [e.event for e in store.history(["dev-1"])][-1] == "enrolled"

    def test_expired_and_replaced_codes(self, store: RegistryStore) -> None:
        """An expired code, and a code replaced by a newer one, are refused."""
        store.register(device("dev-1"), event("dev-1", "registered"))
        store.issue_claim("old", "dev-1", NOW + 100, event("dev-1", "claim_issued"))
        store.issue_claim("new", "dev-1", NOW + 100, event("dev-1", "claim_issued", NOW + 1))
        assert store.redeem("old", NOW + 2, "$7$a") is None
        assert store.redeem("unknown", NOW + 2, "$7$a") is None
        assert store.redeem("new", NOW + 101, "$7$a") is None
        assert not store.has_credentials("dev-1")

    def test_decommission_revokes(self, store: RegistryStore) -> None:
        """Out of service: credentials gone, open codes spent, state recorded."""
        store.register(device("dev-1"), event("dev-1", "registered"))
        store.issue_claim("h1", "dev-1", NOW + 100, event("dev-1", "claim_issued"))
        assert store.redeem("h1", NOW + 1, "$7$hash") == "dev-1"
        store.issue_claim("h2", "dev-1", NOW + 100, event("dev-1", "claim_issued"))
        store.decommission("dev-1", event("dev-1", "decommissioned", NOW + 2))
        assert store.credentials() == []
        assert not store.has_credentials("dev-1")
        assert store.redeem("h2", NOW + 3, "$7$x") is None
        row = store.get("dev-1")
        assert row is not None
        assert row.state == "decommissioned"

    def test_swap_and_firmware(self, store: RegistryStore) -> None:
        """Replacement links both ways; firmware is recorded."""
        store.register(device("old"), event("old", "registered"))
        store.register(device("new"), event("new", "registered"))
        store.swap("old", "new", [event("new", "swapped_in"), event("old", "swapped_out")])
        store.set_firmware("new", "2.0")
        new, old = store.get("new"), store.get("old")
        assert new is not None
        assert old is not None
        assert (new.replaces, new.firmware, old.replaced_by) == ("old", "2.0", "new")

    def test_retention_drops_only_old_history_of_decommissioned_devices(
        self, store: RegistryStore
    ) -> None:
        """Past the cutoff: a decommissioned device's history goes, an active one's stays."""
        for device_id in ("gone", "kept"):
            store.register(device(device_id), event(device_id, "registered"))
        store.issue_claim("h1", "kept", NOW + 10, event("kept", "claim_issued"))
        store.decommission("gone", event("gone", "decommissioned", NOW + 1))
        assert store.prune(NOW + 100) == 2
        assert store.history(["gone"]) == []
        assert len(store.history(["kept"])) == 2
        assert store.redeem("h1", NOW + 5, "$7$x") is None  # its code expired and is gone

    def test_issued_on_one_redeemed_on_another(self) -> None:
        """A code issued through one gateway is redeemed through another (shared data)."""
        first, second = self.make(), self.make()
        first.register(device("dev-1"), event("dev-1", "registered"))
        first.issue_claim("h1", "dev-1", NOW + 100, event("dev-1", "claim_issued"))
        assert second.redeem("h1", NOW + 1, "$7$hash") == "dev-1"
        assert first.credentials() == [("dev-1", "$7$hash")]


class TestSqliteRegistry(RegistryContract):
    """The single-gateway default: provisioning.sqlite3."""

    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "provisioning.sqlite3"

    def make(self) -> RegistryStore:
        """A store on the test's file."""
        return SqliteRegistryStore(self.path)


class TestPgRegistry(RegistryContract):
    """The cluster's: PostgreSQL."""

    @pytest.fixture(autouse=True)
    def _db(self) -> Iterator[None]:
        with fresh_database() as dsn:
            self.dsn = dsn
            yield

    def make(self) -> RegistryStore:
        """A store on the test's database."""
        return PgRegistryStore(self.dsn, "gw-test")

    def test_double_redeem_on_two_gateways_succeeds_once(self) -> None:
        """The same code redeemed at the same moment through two gateways: exactly one
        gets credentials, and the stored hash is the winner's."""
        gateways = [self.make(), self.make()]
        for n in range(10):
            device_id = f"dev-{n}"
            gateways[0].register(device(device_id), event(device_id, "registered"))
            gateways[0].issue_claim(f"h{n}", device_id, NOW + 100,
                                    event(device_id, "claim_issued"))
            start = threading.Barrier(2)
            results: dict[str, str | None] = {}

            def redeem(i: int, n: int = n, start: threading.Barrier = start,
                       results: dict[str, str | None] = results) -> None:
                start.wait()
                results[f"$7$gw{i}"] = gateways[i].redeem(f"h{n}", NOW + 1, f"$7$gw{i}")

            threads = [threading.Thread(target=redeem, args=(i,)) for i in (0, 1)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            winners = [h for h, got in results.items() if got == device_id]
            assert len(winners) == 1, results
            assert dict(gateways[1].credentials())[device_id] == winners[0]
            enrolled = [e for e in gateways[1].history([device_id]) if e.event == "enrolled"]
            assert len(enrolled) == 1

    def test_a_single_gateways_registry_joins_the_cluster_once(self, tmp_path: Path) -> None:
        """Devices enrolled before the cluster keep their credentials (the broker files are
        written from the shared registry); a device the cluster already has is left alone,
        and importing again adds nothing."""
        local = SqliteRegistryStore(tmp_path / "provisioning.sqlite3")
        for device_id in ("old-1", "both"):
            local.register(device(device_id), event(device_id, "registered"))
            local.issue_claim(f"h-{device_id}", device_id, NOW + 100,
                              event(device_id, "claim_issued"))
            local.redeem(f"h-{device_id}", NOW + 1, f"$7${device_id}")
        shared = self.make()
        assert isinstance(shared, PgRegistryStore)
        shared.register(device("both"), event("both", "registered", serial="cluster"))
        assert shared.import_devices(local.export()) == ["old-1"]
        assert shared.credentials() == [("old-1", "$7$old-1")]
        assert [e.event for e in shared.history(["old-1"])] == [
            "registered", "claim_issued", "enrolled"]
        assert len(shared.history(["both"])) == 1
        assert shared.import_devices(local.export()) == []
        assert len(shared.history(["old-1"])) == 3
