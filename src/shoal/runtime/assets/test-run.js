// The page `shoal test` opens: imports each test file, then runs the tests and reports,
// to the Chromium driving it or, in the app's window, over the bridge.
import { run } from "shoal:test";
import { testRunner } from "shoal:api";
import files from "/_shoal/tests.js";

const report = globalThis.shoalTestReport ?? testRunner.report;

// Where a file failed to parse: import() rejects with the message only, but loading the
// file again as a module script reports the error event with its file, line and column
// (of the file itself, or of the module it imports that does not parse).
function whereItFails(file) {
  return new Promise((resolve) => {
    const script = document.createElement("script");
    const done = (where) => {
      removeEventListener("error", onError, true);
      script.remove();
      resolve(where);
    };
    const onError = (event) => {
      if (!event.filename) return;
      event.preventDefault();
      const path = new URL(event.filename).pathname.replace(/^\//, "");
      done(`${path}:${event.lineno}:${event.colno}`);
    };
    addEventListener("error", onError, true);
    script.type = "module";
    script.src = `/${file}?where=${Date.now()}`;
    script.onerror = () => done("");
    script.onload = () => setTimeout(() => done(""), 0);
    document.head.append(script);
  });
}

// The first place of the app's own in an error's stack, as path:line:column.
function whereItThrew(error) {
  for (const [, url, line, column] of String(error?.stack ?? "")
    .matchAll(/(https?:\/\/[^\s()]+):(\d+):(\d+)/g)) {
    const place = new URL(url);
    if (place.origin === location.origin && !place.pathname.startsWith("/_shoal/")) {
      return `${place.pathname.replace(/^\//, "")}:${line}:${column}`;
    }
  }
  return "";
}

try {
  for (const file of files) {
    globalThis.__shoalTestFile = file;
    try {
      await import(`/${file}`);
    } catch (error) {
      // A file that does not parse ran nothing; one that threw while running (its stack
      // has places) is not loaded again, as that would run it twice.
      const unparsed = error instanceof SyntaxError && !/:\d+:\d+/.test(error.stack ?? "");
      const where = unparsed ? await whereItFails(file) : whereItThrew(error);
      const message = String(error?.message ?? error);
      await report({ name: "(loading the file)", file, ok: false, ms: 0,
                     error: where ? `${where}: ${message}` : message,
                     stack: String(error?.stack ?? "") });
    }
  }
  await run(report);
} finally {
  await (globalThis.shoalTestDone ?? testRunner.done)();
}
