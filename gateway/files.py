"""Data files are private to the gateway's user: 0600 files, 0700 directories.

The data directory holds care recipients' data (names, addresses, action plans, key-box
codes), the journal, the audit log, the VAPID and TLS keys, refresh-token digests and the
broker's password file. None of it is for other local users, whatever umask the gateway was
started with (a shell's 022 would make every new SQLite file world-readable).

Two measures, because files are created in many places (SQLite creates its ``-wal`` and
``-shm`` files itself, with the database file's mode):

- ``private_umask``: the process creates everything with umask 077 from then on. The gateway
  is a service process that owns its umask; the CLI and ``Gateway`` set it first thing.
- ``tighten``: files made before (by an older version, or by hand) are brought down to 0600
  and directories to 0700 at start. Only permission bits are removed, never added, and
  symbolic links are not followed.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

_LOGGER = logging.getLogger(__name__)

PRIVATE_UMASK = 0o077
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


def private_umask() -> int:
    """Create files 0600 and directories 0700 from now on; returns the previous umask."""
    return os.umask(PRIVATE_UMASK)


def tighten(directory: Path) -> int:
    """Remove group and other permissions below ``directory`` (itself included).

    Returns how many entries were changed. Entries that vanish or cannot be changed (owned
    by another user) are logged and skipped: a gateway must still start.
    """
    changed = 0
    for path in (directory, *_walk(directory)):
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if stat.S_ISLNK(mode) or not mode & PRIVATE_UMASK:
            continue
        try:
            os.chmod(path, stat.S_IMODE(mode) & ~PRIVATE_UMASK)
        except OSError as exc:
            _LOGGER.warning("cannot make %s private (%s); other users may read it", path, exc)
            continue
        changed += 1
    if changed:
        _LOGGER.info("made %d files and directories under %s private (0600/0700)", changed,
                     directory)
    return changed


def _walk(directory: Path) -> list[Path]:
    found: list[Path] = []
    for root, dirs, files in os.walk(directory, followlinks=False):
        found += [Path(root, name) for name in (*dirs, *files)]
    return found
