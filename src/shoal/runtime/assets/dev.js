// shoal dev: errors of the page and of the app's Python side, shown over the page and
// reported to the terminal, and reloads when a file changes. A module of its own, so
// that it runs even when the app's own script does not (a syntax error, say).
import { dev } from "/_shoal/api.js";

const OVERLAY_ID = "shoal-dev-overlay";

function overlay() {
  let box = document.getElementById(OVERLAY_ID);
  if (box) return box;
  box = document.createElement("pre");
  box.id = OVERLAY_ID;
  // Set through the CSSOM: the policy forbids inline style attributes, not this.
  Object.assign(box.style, {
    position: "fixed", inset: "0", margin: "0", padding: "24px", zIndex: "2147483647",
    overflow: "auto", background: "rgba(24, 24, 28, 0.94)", color: "#ffb4b4",
    font: "14px/1.5 ui-monospace, monospace", whiteSpace: "pre-wrap",
  });
  box.addEventListener("click", () => box.remove());
  const attach = () => document.documentElement.append(box);
  if (document.body) attach();
  else document.addEventListener("DOMContentLoaded", attach, { once: true });
  return box;
}

function show(text) {
  const box = overlay();
  box.textContent = `${box.textContent ? box.textContent + "\n\n" : ""}${text}\n\n` +
    "(shoal dev: fix the file and the page reloads; click to dismiss)";
}

function report(text) {
  show(text);
  dev.report(text).catch(() => {});
}

function where(event) {
  if (!event.filename) return "";
  const file = event.filename.replace(location.origin + "/", "");
  return `${file}:${event.lineno}:${event.colno}: `;
}

window.addEventListener("error", (event) => {
  const error = event.error;
  const kind = error && error.name ? `${error.name}: ` : "";
  report(`${where(event)}${kind}${error && error.message ? error.message : event.message}`);
});

window.addEventListener("unhandledrejection", (event) => {
  const reason = event.reason;
  report(`unhandled rejection: ${reason && reason.stack ? reason.stack : reason}`);
});

dev.on("error", (problem) => show(problem.message));  // it names its file
