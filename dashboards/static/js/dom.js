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

/** Swedish first, English second: "<sv> <span lang=en>en</span>". */
export function bi(sv, en) {
  const frag = document.createDocumentFragment();
  frag.append(h("span", { class: "sv" }, sv), " ", h("span", { class: "en", lang: "en" }, en));
  return frag;
}

export const $ = (id) => document.getElementById(id);

/** "14:03:12" in Swedish time format. */
export function clock(date) {
  return new Date(date).toLocaleTimeString("sv-SE", { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}
