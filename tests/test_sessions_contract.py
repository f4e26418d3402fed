"""One contract for the SessionStore port (refresh-token families), run on every adapter.

``SessionContract`` is what every adapter must do; ``TestSqliteSessions`` and
``TestPgSessions`` only build stores. The race of two gateways rotating the same token is
PostgreSQL's (the only adapter several gateways share) and runs for real on two stores.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from gateway.security import RefreshError, RefreshStore
from gateway.stores import StoreError
from gateway.stores.sessions import PgSessionStore, SessionStore
from tests.pgdb import fresh_database_sync as fresh_database

TTL_S = 600


class Clock:
    """A settable clock."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


class SessionContract(ABC):
    """Behaviour every session store has."""

    @abstractmethod
    def make(self, clock: Callable[[], float]) -> SessionStore:
        """A store (a second call: another gateway's store on the same data)."""

    @pytest.fixture
    def clock(self) -> Clock:
        """The stores' clock."""
        return Clock()

    @pytest.fixture
    def store(self, clock: Clock) -> SessionStore:
        """A store on fresh data."""
        return self.make(clock)

    def test_rotate_spends_and_issues_a_successor(self, store: SessionStore) -> None:
        """A rotation answers the staff member and a new token; the new one rotates too."""
        token = store.issue("anna")
        staff, successor = store.rotate(token)
        assert staff == "anna"
        assert successor != token
        assert store.rotate(successor)[0] == "anna"

    def test_reuse_revokes_the_family(self, store: SessionStore) -> None:
        """A spent token presented again: refused, and its successor stops working too."""
        token = store.issue("anna")
        _, successor = store.rotate(token)
        with pytest.raises(RefreshError, match="reused"):
            store.rotate(token)
        with pytest.raises(RefreshError):
            store.rotate(successor)

    def test_other_families_survive_a_reuse(self, store: SessionStore) -> None:
        """Revoking one session leaves the member's other devices logged in."""
        phone = store.issue("anna")
        tablet = store.issue("anna")
        store.rotate(phone)
        with pytest.raises(RefreshError):
            store.rotate(phone)
        assert store.rotate(tablet)[0] == "anna"

    def test_unknown_token(self, store: SessionStore) -> None:
        """A token never issued is refused."""
        with pytest.raises(RefreshError, match="unknown"):
            store.rotate("not-a-token")

    def test_expired_token(self, store: SessionStore, clock: Clock) -> None:
        """After the TTL the token is refused."""
        token = store.issue("anna")
        clock.now += TTL_S + 1
        with pytest.raises(RefreshError, match="expired"):
            store.rotate(token)

    def test_revoke_logs_out_the_family(self, store: SessionStore) -> None:
        """Logging out stops the token and every successor."""
        token = store.issue("anna")
        _, successor = store.rotate(token)
        store.revoke(successor)
        with pytest.raises(RefreshError):
            store.rotate(successor)

    def test_revoke_staff(self, store: SessionStore) -> None:
        """Every session of one member ends; other members' do not."""
        anna1, anna2, bo = store.issue("anna"), store.issue("anna"), store.issue("bo")
        store.revoke_staff("anna")
        for token in (anna1, anna2):
            with pytest.raises(RefreshError):
                store.rotate(token)
        assert store.rotate(bo)[0] == "bo"

    def test_prune_drops_expired(self, store: SessionStore, clock: Clock) -> None:
        """Expired tokens are deleted and counted; live ones stay."""
        store.issue("anna")
        store.issue("bo")
        clock.now += TTL_S + 1
        live = store.issue("cleo")
        assert store.prune() == 2
        assert store.rotate(live)[0] == "cleo"

    def test_a_token_rotates_on_another_store(self, clock: Clock) -> None:
        """What one gateway issued, another rotates (shared data)."""
        first, second = self.make(clock), self.make(clock)
        token = first.issue("anna")
        _, successor = second.rotate(token)
        assert first.rotate(successor)[0] == "anna"


class TestSqliteSessions(SessionContract):
    """The single-gateway default: sessions.sqlite3."""

    @pytest.fixture(autouse=True)
    def _dir(self, tmp_path: Path) -> None:
        self.path = tmp_path / "sessions.sqlite3"

    def make(self, clock: Callable[[], float]) -> SessionStore:
        """A store on the test's file."""
        return RefreshStore(self.path, TTL_S, clock=clock)


class TestPgSessions(SessionContract):
    """The cluster's: PostgreSQL."""

    @pytest.fixture(autouse=True)
    def _db(self) -> Iterator[None]:
        with fresh_database() as dsn:
            self.dsn = dsn
            yield

    def make(self, clock: Callable[[], float]) -> SessionStore:
        """A store on the test's database."""
        return PgSessionStore(self.dsn, TTL_S, clock=clock)

    def test_racing_rotations_on_two_gateways_revoke_the_family(self, clock: Clock) -> None:
        """Two gateways rotate the same token at once (a copied token replayed): one
        rotation wins, the other is refused, and the winner's successor is revoked too."""
        gateways = [self.make(clock), self.make(clock)]
        for _ in range(10):
            token = gateways[0].issue("anna")
            start = threading.Barrier(2)
            won: list[str] = []
            refused: list[RefreshError] = []

            def rotate(store: SessionStore, token: str = token,
                       start: threading.Barrier = start, won: list[str] = won,
                       refused: list[RefreshError] = refused) -> None:
                start.wait()
                try:
                    won.append(store.rotate(token)[1])
                except RefreshError as exc:
                    refused.append(exc)

            threads = [threading.Thread(target=rotate, args=(g,)) for g in gateways]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert len(won) == 1
            assert len(refused) == 1
            assert "reused" in str(refused[0])
            with pytest.raises(RefreshError):
                gateways[1].rotate(won[0])


def test_an_unreachable_database_is_a_store_error() -> None:
    """psycopg's errors leave the adapter as StoreError (the web layer answers 503)."""
    store = PgSessionStore("host=127.0.0.1 port=1 dbname=none connect_timeout=2", TTL_S)
    with pytest.raises(StoreError):
        store.issue("anna")
