// The staff HTTP API. Errors carry the server's `detail` (e.g. "already accepted by anna").
//
// With a session (js/session.js) every call uses its current access token, refreshed first
// when it is about to expire; a 401 refreshes it (one refresh for any number of callers)
// and retries the call once. A refused refresh ends the session (the session's onEnd).
import { EXPIRED, RefreshRefused } from "./session.js";

const NO_CONNECTION = "Ingen anslutning – försök igen / No connection – try again";

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

export class Api {
  /** onUnauthorized(): a 401 that a refresh could not cure. */
  constructor(onUnauthorized, session = null) {
    this.token = null; // without a session: a bare bearer token
    this.session = session;
    this.onUnauthorized = onUnauthorized;
  }

  async login(username, password) {
    const body = new URLSearchParams({ username, password });
    let response;
    try {
      response = await fetch("/api/v1/auth/token", { method: "POST", body });
    } catch {
      throw new ApiError(0, NO_CONNECTION);
    }
    if (!response.ok) throw new ApiError(response.status, await detail(response));
    return response.json();
  }

  async call(method, path, body) {
    let used = await this.bearer(() => this.session.fresh());
    let response = await this.send(method, path, body, used.access_token);
    if (response.status === 401 && this.session && this.session.active) {
      used = await this.bearer(() => this.session.refresh(used));
      response = await this.send(method, path, body, used.access_token);
    }
    if (response.status === 401) {
      if (used.access_token) this.onUnauthorized();
      throw new ApiError(401, EXPIRED);
    }
    if (!response.ok) throw new ApiError(response.status, await detail(response));
    return response.status === 204 ? null : response.json();
  }

  /** The session to call with ({access_token, ...}); without one, the bare token. */
  async bearer(renew) {
    if (!this.session) return { access_token: this.token };
    if (!this.session.active) throw new ApiError(401, EXPIRED);
    try {
      return await renew();
    } catch (error) {
      if (error instanceof RefreshRefused) throw new ApiError(401, EXPIRED);
      throw new ApiError(0, NO_CONNECTION);
    }
  }

  async send(method, path, body, token) {
    const headers = { Authorization: `Bearer ${token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    try {
      return await fetch(`/api/v1${path}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, NO_CONNECTION);
    }
  }

  get(path) { return this.call("GET", path); }
  post(path, body) { return this.call("POST", path, body); }
  delete(path, body) { return this.call("DELETE", path, body); }
}

async function detail(response) {
  try {
    const body = await response.json();
    if (typeof body.detail === "string") return body.detail;
    if (Array.isArray(body.detail)) return body.detail.map((d) => d.msg).join("; ");
  } catch { /* not JSON */ }
  return `${response.status} ${response.statusText}`;
}
