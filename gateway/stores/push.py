"""Web Push subscriptions and the VAPID key: the port, and its PostgreSQL adapter.

The SQLite adapter is ``gateway.push.SubscriptionStore`` (``push.sqlite3``), with the key in
``vapid-private.pem``. In a cluster ``PgPushStore`` keeps the subscriptions and the key in
PostgreSQL, so a phone subscribed through any gateway gets its pushes from every gateway,
with the one key its subscription was made for.

Every gateway hears every alarm (it follows the shared journal), so each would push it.
``claim`` makes the push once-only across the cluster: the first gateway to claim an
(alarm, staff member) pair sends it, the others skip it. A gateway that dies between the
claim and the send loses that push; Web Push is an extra channel, and the missing receipt
is what the staff watch and escalation act on (docs/staff-app.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Protocol

from gateway.stores import pg

if TYPE_CHECKING:
    from gateway.push import Subscription

__all__ = ["PgPushStore", "PushStore"]

# Claims older than this are dropped: an alarm is pushed within seconds of being raised,
# and a day is far longer than any alarm stays unhandled.
CLAIM_KEEP_S = 24 * 3600


class PushStore(Protocol):
    """Push subscriptions per staff member, and once-only sending."""

    def add(self, subscription: Subscription) -> bool:
        """Store (or renew) a subscription; False if another staff member owns the endpoint."""

    def remove(self, endpoint: str, staff_id: str | None = None) -> bool:
        """Forget a subscription (only ``staff_id``'s, if given)."""

    def for_staff(self, staff_ids: frozenset[str] | set[str] | list[str]) -> list[Subscription]:
        """Subscriptions of these staff members."""

    def count(self) -> int:
        """Stored subscriptions."""

    def claim(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """Of these (alarm id, staff id) pairs, the ones this gateway is first to push."""


MIGRATIONS: list[list[str]] = [
    [
        "CREATE TABLE trygg_push_subscriptions ("
        " endpoint text PRIMARY KEY,"
        " staff_id text NOT NULL,"
        " p256dh text NOT NULL,"
        " auth text NOT NULL,"
        " created_at timestamptz NOT NULL DEFAULT clock_timestamp())",
        "CREATE INDEX trygg_push_subscriptions_staff ON trygg_push_subscriptions (staff_id)",
        # Secrets the gateways must share (the VAPID private key, PEM).
        "CREATE TABLE trygg_secrets (name text PRIMARY KEY, value text NOT NULL)",
        "CREATE TABLE trygg_push_sent ("
        " alarm_id text NOT NULL,"
        " staff_id text NOT NULL,"
        " gateway_id text NOT NULL,"
        " sent_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
        " PRIMARY KEY (alarm_id, staff_id))",
        "CREATE INDEX trygg_push_sent_at ON trygg_push_sent (sent_at)",
    ],
]

VAPID_SECRET = "vapid-private-pem"  # noqa: S105 (the name of a row, not a secret)


class PgPushStore:
    """Subscriptions, the VAPID key and push claims in PostgreSQL."""

    def __init__(self, dsn: str, gateway_id: str) -> None:
        self.dsn = dsn
        self.gateway_id = gateway_id
        pg.translated(pg.migrate)(dsn, "push", MIGRATIONS)

    @pg.translated
    def shared_key(self, candidate: bytes) -> bytes:
        """The cluster's VAPID key: ``candidate`` if none is stored yet, else the stored one.

        The first gateway to start with the cluster offers its own key file, so the
        subscriptions it already had stay valid.
        """
        with pg.connection(self.dsn) as conn:
            conn.execute("INSERT INTO trygg_secrets (name, value) VALUES (%s, %s)"
                         " ON CONFLICT (name) DO NOTHING", (VAPID_SECRET, candidate.decode()))
            row = conn.execute("SELECT value FROM trygg_secrets WHERE name = %s",
                               (VAPID_SECRET,)).fetchone()
        assert row is not None
        return str(row[0]).encode()

    @pg.translated
    def add(self, subscription: Subscription) -> bool:
        """Store a subscription (or renew its keys); never moves another member's endpoint."""
        with pg.connection(self.dsn) as conn:
            cursor = conn.execute(
                "INSERT INTO trygg_push_subscriptions (endpoint, staff_id, p256dh, auth)"
                " VALUES (%s, %s, %s, %s) ON CONFLICT (endpoint) DO UPDATE SET"
                " p256dh = excluded.p256dh, auth = excluded.auth,"
                " created_at = clock_timestamp()"
                " WHERE trygg_push_subscriptions.staff_id = excluded.staff_id",
                (subscription.endpoint, subscription.staff_id, subscription.p256dh,
                 subscription.auth),
            )
            return cursor.rowcount > 0

    @pg.translated
    def remove(self, endpoint: str, staff_id: str | None = None) -> bool:
        """Forget a subscription (only ``staff_id``'s, if given); whether one was removed."""
        with pg.connection(self.dsn) as conn:
            if staff_id is None:
                cursor = conn.execute(
                    "DELETE FROM trygg_push_subscriptions WHERE endpoint = %s", (endpoint,))
            else:
                cursor = conn.execute(
                    "DELETE FROM trygg_push_subscriptions WHERE endpoint = %s"
                    " AND staff_id = %s", (endpoint, staff_id))
            return cursor.rowcount > 0

    @pg.translated
    def for_staff(self, staff_ids: frozenset[str] | set[str] | list[str]) -> list[Subscription]:
        """Subscriptions of these staff members."""
        from gateway.push import Subscription

        ids = sorted(staff_ids)
        if not ids:
            return []
        with pg.connection(self.dsn) as conn:
            rows = conn.execute(
                "SELECT endpoint, staff_id, p256dh, auth FROM trygg_push_subscriptions"
                " WHERE staff_id = ANY(%s) ORDER BY staff_id, created_at", (ids,)
            ).fetchall()
        return [Subscription(*row) for row in rows]

    @pg.translated
    def count(self) -> int:
        """Stored subscriptions."""
        with pg.connection(self.dsn) as conn:
            row = conn.execute("SELECT count(*) FROM trygg_push_subscriptions").fetchone()
        return int(row[0]) if row is not None else 0

    @pg.translated
    def claim(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """The pairs no gateway claimed before (one statement: a race has one winner)."""
        wanted = sorted(set(pairs))
        if not wanted:
            return set()
        with pg.connection(self.dsn) as conn, conn.transaction():
            conn.execute("DELETE FROM trygg_push_sent"
                         " WHERE sent_at < clock_timestamp() - make_interval(secs => %s)",
                         (CLAIM_KEEP_S,))
            rows = conn.execute(
                "INSERT INTO trygg_push_sent (alarm_id, staff_id, gateway_id)"
                " SELECT a, s, %s FROM unnest(%s::text[], %s::text[]) AS t(a, s)"
                " ON CONFLICT DO NOTHING RETURNING alarm_id, staff_id",
                (self.gateway_id, [a for a, _ in wanted], [s for _, s in wanted]),
            ).fetchall()
        return {(str(a), str(s)) for a, s in rows}
