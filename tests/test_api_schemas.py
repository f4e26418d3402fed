"""The declared response models match the JSON the gateway builds (issue 17.13).

``gateway.web.schemas`` only declares what ``gateway.views.alarm_json`` and the routers send;
nothing coerces the JSON into the models at run time. So the alarm object, the one shape
every client reads (API, WebSocket, export), is checked here over generated alarms with
every optional part (positions, escalations, SMS notifications, attached alarms, device
events), as each role sees it, against the JSON schema the OpenAPI document publishes.
schemathesis checks every operation's answers against the same document
(tests/test_schemathesis.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from alarms.model import (
    Alarm,
    AlarmType,
    AttachedRef,
    DeviceNote,
    DeviceStatus,
    EscalationEntry,
    EscalationKind,
    Handover,
    HandoverKind,
    Hop,
    HopEntry,
    NotificationEntry,
    NotificationStatus,
    Position,
    PositionEntry,
    PositionSource,
)
from gateway.org import OrgStore, RecipientInfo, Team
from gateway.views import alarm_json, for_role
from gateway.web.responses import encode
from gateway.web.schemas import AlarmOut, ErrorOut

TIMES = st.floats(min_value=0, max_value=4e9, allow_nan=False)
TEXT = st.text(max_size=20)
IDS = st.text(alphabet="abcdef0123456789-", min_size=1, max_size=12)
OPTIONAL_TEXT = st.none() | TEXT

POSITIONS = st.builds(
    PositionEntry,
    position=st.builds(Position, lat=st.floats(-90, 90), lon=st.floats(-180, 180),
                       accuracy_m=st.none() | st.floats(0, 1e5), fixed_at=st.none() | TIMES,
                       source=st.sampled_from(PositionSource)),
    received_at=TIMES, device_id=IDS)

ALARMS = st.builds(
    Alarm,
    id=IDS, device_id=IDS, ref=IDS, type=st.sampled_from(AlarmType),
    priority=st.integers(0, 9), recipient_id=st.none() | st.just("r-1") | st.just("r-gone"),
    team_id=st.none() | IDS, device_ts_ms=st.integers(0, 2**53 - 1),
    battery=st.none() | st.floats(0, 1) | st.sampled_from([0, 1]),
    hops=st.lists(st.builds(HopEntry, hop=st.sampled_from(Hop), at=TIMES, actor=TEXT),
                  min_size=1, max_size=8).map(tuple),
    targets=st.frozensets(IDS, max_size=3),
    detail=OPTIONAL_TEXT, cause=OPTIONAL_TEXT, note=OPTIONAL_TEXT,
    escalations=st.lists(st.builds(
        EscalationEntry, kind=st.sampled_from(EscalationKind), level=st.integers(0, 5),
        at=TIMES, targets=st.frozensets(IDS, max_size=3), attempt=st.integers(0, 5)),
        max_size=3).map(tuple),
    handovers=st.lists(st.builds(
        Handover, kind=st.sampled_from(HandoverKind), at=TIMES, actor=IDS,
        owner=st.none() | IDS), max_size=2).map(tuple),
    attached=st.lists(st.builds(AttachedRef, device_id=IDS, ref=IDS,
                                type=st.sampled_from(AlarmType), at=TIMES),
                      max_size=2).map(tuple),
    centre_confirmed_at=st.none() | TIMES, centre_reference=OPTIONAL_TEXT,
    positions=st.lists(POSITIONS, max_size=3).map(tuple),
    device_notes=st.lists(st.builds(DeviceNote, status=st.sampled_from(DeviceStatus),
                                    at=TIMES, device_id=IDS, ref=IDS, text=OPTIONAL_TEXT),
                          max_size=2).map(tuple),
    notifications=st.lists(st.builds(
        NotificationEntry, channel=st.just("sms"), message_id=IDS, staff_id=IDS,
        status=st.sampled_from(NotificationStatus), at=TIMES, attempt=st.integers(1, 4),
        code=st.none() | st.just("4711"), detail=OPTIONAL_TEXT), max_size=3).map(tuple),
)


def _schema(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema as the OpenAPI document has it (refs resolved locally)."""
    return model.model_json_schema(ref_template="#/$defs/{model}")


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgStore:
    store = OrgStore(Path(tmp_path_factory.mktemp("org")) / "org.sqlite3")
    store.put_team(Team("t", "T"))
    store.put_recipient(RecipientInfo("r-1", "Astrid", "Storgatan 1", "t", "kod 1234",
                                      "Ring först"))
    return store


@settings(max_examples=300, deadline=None)
@given(alarm=ALARMS, role=st.sampled_from(["staff", "lead", "technician", "admin"]))
def test_every_alarm_is_an_alarm_out(org: OrgStore, alarm: Alarm, role: str) -> None:
    """What the API sends for any alarm validates against the published AlarmOut schema."""
    body = json.loads(encode(for_role(role, alarm_json(alarm, org))))
    jsonschema_rs.validate(_schema(AlarmOut), body)
    # And the model reads it back without changing a key (nothing left out, nothing added).
    assert set(AlarmOut.model_validate(body).model_dump(exclude_unset=True)) == set(body)


def test_the_error_shapes_are_error_out() -> None:
    """A sentence, a camera refusal object and FastAPI's validation issues."""
    for body in ({"detail": "no alarm 'x'"},
                 {"detail": {"code": "no_consent", "reason": "ingen samtycke"}},
                 {"detail": [{"type": "missing", "loc": ["body", "cause"],
                              "msg": "Field required", "input": {}}]}):
        jsonschema_rs.validate(_schema(ErrorOut), body)
    with pytest.raises(jsonschema_rs.ValidationError):
        jsonschema_rs.validate(_schema(ErrorOut), {"error": "x"})
