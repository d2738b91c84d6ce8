import { network } from "shoal:api";

const log = document.querySelector("#log");
function show(text) {
  const item = document.createElement("li");
  item.textContent = text;
  log.append(item);
}

document.querySelector("#me").textContent = await network.id();
network.on("message", (message) => show(`${message.from.slice(0, 8)}… (${message.path}): ${message.text()}`));

document.querySelector("#compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const to = document.querySelector("#to").value.trim();
  const text = document.querySelector("#text").value;
  try {
    const delivery = await network.send(to, text);
    show(`me → ${to.slice(0, 8)}… (${delivery.path}, ${delivery.ms} ms): ${text}`);
  } catch (error) {
    show(`not delivered: ${error.code} ${error.message}`);
  }
});
document.body.dataset.ready = "true";
