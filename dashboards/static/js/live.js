// The live connection: WebSocket /api/v1/ws with reconnect (jittered, capped back-off).
//
// Online means: socket open and the server's "hello" received. Anything else is offline,
// shown with the time it started. On every (re)connect the server sends the open alarms
// and then {"type":"sync","open":[ids]}; the app drops what is not in that list.
//
// The access token is a query parameter, checked when the socket opens. A refreshed token
// (renew) is used from the next (re)connect on; an open socket is kept. The server's close
// code 4401 (token refused) goes to authFailed(token) with the token that was refused: the
// app refreshes and starts again, or logs out.

const BACKOFF_BASE_MS = 500;     // first retry after ~0.25–0.5 s
const BACKOFF_MAX_MS = 30_000;   // never wait longer than 30 s between tries
const HELLO_TIMEOUT_MS = 10_000; // an open socket that says nothing is as good as none
const AUTH_FAILED = 4401;        // the server's close code for a bad or expired token

export class Live {
  /** handlers: {message(msg), online(bool, sinceDate), authFailed(refusedToken)} */
  constructor(handlers) {
    this.handlers = handlers;
    this.socket = null;
    this.token = null;
    this.attempt = 0;
    this.timer = null;
    this.online = false;
    this.offlineSince = new Date();
    this.receipted = new Set(); // alarm ids receipted on the current socket
    window.addEventListener("online", () => { if (this.token) this.connectNow(); });
    window.addEventListener("offline", () => { if (this.socket) this.socket.close(); this.setOnline(false); });
    document.addEventListener("visibilitychange", () => {
      if (document.visibilityState === "visible" && this.token && !this.socket) this.connectNow();
    });
  }

  start(token) { this.token = token; this.attempt = 0; this.connectNow(); }

  /** A refreshed access token, for the next (re)connect. */
  renew(token) { if (this.token) this.token = token; }

  stop() {
    this.token = null;
    clearTimeout(this.timer);
    if (this.socket) { const s = this.socket; this.socket = null; s.close(1000); }
    this.setOnline(false);
  }

  connectNow() {
    clearTimeout(this.timer);
    this.timer = null;
    if (this.socket || !this.token) return;
    if (navigator.onLine === false) { this.setOnline(false); return; } // the "online" event resumes
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = this.token;
    const url = `${scheme}://${location.host}/api/v1/ws?token=${encodeURIComponent(token)}`;
    const socket = new WebSocket(url);
    this.socket = socket;
    this.receipted = new Set();
    const helloTimer = setTimeout(() => socket.close(), HELLO_TIMEOUT_MS);
    socket.onmessage = (event) => {
      if (socket !== this.socket) return;
      let message;
      try { message = JSON.parse(event.data); } catch { return; }
      if (message.type === "hello") { clearTimeout(helloTimer); this.attempt = 0; this.setOnline(true); }
      this.handlers.message(message);
    };
    socket.onclose = (event) => {
      clearTimeout(helloTimer);
      if (socket !== this.socket) return;
      this.socket = null;
      this.setOnline(false);
      if (event.code === AUTH_FAILED) { this.handlers.authFailed(token); return; }
      this.schedule();
    };
  }

  schedule() {
    if (!this.token || this.timer) return;
    // Full jitter: phones coming back after a network outage do not all reconnect at once.
    const cap = Math.min(BACKOFF_MAX_MS, BACKOFF_BASE_MS * 2 ** this.attempt);
    this.attempt += 1;
    this.timer = setTimeout(() => { this.timer = null; this.connectNow(); }, cap / 2 + Math.random() * cap / 2);
  }

  setOnline(online) {
    if (online === this.online) return;
    this.online = online;
    if (!online) this.offlineSince = new Date();
    this.handlers.online(online, this.offlineSince);
  }

  /** Confirm an alarm reached this phone (the `delivered` hop); once per alarm per socket. */
  receipt(alarmId) {
    if (!this.online || this.receipted.has(alarmId)) return;
    this.receipted.add(alarmId);
    this.socket.send(JSON.stringify({ type: "receipt", alarm_id: alarmId }));
  }
}
