// trygg staff app: login, live alarm list, alarm detail and actions, offline handling, push.
// Plain ES modules, no build step. Swedish first, English second.
import { AlarmStore, stateOf } from "./js/alarms.js";
import { alertNewAlarm, unlockAudio } from "./js/alert.js";
import { Api } from "./js/api.js";
import { $, bi, clock, h } from "./js/dom.js";
import { kvDelete } from "./js/idb.js";
import { CAUSES, STATES, hopLabel, typeLabel } from "./js/i18n.js";
import { Live } from "./js/live.js";
import * as push from "./js/push.js";
import { EXPIRED, RefreshRefused, Session, sharedStore } from "./js/session.js";

// While an unhandled alarm waits, remind every 20 s: one beep is easy to miss in a car.
const REMIND_MS = 20_000;
const OFFLINE_TICK_MS = 5_000;

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
    $("login-error").textContent = "Fyll i användarnamn och lösenord / Enter username and password";
    return;
  }
  $("login-error").textContent = "";
  try {
    await session.begin(await api.login(username, password));
    form.password.value = "";
    await start();
  } catch (error) {
    $("login-error").textContent = error.status === 401
      ? "Fel användarnamn eller lösenord / Wrong username or password"
      : `Kunde inte logga in / Could not log in: ${error.message}`;
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
  $("who").textContent = me.name || "";
  $("login-view").hidden = true;
  $("logout").hidden = false;
  socketRetried = false;
  live.start(session.token);
  route();
  setupPushButton();
  push.resubscribe(api).then((on) => { if (on) pushStatus("Aviseringar på / Notifications on"); })
    .catch((error) => pushStatus(`Aviseringar: ${error.message}`));
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
  $("who").textContent = "";
  $("login-error").textContent = message;
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
  $("offline-since").replaceChildren(
    `sedan ${at}`, minutes ? ` (${minutes} min)` : "", " ",
    h("span", { lang: "en" }, `since ${at}${minutes ? ` (${minutes} min)` : ""}`));
}

setInterval(showOffline, OFFLINE_TICK_MS);
setInterval(() => {
  if (signedIn && store.unhandled().some((a) => !a.test)) alertNewAlarm();
}, REMIND_MS);

// -- views -------------------------------------------------------------------------------

window.addEventListener("hashchange", route);
$("back").addEventListener("click", () => { location.hash = ""; });

function route() {
  if (!signedIn) return;
  const match = location.hash.match(/^#\/alarm\/(.+)$/);
  if (match) openDetail(decodeURIComponent(match[1]));
  else { detail = null; $("detail-view").hidden = true; $("list-view").hidden = false; render(); }
}

function render() {
  document.title = `${store.unhandled().length ? `(${store.unhandled().length}) ` : ""}trygg – larm`;
  if (!$("list-view").hidden) renderList();
  if (!$("detail-view").hidden && detail) renderDetail();
}

function stateBadge(alarm) {
  const state = stateOf(alarm);
  const [sv, en] = STATES[state];
  const owner = alarm.owner && state !== "done" ? ` – ${alarm.owner}` : "";
  return h("span", { class: "badge" }, bi(sv + owner, en + owner));
}

function who(alarm) {
  return alarm.recipient ? `${alarm.recipient.name}, ${alarm.recipient.address}` : alarm.device_id;
}

function renderList() {
  const alarms = store.list();
  $("empty").hidden = alarms.length > 0;
  $("alarm-list").replaceChildren(...alarms.map((alarm) => {
    const [sv, en] = typeLabel(alarm.type);
    const state = stateOf(alarm);
    return h("li", { class: `alarm ${state}`, dataset: { alarmId: alarm.id, state } },
      h("a", { class: "card", href: `#/alarm/${encodeURIComponent(alarm.id)}` },
        h("span", { class: "type" }, bi(sv, en)),
        stateBadge(alarm),
        h("span", { class: "who" }, who(alarm)),
        h("span", { class: "time" }, bi(`Utlöst ${clock(alarm.raised_at)}`, `raised ${clock(alarm.raised_at)}`))));
  }));
}

async function openDetail(id) {
  $("list-view").hidden = true;
  $("detail-view").hidden = false;
  $("action-error").textContent = "";
  resetCloseForm();
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
    h("a", { href: position.map_url, target: "_blank", rel: "noopener" }, "Karta / Map"), " · ",
    h("a", { href: position.geo_uri }, "geo:"), `${accuracy}, ${age} min`), "position");
}

function renderDetail() {
  const alarm = detail;
  const state = stateOf(alarm);
  const [sv, en] = typeLabel(alarm.type);
  const r = alarm.recipient || {};
  $("detail-view").dataset.alarmId = alarm.id;
  $("detail-view").dataset.state = state;
  $("detail-body").replaceChildren(
    h("div", { class: `detail-head ${state}` },
      h("h2", { id: "detail-title", tabindex: "-1" }, bi(sv, en)), stateBadge(alarm)),
    h("dl", { class: "facts" },
      field("Brukare", "Recipient", r.name, "recipient"),
      field("Adress", "Address", r.address, "address"),
      field("Entré", "Entry", r.entry_info, "entry"),
      field("Handlingsplan", "Action plan", r.action_plan, "plan"),
      field("Larmenhet", "Device", alarm.device_id, "device"),
      ...positionField(alarm.position),
      field("Orsak", "Cause", alarm.cause, "cause"),
      field("Anteckning", "Note", alarm.note, "note")));
  $("timeline").replaceChildren(...alarm.hops.map((hop) => {
    const [hsv, hen] = hopLabel(hop.hop);
    return h("li", { dataset: { hop: hop.hop } },
      h("span", { class: "hop" }, bi(hsv, hen)), " ",
      h("time", { datetime: hop.at }, clock(hop.at)), " ",
      h("span", { class: "actor" }, hop.actor));
  }));
  renderActions(alarm, state);
}

function actionButton(action, sv, en, cls, onclick) {
  return h("button", { type: "button", class: `big ${cls}`, dataset: { action }, onclick }, bi(sv, en));
}

function renderActions(alarm, state) {
  const mine = me && alarm.owner === me.id;
  const buttons = [];
  if (state === "new") buttons.push(actionButton("accept", "Ta larmet", "Accept", "accept-btn", () => act(alarm, "accept")));
  if (mine && state === "handling") buttons.push(actionButton("on-site", "På plats", "On site", "site-btn", () => act(alarm, "on-site")));
  if (mine && state !== "done") buttons.push(actionButton("close", "Avsluta", "Close", "done-btn", showCloseForm));
  if (state !== "done") {
    buttons.push(h("button", { type: "button", class: "big quiet", disabled: true, dataset: { action: "forward" },
      title: "Kommer senare / Coming later" }, bi("Skicka vidare", "Forward to colleague")));
  }
  $("actions").replaceChildren(...buttons);
  if (!mine || state === "done") resetCloseForm();
}

async function act(alarm, action, body) {
  $("action-error").textContent = "";
  const buttons = document.querySelectorAll("#detail-view button[data-action]");
  buttons.forEach((b) => { b.disabled = true; });
  try {
    const updated = await api.post(`/alarms/${encodeURIComponent(alarm.id)}/${action}`, body);
    store.upsert(updated);
    detail = store.get(updated.id) || updated;
    if (action === "close") resetCloseForm();
  } catch (error) {
    $("action-error").textContent = error.status === 409
      ? `Konflikt / Conflict: ${error.message}` : error.message;
    try { const fresh = await api.get(`/alarms/${encodeURIComponent(alarm.id)}`); store.upsert(fresh); detail = fresh; } catch { /* offline */ }
  } finally {
    render();
    document.querySelectorAll("#detail-view button[data-action]").forEach((b) => {
      if (b.dataset.action !== "forward") b.disabled = false;
    });
  }
}

// -- close with a cause ------------------------------------------------------------------

$("causes").replaceChildren(...CAUSES.map(([sv, en], i) =>
  h("label", { class: "choice", for: `cause-${i}` },
    h("input", { type: "radio", name: "cause", id: `cause-${i}`, value: sv, required: true }),
    bi(sv, en))));

function showCloseForm() {
  $("close-form").hidden = false;
  $("close-form").querySelector("input[name=cause]").focus();
}

function resetCloseForm() {
  $("close-form").reset();
  $("close-form").hidden = true;
}

$("close-cancel").addEventListener("click", resetCloseForm);
$("close-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const form = event.target;
  const cause = form.querySelector("input[name=cause]:checked");
  if (!cause) { $("action-error").textContent = "Välj en orsak / Choose a cause"; return; }
  const note = form.note.value.trim();
  act(detail, "close", { cause: cause.value, note: note || null });
});

// -- push --------------------------------------------------------------------------------

function pushStatus(text) { $("push-status").textContent = text; }

function setupPushButton() {
  const button = $("push-enable");
  button.hidden = !push.supported || Notification.permission === "granted";
  button.onclick = async () => {
    try {
      await push.enablePush(api);
      button.hidden = true;
      pushStatus("Aviseringar på / Notifications on");
    } catch (error) { pushStatus(`Aviseringar: ${error.message}`); }
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
