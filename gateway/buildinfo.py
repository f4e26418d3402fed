"""What build is running: the package version and the git commit it was built from.

The commit comes from the installed package's metadata when pip recorded it (an install
from a git URL writes ``vcs_info.commit_id`` in ``direct_url.json``), else from ``git
rev-parse`` when the code runs from a checkout (an editable install, a developer's tree).
Neither is guaranteed — a wheel from an sdist, a host without git — so "unknown" is a valid
answer and nothing here raises.
"""

from __future__ import annotations

import functools
import json
import subprocess
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from gateway import __version__

DISTRIBUTION = "trygg"
UNKNOWN = "unknown"
# git answers in milliseconds; the bound only matters on a hung network file system, where
# `trygg --version` must still answer.
_GIT_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class BuildInfo:
    """The running build (``trygg --version``, ``trygg_build_info``)."""

    version: str
    commit: str

    def line(self) -> str:
        """``trygg 0.1.0 (commit abc123def456)``."""
        return f"trygg {self.version} (commit {self.commit})"


def _installed_version() -> str:
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__


def _metadata_commit() -> str | None:
    try:
        text = metadata.distribution(DISTRIBUTION).read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    try:
        commit = json.loads(text).get("vcs_info", {}).get("commit_id")
    except (ValueError, AttributeError):
        return None
    return commit[:12] if isinstance(commit, str) and commit else None


def git_commit(directory: Path) -> str | None:
    """The short commit of the checkout holding ``directory``; None when there is none."""
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"],  # noqa: S607 - git from PATH
            cwd=directory, capture_output=True, text=True, timeout=_GIT_TIMEOUT_S, check=False,
        )
    except (OSError, subprocess.SubprocessError):  # no git, no such directory, timeout
        return None
    commit = done.stdout.strip()
    return commit if done.returncode == 0 and commit else None


@functools.cache
def build_info() -> BuildInfo:
    """The running build, looked up once per process."""
    commit = _metadata_commit() or git_commit(Path(__file__).resolve().parent)
    return BuildInfo(_installed_version(), commit or UNKNOWN)
