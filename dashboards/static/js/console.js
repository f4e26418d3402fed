// Technician console: the fleet, one device in detail, and the live end-to-end test.
import { Api, ApiError } from "./api.js";
import { EXPIRED } from "./session.js";
import { $, h, bi } from "./dom.js";
import { installStyles, session, sparkline } from "./charts.js";

installStyles();

const REFRESH_MS = 15_000;
const POLL_MS = 1_000;
const STATES = { online: ["Online", "Online"], offline: ["Offline", "Offline"], unknown: ["Ej hörd", "Not heard"] };
const STAGES = [
  ["command", "Kommando skickat", "Command sent"],
  ["stored", "Lagrat", "Stored"],
  ["routed", "Skickat till lag", "Routed"],
  ["delivered", "Levererat", "Delivered"],
  ["result", "Resultat", "Result"],
];
const METRICS = {
  temperature: ["Temperatur", "Temperature", " °C"], battery: ["Batteri", "Battery", ""],
  accel: ["Rörelse (acc.)", "Movement (accel.)", " g"], motion: ["Rörelse", "Motion", ""],
  bed_occupied: ["I sängen", "In bed", ""], door_open: ["Dörr öppen", "Door open", ""],
  smoke: ["Rök", "Smoke", " dB/m"], water: ["Vatten", "Water", ""],
};

const auth = session("console", ["technician", "admin"]);
const api = new Api(() => auth.logout(EXPIRED), auth.session);
let fleet = null;
let timer = null;
let testing = null;

// -- login ---------------------------------------------------------------------------------

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await auth.login(api, $("username").value.trim(), $("password").value);
    route();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});
$("logout").addEventListener("click", () => auth.logout());
auth.onChange = () => route();

// -- routing: #/ is the fleet, #/device/<id> one device -------------------------------------

window.addEventListener("hashchange", () => route());
$("back").addEventListener("click", () => { location.hash = "#/"; });

function show(view) {
  for (const id of ["login-view", "fleet-view", "detail-view"]) $(id).hidden = id !== view;
  $("logout").hidden = view === "login-view";
}

async function route() {
  clearTimeout(timer);
  if (!auth.resume(api)) {
    show("login-view");
    $("who").textContent = "";
    if (auth.message) $("login-error").textContent = auth.message;
    return;
  }
  $("who").textContent = auth.me ? `${auth.me.name} (${auth.me.role})` : "";
  const match = location.hash.match(/^#\/device\/(.+)$/);
  if (match) {
    show("detail-view");
    await loadDetail(decodeURIComponent(match[1]));
  } else {
    show("fleet-view");
    await loadFleet();
  }
}

// -- fleet ---------------------------------------------------------------------------------

for (const id of ["f-type", "f-state"]) $(id).addEventListener("change", () => renderFleet());
$("q").addEventListener("input", () => renderFleet());
$("filters").addEventListener("submit", (event) => event.preventDefault());

async function loadFleet() {
  try {
    fleet = await api.get("/console/fleet");
    $("fleet-error").textContent = "";
    renderTypes(fleet.types);
    renderFleet();
  } catch (error) {
    if (!(error instanceof ApiError && error.status === 401)) $("fleet-error").textContent = error.message;
  }
  if (!$("fleet-view").hidden) timer = setTimeout(loadFleet, REFRESH_MS);
}

function renderTypes(types) {
  const select = $("f-type");
  const current = select.value;
  const known = [...select.options].map((o) => o.value);
  if (types.every((t) => known.includes(t))) return;
  select.replaceChildren(h("option", { value: "" }, "Alla typer / All types"),
    ...types.map((t) => h("option", { value: t }, t)));
  select.value = types.includes(current) ? current : "";
}

function matches(device, type, state, needle) {
  if (type && device.type !== type) return false;
  if (state && device.state !== state) return false;
  if (!needle) return true;
  const text = [device.id, device.type, device.model, device.recipient?.name, device.recipient?.address]
    .filter(Boolean).join(" ").toLocaleLowerCase("sv");
  return text.includes(needle);
}

function renderFleet() {
  if (!fleet) return;
  const type = $("f-type").value;
  const state = $("f-state").value;
  const needle = $("q").value.trim().toLocaleLowerCase("sv");
  const rows = fleet.devices.filter((d) => matches(d, type, state, needle));
  $("fleet-body").replaceChildren(...rows.map(fleetRow));
  $("fleet-empty").hidden = rows.length > 0;
  const c = fleet.counts;
  $("fleet-counts").replaceChildren(
    `Visar ${rows.length} av ${fleet.devices.length} · online ${c.online} · offline ${c.offline} · ej hörda ${c.unknown} `,
    h("span", { lang: "en" }, `Showing ${rows.length} of ${fleet.devices.length}`));
}

function fleetRow(d) {
  return h("tr", { dataset: { deviceId: d.id, state: d.state, type: d.type } },
    h("td", {}, h("button", { type: "button", class: "link", onclick: () => { location.hash = `#/device/${encodeURIComponent(d.id)}`; } }, d.id)),
    h("td", {}, d.type),
    h("td", {}, d.recipient ? `${d.recipient.name}, ${d.recipient.address}` : "–"),
    h("td", {}, statePill(d.state)),
    h("td", { title: d.last_seen || "" }, ago(d.last_seen)),
    h("td", {}, battery(d.battery)),
    h("td", {}, d.rssi == null ? "–" : `${d.rssi} dBm`),
    h("td", {}, d.firmware || "–"),
    h("td", {}, testCell(d.last_test)));
}

function statePill(state) {
  const [sv, en] = STATES[state] || [state, state];
  return h("span", { class: `pill ${state}` }, sv === en ? sv : bi(sv, en));
}

function testCell(test) {
  if (!test) return "–";
  const ok = test.result === "passed";
  return h("span", {}, h("span", { class: `pill ${ok ? "passed" : "failed"}` },
    ok ? "Godkänt" : `Misslyckat${test.failed_hop ? ` (${test.failed_hop})` : ""}`), " ", ago(test.at));
}

function battery(value) {
  return value == null ? "–" : `${Math.round(value * 100)} %`;
}

function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 90) return `${s} s sedan`;
  if (s < 5400) return `${Math.round(s / 60)} min sedan`;
  if (s < 172800) return `${Math.round(s / 3600)} h sedan`;
  return new Date(iso).toLocaleDateString("sv-SE");
}

// -- one device ----------------------------------------------------------------------------

async function loadDetail(id) {
  let d;
  try {
    d = await api.get(`/console/devices/${encodeURIComponent(id)}`);
  } catch (error) {
    $("detail-title").textContent = id;
    $("detail-facts").replaceChildren(h("dd", { class: "error", role: "alert" }, error.message));
    return;
  }
  renderDetail(d);
  if (!testing || testing.id !== id) renderStages(null);
  timer = setTimeout(() => { if (!$("detail-view").hidden && !testing) loadDetail(id); }, REFRESH_MS);
}

function fact(dt, dd) { return [h("dt", {}, dt), h("dd", {}, dd)]; }

function renderDetail(d) {
  $("detail-title").replaceChildren(`${d.id} `, statePill(d.state));
  $("detail-facts").replaceChildren(
    ...fact(bi("Typ", "Type"), `${d.type}${d.model ? ` (${d.model})` : ""}`),
    ...fact(bi("Brukare", "Recipient"), d.recipient ? `${d.recipient.name}, ${d.recipient.address}` : "–"),
    ...fact(bi("Senast hörd", "Last seen"), `${ago(d.last_seen)}${d.last_seen ? ` (${new Date(d.last_seen).toLocaleString("sv-SE")})` : ""}`),
    ...fact(bi("Förväntat intervall", "Expected interval"), `${d.heartbeat_s} s`),
    ...fact(bi("Batteri", "Battery"), battery(d.battery)),
    ...fact("Signal", d.rssi == null ? "–" : `${d.rssi} dBm`),
    ...fact("Firmware", d.firmware || "–"),
    ...fact(bi("Meddelanden sedan start", "Messages since start"),
      Object.entries(d.messages).map(([k, v]) => `${k.replace("Message", "")}: ${v}`).join(", ") || "–"),
    ...fact(bi("Senaste provlarm", "Last test"), testCell(d.last_test)),
    ...fact(bi("Nästa schemalagda provlarm", "Next scheduled test"), d.e2e.next_at ? new Date(d.e2e.next_at).toLocaleString("sv-SE") : "–"));
  $("detail-technical").replaceChildren(...(d.technical_alarms.length
    ? d.technical_alarms.map((a) => h("li", {}, `${new Date(a.since).toLocaleString("sv-SE")}: ${a.detail || a.ref}`))
    : [h("li", {}, bi("Inga", "None"))]));
  $("e2e-run").dataset.deviceId = d.id;
  $("e2e-run").disabled = Boolean(d.e2e.running) || Boolean(testing);
  $("plots").replaceChildren(...d.telemetry.map(plot));
}

function plot(series) {
  const [sv, en, unit] = METRICS[series.metric] || [series.metric, series.metric, ""];
  const points = series.points.map(([t, v]) => [t, Array.isArray(v) ? Math.hypot(...v) : v]);
  return h("figure", { class: "panel", dataset: { metric: series.metric } },
    h("figcaption", {}, bi(sv, en)),
    sparkline(points, { title: `${sv} / ${en}`, unit }));
}

// -- the live end-to-end test --------------------------------------------------------------

$("e2e-run").addEventListener("click", async () => {
  const id = $("e2e-run").dataset.deviceId;
  if (!id || testing) return;
  $("e2e-run").disabled = true;
  $("e2e-result").textContent = "";
  let before = null;
  let beforeAt = null;
  try {
    const current = await api.get(`/console/devices/${encodeURIComponent(id)}?telemetry=false`);
    before = current.last_test_alarm?.id ?? null;
    beforeAt = current.e2e.last_at;
    await api.post(`/devices/${encodeURIComponent(id)}/e2e-test`);
  } catch (error) {
    $("e2e-result").textContent = error.message;
    $("e2e-run").disabled = false;
    return;
  }
  testing = { id, before, beforeAt, started: Date.now() };
  renderStages({ command: "done", stored: "active" });
  poll();
});

async function poll() {
  const run = testing;
  if (!run) return;
  let status, detail;
  try {
    [status, detail] = await Promise.all([
      api.get(`/devices/${encodeURIComponent(run.id)}/e2e-test`),
      api.get(`/console/devices/${encodeURIComponent(run.id)}?telemetry=false`),
    ]);
  } catch (error) {
    $("e2e-result").textContent = error.message;
    setTimeout(poll, POLL_MS * 3);
    return;
  }
  const stages = { command: "done" };
  const alarm = detail.last_test_alarm && detail.last_test_alarm.id !== run.before ? detail.last_test_alarm : null;
  const reached = new Set(alarm ? alarm.hops.map((hop) => hop.hop) : []);
  let next = true;
  for (const [key] of STAGES.slice(1, 4)) {
    if (reached.has(key)) stages[key] = "done";
    else if (next) { stages[key] = "active"; next = false; }
  }
  // Finished once the verdict is recorded: a run ends a moment before its result is written.
  if (!status.running && status.last_at && status.last_at !== run.beforeAt) {
    const passed = status.last_result === "passed";
    if (passed) for (const [key] of STAGES) stages[key] = "done";
    else if (status.failed_hop) {
      stages[status.failed_hop] = "failed";
      for (const [key] of STAGES.slice(1, 4)) if (stages[key] === "active") delete stages[key];
      stages[status.failed_hop] = "failed";
    }
    stages.result = passed ? "done" : "failed";
    renderStages(stages, passed);
    $("e2e-result").replaceChildren(passed
      ? bi("Provlarmet gick igenom hela kedjan.", "The test alarm passed the whole chain.")
      : bi(`Provlarmet misslyckades vid ${status.failed_hop || "?"}.`, `The test alarm failed at ${status.failed_hop || "?"}.`));
    testing = null;
    renderDetail(await api.get(`/console/devices/${encodeURIComponent(run.id)}`));
    return;
  }
  renderStages(stages);
  setTimeout(poll, POLL_MS);
}

function renderStages(stages, passed) {
  const list = $("e2e-stages");
  if (!stages) { list.replaceChildren(); return; }
  list.replaceChildren(...STAGES.map(([key, sv, en]) => {
    const state = stages[key] || "";
    let label = [sv, en];
    if (key === "result" && state === "done" && passed) label = ["Godkänt", "Passed"];
    if (key === "result" && state === "failed") label = ["Misslyckat", "Failed"];
    const mark = state === "done" ? "✓ " : state === "failed" ? "✗ " : state === "active" ? "… " : "";
    return h("li", { class: state, dataset: { stage: key, state: state || "waiting" } }, mark, bi(...label));
  }));
}

route();
