// Shoal's JS API: import { fs, os, path, network, files, dgram, window, dialog, notification,
// clipboard, shell, invoke } from "shoal:api". Every call goes over one WebSocket to the Python
// host, which checks it against the app's shoal.toml. Promises everywhere; binary data is
// Uint8Array; failures are ShoalError with a code (EPERM, ENOENT, ...).

export class ShoalError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "ShoalError";
    this.code = code;
  }
}

const SECRET_KEY = "shoal.secret";
const BRIDGE_KEY = "shoal.bridge";
const WINDOW_KEY = "shoal.window";
const LAUNCH_KEY = "shoal.launch";

// The launch fragment: #shoal=SECRET, plus &bridge=127.0.0.1:PORT when the page is not
// served by the app server itself (the native window's shoal://app scheme). A secret
// from the fragment replaces the stored one only once the bridge has taken it: any page
// may send this tab to the app's address with a fragment of its own choosing.
function launchCandidates() {
  const served = location.protocol === "http:";
  const stored = {
    secret: sessionStorage.getItem(SECRET_KEY) || "",
    bridge: (served ? null : sessionStorage.getItem(BRIDGE_KEY)) || location.host,
  };
  // The fragment, or what launch.js took out of the address before the app's scripts ran.
  let fragment = location.hash;
  if (/[#&]shoal=/.test(fragment)) {
    history.replaceState(history.state, "", location.pathname + location.search);
  } else {
    fragment = sessionStorage.getItem(LAUNCH_KEY) || "";
  }
  sessionStorage.removeItem(LAUNCH_KEY);
  const secret = fragment.match(/[#&]shoal=([A-Za-z0-9_-]+)/);
  if (!secret) return [stored];
  // Which of the app's native windows this page is in (the first: none given).
  const shown = fragment.match(/[#&]window=([0-9]{1,6})(?:&|$)/);
  sessionStorage.setItem(WINDOW_KEY, shown ? shown[1] : "0");
  const bridge = fragment.match(/[#&]bridge=(127\.0\.0\.1:[0-9]+)(?:&|$)/);
  const fresh = { secret: secret[1], bridge: (!served && bridge && bridge[1]) || location.host };
  return stored.secret && stored.secret !== fresh.secret ? [fresh, stored] : [fresh];
}

function remember({ secret, bridge }) {
  sessionStorage.setItem(SECRET_KEY, secret);
  if (bridge !== location.host) sessionStorage.setItem(BRIDGE_KEY, bridge);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();
const pending = new Map();
const listeners = new Map();
let nextId = 1;
let socket = null;
let opened = null;
let accepted = null; // the launch (secret and bridge) the bridge took

// The page was opened without its launch link (a bookmark, a copied address): it cannot
// reach the bridge, so it says how to open the app instead of waiting forever.
function showHowToOpen() {
  const note = document.createElement("p");
  note.id = "shoal-no-launch";
  note.textContent = "This page is a Shoal app and needs the address its launch prints. " +
    "Start it with: shoal run <app folder>  (or shoal run <app folder> --browser, and open " +
    "the address it prints).";
  const show = () => document.body.replaceChildren(note);
  if (document.body) show();
  else document.addEventListener("DOMContentLoaded", show, { once: true });
}

function connect() {
  if (opened) return opened;
  const candidates = launchCandidates();
  if (!candidates[0].secret) {
    showHowToOpen();
    return Promise.reject(new ShoalError("EACCES", "opened without its launch address"));
  }
  const attempt = (index, resolve, reject) => {
    const launch = candidates[index];
    const ws = new WebSocket(`ws://${launch.bridge}/_shoal/bridge?secret=${launch.secret}`);
    ws.binaryType = "arraybuffer";
    let open = false;
    ws.onopen = () => { open = true; remember(launch); accepted = launch; socket = ws; resolve(ws); };
    ws.onerror = () => {
      if (open) return;
      if (index + 1 < candidates.length) attempt(index + 1, resolve, reject);
      else reject(new ShoalError("ECONNREFUSED", "the Shoal bridge refused this page"));
    };
    ws.onclose = () => {
      if (!open) return;
      socket = null;
      opened = null;
      for (const { reject: fail } of pending.values()) {
        fail(new ShoalError("ECONNRESET", "the Shoal bridge closed"));
      }
      pending.clear();
    };
    ws.onmessage = (event) => receive(event.data);
  };
  opened = new Promise((resolve, reject) => attempt(0, resolve, reject));
  opened.catch(() => { opened = null; });
  return opened;
}

function receive(data) {
  if (data instanceof ArrayBuffer) {
    const id = new DataView(data).getUint32(0);
    const waiter = pending.get(id);
    if (waiter) {
      pending.delete(id);
      waiter.resolve(new Uint8Array(data, 4));
    }
    return;
  }
  const message = JSON.parse(data);
  if (message.event) {
    for (const listener of listeners.get(message.event) || []) {
      try { listener(message.data); } catch (error) { console.error(error); }
    }
    return;
  }
  const waiter = pending.get(message.id);
  if (!waiter) return;
  pending.delete(message.id);
  if (message.error) waiter.reject(new ShoalError(message.error.code, message.error.message));
  else waiter.resolve(message.ok);
}

function isBinary(value) {
  return value instanceof Uint8Array || value instanceof ArrayBuffer;
}

async function call(name, ...args) {
  const ws = socket || (await connect());
  const id = nextId++;
  const binary = args.findIndex(isBinary);
  const result = new Promise((resolve, reject) => pending.set(id, { resolve, reject }));
  if (binary < 0) {
    ws.send(JSON.stringify({ id, call: name, args }));
  } else {
    const bytes = args[binary] instanceof ArrayBuffer ? new Uint8Array(args[binary]) : args[binary];
    const plain = args.map((a, i) => (i === binary ? null : a));
    const header = encoder.encode(JSON.stringify({ id, call: name, args: plain, binary }));
    const frame = new Uint8Array(8 + header.length + bytes.length);
    const view = new DataView(frame.buffer);
    view.setUint32(0, id);
    view.setUint32(4, header.length);
    frame.set(header, 8);
    frame.set(bytes, 8 + header.length);
    ws.send(frame);
  }
  return result;
}

function on(event, listener) {
  if (!listeners.has(event)) listeners.set(event, new Set());
  listeners.get(event).add(listener);
  return () => listeners.get(event).delete(listener);
}

function fromBase64(text) {
  const raw = atob(text);
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

const READ_CHUNK = 4 << 20;

// Whole files come over HTTP (fast for large files), with the same checks as the bridge.
async function fetchFile(file) {
  await connect();
  let response;
  try {
    const { secret, bridge } = accepted;
    response = await fetch(`http://${bridge}/_shoal/file?path=${encodeURIComponent(file)}`, {
      headers: { "X-Shoal-Secret": secret },
      cache: "no-store",
    });
  } catch (error) {
    throw new ShoalError("ECONNREFUSED", `the Shoal bridge is unreachable: ${error}`);
  }
  if (response.headers.get("Content-Type") === "application/vnd.shoal.error+json") {
    const failure = await response.json();
    throw new ShoalError(failure.code, failure.message);
  }
  if (!response.ok) throw new ShoalError("EIO", `HTTP ${response.status}`);
  return new Uint8Array(await response.arrayBuffer());
}

export const fs = {
  async readFile(file, options = {}) {
    if (typeof file !== "string") throw new ShoalError("EINVAL", "a path must be a string");
    const bytes = await fetchFile(file);
    const encoding = typeof options === "string" ? options : options.encoding;
    return encoding ? decoder.decode(bytes) : bytes;
  },
  writeFile: (file, data) => call("fs.writeFile", file, typeof data === "string" ? encoder.encode(data) : data),
  appendFile: (file, data) => call("fs.appendFile", file, typeof data === "string" ? encoder.encode(data) : data),
  stat: (file) => call("fs.stat", file),
  readdir: (dir = ".") => call("fs.readdir", dir),
  mkdir: (dir, options = {}) => call("fs.mkdir", dir, Boolean(options.recursive)),
  rm: (file, options = {}) => call("fs.rm", file, Boolean(options.recursive)),
  rename: (from, to) => call("fs.rename", from, to),
  dataDir: () => call("fs.dataDir"),
  async watch(file, listener) {
    const id = await call("fs.watch", file);
    const off = on("fs.watch", (event) => { if (event.id === id) listener(event.type, event.filename); });
    return { close: async () => { off(); await call("fs.unwatch", id); } };
  },
  createReadStream(file, options = {}) {
    const chunkSize = options.chunkSize || READ_CHUNK;
    let offset = options.start || 0;
    return new ReadableStream({
      async pull(controller) {
        const chunk = await call("fs.read", file, offset, chunkSize);
        if (chunk.length === 0) { controller.close(); return; }
        offset += chunk.length;
        controller.enqueue(chunk);
      },
    });
  },
  createWriteStream(file) {
    let first = true;
    return new WritableStream({
      async write(chunk) {
        const bytes = typeof chunk === "string" ? encoder.encode(chunk) : chunk;
        await call(first ? "fs.writeFile" : "fs.appendFile", file, bytes);
        first = false;
      },
      async close() { if (first) await call("fs.writeFile", file, new Uint8Array(0)); },
    });
  },
};

export const os = {
  info: () => call("os.info"),
  dirs: () => call("os.dirs"),
  platform: async () => (await call("os.info")).platform,
  arch: async () => (await call("os.info")).arch,
  hostname: async () => (await call("os.info")).hostname,
  totalmem: async () => (await call("os.info")).totalmem,
  freemem: async () => (await call("os.info")).freemem,
  cpus: async () => (await call("os.info")).cpus,
};

function normalizeParts(parts, absolute) {
  const out = [];
  for (const part of parts) {
    if (!part || part === ".") continue;
    if (part === "..") {
      if (out.length && out[out.length - 1] !== "..") out.pop();
      else if (!absolute) out.push("..");
    } else out.push(part);
  }
  return out;
}

export const path = {
  sep: "/",
  normalize(p) {
    const absolute = p.startsWith("/");
    const joined = normalizeParts(p.split("/"), absolute).join("/");
    return (absolute ? "/" : "") + joined || (absolute ? "/" : ".");
  },
  join: (...parts) => path.normalize(parts.filter(Boolean).join("/")),
  resolve: (...parts) => {
    let resolved = "";
    for (const part of parts.reverse()) {
      resolved = resolved ? `${part}/${resolved}` : part;
      if (part.startsWith("/")) break;
    }
    return path.normalize(resolved);
  },
  dirname(p) {
    const trimmed = p.replace(/\/+$/, "");
    const at = trimmed.lastIndexOf("/");
    return at < 0 ? "." : at === 0 ? "/" : trimmed.slice(0, at);
  },
  basename(p, ext = "") {
    const base = p.replace(/\/+$/, "").split("/").pop() || "";
    return ext && base.endsWith(ext) ? base.slice(0, -ext.length) : base;
  },
  extname(p) {
    const base = path.basename(p);
    const at = base.lastIndexOf(".");
    return at <= 0 ? "" : base.slice(at);
  },
  isAbsolute: (p) => p.startsWith("/"),
};

let follows = 0;

// Hand `listener` the host's `event`s tagged `field: id` (a new id of `kind`) until the
// returned stop is called: `start(id)` asks the host for them, `stop(id)` ends them.
function follow(kind, event, field, listener, start, stop) {
  const id = `${kind}-${Date.now().toString(36)}-${++follows}-${Math.random().toString(36).slice(2)}`;
  const off = on(event, (e) => { if (e[field] === id) listener(e); });
  const started = start(id);
  started.catch((error) => { off(); console.error(error); });
  return { id, stop: () => { off(); started.then(() => stop(id), () => {}); } };
}

// What the host sent as base64 in `data`, with `fields`, as bytes and text().
function withData(fields, base64) {
  const data = fromBase64(base64);
  return { ...fields, data, text: () => decoder.decode(data) };
}

// A group's shared document: updates in the Yjs/Yrs update format, as bytes.
class GroupDocument {
  constructor(group, name) {
    this.group = group;
    this.name = name;
    this.watches = [];
  }
  // This page's first watch of it, if any: the host echoes no update back to it.
  get ownWatch() { return this.watches[0] ?? null; }
  // The whole document as one update (Y.applyUpdate(ydoc, await doc.state())).
  state() { return call("groups.docState", this.group.id, this.name); }
  // Merge an update made here; it reaches the other members and this app's other pages.
  apply(update) { return call("groups.docApply", this.group.id, this.name, update, this.ownWatch); }
  // A Y.Text of the document for a page without Yjs: read() its string, splice() edits it
  // (index and count in the string's own units, as String.prototype.slice counts).
  text(key = "text") {
    const chars = (s) => Array.from(s).length;
    return {
      read: () => call("groups.docText", this.group.id, this.name, key),
      splice: (before, index, remove, insert = "") =>
        call("groups.docTextSplice", this.group.id, this.name, key,
             chars(before.slice(0, index)), chars(before.slice(index, index + remove)),
             insert, this.ownWatch),
    };
  }
  // on("update", fn): fn(update) with the state first, then every update from elsewhere
  // (and maybe this page's own: applying one twice changes nothing).
  on(event, listener) {
    if (event !== "update") throw new ShoalError("EINVAL", `unknown document event: ${event}`);
    const { id, stop } = follow("doc", "groups.update", "watch",
      (e) => listener(fromBase64(e.data)),
      (watch) => call("groups.docWatch", this.group.id, this.name, watch),
      (watch) => call("groups.docUnwatch", watch));
    this.watches.push(id);
    return () => { this.watches = this.watches.filter((w) => w !== id); stop(); };
  }
}

// A group this node is in: its posts, members, invite and documents.
class Group {
  constructor(info) {
    this.id = info.id;
    this.name = info.name;
    this.isAdmin = info.isAdmin;
  }
  publish(data, options = {}) { return call("groups.publish", this.id, toBytes(data), options.topic ?? ""); }
  members() { return call("groups.members", this.id); }
  invite() { return call("groups.invite", this.id); }
  document(name) { return new GroupDocument(this, name); }
  // on("post", fn, { topic }): posts held here (missed while away) first, then new ones.
  on(event, listener, options = {}) {
    if (event !== "post") throw new ShoalError("EINVAL", `unknown group event: ${event}`);
    return follow("sub", "groups.post", "sub",
      (p) => listener(withData({ id: p.id, author: p.author, topic: p.topic, time: p.time,
                                 parents: p.parents }, p.data)),
      (sub) => call("groups.subscribe", this.id, options.topic ?? null, sub),
      (sub) => call("groups.unsubscribe", sub)).stop;
  }
}

export const network = {
  id: () => call("network.id"),
  nat: () => call("network.nat"),
  peers: () => call("network.peers"),
  send: (peerId, data, options = {}) =>
    call("network.send", peerId, typeof data === "string" ? encoder.encode(data) : data, options),
  // Swap verified peer ids by a short code through the introducer: without options.code,
  // options.onCode(code) hears the new code to tell the other side.
  async pair(options = {}) {
    const off = options.onCode ? on("network.pair-code", (e) => options.onCode(e.code)) : null;
    try {
      return await call("network.pair", options.code ?? null,
                        options.timeout ? { timeout: options.timeout } : {});
    } finally {
      off?.();
    }
  },
  on(event, listener) {
    if (event === "message") {
      return on("network.message", (m) => {
        listener(withData({ from: m.from, path: m.path }, m.data));
      });
    }
    if (event === "peer") return on("network.peer", listener);
    throw new ShoalError("EINVAL", `unknown network event: ${event}`);
  },
  // Groups: members share posts and documents, and get what they missed when back.
  groups: {
    create: async (name) => new Group(await call("groups.create", name)),
    join: async (invite) => new Group(await call("groups.join", invite)),
    list: async () => (await call("groups.list")).map((info) => new Group(info)),
  },
};

let fetches = 0;
// Files by content, within the app's folders (needs the network permission): share(path)
// gives a ticket; fetch(ticket, path, { onProgress }) takes it from every peer sharing it.
export const files = {
  share: (file) => call("files.share", file),
  unshare: (ticket) => call("files.unshare", ticket),
  list: () => call("files.list"),
  async fetch(ticket, file, options = {}) {
    const id = `${Date.now()}-${++fetches}`;
    const off = options.onProgress
      ? on("files.progress", (e) => { if (e.id === id) options.onProgress(e); }) : null;
    try {
      return await call("files.fetch", ticket, file, id);
    } finally {
      off?.();
    }
  },
};

// Named channels and streams (network permission). network.channel(name) opens the app's
// channel `name` in this page: send(peerId, data), on("message"), on("stream"), close().
// network.openStream(peerId, name) gives { peerId, channel, readable, writable, close() }
// with WHATWG streams of Uint8Array: reads pull a chunk from the host as the page reads,
// and writes resolve once the host's stream buffer took them (so a slow peer slows the page).
const STREAM_CHUNK = 256 << 10;
const channelsOpen = new Map(); // name -> NetChannel, once the host opened it
const channelsOpening = new Map(); // name -> Promise<NetChannel>

function toBytes(data) {
  if (typeof data === "string") return encoder.encode(data);
  return data instanceof ArrayBuffer ? new Uint8Array(data) : data;
}

class NetStream {
  constructor({ id, peerId, channel }) {
    this.id = id;
    this.peerId = peerId;
    this.channel = channel;
    this.readable = new ReadableStream({
      async pull(controller) {
        const chunk = await call("network.streamRead", id);
        if (chunk.length === 0) controller.close();
        else controller.enqueue(chunk);
      },
      cancel: () => call("network.streamStop", id),
    }, { highWaterMark: 0 });
    this.writable = new WritableStream({
      async write(chunk) {
        const bytes = toBytes(chunk);
        for (let at = 0; at < bytes.length; at += STREAM_CHUNK) {
          await call("network.streamWrite", id, bytes.subarray(at, at + STREAM_CHUNK));
        }
      },
      close: () => call("network.streamClose", id),
      abort: () => call("network.streamReset", id),
    });
  }
  // What the host holds for it: { readable, buffered, inHand } bytes.
  info() { return call("network.streamInfo", this.id); }
  // Let go of it both ways at once (bytes not yet delivered may be lost).
  close() { return call("network.streamRelease", this.id); }
}

class NetChannel {
  constructor(name) {
    this.name = name;
    this.listeners = { message: new Set(), stream: new Set() };
  }
  send(peerId, data, options = {}) {
    return call("network.channelSend", this.name, peerId, toBytes(data), options);
  }
  openStream(peerId, options = {}) { return openStream(peerId, this.name, options); }
  on(event, listener) {
    const set = this.listeners[event];
    if (!set) throw new ShoalError("EINVAL", `unknown channel event: ${event}`);
    set.add(listener);
    return () => set.delete(listener);
  }
  async close() {
    channelsOpen.delete(this.name);
    channelsOpening.delete(this.name);
    await call("network.channelClose", this.name);
  }
}

function openChannel(name) {
  let opening = channelsOpening.get(name);
  if (!opening) {
    const channel = new NetChannel(name);
    opening = call("network.channel", name).then(() => {
      channelsOpen.set(name, channel);
      return channel;
    });
    opening.catch(() => channelsOpening.delete(name));
    channelsOpening.set(name, opening);
  }
  return opening;
}

async function openStream(peerId, name, options = {}) {
  return new NetStream(await call("network.openStream", peerId, name, options));
}

function dispatch(channel, event, value) {
  for (const listener of channel.listeners[event]) {
    try { listener(value); } catch (error) { console.error(error); }
  }
}

on("network.channel.message", (m) => {
  const channel = channelsOpen.get(m.channel);
  if (!channel) return;
  dispatch(channel, "message", withData({ from: m.from, path: m.path }, m.data));
});

on("network.stream", (s) => {
  const channel = channelsOpen.get(s.channel);
  if (!channel || channel.listeners.stream.size === 0) {
    call("network.streamRelease", s.id).catch(() => {}); // nobody takes it here
    return;
  }
  dispatch(channel, "stream", new NetStream(s));
});

network.channel = openChannel;
network.openStream = openStream;

class UdpSocket {
  constructor(id) { this.id = id; }
  send(data, port, host) {
    return call("dgram.send", this.id, typeof data === "string" ? encoder.encode(data) : data, host, port);
  }
  address() { return call("dgram.address", this.id); }
  on(event, listener) {
    if (event !== "message") throw new ShoalError("EINVAL", `unknown dgram event: ${event}`);
    return on("dgram.message", (m) => {
      if (m.id === this.id) listener(fromBase64(m.data), { address: m.host, port: m.port });
    });
  }
  close() { return call("dgram.close", this.id); }
}

export const dgram = {
  async createSocket(options = {}) { return new UdpSocket(await call("dgram.createSocket", options)); },
};

// The calls below act on the native window the page is in.
const windowNumber = () => Number(sessionStorage.getItem(WINDOW_KEY) || 0);

export const window = {
  async setTitle(title) {
    await call("window.setTitle", title, windowNumber());
    document.title = title;
  },
  setSize: (width, height) => call("window.setSize", width, height, windowNumber()),
  close: () => call("window.close", windowNumber()),
  // A native menu at the pointer: items are { label, id } or "-"; the id chosen, or null.
  contextMenu: (items) => call("window.contextMenu", items),
  // "menu": an item of a [[menu]] was chosen, { id }. "tray": the [tray] icon was
  // clicked ({ id: null }) or an item of its menu chosen ({ id }). "drop": files were
  // dropped on the window, { paths } (apps with file access only).
  on(event, listener) {
    if (["menu", "tray", "drop"].includes(event)) return on(`window.${event}`, listener);
    throw new ShoalError("EINVAL", `unknown window event: ${event}`);
  },
};

export const dialog = {
  open: (options = {}) => call("dialog.open", options),
  save: (options = {}) => call("dialog.save", options),
};

export const notification = {
  show: (title, options = {}) => call("notification.show", title, options.body || ""),
};

export const clipboard = {
  readText: () => call("clipboard.readText"),
  writeText: (text) => call("clipboard.writeText", text),
};

export const shell = { openExternal: (url) => call("shell.openExternal", String(url)) };

export const invoke = (name, args = []) => call("invoke", name, args);

export const app = {
  // How this copy was started: { url: the deep link or null, argv }.
  launch: () => call("app.launch"),
  // A second launch (a deep link clicked, the app started again) hands over here.
  on(event, listener) {
    if (event === "open") return on("app.open", listener);
    throw new ShoalError("EINVAL", `unknown app event: ${event}`);
  },
};

const MODIFIER_ORDER = ["ctrl", "alt", "shift", "super"];
function combo(text) {
  const parts = String(text).toLowerCase().split("+");
  const key = parts.pop();
  return [...MODIFIER_ORDER.filter((m) => parts.includes(m)), key].join("+");
}

export const hotkeys = {
  // The combinations shoal.toml declares, and whether this session can watch them.
  list: () => call("hotkeys.list"),
  on(keys, listener) {
    const wanted = combo(keys);
    return on("hotkey", (event) => { if (event.combo === wanted) listener(event); });
  },
};

export const dns = {
  lookup: (hostname, options = {}) => call("dns.lookup", hostname, options),
  resolve: (hostname, rrtype = "A") => call("dns.resolve", hostname, rrtype),
};

export const process = {
  info: () => call("process.info"),
  exit: (code = 0) => call("process.exit", code),
};

// A running program. Output that arrives before a listener is attached waits for it.
class ChildProcess {
  constructor(id) {
    this.id = id;
    this.listeners = { stdout: [], stderr: [], exit: [] };
    this.waiting = { stdout: [], stderr: [], exit: [] };
    this.exited = new Promise((resolve) => this.on("exit", resolve));
  }
  deliver(kind, value) {
    if (this.listeners[kind].length) for (const listener of this.listeners[kind]) listener(value);
    else this.waiting[kind].push(value);
  }
  on(event, listener) {
    if (!(event in this.listeners)) throw new ShoalError("EINVAL", `unknown event: ${event}`);
    this.listeners[event].push(listener);
    for (const value of this.waiting[event].splice(0)) listener(value);
    return () => { this.listeners[event] = this.listeners[event].filter((l) => l !== listener); };
  }
  write(data) { return call("child_process.write", this.id, typeof data === "string" ? encoder.encode(data) : data); }
  end() { return call("child_process.write", this.id, null); }
  kill(signal = "SIGTERM") { return call("child_process.kill", this.id, signal); }
}

const children = new Map();
on("child_process.data", (m) => children.get(m.id)?.deliver(m.stream, fromBase64(m.data)));
on("child_process.exit", (m) => {
  children.get(m.id)?.deliver("exit", { code: m.code, signal: m.signal });
  children.delete(m.id);
});

export const child_process = {
  async spawn(command, args = [], options = {}) {
    const child = new ChildProcess(await call("child_process.spawn", command, args, options));
    children.set(child.id, child);
    return child;
  },
  exec: (command, args = [], options = {}) => call("child_process.exec", command, args, options),
};

// For the page `shoal test` opens in the app's window: results go to the CLI.
export const testRunner = {
  report: (result) => call("test.report", result),
  done: () => call("test.done"),
};

export const dev = {
  on: (event, listener) => on(`dev.${event}`, listener),
  report: (text) => call("dev.report", String(text)),
};

// Links that leave the app open in the system browser (with the shell permission), not in
// the app's window.
function isExternal(href) {
  try { return new URL(href, location.href).origin !== location.origin; } catch { return false; }
}

const openWindow = globalThis.open;

// Without the shell permission a link leaves as any link of a web page would: in a
// browser tab it opens a new tab; a native window refuses it.
function openOutside(href) {
  call("shell.openExternal", href).catch((error) => {
    if (error.code === "EPERM") openWindow.call(globalThis, href, "_blank", "noopener");
    else console.error(error);
  });
}

document.addEventListener("click", (event) => {
  const link = event.target instanceof Element ? event.target.closest("a[href]") : null;
  if (link && isExternal(link.href)) {
    event.preventDefault();
    openOutside(new URL(link.href, location.href).href);
  }
});

globalThis.open = (url, ...rest) => {
  if (url && isExternal(url)) {
    openOutside(new URL(url, location.href).href);
    return null;
  }
  if (url) {
    // A page of the app: in a native window, another Shoal window (same bridge rules);
    // in a browser tab (ENOTSUP) or without the window permission, as the browser would.
    const page = new URL(url, location.href).href;
    call("window.open", page).catch(() => openWindow.call(globalThis, page, ...rest));
    return null;
  }
  return openWindow.call(globalThis, url, ...rest);
};

on("dev.reload", () => location.reload());
connect().catch(() => {});
