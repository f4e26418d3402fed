"""Property-based API fuzzing from the OpenAPI schema (schemathesis): no input yields a 5xx.

In-process (ASGI) against a seeded gateway, as an administrator (who reaches the most code),
with a small, bounded number of examples per operation. Destructive operations run too: on
this throw-away gateway that is the point.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from gateway.org import StaffMember
from gateway.web import create_app
from tests.conftest import _HASH, PASSWORD, GatewayFactory

pytestmark = [pytest.mark.network, pytest.mark.slow]

@pytest.fixture
async def api(make_gateway: GatewayFactory, mosquitto: tuple[str, int]
              ) -> AsyncIterator[tuple[Any, str]]:
    """The ASGI app of a running gateway and an administrator's token."""
    async with make_gateway(mosquitto) as gw:
        gw.org.put_staff(StaffMember("ada", "ada", "Ada", "admin", (), _HASH[0]))
        app = create_app(gw)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gw") as client:
            r = await client.post("/api/v1/auth/token",
                                  data={"username": "ada", "password": PASSWORD})
            yield app, r.json()["access_token"]


def _draw(schema: Any, per_operation: int) -> list[Any]:
    """Generate cases up front (hypothesis is synchronous; the gateway lives on our loop)."""
    cases: list[Any] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path == "/api/v1/auth/token":
            continue  # argon2 per example: slow, and covered by the matrix

        @settings(max_examples=per_operation, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck), phases=[Phase.generate])
        @given(case=operation.as_strategy())
        def collect(case: Any) -> None:
            cases.append(case)

        collect()
    return cases


async def test_no_server_errors(api: tuple[Any, str]) -> None:
    app, token = api
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    cases = _draw(schema, per_operation=8)
    failures: list[str] = []
    succeeded = 0
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw", timeout=30) as client:
        for case in cases:
            kwargs = case.as_transport_kwargs(
                base_url="http://gw", headers={"Authorization": f"Bearer {token}"})
            kwargs.pop("cookies", None)
            response = await client.request(**kwargs)
            succeeded += response.is_success
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path}: {response.status_code} "
                                f"{response.text[:200]}")
    assert len(cases) > 50
    assert succeeded > 10  # the requests really reached the endpoints
    assert not failures, failures
