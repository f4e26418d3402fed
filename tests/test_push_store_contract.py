"""One contract for the PushStore port (Web Push subscriptions), run on every adapter;
PostgreSQL's cluster duties (one VAPID key, each push claimed once) run for real.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.push import PushNotifier, Subscription, SubscriptionStore, _create_key_file
from gateway.stores.push import PgPushStore, PushStore
from tests.pgdb import fresh_database_sync as fresh_database


def sub(endpoint: str, staff: str, key: str = "k1") -> Subscription:
    """A subscription (keys are opaque to the store)."""
    return Subscription(f"https://push.example/{endpoint}", staff, f"p256-{key}", f"auth-{key}")


class PushStoreContract(ABC):
    """Behaviour every push store has."""

    @abstractmethod
    def make(self) -> PushStore:
        """A store (a second call: another gateway's store on the same data)."""

    @pytest.fixture
    def store(self) -> PushStore:
        """A store on fresh data."""
        return self.make()

    def test_add_and_find_by_staff(self, store: PushStore) -> None:
        """Subscriptions are found by their owners, and counted."""
        assert store.add(sub("a1", "anna"))
        assert store.add(sub("a2", "anna"))
        assert store.add(sub("b1", "bo"))
        assert {s.endpoint for s in store.for_staff({"anna"})} == {
            "https://push.example/a1", "https://push.example/a2"}
        assert [s.staff_id for s in store.for_staff(["bo", "cleo"])] == ["bo"]
        assert store.for_staff([]) == []
        assert store.count() == 3

    def test_renewing_keys_and_never_moving_an_endpoint(self, store: PushStore) -> None:
        """The owner renews the keys; another member cannot take the endpoint over."""
        store.add(sub("a1", "anna"))
        assert store.add(sub("a1", "anna", key="k2"))
        assert not store.add(sub("a1", "bo", key="evil"))
        (found,) = store.for_staff(["anna"])
        assert found.p256dh == "p256-k2"
        assert store.for_staff(["bo"]) == []

    def test_remove(self, store: PushStore) -> None:
        """Removal by owner only when the owner is given."""
        store.add(sub("a1", "anna"))
        assert not store.remove("https://push.example/a1", "bo")
        assert store.remove("https://push.example/a1", "anna")
        assert not store.remove("https://push.example/a1")
        assert store.count() == 0

    def test_first_claim_is_granted(self, store: PushStore) -> None:
        """Pairs nobody claimed are this gateway's to push."""
        pairs = {("alarm-1", "anna"), ("alarm-1", "bo")}
        assert store.claim(pairs) == pairs
        assert store.claim([]) == set()

    def test_subscribed_on_one_found_on_another(self) -> None:
        """A subscription made through one gateway is there for the others."""
        first, second = self.make(), self.make()
        first.add(sub("a1", "anna"))
        assert [s.staff_id for s in second.for_staff(["anna"])] == ["anna"]


class TestSqlitePushStore(PushStoreContract):
    """The single-gateway default: push.sqlite3."""

    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "push.sqlite3"

    def make(self) -> PushStore:
        """A store on the test's file."""
        return SubscriptionStore(self.path)


class TestPgPushStore(PushStoreContract):
    """The cluster's: PostgreSQL."""

    @pytest.fixture(autouse=True)
    def _db(self) -> Iterator[None]:
        with fresh_database() as dsn:
            self.dsn = dsn
            yield

    def make(self) -> PushStore:
        """A store on the test's database."""
        return PgPushStore(self.dsn, "gw-test")

    def test_each_pair_is_claimed_once_across_gateways(self) -> None:
        """Two gateways claiming overlapping pairs at once split them: none twice, none
        lost."""
        gateways = [PgPushStore(self.dsn, "gw-1"), PgPushStore(self.dsn, "gw-2")]
        pairs = [(f"alarm-{a}", s) for a in range(20) for s in ("anna", "bo", "cleo")]
        start = threading.Barrier(2)
        got: list[set[tuple[str, str]]] = [set(), set()]

        def claim(i: int) -> None:
            start.wait()
            for n in range(0, len(pairs), 6):
                got[i] |= gateways[i].claim(pairs[n:n + 6])

        threads = [threading.Thread(target=claim, args=(i,)) for i in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert got[0].isdisjoint(got[1])
        assert got[0] | got[1] == set(pairs)
        assert gateways[0].claim(pairs) == set()

    def test_one_vapid_key_for_the_cluster(self, tmp_path: Path) -> None:
        """The first gateway's key becomes the cluster's; later gateways get it."""
        first = _create_key_file(tmp_path / "gw1.pem")
        second = _create_key_file(tmp_path / "gw2.pem")
        assert first != second
        assert PgPushStore(self.dsn, "gw-1").shared_key(first) == first
        assert PgPushStore(self.dsn, "gw-2").shared_key(second) == first

    def test_a_gateway_with_the_clusters_key_brings_its_subscriptions(
        self, tmp_path: Path
    ) -> None:
        """The first gateway's key becomes the cluster's and its phones' subscriptions are
        shared; a later gateway's own subscriptions (made with another key) are not."""
        first, second = tmp_path / "gw1", tmp_path / "gw2"
        SubscriptionStore(first / "push.sqlite3").add(sub("a1", "anna"))
        SubscriptionStore(second / "push.sqlite3").add(sub("b1", "bo"))
        one = PushNotifier.for_data_dir(first, dsn=self.dsn, gateway_id="gw1")
        two = PushNotifier.for_data_dir(second, dsn=self.dsn, gateway_id="gw2")
        assert one.keys.public_key == two.keys.public_key
        assert [s.staff_id for s in two.store.for_staff(["anna", "bo"])] == ["anna"]
