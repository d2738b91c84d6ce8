// Polls the node's snapshot once a second and draws it. Every value is set with
// textContent: nothing a peer sends becomes markup.
const token = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
const WINDOW = 120; // seconds of traffic in the graphs
const samples = [];
let previous = null;

const $ = (id) => document.getElementById(id);

function cell(row, text, field, numeric = false) {
  const td = row.insertCell();
  td.textContent = text;
  if (field) td.dataset.field = field;
  if (numeric) td.className = "number";
  return td;
}

function human(bytes) {
  if (bytes < 1024) return `${Math.round(bytes)} B`;
  if (bytes < 1 << 20) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

function totals(snapshot) {
  let sent = 0, received = 0;
  for (const peer of snapshot.peers) { sent += peer.bytes_sent; received += peer.bytes_received; }
  return { sent, received, rx: snapshot.stats.rx_datagrams ?? 0, tx: snapshot.stats.tx_datagrams ?? 0 };
}

function draw(canvas, series) {
  const context = canvas.getContext("2d");
  const { width, height } = canvas;
  context.clearRect(0, 0, width, height);
  const top = Math.max(1, ...series.flatMap((s) => s.values));
  for (const { values, colour } of series) {
    context.strokeStyle = colour;
    context.lineWidth = 2;
    context.beginPath();
    values.forEach((value, index) => {
      const x = width - (values.length - 1 - index) * (width / (WINDOW - 1));
      const y = height - 4 - (value / top) * (height - 8);
      if (index === 0) context.moveTo(x, y); else context.lineTo(x, y);
    });
    context.stroke();
  }
  context.fillStyle = getComputedStyle(canvas).color;
  context.fillText(String(Math.round(top)), 4, 12);
}

function render(snapshot) {
  $("peer-id").textContent = snapshot.peer_id;
  $("local").textContent = snapshot.local.join(", ") || "–";
  $("public").textContent = snapshot.public.join(", ") || "not seen by any peer yet";
  const nat = snapshot.nat;
  $("nat").textContent = nat === null ? "not checked yet"
    : nat.public ? "none (a public address)" : `mapping ${nat.mapping}, filtering ${nat.filtering}`;
  $("channels").textContent = snapshot.channels.map((c) => (c === "" ? "(default)" : c)).join(", ");

  const now = totals(snapshot);
  if (previous !== null) {
    const seconds = Math.max(0.001, snapshot.time - previous.time);
    const before = totals(previous);
    samples.push({
      rx: Math.max(0, now.rx - before.rx) / seconds, tx: Math.max(0, now.tx - before.tx) / seconds,
      in: Math.max(0, now.received - before.received) / seconds,
      out: Math.max(0, now.sent - before.sent) / seconds,
    });
    if (samples.length > WINDOW) samples.shift();
  }
  previous = snapshot;
  const last = samples.at(-1) ?? { rx: 0, tx: 0, in: 0, out: 0 };
  $("datagram-rates").textContent = `${last.rx.toFixed(0)} in, ${last.tx.toFixed(0)} out; ${now.rx} and ${now.tx} in all`;
  $("byte-rates").textContent = `${human(last.in)}/s in, ${human(last.out)}/s out`;
  const style = getComputedStyle(document.documentElement);
  const colours = { in: style.getPropertyValue("--in"), out: style.getPropertyValue("--out") };
  draw($("datagrams"), [{ values: samples.map((s) => s.rx), colour: colours.in },
                        { values: samples.map((s) => s.tx), colour: colours.out }]);
  draw($("bytes"), [{ values: samples.map((s) => s.in), colour: colours.in },
                    { values: samples.map((s) => s.out), colour: colours.out }]);

  const body = $("peers");
  body.replaceChildren();
  for (const peer of snapshot.peers) {
    const row = body.insertRow();
    row.dataset.peer = peer.peer_id;
    if (!peer.connected) row.className = "gone";
    const id = cell(row, "", "peer_id");
    const code = document.createElement("code");
    code.textContent = peer.peer_id;  // whole: it is what gets copied
    id.append(code, peer.introducer ? " (introducer)" : "");
    cell(row, peer.path ?? "not connected", "path");
    cell(row, peer.address ?? "–", "address");
    cell(row, peer.rtt_ms === null ? "–" : peer.rtt_ms.toFixed(2), "rtt_ms", true);
    cell(row, String(peer.bytes_sent), "bytes_sent", true).title = human(peer.bytes_sent);
    cell(row, String(peer.bytes_received), "bytes_received", true).title = human(peer.bytes_received);
  }
  $("peer-count").textContent = String(snapshot.peers.length);

  const stats = $("stats");
  stats.replaceChildren();
  for (const [name, value] of Object.entries(snapshot.stats).sort()) {
    const row = stats.insertRow();
    cell(row, name);
    cell(row, String(value), name, true);
  }
  document.body.dataset.updated = String(snapshot.time);
}

async function poll() {
  try {
    const response = await fetch("/snapshot", { headers: { Authorization: `Bearer ${token}` }, cache: "no-store" });
    if (!response.ok) throw new Error(response.status === 403 ? "the token was refused (open the link the node printed)" : `HTTP ${response.status}`);
    render(await response.json());
    $("status").textContent = `live, updated ${new Date().toLocaleTimeString()}`;
    $("status").className = "";
  } catch (error) {
    $("status").textContent = `not reachable: ${error.message}`;
    $("status").className = "error";
  }
}

poll();
setInterval(poll, 1000);
