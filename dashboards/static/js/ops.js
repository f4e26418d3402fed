// Operations dashboard: alarm volumes, response times against the target, technical
// alarms and supervision, for team leads (their teams) and administrators (all).
import { Api, ApiError } from "./api.js";
import { EXPIRED } from "./session.js";
import { $, h, bi, dateTime, initLang, onLang, pick, tr } from "./dom.js";
import { typeLabel } from "./i18n.js";
import { barChart, histogram, installStyles, session } from "./charts.js";

installStyles();
initLang();
let last = null; // the last summary, re-drawn in the other language on a switch
onLang(() => { if (last) render(last); });

const REFRESH_MS = 30_000;
const auth = session("ops", ["lead", "admin"]);
const api = new Api(() => auth.logout(EXPIRED), auth.session);
let timer = null;

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await auth.login(api, $("username").value.trim(), $("password").value);
    start();
  } catch (error) {
    const [sv, en] = String(error.message).split(" / ");
    $("login-error").replaceChildren(en ? bi(sv, en) : error.message);
  }
});
$("logout").addEventListener("click", () => auth.logout());
auth.onChange = () => start();
$("window").addEventListener("change", () => load());
$("window-form").addEventListener("submit", (event) => event.preventDefault());

function start() {
  clearTimeout(timer);
  const signedIn = auth.resume(api);
  $("login-view").hidden = signedIn;
  $("ops-view").hidden = !signedIn;
  $("logout").hidden = !signedIn;
  $("who").replaceChildren(...(signedIn && auth.me
    ? [bi("Inloggad: ", "Logged in: "), h("strong", {}, auth.me.name), ` (${auth.me.role})`] : []));
  if (!signedIn && auth.message) {
    const [sv, en] = auth.message.split(" / ");
    $("login-error").replaceChildren(en ? bi(sv, en) : auth.message);
  }
  if (signedIn) load();
}

async function load() {
  clearTimeout(timer);
  try {
    const summary = await api.get(`/ops/summary?hours=${encodeURIComponent($("window").value)}`);
    $("ops-error").textContent = "";
    render(summary);
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) $("ops-error").textContent = error.message;
  }
  if (!$("ops-view").hidden) timer = setTimeout(load, REFRESH_MS);
}

function minutes(seconds) {
  return seconds == null ? "–" : `${(seconds / 60).toFixed(1)} min`;
}

function card(n, sv, en, bad = false, sub = null, id = null) {
  return h("div", { class: bad ? "card-n bad" : "card-n", id }, h("span", { class: "n" }, n), bi(sv, en),
    sub ? h("span", { class: "sub" }, sub) : null);
}

function place(panel, ...nodes) {
  $(panel).querySelector(".plot").replaceChildren(...nodes);
}

function render(s) {
  last = s;
  const target = s.target_s / 60;
  const share = s.response.on_site_share;
  const t = s.response.on_site_target || { n: 0, within: 0, missed: 0, missed_open: 0, pending: 0 };
  const sup = s.supervision;
  // A share is never shown without its n: "100 %" of one alarm while six wait is not 100 %.
  const parts = bi(
    `${t.within} av ${t.n} · missade ${t.missed}${t.missed_open ? ` (varav ${t.missed_open} öppna)` : ""}` +
      `${t.pending ? ` · ${t.pending} öppna inom målet än` : ""}`,
    `${t.within} of ${t.n} · missed ${t.missed}${t.missed_open ? ` (${t.missed_open} still open)` : ""}` +
      `${t.pending ? ` · ${t.pending} open, within target so far` : ""}`);
  $("cards").replaceChildren(
    card(s.care_alarms, "Vårdlarm", "Care alarms"),
    card(s.open_care_alarms, "Öppna vårdlarm", "Open care alarms", s.open_care_alarms > 0),
    card(share == null ? "–" : `${Math.round(share * 100)} %`, `På plats inom ${target} min`, `On site within ${target} min`,
      share != null && share < 0.9, parts, "card-onsite"),
    card(s.technical_open.length, "Öppna tekniska larm", "Open technical alarms", s.technical_open.length > 0),
    card(`${sup.offline} / ${sup.watched}`, "Enheter offline", "Devices offline", sup.offline > 0));

  const types = Object.entries(s.by_type).map(([type, n]) => {
    const [sv, en] = typeLabel(type);
    return { label: tr(sv, en), short: tr(sv, en), value: n };
  });
  place("panel-types", types.length
    ? barChart(types, { title: tr("Larm per typ", "Alarms by type") })
    : h("p", {}, bi("Inga larm i perioden", "No alarms in the window")));

  const hours = s.by_hour.map((n, hour) => ({
    label: `kl ${String(hour).padStart(2, "0")}`, short: String(hour).padStart(2, "0"), value: n,
    tip: tr(`kl ${String(hour).padStart(2, "0")}–${String(hour + 1).padStart(2, "0")}: ${n} vårdlarm, ${s.technical_by_hour[hour]} tekniska`,
      `${String(hour).padStart(2, "0")}–${String(hour + 1).padStart(2, "0")}: ${n} care alarms, ${s.technical_by_hour[hour]} technical`),
  }));
  place("panel-hours", barChart(hours, { title: tr("Vårdlarm per timme", "Care alarms by hour"), labelEvery: 3 }));

  for (const [panel, key, sv, en] of [["panel-accepted", "accepted", "Tid till accepterat", "Time to accepted"],
    ["panel-onsite", "on_site", "Tid till på plats", "Time to on site"]]) {
    const r = s.response[key];
    const edges = r.bins_s.map((b) => b / 60);
    place(panel, histogram(edges, r.counts, { title: tr(sv, en), targetMin: target, targetLabel: tr("Mål", "Target") }));
    const open = key === "on_site" && t.missed_open
      ? [` · ${t.missed_open} `, bi("öppna utan närvaro efter målet", "open, not on site past the target")] : [];
    $(panel).querySelector(".stats").replaceChildren(
      `n = ${r.count} · median ${minutes(r.p50_s)} · p90 ${minutes(r.p90_s)} · max ${minutes(r.max_s)} · `,
      bi(`inom mål ${r.within_target}`, `within target ${r.within_target}`), ...open);
  }

  place("panel-supervision", barChart([
    { label: "Online", value: sup.online },
    { label: "Offline", value: sup.offline },
    { label: tr("Provlarm godkända", "Tests passed"), short: tr("Prov OK", "Test OK"), value: sup.tests_passed },
    { label: tr("Provlarm misslyckade", "Tests failed"), short: tr("Prov fel", "Test fail"), value: sup.tests_failed },
  ], { title: tr("Övervakning", "Supervision"), height: 200 }));

  $("technical-body").replaceChildren(...(s.technical_open.length
    ? s.technical_open.map((a) => h("tr", { dataset: { alarmId: a.id } },
      h("td", {}, dateTime(a.since)), h("td", {}, a.device_id), h("td", {}, a.summary ? pick(a.summary) : (a.detail || a.ref))))
    : [h("tr", {}, h("td", { colspan: 3 }, bi("Inga öppna tekniska larm", "No open technical alarms")))]));
  const at = dateTime(s.generated_at).slice(11);
  $("updated").replaceChildren(bi(`Uppdaterad ${at}`, `Updated ${at}`));
}

start();
