"""Carrying out the core's actions exactly as given: ack the device, show staff, the centre.

The core decides who is told what (``Notify``, ``AckDevice``, ``NotifyCentre``); this module
only delivers. Nothing here decides again: the audience of an alarm comes from
``alarms.access``, the same rule the API and the WebSocket use.

Channels that start later than the alarm path (Web Push, the alarm centre, SMS: stage 2 of the
start, ``gateway.runtime``) are late-bound: what was announced before a channel was attached is
kept (bounded) and handed to it when it attaches, so an alarm stored in the first second after
a restart still reaches a locked phone.
"""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from alarms.access import administrators, audience
from alarms.actions import AckDevice, Action, Notify, NotifyCentre
from alarms.core import AlarmCore
from alarms.model import Alarm
from devices.contract import encode_ack, topic
from gateway.hub import StaffHub
from gateway.metrics import Metrics
from gateway.mqtt import Outbound
from gateway.org import OrgStore
from gateway.ratelimit import LogLimiter
from gateway.views import alarm_json, for_role, iso

_LOGGER = logging.getLogger(__name__)

# Announcements kept for channels that attach after the alarm path started (stage 2 comes a
# fraction of a second later; a burst in that moment is still far below this).
EARLY_ANNOUNCEMENTS = 1000

# A notifier: called with the alarm's JSON and the staff it is for; must not block.
Notifier = Callable[[dict[str, Any], frozenset[str]], None]
AlarmListener = Callable[[Alarm], None]


class Publisher(Protocol):
    """The broker link as the effects see it."""

    def publish_nowait(self, message: Outbound) -> bool:
        """Queue a message; False when it cannot be sent now (counted by the link)."""

    def publish_status(self, state: str) -> None:
        """The retained gateway status."""


class CentreSender(Protocol):
    """An alarm-centre adapter (HTTP JSON or SCAIP)."""

    def send(self, alarm: dict[str, Any], attempt: int) -> None:
        """Queue one delivery attempt (never blocks)."""


class Effects:
    """Delivers what the core decided to the device, the staff and the alarm centre."""

    def __init__(self, *, core: AlarmCore, org: OrgStore, hub: StaffHub, metrics: Metrics,
                 prefix: str) -> None:
        self.core = core
        self.org = org
        self.hub = hub
        self.metrics = metrics
        self.prefix = prefix
        self.centre_topic = f"{prefix}/centre/alarm"
        # Attached by the runtime as links and channels come up.
        self.publisher: Publisher | None = None
        self.centre: CentreSender | None = None
        self._notifiers: list[Notifier] = []
        # Every alarm due for the centre would log this line while the centre is down.
        self._log = LogLimiter(60.0)
        self.listeners: list[AlarmListener] = []
        self._early: deque[tuple[dict[str, Any], frozenset[str]]] | None = deque(
            maxlen=EARLY_ANNOUNCEMENTS)

    # -- channels ------------------------------------------------------------------------

    def add_notifier(self, notifier: Notifier) -> None:
        """Attach a channel (Web Push, SMS) and hand it what was announced before."""
        self._notifiers.append(notifier)
        for body, staff in self._early or ():
            notifier(body, staff)

    def started(self) -> None:
        """Every channel of the start is attached: stop keeping early announcements."""
        self._early = None

    # -- actions -------------------------------------------------------------------------

    def carry_out(self, actions: tuple[Action, ...], *, ack: bool = True) -> None:
        """Carry out actions in order; ``ack`` False: the device is answered in-band."""
        for action in actions:
            if isinstance(action, AckDevice):
                if ack:
                    self.ack(action)
            elif isinstance(action, Notify):
                self.announce(action.alarm_id, action.staff_ids, urgent=action.urgent)
            elif isinstance(action, NotifyCentre):
                self._to_centre(action)

    def ack(self, action: AckDevice) -> None:
        """Answer a device on its ``ack`` topic."""
        self.metrics.acks.labels(action.status).inc()
        if self.publisher is None:
            return
        self.publisher.publish_nowait(Outbound(
            topic(self.prefix, action.device_id, "ack"),
            encode_ack(action.ref, action.status, action.reason),
        ))

    def _to_centre(self, action: NotifyCentre) -> None:
        alarm = self.core.alarms.get(action.alarm_id)
        if alarm is None:
            return
        body = alarm_json(alarm, self.org)
        if self.centre is not None:
            self.centre.send(body, action.attempt)
        else:
            self._log.log(_LOGGER, logging.WARNING, "centre-not-started",
                          "alarm %s is for the alarm centre, which is not started",
                          action.alarm_id)
        if self.publisher is not None:
            self.publisher.publish_nowait(Outbound(
                self.centre_topic,
                json.dumps({"alarm": body, "attempt": action.attempt}).encode(),
            ))

    def announce(self, alarm_id: str, staff_ids: frozenset[str] | None = None, *,
                 urgent: bool = False) -> None:
        """An alarm changed: to its clients, the notifiers, the listeners.

        ``staff_ids`` are the core's (a ``Notify``), carried out as given; administrators,
        who may see every alarm (``alarms.access``), are told too. Without them (another
        gateway's records) the alarm's audience is told.
        """
        alarm = self.core.alarms.get(alarm_id)
        if alarm is None:
            return
        directory = self.core.directory
        staff = (audience(alarm, directory) if staff_ids is None
                 else staff_ids | administrators(directory))
        body = self._show(alarm, staff, urgent)
        for notifier in self._notifiers:
            notifier(body, staff)
        if self._early is not None:
            self._early.append((body, staff))
        for listener in self.listeners:
            listener(alarm)

    def _show(self, alarm: Alarm, staff: frozenset[str], urgent: bool) -> dict[str, Any]:
        """Push an alarm to the clients of ``staff``, each as its role may see it.

        ``urgent`` (an escalation, a reminder, a hand-over): the client alerts loudly even if
        it showed the alarm before.
        """
        body = alarm_json(alarm, self.org)
        technicians = frozenset(
            s for s in staff
            if (member := self.org.staff.get(s)) is not None and member.role == "technician"
        )
        self.hub.send(staff - technicians, {"type": "alarm", "alarm": body, "urgent": urgent})
        if technicians:
            self.hub.send(technicians, {"type": "alarm", "alarm": for_role("technician", body),
                                        "urgent": urgent})
        return body

    def broadcast_notice(self, code: str, level: str, text: str) -> None:
        """A notice to every staff client and on the retained gateway status."""
        everyone = frozenset(self.org.staff)
        self.hub.send(everyone, {"type": "notice", "code": code, "level": level, "text": text,
                                 "at": iso(time.time())})
        if self.publisher is not None:
            self.publisher.publish_status(code)
