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

export function typeLabel(type) { return TYPES[type] || [type, type]; }
export function hopLabel(hop) { return HOPS[hop] || [hop, hop]; }
