"""What every store adapter raises when its database fails."""

from __future__ import annotations


class StoreError(Exception):
    """The store's database failed (connection lost, timeout); the operation did not happen.

    Callers see one exception type whichever adapter is configured: psycopg's errors do not
    leak into the web layer or the push sender.
    """
