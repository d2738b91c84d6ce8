// The page `shoal test` opens: imports each test file, then runs the tests and reports,
// to the Chromium driving it or, in the app's window, over the bridge.
import { run } from "shoal:test";
import { testRunner } from "shoal:api";
import files from "/_shoal/tests.js";

const report = globalThis.shoalTestReport ?? testRunner.report;
try {
  for (const file of files) {
    globalThis.__shoalTestFile = file;
    try {
      await import(`/${file}`);
    } catch (error) {
      await report({ name: "(loading the file)", file, ok: false, ms: 0,
                     error: String(error?.message ?? error), stack: String(error?.stack ?? "") });
    }
  }
  await run(report);
} finally {
  await (globalThis.shoalTestDone ?? testRunner.done)();
}
