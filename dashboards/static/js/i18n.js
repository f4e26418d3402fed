// Labels, Swedish first and English second. One place for every word the app shows.

export const TYPES = {
  manual: ["Larmknapp", "Alarm button"], fall: ["Fall", "Fall"], smoke: ["Brandlarm", "Smoke"],
  water: ["Vattenläcka", "Water leak"], bed_exit: ["Lämnat sängen", "Bed exit"],
  door: ["Dörr", "Door"], inactivity: ["Ingen aktivitet", "No activity"],
  temperature: ["Temperatur", "Temperature"], test: ["Provlarm", "Test alarm"],
  medication: ["Medicin", "Medication"],
  technical: ["Tekniskt larm", "Technical alarm"],
};

export const HOPS = {
  raised: ["Utlöst", "Raised"], stored: ["Lagrat", "Stored"], routed: ["Skickat till lag", "Routed"],
  delivered: ["Levererat", "Delivered"], accepted: ["Accepterat", "Accepted"],
  on_site: ["På plats", "On site"], closed: ["Avslutat", "Closed"],
};

export const STATES = {
  new: ["Ej hanterat", "Unhandled"], handling: ["Hanteras", "Being handled"],
  on_site: ["På plats", "On site"], done: ["Avslutat", "Done"],
};

// Close causes (orsak). The value stored is the Swedish text, as the municipality reports it.
export const CAUSES = [
  ["hjälp given", "help given"],
  ["fall – hjälpt upp", "fall – helped up"],
  ["felaktigt larm", "false alarm"],
  ["tekniskt fel", "technical fault"],
  ["ingen åtgärd", "no action"],
];

// Priority (1 most urgent, as the core sets it): what it means, for the label beside the
// colour (colour is never the only signal).
export const PRIORITIES = {
  1: ["Prio 1 – hemmet i fara", "Priority 1 – home at risk"],
  2: ["Prio 2 – akut", "Priority 2 – urgent"],
  3: ["Prio 3", "Priority 3"],
  4: ["Teknik", "Technical"],
  9: ["Prov", "Test"],
};

// Device types, for "Larmenhet: Trygghetslarm (alarm-001)".
export const DEVICE_TYPES = {
  alarm_unit: ["Trygghetslarm", "Alarm unit"], button: ["Larmknapp", "Alarm button"],
  base_unit: ["Basenhet", "Base unit"], fall: ["Falldetektor", "Fall detector"],
  bed: ["Sängsensor", "Bed sensor"], door: ["Dörrsensor", "Door sensor"],
  motion: ["Rörelsesensor", "Motion sensor"], temperature: ["Temperaturgivare", "Temperature sensor"],
  smoke: ["Brandvarnare", "Smoke detector"], water: ["Vattenlarm", "Water sensor"],
  camera: ["Nattkamera", "Night camera"], medication: ["Medicinautomat", "Pill dispenser"],
};

// How ownership changed (the alarm's handovers), with the names filled in.
export const HANDOVERS = {
  forwarded: (by, to) => [`Skickat vidare till ${to} av ${by}`, `Forwarded to ${to} by ${by}`],
  taken_over: (by) => [`Övertaget av ${by}`, `Taken over by ${by}`],
  handed_back: (by) => [`Lämnat tillbaka till laget av ${by}`, `Handed back to the team by ${by}`],
  accepted: (by) => [`Taget igen av ${by}`, `Accepted again by ${by}`],
};

export function typeLabel(type) { return TYPES[type] || [type, type]; }
export function priorityLabel(priority) { return PRIORITIES[priority] || [`Prio ${priority}`, `Priority ${priority}`]; }
export function deviceTypeLabel(type) { return DEVICE_TYPES[type] || [type || "enhet", type || "device"]; }

/** What kind of list an alarm belongs in: care, technical or test. */
export function kindOf(alarm) {
  if (alarm.type === "test" || alarm.test) return "test";
  if (alarm.type === "technical") return "technical";
  return "care";
}

/** +46701740605 as people write it (070-174 06 05); other numbers as they are. */
export function phoneText(e164) {
  const match = /^\+46(7\d)(\d{3})(\d{2})(\d{2})$/.exec(e164 || "");
  return match ? `0${match[1]}-${match[2]} ${match[3]} ${match[4]}` : e164;
}
export function hopLabel(hop) { return HOPS[hop] || [hop, hop]; }
