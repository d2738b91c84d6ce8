import { network } from "shoal:api";
import { diff, moveCaret } from "./notes.js";

const $ = (selector) => document.querySelector(selector);
const area = $("#notes");
const picker = $("#group");
const groups = new Map();
let current = null;
let text = null;
let shown = "";
let sending = Promise.resolve();
let stopWatching = null;
let edits = 0;

function say(message) { $("#status").textContent = message; }
const failed = (what, error) => say(`${what} failed: ${error.code} ${error.message}`);

// What others typed: read the text again, keep the caret where it was in the words.
async function refresh() {
  let fresh;
  for (let seen = -1; seen !== edits;) {  // again if something was typed meanwhile
    seen = edits;
    await sending;
    fresh = await text.read();
  }
  if (fresh === area.value) { shown = fresh; return; }
  const change = diff(area.value, fresh);
  const [start, end] = [area.selectionStart, area.selectionEnd];
  area.value = shown = fresh;
  area.setSelectionRange(moveCaret(start, change), moveCaret(end, change));
}

// What is typed here: the one edit since the text last shown, to the shared text.
area.addEventListener("input", () => {
  const before = shown;
  const after = area.value;
  const change = diff(before, after);
  shown = after;
  edits++;
  sending = sending.then(() => text.splice(before, change.index, change.remove, change.insert))
    .catch((error) => failed("Saving", error));
});

async function open(group) {
  stopWatching?.();
  current = group;
  $("#invite-box").hidden = true;
  $("#show-invite").disabled = false;
  const shared = group.document("notes");
  text = shared.text("text");
  area.value = shown = await text.read();
  area.disabled = false;
  let updates = Promise.resolve();
  stopWatching = shared.on("update", () => {
    updates = updates.then(refresh).catch((error) => failed("Reading", error));
  });
}

function listed(group) {
  groups.set(group.id, group);
  if (![...picker.options].some((option) => option.value === group.id)) {
    picker.append(new Option(`${group.name} (${group.id.slice(0, 8)})`, group.id));
  }
}

function add(group) {
  listed(group);
  picker.value = group.id;
  return open(group);
}

picker.addEventListener("change", () => open(groups.get(picker.value)));

$("#create").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    await add(await network.groups.create($("#group-name").value.trim()));
    say("Started: invite others to edit with you.");
  } catch (error) {
    failed("Starting", error);
  }
});

$("#join").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const group = await network.groups.join($("#invite-in").value.trim());
    $("#invite-in").value = "";
    await add(group);
    say(`Joined ${group.name}.`);
  } catch (error) {
    failed("Joining", error);
  }
});

$("#show-invite").addEventListener("click", async () => {
  $("#invite-out").value = await current.invite();
  $("#invite-box").hidden = false;
  $("#invite-out").select();
});

const known = await network.groups.list();
known.forEach(listed);
if (known.length) await add(known[0]);
else say("Start notes, or join someone's with their invite.");
document.body.dataset.ready = "true";
