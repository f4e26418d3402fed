// Minimal live staff view: login, live alarm list over the WebSocket, receipts, actions.
// The full phone app (PWA, push, offline) grows from this in its own issue.
const TYPES = { manual: "Larmknapp / Button", fall: "Fall / Fall", smoke: "Brand / Smoke",
  water: "Vatten / Water leak", bed_exit: "Lämnat sängen / Bed exit", door: "Dörr / Door",
  inactivity: "Ingen aktivitet / No activity", temperature: "Temperatur / Temperature",
  test: "Provlarm / Test" };
const alarms = new Map();
let token = sessionStorage.getItem("token");
let me = null;

const $ = (id) => document.getElementById(id);

async function api(path, options = {}) {
  const response = await fetch(`/api/v1${path}`, {
    ...options, headers: { Authorization: `Bearer ${token}`, ...(options.headers || {}) } });
  if (!response.ok) throw new Error((await response.json()).detail || response.statusText);
  return response.json();
}

$("login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const body = new URLSearchParams(new FormData(event.target));
  const response = await fetch("/api/v1/auth/token", { method: "POST", body });
  if (!response.ok) { $("login-error").textContent = "Fel användarnamn eller lösenord / Wrong username or password"; return; }
  token = (await response.json()).access_token;
  sessionStorage.setItem("token", token);
  start();
});

function stateClass(alarm) {
  if (alarm.state === "closed") return "done";
  return alarm.owner ? "handling" : "new";
}

function render() {
  const list = $("alarm-list");
  list.replaceChildren();
  const open = [...alarms.values()].filter((a) => a.state === "open")
    .sort((a, b) => a.priority - b.priority || a.raised_at.localeCompare(b.raised_at));
  $("empty").hidden = open.length > 0;
  for (const alarm of open) {
    const item = document.createElement("li");
    item.className = `alarm ${stateClass(alarm)}`;
    item.dataset.alarmId = alarm.id;
    const who = alarm.recipient ? `${alarm.recipient.name}, ${alarm.recipient.address}` : alarm.device_id;
    item.innerHTML = `<h3></h3><div class="who"></div><div class="actions"></div><ol class="chain"></ol>`;
    item.querySelector("h3").textContent = TYPES[alarm.type] || alarm.type;
    item.querySelector(".who").textContent = who;
    const actions = item.querySelector(".actions");
    const button = (label, action) => {
      const b = document.createElement("button");
      b.textContent = label; b.dataset.action = action;
      b.addEventListener("click", () => act(alarm.id, action));
      actions.append(b);
    };
    if (!alarm.owner) button("Ta larmet / Accept", "accept");
    else if (me && alarm.owner === me.id) {
      if (!alarm.hops.some((h) => h.hop === "on_site")) button("På plats / On site", "on-site");
      button("Avsluta / Close", "close");
    }
    for (const hop of alarm.hops) {
      const li = document.createElement("li");
      li.textContent = `${hop.hop} ${new Date(hop.at).toLocaleTimeString("sv-SE")} ${hop.actor}`;
      item.querySelector(".chain").append(li);
    }
    list.append(item);
  }
}

async function act(id, action) {
  try {
    let options = { method: "POST" };
    if (action === "close") {
      const cause = prompt("Orsak / Cause", "hjälp given");
      if (!cause) return;
      options = { method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ cause }) };
    }
    const alarm = await api(`/alarms/${id}/${action}`, options);
    alarms.set(alarm.id, alarm); render();
  } catch (error) { alert(error.message); }
}

function connect() {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const socket = new WebSocket(`${scheme}://${location.host}/api/v1/ws?token=${encodeURIComponent(token)}`);
  socket.onopen = () => { $("conn").textContent = "Ansluten / Online"; $("conn").className = "conn on"; };
  socket.onmessage = (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "alarm") {
      const fresh = !alarms.has(message.alarm.id);
      alarms.set(message.alarm.id, message.alarm);
      if (!message.alarm.hops.some((h) => h.hop === "delivered")) {
        socket.send(JSON.stringify({ type: "receipt", alarm_id: message.alarm.id }));
      }
      if (fresh && navigator.vibrate) navigator.vibrate([300, 100, 300]);
      render();
    } else if (message.type === "sync") {
      for (const [id, alarm] of alarms) if (alarm.state === "open" && !message.open.includes(id)) alarms.delete(id);
      render();
    }
  };
  socket.onclose = (event) => {
    const since = new Date().toLocaleTimeString("sv-SE");
    $("conn").textContent = `Frånkopplad sedan ${since} / Offline since ${since}`;
    $("conn").className = "conn off";
    if (event.code === 4401) { sessionStorage.removeItem("token"); location.reload(); return; }
    setTimeout(connect, 2000);
  };
}

async function start() {
  try { me = await api("/me"); } catch { sessionStorage.removeItem("token"); return; }
  $("login").hidden = true; $("alarms").hidden = false;
  connect();
}

if (token) start();
