// Tiny DOM helpers: build elements from data without innerHTML (no injection from alarm text).

/** Create an element: h("p", {class: "x", onclick: fn}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/**
 * Both languages: "<span class=sv>sv</span><span class=en lang=en>en</span>". The style
 * sheet shows the one the user chose (<html data-lang>), so a language switch needs no
 * re-render; the hidden one is display:none and so not part of any accessible name.
 */
export function bi(sv, en) {
  const frag = document.createDocumentFragment();
  frag.append(h("span", { class: "sv" }, sv), h("span", { class: "en", lang: "en" }, en));
  return frag;
}

export const $ = (id) => document.getElementById(id);

// -- language: Swedish first, English on request ---------------------------------------------

const LANG_KEY = "trygg.lang";
const langListeners = [];

/** The language shown: "sv" (default) or "en". */
export function lang() {
  return document.documentElement.dataset.lang === "en" ? "en" : "sv";
}

/** The text in the language shown (for text set as a whole, e.g. textContent). */
export function tr(sv, en) {
  return lang() === "en" ? en : sv;
}

/** A {sv, en} pair from the API in the language shown. */
export function pick(text) {
  return text ? (lang() === "en" ? text.en : text.sv) : "";
}

/** Call fn() after every language switch (views that set text with tr()). */
export function onLang(fn) { langListeners.push(fn); }

/** Show `code` ("sv"/"en"), remember it on this device, and update the switch button. */
export function setLang(code) {
  const root = document.documentElement;
  root.dataset.lang = code === "en" ? "en" : "sv";
  root.lang = root.dataset.lang;
  try { localStorage.setItem(LANG_KEY, root.dataset.lang); } catch { /* private mode */ }
  for (const el of document.querySelectorAll("[data-sv][data-en]")) {
    el.textContent = el.dataset[root.dataset.lang];
  }
  const button = document.getElementById("lang-switch");
  if (button) {
    // The button offers the other language, in that language.
    const other = root.dataset.lang === "en" ? "sv" : "en";
    button.textContent = other === "en" ? "English" : "Svenska";
    button.lang = other;
    button.setAttribute("aria-label", other === "en" ? "Show in English" : "Visa på svenska");
  }
  for (const fn of langListeners) fn();
}

/** The language from the last visit (Swedish the first time); wires the switch button. */
export function initLang() {
  let saved = "sv";
  try { saved = localStorage.getItem(LANG_KEY) || "sv"; } catch { /* private mode */ }
  setLang(saved);
  document.getElementById("lang-switch")?.addEventListener("click", () =>
    setLang(lang() === "en" ? "sv" : "en"));
}

// -- time: always Stockholm's clock, whatever the phone is set to ---------------------------

const ZONE = "Europe/Stockholm";

/** "14:03:12", Stockholm time. */
export function clock(date) {
  return new Date(date).toLocaleTimeString("sv-SE", {
    hour: "2-digit", minute: "2-digit", second: "2-digit", timeZone: ZONE });
}

/** "14:03", Stockholm time; with the date ("3/5 14:03") when not today. */
export function hhmm(date) {
  const at = new Date(date);
  const day = (d) => d.toLocaleDateString("sv-SE", { timeZone: ZONE });
  const time = at.toLocaleTimeString("sv-SE", { hour: "2-digit", minute: "2-digit", timeZone: ZONE });
  if (day(at) === day(new Date())) return time;
  const [, month, dayOfMonth] = day(at).split("-").map(Number);
  return `${dayOfMonth}/${month} ${time}`;
}

/** "2026-05-03 14:03", Stockholm time. */
export function dateTime(date) {
  return new Date(date).toLocaleString("sv-SE", {
    year: "numeric", month: "2-digit", day: "2-digit", hour: "2-digit", minute: "2-digit", timeZone: ZONE });
}

/** A waiting time: "0 min", "27 min", "1 h 05 min". */
export function waited(sinceIso, now = Date.now()) {
  const minutes = Math.max(0, Math.floor((now - Date.parse(sinceIso)) / 60_000));
  if (minutes < 60) return `${minutes} min`;
  return `${Math.floor(minutes / 60)} h ${String(minutes % 60).padStart(2, "0")} min`;
}
