// Run with: shoal test   (headless Chromium, the app's real bridge, a temporary data folder)
import { test, assert } from "shoal:test";
import { network } from "shoal:api";
import { authorLabel, clock, failedLine, inviteProblem, postLine } from "./chat.js";

test("a new group is listed, and its invite is one to paste", async () => {
  const group = await network.groups.create("test-room");
  assert.ok(group.isAdmin);
  assert.ok((await network.groups.list()).some((g) => g.id === group.id));
  const invite = await group.invite();
  assert.equal(inviteProblem(invite), null);
});

test("a damaged invite is refused with its code", async () => {
  const error = await assert.rejects(network.groups.join("shoal-group:AQ"), { code: "EINVAL" });
  assert.match(failedLine("Joining", error), /^Joining failed: EINVAL /);
  assert.equal(inviteProblem("hello"), "an invite starts with shoal-group:");
});

test("a post comes back to its author, marked as theirs", async () => {
  const group = await network.groups.create("echo-room");
  const me = await network.id();
  const heard = new Promise((resolve) => {
    const off = group.on("post", (post) => { off(); resolve(post); }, { topic: "" });
  });
  await group.publish("hello room");
  const post = await heard;
  assert.equal(post.text(), "hello room");
  assert.equal(post.author, me);
  assert.equal(postLine(post, { me, names: new Map() }), `${clock(post.time)} me: hello room`);
});

test("others are shown by name when known, else by the start of their id", () => {
  const peer = "ab".repeat(32);
  const who = { me: "cd".repeat(32), names: new Map() };
  assert.equal(authorLabel(peer, who), "abababababab");
  who.names.set(peer, "Ada");
  assert.equal(authorLabel(peer, who), "Ada (abababab)");
  assert.match(clock(0), /^\d\d:\d\d$/);
});
