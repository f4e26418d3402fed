"""The gateway process: transports, journal, core and staff hub wired together.

Data flows one way (DESIGN.md §2). For an alarm:

1. the MQTT receiver hands the raw message to ``_on_message``, which decodes it at the edge;
2. the core decides (pure) and returns records + actions;
3. the records are queued for the journal's next group commit, and the decision for the
   commit follower — both in arrival order;
4. the follower awaits each commit in order, applies the records to the core and only then
   carries out the actions (ack the device, push to staff).

A journal failure means: records not applied, device not acked (it keeps resending), the
failure counted and logged. State never runs ahead of the journal.

Several gateways (``[cluster]``, docs/deployment.md) share a PostgreSQL journal. Each
follows the others' commits (``gateway.cluster``) and applies them to its own core, so any
gateway can serve any staff client. Every batch carries the record counts of the existing
alarms it was decided on (optimistic concurrency): a decision made on a stale view of an
alarm is refused by the journal and made again after catching up, so two gateways never
both accept, escalate or close the same alarm. Work that must happen once (escalation
ticks, device supervision, the delivery watch, test alarms) is done by the holder of that
kind of work's lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import uvicorn

from alarms import kpi
from alarms.actions import AckDevice, Action, Notify, NotifyCentre
from alarms.core import AlarmCore, Decision, Refusal
from alarms.directory import Directory
from alarms.escalation import PRESENCE_DEADLINE_S
from alarms.events import (
    AlarmReceived,
    CentreConfirmed,
    Event,
    StaffEvent,
    TechnicalCleared,
    Tick,
)
from alarms.model import GATEWAY_DEVICE, Alarm, AlarmType, Hop
from alarms.records import AlarmOpened, HopAdded, Record
from alarms.supervision import DeviceOffline, DeviceOnline
from devices.contract import (
    AlarmMessage,
    DeviceMessage,
    HeartbeatMessage,
    Reason,
    Rejected,
    StatusMessage,
    TelemetryMessage,
    decode,
    encode_ack,
    topic,
    valid_id,
)
from devices.scaip import EventKind, ScaipRequest, Snu, classify
from devices.serial import NakReason
from devices.sip import SipRequest
from gateway import __version__
from gateway.audit import AUDIT_FILENAME
from gateway.auditor import Auditor
from gateway.auth import TokenIssuer
from gateway.cameras import CameraService
from gateway.centre_scaip import make_centre, report_fault
from gateway.config import Settings
from gateway.consoles import create_console_router
from gateway.dc09 import Dc09Receiver, dc09_receiver
from gateway.duties import ESCALATION, SUPERVISION
from gateway.hub import StaffHub
from gateway.ids import new_alarm_id
from gateway.journal import (
    ConflictError,
    DuplicateAlarmError,
    Journal,
    JournalError,
    SqliteJournal,
)
from gateway.metrics import Metrics
from gateway.mqtt import MqttLink, Outbound
from gateway.org import DeviceInfo, OrgChange, OrgStore
from gateway.orgfile import RosterStore
from gateway.privacy import run_retention
from gateway.provlarm import Provlarm, create_provlarm_router
from gateway.push import PushNotifier, create_push_router
from gateway.ratelimit import LogLimiter
from gateway.sensors import SensorService, create_sensor_router
from gateway.serial import ACK, SerialLink, Verdict, nak
from gateway.sip import ScaipListener
from gateway.staffwatch import StaffWatch
from gateway.tsdb import Sample, SqliteSink, TelemetrySink
from gateway.views import alarm_json, for_role, iso
from gateway.waiting import wait_set
from gateway.watch import DeviceWatch

if TYPE_CHECKING:
    from gateway.cluster import Cluster

_LOGGER = logging.getLogger(__name__)

# Decisions waiting for their journal commit. When full, the MQTT receiver waits: alarms
# apply back-pressure, they are never dropped. Deep enough for a few group commits of a
# burst (MAX_GROUP is 512 batches per commit).
PIPELINE_DEPTH = 4096


# The gateway's own heartbeat on its retained status topic, for upstream monitors (and
# the larmcentral) that watch the gateway the way the gateway watches devices.
STATUS_INTERVAL_S = 30.0

# Retention passes are cheap and periods are days long; four a day is plenty.
RETENTION_INTERVAL_S = 6 * 3600.0

# A decision refused for a stale view is made again after catching up, at most this often
# in a row: enough for any realistic contention on one alarm; beyond it, the staff member
# is told to retry and a device simply resends.
MAX_CONFLICT_RETRIES = 5

# How long uvicorn may take to close its connections on shutdown (it waits for open
# requests and WebSockets up to timeout_graceful_shutdown, 2 s).
HTTP_STOP_S = 5.0


class RefusedError(Exception):
    """A staff request the core refused; ``code`` and ``reason`` go to the client."""

    def __init__(self, refusal: Refusal) -> None:
        super().__init__(refusal.reason)
        self.code = refusal.code
        self.reason = refusal.reason


class UnavailableError(Exception):
    """The journal could not store a staff action; nothing changed."""


class StaleError(UnavailableError):
    """Another gateway changed the alarm meanwhile, again and again: nothing changed."""


@dataclass(slots=True)
class _Pending:
    decision: Decision
    commit: asyncio.Future[None]
    done: asyncio.Future[None] | None = None
    key: tuple[str, str] | None = None
    # Technical alarms the gateway raises itself have no device waiting for an ack.
    ack: bool = True
    # Decides and submits again after a ConflictError (device alarms, internal events);
    # staff actions and ticks retry in their own callers instead.
    redo: Callable[[], Awaitable[None]] | None = None


@dataclass(slots=True)
class DeviceSeen:
    """What the gateway last heard from a device (for the technician view)."""

    last_seen: float
    battery: float | None = None
    rssi: float | None = None
    firmware: str | None = None
    state: str | None = None
    counts: Counter[str] = field(default_factory=Counter)


_RESPONSE_HOPS = frozenset({Hop.DELIVERED, Hop.ACCEPTED, Hop.ON_SITE, Hop.CLOSED})


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


def _per_alarm(decision: Decision) -> list[Decision]:
    """Split a decision into one per alarm (records and the actions about that alarm)."""
    alarm_ids = list(dict.fromkeys(r.alarm_id for r in decision.records))
    if len(alarm_ids) <= 1:
        return [decision]
    parts = []
    for index, alarm_id in enumerate(alarm_ids):
        parts.append(Decision(
            records=tuple(r for r in decision.records if r.alarm_id == alarm_id),
            actions=tuple(
                a for a in decision.actions
                # Actions about no alarm in particular travel with the first part.
                if getattr(a, "alarm_id", None) == alarm_id
                or (index == 0 and getattr(a, "alarm_id", None) not in alarm_ids)
            ),
        ))
    return parts


def _chain(inner: asyncio.Future[None], outer: asyncio.Future[None]) -> None:
    """Settle ``outer`` as ``inner`` settled (a redone decision answers the first caller)."""
    if outer.done():
        return
    if inner.cancelled():
        outer.cancel()
    elif (error := inner.exception()) is not None:
        outer.set_exception(error)
    else:
        outer.set_result(None)


class Gateway:
    """One gateway. ``async with Gateway(settings) as gw:`` runs it until the block exits."""

    def __init__(
        self,
        settings: Settings,
        *,
        org: OrgStore | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.settings = settings
        data_dir = settings.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.org = org if org is not None else OrgStore(data_dir / "org.sqlite3")
        self._owns_org = org is None
        self.rosters = RosterStore(data_dir / "rosters.sqlite3")
        self.core = AlarmCore(self._directory(), track_presence=True)
        self.metrics = Metrics(self._alarm_counts)
        if journal is not None:
            self.journal: Journal = journal
        elif settings.journal_dsn is not None:
            from gateway.journal_pg import PostgresJournal

            self.journal = PostgresJournal(
                settings.journal_dsn, gateway_id=settings.gateway_id,
                on_commit=self._observe_commit,
            )
        else:
            self.journal = SqliteJournal(
                data_dir / "journal.sqlite3", on_commit=self._observe_commit
            )
        self.telemetry = SqliteSink(data_dir / "telemetry.sqlite3")
        self.sinks: list[TelemetrySink] = [self.telemetry]
        if settings.influx is not None:
            from gateway.tsdb.influx import InfluxSink

            influx = settings.influx
            self.sinks.append(
                InfluxSink(url=influx.url, token=influx.token, org=influx.org, bucket=influx.bucket)
            )
        self.hub = StaffHub()
        self.audit = Auditor(data_dir / AUDIT_FILENAME)
        # Further notification channels (Web Push, ...): called with the alarm's JSON and the
        # staff it is for, after the hub. They must not block: queue and return.
        self.notifiers: list[Callable[[dict[str, Any], frozenset[str]], None]] = []
        # Called with every valid StatusMessage (camera awake/standby, firmware reports).
        self.status_listeners: list[Callable[[StatusMessage], None]] = []
        # Extra API routers (push subscriptions, technician console, ...), mounted by the app.
        self.routers: list[Any] = []
        self.push = PushNotifier.for_gateway(self)
        self.routers.append(create_push_router(self, self.push.store))
        self.notifiers.append(self.push.notify)
        self.tokens = TokenIssuer(settings.secret_key, settings.token_ttl_s)
        self.devices: dict[str, DeviceSeen] = {}
        self.watch = DeviceWatch(
            data_dir / "supervision.sqlite3",
            on_offline=self._device_offline,
            on_online=self._device_online,
        )
        self.journal_failed_since: float | None = None
        self.scaip: ScaipListener | None = None
        self.dc09: Dc09Receiver | None = None  # DC-09 receiver (gateway/dc09.py)
        self.serial_links: dict[str, SerialLink] = {}
        self.provlarm = Provlarm(self, settings.provlarm, data_dir / "supervision.sqlite3")
        self.staff_watch = StaffWatch(self, settings.delivery_timeout_s)
        self.alarm_listeners: list[Callable[[Alarm], None]] = [
            self.provlarm.on_alarm,
            self.staff_watch.on_alarm,
        ]
        self.hub.on_change = self._presence_changed
        self.sensors = SensorService(self)
        self.routers.append(create_sensor_router(self))
        self.routers.append(create_console_router(self))
        self.cameras = CameraService(self)
        self.routers.append(self.cameras.router)
        self.status_listeners.append(self.cameras.on_status)
        self.routers.append(create_provlarm_router(self))
        # -- alarm centre (issue 18 item 6): HTTP JSON (gateway/centre.py) or SCAIP
        # (gateway/centre_scaip.py), chosen by [escalation] centre_protocol; link and
        # refusal faults become technical alarms through report_fault.
        self.centre = make_centre(settings.escalation, self._centre_confirmed,
                                  functools.partial(report_fault, self))
        # -- end alarm centre
        self._deadlines_changed = asyncio.Event()
        self._shedding = False
        self._ingest_counters: dict[type, Any] = {}
        self._link_events: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
        self._links_up_once: set[str] = set()
        self._stopping = False
        self.link: MqttLink | None = None
        self.http_port: int = 0
        self._pipeline: asyncio.Queue[_Pending] = asyncio.Queue(PIPELINE_DEPTH)
        # Alarms being committed, by (device, ref): a resend waits for the first copy.
        self._in_flight: dict[tuple[str, str], asyncio.Future[None]] = {}
        self._staff_lock = asyncio.Lock()
        self._log_limiter = LogLimiter(interval_s=60.0)
        self._runner: asyncio.Task[None] | None = None
        self._server: uvicorn.Server | None = None
        self._http_task: asyncio.Task[None] | None = None
        self._http_socket: socket.socket | None = None
        self._entered = False
        self._link_created = asyncio.Event()
        # Journal records per open alarm (applied, and submitted but not yet settled): the
        # expectations every batch carries (optimistic concurrency, see the module doc).
        self._versions: dict[str, int] = {}
        self._inflight: Counter[str] = Counter()
        self._redo: asyncio.Queue[tuple[_Pending, ConflictError]] = asyncio.Queue()
        self._settle_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._centre_topic = f"{settings.mqtt.prefix}/centre/alarm"
        # Other gateways' records about alarms not yet applied here, by alarm id.
        self._parked: dict[str, list[Record]] = {}
        self.cluster: Cluster | None = None
        self.leases_held: frozenset[str] = frozenset()
        self._supervision_gained = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._entered:
            raise RuntimeError("Gateway is not re-entrant")
        self._entered = True
        self._stack = contextlib.AsyncExitStack()
        await self._stack.__aenter__()
        try:
            await self._stack.enter_async_context(self.audit)
            await self._stack.enter_async_context(self.push)
            await self._stack.enter_async_context(self.centre)
            await self._stack.enter_async_context(self.provlarm)
            await self._stack.enter_async_context(self.staff_watch)
            await self._stack.enter_async_context(self.cameras)
            await self._stack.enter_async_context(self.sensors)
            scaip = self.settings.scaip
            if scaip is not None:
                self.scaip = await self._stack.enter_async_context(ScaipListener(
                    self._on_scaip, host=scaip.host, port=scaip.port, udp=scaip.udp,
                    tcp=scaip.tcp, mrs_in_response=frozenset(scaip.mrs_in_response),
                    tls=scaip.server_context()))
            # -- DC-09 receiver (issue 18 item 7, gateway/dc09.py): ACK after store_message.
            if self.settings.dc09 is not None:
                self.dc09 = await self._stack.enter_async_context(
                    dc09_receiver(self.settings.dc09, self.store_message))
            # -- end DC-09
            for line in self.settings.serial:
                self.serial_links[line.name] = await self._stack.enter_async_context(
                    SerialLink(
                        self._on_serial, url=line.url, baudrate=line.baudrate,
                        framing=line.framing, rtscts=line.rtscts,
                        max_concurrent=line.max_concurrent,
                        on_state=functools.partial(self._on_serial_state, line.name),
                    )
                )
            await self._stack.enter_async_context(self.journal)
            for sink in self.sinks:
                await self._stack.enter_async_context(sink)
            started = time.perf_counter()
            records = await self.journal.load()
            self._apply(records)
            offline = {a.device_id for a in self.open_technical("offline.")}
            self.watch.load(
                # A registered device not yet installed (no recipient) is not supervised.
                ((d.id, d.type, d.heartbeat_s) for d in self.org.devices.values()
                 if d.recipient_id),
                offline,
            )
            await self._stack.enter_async_context(self.watch)
            self._count_versions(records)
            if self.settings.cluster is not None:
                await self._join_cluster()
            _LOGGER.info(
                "replayed %d journal records (%d alarms, %d open) in %.3f s",
                len(records),
                len(self.core.alarms),
                len(self.core.open_in_order()),
                time.perf_counter() - started,
            )
            self._http_socket = self._bind_http()
            self.http_port = self._http_socket.getsockname()[1]
            self._runner = asyncio.create_task(self._serve(), name="gateway")
        except BaseException:
            await self._stack.aclose()
            self._entered = False
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stopping = True
        try:
            if self._server is not None and self._http_task is not None:
                # Let uvicorn close its connections itself before anything is cancelled: a
                # cancelled uvicorn leaves transports to the garbage collector, which closes
                # their sockets without unregistering them from the event loop — and the
                # next socket to get that fd number is then deaf.
                self._server.should_exit = True
                with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                    await asyncio.wait_for(asyncio.shield(self._http_task), HTTP_STOP_S)
            if self._runner is not None:
                self._runner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._runner
                self._runner = None
        finally:
            await self._stack.aclose()
            if self._http_socket is not None:
                self._http_socket.close()
            if self._owns_org:
                self.org.close()
            self._entered = False

    async def wait(self) -> None:
        """Run until cancelled (or until the gateway fails)."""
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def wait_connected(self) -> None:
        """Return once the broker session is up."""
        await self._link_created.wait()
        assert self.link is not None
        await self.link.wait_connected()

    def _bind_http(self) -> socket.socket:
        http = self.settings.http
        family = socket.AF_INET6 if ":" in http.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((http.host, http.port))
        sock.listen(128)
        sock.setblocking(False)
        return sock

    async def _serve(self) -> None:
        mqtt = self.settings.mqtt
        link = MqttLink(
            host=mqtt.host,
            port=mqtt.port,
            prefix=mqtt.prefix,
            client_id=self.settings.client_id,
            gateway_id=self.settings.gateway_id,
            version=__version__,
            on_message=self._on_message,
            on_state=self._on_link_state,
            username=mqtt.username,
            password=mqtt.password,
            keepalive_s=mqtt.keepalive_s,
            tls_context=mqtt.client_context(),
            shared_group=(
                self.settings.cluster.shared_group if self.settings.cluster is not None else None
            ),
        )
        async with link, asyncio.TaskGroup() as group:
            self.link = link
            self._link_created.set()
            group.create_task(self._follow_commits(), name="commit follower")
            group.create_task(self._watch_link(), name="link supervision")
            group.create_task(self._status_heartbeat(), name="gateway heartbeat")
            group.create_task(self._escalation_timer(), name="escalation timer")
            group.create_task(self._retention(), name="retention")
            group.create_task(self._redo_loop(), name="conflict redo")
            group.create_task(self._reconcile_supervision(), name="supervision takeover")
            if self.cluster is not None:
                group.create_task(self.cluster.wait(), name="cluster")
            self._http_task = group.create_task(self._serve_http(), name="http server")

    async def _serve_http(self) -> None:
        from gateway.api import create_app  # the API imports this module's types

        config = uvicorn.Config(
            create_app(self),
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
            ws_ping_interval=20,
            ws_ping_timeout=20,
        )
        server = _Server(config)
        self._server = server
        assert self._http_socket is not None
        await server.serve(sockets=[self._http_socket])

    # -- several gateways ----------------------------------------------------------------

    async def _join_cluster(self) -> None:
        # Imported here: a lone gateway need not load psycopg (start-up time).
        from gateway.cluster import ORG_HEAD_KEY, Cluster
        from gateway.journal_pg import PostgresJournal

        cluster = self.settings.cluster
        assert cluster is not None
        if not isinstance(self.journal, PostgresJournal) or self.settings.journal_dsn is None:
            raise RuntimeError("[cluster] needs the PostgreSQL journal (journal_dsn)")
        self.cluster = await self._stack.enter_async_context(Cluster(
            self.settings.journal_dsn,
            gateway_id=self.settings.gateway_id,
            journal=self.journal,
            on_records=self._apply_remote,
            on_presence=self._remote_presence,
            on_leases=self._on_leases,
            on_org=self._apply_org,
            org_head=int(self.org.meta(ORG_HEAD_KEY) or 0),
            lease_ttl_s=cluster.lease_ttl_s,
        ))
        self.cluster.set_local_presence(self.hub.connected_staff())
        self.org.listeners.append(self.cluster.publish_org)
        self._stack.callback(self.org.listeners.remove, self.cluster.publish_org)

    def _apply_org(self, changes: list[OrgChange]) -> None:
        """Organisation changes made through another gateway: store, route, supervise."""
        from gateway.cluster import ORG_HEAD_KEY

        for change in changes:
            self.org.apply(change)
            if change.kind != "device":
                continue
            device = change.value
            supervisor = self.watch.supervisor
            if not isinstance(device, DeviceInfo) or not device.recipient_id:
                supervisor.unwatch(change.id)
            elif change.id not in supervisor:
                self.watch.watch(device.id, device.type, device.heartbeat_s)
        self.refresh_directory()
        if self.cluster is not None:
            self.org.set_meta(ORG_HEAD_KEY, str(self.cluster.org_head))
        _LOGGER.info("applied %d organisation change(s) from other gateways", len(changes))

    def _apply(self, records: Sequence[Record]) -> None:
        """Apply durable records to the core, one by one.

        The core refuses a record that contradicts the alarm's chain (a second close, a
        hop backwards) with ValueError. Such a record is already in the journal, so
        refusing to go on would stop the gateway at every start: it is skipped, counted
        and logged as the bug it is, and the alarm keeps the chain it had.
        """
        for record in records:
            try:
                self.core.apply(record)
            except (ValueError, KeyError) as exc:
                self.metrics.skipped_records.inc()
                _LOGGER.error("journal record %s for alarm %s cannot be applied, skipped: %s",
                              type(record).__name__, record.alarm_id, exc)

    def acts(self, lease: str) -> bool:
        """Whether this gateway does the work guarded by ``lease`` (always when alone)."""
        return self.cluster is None or lease in self.leases_held

    def _on_leases(self, held: frozenset[str]) -> None:
        gained, lost = held - self.leases_held, self.leases_held - held
        self.leases_held = held
        if gained:
            _LOGGER.info("gateway %s took over: %s", self.settings.gateway_id,
                         ", ".join(sorted(gained)))
        if lost:
            _LOGGER.warning("gateway %s no longer holds: %s", self.settings.gateway_id,
                            ", ".join(sorted(lost)))
        self.metrics.leases.set(len(held))
        self._deadlines_changed.set()
        self.staff_watch.on_presence()
        self.provlarm.wake()
        if SUPERVISION in gained:
            self._supervision_gained.set()

    def connected_staff(self) -> frozenset[str]:
        """Staff with a client connected to this gateway or (in a cluster) any other."""
        return self.hub.connected_staff() | self.core.remote_connected

    def _presence_changed(self) -> None:
        self.staff_watch.on_presence()
        if self.cluster is not None:
            self.cluster.set_local_presence(self.hub.connected_staff())

    def _remote_presence(self, staff: frozenset[str]) -> None:
        self.core.remote_connected = staff
        self.staff_watch.on_presence()

    def _apply_remote(self, records: list[Record]) -> None:
        """Records another gateway committed: apply, and show the changes to our clients.

        The deciding gateway did the once-only work (device ack, alarm centre). Here the
        alarms go to the staff connected to this gateway, to the Web Push subscriptions
        stored on this gateway (each subscription lives on the gateway the phone registered
        with, and the notifier pushes an alarm to a staff member once), and to the local
        listeners (delivery watch, test alarms), which act only while holding their lease.

        A record about an alarm this gateway has not applied yet waits ("parked") until
        the alarm's opening is applied: another gateway may act on an alarm opened *here*
        before this gateway's own commit follower got to apply it.
        """
        ready: list[Record] = []
        opening: set[str] = set()
        for record in records:
            alarm_id = record.alarm_id
            if isinstance(record, AlarmOpened):
                opening.add(alarm_id)
            if alarm_id in self.core.alarms or alarm_id in opening:
                ready.append(record)
            else:
                self._parked.setdefault(alarm_id, []).append(record)
        if not ready:
            return
        self._apply(ready)
        touched: dict[str, None] = {}
        for record in ready:
            touched[record.alarm_id] = None
            self._versions[record.alarm_id] = self._versions.get(record.alarm_id, 0) + 1
        self._forget_closed(touched)
        self._deadlines_changed.set()
        for alarm_id in touched:
            self._announce(alarm_id)
        self._unpark(touched)

    def _unpark(self, alarm_ids: dict[str, None] | set[str]) -> None:
        """Apply the parked records of alarms that are now known here."""
        if not self._parked:
            return
        waiting = [a for a in alarm_ids if a in self._parked and a in self.core.alarms]
        for alarm_id in waiting:
            self._apply_remote(self._parked.pop(alarm_id))

    async def _reconcile_supervision(self) -> None:
        """On taking over supervision: raise and clear what the previous holder did not.

        Every gateway keeps a warm supervision view (heartbeats reach all of them), but
        only the holder reports; this closes the gap of the take-over moment.
        """
        while True:
            await self._supervision_gained.wait()
            self._supervision_gained.clear()
            now = time.time()
            supervisor = self.watch.supervisor
            flagged = {a.device_id: a for a in self.open_technical("offline.")}
            for device_id in supervisor.offline_devices():
                if device_id not in flagged and self.acts(SUPERVISION):
                    since = supervisor.last_seen(device_id) or now
                    await self._device_offline(DeviceOffline(
                        device_id, since=since, deadline=supervisor.deadline(device_id) or now,
                        at=now))
            for device_id, alarm in flagged.items():
                if device_id in supervisor and not supervisor.is_offline(device_id):
                    await self.submit_internal(TechnicalCleared(
                        device_id, alarm.ref, "enheten hörs igen / device heard again"))

    # -- optimistic concurrency ------------------------------------------------------------

    def _count_versions(self, records: Sequence[Record]) -> None:
        """Record counts of the open alarms after replay."""
        counts: Counter[str] = Counter(r.alarm_id for r in records)
        self._versions = {a.id: counts[a.id] for a in self.core.open_in_order()}

    def _forget_closed(self, alarm_ids: dict[str, None]) -> None:
        # Closed alarms take no more decisions; their counts are no longer needed.
        for alarm_id in alarm_ids:
            alarm = self.core.alarms.get(alarm_id)
            if alarm is not None and alarm.state == "closed" and not self._inflight[alarm_id]:
                self._versions.pop(alarm_id, None)
                del self._inflight[alarm_id]

    def _submit(self, records: Sequence[Record]) -> asyncio.Future[None]:
        """Submit a decision's records with the counts they were decided on.

        The count is what this gateway has *applied*: a decision made while an earlier
        batch of ours about the same alarm is still on its way to the journal did not see
        that batch's effect (two closes of one alarm, from two wake-ups of a timer), so it
        must be refused if that batch is stored, and decided again once it is applied.
        """
        opened = {r.alarm_id for r in records if isinstance(r, AlarmOpened)}
        expect: dict[str, int] = {}
        for record in records:
            alarm_id = record.alarm_id
            if alarm_id in opened or alarm_id in expect:
                continue
            alarm = self.core.alarms.get(alarm_id)
            if alarm is not None and alarm.state == "open":
                expect[alarm_id] = self._versions.get(alarm_id, 0)
        for record in records:
            self._inflight[record.alarm_id] += 1
        return self.journal.submit(records, expect)

    def _settle_versions(self, records: Sequence[Record], *, stored: bool) -> None:
        touched: dict[str, None] = {}
        for record in records:
            alarm_id = record.alarm_id
            touched[alarm_id] = None
            self._inflight[alarm_id] -= 1
            if self._inflight[alarm_id] <= 0:
                del self._inflight[alarm_id]
                for waiter in self._settle_waiters.pop(alarm_id, ()):
                    if not waiter.done():
                        waiter.set_result(None)
            if stored:
                self._versions[alarm_id] = self._versions.get(alarm_id, 0) + 1
        if stored:
            self._forget_closed(touched)

    def settling(self, alarm_id: str) -> bool:
        """Whether a batch of ours about ``alarm_id`` is on its way to the journal."""
        return bool(self._inflight[alarm_id])

    async def _wait_settled(self, alarm_id: str) -> None:
        """Until none of our batches about ``alarm_id`` is on its way to the journal."""
        if not self._inflight[alarm_id]:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._settle_waiters.setdefault(alarm_id, []).append(waiter)
        await waiter

    async def _refresh_view(self, conflict: ConflictError) -> None:
        """After a stale decision: wait for our own batches about the alarm, then read the
        other gateways' records, so that deciding again sees what the journal holds."""
        await self._wait_settled(conflict.alarm_id)
        await self._catch_up()

    async def _catch_up(self) -> None:
        if self.cluster is not None:
            try:
                await self.cluster.catch_up()
            except JournalError as exc:
                _LOGGER.warning("could not catch up with the journal: %s", exc)

    async def _redo_loop(self) -> None:
        while True:
            pending, conflict = await self._redo.get()
            await self._refresh_view(conflict)
            assert pending.redo is not None
            await pending.redo()

    # -- observations ------------------------------------------------------------------------

    def _alarm_counts(self) -> dict[str, int]:
        counts: Counter[str] = Counter(a.state for a in self.core.alarms.values())
        counts.setdefault("open", 0)
        counts.setdefault("closed", 0)
        return dict(counts)

    def _observe_commit(self, seconds: float, batches: int) -> None:
        # Runs on the journal's writer thread; prometheus_client metrics are thread-safe.
        self.metrics.journal_commit.observe(seconds)

    def _on_link_state(self, up: bool) -> None:
        self.metrics.mqtt_connected.set(1 if up else 0)
        self._link_events.put_nowait(("mqtt", up))

    def _on_serial_state(self, name: str, up: bool) -> None:
        self._link_events.put_nowait((f"serial-{name}", up))

    async def _watch_link(self) -> None:
        """Raise a technical alarm when a link drops; close it when it is back.

        The broker link counts as down only after it was up once (at start the gateway may
        simply be waiting for the broker); a serial port missing at start is already a fault.
        """
        while True:
            name, up = await self._link_events.get()
            prefix = f"{name}."
            if up:
                self._links_up_once.add(name)
                for alarm in self.open_technical(prefix):
                    down_for = time.time() - alarm.hops[0].at
                    await self.submit_internal(
                        TechnicalCleared(GATEWAY_DEVICE, alarm.ref, f"outage {down_for:.0f} s")
                    )
                continue
            if self._stopping or self.open_technical(prefix):
                continue
            if name == "mqtt" and name not in self._links_up_once:
                continue
            now = time.time()
            detail = (
                "MQTT-mäklaren kan inte nås / MQTT broker unreachable"
                if name == "mqtt"
                else f"Seriell linje {name} nere / serial line {name} down"
            )
            await self.submit_internal(
                self._technical(GATEWAY_DEVICE, f"{prefix}{int(now * 1000)}", detail, now)
            )

    async def _status_heartbeat(self) -> None:
        """Re-publish the retained status periodically: upstream monitors see a live time."""
        while True:
            await asyncio.sleep(STATUS_INTERVAL_S)
            if self.link is not None and self.link.connected:
                self.link.publish_status(
                    "online" if self.journal_failed_since is None else "journal_failed"
                )

    async def _check_shedding(self, now: float) -> None:
        """A technical alarm while telemetry is being shed; cleared when it stops."""
        shedding = any(sink.stats.shedding for sink in self.sinks)
        if shedding == self._shedding:
            return
        self._shedding = shedding
        if shedding:
            await self.submit_internal(self._technical(
                GATEWAY_DEVICE, f"telemetry.{int(now * 1000)}",
                "Telemetri kastas vid överlast / telemetry is being shed (overload)", now))
        else:
            for alarm in self.open_technical("telemetry."):
                await self.submit_internal(
                    TechnicalCleared(GATEWAY_DEVICE, alarm.ref, "telemetry flows again"))

    # -- supervision -------------------------------------------------------------------------

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""
        return [
            a for a in self.core.open_in_order()
            if a.type is AlarmType.TECHNICAL and a.ref.startswith(ref_prefix)
        ]

    @staticmethod
    def _technical(device_id: str, ref: str, detail: str, now: float) -> AlarmReceived:
        return AlarmReceived(
            device_id, ref, AlarmType.TECHNICAL, int(now * 1000), new_alarm_id(), detail=detail
        )

    async def _device_offline(self, offline: DeviceOffline) -> None:
        if not self.acts(SUPERVISION):
            return
        detail = (
            f"Enheten tyst sedan {iso(offline.since)} / device silent since {iso(offline.since)}"
        )
        await self.submit_internal(self._technical(
            offline.device_id, f"offline.{int(offline.since * 1000)}", detail, offline.at))

    async def _device_online(self, online: DeviceOnline) -> None:
        if not self.acts(SUPERVISION):
            return
        for alarm in self.open_technical("offline."):
            if alarm.device_id == online.device_id:
                await self.submit_internal(TechnicalCleared(
                    online.device_id, alarm.ref, f"avbrott / outage {online.outage_s:.0f} s"))

    async def submit_internal(self, event: Event, attempt: int = 1) -> None:
        """Journal an event the gateway raises itself (technical alarms and their clearing)."""
        decision = self.core.decide(event, time.time())
        if decision.refusal is not None:
            if attempt == 1:
                _LOGGER.error("internal event %s refused: %s", event, decision.refusal.reason)
            return
        if not decision.records:
            return
        redo = None
        if attempt < MAX_CONFLICT_RETRIES:
            redo = functools.partial(self.submit_internal, event, attempt + 1)
        commit = self._submit(decision.records)
        await self._pipeline.put(_Pending(decision, commit, ack=False, redo=redo))

    def refresh_directory(self) -> None:
        """Hand the core a new routing view after the organisation changed."""
        self.core.directory = self._directory()
        self.sensors.assign_all()

    def _directory(self) -> Directory:
        return dataclasses.replace(
            self.org.directory(self.settings.escalation), rosters=self.rosters.rosters()
        )

    # -- device ingest -----------------------------------------------------------------------

    async def _on_message(self, topic_name: str, payload: bytes) -> None:
        if topic_name == self._centre_topic:
            return  # our own copy for the alarm centre: it matches the devices' +/alarm
        message = decode(topic_name, payload, self.settings.mqtt.prefix)
        if isinstance(message, Rejected):
            self._reject(message)
            if message.device_id and message.ref and topic_name.endswith("/alarm"):
                # An alarm we could read the ref of but not accept: say so, with the
                # reason, rather than leave the device resending into silence.
                self._ack(AckDevice(message.device_id, message.ref, "rejected",
                                    f"{message.reason.value}: {message.detail}"[:200]))
            return
        now = time.time()
        self._count_ingest(message)
        if not self.core.directory.knows_device(message.device_id):
            self._reject(
                Rejected(Reason.UNKNOWN_DEVICE, "device is not provisioned",
                         message.device_id, message.ref)
            )
            if isinstance(message, AlarmMessage):
                # A refused alarm is answered, never ignored: the device (and the
                # technician looking at it) must learn that nobody will come.
                self._ack(AckDevice(message.device_id, message.ref, "rejected", "unknown device"))
            return
        self._saw(message, now)
        self.watch.seen(message.device_id, now)
        if isinstance(message, AlarmMessage):
            await self._on_alarm(message, now)
        elif isinstance(message, TelemetryMessage):
            await self._take_telemetry(message, now)

    async def _take_telemetry(self, message: TelemetryMessage, now: float) -> None:
        """Offer a sample to every sink and the sensor rules; never awaited per sink.

        A full buffer sheds (counted) rather than delay the alarm behind it.
        """
        sample = Sample.from_message(message, int(now * 1000))
        shed = False
        for sink in self.sinks:
            shed |= not sink.offer(sample)
        self.sensors.offer(message)
        if shed or self._shedding:
            # Looked at only while shedding starts or lasts: no cost per sample else.
            await self._check_shedding(now)

    def _count_ingest(self, message: DeviceMessage) -> None:
        kind = type(message)
        counter = self._ingest_counters.get(kind)
        if counter is None:
            label = kind.__name__.removesuffix("Message").lower()
            counter = self._ingest_counters[kind] = self.metrics.ingest.labels(label)
        counter.inc()

    def _saw(
        self,
        message: AlarmMessage | TelemetryMessage | HeartbeatMessage | StatusMessage,
        now: float,
    ) -> None:
        seen = self.devices.get(message.device_id)
        if seen is None:
            seen = self.devices[message.device_id] = DeviceSeen(now)
        seen.last_seen = now
        seen.counts[type(message).__name__] += 1
        if isinstance(message, HeartbeatMessage):
            seen.battery = message.battery if message.battery is not None else seen.battery
            seen.rssi = message.rssi if message.rssi is not None else seen.rssi
        elif isinstance(message, StatusMessage):
            seen.state = message.state
            seen.firmware = message.firmware or seen.firmware
            for listener in self.status_listeners:
                listener(message)
        elif isinstance(message, AlarmMessage) and message.battery is not None:
            seen.battery = message.battery

    async def _on_alarm(
        self, message: AlarmMessage, now: float, *, ack: bool = True, attempt: int = 1
    ) -> asyncio.Future[None] | None:
        """Decide an alarm and queue its commit; returns what resolves once it is durable.

        MQTT does not wait (the ack is published by the commit follower); transports that
        answer in-band (SCAIP, serial) await the returned future before answering. None
        means nothing needs storing (a resend of a stored alarm): answer OK at once.
        """
        key = (message.device_id, message.ref)
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            # The first copy is being committed; its ack answers this resend too.
            self.metrics.duplicates.inc()
            return in_flight
        event = AlarmReceived(
            device_id=message.device_id,
            ref=message.ref,
            type=message.type,
            device_ts_ms=message.ts_ms,
            new_id=new_alarm_id(),
            battery=message.battery,
        )
        decision = self.core.decide(event, now)
        if not decision.records:
            if self.core.find(*key) is not None:
                self.metrics.duplicates.inc()
            self._carry_out(decision.actions, ack=ack)
            return None
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        # Retrieved here so that an MQTT alarm whose commit failed (nobody awaits it; the
        # device resends) is not reported as a "never retrieved" exception.
        done.add_done_callback(_retrieve)
        self._in_flight[key] = done
        redo = None
        if attempt < MAX_CONFLICT_RETRIES:
            # Attached to an alarm another gateway changed meanwhile: decide again (it may
            # now attach, or open a new alarm if that one was closed).
            redo = functools.partial(self._redo_alarm, message, ack, attempt + 1, done)
        commit = self._submit(decision.records)
        await self._pipeline.put(
            _Pending(decision, commit, done=done, key=key, ack=ack, redo=redo)
        )
        return done

    async def _redo_alarm(
        self, message: AlarmMessage, ack: bool, attempt: int, outer: asyncio.Future[None]
    ) -> None:
        inner = await self._on_alarm(message, time.time(), ack=ack, attempt=attempt)
        if inner is None:
            if not outer.done():
                outer.set_result(None)
        else:
            inner.add_done_callback(functools.partial(_chain, outer=outer))

    async def _on_scaip(self, request: ScaipRequest, sip: SipRequest) -> int:
        """A SCAIP <mrq>: answered OK (snu 0) only once it is durably stored."""
        device_id = request.cid
        if not valid_id(device_id):
            return Snu.WRONG_CONTENT
        ts_ms = int(time.time() * 1000)
        meaning = classify(request)
        message: DeviceMessage
        if meaning.kind is EventKind.ALARM:
            message = AlarmMessage(
                device_id, request.ref, ts_ms, meaning.alarm_type or AlarmType.MANUAL, None
            )
        elif meaning.kind is EventKind.HEARTBEAT:
            message = HeartbeatMessage(device_id, request.ref, ts_ms, None, None)
        else:
            message = StatusMessage(device_id, request.ref, ts_ms, meaning.kind.value, None)
        outcome = await self.store_message(message)
        if outcome is None:
            return Snu.OK
        # Unknown controllers are refused for good; a journal that cannot store says busy,
        # and the controller retries.
        return Snu.WRONG_CONTENT if outcome == "unknown_device" else Snu.BUSY

    async def _on_serial(self, message: DeviceMessage) -> Verdict:
        """A serial record: ACK only once stored; NAK says why."""
        outcome = await self.store_message(message)
        if outcome is None:
            return ACK
        return nak(
            NakReason.UNKNOWN_DEVICE if outcome == "unknown_device" else NakReason.NOT_STORED
        )

    async def store_message(self, message: DeviceMessage) -> str | None:
        """Take one message from an in-band transport (SCAIP, serial) and wait until stored.

        Returns None when it is stored (or needed no storing), else the refusal reason:
        ``unknown_device`` (final) or ``unavailable`` (the journal failed: retry later).
        """
        now = time.time()
        if not self.core.directory.knows_device(message.device_id):
            self._reject(Rejected(Reason.UNKNOWN_DEVICE, "device is not provisioned",
                                  message.device_id, message.ref))
            return "unknown_device"
        self._count_ingest(message)
        self._saw(message, now)
        self.watch.seen(message.device_id, now)
        if isinstance(message, TelemetryMessage):
            await self._take_telemetry(message, now)
            return None
        if not isinstance(message, AlarmMessage):
            return None
        done = await self._on_alarm(message, now, ack=False)
        if done is None:
            return None
        try:
            await asyncio.shield(done)
        except UnavailableError:
            return "unavailable"
        return None

    def _reject(self, rejected: Rejected) -> None:
        self.metrics.rejects.labels(rejected.reason.value).inc()
        if self._log_limiter.allow(rejected.reason.value):
            _LOGGER.warning(
                "rejected device message (%s) from %s: %s%s",
                rejected.reason.value,
                rejected.device_id or "?",
                rejected.detail,
                self._log_limiter.suppressed_note(rejected.reason.value),
            )

    # -- the commit follower -----------------------------------------------------------------

    async def _follow_commits(self) -> None:
        while True:
            pending = await self._pipeline.get()
            records = pending.decision.records
            try:
                await pending.commit
            except ConflictError as exc:
                # Decided on a stale view (another gateway changed the alarm): nothing was
                # stored; decide again once caught up.
                self._settle_versions(records, stored=False)
                self.metrics.conflicts.inc()
                _LOGGER.info("decision refused as stale, deciding again: %s", exc)
                if pending.redo is not None:
                    self._redo.put_nowait((pending, exc))
                elif pending.done is not None and not pending.done.done():
                    pending.done.set_exception(exc)
            except DuplicateAlarmError:
                self._settle_versions(records, stored=False)
                # Another gateway stored this device message first (shared journal): it is
                # stored, so the device is acked as such; this gateway applies nothing.
                self.metrics.duplicates.inc()
                self._carry_out(
                    tuple(a for a in pending.decision.actions if isinstance(a, AckDevice)),
                    ack=pending.ack,
                )
                if pending.done is not None and not pending.done.done():
                    pending.done.set_result(None)
            except JournalError as exc:
                self._settle_versions(records, stored=False)
                self.metrics.journal_failures.inc()
                self._journal_down(str(exc))
                if pending.done is not None and not pending.done.done():
                    pending.done.set_exception(UnavailableError(str(exc)))
            else:
                if self.journal_failed_since is not None:
                    self._journal_up()
                self._apply(pending.decision.records)
                self._settle_versions(records, stored=True)
                self._unpark({r.alarm_id for r in records if isinstance(r, AlarmOpened)})
                self._observe_response(pending.decision.records)
                self._deadlines_changed.set()
                self.audit.record_journal(pending.decision.records)
                self._carry_out(pending.decision.actions, ack=pending.ack)
                if pending.done is not None and not pending.done.done():
                    pending.done.set_result(None)
            finally:
                if pending.key is not None:
                    self._in_flight.pop(pending.key, None)

    def _observe_response(self, records: tuple[Record, ...]) -> None:
        """Response-time histograms, observed live (never on replay)."""
        for record in records:
            if not isinstance(record, HopAdded) or record.hop not in _RESPONSE_HOPS:
                continue
            alarm = self.core.alarms.get(record.alarm_id)
            if alarm is None or alarm.type in (AlarmType.TECHNICAL, AlarmType.TEST):
                continue
            stored = alarm.at(Hop.STORED)
            if stored is not None:
                self.metrics.response.labels(record.hop.value, alarm.team_id or "-").observe(
                    max(0.0, record.at - stored)
                )

    def _journal_down(self, reason: str) -> None:
        """The journal refused a write: tell every channel that still works, at once.

        Nothing is acked meanwhile, so devices keep resending; staff and technicians must
        know the gateway cannot store alarms, so they can fall back to the phone.
        """
        if self.journal_failed_since is not None:
            return
        self.journal_failed_since = time.time()
        _LOGGER.critical("journal cannot store alarms: %s", reason)
        self._broadcast_notice("journal_failed", "critical",
                               "Larm kan inte lagras – larmen skickas om tills det fungerar / "
                               "Alarms cannot be stored – devices keep resending")

    def _journal_up(self) -> None:
        assert self.journal_failed_since is not None
        since, self.journal_failed_since = self.journal_failed_since, None
        _LOGGER.warning("journal writable again after %.1f s", time.time() - since)
        self._broadcast_notice("journal_recovered", "info",
                               "Larmlagringen fungerar igen / Alarm storage works again")

    def _broadcast_notice(self, code: str, level: str, text: str) -> None:
        everyone = frozenset(self.org.staff)
        self.hub.send(everyone, {"type": "notice", "code": code, "level": level, "text": text,
                                 "at": iso(time.time())})
        if self.link is not None:
            self.link.publish_status(code)

    def _carry_out(self, actions: tuple[Action, ...], *, ack: bool = True) -> None:
        for action in actions:
            if isinstance(action, AckDevice):
                if ack:
                    self._ack(action)
            elif isinstance(action, Notify):
                self._notify(action)
            elif isinstance(action, NotifyCentre):
                alarm = self.core.alarms.get(action.alarm_id)
                if alarm is not None:
                    body = alarm_json(alarm, self.org)
                    self.centre.send(body, action.attempt)
                    if self.link is not None:
                        self.link.publish_nowait(Outbound(
                            self._centre_topic,
                            json.dumps({"alarm": body, "attempt": action.attempt}).encode(),
                        ))

    def _ack(self, action: AckDevice) -> None:
        self.metrics.acks.labels(action.status).inc()
        if self.link is None:
            return
        prefix = self.settings.mqtt.prefix
        self.link.publish_nowait(
            Outbound(
                topic(prefix, action.device_id, "ack"),
                encode_ack(action.ref, action.status, action.reason),
            )
        )

    def _notify(self, action: Notify) -> None:
        self._announce(action.alarm_id)

    def _announce(self, alarm_id: str) -> None:
        """An alarm changed: to its audience's clients, the push notifiers, the listeners."""
        alarm = self.core.alarms.get(alarm_id)
        if alarm is None:
            return
        audience = self.audience(alarm)
        body = self._show(alarm, audience)
        for notifier in self.notifiers:
            notifier(body, audience)
        for listener in self.alarm_listeners:
            listener(alarm)

    def _show(self, alarm: Alarm, audience: frozenset[str]) -> dict[str, Any]:
        """Push an alarm to the clients of its audience, each as its role may see it."""
        body = alarm_json(alarm, self.org)
        technicians = frozenset(
            s for s in audience
            if (member := self.org.staff.get(s)) is not None and member.role == "technician"
        )
        self.hub.send(audience - technicians, {"type": "alarm", "alarm": body})
        if technicians:
            self.hub.send(technicians, {"type": "alarm",
                                        "alarm": for_role("technician", body)})
        return body

    def audience(self, alarm: Alarm) -> frozenset[str]:
        """Staff whose clients show this alarm: its targets, its owner and administrators."""
        admins = frozenset(s.id for s in self.org.staff.values() if s.role == "admin")
        owner = alarm.owner
        return alarm.targets | admins | (frozenset((owner,)) if owner else frozenset())

    async def _retention(self) -> None:
        """Prune data past its retention period (docs/security.md), every six hours."""
        while True:
            await asyncio.to_thread(run_retention, self.settings.data_dir,
                                    self.settings.retention)
            await asyncio.sleep(RETENTION_INTERVAL_S)

    # -- escalation -----------------------------------------------------------------------

    async def _escalation_timer(self) -> None:
        """ONE timer for every alarm's next deadline (escalation steps, reminders, retries).

        Deadlines are epoch seconds, derived from journaled records, so the first pass after
        a restart catches up on whatever fell due while the gateway was down.
        """
        while True:
            self._deadlines_changed.clear()
            # In a cluster only the escalation lease holder ticks; the others wait for a
            # lease change (which sets the same event).
            deadline = self.core.next_deadline() if self.acts(ESCALATION) else None
            timeout = None if deadline is None else max(0.0, deadline - time.time())
            await wait_set(self._deadlines_changed, timeout)
            if not self.acts(ESCALATION):
                continue
            deadline = self.core.next_deadline()
            if deadline is not None and deadline <= time.time():
                if not await self._decide_locked(Tick()):
                    # Other gateways kept changing the due alarms (staff receipts in a
                    # storm): nothing is wrong, the deadline is still due; tick again.
                    continue
                if self.core.next_deadline() == deadline:
                    # A deadline the tick did not move would spin this loop; it is a bug in
                    # the core if it happens, so say so, and do not burn the CPU meanwhile.
                    _LOGGER.error("deadline %.3f did not move after a tick", deadline)
                    await asyncio.sleep(1.0)

    async def _centre_confirmed(self, alarm_id: str, attempt: int, reference: str | None) -> None:
        await self._decide_locked(CentreConfirmed(alarm_id, attempt, reference))

    async def _decide_locked(self, event: Event) -> bool:
        """Decide and durably apply an event that must not interleave with staff actions.

        Awaited inside the lock: a second tick must see the first one's records applied, or
        it would decide the same escalation step again. Returns False when the decision
        was refused as stale ``MAX_CONFLICT_RETRIES`` times in a row (the caller may try
        again), True otherwise.
        """
        async with self._staff_lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                decision = self.core.decide(event, time.time())
                if decision.refusal is not None:
                    _LOGGER.warning("%s refused: %s", type(event).__name__,
                                    decision.refusal.reason)
                    return True
                if not decision.records:
                    self._carry_out(decision.actions, ack=False)
                    return True
                # One batch per alarm: a tick escalates every due alarm, and one of them
                # changed elsewhere must not hold up the others.
                dones: list[asyncio.Future[None]] = []
                for part in _per_alarm(decision):
                    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    commit = self._submit(part.records)
                    await self._pipeline.put(_Pending(part, commit, done=done, ack=False))
                    dones.append(done)
                outcomes = await asyncio.gather(*dones, return_exceptions=True)
                conflicts = [o for o in outcomes if isinstance(o, ConflictError)]
                if not conflicts:
                    return True
                for conflict in conflicts:
                    await self._refresh_view(conflict)
            _LOGGER.warning("%s: refused as stale %d times in a row; trying again",
                            type(event).__name__, MAX_CONFLICT_RETRIES)
            return False

    # -- staff actions -----------------------------------------------------------------------

    async def act(self, event: StaffEvent) -> Alarm:
        """Carry out a staff action durably; raises RefusedError or UnavailableError."""
        action = type(event).__name__
        async with self._staff_lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                decision = self.core.decide(event, time.time())
                if decision.refusal is not None:
                    self.metrics.staff_actions.labels(action, "refused").inc()
                    raise RefusedError(decision.refusal)
                if decision.records:
                    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    commit = self._submit(decision.records)
                    await self._pipeline.put(_Pending(decision, commit, done=done))
                    try:
                        await done
                    except ConflictError as conflict:
                        # The alarm changed meanwhile (another gateway, or a batch of ours
                        # still on its way): decide again on what it did (the action may
                        # now be refused, e.g. already taken).
                        await self._refresh_view(conflict)
                        continue
                    except UnavailableError:
                        self.metrics.staff_actions.labels(action, "unavailable").inc()
                        raise
                self.metrics.staff_actions.labels(action, "ok").inc()
                return self.core.alarms[event.alarm_id]
            self.metrics.staff_actions.labels(action, "unavailable").inc()
            raise StaleError("the alarm keeps changing on another gateway; try again")

    def response_report(
        self, member: Any, period: str, start_ms: int | None, end_ms: int | None
    ) -> dict[str, Any]:
        """Response-time KPIs per team, shift and period, for a lead's teams (admins: all)."""
        alarms = [
            a for a in self.core.alarms.values()
            if member.role == "admin" or a.team_id in member.team_ids
        ]
        rows = kpi.summarize(
            alarms,
            by=frozenset({"team", "shift", "period"}),
            period=kpi.Period(period),
            start=None if start_ms is None else start_ms / 1000,
            end=None if end_ms is None else end_ms / 1000,
            now=time.time(),
        )
        return {
            "target_s": PRESENCE_DEADLINE_S,
            "rows": [dataclasses.asdict(row) for row in rows],
        }

    def visible_alarms(self, staff_id: str, state: str = "open") -> list[Alarm]:
        """The alarms a staff member may see, filtered by ``open``/``closed``/``all``."""
        alarms = self.core.open_alarms() if state == "open" else list(self.core.alarms.values())
        if state == "closed":
            alarms = [a for a in alarms if a.state == "closed"]
        return [a for a in alarms if self.may_see(staff_id, a)]

    def may_see(self, staff_id: str, alarm: Alarm) -> bool:
        """Whether a staff member may see an alarm.

        Everyone it was routed to, its owner and administrators; and the team's staff for
        care alarms. A sensor's technical alarm stays with the technicians: it would only
        distract the care team from the alarms they must act on.
        """
        if staff_id in self.audience(alarm):
            return True
        if alarm.type is AlarmType.TECHNICAL:
            return False
        return self.core.directory.may_handle(staff_id, alarm.team_id)

    def health(self) -> dict[str, Any]:
        """Link states for ``/healthz``."""
        mqtt_up = self.link is not None and self.link.connected
        running = self._runner is not None and not self._runner.done()
        journal_ok = running and self.journal_failed_since is None
        counts = self.watch.supervisor.counts()
        # A gateway that cannot follow the others shows stale alarms to its staff.
        following = self.cluster is None or self.cluster.listening
        return {
            "status": "ok" if mqtt_up and journal_ok and following else "degraded",
            "mqtt": "up" if mqtt_up else "down",
            "journal": "ok" if journal_ok else ("failing" if running else "stopped"),
            "devices": {"watched": counts.watched, "offline": counts.offline},
            "version": __version__,
            "gateway_id": self.settings.gateway_id,
            **({} if self.cluster is None else {"cluster": {
                "leases": sorted(self.leases_held),
                "following": self.cluster.listening,
                "followed_records": self.cluster.followed,
                "remote_staff": len(self.core.remote_connected),
            }}),
        }


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the CLI owns signals and shutdown order."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield

