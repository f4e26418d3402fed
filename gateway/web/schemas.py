"""What the staff API answers, declared for the OpenAPI document (``/docs``).

The JSON itself is built where it always was (``gateway.views.alarm_json`` for the alarm,
the routers for the rest): it is the external contract (DESIGN.md §3) and must not change
because a schema was written down. So a route declares its model with ``documented(...)``,
which puts it in the OpenAPI document and leaves the response alone (``response_model=None``:
FastAPI does not re-validate or coerce it, which would turn a ``1`` into ``1.0`` or drop an
absent key's absence). That the JSON matches what is declared is the test suite's job:
schemathesis checks every answer of every operation against it
(``tests/test_schemathesis.py``), and a property test checks ``alarm_json`` over generated
alarm histories (``tests/test_api_schemas.py``).

Models forbid extra keys, so the document says exactly what is sent and a new key must be
declared here to pass the tests. A key that is sometimes absent has a default.

Every error answer is ``{"detail": ...}``: a sentence, a small object with a machine-readable
``code`` (camera refusals), or FastAPI's list of validation issues (422). ``ErrorOut``
declares all three; ``errors(...)`` declares which statuses an operation can answer.
"""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from alarms.model import (
    AlarmType,
    DeviceStatus,
    EscalationKind,
    Hop,
    NotificationStatus,
    PositionSource,
)
from alarms.nattillsyn import ConsentScope, EndedBy, LookState, Outcome
from alarms.roster import Shift

# A telemetry point: ``[time in epoch ms, value]``, the value a number or a vector. (A list,
# not a tuple: tuple schemas come out as ``prefixItems``, which not every OpenAPI tool reads.)
Point = Annotated[list[float | list[float]], Field(min_length=2, max_length=2)]


class Out(BaseModel):
    """A response body: exactly these keys."""

    model_config = ConfigDict(extra="forbid")


# -- errors ------------------------------------------------------------------------------------


class ValidationIssue(BaseModel):
    """One problem FastAPI found in a request (422)."""

    model_config = ConfigDict(extra="allow")  # pydantic adds input, ctx, url as it sees fit

    loc: list[str | int]
    msg: str
    type: str


class ErrorOut(Out):
    """Every error answer."""

    detail: str | list[ValidationIssue] | dict[str, Any] = Field(
        description="A sentence; for camera refusals an object with a machine-readable "
        "`code` and a `reason`; for request validation (422) FastAPI's list of issues.")


_RETRY_AFTER = {"Retry-After": {
    "description": "Seconds until another attempt may succeed.",
    "schema": {"type": "string"}, "required": True}}

ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "The body could not be read at all (not UTF-8, not JSON).",
    401: "No valid bearer token (missing, expired, or its staff member is gone).",
    403: "The caller's role may not do this.",
    404: "Absent, or not the caller's to see (the same answer for both).",
    409: "The state does not allow it now (already taken, already running, ...).",
    422: "The request is invalid: its parameters or body (a list of issues), or its content "
         "(a sentence).",
    429: "Too many attempts; try again after Retry-After seconds.",
    502: "A device or service behind the gateway failed.",
    503: "The gateway cannot do it right now (journal failing, broker down, another gateway "
         "changing the alarm); nothing changed. Try again.",
    504: "A device behind the gateway did not answer in time.",
}


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The ``responses`` entries of these error statuses."""
    declared: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorOut, "description": ERROR_DESCRIPTIONS[status]}
        if status == 429:
            entry["headers"] = _RETRY_AFTER
        declared[status] = entry
    return declared


def documented(model: Any, *statuses: int, status: int = 200,
               description: str = "Successful Response") -> dict[str, Any]:
    """Route keyword arguments: ``model`` answers ``status``; ``statuses`` are the errors.

    ``model=None`` declares an empty answer (204).
    """
    ok: dict[str, Any] = {"description": description}
    if model is not None:
        ok["model"] = model
    return {"response_model": None, "status_code": status,
            "responses": {status: ok, **errors(*statuses)}}


# -- alarms ------------------------------------------------------------------------------------


class HopOut(Out):
    """One hop of the alarm chain."""

    hop: Hop
    at: str = Field(description="ISO-8601 UTC time with milliseconds")
    actor: str
    actor_name: str | None = Field(description="the actor as people call it (a name)")
    actor_kind: str | None = Field(description="staff, team, device, gateway, ...")


class SummaryOut(Out):
    """What a technical alarm is about, in words (Swedish and English)."""

    sv: str
    en: str


class HandoverOut(Out):
    """A change of owner after the first acceptance."""

    kind: str
    at: str
    actor: str | None
    actor_name: str | None
    actor_kind: str | None
    owner: str | None
    owner_name: str | None


class EscalationOut(Out):
    """One step of the escalation ladder (or a reminder, an SMS step)."""

    kind: EscalationKind
    level: int
    at: str
    targets: list[str]
    attempt: int


class AttachedOut(Out):
    """Another device's alarm attached to this one (the same person, meanwhile)."""

    device_id: str
    ref: str
    type: AlarmType
    at: str


class NotificationOut(Out):
    """One status of one message of a notification channel (the SMS fallback)."""

    channel: str
    message_id: str
    staff_id: str
    status: NotificationStatus
    at: str
    attempt: int
    detail: str | None


class PositionOut(Out):
    """Where a mobile alarm was, with links to a map."""

    lat: float
    lon: float
    accuracy_m: float | None
    at: str
    fixed_at: str | None
    received_at: str
    source: PositionSource
    device_id: str
    geo_uri: str
    map_url: str


class DeviceEventOut(Out):
    """What the device reported about the alarm in progress."""

    status: DeviceStatus
    at: str
    device_id: str
    ref: str
    text: str | None


class AlarmRecipientOut(Out):
    """The person the alarm is about; technicians get name and address only."""

    id: str
    name: str
    address: str
    entry_info: str | None = None
    action_plan: str | None = None
    phone: str | None = Field(default=None, description="E.164; never for technicians")


class AlarmOut(Out):
    """An alarm, as the API and the WebSocket show it (``gateway.views.alarm_json``)."""

    id: str
    device_id: str
    ref: str
    type: AlarmType
    priority: int
    state: Literal["open", "closed"]
    stage: Hop
    test: bool
    recipient_id: str | None
    team_id: str | None
    owner: str | None
    battery: float | None
    device_ts: int = Field(description="device time, epoch milliseconds")
    raised_at: str
    detail: str | None
    cause: str | None
    note: str | None = Field(description="the close note (null for technicians)")
    level: int
    escalations: list[EscalationOut]
    attached: list[AttachedOut]
    centre_confirmed_at: str | None
    centre_reference: str | None
    reply_code: str | None
    notifications: list[NotificationOut]
    hops: list[HopOut]
    position: PositionOut | None
    positions: list[PositionOut]
    device_events: list[DeviceEventOut]
    owner_name: str | None
    device_type: str | None
    team_name: str | None
    summary: SummaryOut | None
    handovers: list[HandoverOut]
    recipient: AlarmRecipientOut | None = Field(
        default=None, description="absent when the device protects nobody known")


class ColleagueOut(Out):
    """Someone an alarm can be forwarded to (``GET /alarms/{id}/colleagues``)."""

    id: str
    name: str
    team_names: list[str]
    connected: bool


class EvidenceOut(Out):
    """The telemetry around a sensor alarm: ``[time ms, value or vector]`` points."""

    alarm_id: str
    device_id: str | None = None
    metric: str | None
    points: list[Point]


class StatsOut(Out):
    """Count and distribution of one response time, in seconds."""

    count: int
    mean: float | None
    p50: float | None
    p90: float | None
    max: float | None


class KpiRowOut(Out):
    """Response times of one team, shift and period."""

    team_id: str | None
    shift: Shift | None
    period: str | None
    alarms: int
    delivered: StatsOut
    accepted: StatsOut
    on_site: StatsOut
    closed: StatsOut
    on_site_within_target: int
    on_site_share: float | None
    on_site_judged: int = Field(description="alarms the share is judged on (n)")
    on_site_missed: int = Field(description="judged and past the target, open ones included")
    on_site_missed_open: int
    on_site_pending: int = Field(description="still open and within the target")


class ResponseReportOut(Out):
    """``GET /reports/response-times``."""

    target_s: float
    rows: list[KpiRowOut]


class SeriesOut(Out):
    """A device's telemetry series: ``[time ms, value or vector]`` points, oldest first."""

    device_id: str
    metric: str
    points: list[Point]


# -- auth --------------------------------------------------------------------------------------


class MeOut(Out):
    """Who the token belongs to."""

    id: str
    username: str
    name: str
    role: Literal["staff", "lead", "technician", "admin"]
    team_ids: list[str]


# -- organisation ------------------------------------------------------------------------------


class RecipientOut(Out):
    """A care recipient; team, entry information and action plan for all but technicians."""

    id: str
    name: str
    address: str
    devices: list[str]
    team_id: str | None = None
    entry_info: str | None = None
    action_plan: str | None = None
    phone: str | None = Field(default=None, description="E.164 (not for technicians)")


class TeamOut(Out):
    """A team."""

    id: str
    name: str


class StaffOut(Out):
    """A staff member as administrators read it (never the password hash)."""

    id: str
    username: str
    name: str
    role: Literal["staff", "lead", "technician", "admin"]
    team_ids: list[str]
    on_duty: bool
    phone: str | None


class HistoryEntryOut(Out):
    """One event of a device's life (registered, bound, swapped, enrolled, ...)."""

    device_id: str
    at: float = Field(description="epoch seconds")
    event: str
    actor: str
    detail: dict[str, Any]


class ExportDeviceOut(Out):
    """A device in a recipient's data export."""

    id: str
    type: str | None
    model: str | None
    serial: str | None
    bound: bool
    state: str | None
    history: list[HistoryEntryOut]


class ExportRecipientOut(Out):
    """The recipient in their data export."""

    id: str
    name: str
    address: str
    team_id: str
    entry_info: str
    action_plan: str
    phone: str | None


class ExportOut(Out):
    """Everything held about one recipient (GDPR access)."""

    exported_at: float
    recipient: ExportRecipientOut
    devices: list[ExportDeviceOut]
    alarms: list[AlarmOut]
    telemetry: list[dict[str, Any]] = Field(
        description="per device and metric: samples, time span, min, max, mean")
    audit: list[dict[str, Any]] = Field(description="the audit records about them")


class EraseOut(Out):
    """What erasing a recipient did."""

    recipient_id: str
    devices_unbound: list[str]
    telemetry_rows_deleted: int
    alarms_kept: int


# -- devices -----------------------------------------------------------------------------------


class RecipientBriefOut(Out):
    """A recipient as technicians see it: name and address, to find the device."""

    id: str
    name: str
    address: str


class DeviceHealthOut(Out):
    """What the gateway last heard from a device."""

    supervised: bool
    online: bool | None
    last_seen: float | None = Field(description="epoch seconds")
    battery: float | None
    rssi: float | None
    firmware: str | None


class DeviceOut(Out):
    """A device in the technician's workflow."""

    id: str
    type: str | None
    model: str
    serial: str
    state: str
    recipient: RecipientBriefOut | None
    health: DeviceHealthOut
    credentials: bool
    replaces: str | None
    replaced_by: str | None


class ClaimCodeOut(Out):
    """A one-time enrolment code and its QR payload."""

    device_id: str
    code: str
    qr: str
    expires_at: float
    qr_image: str = Field(description="the QR payload as an SVG data: URI")


class TestAlarmOut(Out):
    """A test alarm asked of a device."""

    __test__ = False  # not a pytest class

    device_id: str
    ref: str
    sent: bool


class E2eStatusOut(Out):
    """A device's last end-to-end test and whether one is running."""

    device_id: str
    running: bool
    last_at: str | None
    last_result: str | None
    last_ok: str | None
    failed_hop: str | None
    next_at: str | None
    reason: SummaryOut | None = Field(description="why the last test failed, in words")
    waiting: SummaryOut | None = Field(description="what a running test waits for")


class MqttCredentialsOut(Out):
    """Where and as whom an enrolled device connects."""

    host: str
    port: int
    username: str
    password: str
    client_id: str


class TopicsOut(Out):
    """The topics an enrolled device may use."""

    publish: list[str]
    subscribe: list[str]


class ClaimAnswerOut(Out):
    """A redeemed claim code: the device's broker credentials (shown once)."""

    device_id: str
    mqtt: MqttCredentialsOut
    topics: TopicsOut


# -- consoles ----------------------------------------------------------------------------------


class LastTestOut(Out):
    """A device's last end-to-end test, from provlarm's table."""

    at: str | None
    result: str | None
    last_ok: str | None
    failed_hop: str | None
    reason: SummaryOut | None


class FleetRowOut(Out):
    """One device of the fleet view."""

    id: str
    type: str
    model: str
    recipient: RecipientBriefOut | None
    state: Literal["online", "offline", "unknown"]
    last_seen: str | None
    heartbeat_s: float
    battery: float | None
    rssi: float | None
    firmware: str | None
    status: str | None
    last_test: LastTestOut | None


class FleetCountsOut(Out):
    """Devices per supervision state."""

    online: int
    offline: int
    unknown: int


class FleetOut(Out):
    """``GET /console/fleet``."""

    generated_at: str
    types: list[str]
    counts: FleetCountsOut
    devices: list[FleetRowOut]


class TestHopOut(Out):
    """A hop of a test alarm: names and times only."""

    __test__ = False  # not a pytest class

    hop: Hop
    at: str


class LastTestAlarmOut(Out):
    """The device's latest test alarm's chain."""

    id: str
    state: Literal["open", "closed"]
    hops: list[TestHopOut]


class TechnicalOut(Out):
    """An open technical alarm."""

    id: str
    device_id: str
    ref: str
    detail: str | None
    team_id: str | None
    since: str
    last_hop: Hop
    summary: SummaryOut | None


class ConsoleSeriesOut(Out):
    """One telemetry series of the device view."""

    metric: str
    points: list[Point]


class DeviceDetailOut(FleetRowOut):
    """``GET /console/devices/{id}``: the fleet row plus the device's detail."""

    messages: dict[str, int]
    offline_at: str | None
    e2e: E2eStatusOut
    last_test_alarm: LastTestAlarmOut | None
    technical_alarms: list[TechnicalOut]
    telemetry: list[ConsoleSeriesOut]


class HistogramOut(Out):
    """A response-time histogram against the 30-minute target."""

    bins_s: list[float]
    counts: list[int]
    count: int
    p50_s: float | None
    p90_s: float | None
    max_s: float | None
    within_target: int


class OnSiteTargetOut(Out):
    """What the on-site share is made of (open alarms past the target are misses)."""

    n: int
    within: int
    missed: int
    missed_open: int
    pending: int


class ResponseOut(Out):
    """Response-time distributions."""

    accepted: HistogramOut
    on_site: HistogramOut
    on_site_share: float | None
    on_site_target: OnSiteTargetOut


class WindowOut(Out):
    """The time window of a summary."""

    start: str
    end: str
    hours: float


class SupervisionOut(Out):
    """Supervision counts and the daily tests' outcomes."""

    watched: int
    online: int
    offline: int
    tests_passed: int
    tests_failed: int


class OpsSummaryOut(Out):
    """``GET /ops/summary``."""

    generated_at: str
    window: WindowOut
    target_s: float
    alarms: int
    care_alarms: int
    by_type: dict[str, int]
    by_hour: list[int]
    technical_by_hour: list[int]
    open_care_alarms: int
    response: ResponseOut
    technical_open: list[TechnicalOut]
    supervision: SupervisionOut


# -- cameras -----------------------------------------------------------------------------------


class ConsentOut(Out):
    """A recipient's consent to night camera looks (and its withdrawal)."""

    recipient_id: str
    given_by: str
    consented_at: float
    scope: list[ConsentScope]
    registered_by: str
    registered_at: float
    withdrawn_at: float | None
    withdrawn_by: str | None


class ScheduleOut(Out):
    """The agreed times of scheduled looks."""

    recipient_id: str
    team_id: str
    times: list[str] = Field(description="local HH:MM")
    tolerance_s: float
    tz: str


class LookOut(Out):
    """A look: times, duration, viewer, outcome. Never an image."""

    id: str
    viewer: str
    look_id: str
    device_id: str
    state: LookState
    window: str | None
    ad_hoc: bool
    reason: str | None
    requested_at: float
    woken_at: float | None
    ended_at: float | None
    ended_by: EndedBy | None
    duration_s: float | None
    outcome: Outcome | None
    expires_at: float | None


class LookStartedOut(LookOut):
    """A look that was granted: the token and where the stream is."""

    token: str
    stream_url: str


# -- push --------------------------------------------------------------------------------------


class VapidKeyOut(Out):
    """The application server key for ``PushManager.subscribe``."""

    public_key: str


class EndpointOut(Out):
    """A push subscription's endpoint."""

    endpoint: str


class SubscribedOut(Out):
    """A push subscription, stored."""

    endpoint: str
    staff_id: str


# -- operations --------------------------------------------------------------------------------


class HealthOut(BaseModel):
    """``/healthz``: 200 when everything the alarm path needs works, else 503 (same body)."""

    model_config = ConfigDict(extra="allow")  # more detail as the gateway grows

    status: Literal["ok", "degraded"]
    mqtt: Literal["up", "down"]
    journal: Literal["ok", "failing", "stopped"]
    probe: dict[str, Any]
    links: dict[str, dict[str, Any]]
    tasks: dict[str, dict[str, Any]]
    devices: dict[str, int]
    version: str
    gateway_id: str
