// Small hand-written SVG charts: bar chart, histogram with a target line, sparkline.
// No libraries, nothing fetched. Every chart is role="img" with a <title> and <desc>, and
// each bar carries its own <title> (tooltip / screen-reader text).

import { Session, tabStore } from "./session.js";

const NS = "http://www.w3.org/2000/svg";

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(NS, tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value !== undefined && value !== null) el.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === undefined || child === null) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

let serial = 0;

function frame(kind, width, height, title, desc) {
  const id = `chart-${++serial}`;
  const svg = s("svg", {
    class: `chart ${kind}`, viewBox: `0 0 ${width} ${height}`, role: "img",
    "aria-labelledby": `${id}-t ${id}-d`, preserveAspectRatio: "xMidYMid meet",
  });
  svg.append(s("title", { id: `${id}-t` }, title), s("desc", { id: `${id}-d` }, desc));
  return svg;
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * power >= value) return step * power;
  return 10 * power;
}

function yAxis(svg, pad, plotH, max, width) {
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - fraction);
    svg.append(
      s("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid" }),
      s("text", { x: pad.left - 6, y: y + 4, class: "axis", "text-anchor": "end" },
        formatNumber(max * fraction)));
  }
}

function formatNumber(n) {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/**
 * Vertical bars. data: [{label, value, tip?}], options: {title, desc, width, height, labelEvery}.
 */
export function barChart(data, { title, desc, width = 420, height = 220, labelEvery = 1 } = {}) {
  const pad = { top: 16, right: 8, bottom: 44, left: 40 };
  const summary = desc || data.map((d) => `${d.label}: ${d.value}`).join(", ");
  const svg = frame("bar-chart", width, height, title, summary);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(0, ...data.map((d) => d.value)));
  yAxis(svg, pad, plotH, max, width);
  const slot = plotW / Math.max(1, data.length);
  const barW = Math.max(2, slot * 0.7);
  data.forEach((d, i) => {
    const h = (d.value / max) * plotH;
    const x = pad.left + i * slot + (slot - barW) / 2;
    const y = pad.top + plotH - h;
    svg.append(s("rect", { x, y, width: barW, height: Math.max(h, d.value > 0 ? 1 : 0), class: "bar",
      "data-label": d.label, "data-value": d.value }, s("title", {}, d.tip || `${d.label}: ${d.value}`)));
    if (d.value > 0 && slot >= 18) {
      svg.append(s("text", { x: x + barW / 2, y: y - 4, class: "value", "text-anchor": "middle" }, d.value));
    }
    if (i % labelEvery === 0) {
      svg.append(s("text", { x: x + barW / 2, y: height - pad.bottom + 16, class: "axis", "text-anchor": "middle" },
        d.short || d.label));
    }
  });
  return svg;
}

/**
 * Histogram of durations in minutes with a vertical target line.
 * edgesMin: bin left edges (the last bin is open-ended), counts: per bin, targetMin: the line.
 */
export function histogram(edgesMin, counts, { title, desc, targetMin = 30, targetLabel = "Mål", width = 420, height = 220 } = {}) {
  const pad = { top: 24, right: 8, bottom: 44, left: 40 };
  const summary = desc || edgesMin.map((e, i) => `${binLabel(edgesMin, i)} min: ${counts[i]}`).join(", ");
  const svg = frame("histogram", width, height, title, summary);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  const max = niceMax(Math.max(0, ...counts));
  yAxis(svg, pad, plotH, max, width);
  const slot = plotW / Math.max(1, edgesMin.length);
  edgesMin.forEach((edge, i) => {
    const h = (counts[i] / max) * plotH;
    const x = pad.left + i * slot;
    const late = edge >= targetMin;
    svg.append(s("rect", { x: x + 1, y: pad.top + plotH - h, width: slot - 2, height: h,
      class: late ? "bar late" : "bar", "data-count": counts[i] },
      s("title", {}, `${binLabel(edgesMin, i)} min: ${counts[i]}`)));
    if (i % 2 === 0) {
      svg.append(s("text", { x, y: height - pad.bottom + 16, class: "axis", "text-anchor": "middle" }, edge));
    }
  });
  svg.append(s("text", { x: pad.left + plotW / 2, y: height - 6, class: "axis", "text-anchor": "middle" }, "min"));
  const targetIndex = edgesMin.findIndex((e) => e >= targetMin);
  if (targetIndex >= 0) {
    const x = pad.left + targetIndex * slot;
    svg.append(
      s("line", { x1: x, x2: x, y1: pad.top - 8, y2: pad.top + plotH, class: "target" }),
      s("text", { x: x + 4, y: pad.top - 10, class: "target-label" }, `${targetLabel} ${targetMin} min`));
  }
  return svg;
}

function binLabel(edges, i) {
  return i + 1 < edges.length ? `${edges[i]}–${edges[i + 1]}` : `≥${edges[i]}`;
}

/** A line over time. points: [[ts_ms, value], ...] (vectors should be reduced first). */
export function sparkline(points, { title, desc, width = 420, height = 120, unit = "" } = {}) {
  const pad = { top: 10, right: 8, bottom: 22, left: 48 };
  const values = points.map((p) => p[1]);
  const min = values.length ? Math.min(...values) : 0;
  const max = values.length ? Math.max(...values) : 1;
  const summary = desc || (values.length
    ? `${values.length} punkter / points, min ${formatNumber(min)}${unit}, max ${formatNumber(max)}${unit}, senast / last ${formatNumber(values[values.length - 1])}${unit}`
    : "Inga data / No data");
  const svg = frame("sparkline", width, height, title, summary);
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  if (!points.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, class: "axis", "text-anchor": "middle" }, "Inga data / No data"));
    return svg;
  }
  const t0 = points[0][0];
  const t1 = points[points.length - 1][0];
  const span = Math.max(1, t1 - t0);
  const range = max - min || 1;
  const xy = points.map(([t, v]) => [
    pad.left + ((t - t0) / span) * plotW,
    pad.top + plotH - ((v - min) / range) * plotH,
  ]);
  svg.append(
    s("line", { x1: pad.left, x2: width - pad.right, y1: pad.top, y2: pad.top, class: "grid" }),
    s("line", { x1: pad.left, x2: width - pad.right, y1: pad.top + plotH, y2: pad.top + plotH, class: "grid" }),
    s("text", { x: pad.left - 6, y: pad.top + 4, class: "axis", "text-anchor": "end" }, formatNumber(max)),
    s("text", { x: pad.left - 6, y: pad.top + plotH + 4, class: "axis", "text-anchor": "end" }, formatNumber(min)),
    s("polyline", { points: xy.map(([x, y]) => `${x.toFixed(1)},${y.toFixed(1)}`).join(" "), class: "line" }),
    s("text", { x: pad.left, y: height - 4, class: "axis" }, timeLabel(t0)),
    s("text", { x: width - pad.right, y: height - 4, class: "axis", "text-anchor": "end" }, timeLabel(t1)));
  const [lx, ly] = xy[xy.length - 1];
  svg.append(s("circle", { cx: lx, cy: ly, r: 3, class: "dot" }));
  return svg;
}

function timeLabel(ms) {
  return new Date(ms).toLocaleString("sv-SE", { month: "numeric", day: "numeric", hour: "2-digit", minute: "2-digit" });
}

// The consoles' own styles on top of app.css. The CSP allows only same-origin style sheets
// (no inline <style>), so they are a constructed sheet adopted by the document.
const CONSOLE_CSS = `
main.wide { max-width: 78rem; }
.chart { width: 100%; height: auto; display: block; background: #0b1523; border-radius: .5rem; }
.chart .grid { stroke: #2c3e57; stroke-width: 1; }
.chart .axis { fill: #c3cbd8; font-size: 12px; }
.chart .value { fill: #f4f6fa; font-size: 11px; }
.chart .bar { fill: #7cc4ff; }
.chart .bar.late { fill: #ffb4ab; }
.chart .target { stroke: #ffd43b; stroke-width: 3; stroke-dasharray: 6 4; }
.chart .target-label { fill: #ffd43b; font-size: 12px; font-weight: 700; }
.chart .line { fill: none; stroke: #8ee59b; stroke-width: 2; }
.chart .dot { fill: #8ee59b; }
.filters { display: grid; gap: .6rem; grid-template-columns: repeat(auto-fit, minmax(12rem, 1fr)); align-items: end; }
.filters label { margin: 0 0 .2rem; }
select { font: inherit; width: 100%; min-height: 48px; padding: .4rem .6rem; border-radius: .4rem;
  border: 2px solid #5b6b82; background: #0b1523; color: #f4f6fa; }
.table-wrap { overflow-x: auto; margin: .8rem 0; }
table.data { border-collapse: collapse; width: 100%; font-size: .95rem; }
table.data caption { text-align: left; font-weight: 700; padding: .3rem 0; }
table.data th, table.data td { padding: .35rem .5rem; border-bottom: 1px solid #2c3e57; text-align: left; vertical-align: middle; }
table.data th { color: #c3cbd8; font-weight: 600; }
table.data button.link { min-height: 44px; background: transparent; color: #7cc4ff; border-color: #5b6b82; padding: .3rem .6rem; font-weight: 700; }
.pill { display: inline-block; padding: .1rem .5rem; border-radius: 1rem; font-weight: 700; font-size: .85rem; }
.pill.online { background: #1e7b3c; color: #fff; }
.pill.offline { background: #b3261e; color: #fff; }
.pill.unknown { background: #3b4a60; color: #fff; }
.pill.passed { background: #1e7b3c; color: #fff; }
.pill.failed { background: #b3261e; color: #fff; }
.cards { display: grid; gap: .6rem; grid-template-columns: repeat(auto-fit, minmax(10rem, 1fr)); margin: .6rem 0; }
.card-n { background: #17283f; border-radius: .6rem; padding: .6rem .8rem; }
.card-n .n { font-size: 1.8rem; font-weight: 700; display: block; }
.card-n.bad .n { color: #ffb4ab; }
.panels { display: grid; gap: 1rem; grid-template-columns: repeat(auto-fit, minmax(22rem, 1fr)); }
figure.panel { margin: 0; }
.panel { background: #17283f; border-radius: .6rem; padding: .6rem .8rem; }
.panel h3 { margin-top: .2rem; }
ol.stages { list-style: none; padding: 0; display: flex; flex-wrap: wrap; gap: .4rem; }
ol.stages li { padding: .4rem .7rem; border-radius: .5rem; background: #3b4a60; min-height: 44px; display: flex; align-items: center; gap: .3rem; }
ol.stages li.done { background: #1e7b3c; }
ol.stages li.active { background: #ffd43b; color: #111; }
ol.stages li.failed { background: #b3261e; }
ol.stages li.active [lang="en"] { color: #111; }
.placeholder { border: 2px dashed #5b6b82; border-radius: .5rem; padding: .5rem .8rem; }
a { color: #7cc4ff; }
a.button { display: inline-flex; align-items: center; min-height: 44px; padding: .3rem .8rem; border: 2px solid #5b6b82; border-radius: .5rem; }
.row { display: flex; flex-wrap: wrap; gap: .6rem; align-items: center; }
button.danger { background: #b3261e; color: #fff; }
nav a.button { text-decoration: none; }
nav a.button[aria-current="page"] { background: #7cc4ff; color: #001a33; border-color: #7cc4ff; font-weight: 700; }
#claim-result img { background: #fff; padding: .4rem; border-radius: .4rem; width: 222px; height: auto; display: block; }
#claim-result figcaption { margin-top: .4rem; }
#claim-code { font-size: 1.3rem; letter-spacing: .05em; }
.test-cell .reason { display: block; }
.card-n .sub { display: block; font-size: .85rem; color: #c3cbd8; }
`;

/** Adopt the consoles' style sheet (once). */
export function installStyles() {
  if (document.adoptedStyleSheets.some((sheet) => sheet.trygg)) return;
  const sheet = new CSSStyleSheet();
  sheet.replaceSync(CONSOLE_CSS);
  sheet.trygg = true;
  document.adoptedStyleSheets = [...document.adoptedStyleSheets, sheet];
}

// -- shared by the console pages: a login kept for this tab --------------------------------

/**
 * A page's login, kept for this tab only: the session (access and refresh token,
 * js/session.js) in sessionStorage under ``trygg.<name>.session``, who is logged in under
 * ``trygg.<name>.me``; apart from the staff app's. The access token is refreshed before it
 * expires and after a 401. Only the given roles get in; the server checks again.
 *
 * ``auth.message`` says why the login screen is shown (empty after a logout by hand).
 */
export function session(name, roles) {
  const store = tabStore(`trygg.${name}.session`);
  const meKey = `trygg.${name}.me`;
  for (const old of ["token", "expires"]) sessionStorage.removeItem(`trygg.${name}.${old}`);
  const auth = {
    me: null,
    message: "",
    onChange: () => {},
    session: new Session(store, { onEnd: (message) => auth.ended(message) }),
    async login(api, username, password) {
      await auth.session.begin(await api.login(username, password));
      let me;
      try {
        me = await api.get("/me");
      } catch (error) {
        await auth.session.logout();
        throw error;
      }
      if (!roles.includes(me.role)) {
        await auth.session.logout();
        throw new Error("Den här sidan är inte för din roll. / This page is not for your role.");
      }
      sessionStorage.setItem(meKey, JSON.stringify(me));
      auth.me = me;
      auth.message = "";
    },
    resume() {
      if (!auth.session.active) {
        const state = store.peek();
        if (!state || (!state.refresh_token && state.expires_at <= Date.now())) return false;
        auth.session.adopt(state); // an expired access token is refreshed by the first call
      }
      auth.me = JSON.parse(sessionStorage.getItem(meKey) || "null");
      return true;
    },
    /** Log out by hand (message empty) or after a refused token; revokes the session. */
    async logout(message = "") {
      if (auth.session.active) await auth.session.logout();
      auth.ended(message);
    },
    ended(message) {
      sessionStorage.removeItem(meKey);
      auth.me = null;
      auth.message = message;
      auth.onChange();
    },
  };
  return auth;
}
