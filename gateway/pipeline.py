"""Decide → journal → apply: the one path every change to an alarm takes.

For any event (a device's alarm, a staff action, a timer, a technical alarm the gateway
raises itself):

1. the core decides (pure) and returns records + actions;
2. the records are submitted to the journal's next group commit, and the decision queued for
   the commit follower — both in arrival order;
3. the follower awaits each commit in order, applies the records to the core and only then
   hands the actions to the effects (ack the device, push to staff).

A journal failure means: records not applied, device not acked (it keeps resending), the
failure counted and told to every channel that still works. State never runs ahead of the
journal.

Several gateways (``[cluster]``) share a PostgreSQL journal. Every batch carries the record
counts of the existing alarms it was decided on (optimistic concurrency): a decision made on a
stale view of an alarm is refused by the journal and made again after catching up, so two
gateways never both accept, escalate or close the same alarm.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from alarms.actions import AckDevice
from alarms.core import INTERNAL_CONTENT, AlarmCore, Decision, alarm_content
from alarms.events import AlarmReceived, Event, StaffEvent
from alarms.model import Alarm, AlarmType, Hop
from alarms.records import AlarmOpened, HopAdded, Record
from devices.contract import AlarmMessage
from gateway.effects import Effects
from gateway.errors import RefusedError, StaleError, UnavailableError
from gateway.ids import new_alarm_id
from gateway.journal import ConflictError, DuplicateAlarmError, Journal, JournalError
from gateway.logformat import log_ids
from gateway.metrics import Metrics
from gateway.ports import Clock
from gateway.ratelimit import LogLimiter

_LOGGER = logging.getLogger(__name__)

# Decisions waiting for their journal commit. When full, the receiver waits: alarms apply
# back-pressure, they are never dropped. Deep enough for a few group commits of a burst
# (MAX_GROUP is 512 batches per commit).
PIPELINE_DEPTH = 4096

# A decision refused for a stale view is made again after catching up, at most this often
# in a row: enough for any realistic contention on one alarm; beyond it, the staff member
# is told to retry and a device simply resends.
MAX_CONFLICT_RETRIES = 5

UNAVAILABLE = "the journal cannot store this right now; nothing was changed, try again"

_RESPONSE_HOPS = frozenset({Hop.DELIVERED, Hop.ACCEPTED, Hop.ON_SITE, Hop.CLOSED})


@dataclass(slots=True)
class _Pending:
    decision: Decision
    commit: asyncio.Future[None]
    done: asyncio.Future[None] | None = None
    key: tuple[str, str, str] | None = None
    # Technical alarms the gateway raises itself have no device waiting for an ack.
    ack: bool = True
    # Decides and submits again after a ConflictError (device alarms, internal events);
    # staff actions and ticks retry in their own callers instead.
    redo: Callable[[], Awaitable[None]] | None = None


def _retrieve(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()


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


def per_alarm(decision: Decision) -> list[Decision]:
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
                if getattr(a, "alarm_id", None) == alarm_id
                # Actions about no alarm in particular travel with the first part.
                or (index == 0 and getattr(a, "alarm_id", None) not in alarm_ids)
            ),
        ))
    return parts


def technical(device_id: str, ref: str, detail: str, now: float) -> AlarmReceived:
    """A technical alarm the gateway raises itself (a link down, a device silent, ...)."""
    return AlarmReceived(
        device_id, ref, AlarmType.TECHNICAL, int(now * 1000), new_alarm_id(), detail=detail
    )


class Pipeline:
    """The decide → journal → apply path, and the optimistic-concurrency bookkeeping."""

    def __init__(self, *, core: AlarmCore, journal: Journal, effects: Effects,
                 metrics: Metrics, clock: Clock,
                 on_recorded: Callable[[Sequence[Record], bool], None]) -> None:
        self.core = core
        self.journal = journal
        self.effects = effects
        self.metrics = metrics
        self._clock = clock
        # Refusals can be provoked from outside (a phone repeating a stale accept, a journal
        # full of bad records): one line per kind a minute, the rest counted in the line.
        self._log = LogLimiter(60.0)
        # Told of every batch applied, and whether this gateway decided it (True) or another
        # gateway of the cluster did (False): the audit log, the timers.
        self._on_recorded = on_recorded
        # Catches up with the other gateways' records (set when in a cluster).
        self.catch_up: Callable[[], Awaitable[None]] | None = None
        self.journal_failed_since: float | None = None
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue(PIPELINE_DEPTH)
        # Alarms being committed, by (device, ref, content): a resend waits for the first copy.
        self._in_flight: dict[tuple[str, str, str], asyncio.Future[None]] = {}
        self._staff_lock = asyncio.Lock()
        # Journal records per open alarm (applied, and submitted but not yet settled): the
        # expectations every batch carries (optimistic concurrency, see the module doc).
        self._versions: dict[str, int] = {}
        self._inflight: Counter[str] = Counter()
        self._redo: asyncio.Queue[tuple[_Pending, ConflictError]] = asyncio.Queue()
        self._settle_waiters: dict[str, list[asyncio.Future[None]]] = {}
        # Other gateways' records about alarms not yet applied here, by alarm id.
        self.parked: dict[str, list[Record]] = {}
        # Decisions the follower has handled: the pipeline is moving while this grows.
        self.followed = 0

    # -- applying ---------------------------------------------------------------------------

    def load(self, records: Sequence[Record]) -> None:
        """Replay the journal into the core and count the open alarms' records."""
        self.apply(records)
        counts: Counter[str] = Counter(r.alarm_id for r in records)
        self._versions = {a.id: counts[a.id] for a in self.core.open_in_order()}

    def apply(self, records: Sequence[Record]) -> None:
        """Apply durable records to the core, in order.

        The core refuses a record that contradicts the alarm's chain (a second close, a
        hop backwards) with ValueError. Such a record is already in the journal, so
        refusing to go on would stop the gateway at every start: it is skipped, counted
        and logged as the bug it is, and the alarm keeps the chain it had.
        """
        self.core.apply_all(records, on_refused=self._skip)

    def _skip(self, record: Record, exc: Exception) -> None:
        self.metrics.skipped_records.inc()
        with log_ids(alarm_id=record.alarm_id):
            self._log.log(_LOGGER, logging.ERROR, f"skip.{type(record).__name__}",
                          "journal record %s for alarm %s cannot be applied, skipped: %s",
                          type(record).__name__, record.alarm_id, exc)

    def apply_remote(self, records: list[Record]) -> None:
        """Records another gateway committed: apply, and show the changes to our clients.

        The deciding gateway did the once-only work (device ack, alarm centre). Here the
        alarms go to the staff connected to this gateway, to the Web Push subscriptions
        stored on this gateway, and to the local listeners (delivery watch, test alarms),
        which act only while holding their lease.

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
                self.parked.setdefault(alarm_id, []).append(record)
        if not ready:
            return
        self.apply(ready)
        touched: dict[str, None] = {}
        for record in ready:
            touched[record.alarm_id] = None
            self._versions[record.alarm_id] = self._versions.get(record.alarm_id, 0) + 1
        self._forget_closed(touched)
        self._on_recorded(ready, False)
        for alarm_id in touched:
            self.effects.announce(alarm_id)
        self._unpark(touched)

    def _unpark(self, alarm_ids: dict[str, None] | set[str]) -> None:
        """Apply the parked records of alarms that are now known here."""
        if not self.parked:
            return
        waiting = [a for a in alarm_ids if a in self.parked and a in self.core.alarms]
        for alarm_id in waiting:
            self.apply_remote(self.parked.pop(alarm_id))

    # -- optimistic concurrency ------------------------------------------------------------

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
        if self.catch_up is not None:
            try:
                await self.catch_up()
            except JournalError as exc:
                _LOGGER.warning("could not catch up with the journal: %s", exc)

    async def redo_loop(self) -> None:
        """Decide again what was refused as stale (a supervised task of its own)."""
        while True:
            pending, conflict = await self._redo.get()
            await self._refresh_view(conflict)
            assert pending.redo is not None
            await pending.redo()

    # -- submitting ------------------------------------------------------------------------

    async def submit_internal(self, event: Event, attempt: int = 1) -> None:
        """Journal an event the gateway raises itself (technical alarms and their clearing)."""
        if isinstance(event, AlarmReceived) and event.content is None:
            # The gateway derives these refs from what they are about (a sensor episode, a
            # camera visit, an outage): the same ref is the same alarm, whatever time the
            # gateway put on it (alarms.dedupe).
            event = dataclasses.replace(event, content=INTERNAL_CONTENT)
        decision = self.core.decide(event, self._clock())
        if decision.refusal is not None:
            if attempt == 1:
                self._log.log(_LOGGER, logging.ERROR, f"internal.{type(event).__name__}",
                              "internal event %s refused: %s", event, decision.refusal.reason)
            return
        if not decision.records:
            return
        redo = None
        if attempt < MAX_CONFLICT_RETRIES:
            redo = functools.partial(self.submit_internal, event, attempt + 1)
        commit = self._submit(decision.records)
        await self._queue.put(_Pending(decision, commit, ack=False, redo=redo))

    async def alarm(
        self, message: AlarmMessage, now: float, *, ack: bool = True, attempt: int = 1
    ) -> asyncio.Future[None] | None:
        """Decide a device's alarm and queue its commit; returns what resolves once durable.

        MQTT does not wait (the ack is published by the commit follower); transports that
        answer in-band (SCAIP, serial) await the returned future before answering. None
        means nothing needs storing (a resend of a stored alarm): answer OK at once.
        """
        event = AlarmReceived(
            device_id=message.device_id,
            ref=message.ref,
            type=message.type,
            device_ts_ms=message.ts_ms,
            new_id=new_alarm_id(),
            battery=message.battery,
            # What tells a resend from a reused ref, where the person is, and what the
            # transport said beyond the type (alarms.dedupe).
            detail=message.detail,
            content=message.content,
            position=message.position,
        )
        key = (message.device_id, message.ref, alarm_content(event))
        in_flight = self._in_flight.get(key)
        if in_flight is not None:
            # The first copy is being committed; its ack answers this resend too.
            self.metrics.duplicates.inc()
            return in_flight
        decision = self.core.decide(event, now)
        if not decision.records:
            if self.core.find(message.device_id, message.ref) is not None:
                self.metrics.duplicates.inc()
            self.effects.carry_out(decision.actions, ack=ack)
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
        await self._queue.put(
            _Pending(decision, commit, done=done, key=key, ack=ack, redo=redo)
        )
        return done

    async def _redo_alarm(
        self, message: AlarmMessage, ack: bool, attempt: int, outer: asyncio.Future[None]
    ) -> None:
        inner = await self.alarm(message, self._clock(), ack=ack, attempt=attempt)
        if inner is None:
            if not outer.done():
                outer.set_result(None)
        else:
            inner.add_done_callback(functools.partial(_chain, outer=outer))

    async def decide_locked(self, event: Event) -> bool:
        """Decide and durably apply an event that must not interleave with staff actions.

        Awaited inside the lock: a second tick must see the first one's records applied, or
        it would decide the same escalation step again. Returns False when the decision
        was refused as stale ``MAX_CONFLICT_RETRIES`` times in a row (the caller may try
        again), True otherwise.
        """
        async with self._staff_lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                decision = self.core.decide(event, self._clock())
                if decision.refusal is not None:
                    self._log.log(_LOGGER, logging.WARNING, f"refused.{type(event).__name__}",
                                  "%s refused: %s", type(event).__name__,
                                  decision.refusal.reason)
                    return True
                if not decision.records:
                    self.effects.carry_out(decision.actions, ack=False)
                    return True
                # One batch per alarm: a tick escalates every due alarm, and one of them
                # changed elsewhere must not hold up the others.
                dones: list[asyncio.Future[None]] = []
                for part in per_alarm(decision):
                    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    commit = self._submit(part.records)
                    await self._queue.put(_Pending(part, commit, done=done, ack=False))
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

    async def act(self, event: StaffEvent) -> Alarm:
        """Carry out a staff action durably; raises RefusedError or UnavailableError."""
        action = type(event).__name__
        async with self._staff_lock:
            for _ in range(MAX_CONFLICT_RETRIES):
                decision = self.core.decide(event, self._clock())
                if decision.refusal is not None:
                    self.metrics.staff_actions.labels(action, "refused").inc()
                    raise RefusedError(decision.refusal.code, decision.refusal.reason)
                if decision.records:
                    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    commit = self._submit(decision.records)
                    await self._queue.put(_Pending(decision, commit, done=done))
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

    async def store_event(self, event: Event) -> str | None:
        """Decide a device event (status, position, fault) and wait until it is durable.

        None once stored (or when nothing needed storing); ``refused`` when the core refused
        it; ``unavailable`` when the journal could not store it (the device should retry).
        """
        for _ in range(MAX_CONFLICT_RETRIES):
            decision = self.core.decide(event, self._clock())
            if decision.refusal is not None:
                return "refused"
            if not decision.records:
                self.effects.carry_out(decision.actions, ack=False)
                return None
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            commit = self._submit(decision.records)
            await self._queue.put(_Pending(decision, commit, done=done, ack=False))
            try:
                await done
            except ConflictError as conflict:
                await self._refresh_view(conflict)  # decide again on what the journal holds
                continue
            except UnavailableError:
                return "unavailable"
            return None
        return "unavailable"

    async def flush(self) -> None:
        """Until every decision queued so far has been followed (the probe's round trip)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        commit.set_result(None)
        await self._queue.put(_Pending(Decision(), commit, done=done, ack=False))
        await done

    # -- the commit follower ---------------------------------------------------------------

    async def follow_commits(self) -> None:
        """Await each commit in order and apply it (a supervised task; its failure is fatal)."""
        while True:
            pending = await self._queue.get()
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
                self.effects.carry_out(
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
                    pending.done.set_exception(UnavailableError(UNAVAILABLE))
            else:
                if records:
                    if self.journal_failed_since is not None:
                        self._journal_up()
                    self.apply(records)
                    self._settle_versions(records, stored=True)
                    self._unpark({r.alarm_id for r in records if isinstance(r, AlarmOpened)})
                    self._observe_response(records)
                    self._on_recorded(records, True)
                self.effects.carry_out(pending.decision.actions, ack=pending.ack)
                if pending.done is not None and not pending.done.done():
                    pending.done.set_result(None)
            finally:
                self.followed += 1
                if pending.key is not None:
                    self._in_flight.pop(pending.key, None)

    def _observe_response(self, records: tuple[Record, ...]) -> None:
        """Response-time histograms, observed live (never on replay)."""
        debug = _LOGGER.isEnabledFor(logging.DEBUG)
        for record in records:
            if debug and isinstance(record, HopAdded):
                # DEBUG, not INFO: under an alarm storm a line per hop would be I/O on the
                # loop that acks alarms; the journal is the record of every hop anyway.
                _LOGGER.debug("alarm %s: hop %s by %s", record.alarm_id, record.hop.value,
                              record.actor, extra={"alarm_id": record.alarm_id,
                                                   "hop": record.hop.value})
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
        self.journal_failed_since = self._clock()
        _LOGGER.critical("journal cannot store alarms: %s", reason)
        self.effects.broadcast_notice(
            "journal_failed", "critical",
            "Larm kan inte lagras – larmen skickas om tills det fungerar / "
            "Alarms cannot be stored – devices keep resending")

    def _journal_up(self) -> None:
        assert self.journal_failed_since is not None
        since, self.journal_failed_since = self.journal_failed_since, None
        _LOGGER.warning("journal writable again after %.1f s", self._clock() - since)
        self.effects.broadcast_notice("journal_recovered", "info",
                                      "Larmlagringen fungerar igen / Alarm storage works again")

    # -- queries ---------------------------------------------------------------------------

    def open_technical(self, ref_prefix: str) -> list[Alarm]:
        """Open technical alarms whose ref starts with ``ref_prefix``."""
        return [
            a for a in self.core.open_in_order()
            if a.type is AlarmType.TECHNICAL and a.ref.startswith(ref_prefix)
        ]
