"""Pages share and fetch a file through ``shoal:api`` in a real browser: two apps run by
``shoal run --browser``, each with the network permission, on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from playwright.sync_api import Browser

TOML = """[app]
name = "Files"
id = "test.shoal.files.{name}"

[permissions]
network = true

[network]
lan = false
listen = "127.0.0.1:0"
"""

SHARE_JS = """import { fs, files } from "shoal:api";
const bytes = new Uint8Array(600000).map((_, i) => (i * 7919) % 251);
await fs.writeFile("photo.bin", bytes);
const shared = await files.share("photo.bin");
document.body.dataset.results = JSON.stringify(shared);
document.body.dataset.ready = "true";
"""

FETCH_JS = """import { fs, files } from "shoal:api";
window.fetchFile = async (ticket) => {
  const seen = [];
  const got = await files.fetch(ticket, "copy.bin", { onProgress: (p) => seen.push(p) });
  const bytes = await fs.readFile("copy.bin");
  const same = bytes.every((b, i) => b === (i * 7919) % 251) && bytes.length === 600000;
  let refused = null;
  try {
    await files.fetch(ticket, "/etc/stolen.bin");
  } catch (error) {
    refused = error.code;
  }
  return { got, same, last: seen.at(-1), refused };
};
document.body.dataset.ready = "true";
"""


@contextmanager
def _app(folder: Path, name: str, script: str) -> Iterator[str]:
    folder.mkdir(parents=True)
    (folder / "shoal.toml").write_text(TOML.format(name=name))
    (folder / "index.html").write_text(
        '<!doctype html><html><head><script type="module" src="app.js"></script>'
        "</head><body></body></html>")
    (folder / "app.js").write_text(script)
    process = subprocess.Popen(
        [sys.executable, "-m", "shoal.cli.main", "run", "--browser", "--json", str(folder),
         "--data-dir", str(folder.parent / f"{name}-data")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "BROWSER": "true", "SHOAL_NO_LAN": "1"})
    try:
        assert process.stdout is not None
        ready = json.loads(process.stdout.readline())
        while ready["event"] == "notice":  # no introducer: tickets carry the addresses
            ready = json.loads(process.stdout.readline())
        assert ready["event"] == "ready", ready
        yield ready["url"]
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_a_page_fetches_what_another_app_shares(tmp_path: Path, browser: Browser) -> None:
    with _app(tmp_path / "sharer", "sharer", SHARE_JS) as share_url, \
            _app(tmp_path / "fetcher", "fetcher", FETCH_JS) as fetch_url:
        sharer, fetcher = browser.new_page(), browser.new_page()
        try:
            sharer.goto(share_url)
            sharer.wait_for_selector("body[data-ready=true]", state="attached", timeout=20000)
            shared = json.loads(sharer.get_attribute("body", "data-results") or "{}")
            assert shared["size"] == 600000 and shared["ticket"].startswith("blob")
            fetcher.goto(fetch_url)
            fetcher.wait_for_selector("body[data-ready=true]", state="attached",
                                      timeout=20000)
            result = fetcher.evaluate("(ticket) => window.fetchFile(ticket)",
                                      shared["ticket"])
        finally:
            sharer.close()
            fetcher.close()
    assert result["same"] is True and result["got"]["fetched"] == 3
    assert result["last"]["bytes"] == 600000 and result["last"]["peers"] == 1
    assert result["refused"] == "EPERM"
    assert (tmp_path / "fetcher-data" / "copy.bin").stat().st_size == 600000
