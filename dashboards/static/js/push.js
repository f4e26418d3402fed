// Web Push on the page side: register the service worker, subscribe, tell the gateway.
// The worker finds the access token (and refreshes it) in the session store that
// js/session.js keeps in IndexedDB.

export const supported = "serviceWorker" in navigator && "PushManager" in window && "Notification" in window;

export async function registerWorker() {
  if (!("serviceWorker" in navigator)) return null;
  try {
    return await navigator.serviceWorker.register("/app/sw.js", { scope: "/app/" });
  } catch (error) {
    console.warn("service worker registration failed", error);
    return null;
  }
}

function keyBytes(base64url) {
  const b64 = base64url.replace(/-/g, "+").replace(/_/g, "/") + "=".repeat((4 - base64url.length % 4) % 4);
  return Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
}

/** Ask permission (must run from a tap), subscribe and register with the gateway. */
export async function enablePush(api) {
  if (!supported) throw new Error("Aviseringar stöds inte här / Notifications not supported here");
  const permission = await Notification.requestPermission();
  if (permission !== "granted") throw new Error("Aviseringar nekade / Notifications denied");
  return subscribe(api);
}

/** Subscribe without asking (permission already granted), e.g. after login. */
export async function resubscribe(api) {
  if (!supported || Notification.permission !== "granted") return false;
  await subscribe(api);
  return true;
}

async function subscribe(api) {
  const registration = await navigator.serviceWorker.ready;
  const { public_key: key } = await api.get("/push/vapid-public-key");
  let subscription = await registration.pushManager.getSubscription();
  if (subscription && !sameKey(subscription, key)) { await subscription.unsubscribe(); subscription = null; }
  if (!subscription) {
    subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: keyBytes(key) });
  }
  try {
    await api.post("/push/subscriptions", subscription.toJSON());
  } catch (error) {
    if (error.status !== 409) throw error;
    // The endpoint is another staff member's (a shared phone whose last user did not log
    // out). The gateway never moves it; a fresh subscription has an endpoint of its own.
    await subscription.unsubscribe();
    subscription = await registration.pushManager.subscribe({
      userVisibleOnly: true, applicationServerKey: keyBytes(key) });
    await api.post("/push/subscriptions", subscription.toJSON());
  }
}

function sameKey(subscription, key) {
  const current = subscription.options && subscription.options.applicationServerKey;
  if (!current) return true;
  const a = new Uint8Array(current);
  const b = keyBytes(key);
  return a.length === b.length && a.every((x, i) => x === b[i]);
}

/** On logout: stop pushes for this user on this phone. */
export async function disablePush(api) {
  if (!supported) return;
  try {
    const registration = await navigator.serviceWorker.getRegistration("/app/");
    const subscription = registration && await registration.pushManager.getSubscription();
    if (subscription) {
      await api.delete("/push/subscriptions", { endpoint: subscription.endpoint }).catch(() => {});
      await subscription.unsubscribe();
    }
  } catch (error) { console.warn("could not unsubscribe", error); }
}
