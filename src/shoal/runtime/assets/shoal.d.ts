// Type declarations for Shoal's page API: import { ... } from "shoal:api".

export class ShoalError extends Error {
  /** EPERM, ENOENT, EINVAL, ENOTSUP, ETIMEDOUT, EAPP, EIO, ... */
  readonly code: string;
}

export interface Stats {
  size: number; mtimeMs: number; ctimeMs: number; mode: number;
  isFile: boolean; isDirectory: boolean;
}
export interface DirEntry { name: string; isFile: boolean; isDirectory: boolean; isSymbolicLink: boolean; }

export declare const fs: {
  readFile(path: string): Promise<Uint8Array>;
  readFile(path: string, options: { encoding: "utf8" } | "utf8"): Promise<string>;
  writeFile(path: string, data: Uint8Array | string): Promise<void>;
  appendFile(path: string, data: Uint8Array | string): Promise<void>;
  stat(path: string): Promise<Stats>;
  readdir(path?: string): Promise<DirEntry[]>;
  mkdir(path: string, options?: { recursive?: boolean }): Promise<void>;
  rm(path: string, options?: { recursive?: boolean }): Promise<void>;
  rename(from: string, to: string): Promise<void>;
  dataDir(): Promise<string>;
  watch(path: string, listener: (type: "change" | "rename", filename: string) => void):
    Promise<{ close(): Promise<void> }>;
  createReadStream(path: string, options?: { chunkSize?: number; start?: number }): ReadableStream<Uint8Array>;
  createWriteStream(path: string): WritableStream<Uint8Array | string>;
};

export interface OsInfo {
  platform: string; arch: string; hostname: string; release: string;
  totalmem: number; freemem: number; cpus: number; cpuSpeedMHz: number | null; uptime: number;
}
export declare const os: {
  info(): Promise<OsInfo>;
  dirs(): Promise<Record<"home" | "data" | "cache" | "temp" | "documents" | "downloads" |
    "desktop" | "pictures" | "music" | "videos", string>>;
  platform(): Promise<string>; arch(): Promise<string>; hostname(): Promise<string>;
  totalmem(): Promise<number>; freemem(): Promise<number>; cpus(): Promise<number>;
};

export declare const path: {
  sep: "/";
  normalize(p: string): string; join(...parts: string[]): string; resolve(...parts: string[]): string;
  dirname(p: string): string; basename(p: string, ext?: string): string; extname(p: string): string;
  isAbsolute(p: string): boolean;
};

export interface NetworkMessage { from: string; path: "direct" | "relay"; data: Uint8Array; text(): string; }
export interface GroupPost {
  /** Hex; `author` is the writer's peer id, `time` unix seconds. */
  id: string; author: string; topic: string; time: number; parents: string[];
  data: Uint8Array; text(): string;
}
export interface GroupMember { peerId: string; online: boolean; path: string | null; admin: boolean; name: string; }
/** A document shared by a group, as Yjs/Yrs updates (one format). */
export interface GroupDocument {
  readonly name: string;
  /** The whole document as one update: Y.applyUpdate(ydoc, await doc.state()). */
  state(): Promise<Uint8Array>;
  /** Merge an update made here (e.g. from ydoc.on("update")); the other members get it. */
  apply(update: Uint8Array): Promise<void>;
  /** The Y.Text `key` (default "text") for a page without Yjs: `read()` its string;
   * `splice(before, index, remove, insert)` edits it, `before` being the string the page
   * holds, `index` and `remove` counted as `before.slice` counts. */
  text(key?: string): {
    read(): Promise<string>;
    splice(before: string, index: number, remove: number, insert?: string): Promise<void>;
  };
  /** The state first, then each update from other members and this app's other pages
   * (its own may come back: applying an update twice changes nothing). */
  on(event: "update", listener: (update: Uint8Array) => void): () => void;
}
export interface Group {
  /** Hex of the group's public key. */
  readonly id: string;
  readonly name: string;
  readonly isAdmin: boolean;
  publish(data: Uint8Array | string, options?: { topic?: string }): Promise<{ id: string; time: number }>;
  /** Posts held here (those missed while away) first, then new ones; returns `off`. */
  on(event: "post", listener: (post: GroupPost) => void, options?: { topic?: string }): () => void;
  members(): Promise<GroupMember[]>;
  /** Text that lets whoever holds it join, read and post: give it as you would a key. */
  invite(): Promise<string>;
  document(name: string): GroupDocument;
}
/** A named channel of the app's node, open in this page (names: 1-100 of A-Z a-z 0-9 . _ - : /,
 *  starting with a letter or digit; "shoal/..." is reserved, EPERM). */
export interface NetChannel {
  readonly name: string;
  send(peerId: string, data: Uint8Array | string, options?: { timeout?: number }):
    Promise<{ path: "direct" | "relay"; ms: number }>;
  openStream(peerId: string, options?: { timeout?: number }): Promise<NetStream>;
  on(event: "message", listener: (message: NetworkMessage) => void): () => void;
  /** A peer opened a stream on this channel (with no listener, it is refused). */
  on(event: "stream", listener: (stream: NetStream) => void): () => void;
  close(): Promise<void>;
}
/** A reliable, ordered byte stream to a peer, both ways, with the node's flow control. */
export interface NetStream {
  readonly peerId: string;
  readonly channel: string;
  /** Pulls from the host as the page reads; ends when the peer closes its side. */
  readonly readable: ReadableStream<Uint8Array>;
  /** Each write resolves once the host's stream buffer took it; close() once the peer
   *  acknowledged every byte; abort() resets. */
  readonly writable: WritableStream<Uint8Array | string>;
  /** Bytes the host holds for this stream. */
  info(): Promise<{ readable: number; buffered: number; inHand: number }>;
  /** Let go of both directions at once. */
  close(): Promise<void>;
}
export interface NetworkChannels {
  channel(name: string): Promise<NetChannel>;
  openStream(peerId: string, channel: string, options?: { timeout?: number }): Promise<NetStream>;
}
export declare const network: NetworkChannels & {
  id(): Promise<string>;
  nat(): Promise<{ mapping: string; filtering: string; public: string[]; udp: boolean; summary: string } | null>;
  peers(): Promise<{ peerId: string; connected: boolean; path: string | null; rttMs: number | null }[]>;
  send(peerId: string, data: Uint8Array | string, options?: { timeout?: number }):
    Promise<{ path: "direct" | "relay"; ms: number }>;
  pair(options?: { code?: string; onCode?: (code: string) => void; timeout?: number }):
    Promise<{ peerId: string }>;
  on(event: "message", listener: (message: NetworkMessage) => void): () => void;
  on(event: "peer", listener: (peer: { peerId: string; connected: boolean; path?: string }) => void): () => void;
  groups: {
    /** A new group with this node its admin. */
    create(name: string): Promise<Group>;
    /** Join by an invite (from `group.invite()` or `shoal group create`); EINVAL if damaged. */
    join(invite: string): Promise<Group>;
    list(): Promise<Group[]>;
  };
};

export interface FileProgress { bytes: number; size: number; peers: number; corrupt: number; }
/** Files by content, within the app's folders; needs the network permission. */
export declare const files: {
  /** Hash the file and serve it; `ticket` is the text others fetch it by. */
  share(path: string): Promise<{ ticket: string; size: number; name: string; root: string }>;
  /** Fetch into `path` (as `path.part` until whole and verified) from every peer sharing it. */
  fetch(ticket: string, path: string, options?: { onProgress?: (progress: FileProgress) => void }):
    Promise<{ path: string; size: number; fetched: number; resumed: number; seconds: number }>;
  unshare(ticket: string): Promise<boolean>;
  list(): Promise<{ ticket: string; size: number; name: string; served: number }[]>;
};

export interface UdpSocket {
  send(data: Uint8Array | string, port: number, host: string): Promise<void>;
  address(): Promise<{ address: string; port: number }>;
  on(event: "message", listener: (data: Uint8Array, from: { address: string; port: number }) => void): () => void;
  close(): Promise<void>;
}
export declare const dgram: { createSocket(options?: { port?: number; address?: string }): Promise<UdpSocket> };

export type MenuItem = { label: string; id: string } | "-";
export declare const window: {
  setTitle(title: string): Promise<void>;
  setSize(width: number, height: number): Promise<void>;
  close(): Promise<void>;
  /** A native menu at the pointer; resolves with the id chosen, or null if dismissed. */
  contextMenu(items: MenuItem[]): Promise<string | null>;
  on(event: "menu", listener: (item: { id: string }) => void): () => void;
  /** `id` is null for a click on the icon itself. */
  on(event: "tray", listener: (item: { id: string | null }) => void): () => void;
  /** Files dropped on the window (apps that declare file access only). */
  on(event: "drop", listener: (drop: { paths: string[] }) => void): () => void;
};
export declare const dialog: {
  open(options?: { directory?: boolean; multiple?: boolean }): Promise<string[] | null>;
  save(options?: { filename?: string }): Promise<string | null>;
};
export declare const notification: { show(title: string, options?: { body?: string }): Promise<void> };
export declare const clipboard: { readText(): Promise<string>; writeText(text: string): Promise<void> };
/** Needs the `shell` permission; a few links per second at most (EAGAIN past that). */
export declare const shell: { openExternal(url: string): Promise<void> };
export declare function invoke<T = unknown>(name: string, args?: unknown[] | Record<string, unknown>): Promise<T>;
export declare const app: {
  /** `url`: the deep link (`[app] scheme`) this copy was opened with, if any. */
  launch(): Promise<{ url: string | null; argv: string[] }>;
  /** A second launch of the app handed its link and arguments to this copy. */
  on(event: "open", listener: (launch: { url: string | null; argv: string[] }) => void): () => void;
};
/** Global key combinations declared in `permissions.hotkeys`, e.g. "ctrl+alt+k". */
export declare const hotkeys: {
  list(): Promise<{ hotkeys: string[]; available: boolean; reason: string | null }>;
  on(combo: string, listener: (event: { combo: string }) => void): () => void;
};
/** Needs the `dns` permission. */
export declare const dns: {
  lookup(hostname: string, options?: { family?: 0 | 4 | 6; all?: false }): Promise<{ address: string; family: 4 | 6 }>;
  lookup(hostname: string, options: { family?: 0 | 4 | 6; all: true }): Promise<{ address: string; family: 4 | 6 }[]>;
  resolve(hostname: string, rrtype?: "A" | "AAAA"): Promise<string[]>;
};
export declare const process: {
  /** `env` holds only the variables listed in `permissions.env`. */
  info(): Promise<{ argv: string[]; platform: string; arch: string; pid: number; env: Record<string, string> }>;
  /** Closes the app (its window, or with --browser the server) with `code`. */
  exit(code?: number): Promise<void>;
};
export declare class ChildProcess {
  readonly id: number;
  readonly exited: Promise<{ code: number | null; signal: string | null }>;
  on(event: "stdout" | "stderr", listener: (data: Uint8Array) => void): () => void;
  on(event: "exit", listener: (end: { code: number | null; signal: string | null }) => void): () => void;
  write(data: string | Uint8Array): Promise<void>;
  end(): Promise<void>;
  kill(signal?: "SIGTERM" | "SIGKILL" | "SIGINT" | "SIGHUP"): Promise<void>;
}
/** Only the programs listed in `permissions.commands`; never through a shell. */
export declare const child_process: {
  spawn(command: string, args?: string[], options?: { cwd?: string }): Promise<ChildProcess>;
  exec(command: string, args?: string[], options?: { cwd?: string; timeout?: number }): Promise<{ code: number | null; signal: string | null; stdout: string; stderr: string }>;
};
export declare const dev: {
  on(event: "reload", listener: () => void): () => void;
  on(event: "error", listener: (problem: { source: string; message: string }) => void): () => void;
  /** Under `shoal dev`: print a line in the terminal that runs the app. */
  report(text: string): Promise<void>;
};
