"""The staff app on a phone through a night shift (issue 19, points 1–5), in Debian's Chromium.

A real gateway on the real Mosquitto with a municipal-looking organisation (names, addresses,
phone numbers); devices raise alarms over MQTT. Each test is one point of the issue:
priority and waiting time on compact cards, names and local times instead of ids, forward /
take over / call, the close form and axe-core, and Swedish first with English on request.
Every wait is on a selector or a server-side condition. Screenshots of the phone views go
to ``test-artifacts/night-*.png`` (the ones in docs/img/ were taken from these).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiomqtt
import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect

from alarms.events import AlarmReceived
from alarms.model import Alarm, AlarmType
from gateway.auth import hash_password
from gateway.demo import STREETS, demo_name
from gateway.ids import new_alarm_id
from gateway.org import DeviceInfo, OrgStore, RecipientInfo, StaffMember, Team
from gateway.runtime import Gateway
from gateway.views import iso
from tests.axe import assert_accessible
from tests.conftest import _HASH, PASSWORD, settings_for
from tests.helpers import login
from tests.test_browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, TIMEOUT_MS, until

STHLM = ZoneInfo("Europe/Stockholm")
PLAN = "Ring först. Diabetes: kontrollera blodsocker."
HOMES = 40  # recipients of team Norr, one alarm unit each

pytestmark = [
    pytest.mark.network,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="needs Debian's chromium at /usr/bin/chromium (apt-get install chromium)",
    ),
]


def phone_of(n: int) -> str:
    """Numbers from the range the Swedish regulator keeps for fiction (070-174 06 05–99)."""
    return f"+4670174{605 + n:04d}"


def seed_night(org: OrgStore) -> None:
    """Two teams, their staff, a technician, forty homes of team Norr, one of Söder."""
    if not _HASH:
        _HASH.append(hash_password(PASSWORD))
    password = _HASH[0]
    org.put_team(Team("team-norr", "Hemtjänst Norr"))
    org.put_team(Team("team-soder", "Hemtjänst Söder"))
    for sid, name, role, teams in (
        ("anna", "Anna Lindqvist", "staff", ("team-norr",)),
        ("erik", "Erik Johansson", "staff", ("team-norr",)),
        ("sara", "Sara Nilsson", "lead", ("team-norr",)),
        ("omar", "Omar Hassan", "staff", ("team-soder",)),
        ("tove", "Tove Tekniker", "technician", ()),
    ):
        org.put_staff(StaffMember(sid, sid, name, role, teams, password))
    for n in range(1, HOMES + 1):
        org.put_recipient(RecipientInfo(
            f"r-{n:02d}", demo_name(n - 1), f"{STREETS[n % len(STREETS)]} {n * 3}", "team-norr",
            entry_info=f"Nyckelgömma kod {1000 + n * 7}", action_plan=PLAN, phone=phone_of(n)))
        org.put_device(DeviceInfo(f"alarm-{n:02d}", "alarm_unit", f"r-{n:02d}"))
    org.put_device(DeviceInfo("temp-01", "temperature", "r-01"))
    org.put_recipient(RecipientInfo("r-s1", "Sixten Söder", "Södergatan 1", "team-soder"))
    org.put_device(DeviceInfo("alarm-s1", "alarm_unit", "r-s1"))


@asynccontextmanager
async def night_gateway(
    broker: tuple[str, int], data_dir: Path, prefix: str, **overrides: Any
) -> AsyncIterator[Gateway]:
    org = OrgStore(data_dir / "org.sqlite3")
    if org.is_empty():
        seed_night(org)
    try:
        async with Gateway(settings_for(data_dir, broker, prefix, **overrides), org=org) as gw:
            await asyncio.wait_for(gw.wait_connected(), 10)
            yield gw
    finally:
        org.close()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (never Playwright's own download)."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def night(mosquitto: tuple[str, int], tmp_path: Path, prefix: str) -> AsyncIterator[Gateway]:
    async with night_gateway(mosquitto, tmp_path / "gw", prefix) as gw:
        yield gw


async def phone(browser: Browser, gw: Gateway, **options: Any) -> BrowserContext:
    """A phone: 390×844, touch, Swedish locale."""
    options.setdefault("locale", "sv-SE")
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True,
        base_url=f"http://127.0.0.1:{gw.http_port}", **options)
    context.set_default_timeout(TIMEOUT_MS)
    return context


async def open_app(context: BrowserContext, username: str = "anna") -> Page:
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.errors = errors  # type: ignore[attr-defined]
    await page.goto("/app/")
    await page.get_by_label("Användarnamn").fill(username)
    await page.get_by_label("Lösenord").fill(PASSWORD)
    await page.get_by_role("button", name="Logga in").click()
    await expect(page.locator("#conn.on")).to_be_visible()
    return page


async def shot(page: Page, name: str, *, full: bool = False) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / f"night-{name}.png"), full_page=full)


async def raise_alarms(
    broker: tuple[str, int], prefix: str, alarms: Sequence[tuple[str, str, str, float]]
) -> None:
    """Devices publish alarms (device, ref, type, age in seconds); returns once all are acked."""
    pending = {(device, ref) for device, ref, _, _ in alarms}
    async with aiomqtt.Client(broker[0], broker[1],
                              identifier=f"night-{uuid.uuid4().hex[:8]}") as client:
        await client.subscribe(f"{prefix}/+/ack", qos=1)
        now_ms = int(time.time() * 1000)
        for device, ref, kind, age in alarms:
            body = {"ref": ref, "ts": now_ms - int(age * 1000), "type": kind}
            await client.publish(f"{prefix}/{device}/alarm", json.dumps(body), qos=1)
        async with asyncio.timeout(20):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                ack = json.loads(message.payload)
                assert ack["status"] == "stored", ack
                pending.discard((str(message.topic).split("/")[-2], ack["ref"]))
                if not pending:
                    break


def the_alarm(gw: Gateway, device: str, ref: str) -> Alarm:
    alarm = gw.core.find(device, ref)
    assert alarm is not None, (device, ref)
    return alarm


async def technical(gw: Gateway, device: str, ref: str, detail: str) -> Alarm:
    """A technical alarm the gateway raises itself (as supervision does)."""
    await gw.submit_internal(AlarmReceived(device, ref, AlarmType.TECHNICAL,
                                           int(time.time() * 1000), new_alarm_id(), detail=detail))
    await until(lambda: gw.core.find(device, ref) is not None)  # journaled, then applied
    return the_alarm(gw, device, ref)


def local(at: float, fmt: str = "%H:%M:%S") -> str:
    return datetime.fromtimestamp(at, STHLM).strftime(fmt)


def since_text(at: float) -> str:
    """How a past moment reads in a sentence: ``23:55``, or ``5/12 23:55`` once Stockholm's
    day has turned since (an hour ago is yesterday between 00:00 and 01:00)."""
    moment = datetime.fromtimestamp(at, STHLM)
    if moment.date() == datetime.now(STHLM).date():
        return moment.strftime("%H:%M")
    return f"{moment.day}/{moment.month} {moment.strftime('%H:%M')}"


ISO_UTC = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}")


# -- 1. which alarm is most urgent ------------------------------------------------------------


async def test_cards_show_priority_type_and_live_waiting_time_with_care_apart(
    browser: Browser, night: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    gw = night
    context = await phone(browser, gw)
    page = await open_app(context)
    # 36 open care alarms as on the night in the issue: fire and water, buttons and falls,
    # sensor risks; the oldest (the fire) raised 27 minutes ago, the rest since.
    kinds = ["smoke", "water"] + ["manual", "fall"] * 8 + ["bed_exit", "inactivity", "door"] * 6
    await raise_alarms(mosquitto, prefix, [
        (f"alarm-{n:02d}", f"n{n}", kind, 27 * 60 + 10 - (n - 1) * 30)
        for n, kind in enumerate(kinds, start=1)] + [("alarm-37", "t1", "test", 5)])
    since = time.time() - 600
    offline = await technical(gw, "alarm-38", f"offline.{int(since * 1000)}",
                              f"Enheten tyst sedan {iso(since)} / device silent since {iso(since)}")
    sensor = await technical(gw, "temp-01", "battery.1", "Batteri lågt / Battery low")

    care = page.locator("#alarm-list li[data-alarm-id]")
    await expect(care).to_have_count(36)
    await expect(page.locator("#technical-list li")).to_have_count(1)
    await expect(page.locator("#test-list li")).to_have_count(1)
    # Most urgent first: fire and water, then buttons and falls, then sensor risks; oldest
    # first within a priority.
    priorities = await care.evaluate_all("items => items.map(i => Number(i.dataset.priority))")
    assert priorities == sorted(priorities) and priorities[:2] == [1, 1], priorities
    first = care.first
    await expect(first).to_contain_text("Brandlarm")
    await expect(first.locator("time.wait")).to_have_text("27 min", use_inner_text=True)
    # Colour by priority (and a label for whoever cannot tell colours apart).
    colours = await page.evaluate("""() => [1, 2, 3].map(p => getComputedStyle(
        document.querySelector(`#alarm-list li.new.p${p}`)).backgroundColor)""")
    assert len(set(colours)) == 3, colours
    await expect(first.locator(".pnum")).to_have_text("P1")
    assert "Prio 1" in (await first.get_by_role("link").text_content() or "")
    # An icon on every card.
    assert await care.evaluate_all("items => items.every(i => i.querySelector('svg.icon'))")
    # Compact: at least nine cards fit on the phone's screen at once.
    visible = await care.evaluate_all(
        "items => items.filter(i => { const r = i.getBoundingClientRect();"
        " return r.top >= 0 && r.bottom <= window.innerHeight; }).length")
    assert visible >= 9, visible
    await expect(page.locator("#list-summary")).to_contain_text("36 ej hanterade av 36 öppna")
    await shot(page, "list")

    # The waiting time moves on by itself (the tick rewrites it; no reload, no new message).
    await first.locator("time.wait").evaluate(
        "el => { el.dataset.since = new Date(Date.now() - 45 * 60000).toISOString(); }")
    await expect(first.locator("time.wait")).to_have_text("45 min", timeout=20_000)

    # Technical and test alarms apart; the technical one in words, in Stockholm time; the
    # temperature sensor's battery is the technicians' business, not the care team's.
    tech = page.locator("#technical-list li")
    await expect(tech).to_have_attribute("data-alarm-id", offline.id)
    await expect(tech).to_contain_text(
        f"har inte hörts av sedan {since_text(since)}")
    assert not ISO_UTC.search(await page.locator("#alarms").inner_text())
    await expect(page.locator(f'li[data-alarm-id="{sensor.id}"]')).to_have_count(0)
    await expect(page.locator("#test-list li")).to_have_attribute("data-kind", "test")
    await page.locator("#test-list").scroll_into_view_if_needed()
    await shot(page, "list-groups")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    await context.close()


# -- 2. names instead of ids, local times, Swedish hop names ----------------------------------


async def test_names_and_stockholm_times_instead_of_ids(
    browser: Browser, night: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    gw = night
    # A phone whose clock is set to New York: the app still shows Stockholm's time.
    context = await phone(browser, gw, timezone_id="America/New_York")
    page = await open_app(context)
    await raise_alarms(mosquitto, prefix, [("alarm-02", "m1", "fall", 60)])
    alarm = the_alarm(gw, "alarm-02", "m1")
    erik = await login(f"http://127.0.0.1:{gw.http_port}", "erik")
    assert (await erik.post(f"/alarms/{alarm.id}/accept")).status_code == 200
    await erik.http.aclose()

    card = page.locator(f'#alarm-list li[data-alarm-id="{alarm.id}"]')
    await expect(card).to_contain_text("Hanteras – Erik Johansson")
    await card.get_by_role("link").click()
    detail = page.locator("#detail-view")
    await expect(detail).to_have_attribute("data-state", "handling")
    timeline = detail.locator("#timeline")
    alarm = the_alarm(gw, "alarm-02", "m1")
    routed = timeline.locator('li[data-hop="routed"]')
    await expect(routed).to_contain_text("Skickat till lag")
    await expect(routed).to_contain_text("Hemtjänst Norr")
    await expect(timeline.locator('li[data-hop="accepted"]')).to_contain_text("Erik Johansson")
    await expect(timeline.locator('li[data-hop="stored"]')).to_contain_text("systemet")
    await expect(timeline.locator('li[data-hop="delivered"]')).to_contain_text("Levererat")
    for hop in alarm.hops:
        await expect(timeline.locator(f'li[data-hop="{hop.hop.value}"] time')).to_have_text(
            local(hop.at))
    text = await detail.inner_text()
    for raw in (alarm.id, "team:", "team-norr", "erik", "staff-", "gateway"):
        assert raw not in text, (raw, text)
    assert not ISO_UTC.search(text)
    await expect(detail.locator("dd.device")).to_contain_text("Trygghetslarm")
    await shot(page, "detail", full=True)

    # A technical alarm: what is wrong, in words and in Stockholm time.
    since = time.time() - 3600
    offline = await technical(gw, "alarm-03", f"offline.{int(since * 1000)}",
                              f"Enheten tyst sedan {iso(since)} / device silent since {iso(since)}")
    await page.goto(f"/app/#/alarm/{offline.id}")
    what = page.locator("#detail-view .what-wrong")
    await expect(what).to_contain_text(
        f"Trygghetslarmet hos {demo_name(2)} har inte hörts av sedan {since_text(since)}")
    assert not ISO_UTC.search(await page.locator("#detail-view").inner_text())
    await shot(page, "technical")
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    await context.close()


# -- 3. forward, take over, call the recipient, who is logged in ------------------------------


async def test_forward_take_over_call_and_the_logged_in_name(
    browser: Browser, night: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    gw = night
    context = await phone(browser, gw)
    page = await open_app(context)
    # Whose phone this is, on the phone's own screen (phones are shared between shifts).
    await expect(page.locator("#who")).to_be_visible()
    await expect(page.locator("#who")).to_have_text("Inloggad: Anna Lindqvist", use_inner_text=True)

    await raise_alarms(mosquitto, prefix, [("alarm-05", "f1", "manual", 30)])
    alarm = the_alarm(gw, "alarm-05", "f1")
    await page.locator(f'li[data-alarm-id="{alarm.id}"] a').click()
    detail = page.locator("#detail-view")
    # Call the recipient: a tel: button right after the action plan ("Ring först").
    await expect(detail.locator("dd.plan")).to_contain_text("Ring först")
    call = detail.locator("dd.plan + dt + dd.phone a.call")
    await expect(call).to_have_attribute("href", f"tel:{phone_of(5)}")
    await expect(call).to_contain_text(f"Ring {demo_name(4)}")
    await expect(call).to_contain_text("070-174 06 10")

    await detail.get_by_role("button", name="Ta larmet").click()
    await expect(detail).to_have_attribute("data-state", "handling")
    await detail.get_by_role("button", name="Skicka vidare").click()
    form = page.locator("#forward-form")
    await expect(form).to_be_visible()
    choices = form.locator("label.choice")
    await expect(choices).to_have_count(2)  # Erik and Sara of team Norr, on duty
    await expect(form).to_contain_text("Erik Johansson")
    await expect(form).not_to_contain_text("Omar")  # another team
    await form.get_by_role("button", name="Skicka vidare").click()
    await expect(page.locator("#forward-error")).to_have_text("Välj en kollega.", use_inner_text=True)
    await form.get_by_label("Erik Johansson").check()
    await shot(page, "forward")
    await form.get_by_role("button", name="Skicka vidare").click()
    await expect(form).to_be_hidden()
    await until(lambda: the_alarm(gw, "alarm-05", "f1").owner == "erik")
    await expect(detail.locator(".detail-head")).to_contain_text("Hanteras – Erik Johansson")
    await expect(detail.locator('#timeline li[data-handover="forwarded"]')).to_contain_text(
        "Skickat vidare till Erik Johansson av Anna Lindqvist")

    # Take it back over.
    await detail.get_by_role("button", name="Ta över från Erik Johansson").click()
    await until(lambda: the_alarm(gw, "alarm-05", "f1").owner == "anna")
    await expect(detail.locator('#timeline li[data-handover="taken_over"]')).to_contain_text(
        "Övertaget av Anna Lindqvist")
    await expect(detail.get_by_role("button", name="På plats")).to_be_visible()
    assert not page.errors, page.errors  # type: ignore[attr-defined]
    await context.close()


# -- 4. the close form, contrast, axe-core -----------------------------------------------------


async def test_close_form_says_what_is_missing_in_its_own_words_and_axe_finds_nothing_serious(
    browser: Browser, night: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    gw = night
    context = await phone(browser, gw)
    page = await context.new_page()
    await page.goto("/app/")
    await expect(page.get_by_role("heading", name="Logga in")).to_be_visible()
    await assert_accessible(page, "login (sv)")
    await page.get_by_role("button", name="English").click()
    await assert_accessible(page, "login (en)")  # "Log in" on the button: contrast
    await page.get_by_role("button", name="Svenska").click()
    await page.get_by_label("Användarnamn").fill("anna")
    await page.get_by_role("button", name="Logga in").click()
    await expect(page.locator("#login-error")).to_contain_text("Fyll i användarnamn och lösenord")
    await expect(page.get_by_label("Lösenord")).to_have_attribute("aria-invalid", "true")
    await assert_accessible(page, "login with an error")
    await page.get_by_label("Lösenord").fill(PASSWORD)
    await page.get_by_role("button", name="Logga in").click()
    await expect(page.locator("#conn.on")).to_be_visible()

    await raise_alarms(mosquitto, prefix, [("alarm-07", "c1", "fall", 120),
                                           ("alarm-08", "c2", "smoke", 60),
                                           ("alarm-09", "c3", "test", 5)])
    await technical(gw, "alarm-10", f"offline.{int(time.time() * 1000) - 90_000}",
                    "Enheten tyst / device silent")
    await expect(page.locator("#alarms li")).to_have_count(4)
    await assert_accessible(page, "the list")

    alarm = the_alarm(gw, "alarm-07", "c1")
    await page.locator(f'li[data-alarm-id="{alarm.id}"] a').click()
    detail = page.locator("#detail-view")
    await assert_accessible(page, "an unhandled alarm")
    await detail.get_by_role("button", name="Ta larmet").click()
    await detail.get_by_role("button", name="Avsluta").click()
    form = page.locator("#close-form")
    await expect(form).to_be_visible()
    # One close button on screen, not two.
    closers = detail.get_by_role("button", name=re.compile("^Avsluta"))
    await expect(closers).to_have_count(1)
    await expect(closers).to_have_text("Avsluta larmet", use_inner_text=True)

    # No cause: the app's own Swedish message, under the causes, never the browser's bubble.
    await form.get_by_role("button", name="Avsluta larmet").click()
    error = page.locator("#close-error")
    await expect(error).to_have_text("Välj en orsak innan du avslutar.", use_inner_text=True)
    await expect(page.locator("#cause-set")).to_have_attribute("aria-invalid", "true")
    causes = await page.locator("#cause-set").bounding_box()
    message = await error.bounding_box()
    assert causes is not None and message is not None
    assert message["y"] >= causes["y"] + causes["height"], (causes, message)
    assert await form.evaluate("f => f.noValidate && f.checkValidity()")
    await expect(detail).to_have_attribute("data-state", "handling")  # nothing was sent
    await shot(page, "close-form")
    await assert_accessible(page, "the close form with its error")

    await form.get_by_label("hjälp given").check()
    await expect(error).to_be_empty()
    await form.get_by_role("button", name="Avsluta larmet").click()
    await expect(detail).to_have_attribute("data-state", "done")
    await until(lambda: the_alarm(gw, "alarm-07", "c1").cause == "hjälp given")
    await assert_accessible(page, "a closed alarm")
    await page.get_by_role("button", name="English").click()
    await page.get_by_role("button", name="Back").click()
    await assert_accessible(page, "the list in English")
    await context.close()


# -- 5. Swedish first, English on request -----------------------------------------------------


async def test_swedish_first_with_a_choice_of_english_that_sticks(
    browser: Browser, night: Gateway, mosquitto: tuple[str, int], prefix: str
) -> None:
    gw = night
    context = await phone(browser, gw)
    page = await context.new_page()
    await page.goto("/app/")
    assert await page.evaluate("document.documentElement.lang") == "sv"
    # One language at a time: the button is named "Logga in", not "Logga in / Log in".
    await expect(page.get_by_role("button", name="Logga in", exact=True)).to_be_visible()
    await expect(page.locator("#login-title .en")).to_be_hidden()
    await expect(page.get_by_text("Log in", exact=True).first).to_be_hidden()
    await shot(page, "login")

    await page.get_by_role("button", name="English").click()
    assert await page.evaluate("document.documentElement.lang") == "en"
    await expect(page.get_by_role("button", name="Log in", exact=True)).to_be_visible()
    await expect(page.get_by_role("heading", name="Log in", exact=True)).to_be_visible()
    await expect(page.locator("#login-title .sv")).to_be_hidden()
    await page.get_by_label("Username").fill("anna")
    await page.get_by_label("Password").fill(PASSWORD)
    await page.get_by_role("button", name="Log in", exact=True).click()
    await expect(page.locator("#conn.on")).to_have_text("Online", use_inner_text=True)
    await raise_alarms(mosquitto, prefix, [("alarm-11", "l1", "manual", 60)])
    alarm = the_alarm(gw, "alarm-11", "l1")
    card = page.locator(f'li[data-alarm-id="{alarm.id}"]')
    await expect(card.locator(".type")).to_have_text(re.compile(r"^Alarm button"), use_inner_text=True)
    await expect(card.locator(".badge")).to_have_text("Unhandled", use_inner_text=True)
    await expect(page.locator("#who")).to_have_text("Logged in: Anna Lindqvist", use_inner_text=True)

    # The choice is this phone's: it survives a reload.
    await page.reload()
    await expect(page.locator("#conn.on")).to_have_text("Online", use_inner_text=True)
    await expect(card.locator(".type")).to_have_text(re.compile(r"^Alarm button"), use_inner_text=True)
    await card.get_by_role("link").click()
    await expect(page.get_by_role("button", name="Accept", exact=True)).to_be_visible()
    await expect(page.locator('#timeline li[data-hop="routed"] .hop')).to_have_text("Routed", use_inner_text=True)
    await shot(page, "english")
    await page.get_by_role("button", name="Svenska").click()
    await expect(page.get_by_role("button", name="Ta larmet", exact=True)).to_be_visible()
    await expect(page.locator('#timeline li[data-hop="routed"] .hop')).to_have_text(
        "Skickat till lag", use_inner_text=True)
    await context.close()
