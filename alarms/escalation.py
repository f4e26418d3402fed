"""The escalation ladder and every other deadline of an open alarm, derived from its records.

Nothing here keeps a timer. ``due(alarm, policy)`` reads the alarm (its hops, escalation
entries and handovers, all rebuilt from the journal) and says what must happen next and
when. A restart therefore loses no timer: replay the journal and the same deadline comes
out. The gateway runs one timer for the earliest deadline of all alarms and feeds ``Tick``.

Every open alarm has exactly one next deadline, whatever its phase:

- nobody owns it: the next ladder step (re-alert the team, the next level, the alarm
  centre), and once the ladder is exhausted a reminder to everyone who has it;
- owned, nobody on site: the presence deadline, then reminders to the team lead;
- on site, not closed: a reminder to close it (or to ask for help);
- and, while the alarm centre has not confirmed a delivery, the next retry to it —
  whichever of these comes first.

The SMS fallback (docs/sms.md) adds two deadlines while nobody owns the alarm: when no
phone has confirmed receipt within the team's SMS delay for the alarm's priority, text the
staff on duty (once per ownerless period); and when that SMS round is not delivered (every
message failed, or no delivery report within ``sms_delivery_timeout_s``), the next rung of
the ladder comes at once instead of at its usual time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from alarms.model import (
    LADDER_KINDS,
    Alarm,
    AlarmType,
    EscalationEntry,
    EscalationKind,
    HandoverKind,
    Hop,
    NotificationStatus,
)


@dataclass(frozen=True, slots=True)
class EscalationStep:
    """One rung: what to do if nobody has accepted ``after_s`` seconds after the alarm.

    ``after_s`` counts from when the alarm became ownerless (stored, or handed back).
    """

    kind: EscalationKind
    after_s: float


# Municipal practice: a minute for the first staff member to react, three before asking the
# night patrol or the neighbouring team, five before the alarm centre takes over.
DEFAULT_LADDER: tuple[EscalationStep, ...] = (
    EscalationStep(EscalationKind.TEAM, 60.0),
    EscalationStep(EscalationKind.NEXT_LEVEL, 180.0),
    EscalationStep(EscalationKind.CENTRE, 300.0),
)

# The municipal target: staff on site within about 30 minutes of the alarm (DESIGN.md §1).
PRESENCE_DEADLINE_S = 30 * 60.0

# How long an SMS round may go without a delivery report before the next rung comes at once.
# Operators report delivery within seconds when the phone is reachable; two minutes covers a
# slow network without leaving an undelivered fallback unnoticed for long.
SMS_DELIVERY_TIMEOUT_S = 120.0

# Fire and water threaten the home itself and often more than one person: everyone at once.
WHOLE_TEAM_TYPES = frozenset({AlarmType.SMOKE, AlarmType.WATER})


@dataclass(frozen=True, slots=True)
class TeamPolicy:
    """How one team's alarms are routed and escalated. The defaults suit most teams."""

    lead_id: str | None = None
    ladder: tuple[EscalationStep, ...] = DEFAULT_LADDER
    # Where the NEXT_LEVEL step goes: neighbouring teams by day and evening, the night
    # patrol at night (falls back to ``next_level_teams`` when empty).
    next_level_teams: tuple[str, ...] = ()
    night_patrol_teams: tuple[str, ...] = ()
    # Types that reach every on-duty team member at once, whoever is connected or busy.
    whole_team_types: frozenset[AlarmType] = WHOLE_TEAM_TYPES
    # Types sent to the external alarm centre as soon as they are stored.
    centre_immediately: frozenset[AlarmType] = frozenset()
    # Leave staff who already own an open alarm out of first routing (when others exist).
    busy_excludes: bool = False
    # Attach a further alarm from a recipient who has one open (flapping, pressing again)
    # instead of opening another. Off in the bare default so a plain ``Directory()`` keeps
    # one alarm per (device, ref) as before; the gateway runs with ``RECOMMENDED_POLICY``.
    attach_repeats: bool = False
    presence_deadline_s: float = PRESENCE_DEADLINE_S
    # Once the ladder is exhausted, or the lead was told, repeat every this often. Five
    # minutes: often enough that an unanswered alarm cannot be forgotten, rarely enough that
    # it does not train people to swipe it away.
    reminder_s: float = 300.0
    # On site but not closed: staff forget to close. An hour is a long visit.
    close_reminder_s: float = 3600.0
    # Alarms outside the ladder (technical, test) are reminded about, never escalated.
    low_priority_reminder_s: float = 3600.0
    # Only alarms this urgent (PRIORITY, 1 = most) climb the ladder: technical alarms and
    # test alarms must never reach the alarm centre or another team.
    ladder_max_priority: int = 3
    # Retry delivery to the alarm centre until it confirms: 30 s, doubling, at most 10 min.
    centre_retry_s: float = 30.0
    centre_retry_max_s: float = 600.0
    # SMS fallback: (priority, seconds) pairs. An ownerless alarm of that priority that no
    # phone confirmed within the seconds is texted to the staff on duty. Empty: no SMS.
    sms_after_s: tuple[tuple[int, float], ...] = ()
    sms_delivery_timeout_s: float = SMS_DELIVERY_TIMEOUT_S

    def sms_delay(self, priority: int) -> float | None:
        """Seconds without receipt before an alarm of ``priority`` is texted; None: never."""
        for level, after_s in self.sms_after_s:
            if level == priority:
                return after_s
        return None

    def __post_init__(self) -> None:
        previous = 0.0
        for step in self.ladder:
            if step.kind not in LADDER_KINDS:
                raise ValueError(f"{step.kind} is not a ladder step")
            if step.after_s <= previous:
                raise ValueError("ladder steps must come at strictly increasing times > 0")
            previous = step.after_s
        for name in ("presence_deadline_s", "reminder_s", "close_reminder_s",
                     "low_priority_reminder_s", "centre_retry_s", "centre_retry_max_s",
                     "sms_delivery_timeout_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if any(after_s <= 0 for _, after_s in self.sms_after_s):
            raise ValueError("sms_after_s delays must be positive")


@dataclass(frozen=True, slots=True)
class SmsRule:
    """Text the staff on duty when no phone confirmed an alarm within ``after_s``.

    Applies to alarms of priority ``max_priority`` or more urgent (1 fire/water, 2 button
    and fall, 3 sensor alarms; 0: none), for ``teams`` (empty: every team without a rule
    of its own).
    """

    after_s: float
    max_priority: int = 2
    teams: frozenset[str] = frozenset()


def sms_schedule(rules: Sequence[SmsRule], team_id: str | None) -> tuple[tuple[int, float], ...]:
    """A team's ``TeamPolicy.sms_after_s`` from the configured rules.

    A team named by any rule gets only the rules naming it (so a team can be left out with
    ``max_priority = 0``); other teams get the general rules. Within those, the first rule
    covering a priority decides its delay.
    """
    own = [r for r in rules if team_id is not None and team_id in r.teams]
    chosen = own or [r for r in rules if not r.teams]
    schedule: list[tuple[int, float]] = []
    for priority in range(1, max((r.max_priority for r in chosen), default=0) + 1):
        for rule in chosen:
            if priority <= rule.max_priority:
                schedule.append((priority, rule.after_s))
                break
    return tuple(schedule)


DEFAULT_POLICY = TeamPolicy()

# What a gateway should run with unless a team is configured otherwise.
RECOMMENDED_POLICY = TeamPolicy(attach_repeats=True)


@dataclass(frozen=True, slots=True)
class Due:
    """The next thing to happen to an alarm: the escalation entry to write, and when."""

    at: float
    kind: EscalationKind
    level: int
    attempt: int = 0
    # For REMINDER/LEAD: the escalation entries so far decide the audience, not this.
    reason: str = field(default="", compare=False)


def handed_back_at(alarm: Alarm) -> float | None:
    """When the alarm was last handed back to the team, if ever."""
    for handover in reversed(alarm.handovers):
        if handover.kind is HandoverKind.HANDED_BACK:
            return handover.at
    return None


def unowned_since(alarm: Alarm) -> float:
    """When the alarm last became ownerless: stored, or the last hand-back."""
    handed_back = handed_back_at(alarm)
    if handed_back is not None:
        return handed_back
    stored = alarm.at(Hop.STORED)
    return stored if stored is not None else alarm.hops[0].at


def last_centre_attempt(alarm: Alarm) -> EscalationEntry | None:
    """The last delivery attempt to the alarm centre, if any."""
    for entry in reversed(alarm.escalations):
        if entry.kind is EscalationKind.CENTRE and entry.attempt > 0:
            return entry
    return None


def sms_round(alarm: Alarm, since: float) -> EscalationEntry | None:
    """The SMS round of the ownerless period that began at ``since``, if one was sent."""
    for entry in reversed(alarm.escalations):
        if entry.at < since:
            return None
        if entry.kind is EscalationKind.SMS:
            return entry
    return None


def sms_rounds(alarm: Alarm) -> int:
    """How many SMS rounds the alarm has had."""
    return sum(1 for e in alarm.escalations if e.kind is EscalationKind.SMS)


def sms_undelivered_at(alarm: Alarm, policy: TeamPolicy, since: float) -> float | None:
    """When the SMS round of this ownerless period counts as not delivered; None if it was
    delivered to somebody, is still within its time, or a rung has been climbed since.

    A round that reached nobody (no staff member with a phone) fails at once; one whose
    every message failed, when the last one did; otherwise when no delivery report came
    within ``sms_delivery_timeout_s``.
    """
    entry = sms_round(alarm, since)
    if entry is None or entry.level != alarm.level:
        return None
    sent = [m for m in alarm.messages().values() if m.attempt == entry.attempt]
    if not sent:
        return entry.at
    if any(m.status is NotificationStatus.DELIVERED for m in sent):
        return None
    final = (NotificationStatus.FAILED, NotificationStatus.CANCELLED)
    if all(m.status in final for m in sent):
        return max(m.at for m in sent)
    return entry.at + policy.sms_delivery_timeout_s


def centre_delay(policy: TeamPolicy, attempt: int) -> float:
    """Wait after delivery attempt ``attempt`` (1-based) before the next one."""
    return float(min(policy.centre_retry_s * 2 ** max(attempt - 1, 0), policy.centre_retry_max_s))


def _attention(alarm: Alarm, since: float) -> float:
    """The last time people were alerted about the alarm (not counting centre retries)."""
    last = since
    level = 0
    for entry in alarm.escalations:
        climbed = entry.level > level
        level = entry.level
        if entry.at < since:
            continue
        if entry.kind is not EscalationKind.CENTRE or climbed:
            last = max(last, entry.at)
    return last


def due(alarm: Alarm, policy: TeamPolicy) -> Due | None:
    """The next deadline of ``alarm`` under ``policy``; None once it is closed."""
    if alarm.state == "closed":
        return None
    found = _phase_due(alarm, policy)
    last_attempt = last_centre_attempt(alarm)
    if last_attempt is not None and alarm.centre_confirmed_at is None:
        retry = Due(
            last_attempt.at + centre_delay(policy, last_attempt.attempt),
            EscalationKind.CENTRE,
            alarm.level,
            last_attempt.attempt + 1,
            "centre has not confirmed",
        )
        if retry.at < found.at:
            return retry
    return found


def _phase_due(alarm: Alarm, policy: TeamPolicy) -> Due:
    if alarm.owner is None:
        return _unowned_due(alarm, policy)
    if not alarm.reached(Hop.ON_SITE):
        since = alarm.owned_since
        assert since is not None
        leads = [e.at for e in alarm.escalations if e.kind is EscalationKind.LEAD and e.at >= since]
        if not leads:
            return Due(since + policy.presence_deadline_s, EscalationKind.LEAD, alarm.level,
                       reason="nobody on site within the presence deadline")
        return Due(leads[-1] + policy.reminder_s, EscalationKind.LEAD, alarm.level,
                   reason="still nobody on site")
    on_site = alarm.at(Hop.ON_SITE)
    assert on_site is not None
    last = _attention(alarm, on_site)
    return Due(last + policy.close_reminder_s, EscalationKind.REMINDER, alarm.level,
               reason="on site but not closed")


def _unowned_due(alarm: Alarm, policy: TeamPolicy) -> Due:
    start = unowned_since(alarm)
    if alarm.priority > policy.ladder_max_priority:
        return Due(_attention(alarm, start) + policy.low_priority_reminder_s,
                   EscalationKind.REMINDER, alarm.level, reason="not accepted")
    level = alarm.level
    if level < len(policy.ladder):
        step = policy.ladder[level]
        # After a hand-back the ladder resumes where it was, one rung's gap later: the
        # alarm does not start over at "alert the team" and wait a minute for nothing.
        origin = start
        if level > 0 and handed_back_at(alarm) is not None:
            origin = start - policy.ladder[level - 1].after_s
        attempt = 0
        if step.kind is EscalationKind.CENTRE and last_centre_attempt(alarm) is None:
            attempt = 1
        found = Due(origin + step.after_s, step.kind, level + 1, attempt, reason="not accepted")
        # The SMS was the way to reach someone the app could not: if it did not arrive
        # either, waiting for the rung's usual time helps nobody.
        late = sms_undelivered_at(alarm, policy, start)
        if late is not None and late < found.at:
            found = Due(late, step.kind, level + 1, attempt, reason="SMS not delivered")
    else:
        found = Due(_attention(alarm, start) + policy.reminder_s, EscalationKind.REMINDER,
                    level, reason="not accepted; ladder exhausted")
    sms = _sms_due(alarm, policy, start)
    if sms is not None and sms.at <= found.at:
        return sms
    return found


def _sms_due(alarm: Alarm, policy: TeamPolicy, start: float) -> Due | None:
    """The SMS round of this ownerless period, while no phone has confirmed receipt."""
    if alarm.reached(Hop.DELIVERED):
        return None
    delay = policy.sms_delay(alarm.priority)
    if delay is None or sms_round(alarm, start) is not None:
        return None
    return Due(start + delay, EscalationKind.SMS, alarm.level, sms_rounds(alarm) + 1,
               reason="no phone confirmed receipt")
