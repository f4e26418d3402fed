// trygg service worker: app shell offline, Web Push notifications and their receipts.
// Served from /app/sw.js so its scope is /app/. Classic script (no modules) for the widest
// browser support; the IndexedDB helper is the same as js/idb.js.
const CACHE = "trygg-shell-v3";
const SHELL = [
  "/app/", "/static/app.css", "/static/app.js", "/static/manifest.json", "/static/icon.svg",
  "/static/js/alarms.js", "/static/js/alert.js", "/static/js/api.js", "/static/js/dom.js",
  "/static/js/i18n.js", "/static/js/icons.js", "/static/js/idb.js", "/static/js/live.js",
  "/static/js/push.js", "/static/js/session.js",
];

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key);
    await self.clients.claim();
  })());
});

// Network first, the cached shell when offline. The API is never cached: alarm state must
// come from the gateway or be shown as unknown, never from a stale copy.
self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (!(url.pathname.startsWith("/static/") || url.pathname === "/app/")) return;
  event.respondWith((async () => {
    try {
      const response = await fetch(event.request);
      if (response.ok) {
        const cache = await caches.open(CACHE);
        await cache.put(event.request, response.clone());
      }
      return response;
    } catch (error) {
      const cached = await caches.match(event.request, { ignoreSearch: true });
      if (cached) return cached;
      throw error;
    }
  })());
});

// -- the session (the worker's half of js/session.js: keep the two in step) --------------

const AUTH = "trygg-auth";       // the Web Lock and BroadcastChannel the pages use as well
const MIN_LEFT_MS = 5_000;       // a token with less left than this counts as expired
const EXPIRED = "Sessionen har gått ut – logga in igen / Session expired – log in again";

function kv(mode, fn) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("trygg", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("kv");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction("kv", mode);
      const request = fn(tx.objectStore("kv"));
      tx.oncomplete = () => { db.close(); resolve(request.result); };
      tx.onerror = tx.onabort = () => { db.close(); reject(tx.error); };
    };
  });
}

const kvGet = (key) => kv("readonly", (store) => store.get(key));
const kvSet = (key, value) => kv("readwrite", (store) => store.put(value, key));
const kvDelete = (key) => kv("readwrite", (store) => store.delete(key));

function tell(message) {
  if (!("BroadcastChannel" in self)) return;
  const channel = new BroadcastChannel(AUTH);
  channel.postMessage(message);
  channel.close();
}

/**
 * The session for the worker's own calls, or null (logged out, session over, offline).
 * `refused`: the session whose access token the gateway just answered 401 to. The worker
 * refreshes the token itself while the app is closed: under the pages' Web Lock, after
 * reading the store again, so a page and the worker never spend the same refresh token
 * twice (that would revoke the session). Sessions are compared by refresh token: access
 * tokens issued in the same second are identical.
 */
async function session(refused = null) {
  const run = async () => {
    const state = await kvGet("session");
    if (!state || !state.access_token) return null;
    const fresh = state.expires_at - Date.now() > MIN_LEFT_MS;
    if (fresh && (!refused || state.refresh_token !== refused.refresh_token)) return state;
    if (!state.refresh_token) return null;
    const response = await fetch("/api/v1/auth/refresh", {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ refresh_token: state.refresh_token }),
      // A hanging refresh would hold the lock for every page: give up after a while.
      signal: AbortSignal.timeout ? AbortSignal.timeout(15_000) : undefined });
    if (response.status >= 400 && response.status < 500) {
      await kvDelete("session");
      tell({ type: "end", message: EXPIRED });
      return null;
    }
    if (!response.ok) return null;
    const body = await response.json();
    const now = Date.now();
    const next = {
      access_token: body.access_token, refresh_token: body.refresh_token ?? null,
      issued_at: now, expires_at: now + (body.expires_in ?? 900) * 1000 };
    await kvSet("session", next);
    tell({ type: "tokens" });
    return next;
  };
  return self.navigator.locks ? self.navigator.locks.request(AUTH, run) : run();
}

/** fetch with the bearer token; after a 401 once more with a refreshed one. */
async function authorised(url, init = {}) {
  let used = await session();
  if (!used) return null;
  const call = (state) => fetch(url, {
    ...init, headers: { ...init.headers, Authorization: `Bearer ${state.access_token}` } });
  let response = await call(used);
  if (response.status === 401) {
    used = await session(used);
    if (!used) return response;
    response = await call(used);
  }
  return response;
}

// -- push --------------------------------------------------------------------------------

async function postReceipt(alarmId) {
  // Logged out or the session is over: no receipt.
  const response = await authorised(`/api/v1/alarms/${encodeURIComponent(alarmId)}/receipt`, { method: "POST" });
  return Boolean(response && response.ok);
}

async function onPush(data) {
  const alarmId = data.alarm_id;
  const title = `${data.test ? "Provlarm" : "Larm"}: ${data.title || data.type || ""}`;
  let shown = false;
  try {
    await self.registration.showNotification(title, {
      body: "Öppna appen för adress och handlingsplan / Open the app for address and action plan",
      tag: alarmId ? `alarm-${alarmId}` : "trygg",
      renotify: true,
      requireInteraction: !data.test,
      silent: Boolean(data.test),
      vibrate: data.test ? undefined : [400, 150, 400, 150, 400],
      icon: "/static/icon-192.png",
      badge: "/static/icon-192.png",
      data: { alarmId },
      lang: "sv",
    });
    shown = true;
  } catch (error) {
    console.warn("could not show notification", error);
  }
  const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
  for (const client of windows) client.postMessage({ type: "push", alarm_id: alarmId });
  // `delivered` means a person can see it: a notification on the phone or the app in view.
  const visible = windows.some((client) => client.visibilityState === "visible");
  if (alarmId && (shown || visible)) {
    try { await postReceipt(alarmId); } catch (error) { console.warn("receipt failed", error); }
  }
}

self.addEventListener("push", (event) => {
  let data = {};
  try { data = event.data ? event.data.json() : {}; } catch { data = {}; }
  event.waitUntil(onPush(data));
});

self.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const alarmId = event.notification.data && event.notification.data.alarmId;
  const target = alarmId ? `/app/#/alarm/${encodeURIComponent(alarmId)}` : "/app/";
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: "window", includeUncontrolled: true });
    for (const client of windows) {
      if (new URL(client.url).pathname === "/app/") {
        await client.focus();
        return client.navigate ? client.navigate(target) : undefined;
      }
    }
    return self.clients.openWindow(target);
  })());
});

// The browser replaced the subscription (key rotation, expiry): register the new one.
self.addEventListener("pushsubscriptionchange", (event) => {
  event.waitUntil((async () => {
    if (!await session()) return;
    const old = event.oldSubscription;
    const subscription = event.newSubscription || await self.registration.pushManager.subscribe(
      { userVisibleOnly: true, applicationServerKey: old && old.options.applicationServerKey });
    const headers = { "Content-Type": "application/json" };
    if (old) {
      await authorised("/api/v1/push/subscriptions", { method: "DELETE", headers,
        body: JSON.stringify({ endpoint: old.endpoint }) }).catch(() => {});
    }
    await authorised("/api/v1/push/subscriptions", { method: "POST", headers,
      body: JSON.stringify(subscription.toJSON()) });
  })());
});
