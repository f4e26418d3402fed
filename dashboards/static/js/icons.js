// Alarm-type icons: small line drawings (SVG, stroke in the text colour), so that the type
// can be told at a glance in a list of many. Decorative: the type is always written too.

const NS = "http://www.w3.org/2000/svg";

// 24×24 paths, drawn for this app.
const PATHS = {
  manual: ["M12 3a6 6 0 0 0-6 6v4l-2 3h16l-2-3V9a6 6 0 0 0-6-6z", "M10 19a2 2 0 0 0 4 0"],
  fall: ["M17 4.5a1.5 1.5 0 1 0 0.01 0", "M15 8l-6 6", "M9 14l-4-2", "M9 14l-1 5", "M13 10l4 2",
    "M3 21h18"],
  smoke: ["M12 3c1 4 6 5 6 11a6 6 0 0 1-12 0c0-3 2-5 3-7 1 2 2 3 3 3 0-2-1-4 0-7z"],
  water: ["M12 3c3 5 6 8 6 11a6 6 0 0 1-12 0c0-3 3-6 6-11z"],
  bed_exit: ["M3 19V6", "M3 14h18v5", "M21 14a3 3 0 0 0-3-3h-7v3", "M7 10.5a1.5 1.5 0 1 0 0.01 0"],
  door: ["M6 21V3h12v18", "M3 21h18", "M14.5 12h.01"],
  inactivity: ["M7 3h10", "M7 21h10", "M8 3c0 5 8 5 8 9s-8 4-8 9", "M16 3c0 5-8 5-8 9s8 4 8 9"],
  temperature: ["M10 14V5a2 2 0 0 1 4 0v9a4 4 0 1 1-4 0z", "M12 9v7"],
  medication: ["M5 13l8-8a4 4 0 0 1 6 6l-8 8a4 4 0 0 1-6-6z", "M9 9l6 6"],
  technical: ["M12 3l10 18H2z", "M12 10v5", "M12 18h.01"],
  test: ["M12 3a9 9 0 1 0 0.01 0", "M8 12l3 3 5-6"],
};

/** The icon of an alarm type (a generic bell for types without one). */
export function icon(type) {
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", "0 0 24 24");
  svg.setAttribute("class", "icon");
  svg.setAttribute("aria-hidden", "true");
  svg.setAttribute("focusable", "false");
  for (const d of PATHS[type] || PATHS.manual) {
    const path = document.createElementNS(NS, "path");
    path.setAttribute("d", d);
    svg.append(path);
  }
  return svg;
}
