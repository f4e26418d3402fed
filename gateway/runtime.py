"""The gateway process: the composition root. It builds the parts and starts them in stages.

Data flows one way (DESIGN.md §2): transports → ``gateway.ingest`` (typed events) →
``gateway.pipeline`` (decide → journal → apply) → ``gateway.effects`` (ack, staff, centre).
Every task runs under one ``gateway.supervisor.Supervisor`` with a stated policy per task
(docs/architecture.md has the table).

The start is staged so that alarms are acked as early as possible after a restart:

1. the alarm path: the audit log, the journal (replayed into the core), the pipeline, the
   device watch, the timers, the MQTT alarm lane and the probe — nothing here imports the web
   stack, numpy, Web Push or the camera code;
2. everything else (``gateway.services``): those modules are imported in a worker thread, so
   the event loop keeps acking alarms meanwhile; then the telemetry lane, the sinks and the
   sensor rules, Web Push, the alarm centre, test alarms, the staff watch, night cameras,
   SCAIP and serial, and last the web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib
import logging
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from alarms import access
from alarms.core import AlarmCore
from alarms.directory import Directory
from alarms.events import CentreConfirmed, Event, Presence, StaffEvent
from alarms.model import Alarm
from devices.contract import Channel, topic
from gateway import __version__, scrape
from gateway.audit_target import audit_target
from gateway.auditor import Auditor
from gateway.config import Settings
from gateway.duties import SUPERVISION
from gateway.effects import Effects
from gateway.files import private_umask, tighten
from gateway.health import Probe, Watchdog, health_report
from gateway.hub import StaffHub
from gateway.ingest import DeviceSeen, Ingest
from gateway.journal import Journal, SqliteJournal
from gateway.links import LinkWatch
from gateway.metrics import Metrics
from gateway.mqtt import SESSION_TAKEN_OVER, MqttLink, Outbound
from gateway.org import OrgStore
from gateway.pipeline import Pipeline
from gateway.ports import Clock
from gateway.stores.rosters import open_roster_store
from gateway.supervisor import Policy, Supervisor
from gateway.timers import Timers
from gateway.watch import DeviceWatch

if TYPE_CHECKING:
    from gateway.auth import TokenIssuer
    from gateway.cluster import Cluster
    from gateway.membership import Membership
    from gateway.services import Services

_LOGGER = logging.getLogger(__name__)

ALARM_CHANNELS = frozenset({Channel.ALARM, Channel.HEARTBEAT, Channel.STATUS})
TELEMETRY_CHANNELS = frozenset({Channel.TELEMETRY})


class Gateway:
    """One gateway. ``async with Gateway(settings) as gw:`` runs it until the block exits."""

    def __init__(self, settings: Settings, *, org: OrgStore | None = None,
                 journal: Journal | None = None, clock: Clock = time.time,
                 overrides: dict[str, Any] | None = None) -> None:
        self.settings = settings
        self.clock = clock
        # Replacement services for tests (e.g. ``{"cameras": factory}``): gateway.services.
        self.overrides = overrides or {}
        # Data files are private (0600/0700) whatever umask we were started with.
        private_umask()
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        tighten(settings.data_dir)
        self.org = org if org is not None else OrgStore(settings.data_dir / "org.sqlite3")
        self._owns_org = org is None
        # The cluster's rosters (kept current by a RosterFollower), or this gateway's file.
        self.rosters = open_roster_store(settings)
        self.core = AlarmCore(self._directory(), track_presence=True)
        self.metrics = Metrics(self._alarm_counts, totals=lambda: scrape.totals(self),
                               devices=lambda: scrape.device_states(self))
        self.journal = journal if journal is not None else self._journal()
        self.hub = StaffHub()
        # The cluster's one chain in PostgreSQL, or this gateway's file (gateway.audit_target).
        self.audit = Auditor(audit_target(settings), gateway_id=settings.gateway_id)
        prefix = settings.mqtt.prefix
        self.effects = Effects(core=self.core, org=self.org, hub=self.hub, metrics=self.metrics,
                               prefix=prefix)
        self.pipeline = Pipeline(core=self.core, journal=self.journal, effects=self.effects,
                                 metrics=self.metrics, clock=clock, on_recorded=self._recorded)
        self.timers = Timers(pipeline=self.pipeline, clock=clock, acts=self.acts)
        self.watch = DeviceWatch(settings.data_dir / "supervision.sqlite3", clock=clock,
                                 on_offline=self.timers.device_offline,
                                 on_online=self.timers.device_online)
        self.timers.watch = self.watch
        self.ingest = Ingest(core=self.core, pipeline=self.pipeline, effects=self.effects,
                             watch=self.watch, metrics=self.metrics, prefix=prefix, clock=clock)
        self.links = LinkWatch(self.pipeline, self.effects, clock)
        self.link = self._lane("alarm", settings.client_id, ALARM_CHANNELS, announce=True)
        self.telemetry_link = self._lane("telemetry", f"{settings.client_id}-telemetry",
                                         TELEMETRY_CHANNELS, announce=False)
        self.probe = Probe(gateway_id=settings.gateway_id, prefix=prefix, pipeline=self.pipeline,
                           links=self.links, metrics=self.metrics, clock=clock,
                           publish=self.link.publish_nowait, connected=lambda: self.link.connected)
        self.ingest.internal[self.probe.device_id] = self.probe.arrived
        self.supervisor = Supervisor(
            on_restart=lambda name: self.metrics.task_restarts.labels(name).inc())
        self.watchdog = Watchdog(self.probe.passing)
        self.hub.on_change = self.presence_changed
        self.services: Services | None = None
        # Set when the gateway joins a cluster (gateway.membership.join).
        self.membership: Membership | None = None
        self.cluster: Cluster | None = None
        # Extra routers to mount (tests, extensions), before the gateway is entered.
        self.routers: list[Any] = []
        self._stack: contextlib.AsyncExitStack | None = None

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        if self._stack is not None:
            raise RuntimeError("Gateway is not re-entrant")
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            await self._start_alarm_path(stack)
            # Stage 2's modules load in a worker thread: the loop keeps acking meanwhile.
            await asyncio.to_thread(importlib.import_module, "gateway.services")
            from gateway.services import Services

            self.services = await Services.start(self, stack)
            self.effects.started()
            self.watchdog.notify("READY=1")
        except BaseException:
            self._stack = None
            await stack.aclose()
            raise
        return self

    async def _start_alarm_path(self, stack: contextlib.AsyncExitStack) -> None:
        sup = await stack.enter_async_context(self.supervisor)
        await sup.enter("audit writer", self.audit, Policy.RESTART)
        await sup.enter("journal", self.journal, Policy.FATAL)
        started = time.perf_counter()
        records = await self.journal.load()
        self.pipeline.load(records)
        offline = {a.device_id for a in self.pipeline.open_technical("offline.")}
        # A registered device not yet installed (no recipient) is not supervised.
        self.watch.load(((d.id, d.type, d.heartbeat_s) for d in self.org.devices.values()
                         if d.recipient_id), offline)
        _LOGGER.info("replayed %d journal records (%d alarms, %d open) in %.3f s",
                     len(records), len(self.core.alarms), len(self.core.open_in_order()),
                     time.perf_counter() - started)
        sup.start("commit follower", self.pipeline.follow_commits, Policy.FATAL)
        sup.start("conflict redo", self.pipeline.redo_loop, Policy.FATAL)
        sup.start("device watch", self.watch.run, Policy.RESTART)
        stack.push_async_callback(self.watch.close)
        sup.start("link supervision", self.links.run, Policy.RESTART)
        sup.start("escalation timer", self.timers.escalate, Policy.RESTART)
        sup.start("supervision takeover", self.timers.reconcile_supervision, Policy.RESTART)
        if self.settings.cluster is not None:
            from gateway.membership import join  # psycopg only in a cluster

            await join(self, sup)
            from gateway.stores.rosters import RosterFollower

            assert self.settings.journal_dsn is not None
            sup.start("roster follower", RosterFollower(
                self.rosters, self.settings.journal_dsn, self.refresh_directory).run,
                Policy.RESTART)
        await sup.enter("mqtt alarm lane", self.link, Policy.RESTART)
        self.effects.publisher = self.link
        sup.start("probe", self.probe.run, Policy.RESTART)
        sup.start("gateway heartbeat", self.links.heartbeat, Policy.RESTART)
        sup.start("watchdog", self.watchdog.run, Policy.RESTART)

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.links.stopping = True
        stack, self._stack = self._stack, None
        try:
            if stack is not None:
                await stack.aclose()
        finally:
            self.rosters.close()
            if self._owns_org:
                self.org.close()

    async def wait(self) -> None:
        """Run until cancelled; raises ``FatalError`` when a fatal task failed."""
        await self.supervisor.wait()

    async def wait_connected(self) -> None:
        """Return once both broker lanes are up and subscribed."""
        await self.link.wait_connected()
        await self.telemetry_link.wait_connected()

    # -- wiring ----------------------------------------------------------------------------

    def _journal(self) -> Journal:
        if self.settings.journal_dsn is not None:
            from gateway.journal_pg import PostgresJournal

            return PostgresJournal(self.settings.journal_dsn, gateway_id=self.settings.gateway_id,
                                   on_commit=self._observe_commit)
        return SqliteJournal(self.settings.data_dir / "journal.sqlite3",
                             on_commit=self._observe_commit)

    def _lane(self, name: str, client_id: str, channels: frozenset[Channel], *,
              announce: bool) -> MqttLink:
        mqtt, cluster = self.settings.mqtt, self.settings.cluster
        link_name = "mqtt" if name == "alarm" else f"mqtt-{name}"
        return MqttLink(
            host=mqtt.host, port=mqtt.port, prefix=mqtt.prefix, client_id=client_id,
            gateway_id=self.settings.gateway_id, version=__version__,
            on_message=self.ingest.mqtt,
            on_state=functools.partial(self._on_link_state, link_name),
            # One broker account per lane: with use_username_as_clientid (docs/security.md)
            # the username is the session's client id, and no one else can take it.
            username=mqtt.lane_username(name), password=mqtt.password,
            keepalive_s=mqtt.keepalive_s,
            tls_context=mqtt.client_context(),
            shared_group=cluster.shared_group if cluster is not None else None,
            channels=channels, announce=announce, name=name,
        )

    def _on_link_state(self, name: str, up: bool) -> None:
        if name == "mqtt":
            self.metrics.mqtt_connected.set(1 if up else 0)
        lane = self.link if name == "mqtt" else self.telemetry_link
        self.links.report(name, up,
                          taken_over=lane.disconnect_reason == SESSION_TAKEN_OVER)

    def _observe_commit(self, seconds: float, batches: int) -> None:
        # Runs on the journal's writer thread; prometheus_client metrics are thread-safe.
        self.metrics.journal_commit.observe(seconds)

    def _recorded(self, records: Any, local: bool) -> None:
        if local:
            self.audit.record_journal(records)
        self.timers.deadlines_changed.set()

    def _alarm_counts(self) -> dict[str, int]:
        counts = {"open": 0, "closed": 0}
        for alarm in self.core.alarms.values():
            counts[alarm.state] = counts.get(alarm.state, 0) + 1
        return counts

    def _directory(self) -> Directory:
        return dataclasses.replace(
            self.org.directory(self.settings.escalation), rosters=self.rosters.rosters())

    def refresh_directory(self) -> None:
        """Hand the core a new routing view after the organisation changed."""
        self.core.directory = self._directory()
        if self.services is not None:
            self.services.directory_changed()

    # -- the ports (gateway.ports) ---------------------------------------------------------

    def acts(self, lease: str) -> bool:
        """Whether this gateway does the work guarded by ``lease`` (always when alone)."""
        return self.membership is None or lease in self.membership.leases_held

    def owns_telemetry(self, device_id: str) -> bool:
        """Whether this gateway runs the sensor rules for a device (always when alone)."""
        return self.membership is None or self.membership.owns(device_id)

    async def centre_confirmed(self, alarm_id: str, attempt: int, reference: str | None
                               ) -> None:
        """The alarm centre's receipt of one delivery attempt."""
        await self.pipeline.decide_locked(CentreConfirmed(alarm_id, attempt, reference))

    def submit_internal(self, event: Event) -> Any:
        """Journal an event the gateway raises itself."""
        return self.pipeline.submit_internal(event)

    async def act(self, event: StaffEvent) -> Alarm:
        """Carry out a staff action durably (``gateway.errors`` on refusal)."""
        return await self.pipeline.act(event)

    def settling(self, alarm_id: str) -> bool:
        """Whether a batch of ours about the alarm is on its way to the journal."""
        return self.pipeline.settling(alarm_id)

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""
        return self.pipeline.open_technical(ref_prefix)

    def send_command(self, device_id: str, payload: bytes) -> bool:
        """Queue a command on the device's ``cmd`` topic (alarm lane)."""
        return self.link.publish_nowait(
            Outbound(topic(self.settings.mqtt.prefix, device_id, "cmd"), payload))

    def observe(self, event: Presence) -> None:
        """Presence changed (a staff client connected or disconnected)."""
        self.core.observe(event)

    def connected_staff(self) -> frozenset[str]:
        """Staff with a client connected to this gateway or (in a cluster) another."""
        return self.hub.connected_staff() | self.core.remote_connected

    def leases_changed(self, gained: frozenset[str]) -> None:
        """Leases changed hands: the timers and services doing once-only work look again."""
        self.timers.deadlines_changed.set()
        if self.services is not None:
            self.services.leases_changed()
        if SUPERVISION in gained:
            self.timers.supervision_gained.set()

    def presence_changed(self) -> None:
        """Who is connected to this gateway changed."""
        if self.services is not None:
            self.services.presence_changed()
        if self.cluster is not None:
            self.cluster.set_local_presence(self.hub.connected_staff())

    def may_see(self, staff_id: str, alarm: Alarm) -> bool:
        """Whether a staff member may see an alarm (``alarms.access``)."""
        return access.may_see(staff_id, alarm, self.core.directory)

    def visible_alarms(self, staff_id: str, state: str = "open") -> list[Alarm]:
        """The alarms a staff member may see, filtered by ``open``/``closed``/``all``."""
        alarms = self.core.open_alarms() if state == "open" else list(self.core.alarms.values())
        if state == "closed":
            alarms = [a for a in alarms if a.state == "closed"]
        return access.visible(staff_id, alarms, self.core.directory)

    def health(self) -> dict[str, Any]:
        """What ``/healthz`` answers."""
        return health_report(self)

    def refresh_gauges(self) -> None:
        """Gauges read on demand, before ``/metrics``."""
        self.metrics.staff_connections.set(self.hub.connection_count())
        self.metrics.probe_age.set(self.probe.age())

    # -- what stage 2 provides (tests and the web layer read these) -------------------------

    def _service(self, name: str) -> Any:
        if self.services is None:
            raise RuntimeError(f"{name} starts with stage 2 of the gateway's start")
        return getattr(self.services, name)

    devices = property(lambda self: self.ingest.devices,
                       doc="What the gateway last heard from each device.")
    telemetry = property(lambda self: self._service("telemetry"), doc="The SQLite sink.")
    sensors = property(lambda self: self._service("sensors"), doc="Sensor rules.")
    push = property(lambda self: self._service("push"), doc="Web Push.")
    provlarm = property(lambda self: self._service("provlarm"), doc="Daily test alarms.")
    staff_watch = property(lambda self: self._service("staff_watch"), doc="Delivery watch.")
    cameras = property(lambda self: self._service("cameras"), doc="Night cameras.")
    registry = property(lambda self: self._service("registry"), doc="Device registry.")
    scaip = property(lambda self: self._service("scaip"), doc="The SCAIP listener, if any.")
    serial_links = property(lambda self: self._service("serial_links"), doc="Serial lines.")
    dc09 = property(lambda self: self._service("dc09"), doc="The DC-09 receiver, if any.")
    sms = property(lambda self: self._service("sms"), doc="The SMS fallback, if any.")
    http_port = property(lambda self: self._service("http_port"), doc="The bound HTTP port.")
    @functools.cached_property
    def tokens(self) -> TokenIssuer:
        """Checks bearer tokens (the JWT and argon2 code loads with the web, not before)."""
        from gateway.auth import TokenIssuer

        return TokenIssuer(self.settings.secret_key, self.settings.token_ttl_s)

    @property
    def leases_held(self) -> frozenset[str]:
        """The once-only work this gateway does in a cluster."""
        return frozenset() if self.membership is None else self.membership.leases_held


__all__ = ["DeviceSeen", "Gateway"]
