// A key-value store in IndexedDB, shared with the service worker (which cannot read
// localStorage): js/session.js keeps the session (access and refresh token) under
// "session", so the worker can post receipts and refresh the token while the app is closed.
const DB = "trygg";
const STORE = "kv";

function open() {
  return new Promise((resolve, reject) => {
    const request = indexedDB.open(DB, 1);
    request.onupgradeneeded = () => request.result.createObjectStore(STORE);
    request.onsuccess = () => resolve(request.result);
    request.onerror = () => reject(request.error);
  });
}

async function run(mode, fn) {
  const db = await open();
  try {
    return await new Promise((resolve, reject) => {
      const tx = db.transaction(STORE, mode);
      const request = fn(tx.objectStore(STORE));
      tx.oncomplete = () => resolve(request.result);
      tx.onerror = tx.onabort = () => reject(tx.error);
    });
  } finally { db.close(); }
}

export const kvGet = (key) => run("readonly", (s) => s.get(key));
export const kvSet = (key, value) => run("readwrite", (s) => s.put(value, key));
export const kvDelete = (key) => run("readwrite", (s) => s.delete(key));
