// Runs as a page script, so the Content-Security-Policy applies to everything here.
import { fs, os, invoke, network, path, ShoalError } from "shoal:api";
import * as byFixedUrl from "/_shoal/api.js";

const results = {};
async function check(name, body) {
  try {
    results[name] = { ok: await body() };
  } catch (error) {
    results[name] = { error: error instanceof ShoalError ? error.code : String(error.name || error) };
  }
}

await check("eval", () => eval("40 + 2"));
await check("newFunction", () => new Function("return 42")());
await check("inlineScript", () => new Promise((resolve) => {
  globalThis.inlineRan = false;
  const script = document.createElement("script");
  script.textContent = "globalThis.inlineRan = true";
  document.head.append(script);
  setTimeout(() => resolve(globalThis.inlineRan), 100);
}));
await check("hashedInline", () => globalThis.hashedInline === true);  // allowed in [csp]
await check("unhashedInline", () => globalThis.unhashedInline === true);  // the page's own
await check("ownStyleAttribute", () => getComputedStyle(document.getElementById("styled")).color);
// Code injected after load (as an XSS would) does not run, even where the page's own
// inline code does.
const settle = () => new Promise((resolve) => setTimeout(resolve, 100));
await check("injectedFragmentScript", async () => {
  const fragment = document.createRange().createContextualFragment(
    "<script>globalThis.fragmentRan = true</script>");
  document.body.append(fragment);
  await settle();
  return globalThis.fragmentRan === true;
});
await check("injectedOnclick", async () => {
  const box = document.createElement("div");
  box.innerHTML = '<button onclick="globalThis.clicked = true">x</button>';
  document.body.append(box);
  box.querySelector("button").click();
  await settle();
  return globalThis.clicked === true;
});
await check("injectedJavascriptLink", async () => {
  const link = document.createElement("a");
  link.href = "javascript:globalThis.linkRan = true";
  document.body.append(link);
  link.click();
  location.href = "javascript:globalThis.linkRan = true";  // past any click handler
  await settle();
  return globalThis.linkRan === true;
});
await check("injectedStyleAttribute", () => {
  const box = document.createElement("div");
  box.innerHTML = '<p style="color: rgb(1, 2, 3)">x</p>';
  document.body.append(box);
  return getComputedStyle(box.firstChild).color;
});
await check("fetchOwnFile", async () => (await fetch("index.html")).status);
await check("fetchFileReadWithoutSecret", async () =>  // the bridge's, not a file
  (await fetch("/_shoal/file?path=notes/today.txt")).ok);
await check("isolated", () => crossOriginIsolated);
await check("characterSet", () => document.characterSet);  // from the response alone
await check("origin", () => location.origin);
// No Qt web channel (pywebview's way into Python) is attached to the page.
await check("qtChannel", () => typeof globalThis.qt);
await check("gtkBridge", () => typeof globalThis.webkit?.messageHandlers?.jsBridge);
await check("oneModule", () => byFixedUrl.fs === fs);
await check("fetchElsewhere", async () => (await fetch("http://127.0.0.1:9/")).status);
await check("writeMissingFolder", () => fs.writeFile("nowhere/today.txt", "x"));
await check("writeRead", async () => {
  await fs.mkdir("notes");
  await fs.writeFile("notes/today.txt", "hello from the page");
  return fs.readFile("notes/today.txt", "utf8");
});
await check("mkdirReaddir", async () => {
  await fs.mkdir("made/deeper", { recursive: true });
  return (await fs.readdir("made")).map((e) => e.name);
});
await check("binaryRoundTrip", async () => {
  const bytes = new Uint8Array(300000).map((_, i) => i % 251);
  await fs.writeFile("blob.bin", bytes);
  const back = await fs.readFile("blob.bin");
  return back.length === bytes.length && back.every((v, i) => v === bytes[i]);
});
await check("stream", async () => {
  let total = 0;
  const reader = fs.createReadStream("blob.bin", { chunkSize: 65536 }).getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.length;
  }
  return total;
});
await check("readOutside", () => fs.readFile("/etc/hostname"));
await check("traversal", () => fs.readFile("../../../../etc/hostname"));
await check("writeOutside", () => fs.writeFile("/tmp/shoal-page-escape.txt", "x"));
await check("missing", () => fs.readFile("no-such-file.txt"));
await check("osPlatform", () => os.platform());
await check("invokeAdd", () => invoke("add", [2, 3]));
await check("invokeNotGranted", () => invoke("not_granted"));
await check("invokeAppError", () => invoke("fail"));
await check("invokeAsync", () => invoke("slow_echo", ["later"]));
await check("networkDenied", () => network.id());
await check("path", () => path.join("/a/b", "../c", "d.txt"));

document.body.dataset.results = JSON.stringify(results);
await fs.writeFile("results.json", JSON.stringify(results));
document.body.dataset.ready = "true";
// Asked to leave the app (the window test does): the window must keep the app, and a
// page that is still this one afterwards says so. A page loaded again afterwards would
// say that instead.
if (sessionStorage.getItem("left")) await fs.writeFile("returned.txt", location.href);
if (!sessionStorage.getItem("left") && (await fs.stat("leave.txt").then(() => true, () => false))) {
  sessionStorage.setItem("left", "yes");
  await fs.rm("leave.txt");
  location.href = "http://127.0.0.1:65534/elsewhere";  // not a port browsers block
  await new Promise((resolve) => setTimeout(resolve, 1500));
  // Long after the page loaded: what the window's webview put into it of its own.
  await fs.writeFile("globals.json", JSON.stringify({
    pywebview: typeof globalThis.pywebview, QWebChannel: typeof globalThis.QWebChannel }));
  await fs.writeFile("stayed.txt", location.href);  // written last: the test waits for it
}
