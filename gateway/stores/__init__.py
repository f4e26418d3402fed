"""Stores a cluster shares: one port (``typing.Protocol``) per store, two adapters each.

The SQLite adapters are the single-gateway default and keep their files in the data
directory (``sessions.sqlite3``, ``provisioning.sqlite3``, ``push.sqlite3``); the PostgreSQL
adapters are used when ``journal_dsn`` is set, so that every gateway of a cluster sees the
same sessions, device registry, claim codes and push subscriptions (docs/deployment.md).

- ``sessions``: refresh-token families (``SessionStore``);
- ``registry``: the device registry, claim codes and broker credentials (``RegistryStore``);
- ``push``: Web Push subscriptions, the VAPID key, and who was pushed what
  (``PushStore``);
- ``pg``: the synchronous PostgreSQL plumbing they share (connections, migrations).

The ports are synchronous: their callers already run them in a worker thread
(``asyncio.to_thread``), as they did with SQLite.
"""

from gateway.stores.base import StoreError

__all__ = ["StoreError"]
