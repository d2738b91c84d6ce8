// Run with: shoal test   (headless Chromium, the app's real bridge, a temporary data folder)
import { test, assert } from "shoal:test";
import { network } from "shoal:api";
import { failedLine, pairingLine, receivedLine, sentLine } from "./chat.js";

test("this node has a whole peer id to share", async () => {
  assert.match(await network.id(), /^[0-9a-f]{64}$/);
});

test("a shortened peer id is refused at once, with its code", async () => {
  const error = await assert.rejects(network.send("37ddcb66", "hello"), { code: "EINVAL" });
  assert.match(failedLine(error), /^not delivered: EINVAL /);
});

test("the log shows peer ids whole", () => {
  const peer = "ab".repeat(32);
  const message = { from: peer, path: "direct", text: () => "hi" };
  assert.equal(receivedLine(message), `${peer} (direct): hi`);
  assert.equal(sentLine(peer, { path: "relay", ms: 12 }, "hey"), `me → ${peer} (relay, 12 ms): hey`);
});

test("pairing says what it needs when there is no introducer", async () => {
  const error = await assert.rejects(network.pair(), { code: "ENETUNREACH" });
  assert.match(pairingLine("failed", error), /^Not paired: ENETUNREACH .*introducer/);
  assert.equal(pairingLine("code", "7-amber-otter"), "Tell the other side this code: 7-amber-otter");
});
