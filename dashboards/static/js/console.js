// Technician console: the fleet, one device in detail, the live end-to-end test, and
// provisioning (register, bind, claim code with QR, swap, decommission).
import { Api, ApiError } from "./api.js";
import { EXPIRED } from "./session.js";
import { $, h, bi, dateTime, initLang, onLang, pick, tr } from "./dom.js";
import { DEVICE_TYPES, deviceTypeLabel, hopLabel } from "./i18n.js";
import { installStyles, session, sparkline } from "./charts.js";

installStyles();
initLang();

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
let recipients = null;
// End-to-end test runs started from this page, by device: each device's panel shows its
// own run only, whichever device was looked at in between.
const runs = new Map();
let shown = null; // the device whose detail is on screen

// -- login ---------------------------------------------------------------------------------

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("login-error").textContent = "";
  try {
    await auth.login(api, $("username").value.trim(), $("password").value);
    route();
  } catch (error) {
    $("login-error").replaceChildren(splitMessage(error.message));
  }
});
$("logout").addEventListener("click", () => auth.logout());
auth.onChange = () => route();
onLang(() => { if (auth.session.active) route(); });

/** "svenska / English" as the two languages. */
function splitMessage(message) {
  const [sv, en] = String(message).split(" / ");
  return en ? bi(sv, en) : message;
}

// -- routing: #/ is the fleet, #/device/<id> one device -------------------------------------

window.addEventListener("hashchange", () => route());
$("back").addEventListener("click", () => { location.hash = "#/"; });

function show(view) {
  for (const id of ["login-view", "fleet-view", "detail-view", "provision-view"]) $(id).hidden = id !== view;
  $("logout").hidden = view === "login-view";
  $("nav").hidden = view === "login-view";
  for (const [link, on] of [["nav-fleet", view === "fleet-view"], ["nav-provision", view === "provision-view"]]) {
    if (on) $(link).setAttribute("aria-current", "page"); else $(link).removeAttribute("aria-current");
  }
}

async function route() {
  clearTimeout(timer);
  if (!auth.resume(api)) {
    show("login-view");
    $("who").textContent = "";
    if (auth.message) $("login-error").replaceChildren(splitMessage(auth.message));
    return;
  }
  $("who").replaceChildren(...(auth.me ? [bi("Inloggad: ", "Logged in: "), h("strong", {}, auth.me.name),
    ` (${auth.me.role})`] : []));
  const device = location.hash.match(/^#\/device\/(.+)$/);
  const provision = location.hash.match(/^#\/provision(?:\/(.+))?$/);
  if (device) {
    show("detail-view");
    await loadDetail(decodeURIComponent(device[1]));
  } else if (provision) {
    show("provision-view");
    await loadProvisioning(provision[1] ? decodeURIComponent(provision[1]) : null);
  } else {
    shown = null;
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
  select.replaceChildren(h("option", { value: "", dataset: { sv: "Alla typer", en: "All types" } }, tr("Alla typer", "All types")),
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
  $("fleet-counts").replaceChildren(bi(
    `Visar ${rows.length} av ${fleet.devices.length} · online ${c.online} · offline ${c.offline} · ej hörda ${c.unknown}`,
    `Showing ${rows.length} of ${fleet.devices.length} · online ${c.online} · offline ${c.offline} · not heard ${c.unknown}`));
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

/** A test result in words: passed, or failed at which hop (its Swedish name) and why. */
function testCell(test) {
  if (!test) return "–";
  const ok = test.result === "passed";
  const [hsv, hen] = hopLabel(test.failed_hop || "");
  const pill = ok ? bi("Godkänt", "Passed")
    : test.failed_hop ? bi(`Misslyckat vid ${hsv}`, `Failed at ${hen}`) : bi("Misslyckat", "Failed");
  return h("span", { class: "test-cell" }, h("span", { class: `pill ${ok ? "passed" : "failed"}` }, pill), " ", ago(test.at),
    !ok && test.reason ? h("span", { class: "reason small" }, " – ", bi(test.reason.sv, test.reason.en)) : null);
}

function battery(value) {
  return value == null ? "–" : `${Math.round(value * 100)} %`;
}

function ago(iso) {
  if (!iso) return "–";
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  const [n, unit] = s < 90 ? [s, "s"] : s < 5400 ? [Math.round(s / 60), "min"] : [Math.round(s / 3600), "h"];
  if (s >= 172800) return dateTime(iso).slice(0, 10);
  return bi(`${n} ${unit} sedan`, `${n} ${unit} ago`);
}

// -- one device ----------------------------------------------------------------------------

async function loadDetail(id) {
  if (shown !== id) {
    // Another device: its own panel, never the last one's stages or verdict.
    shown = id;
    $("e2e-result").replaceChildren();
    renderStages(null);
    // Until this device's facts are in, the test button is disabled: a click now tested the
    // device shown before (or, on a fresh page, silently did nothing). Its provisioning link
    // is this device's from the start.
    $("e2e-run").dataset.deviceId = id;
    $("e2e-run").disabled = true;
    $("detail-provision").href = `#/provision/${encodeURIComponent(id)}`;
    $("detail-title").textContent = id;
    $("detail-facts").replaceChildren();
    $("detail-technical").replaceChildren();
    $("plots").replaceChildren();
  }
  let d;
  try {
    d = await api.get(`/console/devices/${encodeURIComponent(id)}`);
  } catch (error) {
    $("detail-title").textContent = id;
    $("detail-facts").replaceChildren(h("dd", { class: "error", role: "alert" }, error.message));
    return;
  }
  if (shown !== id) return; // navigated on meanwhile
  renderDetail(d);
  renderRun(id, d.e2e);
  timer = setTimeout(() => { if (!$("detail-view").hidden && shown === id) loadDetail(id); }, REFRESH_MS);
}

function fact(dt, dd) { return [h("dt", {}, dt), h("dd", {}, dd)]; }

function recipientText(recipient) {
  return recipient ? `${recipient.name}, ${recipient.address}` : bi("– (inte kopplad)", "– (not bound)");
}

function renderDetail(d) {
  const [tsv, ten] = deviceTypeLabel(d.type);
  $("detail-title").replaceChildren(`${d.id} `, statePill(d.state));
  $("detail-facts").replaceChildren(
    ...fact(bi("Typ", "Type"), bi(`${tsv} (${d.type})${d.model ? `, ${d.model}` : ""}`, `${ten} (${d.type})${d.model ? `, ${d.model}` : ""}`)),
    ...fact(bi("Brukare", "Recipient"), recipientText(d.recipient)),
    ...fact(bi("Senast hörd", "Last seen"), h("span", {}, ago(d.last_seen), d.last_seen ? ` (${dateTime(d.last_seen)})` : "")),
    ...fact(bi("Förväntat intervall", "Expected interval"), `${d.heartbeat_s} s`),
    ...fact(bi("Batteri", "Battery"), battery(d.battery)),
    ...fact("Signal", d.rssi == null ? "–" : `${d.rssi} dBm`),
    ...fact("Firmware", d.firmware || "–"),
    ...fact(bi("Meddelanden sedan start", "Messages since start"),
      Object.entries(d.messages).map(([k, v]) => `${k.replace("Message", "")}: ${v}`).join(", ") || "–"),
    ...fact(bi("Senaste provlarm", "Last test"), testCell(d.last_test)),
    ...fact(bi("Nästa schemalagda provlarm", "Next scheduled test"), d.e2e.next_at ? dateTime(d.e2e.next_at) : "–"));
  $("detail-technical").replaceChildren(...(d.technical_alarms.length
    ? d.technical_alarms.map((a) => h("li", {}, `${dateTime(a.since)}: `, a.summary ? bi(a.summary.sv, a.summary.en) : (a.detail || a.ref)))
    : [h("li", {}, bi("Inga", "None"))]));
  $("detail-provision").href = `#/provision/${encodeURIComponent(d.id)}`;
  $("e2e-run").dataset.deviceId = d.id;
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
  if (!id || runs.get(id)?.active) return;
  $("e2e-run").disabled = true;
  $("e2e-result").replaceChildren();
  let before = null;
  let beforeAt = null;
  try {
    const current = await api.get(`/console/devices/${encodeURIComponent(id)}?telemetry=false`);
    before = current.last_test_alarm?.id ?? null;
    beforeAt = current.e2e.last_at;
    await api.post(`/devices/${encodeURIComponent(id)}/e2e-test`);
  } catch (error) {
    if (shown === id) { $("e2e-result").replaceChildren(error.message); $("e2e-run").disabled = false; }
    return;
  }
  const run = { id, before, beforeAt, active: true, stages: { command: "done", stored: "active" }, verdict: null, waiting: null };
  runs.set(id, run);
  renderRun(id);
  poll(run);
});

async function poll(run) {
  let status, detail;
  try {
    [status, detail] = await Promise.all([
      api.get(`/devices/${encodeURIComponent(run.id)}/e2e-test`),
      api.get(`/console/devices/${encodeURIComponent(run.id)}?telemetry=false`),
    ]);
  } catch (error) {
    if (shown === run.id) $("e2e-result").replaceChildren(error.message);
    setTimeout(() => poll(run), POLL_MS * 3);
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
  run.waiting = status.waiting;
  // Finished once the verdict is recorded: a run ends a moment before its result is written.
  if (!status.running && status.last_at && status.last_at !== run.beforeAt) {
    const passed = status.last_result === "passed";
    if (passed) for (const [key] of STAGES) stages[key] = "done";
    else if (status.failed_hop) {
      for (const [key] of STAGES.slice(1, 4)) if (stages[key] === "active") delete stages[key];
      stages[status.failed_hop] = "failed";
    }
    stages.result = passed ? "done" : "failed";
    run.stages = stages;
    run.active = false;
    run.verdict = { passed, hop: status.failed_hop, reason: status.reason };
    run.waiting = null;
    if (shown === run.id) {
      renderRun(run.id);
      renderDetail(await api.get(`/console/devices/${encodeURIComponent(run.id)}`));
    }
    return;
  }
  run.stages = stages;
  if (shown === run.id) renderRun(run.id);
  setTimeout(() => poll(run), POLL_MS);
}

/** The test panel of device `id`: this page's run of it, else what the gateway says. */
function renderRun(id, e2e = null) {
  if (shown !== id) return;
  const run = runs.get(id);
  if (!run) {
    // No run from this page: one may be running from elsewhere (the schedule, another tab).
    const running = Boolean(e2e && e2e.running);
    $("e2e-run").disabled = running;
    renderStages(null);
    $("e2e-result").replaceChildren(...(running ? [bi("Ett provlarm av enheten pågår redan.", "A test of this device is already running.")] : []));
    return;
  }
  $("e2e-run").disabled = run.active;
  renderStages(run.stages, run.verdict?.passed);
  if (run.verdict) {
    const { passed, hop, reason } = run.verdict;
    const [hsv, hen] = hopLabel(hop || "");
    $("e2e-result").replaceChildren(passed
      ? bi("Provlarmet gick igenom hela kedjan.", "The test alarm passed the whole chain.")
      : bi(`Provlarmet misslyckades vid ${hop ? hsv : "?"}${reason ? `: ${reason.sv}` : ""}.`,
        `The test alarm failed at ${hop ? hen : "?"}${reason ? `: ${reason.en}` : ""}.`));
  } else {
    $("e2e-result").replaceChildren(...(run.waiting
      ? [bi(`Väntar: ${run.waiting.sv}.`, `Waiting: ${run.waiting.en}.`)] : []));
  }
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

// -- provisioning ----------------------------------------------------------------------------

const REGISTER_TYPES = ["alarm_unit", "button", "base_unit", "fall", "bed", "door", "motion",
  "temperature", "smoke", "water", "camera"];

async function loadProvisioning(deviceId) {
  try {
    [fleet, recipients] = await Promise.all([api.get("/console/fleet"), api.get("/recipients")]);
  } catch (error) {
    $("provision-error").replaceChildren(error.message);
    return;
  }
  fillSelects(deviceId);
}

function option(value, sv, en = sv) {
  return h("option", { value, dataset: { sv, en } }, tr(sv, en));
}

function fillSelects(deviceId) {
  const devices = [...fleet.devices].sort((a, b) => a.id.localeCompare(b.id));
  for (const select of document.querySelectorAll("#provision-view select.devices")) {
    // A device chosen elsewhere (its detail page) is preselected, but never for the one
    // irreversible form: decommissioning is always chosen by hand.
    const keep = deviceId && select.id !== "decommission-device" ? deviceId : select.value;
    select.replaceChildren(option("", "Välj enhet…", "Choose a device…"), ...devices.map((d) => {
      const [tsv, ten] = deviceTypeLabel(d.type);
      const whose = d.recipient ? ` – ${d.recipient.name}` : "";
      return option(d.id, `${d.id} (${tsv})${whose || " – okopplad"}`, `${d.id} (${ten})${whose || " – unbound"}`);
    }));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
  // A device to swap in must be registered and not bound to anyone yet.
  const unbound = devices.filter((d) => !d.recipient);
  $("swap-new").replaceChildren(option("", "Välj ny enhet…", "Choose the new device…"),
    ...unbound.map((d) => option(d.id, d.id)));
  const people = [...recipients].sort((a, b) => a.name.localeCompare(b.name, "sv"));
  for (const select of document.querySelectorAll("#provision-view select.recipients")) {
    const keep = select.value;
    const none = select.id === "reg-recipient" ? option("", "Ingen ännu", "None yet") : option("", "Välj brukare…", "Choose a recipient…");
    select.replaceChildren(none, ...people.map((r) => option(r.id, `${r.name}, ${r.address}`)));
    if ([...select.options].some((o) => o.value === keep)) select.value = keep;
  }
  const types = $("reg-type");
  if (!types.options.length) {
    types.replaceChildren(...REGISTER_TYPES.map((t) => {
      const [sv, en] = DEVICE_TYPES[t] || [t, t];
      return option(t, `${sv} (${t})`, `${en} (${t})`);
    }));
  }
}

/** Run one provisioning call: says what happened (or why not), then reloads the lists. */
async function provision(form, call, done) {
  $("provision-error").replaceChildren();
  $("provision-status").replaceChildren();
  for (const b of form.querySelectorAll("button")) b.disabled = true;
  try {
    const answer = await call();
    $("provision-status").replaceChildren(done(answer));
    await loadProvisioning(null);
    return answer;
  } catch (error) {
    $("provision-error").replaceChildren(error.message);
    return null;
  } finally {
    for (const b of form.querySelectorAll("button")) b.disabled = false;
  }
}

/** A required field left empty: say so beside the form, mark the field, focus it. */
function missing(field, sv, en) {
  $("provision-status").replaceChildren();
  $("provision-error").replaceChildren(bi(sv, en));
  field.setAttribute("aria-invalid", "true");
  field.focus();
  field.addEventListener("input", () => field.removeAttribute("aria-invalid"), { once: true });
  field.addEventListener("change", () => field.removeAttribute("aria-invalid"), { once: true });
}

const ID_RE = /^[A-Za-z0-9_.:-]{1,64}$/;

$("register-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target;
  const id = f.id.value.trim();
  if (!ID_RE.test(id)) { missing(f.id, "Ange ett enhets-id: bokstäver, siffror, _ . : -", "Enter a device id: letters, digits, _ . : -"); return; }
  if (!f.serial.value.trim()) { missing(f.serial, "Ange serienumret.", "Enter the serial number."); return; }
  provision(f, () => api.post("/devices", {
    id, type: f.type.value, serial: f.serial.value.trim(), model: f.model.value.trim(),
    recipient_id: f.recipient_id.value || null,
  }), (d) => {
    f.reset();
    return bi(`Registrerad: ${d.id}${d.recipient ? `, kopplad till ${d.recipient.name}` : ""}.`,
      `Registered: ${d.id}${d.recipient ? `, bound to ${d.recipient.name}` : ""}.`);
  });
});

$("bind-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target;
  if (!f.device.value) { missing(f.device, "Välj en enhet.", "Choose a device."); return; }
  if (!f.recipient_id.value) { missing(f.recipient_id, "Välj en brukare.", "Choose a recipient."); return; }
  provision(f, () => api.post(`/devices/${encodeURIComponent(f.device.value)}/bind`, { recipient_id: f.recipient_id.value }),
    (d) => bi(`${d.id} är kopplad till ${d.recipient.name}.`, `${d.id} is bound to ${d.recipient.name}.`));
});

$("unbind").addEventListener("click", () => {
  const f = $("bind-form");
  if (!f.device.value) { missing(f.device, "Välj en enhet.", "Choose a device."); return; }
  provision(f, () => api.post(`/devices/${encodeURIComponent(f.device.value)}/unbind`),
    (d) => bi(`${d.id} är inte längre kopplad.`, `${d.id} is no longer bound.`));
});

$("claim-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const f = event.target;
  if (!f.device.value) { missing(f.device, "Välj en enhet.", "Choose a device."); return; }
  $("claim-result").hidden = true;
  const claim = await provision(f, () => api.post(`/devices/${encodeURIComponent(f.device.value)}/claim-code`),
    (c) => bi(`Ny claim-kod för ${c.device_id}; en äldre kod slutar gälla.`, `New claim code for ${c.device_id}; any older code stops working.`));
  if (!claim) return;
  f.device.value = claim.device_id;
  $("claim-qr").src = claim.qr_image;
  $("claim-qr").alt = tr(`QR-kod för ${claim.device_id}: ${claim.qr}`, `QR code for ${claim.device_id}: ${claim.qr}`);
  $("claim-qr").dataset.payload = claim.qr;
  $("claim-code").textContent = claim.code;
  $("claim-expires").textContent = dateTime(claim.expires_at * 1000);
  $("claim-result").hidden = false;
});

$("swap-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target;
  if (!f.old.value) { missing(f.old, "Välj den gamla enheten.", "Choose the old device."); return; }
  if (!f.new.value) { missing(f.new, "Välj den nya enheten.", "Choose the new device."); return; }
  provision(f, () => api.post(`/devices/${encodeURIComponent(f.old.value)}/swap`, { new_device_id: f.new.value }),
    (d) => bi(`${d.id} har ersatt ${f.old.value}${d.recipient ? ` hos ${d.recipient.name}` : ""}.`,
      `${d.id} has replaced ${f.old.value}${d.recipient ? ` for ${d.recipient.name}` : ""}.`));
});

$("decommission-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const f = event.target;
  if (!f.device.value) { missing(f.device, "Välj en enhet.", "Choose a device."); return; }
  if (!f.sure.checked) { missing(f.sure, "Bekräfta att enheten ska avvecklas.", "Confirm that the device is to be decommissioned."); return; }
  const id = f.device.value;
  provision(f, () => api.post(`/devices/${encodeURIComponent(id)}/decommission`),
    () => { f.reset(); return bi(`${id} är avvecklad.`, `${id} is decommissioned.`); });
});

route();
