import { network } from "shoal:api";
import { failedLine, receivedLine, sentLine } from "./chat.js";

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
document.body.dataset.ready = "true";
