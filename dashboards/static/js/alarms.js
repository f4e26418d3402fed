// The app's alarm list: one entry per alarm id, the newest copy wins. Pure (no DOM, no I/O).

/** The colour/state class of an alarm: new (red), handling/on_site (yellow), done (green). */
export function stateOf(alarm) {
  if (alarm.state === "closed") return "done";
  if (!alarm.owner) return "new";
  return alarm.hops.some((h) => h.hop === "on_site") ? "on_site" : "handling";
}

const ORDER = { new: 0, handling: 1, on_site: 1, done: 2 };

/**
 * How far an alarm has come. Hops, handovers, escalations and the other lists of an alarm
 * only ever grow, so of two copies the one with more entries is the newer (a forward adds
 * a handover but no hop).
 */
export function version(alarm) {
  let n = alarm.hops.length;
  for (const key of ["handovers", "escalations", "notifications", "attached", "device_events", "positions"]) {
    n += (alarm[key] || []).length;
  }
  return n;
}

export class AlarmStore {
  constructor() { this.byId = new Map(); }

  /**
   * Take an alarm from the socket or an HTTP answer. The copy that has come further
   * (``version``) is the newer one; an older copy arriving late (the server may send an
   * update racing its snapshot twice) is ignored. Returns {fresh, changed}.
   */
  upsert(alarm) {
    const known = this.byId.get(alarm.id);
    if (known && version(known) > version(alarm)) return { fresh: false, changed: false };
    this.byId.set(alarm.id, alarm);
    return { fresh: !known, changed: !known || version(known) !== version(alarm) };
  }

  /** After a (re)connect: keep only the alarms the server says are open. Returns dropped ids. */
  sync(openIds) {
    const open = new Set(openIds);
    const dropped = [];
    for (const id of this.byId.keys()) {
      if (!open.has(id)) { this.byId.delete(id); dropped.push(id); }
    }
    return dropped;
  }

  get(id) { return this.byId.get(id); }

  /** Unhandled first, then being handled, then done; most urgent, then oldest, first. */
  list() {
    return [...this.byId.values()].sort((a, b) =>
      ORDER[stateOf(a)] - ORDER[stateOf(b)] || a.priority - b.priority ||
      a.raised_at.localeCompare(b.raised_at));
  }

  unhandled() { return [...this.byId.values()].filter((a) => stateOf(a) === "new"); }

  clear() { this.byId.clear(); }
}
