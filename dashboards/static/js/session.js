// A signed-in session: a short-lived access token plus a rotating refresh token.
//
// POST /api/v1/auth/token answers {access_token, expires_in, refresh_token}. The access
// token is renewed with POST /api/v1/auth/refresh shortly before it expires (a timer from
// expires_in, with jitter) and whenever the API answers 401. Each refresh token works once:
// presenting a spent one revokes the whole session (the gateway takes it for a copied
// token). So refreshes are serialised: one in flight per page, and across every page and
// the service worker sharing a store by a Web Lock. Inside the lock the store is read
// again; if somebody else has refreshed meanwhile, their tokens are taken instead of
// refreshing a second time. The service worker (sw.js) does the same with the same lock
// and store: keep the two in step.
import { kvDelete, kvGet, kvSet } from "./idb.js";

export const EXPIRED = "Sessionen har gått ut – logga in igen / Session expired – log in again";
export const LOGGED_OUT = "Utloggad / Logged out";

const REFRESH_AT = [0.7, 0.85];   // refresh between 70 and 85 % of the token's lifetime
const MIN_LEFT_MS = 5_000;        // a token with less left than this counts as expired
const RETRY_BASE_MS = 2_000;      // a refresh that failed for the network is retried with
const RETRY_MAX_MS = 60_000;      // full-jitter back-off, 1–2 s at first, at most 60 s
const REQUEST_TIMEOUT_MS = 15_000;

// A refresh that hangs would hold the lock for every tab: give up after a while.
const deadline = () => (AbortSignal.timeout ? AbortSignal.timeout(REQUEST_TIMEOUT_MS) : undefined);

/** The server refused the refresh token (revoked, expired, reused): the session is over. */
export class RefreshRefused extends Error {}

/** The network or the gateway failed; the session may well still be good. */
export class RefreshFailed extends Error {}

/** A token endpoint's answer as it is stored. Times are this device's clock (ms). */
export function tokensFrom(body, now = Date.now()) {
  return {
    access_token: body.access_token,
    refresh_token: body.refresh_token ?? null,
    issued_at: now,
    expires_at: now + (body.expires_in ?? 900) * 1000,
  };
}

/** The staff app's store: IndexedDB, shared with the service worker (it posts receipts). */
export const sharedStore = {
  load: () => kvGet("session"),
  save: (state) => kvSet("session", state),
  clear: () => kvDelete("session"),
};

/** A store for one browser tab (the console and the ops dashboard). */
export function tabStore(key) {
  return {
    async load() { return JSON.parse(sessionStorage.getItem(key) || "null"); },
    async save(state) { sessionStorage.setItem(key, JSON.stringify(state)); },
    async clear() { sessionStorage.removeItem(key); },
    peek() { return JSON.parse(sessionStorage.getItem(key) || "null"); },
  };
}

export class Session {
  /**
   * store: {load, save, clear}, async. lock / channel: a Web Lock and BroadcastChannel name
   * shared by every context that uses the same store (tabs, the service worker); null for a
   * store of one tab. onToken(token): a new access token is in use. onEnd(message): the
   * session ended (refresh refused, or logged out in another tab).
   */
  constructor(store, { lock = null, channel = null, onToken = () => {}, onEnd = () => {} } = {}) {
    this.store = store;
    this.lock = lock;
    this.onToken = onToken;
    this.onEnd = onEnd;
    this.state = null;
    this.inflight = null;
    this.timer = null;
    this.failures = 0;
    this.channel = null;
    if (channel && "BroadcastChannel" in self) {
      this.channel = new BroadcastChannel(channel);
      this.channel.onmessage = (event) => this.heard(event.data || {});
    }
    // Timers do not run in a frozen page (a phone in a pocket): catch up when it is back.
    document.addEventListener("visibilitychange", () => { if (document.visibilityState === "visible") this.catchUp(); });
    window.addEventListener("online", () => this.catchUp());
  }

  get active() { return this.state !== null; }
  get token() { return this.state ? this.state.access_token : null; }

  /** Start a session from the login answer. */
  async begin(body) {
    const state = tokensFrom(body);
    try { await this.store.save(state); } catch (error) { console.warn("could not store the session", error); }
    this.adopt(state);
    this.post({ type: "login" });
  }

  /** Pick up a stored session (a reload); false if there is none. */
  async resume() {
    let state = null;
    try { state = await this.store.load(); } catch { /* no storage: log in */ }
    if (!state || !state.access_token) return false;
    if (!state.refresh_token && state.expires_at <= Date.now()) { await this.forget(); return false; }
    this.adopt(state);
    return true;
  }

  /** The session to call with: its access token good for a few more seconds (refreshed
   * first if it is not). */
  async fresh() {
    if (!this.state) throw new RefreshRefused(EXPIRED);
    if (this.state.expires_at - Date.now() > MIN_LEFT_MS) return this.state;
    return this.refresh(this.state);
  }

  /**
   * Replace `used`, the session whose access token got a 401 or is about to expire (a bare
   * access token, e.g. one the socket refused, is taken as well); resolves to the new
   * session. Concurrent callers share one refresh. Throws RefreshRefused (the session has
   * ended and onEnd has run) or RefreshFailed (network or server trouble; try later).
   */
  refresh(used = this.state) {
    if (typeof used === "string") {
      used = this.state && this.state.access_token === used ? this.state : { access_token: used, refresh_token: null };
    }
    if (!this.inflight) {
      this.inflight = this.locked(() => this.refreshLocked(used)).finally(() => { this.inflight = null; });
    }
    return this.inflight;
  }

  async refreshLocked(used) {
    if (!this.state) throw new RefreshRefused(EXPIRED);
    let current = this.state;
    try { current = (await this.store.load()) || null; } catch { /* use what this page has */ }
    if (!current) { this.end(EXPIRED); throw new RefreshRefused(EXPIRED); }
    // Compared by refresh token: access tokens issued in the same second are identical.
    if (current.refresh_token !== (used && used.refresh_token) && current.expires_at - Date.now() > MIN_LEFT_MS) {
      this.adopt(current); // another tab, the service worker or this page has refreshed meanwhile
      return current;
    }
    if (!current.refresh_token) { await this.forget(); this.end(EXPIRED); throw new RefreshRefused(EXPIRED); }
    let response;
    try {
      response = await fetch("/api/v1/auth/refresh", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ refresh_token: current.refresh_token }),
        signal: deadline(),
      });
    } catch {
      throw new RefreshFailed("Ingen anslutning – försök igen / No connection – try again");
    }
    if (response.status >= 400 && response.status < 500) {
      await this.forget();
      this.end(EXPIRED);
      throw new RefreshRefused(EXPIRED);
    }
    if (!response.ok) throw new RefreshFailed(`${response.status} ${response.statusText}`);
    const next = tokensFrom(await response.json());
    try { await this.store.save(next); } catch (error) { console.warn("could not store the session", error); }
    this.failures = 0;
    this.adopt(next);
    this.post({ type: "tokens" });
    return next;
  }

  /** Log out: revoke the refresh token's family at the gateway and forget the tokens. */
  async logout() {
    const mine = this.state;
    this.stop();
    await this.locked(async () => {
      let stored = null;
      try { stored = await this.store.load(); } catch { /* nothing stored */ }
      await this.forget();
      // Any token of the family revokes all of it, a spent one too.
      const token = (stored && stored.refresh_token) || (mine && mine.refresh_token);
      if (!token) return;
      try {
        await fetch("/api/v1/auth/logout", {
          method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ refresh_token: token }), signal: deadline() });
      } catch { /* offline: the refresh token expires on its own */ }
    });
    this.post({ type: "end", message: LOGGED_OUT });
  }

  // -- inside ----------------------------------------------------------------------------

  adopt(state) {
    const changed = !this.state || this.state.access_token !== state.access_token;
    this.state = state;
    this.schedule();
    if (changed) this.onToken(state.access_token);
  }

  schedule(delay) {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.state) return;
    const { issued_at: issued, expires_at: expires } = this.state;
    if (delay === undefined) {
      // Jitter: the phones of a shift that logged in together do not all refresh at once.
      const share = REFRESH_AT[0] + Math.random() * (REFRESH_AT[1] - REFRESH_AT[0]);
      delay = issued + (expires - issued) * share - Date.now();
    }
    this.dueAt = Date.now() + Math.max(0, delay);
    this.timer = setTimeout(() => this.due(), Math.max(0, delay));
  }

  catchUp() {
    if (this.state && this.timer && Date.now() >= this.dueAt) this.due();
  }

  async due() {
    clearTimeout(this.timer);
    this.timer = null;
    if (!this.state) return;
    if (!this.state.refresh_token) {
      // A token from before refresh tokens: it runs out, then the session ends.
      if (this.state.expires_at > Date.now()) { this.schedule(this.state.expires_at - Date.now()); return; }
      await this.forget();
      this.end(EXPIRED);
      return;
    }
    try {
      await this.refresh(this.state);
    } catch (error) {
      if (error instanceof RefreshRefused) return;
      const cap = Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** this.failures);
      this.failures += 1;
      this.schedule(cap / 2 + Math.random() * cap / 2);
    }
  }

  stop() {
    clearTimeout(this.timer);
    this.timer = null;
    this.state = null;
  }

  end(message) {
    const was = this.state !== null;
    this.stop();
    this.post({ type: "end", message });
    if (was) this.onEnd(message);
  }

  async forget() {
    try { await this.store.clear(); } catch { /* nothing stored */ }
  }

  async heard(message) {
    if (!this.state) return;
    // Logged out in another tab; or a new login there replaced this session in the store.
    if (message.type === "end" || message.type === "login") {
      this.stop();
      this.onEnd(message.message || LOGGED_OUT);
      return;
    }
    if (message.type !== "tokens") return;
    let stored = null;
    try { stored = await this.store.load(); } catch { return; }
    if (stored && this.state && stored.issued_at > this.state.issued_at) this.adopt(stored);
  }

  post(message) {
    if (this.channel) this.channel.postMessage(message);
  }

  locked(fn) {
    if (this.lock && navigator.locks) return navigator.locks.request(this.lock, fn);
    return fn();
  }
}
