// Run with: shoal test   (headless Chromium, the app's real bridge, a temporary data folder)
import { test, assert } from "shoal:test";
import { fs, invoke } from "shoal:api";

test("app.py greets", async () => {
  assert.equal(await invoke("greet", ["tests"]), "Hello, tests!");
});

test("the data folder keeps what is written", async () => {
  await fs.writeFile("visits.txt", "1");
  assert.equal(await fs.readFile("visits.txt", "utf8"), "1");
});
