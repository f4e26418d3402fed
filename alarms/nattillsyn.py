"""Digital nattillsyn (night camera supervision): the pure rules, no I/O.

A night camera look replaces a physical night visit only for a recipient who gave informed
consent, only at agreed times, and nothing is recorded (DESIGN.md §1). This module holds the
rules that make that so; ``gateway.cameras`` carries them out:

- ``Consent`` / ``ConsentBook``: who consented, when, to what scope, who registered it; a
  withdrawal takes effect the moment it is registered;
- ``Schedule`` / ``Window``: the looks agreed per night (e.g. 23:00, 02:00 and 05:00 ± 15
  minutes, Europe/Stockholm wall-clock time, right across daylight-saving changes), assigned
  to a team;
- ``decide_access``: allow a look, or refuse it with a code and a reason a person can read;
- ``Look``: requested → camera woken → streaming → ended (outcome, time, duration, viewer);
- ``MissedLooks``: a window that passes without a look gives a reminder, and if the look is
  still not done ``retry_s`` (15–20 min) later, a physical visit.

Every function takes ``now`` (epoch seconds); nothing here reads a clock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeAlias
from zoneinfo import ZoneInfo

STOCKHOLM = ZoneInfo("Europe/Stockholm")

# A look is a glance to see that the person sleeps or is all right, not surveillance: the
# stream closes after this long whatever the viewer does.
DEFAULT_MAX_LOOK_S = 60.0
# An agreed look may happen this long before or after its planned time.
DEFAULT_TOLERANCE_S = 15 * 60.0
# Municipal practice: a missed look is retried after 15-20 minutes, then a visit is made.
# The reminder goes out when the window closes; the visit this long after that.
DEFAULT_RETRY_S = 15 * 60.0
MIN_RETRY_S = 60.0
# Looks at or after noon belong to the night that starts that evening; looks before noon
# to the night that started the evening before.
_NIGHT_SPLIT = dt.time(12, 0)


class Outcome(StrEnum):
    """What the viewer saw (the words staff use)."""

    ASLEEP = "sover"
    AWAKE_OK = "vaken – ok"
    NEEDS_VISIT = "behöver besök"
    COULD_NOT_SEE = "kunde inte se"

    @property
    def needs_visit(self) -> bool:
        """Whether staff must go to the home."""
        return self in (Outcome.NEEDS_VISIT, Outcome.COULD_NOT_SEE)


class ConsentScope(StrEnum):
    """What a consent covers."""

    # Looks at the agreed times of the recipient's schedule.
    SCHEDULED = "scheduled"
    # Also a look outside those times when there is a reason (an open alarm from the home).
    AD_HOC = "ad_hoc"


# -- consent ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Consent:
    """One informed consent. ``given_by`` is the person who consented (the recipient, or a
    legal representative, as written on the consent form); ``registered_by`` is the staff
    member who entered it."""

    recipient_id: str
    given_by: str
    consented_at: float
    scope: frozenset[ConsentScope]
    registered_by: str
    registered_at: float
    withdrawn_at: float | None = None
    withdrawn_by: str | None = None

    def valid_at(self, now: float) -> bool:
        """Whether the consent holds at ``now``."""
        if now < self.consented_at:
            return False
        return self.withdrawn_at is None or now < self.withdrawn_at

    def to_json(self) -> dict[str, object]:
        """A plain JSON object (for storage and the API)."""
        return {
            "recipient_id": self.recipient_id,
            "given_by": self.given_by,
            "consented_at": self.consented_at,
            "scope": sorted(s.value for s in self.scope),
            "registered_by": self.registered_by,
            "registered_at": self.registered_at,
            "withdrawn_at": self.withdrawn_at,
            "withdrawn_by": self.withdrawn_by,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Consent:
        """Parse what ``to_json`` wrote."""
        scope = body["scope"]
        assert isinstance(scope, list)
        withdrawn_at = body.get("withdrawn_at")
        withdrawn_by = body.get("withdrawn_by")
        return cls(
            recipient_id=str(body["recipient_id"]),
            given_by=str(body["given_by"]),
            consented_at=float(str(body["consented_at"])),
            scope=frozenset(ConsentScope(str(s)) for s in scope),
            registered_by=str(body["registered_by"]),
            registered_at=float(str(body["registered_at"])),
            withdrawn_at=None if withdrawn_at is None else float(str(withdrawn_at)),
            withdrawn_by=None if withdrawn_by is None else str(withdrawn_by),
        )


class ConsentBook:
    """Every consent ever registered, per recipient, oldest first. The last one counts.

    History is kept (never overwritten) so that "who allowed this look" can be answered
    for any past look.
    """

    def __init__(self, consents: Iterable[Consent] = ()) -> None:
        self._history: dict[str, list[Consent]] = {}
        for consent in consents:
            self._history.setdefault(consent.recipient_id, []).append(consent)

    def current(self, recipient_id: str) -> Consent | None:
        """The latest consent of a recipient (possibly withdrawn), if any."""
        history = self._history.get(recipient_id)
        return history[-1] if history else None

    def history(self, recipient_id: str) -> list[Consent]:
        """All consents of a recipient, oldest first."""
        return list(self._history.get(recipient_id, ()))

    def all(self) -> list[Consent]:
        """Every consent, by recipient, oldest first."""
        return [c for history in self._history.values() for c in history]

    def register(self, consent: Consent) -> None:
        """Add a consent; it replaces the recipient's current one."""
        self._history.setdefault(consent.recipient_id, []).append(consent)

    def withdraw(self, recipient_id: str, *, by: str, now: float) -> Consent | None:
        """Withdraw the current consent at ``now``; the withdrawn record, or None if there
        was no consent in force."""
        current = self.current(recipient_id)
        if current is None or current.withdrawn_at is not None:
            return None
        withdrawn = dataclasses.replace(current, withdrawn_at=now, withdrawn_by=by)
        self._history[recipient_id][-1] = withdrawn
        return withdrawn


# -- schedules -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """One agreed look: planned time and the window around it (epoch seconds)."""

    recipient_id: str
    team_id: str
    planned_at: float
    opens_at: float
    closes_at: float
    # The local wall-clock time it was agreed as, e.g. "2024-03-31T02:00" (for people).
    local: str

    @property
    def key(self) -> str:
        """Identifies the window (recipient and planned time)."""
        return f"{self.recipient_id}@{int(self.planned_at)}"

    def contains(self, now: float) -> bool:
        """Whether ``now`` is inside the window."""
        return self.opens_at <= now <= self.closes_at


def parse_hhmm(text: str) -> dt.time:
    """``"23:00"`` -> time(23, 0); ValueError if not HH:MM."""
    hours, sep, minutes = text.partition(":")
    if not sep or len(hours) != 2 or len(minutes) != 2:
        raise ValueError(f"{text!r} is not HH:MM")
    return dt.time(int(hours), int(minutes))


@dataclass(frozen=True, slots=True)
class Schedule:
    """The looks agreed for one recipient each night, and the team that makes them."""

    recipient_id: str
    team_id: str
    times: tuple[dt.time, ...]
    tolerance_s: float = DEFAULT_TOLERANCE_S
    tz: ZoneInfo = STOCKHOLM

    def windows_for_night(self, night: dt.date) -> list[Window]:
        """The windows of the night that starts on the evening of ``night``, in time order.

        Local times are resolved with PEP 495 rules: a time that does not exist (02:30 on
        the spring-forward night) is taken with the offset before the change, i.e. it lands
        an hour later on the wall clock (03:30 CEST); a time that occurs twice (02:30 on
        the fall-back night) is its first occurrence. Either way there is exactly one look.
        """
        windows = []
        for at in self.times:
            day = night if at >= _NIGHT_SPLIT else night + dt.timedelta(days=1)
            local = dt.datetime.combine(day, at, tzinfo=self.tz)
            planned = local.timestamp()
            windows.append(Window(
                self.recipient_id, self.team_id, planned, planned - self.tolerance_s,
                planned + self.tolerance_s, local.strftime("%Y-%m-%dT%H:%M"),
            ))
        windows.sort(key=lambda w: w.planned_at)
        return windows

    def windows_between(self, start: float, end: float) -> list[Window]:
        """Windows whose span overlaps [start, end], in time order."""
        first = dt.datetime.fromtimestamp(start, self.tz).date() - dt.timedelta(days=1)
        last = dt.datetime.fromtimestamp(end, self.tz).date()
        found: list[Window] = []
        night = first
        while night <= last:
            found += [
                w for w in self.windows_for_night(night)
                if w.closes_at >= start and w.opens_at <= end
            ]
            night += dt.timedelta(days=1)
        return found

    def window_at(self, now: float) -> Window | None:
        """The window ``now`` falls in, if any."""
        for window in self.windows_between(now, now):
            if window.contains(now):
                return window
        return None

    def to_json(self) -> dict[str, object]:
        """A plain JSON object."""
        return {
            "recipient_id": self.recipient_id,
            "team_id": self.team_id,
            "times": [t.strftime("%H:%M") for t in self.times],
            "tolerance_s": self.tolerance_s,
            "tz": self.tz.key,
        }

    @classmethod
    def from_json(cls, body: Mapping[str, object]) -> Schedule:
        """Parse what ``to_json`` wrote."""
        times = body["times"]
        assert isinstance(times, list)
        return cls(
            recipient_id=str(body["recipient_id"]),
            team_id=str(body["team_id"]),
            times=tuple(parse_hhmm(str(t)) for t in times),
            tolerance_s=float(str(body.get("tolerance_s", DEFAULT_TOLERANCE_S))),
            tz=ZoneInfo(str(body.get("tz", STOCKHOLM.key))),
        )


# -- access ----------------------------------------------------------------------------------


class RefusalCode(StrEnum):
    """Why a look was refused (machine-readable; ``Refused.reason`` says it in words)."""

    NO_CONSENT = "no_consent"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    OUT_OF_SCOPE = "out_of_scope"
    NO_SCHEDULE = "no_schedule"
    OUTSIDE_WINDOW = "outside_window"
    ALREADY_LOOKED = "already_looked"
    WRONG_TEAM = "wrong_team"
    NO_REASON = "no_reason"
    NO_OPEN_ALARM = "no_open_alarm"
    TOO_LONG = "too_long"
    LOOK_ACTIVE = "look_active"
    NO_CAMERA = "no_camera"
    TOKEN_INVALID = "token_invalid"  # noqa: S105 - a refusal code, not a secret
    TOKEN_EXPIRED = "token_expired"  # noqa: S105 - a refusal code, not a secret
    WRONG_VIEWER = "wrong_viewer"
    LOOK_ENDED = "look_ended"


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks to look."""

    staff_id: str
    team_ids: frozenset[str]


@dataclass(frozen=True, slots=True)
class AdHoc:
    """A look outside the schedule: the reason given, and the open alarm behind it."""

    reason: str
    alarm_id: str | None = None


@dataclass(frozen=True, slots=True)
class Allowed:
    """A look may go ahead for ``duration_s`` seconds. Ad hoc looks are ``flagged``."""

    window: Window | None
    duration_s: float
    ad_hoc: bool = False
    flagged: bool = False
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class Refused:
    """A look may not go ahead, and why."""

    code: RefusalCode
    reason: str


Access: TypeAlias = Allowed | Refused


def decide_access(
    *,
    viewer: Viewer,
    recipient_id: str,
    recipient_team_id: str | None,
    consent: Consent | None,
    schedule: Schedule | None,
    now: float,
    ad_hoc: AdHoc | None = None,
    open_alarm_ids: frozenset[str] = frozenset(),
    done_windows: frozenset[str] = frozenset(),
    look_active: bool = False,
    duration_s: float | None = None,
    max_look_s: float = DEFAULT_MAX_LOOK_S,
) -> Access:
    """May ``viewer`` look at ``recipient_id``'s camera at ``now``?

    Rules, in order: consent in force (and covering an ad hoc look, if this is one); the
    viewer in the schedule's team (the recipient's team when there is no schedule); no
    other look of this recipient in progress; a duration within the maximum; then either
    inside an agreed window not yet looked in, or ad hoc with a reason and an open alarm
    from the recipient (``open_alarm_ids``: the recipient's open alarms). Ad hoc looks are
    flagged for follow-up.
    """
    if consent is None or now < consent.consented_at:
        return Refused(RefusalCode.NO_CONSENT, "inget samtycke registrerat / no consent")
    if not consent.valid_at(now):
        return Refused(RefusalCode.CONSENT_WITHDRAWN,
                       "samtycket är återkallat / consent withdrawn")
    team_id = schedule.team_id if schedule is not None else recipient_team_id
    if team_id is None or team_id not in viewer.team_ids:
        return Refused(RefusalCode.WRONG_TEAM,
                       "tillsynen hör till ett annat team / look belongs to another team")
    if look_active:
        return Refused(RefusalCode.LOOK_ACTIVE,
                       "en titt pågår redan / a look is already in progress")
    if duration_s is not None and (duration_s <= 0 or duration_s > max_look_s):
        return Refused(RefusalCode.TOO_LONG,
                       f"längsta titt är {max_look_s:.0f} s / longest look is {max_look_s:.0f} s")
    duration = max_look_s if duration_s is None else duration_s
    if ad_hoc is None:
        if ConsentScope.SCHEDULED not in consent.scope:
            return Refused(RefusalCode.OUT_OF_SCOPE,
                           "samtycket gäller inte schemalagda tittar / consent does not "
                           "cover scheduled looks")
        if schedule is None:
            return Refused(RefusalCode.NO_SCHEDULE, "ingen tillsyn schemalagd / no schedule")
        window = schedule.window_at(now)
        if window is None:
            return Refused(RefusalCode.OUTSIDE_WINDOW,
                           "utanför överenskommen tid / outside the agreed times")
        if window.key in done_windows:
            return Refused(RefusalCode.ALREADY_LOOKED,
                           "tillsynen är redan gjord / this look is already done")
        return Allowed(window, duration)
    if ConsentScope.AD_HOC not in consent.scope:
        return Refused(RefusalCode.OUT_OF_SCOPE,
                       "samtycket gäller inte tittar utanför schemat / consent does not cover "
                       "ad hoc looks")
    if not ad_hoc.reason.strip():
        return Refused(RefusalCode.NO_REASON, "ange skäl / a reason is required")
    if ad_hoc.alarm_id is None or ad_hoc.alarm_id not in open_alarm_ids:
        return Refused(RefusalCode.NO_OPEN_ALARM,
                       "inget öppet larm från brukaren / no open alarm from the recipient")
    window = schedule.window_at(now) if schedule is not None else None
    return Allowed(window, duration, ad_hoc=True, flagged=True, reason=ad_hoc.reason.strip())


# -- the look --------------------------------------------------------------------------------


class LookState(StrEnum):
    """Where a look is."""

    REQUESTED = "requested"
    WOKEN = "camera_woken"
    STREAMING = "streaming"
    ENDED = "ended"


class EndedBy(StrEnum):
    """Why a look ended."""

    VIEWER = "viewer"
    TIMEOUT = "timeout"
    CONSENT_WITHDRAWN = "consent_withdrawn"
    CAMERA_FAILED = "camera_failed"


class LookError(Exception):
    """A transition the look's state does not allow."""


@dataclass(frozen=True, slots=True)
class Look:
    """One look: who, at whom, when, for how long, and what they saw. Never any image."""

    id: str
    recipient_id: str
    device_id: str
    viewer_id: str
    requested_at: float
    max_s: float
    window_key: str | None = None
    ad_hoc: bool = False
    reason: str | None = None
    state: LookState = LookState.REQUESTED
    woken_at: float | None = None
    streaming_at: float | None = None
    ended_at: float | None = None
    ended_by: EndedBy | None = None
    outcome: Outcome | None = None
    outcome_at: float | None = None

    @property
    def expires_at(self) -> float | None:
        """When the look ends by itself: ``max_s`` after the camera woke."""
        return None if self.woken_at is None else self.woken_at + self.max_s

    @property
    def duration_s(self) -> float | None:
        """Camera awake to end; None while the look goes on."""
        if self.ended_at is None:
            return None
        start = self.woken_at if self.woken_at is not None else self.ended_at
        return max(0.0, self.ended_at - start)

    def woken(self, now: float) -> Look:
        """The camera confirmed it is awake."""
        if self.state is not LookState.REQUESTED:
            raise LookError(f"look {self.id} is {self.state}, cannot wake")
        return dataclasses.replace(self, state=LookState.WOKEN, woken_at=now)

    def streaming(self, now: float) -> Look:
        """The viewer's stream started (later reconnects keep the first time)."""
        if self.state is LookState.STREAMING:
            return self
        if self.state is not LookState.WOKEN:
            raise LookError(f"look {self.id} is {self.state}, cannot stream")
        return dataclasses.replace(self, state=LookState.STREAMING, streaming_at=now)

    def ended(self, now: float, by: EndedBy, outcome: Outcome | None = None) -> Look:
        """End the look (the stream is over), with the outcome if the viewer gave one."""
        if self.state is LookState.ENDED:
            raise LookError(f"look {self.id} has already ended")
        return dataclasses.replace(
            self, state=LookState.ENDED, ended_at=now, ended_by=by, outcome=outcome,
            outcome_at=None if outcome is None else now,
        )

    def with_outcome(self, now: float, outcome: Outcome) -> Look:
        """The outcome of a look that ended without one (it timed out first)."""
        if self.state is not LookState.ENDED:
            raise LookError(f"look {self.id} has not ended")
        if self.outcome is not None:
            raise LookError(f"look {self.id} already has an outcome")
        return dataclasses.replace(self, outcome=outcome, outcome_at=now)

    def audit_detail(self) -> dict[str, object]:
        """What the audit log keeps about a look: times, duration, viewer — never content."""
        return {
            "look_id": self.id,
            "device_id": self.device_id,
            "state": self.state.value,
            "window": self.window_key,
            "ad_hoc": self.ad_hoc,
            "reason": self.reason,
            "requested_at": self.requested_at,
            "woken_at": self.woken_at,
            "ended_at": self.ended_at,
            "ended_by": None if self.ended_by is None else self.ended_by.value,
            "duration_s": None if self.duration_s is None else round(self.duration_s, 3),
            "outcome": None if self.outcome is None else self.outcome.value,
        }


# -- missed looks ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Remind:
    """A window passed without a look: remind the team."""

    window: Window


@dataclass(frozen=True, slots=True)
class EscalateVisit:
    """Still no look ``retry_s`` after the window closed: a physical visit is needed."""

    window: Window


MissedAction: TypeAlias = Remind | EscalateVisit


class MissedLooks:
    """Watches every schedule's windows and says when a look was missed.

    Windows that closed before ``start`` are not judged: the planner cannot know whether
    a look was made in them (looks are not persisted; see docs/night-cameras.md).
    """

    def __init__(self, *, start: float, retry_s: float = DEFAULT_RETRY_S) -> None:
        if retry_s < MIN_RETRY_S:
            raise ValueError(f"retry_s must be at least {MIN_RETRY_S:.0f} s")
        self.start = start
        self.retry_s = retry_s
        self._done: set[str] = set()
        self._reminded: set[str] = set()
        self._escalated: set[str] = set()

    def done(self, window_key: str) -> None:
        """A look with an outcome was made in the window."""
        self._done.add(window_key)

    def is_done(self, window_key: str) -> bool:
        """Whether the window's look was made."""
        return window_key in self._done

    @property
    def done_windows(self) -> frozenset[str]:
        """Keys of windows looked in."""
        return frozenset(self._done)

    def _open(self, schedules: Iterable[Schedule], now: float) -> list[Window]:
        # A late tick (a busy or restarted timer) still escalates windows from the last day.
        lookback = now - self.retry_s - 86400.0
        return [
            w
            for s in schedules
            for w in s.windows_between(max(self.start, lookback), now)
            if w.closes_at >= self.start and w.key not in self._done
            and w.key not in self._escalated
        ]

    def tick(self, schedules: Iterable[Schedule], now: float) -> list[MissedAction]:
        """Actions due at ``now``; each window is reminded and escalated at most once."""
        actions: list[MissedAction] = []
        for window in self._open(schedules, now):
            if now >= window.closes_at + self.retry_s:
                self._escalated.add(window.key)
                actions.append(EscalateVisit(window))
            elif now >= window.closes_at and window.key not in self._reminded:
                self._reminded.add(window.key)
                actions.append(Remind(window))
        return actions

    def next_deadline(self, schedules: Iterable[Schedule], now: float) -> float | None:
        """When ``tick`` next has something to do (a window closing, or its retry passing)."""
        schedules = list(schedules)
        candidates: list[float] = []
        for window in self._open(schedules, now):
            candidates.append(
                window.closes_at + self.retry_s if window.key in self._reminded
                else window.closes_at
            )
        # The next window that has not opened yet (within two days).
        for s in schedules:
            upcoming = [w.closes_at for w in s.windows_between(now, now + 2 * 86400.0)
                        if w.closes_at > now and w.key not in self._done]
            candidates += upcoming[:1]
        return min(candidates, default=None)

    def prune(self, now: float) -> None:
        """Forget windows long past (memory stays bounded over months)."""
        horizon = now - 2 * 86400.0
        for keys in (self._done, self._reminded, self._escalated):
            for key in [k for k in keys if float(k.rsplit("@", 1)[1]) < horizon]:
                keys.discard(key)
