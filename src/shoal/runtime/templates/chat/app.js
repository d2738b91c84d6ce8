import { network } from "shoal:api";
import { failedLine, inviteProblem, postLine } from "./chat.js";

const $ = (selector) => document.querySelector(selector);
const log = $("#log");
const picker = $("#group");
const status = $("#status");
const me = await network.id();
const groups = new Map();
let current = null;
let stopReading = null;
let names = new Map();

function say(text) { status.textContent = text; }

async function learnNames(group) {
  try {
    for (const member of await group.members()) if (member.name) names.set(member.peerId, member.name);
  } catch (error) {
    console.warn(error);
  }
}

function show(post) {
  const item = document.createElement("li");
  item.textContent = postLine(post, { me, names });
  item.title = post.author;
  if (post.author === me) item.className = "mine";
  log.append(item);
  item.scrollIntoView({ block: "nearest" });
}

// Everything the group holds comes first (what was posted while this node was away), then
// new posts as they arrive.
async function open(group) {
  stopReading?.();
  log.replaceChildren();
  current = group;
  names = new Map();
  $("#invite-box").hidden = true;
  for (const control of [$("#show-invite"), $("#text"), $("#compose button")]) control.disabled = false;
  await learnNames(group);
  stopReading = group.on("post", (post) => {
    if (post.author !== me && !names.has(post.author)) learnNames(group);
    show(post);
  }, { topic: "" });
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
    const group = await network.groups.create($("#group-name").value.trim());
    await add(group);
    say(`Created ${group.name}: invite others to it.`);
  } catch (error) {
    say(failedLine("Creating the group", error));
  }
});

$("#join").addEventListener("submit", async (event) => {
  event.preventDefault();
  const invite = $("#invite-in").value;
  const problem = inviteProblem(invite);
  if (problem) return say(problem);
  try {
    const group = await network.groups.join(invite.trim());
    $("#invite-in").value = "";
    await add(group);
    say(`Joined ${group.name}.`);
  } catch (error) {
    say(failedLine("Joining", error));
  }
});

$("#show-invite").addEventListener("click", async () => {
  $("#invite-out").value = await current.invite();
  $("#invite-box").hidden = false;
  $("#invite-out").select();
});

$("#compose").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#text");
  try {
    await current.publish(text.value);
    text.value = "";
  } catch (error) {
    say(failedLine("Sending", error));
  }
});

const known = await network.groups.list();
known.forEach(listed);
if (known.length) await add(known[0]);
else say("Create a group, or join one with an invite.");
document.body.dataset.ready = "true";
