"""The technician console, the operations dashboard and the Grafana dashboards.

A real gateway on the real Mosquitto with a small simulated fleet (firmware_sim) of its
own; the API by role, then both pages in Debian's headless Chromium. Every wait is on a
selector or a server-side condition. Screenshots go to ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from firmware_sim import Backoff, Fleet, specs_from_devices
from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember
from gateway.runtime import Gateway
from gateway.tsdb.base import Sample
from gateway.tsdb.influx import to_line
from gateway.web.consoles import metrics_for
from tests.conftest import PASSWORD, seed_small, settings_for
from tests.helpers import Staff, device, login
from tests.test_provlarm import confirm_everything

ROOT = Path(__file__).resolve().parent.parent
GRAFANA = ROOT / "dashboards" / "grafana"
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TIMEOUT_MS = 15_000
SECRET_PLAN = "Nyckel under mattan HEMLIG"

# The simulated fleet: an alarm unit, a temperature sensor and a fall detector.
FLEET = [
    {"id": "con-alarm-1", "type": "alarm_unit"},
    {"id": "con-temp-1", "type": "temperature"},
    {"id": "con-fall-1", "type": "fall"},
]
FLEET_IDS = [d["id"] for d in FLEET]
# Provisioned but never heard from, with a short interval: it goes offline at once.
SILENT = "con-silent-1"


def seed(org: OrgStore) -> None:
    """The small seed, a lead and an administrator, and the fleet's devices."""
    seed_small(org)
    password_hash = org.staff["tove"].password_hash
    org.put_staff(StaffMember("lena", "lena", "Lena Lead", "lead", ("team-a",), password_hash))
    org.put_staff(StaffMember("ada", "ada", "Ada Admin", "admin", (), password_hash))
    org.put_recipient(RecipientInfo("r-con", "Greta Gran", "Lindvägen 5", "team-a",
                                    entry_info="Kod 1234", action_plan=SECRET_PLAN))
    for entry in FLEET:
        org.put_device(DeviceInfo(entry["id"], entry["type"], "r-con", model="sim"))
    org.put_device(DeviceInfo(SILENT, "alarm_unit", "r-con", heartbeat_s=0.5))


@contextlib.asynccontextmanager
async def console_gateway(
    broker: tuple[str, int], data_dir: Path, prefix: str, **overrides: Any
) -> AsyncIterator[Gateway]:
    """A seeded gateway with the console router, wired as the runtime is asked to."""
    org = OrgStore(data_dir / "org.sqlite3")
    if org.is_empty():
        seed(org)
    try:
        gw = Gateway(settings_for(data_dir, broker, prefix, **overrides), org=org)
        async with gw:
            await asyncio.wait_for(gw.wait_connected(), 10)
            yield gw
    finally:
        org.close()


def sim_fleet(broker: tuple[str, int], prefix: str) -> Fleet:
    return Fleet(specs_from_devices(FLEET), port=broker[1], prefix=prefix, heartbeat_s=0.5,
                 telemetry_s=0.3, resend=Backoff(0.2, 1.0))


async def until(condition: Callable[[], Awaitable[bool]], timeout: float = 15) -> None:
    """Wait for a server-side condition (polled; not a sleep for correctness)."""
    async with asyncio.timeout(timeout):
        while not await condition():
            await asyncio.sleep(0.05)


async def fleet_reported(gw: Gateway, tove: Staff) -> None:
    """Every simulated device heard (firmware and signal), telemetry stored, SILENT offline."""

    async def ready() -> bool:
        for device_id in FLEET_IDS:
            seen = gw.devices.get(device_id)
            if seen is None or seen.firmware is None or seen.rssi is None:
                return False
        if not gw.watch.supervisor.is_offline(SILENT):
            return False
        detail = (await tove.get("/console/devices/con-temp-1")).json()
        return any(s["metric"] == "temperature" and len(s["points"]) >= 3
                   for s in detail["telemetry"])

    await until(ready, 20)


async def work_an_alarm(gw: Gateway, broker: tuple[str, int], prefix: str, base: str) -> None:
    """dev-a (team-a) raises an alarm; anna accepts it and registers on site."""
    async with device(broker, prefix, "dev-a") as dev:
        await dev.alarm("con-1", "fall")
        assert (await dev.wait_ack("con-1"))["status"] == "stored"
    alarm = gw.core.find("dev-a", "con-1")
    assert alarm is not None
    anna = await login(base, "anna")
    for step in ("accept", "on-site"):
        response = await anna.post(f"/alarms/{alarm.id}/{step}")
        assert response.status_code == 200, response.text
    await anna.http.aclose()


# -- the API -----------------------------------------------------------------------------------


@pytest.mark.network
async def test_console_and_ops_api_by_role(
    mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> None:
    async with console_gateway(mosquitto, tmp_path / "gw", prefix) as gw, \
            sim_fleet(mosquitto, prefix) as fleet:
        base = f"http://127.0.0.1:{gw.http_port}"
        anna, tove, lena, ada = [await login(base, u) for u in ("anna", "tove", "lena", "ada")]
        await fleet_reported(gw, tove)
        await work_an_alarm(gw, mosquitto, prefix, base)

        # Roles: staff get nothing; technicians the console; leads the ops view; admins both.
        for path in ("/console/fleet", "/console/devices/con-temp-1", "/ops/summary"):
            assert (await anna.get(path)).status_code == 403, path
        assert (await tove.get("/ops/summary")).status_code == 403
        assert (await lena.get("/console/fleet")).status_code == 403
        assert (await ada.get("/console/fleet")).status_code == 200
        assert (await ada.get("/ops/summary")).status_code == 200
        async with Staff(base, "not-a-token").http as anonymous:
            assert (await anonymous.get("/api/v1/console/fleet")).status_code == 401
        assert (await tove.get("/console/devices/nope")).status_code == 404

        # The fleet matches the simulation.
        response = await tove.get("/console/fleet")
        assert response.status_code == 200
        assert SECRET_PLAN not in response.text and "Kod 1234" not in response.text
        body = response.json()
        rows = {d["id"]: d for d in body["devices"]}
        assert set(rows) == set(gw.org.devices)
        sims = {d.device_id: d for d in fleet.specs}
        for device_id in FLEET_IDS:
            row = rows[device_id]
            assert row["state"] == "online"
            assert row["firmware"] == sims[device_id].model.firmware
            assert row["rssi"] is not None and row["last_seen"] is not None
            assert set(row["recipient"]) == {"id", "name", "address"}
            assert row["recipient"]["name"] == "Greta Gran"
        assert rows["con-fall-1"]["battery"] is not None
        assert rows[SILENT]["state"] == "offline"
        assert rows["sim-000"]["state"] == "unknown"
        # dev-a raised the alarm above: it was heard too.
        assert body["counts"]["online"] == len(FLEET_IDS) + 1
        online = (await tove.get("/console/fleet", params={"state": "online"})).json()
        assert sorted(d["id"] for d in online["devices"]) == sorted([*FLEET_IDS, "dev-a"])
        search = (await tove.get("/console/fleet", params={"q": "lindvägen", "type": "fall"})).json()
        assert [d["id"] for d in search["devices"]] == ["con-fall-1"]

        # Device detail: telemetry straight from the sink, no action plan.
        response = await tove.get("/console/devices/con-temp-1")
        assert SECRET_PLAN not in response.text
        detail = response.json()
        assert [s["metric"] for s in detail["telemetry"]] == list(metrics_for("temperature"))
        temperature = detail["telemetry"][0]["points"]
        stored = await gw.telemetry.query("con-temp-1", "temperature", 0,
                                          int(time.time() * 1000) + 1, 5000)
        assert temperature
        assert dict(temperature).items() <= dict(stored).items()
        assert detail["e2e"]["device_id"] == "con-temp-1"
        silent = (await tove.get(f"/console/devices/{SILENT}")).json()
        assert silent["state"] == "offline"
        assert any(a["ref"].startswith("offline.") for a in silent["technical_alarms"])

        # Ops: lena sees team-a's alarm, its response times and the offline device.
        summary = (await lena.get("/ops/summary", params={"hours": 1})).json()
        assert summary["target_s"] == 1800
        assert summary["by_type"].get("fall") == 1
        assert sum(summary["by_hour"]) == 1
        assert summary["response"]["accepted"]["count"] == 1
        on_site = summary["response"]["on_site"]
        assert on_site["count"] == 1 and on_site["within_target"] == 1
        assert on_site["counts"][0] == 1
        assert summary["response"]["on_site_share"] == 1.0
        assert summary["response"]["on_site_target"] == {
            "n": 1, "within": 1, "missed": 0, "missed_open": 0, "pending": 0}
        assert any(a["device_id"] == SILENT for a in summary["technical_open"])
        supervision = summary["supervision"]
        assert supervision["offline"] >= 1
        assert supervision["watched"] == len(gw.org.devices)
        for staff in (anna, tove, lena, ada):
            await staff.http.aclose()


# -- the pages in Chromium --------------------------------------------------------------------

browser_only = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (never Playwright's own download)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            await chromium.close()


async def desktop(browser: Browser, gw: Gateway) -> Page:
    context = await browser.new_context(
        viewport={"width": 1280, "height": 900}, locale="sv-SE",
        base_url=f"http://127.0.0.1:{gw.http_port}",
    )
    context.set_default_timeout(TIMEOUT_MS)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.errors = errors  # type: ignore[attr-defined]
    return page


async def log_in(page: Page, path: str, username: str) -> None:
    await page.goto(path)
    await expect(page.get_by_role("heading", name="Logga in")).to_be_visible()
    await page.get_by_label("Användarnamn").fill(username)
    await page.get_by_label("Lösenord").fill(PASSWORD)
    await page.get_by_role("button", name="Logga in").click()


async def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"consoles-{name}.png"), full_page=True)


@pytest.mark.network
@browser_only
async def test_technician_console_in_chromium(
    browser: Browser, mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> None:
    async with console_gateway(mosquitto, tmp_path / "gw", prefix,
                               provlarm={"delivery_timeout_s": 10}) as gw, \
            sim_fleet(mosquitto, prefix):
        base = f"http://127.0.0.1:{gw.http_port}"
        tove, anna = await login(base, "tove"), await login(base, "anna")
        await fleet_reported(gw, tove)
        page = await desktop(browser, gw)

        # Staff cannot get in.
        await log_in(page, "/console/", "anna")
        await expect(page.locator("#login-error")).to_contain_text("inte för din roll")

        await page.get_by_label("Användarnamn").fill("tove")
        await page.get_by_role("button", name="Logga in").click()
        rows = page.locator("#fleet-body tr[data-device-id]")
        await expect(rows).to_have_count(len(gw.org.devices))
        for device_id in FLEET_IDS:
            row = page.locator(f'#fleet-body tr[data-device-id="{device_id}"]')
            await expect(row).to_have_attribute("data-state", "online")
        silent_row = page.locator(f'#fleet-body tr[data-device-id="{SILENT}"]')
        await expect(silent_row).to_have_attribute("data-state", "offline")
        await expect(silent_row).to_contain_text("Greta Gran")
        await shot(page, "console-fleet")

        # Filters: state, type, then free text.
        fleet_view = page.locator("#fleet-view")
        await fleet_view.get_by_label("Läge").select_option("online")
        await expect(rows).to_have_count(len(FLEET_IDS))
        await fleet_view.get_by_label("Typ").select_option("fall")
        await expect(rows).to_have_count(1)
        await fleet_view.get_by_label("Läge").select_option("")
        await fleet_view.get_by_label("Typ").select_option("")
        await fleet_view.get_by_label("Sök").fill("con-temp")
        await expect(rows).to_have_count(1)
        await expect(rows.first).to_have_attribute("data-device-id", "con-temp-1")
        await shot(page, "console-filtered")

        # Detail with a telemetry plot.
        await rows.first.get_by_role("button", name="con-temp-1").click()
        await expect(page.locator("#detail-view")).to_be_visible()
        await expect(page.locator("#detail-title")).to_contain_text("con-temp-1")
        plot = page.locator('#plots figure[data-metric="temperature"] svg.sparkline polyline')
        await expect(plot).to_have_count(1)
        assert len((await plot.get_attribute("points") or "").split()) >= 3
        await shot(page, "console-device")

        # The live end-to-end test of the alarm unit, with anna's phone confirming receipt.
        phone = asyncio.create_task(confirm_everything(anna), name="anna's phone")
        try:
            await page.get_by_role("button", name="Alla enheter").click()
            await fleet_view.get_by_label("Sök").fill("con-alarm-1")
            await page.get_by_role("button", name="con-alarm-1").click()
            await expect(page.locator("#detail-title")).to_contain_text("con-alarm-1")
            await page.get_by_role("button", name="Skicka provlarm").click()
            stage = page.locator('#e2e-stages li[data-stage="command"]')
            await expect(stage).to_have_attribute("data-state", "done")
            result = page.locator('#e2e-stages li[data-stage="result"]')
            await expect(result).to_have_attribute("data-state", "done", timeout=20_000)
            for key in ("stored", "routed", "delivered"):
                await expect(page.locator(f'#e2e-stages li[data-stage="{key}"]')
                             ).to_have_attribute("data-state", "done")
            await expect(page.locator("#e2e-result")).to_contain_text("hela kedjan")
            await shot(page, "console-e2e-passed")
        finally:
            phone.cancel()
            await asyncio.gather(phone, return_exceptions=True)
        assert not page.errors, page.errors  # type: ignore[attr-defined]
        for staff in (tove, anna):
            await staff.http.aclose()


@pytest.mark.network
@browser_only
async def test_ops_dashboard_in_chromium(
    browser: Browser, mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> None:
    async with console_gateway(mosquitto, tmp_path / "gw", prefix) as gw, \
            sim_fleet(mosquitto, prefix):
        base = f"http://127.0.0.1:{gw.http_port}"
        tove = await login(base, "tove")
        await fleet_reported(gw, tove)
        await work_an_alarm(gw, mosquitto, prefix, base)
        page = await desktop(browser, gw)
        await log_in(page, "/ops/", "lena")
        await expect(page.locator("#ops-view")).to_be_visible()
        for panel in ("types", "hours", "accepted", "onsite", "supervision"):
            await expect(page.locator(f"#panel-{panel} svg.chart")).to_have_count(1)
        await expect(page.locator('#panel-types rect.bar[data-label^="Fall"]')
                     ).to_have_attribute("data-value", "1")
        await expect(page.locator("#panel-hours rect.bar")).to_have_count(24)
        await expect(page.locator("#panel-onsite line.target")).to_have_count(1)
        await expect(page.locator("#panel-onsite .target-label")).to_contain_text("30 min")
        await expect(page.locator("#panel-onsite rect.bar").first
                     ).to_have_attribute("data-count", "1")
        await expect(page.locator("#technical-body")).to_contain_text(SILENT)
        # Plots are images with a name for screen readers.
        labelled = await page.locator("svg.chart").evaluate_all(
            "svgs => svgs.every(s => s.getAttribute('role') === 'img'"
            " && s.querySelector('title').textContent.length > 0)")
        assert labelled
        # Touch targets: every button, select and input at least 44 px high.
        small = await page.locator("button:visible, select:visible, input:visible").evaluate_all(
            "els => els.filter(e => e.getBoundingClientRect().height < 44).map(e => e.id)")
        assert not small, small
        await shot(page, "ops")
        assert not page.errors, page.errors  # type: ignore[attr-defined]
        await tove.http.aclose()


@pytest.mark.network
@browser_only
async def test_ops_dashboard_refreshes_its_token_and_logs_out(
    browser: Browser, mosquitto: tuple[str, int], tmp_path: Path, prefix: str
) -> None:
    """The ops page (like the console) keeps access and refresh token for its tab: a 401
    refreshes once and carries on, a refused refresh shows the login with the reason, and
    logging out revokes the session."""
    async with console_gateway(mosquitto, tmp_path / "gw", prefix) as gw:
        page = await desktop(browser, gw)
        await log_in(page, "/ops/", "lena")
        await expect(page.locator("#ops-view")).to_be_visible()
        key = "trygg.ops.session"
        first = json.loads(await page.evaluate("k => sessionStorage.getItem(k)", key))
        assert first["refresh_token"]

        # The access token stops working (as after it expired): one refresh, then the data.
        await page.evaluate("""k => sessionStorage.setItem(k, JSON.stringify(
            { ...JSON.parse(sessionStorage.getItem(k)), access_token: "not-a-token" }))""", key)
        await page.reload()
        await expect(page.locator("#ops-view")).to_be_visible()
        await expect(page.locator("#updated")).to_contain_text("Uppdaterad")
        second = json.loads(await page.evaluate("k => sessionStorage.getItem(k)", key))
        assert second["refresh_token"] != first["refresh_token"]
        assert gw.tokens.check(second["access_token"]) == "lena"

        # Logging out revokes the session: its refresh token is refused afterwards.
        await page.get_by_role("button", name="Logga ut").click()
        await expect(page.locator("#login-view")).to_be_visible()
        assert await page.evaluate("k => sessionStorage.getItem(k)", key) is None
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.http_port}") as client:
            refused = await client.post("/api/v1/auth/refresh",
                                        json={"refresh_token": second["refresh_token"]})
        assert refused.status_code == 401

        # A session whose refresh token is refused ends on the login screen, saying why.
        await log_in(page, "/ops/", "lena")
        await expect(page.locator("#ops-view")).to_be_visible()
        await page.evaluate("""k => sessionStorage.setItem(k, JSON.stringify({ ...JSON.parse(
            sessionStorage.getItem(k)), access_token: "not-a-token", refresh_token: "spent" }))""",
                            key)
        await page.reload()
        await expect(page.locator("#login-view")).to_be_visible()
        await expect(page.locator("#login-error .sv")).to_have_text(
            "Sessionen har gått ut – logga in igen")
        # Swedish first; the English is there for whoever switches language.
        await expect(page.locator("#login-error .en")).to_be_hidden()


# -- Grafana ----------------------------------------------------------------------------------


def grafana(name: str) -> dict[str, Any]:
    body: dict[str, Any] = json.loads((GRAFANA / name).read_text(encoding="utf-8"))
    return body


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [p for p in found if p.get("type") != "row"]


@pytest.mark.parametrize("name", ["telemetry.json", "gateway.json"])
def test_grafana_dashboards_parse_and_have_targets(name: str) -> None:
    dashboard = grafana(name)
    assert dashboard["title"] and dashboard["uid"]
    assert isinstance(dashboard["schemaVersion"], int)
    found = panels(dashboard)
    assert found
    ids = [p["id"] for p in found]
    assert len(ids) == len(set(ids))
    for panel in found:
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"].startswith("${")
        for target in panel["targets"]:
            assert target.get("query") or target.get("expr"), panel["title"]


def _line_parts(line: str) -> tuple[str, set[str], set[str]]:
    head, fields, _ts = line.split(" ")
    measurement, *tags = head.split(",")
    return (measurement, {t.split("=")[0] for t in tags},
            {f.split("=")[0] for f in fields.split(",")})


def test_grafana_telemetry_queries_match_what_the_influx_sink_writes() -> None:
    """Measurements, tag and fields in the Flux queries are those ``to_line`` writes."""
    dashboard = grafana("telemetry.json")
    queries = [t["query"] for p in panels(dashboard) for t in p["targets"]]
    written: dict[str, tuple[set[str], set[str]]] = {}
    for metric in ("temperature", "battery", "motion", "door_open", "bed_occupied", "smoke",
                   "water"):
        measurement, tags, fields = _line_parts(to_line(Sample("d1", metric, 1.5, "u", 1, 2)))
        written[measurement] = (tags, fields)
    accel, tags, fields = _line_parts(to_line(Sample("d1", "accel", (0.1, 0.2, 0.3), "g", 1, 2)))
    written[accel] = (tags, fields)
    magnitude = _line_parts(to_line(Sample("d1", "accel", (0.1, 0.2), None, 1, 2), "magnitude"))
    written_fields = {f for _, fs in written.values() for f in fs} | magnitude[2]
    used_measurements = set()
    for query in queries:
        assert 'from(bucket: "${bucket}")' in query
        for measurement in written:
            if f'r._measurement == "{measurement}"' in query:
                used_measurements.add(measurement)
        for field in (part.split('"')[1] for part in query.split('r._field == ')[1:]):
            assert field in written_fields, field
        if "device_id" in query:
            assert "device_id" in written["temperature"][0]
    assert {"temperature", "battery", "accel"} <= used_measurements
    # The device variable lists the device_id tag values the sink writes.
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert 'tag: "device_id"' in variables["device"]["query"]
    assert "bucket" in variables


def test_grafana_gateway_dashboard_uses_exported_metrics() -> None:
    """Every metric the gateway dashboard queries is one ``/metrics`` exports."""
    from prometheus_client import Counter, generate_latest

    from gateway.metrics import Metrics, Totals

    metrics = Metrics(lambda: {"open": 1},
                      totals=lambda: Totals(push=(("sent", 1),), provlarm=(("passed", 1),)),
                      devices=lambda: {("alarm_unit", "t", "online"): 1})
    # Registered by the SMS service when [sms] is configured.
    Counter("trygg_sms_events", "SMS", ["event"], registry=metrics.registry).labels("sent").inc()
    metrics.response.labels(hop="on_site", team="t").observe(12)
    metrics.ingest.labels(channel="alarm").inc()
    metrics.acks.labels(status="stored").inc()
    metrics.rejects.labels(reason="x").inc()
    metrics.staff_actions.labels(action="accept", outcome="ok").inc()
    exported = {line.split("{")[0].split(" ")[0]
                for line in generate_latest(metrics.registry).decode().splitlines()
                if line and not line.startswith("#")}
    dashboard = grafana("gateway.json")
    for panel in panels(dashboard):
        for target in panel["targets"]:
            names = {word for word in _words(target["expr"])
                     if word.startswith(("trygg_", "process_", "python_"))}
            assert names, target["expr"]
            assert names <= exported, names - exported


def _words(expr: str) -> list[str]:
    out, word = [], ""
    for ch in expr:
        if ch.isalnum() or ch == "_":
            word += ch
        else:
            if word:
                out.append(word)
            word = ""
    if word:
        out.append(word)
    return out
