"""One supervisor for every task of the gateway: named, watched, restarted or fatal.

Every component (links, services, notifiers, timers, the web server) is started here, in one
``asyncio.TaskGroup``, as a named task with a policy (docs/architecture.md has the table):

- ``RESTART``: a failure is logged with its traceback, counted
  (``trygg_task_restarts_total{task}``) and shown in ``/healthz``; the task is started again
  after a capped, jittered back-off (full jitter: uniform(0, min(cap, base·2ⁿ))), so a fault
  that repeats does not spin the CPU or flood the log, and a transient one heals by itself;
- ``FATAL``: the gateway stops, loudly, with a non-zero exit status, and systemd starts it
  again (``Restart=on-failure``): for the journal and the core's pipeline, whose state cannot
  be trusted after a failure mid-way; a restart replays the journal.

Links are async context managers that own their loops (the aiomqtt model); ``enter`` opens
one at once (a failure at start is a failed start) and then keeps it under a task that
waits on it and, per its policy, re-opens it when its loops fail. Shutdown goes in reverse
order of start, each component closed before the one started before it, like an
``AsyncExitStack``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, Self

from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# Restart back-off: full jitter over a doubling window, capped so that a component that
# recovers (a broker back, a disk with space again) is running again within half a minute.
BACKOFF_BASE_S = 0.5
BACKOFF_CAP_S = 30.0
# A task that ran this long before failing starts its back-off from the beginning again.
HEALTHY_AFTER_S = 60.0
# How long a component's graceful stop may take before it is cancelled.
STOP_TIMEOUT_S = 5.0


class Policy(StrEnum):
    """What a failure of a task means."""

    RESTART = "restart"
    FATAL = "fatal"


class FatalError(Exception):
    """A task whose failure stops the gateway failed; ``__cause__`` says how."""

    def __init__(self, task: str) -> None:
        super().__init__(f"supervised task {task!r} failed; the gateway stops")
        self.task = task


class Link(Protocol):
    """A component that owns its loops: open it, wait on it, close it."""

    async def __aenter__(self) -> Any:
        """Open (start its loops)."""

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> Any:
        """Close (stop and await its loops)."""

    async def wait(self) -> None:
        """Until its loops end; raises what ended them."""


@dataclass(slots=True)
class TaskState:
    """One supervised task as ``/healthz`` shows it."""

    name: str
    policy: Policy
    state: str = "starting"  # running, restarting, failed, done, stopped
    restarts: int = 0
    last_error: str | None = None
    since: float = 0.0

    def json(self) -> dict[str, Any]:
        """The ``/healthz`` entry."""
        return {"state": self.state, "policy": self.policy.value, "restarts": self.restarts,
                "last_error": self.last_error}


@dataclass(slots=True)
class _Entry:
    state: TaskState
    task: asyncio.Task[None]
    stop: Callable[[], Awaitable[None]] | None


class Supervisor:
    """Owns every task of one gateway. ``async with Supervisor() as sup: sup.start(...)``."""

    def __init__(self, *, on_restart: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 backoff_base_s: float = BACKOFF_BASE_S,
                 backoff_cap_s: float = BACKOFF_CAP_S) -> None:
        self._on_restart = on_restart
        self._clock = clock
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._entries: list[_Entry] = []
        self._group: asyncio.TaskGroup | None = None
        self._root: asyncio.Task[None] | None = None
        self._closing = asyncio.Event()
        self._ready = asyncio.Event()
        self._log_limiter = LogLimiter(interval_s=60.0)
        self.failure: BaseException | None = None

    async def __aenter__(self) -> Self:
        if self._root is not None:
            raise RuntimeError("Supervisor is not re-entrant")
        self._closing.clear()
        self._root = asyncio.create_task(self._run(), name="supervisor")
        await self._ready.wait()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.close()

    async def _run(self) -> None:
        try:
            async with asyncio.TaskGroup() as group:
                self._group = group
                self._ready.set()
                await self._closing.wait()
        except BaseExceptionGroup as errors:
            fatal = errors.subgroup(FatalError)
            self.failure = fatal.exceptions[0] if fatal is not None else errors
            raise
        finally:
            self._group = None
            self._ready.set()

    async def close(self) -> None:
        """Stop every task, newest first, each given its graceful stop; then the group."""
        root, self._root = self._root, None
        if root is None:
            return
        for entry in reversed(self._entries):
            if entry.task.done():
                continue
            if entry.stop is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await entry.stop()
                        await asyncio.wait({entry.task})
            entry.task.cancel()
            with contextlib.suppress(BaseException):
                await entry.task
            entry.state.state = "stopped"
        self._closing.set()
        with contextlib.suppress(BaseException):
            await root
        self._entries.clear()

    async def wait(self) -> None:
        """Until the supervisor ends; raises ``FatalError`` if a fatal task failed."""
        assert self._root is not None
        try:
            await asyncio.shield(self._root)
        except BaseExceptionGroup:
            if isinstance(self.failure, FatalError):
                raise self.failure from self.failure.__cause__
            raise

    # -- starting --------------------------------------------------------------------------

    def start(self, name: str, run: Callable[[], Awaitable[None]], policy: Policy, *,
              stop: Callable[[], Awaitable[None]] | None = None) -> TaskState:
        """Run ``run()`` as the named task ``name`` under ``policy``.

        ``stop`` asks the task to end by itself on shutdown (before it is cancelled).
        """
        if self._group is None:
            raise RuntimeError("the supervisor is not running")
        state = TaskState(name, policy, since=self._clock())
        task = self._group.create_task(self._supervise(state, run), name=name)
        self._entries.append(_Entry(state, task, stop))
        return state

    async def enter(self, name: str, link: Link, policy: Policy) -> TaskState:
        """Open ``link`` now, then keep it open under a task (re-opened per ``policy``)."""
        await link.__aenter__()
        first = True

        async def keep() -> None:
            nonlocal first
            if not first:
                await link.__aenter__()
            first = False
            try:
                await link.wait()
            finally:
                await link.__aexit__(None, None, None)

        return self.start(name, keep, policy)

    def states(self) -> dict[str, TaskState]:
        """Every task's state, by name."""
        return {entry.state.name: entry.state for entry in self._entries}

    def healthy(self) -> bool:
        """Whether every task is running (or finished its one-off job)."""
        return all(e.state.state in ("running", "done") for e in self._entries)

    async def _supervise(self, state: TaskState, run: Callable[[], Awaitable[None]]) -> None:
        attempt = 0
        while True:
            state.state = "running"
            started = self._clock()
            try:
                await run()
            except asyncio.CancelledError:
                state.state = "stopped"
                raise
            except Exception as exc:
                state.last_error = f"{type(exc).__name__}: {exc}"[:300]
                if state.policy is Policy.FATAL:
                    state.state = "failed"
                    _LOGGER.critical("%s failed; the gateway stops (systemd restarts it)",
                                     state.name, exc_info=exc)
                    raise FatalError(state.name) from exc
                if self._clock() - started >= HEALTHY_AFTER_S:
                    attempt = 0
                delay = random.uniform(
                    0, min(self._backoff_cap_s, self._backoff_base_s * 2**attempt))
                attempt += 1
                state.restarts += 1
                state.state = "restarting"
                state.since = self._clock()
                if self._on_restart is not None:
                    self._on_restart(state.name)
                if self._log_limiter.allow(state.name):
                    _LOGGER.error("%s failed; restarting it in %.1f s (restart %d)%s",
                                  state.name, delay, state.restarts,
                                  self._log_limiter.suppressed_note(state.name), exc_info=exc)
                await asyncio.sleep(delay)
                continue
            state.state = "done"
            state.since = self._clock()
            return
