"""Property-based API fuzzing from the OpenAPI schema (schemathesis), with its conformance
checks: no answer is a 5xx, and every answer's status, content type, headers and body are
the ones the operation declares (issue 17.13).

In-process (ASGI) against a seeded gateway with an open alarm, so that the alarm operations
answer with alarms and not only 404s. The same generated requests go out as a care worker,
a technician, a team lead, with no token (every operation that needs one must declare 401)
and last as an administrator (who reaches the most code, and deletes things). Then requests
that break the schema on purpose (negative mode) must be refused with a declared 4xx.
Destructive operations run too: on this throw-away gateway that is the point.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from gateway.org import StaffMember
from gateway.runtime import Gateway
from gateway.web import create_app
from tests.conftest import _HASH, PASSWORD, GatewayFactory
from tests.helpers import device

pytestmark = [pytest.mark.network, pytest.mark.slow]

CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_headers_conformance, response_schema_conformance]
# Who sends the generated requests, in order (the administrator last: deletes are theirs).
ROLES = ["anna", "tove", "lena", None, "ada"]


@pytest.fixture
async def api(make_gateway: GatewayFactory, mosquitto: tuple[str, int], prefix: str
              ) -> AsyncIterator[tuple[Any, Gateway]]:
    """The ASGI app of a running gateway with an open alarm, and the gateway."""
    async with make_gateway(mosquitto) as gw:
        gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        gw.org.put_staff(StaffMember("lena", "lena", "Lena", "lead", ("team-a",), _HASH[0]))
        async with device(mosquitto, prefix, "dev-a") as dev:
            await dev.alarm("fuzz-1", "fall")
            await dev.wait_ack("fuzz-1")
        yield create_app(gw), gw


async def _tokens(client: httpx.AsyncClient) -> dict[str | None, str | None]:
    tokens: dict[str | None, str | None] = {None: None}
    for username in ROLES:
        if username is not None:
            r = await client.post("/api/v1/auth/token",
                                  data={"username": username, "password": PASSWORD})
            tokens[username] = r.json()["access_token"]
    return tokens


def _draw(schema: Any, per_operation: int, mode: GenerationMode,
          known: dict[str, str] | None = None) -> list[Any]:
    """Generate cases up front (hypothesis is synchronous; the gateway lives on our loop).

    With ``known``, only for operations whose path parameters are all known, with those ids:
    the requests then reach real alarms, devices and people, not only 404s.
    """
    cases: list[Any] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/auth/token":
            continue  # argon2 per example: slow, and covered by the matrix
        names = re.findall(r"{(\w+)}", operation.path)
        if known is not None and (not names or not set(names) <= set(known)):
            continue
        fixed = {name: known[name] for name in names} if known is not None else None

        @settings(max_examples=per_operation, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=operation.as_strategy(generation_mode=mode, path_parameters=fixed))
        def collect(case: Any) -> None:
            cases.append(case)

        try:
            collect()
        except Unsatisfiable:
            # Nothing to break: no parameters and no body (negative mode only).
            assert mode is GenerationMode.NEGATIVE, operation.path
    return cases


async def _send(client: httpx.AsyncClient, cases: list[Any], token: str | None,
                checks: list[Callable[..., Any]], failures: list[str]) -> int:
    """Send every case; check each answer; the number answered 2xx."""
    succeeded = 0
    for case in cases:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        kwargs = case.as_transport_kwargs(base_url="http://gw", headers=headers)
        kwargs.pop("cookies", None)
        if token is None:
            kwargs["headers"].pop("Authorization", None)
        if isinstance(kwargs.get("data"), bytes | str):
            kwargs["content"] = kwargs.pop("data")  # a raw (broken) body, for httpx
        response = await client.request(**kwargs)
        succeeded += response.is_success
        try:
            case.validate_response(response, checks=checks, headers=kwargs["headers"])
        except BaseExceptionGroup as exc:  # a FailureGroup: every check that failed
            failures.append(f"{case.operation.label} -> {response.status_code} "
                            f"{response.text[:200]!r}: {str(exc)[:800]}")
    return succeeded


async def test_every_answer_is_as_declared(api: tuple[Any, Gateway]) -> None:
    app, gw = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    [alarm] = gw.core.alarms.values()
    known = {"alarm_id": alarm.id, "device_id": "dev-a", "recipient_id": "r-a",
             "team_id": "team-b", "staff_id": "bo"}
    positive = [*_draw(schema, per_operation=6, mode=GenerationMode.POSITIVE),
                *_draw(schema, per_operation=4, mode=GenerationMode.POSITIVE, known=known)]
    negative = _draw(schema, per_operation=3, mode=GenerationMode.NEGATIVE)
    failures: list[str] = []
    succeeded: dict[str | None, int] = {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw", timeout=30) as client:
        tokens = await _tokens(client)
        for role in ROLES:
            succeeded[role] = await _send(client, positive, tokens[role], CONFORMANCE, failures)
        await _send(client, negative, tokens["ada"],
                    [*CONFORMANCE, negative_data_rejection], failures)
        # Still alive and still answering as declared after all of that.
        health = await client.get("/healthz")
    assert len(positive) > 150 and len(negative) > 50
    # The requests really reached the endpoints, for every role that has any.
    assert all(succeeded[role] > 10 for role in ROLES if role is not None), succeeded
    assert not failures, "\n".join(failures[:20]) + f"\n({len(failures)} in all)"
    assert health.status_code == 200, health.text
    assert gw.health()["status"] == "ok"
