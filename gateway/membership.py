"""This gateway as a member of a cluster: leases held, presence and organisation shared.

``gateway.cluster`` talks to PostgreSQL; this module is what the gateway does with what it
hears: which once-only work it now does (leases), who is connected on the other gateways
(presence, into the core as an event), and organisation changes made through another
gateway (stored, routed, supervised here too). A lone gateway has no membership and does all
the work itself.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

from alarms.events import RemotePresence
from gateway.metrics import Metrics
from gateway.org import DeviceInfo, OrgChange, OrgStore
from gateway.partition import owner
from gateway.supervisor import Policy, Supervisor
from gateway.watch import DeviceWatch

if TYPE_CHECKING:
    from gateway.cluster import Cluster
    from gateway.config import Settings
    from gateway.hub import StaffHub
    from gateway.journal import Journal
    from gateway.pipeline import Pipeline


class MemberHost(Protocol):
    """The parts of a gateway that joining a cluster wires."""

    settings: Settings
    journal: Journal
    org: OrgStore
    watch: DeviceWatch
    metrics: Metrics
    pipeline: Pipeline
    hub: StaffHub
    membership: Membership | None
    cluster: Cluster | None

    def refresh_directory(self) -> None:
        """The organisation changed."""

    def observe(self, event: RemotePresence) -> None:
        """Presence changed."""

    def presence_changed(self) -> None:
        """Who is connected here changed."""

    def leases_changed(self, gained: frozenset[str]) -> None:
        """Leases changed hands."""

_LOGGER = logging.getLogger(__name__)


class Membership:
    """Leases, remote presence and organisation changes of one gateway in a cluster."""

    def __init__(self, *, gateway_id: str, org: OrgStore, watch: DeviceWatch,
                 metrics: Metrics, refresh_directory: Callable[[], None],
                 observe: Callable[[RemotePresence], None]) -> None:
        self.gateway_id = gateway_id
        self._org = org
        self._watch = watch
        self._metrics = metrics
        self._refresh_directory = refresh_directory
        self._observe = observe
        self.leases_held: frozenset[str] = frozenset()
        # The live gateways, this one included; empty until the cluster first read them
        # (until then this gateway owns no device's telemetry: gateway.partition).
        self.members: frozenset[str] = frozenset()
        # Told when leases change hands (timers, the staff watch, test alarms re-plan).
        self.lease_listeners: list[Callable[[frozenset[str], frozenset[str]], None]] = []
        self.presence_listeners: list[Callable[[], None]] = []

    def on_leases(self, held: frozenset[str]) -> None:
        """The leases this gateway holds now."""
        gained, lost = held - self.leases_held, self.leases_held - held
        self.leases_held = held
        if gained:
            _LOGGER.info("gateway %s took over: %s", self.gateway_id, ", ".join(sorted(gained)))
        if lost:
            _LOGGER.warning("gateway %s no longer holds: %s", self.gateway_id,
                            ", ".join(sorted(lost)))
        self._metrics.leases.set(len(held))
        for listener in self.lease_listeners:
            listener(gained, lost)

    def on_members(self, members: frozenset[str]) -> None:
        """The live gateways changed: telemetry ownership moves (gateway.partition)."""
        _LOGGER.info("cluster members: %s", ", ".join(sorted(members)))
        self.members = members

    def owns(self, device_id: str) -> bool:
        """Whether this gateway runs the sensor rules for the device now."""
        return owner(device_id, self.members) == self.gateway_id

    def on_presence(self, staff: frozenset[str]) -> None:
        """Staff connected to the other gateways."""
        self._observe(RemotePresence(staff))
        for listener in self.presence_listeners:
            listener()

    def apply_org(self, changes: list[OrgChange], org_head: int, head_key: str) -> None:
        """Organisation changes made through another gateway: store, route, supervise."""
        for change in changes:
            self._org.apply(change)
            if change.kind != "device":
                continue
            device = change.value
            supervisor = self._watch.supervisor
            if not isinstance(device, DeviceInfo) or not device.recipient_id:
                supervisor.unwatch(change.id)
            elif change.id not in supervisor:
                self._watch.watch(device.id, device.type, device.heartbeat_s)
        self._refresh_directory()
        self._org.set_meta(head_key, str(org_head))
        _LOGGER.info("applied %d organisation change(s) from other gateways", len(changes))


async def join(gw: MemberHost, supervisor: Supervisor) -> None:
    """Join the cluster: follow the others' journal, share leases, presence and changes.

    The cluster's loops are supervised as fatal: a gateway that cannot follow the others
    would show stale alarms to its staff, so it stops loudly instead.
    """
    from gateway.cluster import ORG_HEAD_KEY, Cluster
    from gateway.journal_pg import PostgresJournal

    settings = gw.settings
    assert settings.cluster is not None
    if not isinstance(gw.journal, PostgresJournal) or settings.journal_dsn is None:
        raise RuntimeError("[cluster] needs the PostgreSQL journal (journal_dsn)")
    membership = Membership(
        gateway_id=settings.gateway_id, org=gw.org, watch=gw.watch, metrics=gw.metrics,
        refresh_directory=gw.refresh_directory, observe=gw.observe)
    gw.membership = membership

    membership.lease_listeners.append(lambda gained, lost: gw.leases_changed(gained))
    membership.presence_listeners.append(gw.presence_changed)
    cluster: Cluster

    def org_changed(changes: list[OrgChange]) -> None:
        membership.apply_org(changes, cluster.org_head, ORG_HEAD_KEY)

    cluster = Cluster(
        settings.journal_dsn, gateway_id=settings.gateway_id, journal=gw.journal,
        on_records=gw.pipeline.apply_remote, on_presence=membership.on_presence,
        on_leases=membership.on_leases, on_org=org_changed, on_members=membership.on_members,
        org_head=int(gw.org.meta(ORG_HEAD_KEY) or 0), lease_ttl_s=settings.cluster.lease_ttl_s)
    await supervisor.enter("cluster", cluster, Policy.FATAL)
    gw.cluster = cluster
    gw.pipeline.catch_up = cluster.catch_up
    cluster.set_local_presence(gw.hub.connected_staff())
    gw.org.listeners.append(cluster.publish_org)
