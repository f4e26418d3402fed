"""Stage 2 of the start: everything that is not on the path from a device's alarm to its ack.

The runtime imports this module in a worker thread, and with it the heavy modules (the web
stack, numpy for the sensor rules, aiohttp and pywebpush, the camera code), so the event loop
keeps acking alarms while they load, and then starts each service under the gateway's
supervisor. Once started, the services are wired to the alarm path only through late-bound
hooks: the ingest's telemetry intake and status listeners, the effects' notifiers and alarm
listeners.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from devices.contract import DeviceMessage
from devices.scaip import Snu
from devices.serial import NakReason
from gateway.audit import AuditKind
from gateway.broker_auth import BrokerFiles
from gateway.cameras import CameraService
from gateway.centre_scaip import CentrePort, make_centre, report_fault
from gateway.config import BrokerAuthSettings, OtherGateway
from gateway.dc09 import Dc09Receiver, dc09_receiver
from gateway.inband import InBand
from gateway.org import DeviceInfo
from gateway.provisioning import REGISTRY_FILENAME, BrokerAccount, DeviceRegistry
from gateway.provlarm import Provlarm
from gateway.push import PushNotifier
from gateway.pushguard import EndpointPolicy
from gateway.scaip_intake import ScaipIntake
from gateway.sensors import SensorService
from gateway.serial import SerialLink, nak
from gateway.sip import ScaipListener
from gateway.sms import SmsService
from gateway.staffwatch import StaffWatch
from gateway.stores.registry import PgRegistryStore, SqliteRegistryStore
from gateway.supervisor import Policy
from gateway.telemetry import TelemetryPath
from gateway.timers import RETENTION_INTERVAL_S, Timers
from gateway.tsdb import SqliteSink, TelemetrySink
from gateway.web import create_app
from gateway.web.deps import WebGateway
from gateway.web.server import HttpServer, bind

if TYPE_CHECKING:
    from gateway.effects import Effects
    from gateway.ingest import Ingest
    from gateway.links import LinkWatch
    from gateway.mqtt import MqttLink
    from gateway.pipeline import Pipeline
    from gateway.ports import Clock
    from gateway.supervisor import Supervisor
    from gateway.watch import DeviceWatch


class ServicesHost(WebGateway, Protocol):
    """The alarm path of a gateway, as stage 2 wires its services onto it."""

    clock: Clock
    overrides: dict[str, Any]
    supervisor: Supervisor
    pipeline: Pipeline
    ingest: Ingest
    effects: Effects
    links: LinkWatch
    watch: DeviceWatch
    telemetry_link: MqttLink
    services: Services | None

    def refresh_directory(self) -> None:
        """The organisation changed."""

    def owns_telemetry(self, device_id: str) -> bool:
        """Whether this gateway runs the sensor rules for the device."""

    async def centre_confirmed(self, alarm_id: str, attempt: int, reference: str | None
                               ) -> None:
        """The alarm centre's receipt."""

_LOGGER = logging.getLogger(__name__)

@dataclass
class Services:
    """The stage-2 services of one gateway."""

    telemetry: SqliteSink
    sinks: list[TelemetrySink]
    sensors: SensorService
    push: PushNotifier
    centre: CentrePort
    provlarm: Provlarm
    staff_watch: StaffWatch
    cameras: CameraService
    registry: DeviceRegistry
    http_port: int = 0
    scaip: ScaipListener | None = None
    serial_links: dict[str, SerialLink] = field(default_factory=dict)
    sms: SmsService | None = None
    dc09: Dc09Receiver | None = None

    @classmethod
    async def start(cls, gw: ServicesHost, stack: AsyncExitStack) -> Services:
        """Build and start every stage-2 service of ``gw``."""
        settings, sup, overrides = gw.settings, gw.supervisor, gw.overrides
        data_dir = settings.data_dir
        telemetry = SqliteSink(data_dir / "telemetry.sqlite3")
        sinks: list[TelemetrySink] = [telemetry]
        if settings.influx is not None:
            from gateway.tsdb.influx import InfluxSink

            influx = settings.influx
            sinks.append(InfluxSink(url=influx.url, token=influx.token, org=influx.org,
                                    bucket=influx.bucket))
        for n, sink in enumerate(sinks):
            await sup.enter(f"telemetry sink {n}", sink, Policy.RESTART)
        sensors = SensorService(gw)
        await sup.enter("sensor rules", sensors, Policy.RESTART)
        path = TelemetryPath(sinks, sensors, gw.pipeline, gw.clock, owns=gw.owns_telemetry)
        gw.ingest.telemetry = path
        sup.start("telemetry shedding", path.watch_shedding, Policy.RESTART)
        await sup.enter("mqtt telemetry lane", gw.telemetry_link, Policy.RESTART)

        # Where pushes may go: the settings' push services; tests pass their loopback fake
        # service's policy in code (gateway.pushguard.EndpointPolicy.loopback_for_tests).
        endpoints: EndpointPolicy = overrides.get(
            "push_endpoints", EndpointPolicy(tuple(settings.push.allowed_hosts)))
        # In a cluster the subscriptions and the VAPID key are shared (gateway.stores.push).
        push = await asyncio.to_thread(
            PushNotifier.for_data_dir, data_dir, policy=endpoints, dsn=settings.journal_dsn,
            gateway_id=settings.gateway_id)
        await sup.enter("web push", push, Policy.RESTART)
        gw.effects.add_notifier(push.notify)
        # HTTP JSON or SCAIP, as [escalation] centre_protocol says; the SCAIP link's faults
        # and refusals become technical alarms (gateway.centre_scaip.report_fault).
        centre = make_centre(settings.escalation, gw.centre_confirmed,
                             functools.partial(report_fault, gw))
        await sup.enter("alarm centre", centre, Policy.RESTART)
        gw.effects.centre = centre
        sms: SmsService | None = None
        if settings.sms is not None:
            # The SMS fallback (docs/sms.md): after replay, its outbox is the journal.
            sms = SmsService.for_gateway(gw, report=gw.pipeline.decide_locked)
            await sup.enter("sms fallback", sms, Policy.RESTART)
            gw.effects.add_notifier(sms.notify)
        if not settings.escalation.has_centre:
            _LOGGER.info("no alarm centre configured: the escalation ladder ends at the next "
                         "level, then reminds everyone who has the alarm")

        provlarm = Provlarm(gw, settings.provlarm, data_dir / "supervision.sqlite3",
                            clock=gw.clock)
        await sup.enter("test alarms", provlarm, Policy.RESTART)
        staff_watch = StaffWatch(gw, settings.delivery_timeout_s, clock=gw.clock)
        await sup.enter("staff watch", staff_watch, Policy.RESTART)
        gw.effects.listeners += [provlarm.on_alarm, staff_watch.on_alarm]
        make_cameras: Callable[[Any], CameraService] = overrides.get("cameras", CameraService)
        cameras = make_cameras(gw)
        await sup.enter("night cameras", cameras, Policy.RESTART)
        gw.ingest.status_listeners.append(cameras.on_status)

        registry = await asyncio.to_thread(device_registry, gw)
        if settings.journal_dsn is not None and registry.broker.files is not None:
            # Devices enrolled through any gateway reach this gateway's broker files.
            from gateway.broker_sync import BrokerSync

            await sup.enter("broker credentials sync", BrokerSync(
                settings.journal_dsn, gateway_id=settings.gateway_id,
                sync=registry.sync_broker), Policy.RESTART)
        services = cls(telemetry=telemetry, sinks=sinks, sensors=sensors, push=push,
                       centre=centre, provlarm=provlarm, staff_watch=staff_watch,
                       cameras=cameras, registry=registry, sms=sms)
        gw.services = services  # the web app and the in-band transports read them
        await services._start_inband(gw)
        async def retention() -> None:
            await Timers.retention(data_dir, settings.retention)

        sup.start("retention", retention, Policy.RESTART)
        if isinstance(registry.store, PgRegistryStore):
            # The shared registry's history has the same retention as the file's.
            sup.start("registry retention", functools.partial(
                prune_shared_registry, registry.store, settings.retention.provisioning_days),
                Policy.RESTART)
        sock = bind(settings.http.host, settings.http.port)
        services.http_port = sock.getsockname()[1]
        server = HttpServer(create_app(gw), sock)
        sup.start("http server", server.serve, Policy.RESTART, stop=server.stop)
        return services

    async def _start_inband(self, gw: ServicesHost) -> None:
        settings, sup = gw.settings, gw.supervisor
        inband = InBand(gw.ingest, gw.clock)
        scaip = settings.scaip
        if scaip is not None:
            intake = ScaipIntake(inband, tables=scaip.tables())
            listener = ScaipListener(
                gw.ingest.isolated("scaip", intake, Snu.BUSY),
                host=scaip.host, port=scaip.port, udp=scaip.udp, tcp=scaip.tcp,
                mrs_in_response=frozenset(scaip.mrs_in_response), tls=scaip.server_context(),
                # per-source limits (gateway.sipguard)
                trusted_networks=scaip.trusted_networks,
                datagrams_per_s=scaip.datagrams_per_s,
                max_connections_per_source=scaip.max_connections_per_source)
            await sup.enter("scaip listener", listener, Policy.RESTART)
            self.scaip = listener
        def line_state(name: str) -> Callable[[bool], None]:
            return lambda up: gw.links.report(f"serial-{name}", up)

        if settings.dc09 is not None:
            # SIA DC-09 (gateway.dc09): the receiver maps frames to device messages itself
            # and ACKs only once they are stored.
            async def store_dc09(message: DeviceMessage) -> str | None:
                return await gw.ingest.store(message, "dc09")

            receiver = dc09_receiver(settings.dc09, store_dc09)
            await sup.enter("dc09 receiver", receiver, Policy.RESTART)
            self.dc09 = receiver
        for line in settings.serial:
            link = SerialLink(
                gw.ingest.isolated("serial", inband.serial, nak(NakReason.NOT_STORED)),
                url=line.url, baudrate=line.baudrate, framing=line.framing, rtscts=line.rtscts,
                max_concurrent=line.max_concurrent,
                on_state=line_state(line.name),
            )
            await sup.enter(f"serial line {line.name}", link, Policy.RESTART)
            self.serial_links[line.name] = link

    # -- hooks from the alarm path ---------------------------------------------------------

    def directory_changed(self) -> None:
        """The organisation changed: the sensor rules learn whose home each device is in."""
        self.sensors.assign_all()

    def presence_changed(self) -> None:
        """A staff client connected or disconnected."""
        self.staff_watch.on_presence()

    def leases_changed(self) -> None:
        """Leases changed hands: the services that do once-only work look again."""
        self.staff_watch.on_presence()
        self.provlarm.wake()


async def prune_shared_registry(store: PgRegistryStore, days: float) -> None:
    """Prune the shared registry's history as often as the data directory's."""
    while days:
        cutoff = time.time() - days * 24 * 3600
        dropped = await asyncio.to_thread(store.prune, cutoff)
        if dropped:
            _LOGGER.info("retention: %d registry history entries dropped", dropped)
        await asyncio.sleep(RETENTION_INTERVAL_S)


class GatewayHooks:
    """Registry changes reach the running gateway: routing, supervision, audit."""

    def __init__(self, gateway: ServicesHost) -> None:
        self.gateway = gateway

    def directory_changed(self) -> None:
        """New routing view for the core."""
        self.gateway.refresh_directory()

    def watch(self, device: DeviceInfo) -> None:
        """Supervise the device from now."""
        self.gateway.watch.watch(device.id, device.type, device.heartbeat_s)

    def unwatch(self, device_id: str) -> None:
        """Stop supervising the device."""
        self.gateway.watch.supervisor.unwatch(device_id)

    def audit(self, actor: str, subject: str, detail: dict[str, Any]) -> None:
        """Every registry change is a provisioning audit entry."""
        self.gateway.audit.record(AuditKind.PROVISIONING, actor=actor, subject=subject,
                                  detail=detail)


def device_registry(gw: ServicesHost) -> DeviceRegistry:
    """The gateway's device registry, with the broker's credential files when configured."""
    settings = gw.settings
    auth = settings.broker_auth
    files = None
    gateway_username = settings.mqtt.username or "trygg-gateway"
    others: tuple[OtherGateway, ...] = ()
    if isinstance(auth, BrokerAuthSettings) and auth.enabled:
        base = settings.data_dir / "broker"
        files = BrokerFiles(auth.password_file or base / "passwd", auth.acl_file or base / "acl",
                            pid_file=auth.pid_file, pid=auth.pid)
        gateway_username = settings.mqtt.username or auth.gateway_username
        others = tuple(auth.other_gateways)
    account = BrokerAccount(
        files, prefix=settings.mqtt.prefix, gateway_username=gateway_username,
        gateway_password=settings.mqtt.password, host=settings.mqtt.host,
        port=settings.mqtt.port, telemetry_username=settings.mqtt.telemetry_username,
        other_gateways=others,
    )
    # In a cluster the registry, claim codes and credentials are shared (gateway.stores),
    # seeded with what this gateway enrolled before it joined.
    store = None
    if settings.journal_dsn is not None:
        store = PgRegistryStore(settings.journal_dsn, settings.gateway_id)
        local = settings.data_dir / REGISTRY_FILENAME
        if local.exists():
            added = store.import_devices(SqliteRegistryStore(local).export())
            if added:
                _LOGGER.info("%d device(s) of this gateway's registry added to the "
                             "cluster's", len(added))
    return DeviceRegistry(settings.data_dir, gw.org, account, GatewayHooks(gw), store=store)
