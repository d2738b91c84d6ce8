import { network } from "shoal:api";
import { failedLine, pairingLine, receivedLine, sentLine } from "./chat.js";

const log = document.querySelector("#log");
const to = document.querySelector("#to");
function show(text, from) {
  const item = document.createElement("li");
  item.textContent = text;
  if (from) {
    item.title = "Click to reply";
    item.addEventListener("click", () => { to.value = from; });
  }
  log.append(item);
}

document.querySelector("#me").textContent = await network.id();
network.on("message", (message) => show(receivedLine(message), message.from));

document.querySelector("#compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const peer = to.value.trim();
  const text = document.querySelector("#text").value;
  try {
    show(sentLine(peer, await network.send(peer, text), text));
  } catch (error) {
    show(failedLine(error));
  }
});
// Pairing: both sides learn each other's verified id from a short code said aloud.
const status = document.querySelector("#pair-status");
async function pairWith(code) {
  status.textContent = code ? "Pairing…" : "Asking the introducer for a code…";
  try {
    const { peerId } = await network.pair({
      code, onCode: (made) => { status.textContent = pairingLine("code", made); },
    });
    to.value = peerId;
    status.textContent = pairingLine("paired", peerId);
  } catch (error) {
    status.textContent = pairingLine("failed", error);
  }
}
document.querySelector("#pair").addEventListener("click", () => pairWith());
document.querySelector("#pairing").addEventListener("submit", (event) => {
  event.preventDefault();
  pairWith(document.querySelector("#code").value.trim());
});
document.body.dataset.ready = "true";
