"""Web Push for the staff app: VAPID keys, subscriptions, a queued sender and its API.

The staff app is a PWA. While it is open, alarms arrive over the WebSocket; when the phone
is locked or the app closed, a Web Push wakes its service worker, which shows a
notification and posts a receipt (``POST /api/v1/alarms/{id}/receipt``, the ``delivered``
hop). This module is the gateway's half of that:

- ``VapidKeys``: the gateway's VAPID key pair, generated once and kept in the data dir;
- ``SubscriptionStore``: the browsers' push subscriptions per staff member (SQLite);
- ``PushNotifier``: a ``Gateway.notifiers`` hook. ``notify`` only queues (it runs on the
  commit follower and must not block); a worker task owned by the notifier's async context
  sends the pushes, with a bound on concurrent requests;
- the HTTP API (public key, subscribe, unsubscribe) and the service worker script, which
  must be served from ``/app/`` to control the app's pages, are in ``gateway.web.push``.

Web Push is an extra channel, never the alarm's only way out: the alarm is in the journal
and on every connected WebSocket before a push is queued. So when the queue is full the
push is dropped (counted and logged) rather than stall the commit follower; the missing
receipt is what escalation acts on (docs/staff-app.md).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import socket
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02  # type: ignore[import-untyped]
from pywebpush import WebPushException, webpush_async  # type: ignore[import-untyped]

from gateway.pushguard import EndpointPolicy, addresses_problem
from gateway.ratelimit import LogLimiter
from gateway.stores import StoreError
from gateway.stores.push import PgPushStore, PushStore

_LOGGER = logging.getLogger(__name__)

VAPID_KEY_FILE = "vapid-private.pem"
SUBSCRIPTIONS_FILE = "push.sqlite3"

# Alarm notifications waiting for the sender. One entry is one alarm for its staff (it
# fans out to their subscriptions in the worker). A burst of a few hundred alarms fits; a
# full queue means the push services are down or unreachable, and more memory would not
# help anyone.
QUEUE_SIZE = 1000
# Concurrent requests to push services: enough that one slow endpoint does not hold up the
# others, few enough not to look like a flood to FCM/Mozilla/Apple.
MAX_IN_FLIGHT = 8
SEND_TIMEOUT_S = 10.0
# How long a push service may hold a push for a phone that is offline. After ten minutes
# an alarm notification is stale: the receipt deadline has long moved the alarm on to the
# next channel, and a late buzz would only confuse.
PUSH_TTL_S = 600
# (alarm, staff) pairs already pushed: each is pushed once, however often the alarm changes.
PUSHED_MEMORY = 20_000
DEFAULT_SUBJECT = "mailto:drift@trygg.invalid"

# 422 by number: its starlette constant was renamed (…_ENTITY → …_CONTENT) across versions.


def b64url_decode(text: str) -> bytes:
    """Decode unpadded base64url (as browsers send subscription keys)."""
    padded = (text + "=" * (-len(text) % 4)).encode()
    return base64.b64decode(padded, altchars=b"-_", validate=True)


def b64url_encode(data: bytes) -> str:
    """Encode as unpadded base64url."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# -- VAPID keys -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class VapidKeys:
    """The gateway's VAPID key pair (RFC 8292)."""

    vapid: Any  # py_vapid.Vapid02 (untyped library)
    public_key: str  # base64url uncompressed point: the browser's applicationServerKey

    @classmethod
    def load_or_create(cls, path: Path) -> VapidKeys:
        """Read the private key from ``path``, generating and storing it the first time."""
        try:
            pem = path.read_bytes()
        except FileNotFoundError:
            pem = _create_key_file(path)
        return cls.from_pem(pem, str(path))

    @classmethod
    def from_pem(cls, pem: bytes, source: str = "the key") -> VapidKeys:
        """The key pair of a PEM private key (a file's, or the cluster's shared one)."""
        key = serialization.load_pem_private_key(pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(
            key.curve, ec.SECP256R1
        ):
            raise TypeError(f"{source} does not hold a P-256 private key")
        public = key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return cls(Vapid02(private_key=key), b64url_encode(public))


def _create_key_file(path: Path) -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_EXCL: if two components race to create the key, one wins and both use it.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as out:
        out.write(pem)
    _LOGGER.info("generated a new VAPID key pair in %s", path)
    return pem


# -- subscriptions ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Subscription:
    """One browser's push subscription, owned by the staff member who registered it."""

    endpoint: str
    staff_id: str
    p256dh: str
    auth: str

    def info(self) -> dict[str, Any]:
        """The ``subscription_info`` shape pywebpush expects."""
        return {"endpoint": self.endpoint, "keys": {"p256dh": self.p256dh, "auth": self.auth}}


_SCHEMA = """
CREATE TABLE IF NOT EXISTS subscriptions (
    endpoint TEXT PRIMARY KEY,
    staff_id TEXT NOT NULL,
    p256dh TEXT NOT NULL,
    auth TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS subscriptions_staff ON subscriptions (staff_id);
"""


class SubscriptionStore:
    """Push subscriptions in SQLite. Every call is short; callers on the loop use a thread.

    A connection per call and no in-memory copy: the router and the notifier may each hold
    a store on the same file, both see the same rows, and there is nothing to close.
    Subscribing is rare and lookups are one indexed query per alarm.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with contextlib.closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            conn.execute("PRAGMA busy_timeout = 5000")
            yield conn

    def add(self, subscription: Subscription) -> bool:
        """Store a subscription (or renew its keys); False if another staff member owns the
        endpoint, which is then left as it is.

        An endpoint that belongs to someone else is never moved: whoever knows another
        member's endpoint could otherwise take their pushes, alarms included. A shared phone
        whose last user did not log out gets a fresh subscription (the app unsubscribes and
        subscribes again on the 409), which has an endpoint of its own.
        """
        with self._connect() as conn:
            cursor = conn.execute(
                "INSERT INTO subscriptions (endpoint, staff_id, p256dh, auth, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (endpoint) DO UPDATE SET "
                "p256dh = excluded.p256dh, auth = excluded.auth, "
                "created_at = excluded.created_at "
                "WHERE subscriptions.staff_id = excluded.staff_id",
                (
                    subscription.endpoint,
                    subscription.staff_id,
                    subscription.p256dh,
                    subscription.auth,
                    time.time(),
                ),
            )
            return cursor.rowcount > 0

    def remove(self, endpoint: str, staff_id: str | None = None) -> bool:
        """Forget a subscription (only ``staff_id``'s, if given); whether one was removed."""
        with self._connect() as conn:
            if staff_id is None:
                cursor = conn.execute("DELETE FROM subscriptions WHERE endpoint = ?", (endpoint,))
            else:
                cursor = conn.execute(
                    "DELETE FROM subscriptions WHERE endpoint = ? AND staff_id = ?",
                    (endpoint, staff_id),
                )
            return cursor.rowcount > 0

    def for_staff(self, staff_ids: frozenset[str] | set[str] | list[str]) -> list[Subscription]:
        """Subscriptions of these staff members."""
        ids = sorted(staff_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT endpoint, staff_id, p256dh, auth FROM subscriptions "
                f"WHERE staff_id IN ({marks}) ORDER BY staff_id, created_at",
                ids,
            ).fetchall()
        return [Subscription(*row) for row in rows]

    def count(self) -> int:
        """Stored subscriptions."""
        with self._connect() as conn:
            (n,) = conn.execute("SELECT COUNT(*) FROM subscriptions").fetchone()
        return int(n)

    def claim(self, pairs: Iterable[tuple[str, str]]) -> set[tuple[str, str]]:
        """All of them: a lone gateway is the only sender (the notifier dedupes itself)."""
        return set(pairs)

    def all(self) -> list[Subscription]:
        """Every subscription (moving a single gateway's into a cluster's)."""
        with self._connect() as conn:
            rows = conn.execute(
                "SELECT endpoint, staff_id, p256dh, auth FROM subscriptions ORDER BY created_at"
            ).fetchall()
        return [Subscription(*row) for row in rows]


# -- the notifier -----------------------------------------------------------------------------


@dataclass(slots=True)
class PushStats:
    """Counters for operations (and tests)."""

    queued: int = 0  # alarm notifications accepted into the queue
    dropped: int = 0  # refused because the queue was full
    sent: int = 0  # pushes the push service accepted (2xx)
    failed: int = 0  # pushes that failed (network, 4xx/5xx other than expiry)
    expired: int = 0  # subscriptions removed because the push service said 404/410
    refused: int = 0  # not sent: the endpoint breaks the rules (gateway.pushguard); removed


@dataclass(slots=True)
class _Job:
    alarm_id: str
    staff_ids: frozenset[str]
    alarm: dict[str, Any]
    # Encoded when the first subscription is found: most staff of a storm have none.
    _payload: str | None = None

    @property
    def payload(self) -> str:
        """The push's JSON (encrypted per subscription by pywebpush)."""
        if self._payload is None:
            self._payload = json.dumps(push_payload(self.alarm))
        return self._payload


@dataclass(slots=True)
class _Seen:
    """A bounded memory of (alarm id, staff id) pairs, oldest forgotten first."""

    limit: int
    keys: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)

    def add_new(self, keys: list[tuple[str, str]]) -> list[tuple[str, str]]:
        fresh = [k for k in keys if k not in self.keys]
        for key in fresh:
            self.keys[key] = None
        while len(self.keys) > self.limit:
            self.keys.popitem(last=False)
        return fresh


ALARM_TITLES = {
    "manual": "Larmknapp",
    "fall": "Fall",
    "smoke": "Brandlarm",
    "water": "Vattenläcka",
    "bed_exit": "Lämnat sängen",
    "door": "Dörr",
    "inactivity": "Ingen aktivitet",
    "temperature": "Temperatur",
    "medication": "Medicin",
    "test": "Provlarm",
    "technical": "Tekniskt larm",
}


def push_payload(alarm: dict[str, Any]) -> dict[str, Any]:
    """What a push carries: enough to show the notification, no personal data.

    The payload is end-to-end encrypted (RFC 8291), but the notification it becomes is
    readable on a locked screen. So it names the alarm type, not the person or address:
    those are one tap (and a login) away in the app.
    """
    return {
        "v": 1,
        "alarm_id": alarm["id"],
        "type": alarm.get("type"),
        "title": ALARM_TITLES.get(str(alarm.get("type")), str(alarm.get("type"))),
        "priority": alarm.get("priority"),
        "test": bool(alarm.get("test")),
        "raised_at": alarm.get("raised_at"),
    }


class PushNotifier:
    """Queues a Web Push for each new unhandled alarm and sends it from an owned task.

    ``async with notifier:`` runs the sender; ``notifier.notify`` is the ``Gateway.notifiers``
    hook. An alarm is pushed to each staff member once, while it is open and nobody has
    accepted it; later changes travel over the WebSocket only.
    """

    def __init__(
        self,
        store: PushStore,
        keys: VapidKeys,
        *,
        subject: str = DEFAULT_SUBJECT,
        queue_size: int = QUEUE_SIZE,
        max_in_flight: int = MAX_IN_FLIGHT,
        ttl_s: int = PUSH_TTL_S,
        send_timeout_s: float = SEND_TIMEOUT_S,
        policy: EndpointPolicy | None = None,
    ) -> None:
        self.store = store
        # Where pushes may go (gateway.pushguard); checked again before every send, for
        # subscriptions stored before the rules (or the allowed hosts) changed.
        self.policy = policy if policy is not None else EndpointPolicy()
        self.keys = keys
        self.subject = subject
        self.ttl_s = ttl_s
        self.send_timeout_s = send_timeout_s
        self.stats = PushStats()
        self._max_in_flight = max_in_flight
        self._queue: asyncio.Queue[_Job] = asyncio.Queue(queue_size)
        self._seen = _Seen(PUSHED_MEMORY)
        self._in_flight: set[asyncio.Task[None]] = set()
        self._log_limiter = LogLimiter(interval_s=60.0)
        self._open = False

    @classmethod
    def for_data_dir(cls, data_dir: Path, *, subject: str = DEFAULT_SUBJECT,
                     policy: EndpointPolicy | None = None, dsn: str | None = None,
                     gateway_id: str = "") -> PushNotifier:
        """A notifier on a gateway's data dir (keys and subscriptions), or, with ``dsn``,
        on the cluster's shared subscriptions and key (gateway.stores.push)."""
        if dsn is None:
            return cls(
                SubscriptionStore(data_dir / SUBSCRIPTIONS_FILE),
                VapidKeys.load_or_create(data_dir / VAPID_KEY_FILE),
                subject=subject,
                policy=policy,
            )
        shared = PgPushStore(dsn, gateway_id)
        # This gateway's own key file (made now if missing) is offered: the first gateway
        # of the cluster keeps the key its phones subscribed with.
        local = data_dir / VAPID_KEY_FILE
        candidate = local.read_bytes() if local.exists() else _create_key_file(local)
        pem = shared.shared_key(candidate)
        own = data_dir / SUBSCRIPTIONS_FILE
        if pem == candidate and own.exists():
            # Our key is the cluster's: the phones that subscribed here stay valid.
            for subscription in SubscriptionStore(own).all():
                shared.add(subscription)
        keys = VapidKeys.from_pem(pem, "the cluster's VAPID key")
        return cls(shared, keys, subject=subject, policy=policy)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError("PushNotifier is already open; it is not re-entrant")
        self._open = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._open = False
        self._in_flight.clear()

    async def wait(self) -> None:
        """The sender (a supervised task while the notifier is open)."""
        await self._run()

    # -- the hook ----------------------------------------------------------------------------

    def notify(self, alarm: dict[str, Any], staff_ids: frozenset[str]) -> None:
        """Queue a push for a new, unhandled alarm. Never blocks; a full queue drops."""
        if alarm.get("state") != "open" or alarm.get("owner") is not None:
            return
        alarm_id = str(alarm["id"])
        fresh = self._seen.add_new([(alarm_id, s) for s in sorted(staff_ids)])
        if not fresh:
            return
        job = _Job(alarm_id, frozenset(s for _, s in fresh), alarm)
        try:
            self._queue.put_nowait(job)
        except asyncio.QueueFull:
            self.stats.dropped += 1
            if self._log_limiter.allow("full"):
                _LOGGER.warning(
                    "web push queue full (%d); push for alarm %s dropped%s",
                    self._queue.maxsize,
                    alarm_id,
                    self._log_limiter.suppressed_note("full"),
                )
            return
        self.stats.queued += 1

    async def drain(self) -> None:
        """Wait until everything queued so far has been sent or has failed."""
        await self._queue.join()
        while self._in_flight:
            await asyncio.wait(set(self._in_flight))

    # -- the sender --------------------------------------------------------------------------

    async def _run(self) -> None:
        slots = asyncio.Semaphore(self._max_in_flight)
        timeout = aiohttp.ClientTimeout(total=self.send_timeout_s)
        # The sends are the run's own tasks: cancelled and awaited with it, before the
        # session closes.
        # Every connection's addresses are checked (PublicResolver) and redirects are not
        # followed: the endpoint rules hold for what is actually connected to.
        connector = aiohttp.TCPConnector(resolver=PublicResolver())
        async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                         trace_configs=[no_redirects()]) as session, \
                asyncio.TaskGroup() as group:
            while True:
                # Every job queued meanwhile in one lookup (one thread hop, one read of the
                # store), not one per alarm: a storm of alarms is a burst of jobs.
                jobs = [await self._queue.get()]
                while not self._queue.empty():
                    jobs.append(self._queue.get_nowait())
                try:
                    staff = frozenset().union(*(job.staff_ids for job in jobs))
                    found = await asyncio.to_thread(self.store.for_staff, staff)
                    # In a cluster every gateway hears the alarm: the first to claim a
                    # (alarm, staff) pair pushes it. Only pairs with a subscription are
                    # claimed, so a claim always stands for a real push.
                    wanted = {(job.alarm_id, s.staff_id) for job in jobs for s in found
                              if s.staff_id in job.staff_ids}
                    mine = await asyncio.to_thread(self.store.claim, wanted)
                    jobs_to_send = [
                        _Job(job.alarm_id,
                             frozenset(s for s in job.staff_ids if (job.alarm_id, s) in mine),
                             job.alarm)
                        for job in jobs
                    ]
                    by_staff: dict[str, list[Subscription]] = {}
                    for subscription in found:
                        by_staff.setdefault(subscription.staff_id, []).append(subscription)
                    for job in jobs_to_send:
                        for staff_id in sorted(job.staff_ids):
                            for subscription in by_staff.get(staff_id, ()):
                                await slots.acquire()
                                task = group.create_task(
                                    self._send(session, slots, subscription, job),
                                    name=f"web push {job.alarm_id}",
                                )
                                self._in_flight.add(task)
                                task.add_done_callback(self._in_flight.discard)
                except (sqlite3.Error, StoreError) as exc:
                    self.stats.failed += len(jobs)
                    self._log_limiter.log(_LOGGER, logging.WARNING, "store",
                                          "web push for %d alarm(s): store failed: %s",
                                          len(jobs), exc)
                finally:
                    for _ in jobs:
                        self._queue.task_done()

    async def _send(
        self,
        session: aiohttp.ClientSession,
        slots: asyncio.Semaphore,
        subscription: Subscription,
        job: _Job,
    ) -> None:
        problem = self.policy.url_problem(subscription.endpoint)
        if problem is not None:
            # Stored before these rules (or before the allowed hosts changed): never sent
            # to, and removed, so the phone registers a proper one at its next login.
            slots.release()
            self.stats.refused += 1
            await asyncio.to_thread(self.store.remove, subscription.endpoint,
                                    subscription.staff_id)
            self._failed(subscription, job, f"{problem}; subscription removed")
            return
        try:
            await webpush_async(
                subscription.info(),
                data=job.payload,
                vapid_private_key=self.keys.vapid,
                # A fresh dict each time: pywebpush fills in `aud` and `exp` in place.
                vapid_claims={"sub": self.subject},
                ttl=self.ttl_s,
                headers={"Urgency": "high"},
                aiohttp_session=session,
                timeout=self.send_timeout_s,
            )
        except WebPushException as exc:
            code = exc.status_code
            if code in (404, 410):
                # The browser dropped the subscription (app uninstalled, permission revoked).
                self.stats.expired += 1
                await asyncio.to_thread(
                    self.store.remove, subscription.endpoint, subscription.staff_id
                )
                self._log_limiter.log(_LOGGER, logging.INFO, "expired",
                                      "web push subscription of %s expired (%s); removed",
                                      subscription.staff_id, code)
            else:
                self._failed(subscription, job, f"push service answered {code}")
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            self._failed(subscription, job, f"{type(exc).__name__}: {exc}")
        else:
            self.stats.sent += 1
        finally:
            slots.release()

    def _failed(self, subscription: Subscription, job: _Job, reason: str) -> None:
        self.stats.failed += 1
        host = urlsplit(subscription.endpoint).hostname or "?"
        if self._log_limiter.allow(host):
            _LOGGER.warning(
                "web push for alarm %s to %s (%s) failed: %s%s",
                job.alarm_id,
                subscription.staff_id,
                host,
                reason,
                self._log_limiter.suppressed_note(host),
            )


# -- the sender's connections ------------------------------------------------------------


class PublicResolver(AbstractResolver):
    """aiohttp resolver that refuses a host with any non-public address.

    The registration check resolved the host once; this one runs for every connection, so
    an endpoint whose DNS answer changed to an inside address since (DNS rebinding) is not
    reached either. aiohttp does not consult the resolver for IP literals, which the URL
    rules never let through (except the test policy's loopback).
    """

    def __init__(self) -> None:
        self._inner = aiohttp.ThreadedResolver()

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        """Resolve, then refuse the host if any of its addresses is not public."""
        results = await self._inner.resolve(host, port, family)
        problem = addresses_problem(host, [r["host"] for r in results])
        if problem is not None:
            raise OSError(problem)
        return results

    async def close(self) -> None:
        """Close the wrapped resolver."""
        await self._inner.close()


async def _refuse_redirect(session: aiohttp.ClientSession, context: Any,
                           params: aiohttp.TraceRequestRedirectParams) -> None:
    location = params.response.headers.get("Location")
    raise aiohttp.ClientError(f"push service redirected to {location} (not followed)")


def no_redirects() -> aiohttp.TraceConfig:
    """A trace that turns any redirect into an error: a push service answers, it does not
    send the gateway elsewhere (a redirect to an IP literal would bypass the resolver)."""
    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(_refuse_redirect)
    return trace
