// trygg staff app: login, live alarm list, alarm detail and actions, offline handling, push.
// Plain ES modules, no build step. Swedish first; English when the user picks it.
import { AlarmStore, stateOf } from "./js/alarms.js";
import { alertNewAlarm, unlockAudio } from "./js/alert.js";
import { Api } from "./js/api.js";
import { $, bi, clock, h, hhmm, initLang, onLang, pick, tr, waited } from "./js/dom.js";
import { kvDelete } from "./js/idb.js";
import {
  CAUSES, HANDOVERS, STATES, deviceTypeLabel, hopLabel, kindOf, phoneText, priorityLabel, typeLabel,
} from "./js/i18n.js";
import { icon } from "./js/icons.js";
import { Live } from "./js/live.js";
import * as push from "./js/push.js";
import { EXPIRED, RefreshRefused, Session, sharedStore } from "./js/session.js";

// While an unhandled alarm waits, remind every 20 s: one beep is easy to miss in a car.
const REMIND_MS = 20_000;
const OFFLINE_TICK_MS = 5_000;
// Waiting times on the cards are whole minutes: a tick every 15 s keeps them at most that late.
const WAIT_TICK_MS = 15_000;

initLang();

const store = new AlarmStore();
// The session lives in IndexedDB, shared with the service worker (it posts push receipts
// and refreshes the token itself while the app is closed) and the app's other tabs.
const session = new Session(sharedStore, {
  lock: "trygg-auth", channel: "trygg-auth", onToken: (token) => live.renew(token), onEnd: (message) => logout(message),
});
const api = new Api(() => logout(EXPIRED), session);
const live = new Live({ message: onMessage, online: onOnline, authFailed: onSocketRefused });
let me = null;
let detail = null; // the alarm shown in the detail view (a copy survives a resync)
let signedIn = false;
let leaving = false; // logging out (a 401 meanwhile must not start another logout)
let socketRetried = false; // a refreshed token was refused by the socket as well

// -- session -----------------------------------------------------------------------------

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  unlockAudio();
  const form = event.target;
  const username = form.username.value.trim();
  const password = form.password.value;
  if (!username || !password) {
    $("login-error").replaceChildren(bi("Fyll i användarnamn och lösenord", "Enter username and password"));
    (username ? form.password : form.username).setAttribute("aria-invalid", "true");
    return;
  }
  form.username.removeAttribute("aria-invalid");
  form.password.removeAttribute("aria-invalid");
  $("login-error").textContent = "";
  try {
    await session.begin(await api.login(username, password));
    form.password.value = "";
    await start();
  } catch (error) {
    $("login-error").replaceChildren(error.status === 401
      ? bi("Fel användarnamn eller lösenord", "Wrong username or password")
      : bi(`Kunde inte logga in: ${error.message}`, `Could not log in: ${error.message}`));
  }
});

async function start() {
  signedIn = true;
  try {
    me = await api.get("/me");
    localStorage.setItem("trygg.me", JSON.stringify(me));
  } catch (error) {
    // Offline at start (the app shell came from the service worker): use who we were.
    if (error.status !== 0) return;
    me = JSON.parse(localStorage.getItem("trygg.me") || "null") || { id: null, name: "" };
  }
  if (!signedIn) return;
  showWho();
  $("login-view").hidden = true;
  $("logout").hidden = false;
  socketRetried = false;
  live.start(session.token);
  route();
  setupPushButton();
  push.resubscribe(api).then((on) => { if (on) pushStatus(bi("Aviseringar på", "Notifications on")); })
    .catch((error) => pushStatus(bi(`Aviseringar: ${error.message}`, `Notifications: ${error.message}`)));
}

/** Who is logged in, on every screen: a shared phone must say whose it is now. */
function showWho() {
  const name = me && (me.name || me.username || me.id);
  $("who").hidden = !name;
  $("who").replaceChildren(...(name ? [bi("Inloggad: ", "Logged in: "), h("strong", {}, name)] : []));
}

/** The socket refused its token (4401): refresh and reconnect, or the session is over. */
async function onSocketRefused(refused) {
  if (!signedIn) return;
  if (socketRetried) { logout(EXPIRED); return; }
  try {
    const renewed = await session.refresh(refused);
    socketRetried = true;
    live.start(renewed.access_token);
  } catch (error) {
    if (!(error instanceof RefreshRefused)) live.schedule(); // offline: back off, try again
  }
}

/** Back to the login screen. `message` empty: the user logged out; else why. */
async function logout(message = "") {
  if (leaving) return;
  if (!signedIn && !session.active) { showLogin(message); return; }
  leaving = true;
  signedIn = false;
  try {
    live.stop();
    if (session.active) {
      // Logged out here: stop pushes for this user on this phone (the gateway is told while
      // the token still works), then revoke the refresh token. A session that ended (refresh
      // refused, or logged out in another tab) keeps the subscription: a notification still
      // shows, and its receipt waits for a login.
      await push.disablePush(api);
      await session.logout();
    }
    localStorage.removeItem("trygg.me");
    showLogin(message);
  } finally {
    leaving = false;
  }
}

function showLogin(message) {
  me = null; detail = null;
  store.clear();
  $("login-view").hidden = false;
  $("list-view").hidden = true;
  $("detail-view").hidden = true;
  $("logout").hidden = true;
  $("offline").hidden = true;
  showWho();
  // Messages from js/session.js come as "svenska / English".
  const [sv, en] = (message || "").split(" / ");
  $("login-error").replaceChildren(...(message ? [en ? bi(sv, en) : message] : []));
  if (location.hash) history.replaceState(null, "", location.pathname);
}

$("logout").addEventListener("click", () => logout());
document.addEventListener("pointerdown", unlockAudio, { passive: true });
document.addEventListener("keydown", unlockAudio);

// -- the live feed -----------------------------------------------------------------------

function onMessage(message) {
  if (message.type === "alarm") {
    const alarm = message.alarm;
    const { fresh, changed } = store.upsert(alarm);
    if (alarm.state === "open" && !alarm.hops.some((hop) => hop.hop === "delivered")) live.receipt(alarm.id);
    if (fresh && stateOf(alarm) === "new" && !alarm.test) alertNewAlarm();
    if (detail && detail.id === alarm.id && changed) detail = store.get(alarm.id);
    if (changed) render();
  } else if (message.type === "sync") {
    store.sync(message.open);
    document.documentElement.dataset.synced = String(Date.now());
    render();
  }
}

function onOnline(online, since) {
  if (online) socketRetried = false;
  $("conn").replaceChildren(online ? bi("Ansluten", "Online") : bi("Frånkopplad", "Offline"));
  $("conn").className = `conn ${online ? "on" : "off"}`;
  document.documentElement.dataset.online = String(online);
  showOffline();
}

function showOffline() {
  const banner = $("offline");
  const show = signedIn && !live.online;
  banner.hidden = !show;
  if (!show) return;
  const minutes = Math.floor((Date.now() - live.offlineSince) / 60_000);
  const at = clock(live.offlineSince);
  const span = minutes ? ` (${minutes} min)` : "";
  $("offline-since").replaceChildren(bi(`sedan ${at}${span}`, `since ${at}${span}`));
}

setInterval(showOffline, OFFLINE_TICK_MS);
setInterval(() => {
  if (signedIn && store.unhandled().some((a) => !a.test)) alertNewAlarm();
}, REMIND_MS);

// -- views -------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
$("back").addEventListener("click", () => { location.hash = ""; });
onLang(() => render());
// The cards' waiting times move on by themselves (no re-render: the list stays still).
setInterval(tickWaits, WAIT_TICK_MS);

function route() {
  if (!signedIn) return;
  const match = location.hash.match(/^#\/alarm\/(.+)$/);
  if (match) openDetail(decodeURIComponent(match[1]));
  else { detail = null; $("detail-view").hidden = true; $("list-view").hidden = false; render(); }
}

function render() {
  const waiting = store.unhandled().filter((a) => kindOf(a) === "care").length;
  document.title = `${waiting ? `(${waiting}) ` : ""}trygg – larm`;
  if (!$("list-view").hidden) renderList();
  if (!$("detail-view").hidden && detail) renderDetail();
}

/** A name for a staff id: the alarm's own names first, then mine. */
function ownerName(alarm) {
  if (!alarm.owner) return "";
  if (me && alarm.owner === me.id) return me.name || alarm.owner;
  return alarm.owner_name || alarm.owner;
}

function stateBadge(alarm) {
  const state = stateOf(alarm);
  const [sv, en] = STATES[state];
  const owner = alarm.owner && state !== "done" ? ` – ${ownerName(alarm)}` : "";
  return h("span", { class: "badge" }, bi(sv + owner, en + owner));
}

function who(alarm) {
  if (kindOf(alarm) === "technical" && alarm.summary) return pick(alarm.summary);
  if (alarm.recipient) return `${alarm.recipient.name}, ${alarm.recipient.address}`;
  return alarm.detail || alarm.device_id;
}

function waitTime(alarm) {
  if (alarm.state !== "open") {
    const closed = alarm.hops[alarm.hops.length - 1];
    return h("time", { class: "wait", datetime: closed.at }, hhmm(closed.at));
  }
  return h("time", { class: "wait", datetime: alarm.raised_at, dataset: { since: alarm.raised_at },
    title: tr(`Utlöst ${hhmm(alarm.raised_at)}`, `Raised ${hhmm(alarm.raised_at)}`) }, waited(alarm.raised_at));
}

function tickWaits() {
  for (const el of document.querySelectorAll("time.wait[data-since]")) el.textContent = waited(el.dataset.since);
}

function card(alarm) {
  const [sv, en] = typeLabel(alarm.type);
  const state = stateOf(alarm);
  const kind = kindOf(alarm);
  const [psv, pen] = priorityLabel(alarm.priority);
  return h("li", {
    class: `alarm ${state} ${kind} p${alarm.priority}`,
    dataset: { alarmId: alarm.id, state, kind, priority: alarm.priority },
  },
  h("a", { class: "card", href: `#/alarm/${encodeURIComponent(alarm.id)}` },
    // The priority is in the colour, the order and in words (for the eye: P1 under the icon).
    h("span", { class: "mark" }, icon(kind === "care" ? alarm.type : kind),
      kind === "care" ? h("span", { class: "pnum", "aria-hidden": "true" }, `P${alarm.priority}`) : null),
    h("span", { class: "type" }, bi(sv, en),
      kind === "care" ? h("span", { class: "visually-hidden" }, ", ", bi(psv, pen), ",") : null),
    waitTime(alarm),
    h("span", { class: "who" }, who(alarm)),
    stateBadge(alarm)));
}

function renderList() {
  const alarms = store.list();
  const groups = { care: [], technical: [], test: [] };
  for (const alarm of alarms) groups[kindOf(alarm)].push(alarm);
  $("alarm-list").replaceChildren(...groups.care.map(card));
  $("technical-list").replaceChildren(...groups.technical.map(card));
  $("test-list").replaceChildren(...groups.test.map(card));
  $("technical-group").hidden = groups.technical.length === 0;
  $("test-group").hidden = groups.test.length === 0;
  // The care heading is only needed (for the eye) when other groups are shown too.
  $("care-title").className = groups.technical.length || groups.test.length ? "" : "visually-hidden";
  $("care-group").hidden = groups.care.length === 0 && alarms.length > 0;
  $("empty").hidden = alarms.length > 0;
  const open = groups.care.filter((a) => a.state === "open");
  const unhandled = open.filter((a) => stateOf(a) === "new").length;
  $("list-summary").replaceChildren(...(open.length
    ? [bi(`${unhandled} ej hanterade av ${open.length} öppna`, `${unhandled} unhandled of ${open.length} open`)]
    : []));
}

async function openDetail(id) {
  $("list-view").hidden = true;
  $("detail-view").hidden = false;
  $("action-error").textContent = "";
  resetCloseForm();
  resetForwardForm();
  detail = store.get(id) || null;
  if (!detail) {
    try { detail = await api.get(`/alarms/${encodeURIComponent(id)}`); } catch (error) {
      $("detail-body").replaceChildren(h("p", { class: "error" }, error.message));
      $("actions").replaceChildren();
      $("timeline").replaceChildren();
      return;
    }
  }
  renderDetail();
  $("detail-title")?.focus();
}

function field(sv, en, value, cls) {
  if (!value) return [];
  return [h("dt", {}, bi(sv, en)), h("dd", { class: cls }, value)];
}

// A mobile alarm's latest position: a map link (and geo: for the phone's maps app), with
// accuracy and age so staff know how far to trust it.
function positionField(position) {
  if (!position) return [];
  const accuracy = position.accuracy_m == null ? "" : ` ±${Math.round(position.accuracy_m)} m`;
  const age = Math.max(0, Math.round((Date.now() - new Date(position.at)) / 60000));
  return field("Position", "Position", h("span", {},
    h("a", { href: position.map_url, target: "_blank", rel: "noopener" }, bi("Karta", "Map")), " · ",
    h("a", { href: position.geo_uri }, "geo:"), `${accuracy}, ${age} min`), "position");
}

/** The recipient's phone, as a big call button (next to the action plan, which often says
 * "ring först" – call first). */
function phoneField(recipient) {
  if (!recipient.phone) return [];
  const number = phoneText(recipient.phone);
  return field("Telefon", "Phone", h("a", { class: "call", href: `tel:${recipient.phone}`, dataset: { phone: recipient.phone } },
    bi(`Ring ${recipient.name}`, `Call ${recipient.name}`), h("span", { class: "number" }, number)), "phone");
}

function deviceText(alarm) {
  const [sv, en] = deviceTypeLabel(alarm.device_type);
  return alarm.device_type ? bi(`${sv} (${alarm.device_id})`, `${en} (${alarm.device_id})`) : alarm.device_id;
}

function renderDetail() {
  const alarm = detail;
  const state = stateOf(alarm);
  const kind = kindOf(alarm);
  const [sv, en] = typeLabel(alarm.type);
  const [psv, pen] = priorityLabel(alarm.priority);
  const r = alarm.recipient || {};
  $("detail-view").dataset.alarmId = alarm.id;
  $("detail-view").dataset.state = state;
  $("detail-view").dataset.kind = kind;
  $("detail-body").replaceChildren(
    h("div", { class: `detail-head ${state} ${kind} p${alarm.priority}` },
      icon(kind === "care" ? alarm.type : kind),
      h("h2", { id: "detail-title", tabindex: "-1" }, bi(sv, en)),
      h("span", { class: "prio" }, bi(psv, pen)),
      h("span", {}, stateBadge(alarm), " · ", alarm.state === "open"
        ? bi(`väntat ${waited(alarm.raised_at)}, utlöst ${hhmm(alarm.raised_at)}`,
          `waited ${waited(alarm.raised_at)}, raised ${hhmm(alarm.raised_at)}`)
        : bi(`utlöst ${hhmm(alarm.raised_at)}`, `raised ${hhmm(alarm.raised_at)}`))),
    ...(alarm.summary ? [h("p", { class: "what-wrong" }, h("strong", {}, bi("Vad är fel: ", "What is wrong: ")),
      pick(alarm.summary))] : []),
    h("dl", { class: "facts" },
      field("Brukare", "Recipient", r.name, "recipient"),
      field("Adress", "Address", r.address, "address"),
      field("Entré", "Entry", r.entry_info, "entry"),
      field("Handlingsplan", "Action plan", r.action_plan, "plan"),
      ...phoneField(r),
      field("Larmenhet", "Device", deviceText(alarm), "device"),
      ...positionField(alarm.position),
      field("Orsak", "Cause", alarm.cause, "cause"),
      field("Anteckning", "Note", alarm.note, "note")));
  renderTimeline(alarm);
  renderActions(alarm, state);
}

/** Who did it, in words: a person's or team's name, never an id where a name exists. */
function actorText(entry) {
  switch (entry.actor_kind) {
    case "staff": case "team": return entry.actor_name;
    case "everyone": return bi("alla i tjänst", "everyone on duty");
    case "gateway": return bi("systemet", "the system");
    case "device": return bi(`larmenheten ${entry.actor_name}`, `the device ${entry.actor_name}`);
    default: return entry.actor_name || entry.actor;
  }
}

function renderTimeline(alarm) {
  const entries = [
    ...alarm.hops.map((hop) => ({ at: hop.at, node: () => {
      const [hsv, hen] = hopLabel(hop.hop);
      return h("li", { dataset: { hop: hop.hop } },
        h("span", { class: "hop" }, bi(hsv, hen)), " ",
        h("time", { datetime: hop.at }, clock(hop.at)), " ",
        h("span", { class: "actor" }, actorText(hop)));
    } })),
    ...(alarm.handovers || []).map((handover) => ({ at: handover.at, node: () => {
      const by = handover.actor_name || handover.actor;
      const [hsv, hen] = HANDOVERS[handover.kind]?.(by, handover.owner_name || "") || [handover.kind, handover.kind];
      return h("li", { class: "handover", dataset: { handover: handover.kind } },
        h("span", { class: "hop" }, bi(hsv, hen)), " ", h("time", { datetime: handover.at }, clock(handover.at)));
    } })),
  ];
  entries.sort((a, b) => a.at.localeCompare(b.at));
  $("timeline").replaceChildren(...entries.map((entry) => entry.node()));
}

function actionButton(action, sv, en, cls, onclick) {
  return h("button", { type: "button", class: `big ${cls}`, dataset: { action }, onclick }, bi(sv, en));
}

function renderActions(alarm, state) {
  const mine = me && alarm.owner === me.id;
  const open = state !== "done";
  const buttons = [];
  if (state === "new") buttons.push(actionButton("accept", "Ta larmet", "Accept", "accept-btn", () => act(alarm, "accept")));
  if (mine && state === "handling") buttons.push(actionButton("on-site", "På plats", "On site", "site-btn", () => act(alarm, "on-site")));
  if (mine && open) buttons.push(actionButton("close", "Avsluta", "Close", "done-btn", showCloseForm));
  if (mine && open) buttons.push(actionButton("forward", "Skicka vidare", "Forward to a colleague", "forward-btn", showForwardForm));
  if (open && alarm.owner && !mine) {
    const name = ownerName(alarm);
    buttons.push(actionButton("take-over", `Ta över från ${name}`, `Take over from ${name}`, "takeover-btn",
      () => act(alarm, "take-over")));
  }
  $("actions").replaceChildren(...buttons);
  // One form at a time, and never the action buttons beside it: one "Avsluta" on screen.
  $("actions").hidden = !$("close-form").hidden || !$("forward-form").hidden;
  if (!mine || !open) { resetCloseForm(); resetForwardForm(); }
}

/** A refused action in words: who has the alarm now, by name (the server speaks in ids). */
function refusalText(error, fresh) {
  if (error.status === 409 && fresh && fresh.owner && (!me || fresh.owner !== me.id)) {
    const name = ownerName(fresh);
    return bi(`Konflikt: larmet är redan taget av ${name}`, `Conflict: already accepted by ${name}`);
  }
  if (error.status === 409 && fresh && fresh.state === "closed") {
    return bi("Konflikt: larmet är redan avslutat", "Conflict: the alarm is already closed");
  }
  return error.status === 409 ? bi(`Konflikt: ${error.message}`, `Conflict: ${error.message}`) : error.message;
}

async function act(alarm, action, body) {
  $("action-error").textContent = "";
  const buttons = document.querySelectorAll("#detail-view button[data-action]");
  buttons.forEach((b) => { b.disabled = true; });
  let ok = false;
  try {
    const updated = await api.post(`/alarms/${encodeURIComponent(alarm.id)}/${action}`, body);
    store.upsert(updated);
    detail = store.get(updated.id) || updated;
    ok = true;
  } catch (error) {
    let fresh = null;
    try { fresh = await api.get(`/alarms/${encodeURIComponent(alarm.id)}`); store.upsert(fresh); detail = fresh; } catch { /* offline */ }
    $("action-error").replaceChildren(refusalText(error, fresh));
  } finally {
    if (ok && (action === "close" || action === "forward")) { resetCloseForm(); resetForwardForm(); }
    render();
    document.querySelectorAll("#detail-view button[data-action]").forEach((b) => { b.disabled = false; });
  }
}

// -- close with a cause ------------------------------------------------------------------

$("causes").replaceChildren(...CAUSES.map(([sv, en], i) =>
  h("label", { class: "choice", for: `cause-${i}` },
    h("input", { type: "radio", name: "cause", id: `cause-${i}`, value: sv }),
    bi(sv, en))));

function showCloseForm() {
  resetForwardForm();
  $("close-form").hidden = false;
  $("actions").hidden = true;
  $("close-form").querySelector("input[name=cause]").focus();
}

function resetCloseForm() {
  $("close-form").reset();
  $("close-form").hidden = true;
  $("close-error").textContent = "";
  $("cause-set").removeAttribute("aria-invalid");
  $("actions").hidden = !$("forward-form").hidden;
}

$("close-cancel").addEventListener("click", resetCloseForm);
$("causes").addEventListener("change", () => {
  $("close-error").textContent = "";
  $("cause-set").removeAttribute("aria-invalid");
});
$("close-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const cause = form.querySelector("input[name=cause]:checked");
  if (!cause) {
    // Our own message, under the causes (never the browser's tooltip over them).
    $("close-error").replaceChildren(bi("Välj en orsak innan du avslutar.", "Choose a cause before closing."));
    $("cause-set").setAttribute("aria-invalid", "true");
    form.querySelector("input[name=cause]").focus();
    return;
  }
  const note = form.note.value.trim();
  act(detail, "close", { cause: cause.value, note: note || null });
});

// -- forward to a colleague --------------------------------------------------------------

async function showForwardForm() {
  resetCloseForm();
  const alarm = detail;
  $("forward-form").hidden = false;
  $("actions").hidden = true;
  $("colleagues").replaceChildren(h("p", { class: "small" }, bi("Hämtar kollegor…", "Loading colleagues…")));
  let colleagues;
  try {
    colleagues = await api.get(`/alarms/${encodeURIComponent(alarm.id)}/colleagues`);
  } catch (error) {
    $("colleagues").replaceChildren();
    $("forward-error").replaceChildren(error.message);
    return;
  }
  if (!colleagues.length) {
    $("colleagues").replaceChildren(h("p", {}, bi("Ingen kollega i tjänst att skicka till.", "No colleague on duty to forward to.")));
    return;
  }
  $("colleagues").replaceChildren(...colleagues.map((c, i) =>
    h("label", { class: "choice", for: `colleague-${i}` },
      h("input", { type: "radio", name: "to", id: `colleague-${i}`, value: c.id }),
      h("span", {}, c.name, " ", c.connected
        ? h("span", { class: "online-dot" }, bi("● har appen öppen", "● app open"))
        : h("span", { class: "small" }, bi("(inte ansluten)", "(not connected)"))))));
  $("colleagues").querySelector("input").focus();
}

function resetForwardForm() {
  $("forward-form").reset();
  $("forward-form").hidden = true;
  $("forward-error").textContent = "";
  $("colleague-set").removeAttribute("aria-invalid");
  $("actions").hidden = !$("close-form").hidden;
}

$("forward-cancel").addEventListener("click", resetForwardForm);
$("colleagues").addEventListener("change", () => {
  $("forward-error").textContent = "";
  $("colleague-set").removeAttribute("aria-invalid");
});
$("forward-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const to = event.target.querySelector("input[name=to]:checked");
  if (!to) {
    $("forward-error").replaceChildren(bi("Välj en kollega.", "Choose a colleague."));
    $("colleague-set").setAttribute("aria-invalid", "true");
    return;
  }
  act(detail, "forward", { to: to.value });
});

// -- push --------------------------------------------------------------------------------

function pushStatus(text) { $("push-status").replaceChildren(text); }

function setupPushButton() {
  const button = $("push-enable");
  button.hidden = !push.supported || Notification.permission === "granted";
  button.onclick = async () => {
    try {
      await push.enablePush(api);
      button.hidden = true;
      pushStatus(bi("Aviseringar på", "Notifications on"));
    } catch (error) { pushStatus(bi(`Aviseringar: ${error.message}`, `Notifications: ${error.message}`)); }
  };
}

if ("serviceWorker" in navigator) {
  navigator.serviceWorker.addEventListener("message", (event) => {
    // The worker showed a push; the socket brings the alarm itself.
    if (event.data && event.data.type === "push" && !live.online && signedIn) live.connectNow();
  });
}

// -- boot --------------------------------------------------------------------------------

push.registerWorker();

async function boot() {
  // Before refresh tokens the app kept a 12 h access token in localStorage: use it up.
  const legacy = localStorage.getItem("trygg.token");
  const legacyExpires = Number(localStorage.getItem("trygg.expires") || 0);
  localStorage.removeItem("trygg.token");
  localStorage.removeItem("trygg.expires");
  for (const key of ["token", "token_expires"]) kvDelete(key).catch(() => {}); // the old worker's copy
  if (await session.resume()) {
    await start();
  } else if (legacy && legacyExpires > Date.now()) {
    await session.begin({ access_token: legacy, expires_in: (legacyExpires - Date.now()) / 1000 });
    await start();
  } else if (legacy) {
    showLogin(EXPIRED);
  }
}

boot();
