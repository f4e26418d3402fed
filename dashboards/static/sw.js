// trygg service worker: app shell offline, Web Push notifications and their receipts.
// Served from /app/sw.js so its scope is /app/. Classic script (no modules) for the widest
// browser support; the IndexedDB helper is the same as js/idb.js.
const CACHE = "trygg-shell-v1";
const SHELL = [
  "/app/", "/static/app.css", "/static/app.js", "/static/manifest.json", "/static/icon.svg",
  "/static/js/alarms.js", "/static/js/alert.js", "/static/js/api.js", "/static/js/dom.js",
  "/static/js/i18n.js", "/static/js/idb.js", "/static/js/live.js", "/static/js/push.js",
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

// -- push --------------------------------------------------------------------------------

function kvGet(key) {
  return new Promise((resolve, reject) => {
    const open = indexedDB.open("trygg", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("kv");
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const db = open.result;
      const tx = db.transaction("kv", "readonly");
      const request = tx.objectStore("kv").get(key);
      tx.oncomplete = () => { db.close(); resolve(request.result); };
      tx.onerror = () => { db.close(); reject(tx.error); };
    };
  });
}

async function postReceipt(alarmId) {
  const token = await kvGet("token");
  const expires = await kvGet("token_expires");
  if (!token || (expires && expires < Date.now())) return false; // logged out: no receipt
  const response = await fetch(`/api/v1/alarms/${encodeURIComponent(alarmId)}/receipt`, {
    method: "POST", headers: { Authorization: `Bearer ${token}` } });
  return response.ok;
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
    const token = await kvGet("token");
    if (!token) return;
    const old = event.oldSubscription;
    const subscription = event.newSubscription || await self.registration.pushManager.subscribe(
      { userVisibleOnly: true, applicationServerKey: old && old.options.applicationServerKey });
    const headers = { Authorization: `Bearer ${token}`, "Content-Type": "application/json" };
    if (old) {
      await fetch("/api/v1/push/subscriptions", { method: "DELETE", headers,
        body: JSON.stringify({ endpoint: old.endpoint }) }).catch(() => {});
    }
    await fetch("/api/v1/push/subscriptions", { method: "POST", headers,
      body: JSON.stringify(subscription.toJSON()) });
  })());
});
