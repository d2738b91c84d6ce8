// Run with: shoal test   (headless Chromium, the app's real bridge, a temporary data folder)
import { test, assert } from "shoal:test";
import { network } from "shoal:api";
import { diff, moveCaret } from "./notes.js";

test("one edit turns the old text into the new", () => {
  assert.deepEqual(diff("hello", "hello world"), { index: 5, remove: 0, insert: " world" });
  const change = diff("shared notes", "shared new notes");
  assert.equal(change.remove, 0);
  assert.equal("shared notes".slice(0, change.index) + change.insert +
               "shared notes".slice(change.index), "shared new notes");
  assert.deepEqual(diff("abc", "ac"), { index: 1, remove: 1, insert: "" });
  // A character outside the BMP (two UTF-16 halves) is replaced whole, never split.
  assert.deepEqual(diff("a😀b", "a😁b"), { index: 1, remove: 2, insert: "😁" });
});

test("the caret keeps its place in the words when others edit", () => {
  const change = diff("hello world", "oh, hello world");
  assert.equal(moveCaret(5, change), 9);
  assert.equal(moveCaret(0, change), 0);
  assert.equal(moveCaret(3, diff("abcdef", "aXf")), 2);
});

test("edits reach the shared text, and a second window hears of them", async () => {
  const group = await network.groups.create("notes-test");
  const shared = group.document("notes");
  const text = shared.text("text");
  await text.splice("", 0, 0, "héllo 😀");
  await text.splice("héllo 😀", 8, 0, "!");
  assert.equal(await text.read(), "héllo 😀!");
  const other = group.document("notes");
  const heard = new Promise((resolve) => {
    let updates = 0;
    const off = other.on("update", (update) => {
      assert.ok(update instanceof Uint8Array);
      if (++updates === 2) { off(); resolve(); }  // the state, then this window's edit
    });
  });
  await text.splice("héllo 😀!", 0, 1, "H");
  await heard;
  assert.equal(await other.text("text").read(), "Héllo 😀!");
});
