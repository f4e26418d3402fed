// The staff HTTP API. Errors carry the server's `detail` (e.g. "already accepted by anna").

export class ApiError extends Error {
  constructor(status, detail) { super(detail); this.status = status; }
}

export class Api {
  constructor(onUnauthorized) { this.token = null; this.onUnauthorized = onUnauthorized; }

  async login(username, password) {
    const body = new URLSearchParams({ username, password });
    const response = await fetch("/api/v1/auth/token", { method: "POST", body });
    if (!response.ok) throw new ApiError(response.status, await detail(response));
    return response.json();
  }

  async call(method, path, body) {
    const headers = { Authorization: `Bearer ${this.token}` };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(`/api/v1${path}`, {
        method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch {
      throw new ApiError(0, "Ingen anslutning – försök igen / No connection – try again");
    }
    if (response.status === 401) { this.onUnauthorized(); throw new ApiError(401, "Utloggad / Logged out"); }
    if (!response.ok) throw new ApiError(response.status, await detail(response));
    return response.status === 204 ? null : response.json();
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
