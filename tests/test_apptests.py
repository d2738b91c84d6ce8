"""``shoal test``: an app's JS tests run in headless Chromium against its real bridge,
reported as TAP (or JSON), failing the run when a test fails, hangs or cannot load."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from window_helpers import shoal_env

SHOAL = [sys.executable, "-m", "shoal.cli.main"]
TESTS = """import { test, assert } from "shoal:test";
import { invoke, fs } from "shoal:api";

test("greets through app.py", async () => {
  assert.equal(await invoke("greet", ["tests"]), "Hello, tests!");
});
test("fails on purpose", () => assert.deepEqual({ a: 1 }, { a: 2 }));
test("hangs", () => new Promise(() => {}), { timeout: 300 });
test("the wall holds in tests too", async () => {
  await assert.rejects(fs.readFile("/etc/passwd"), { code: "EPERM" });
});
"""


def _app(tmp_path: Path) -> Path:
    folder = tmp_path / "app"
    made = subprocess.run([*SHOAL, "init", str(folder)], capture_output=True, timeout=30)
    assert made.returncode == 0
    return folder


def _test(folder: Path, *args: str, display: str | None = None
          ) -> subprocess.CompletedProcess[str]:
    env = shoal_env(display)
    return subprocess.run([*SHOAL, "test", str(folder), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def test_a_new_apps_own_js_tests_pass(tmp_path: Path) -> None:
    result = _test(_app(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "TAP version 13"
    assert [line.split(" # ")[0] for line in lines[1:3]] == [
        "ok 1 - app.test.js: app.py greets",
        "ok 2 - app.test.js: the data folder keeps what is written"]
    assert lines[3:] == ["1..2", "# pass 2", "# fail 0"]


def test_failures_and_hangs_fail_the_run_with_their_reasons(tmp_path: Path) -> None:
    _check_failures_and_hangs(_app(tmp_path))


ENGINE_TEST = """import { test, assert } from "shoal:test";
test("runs in %s", () => assert.equal(%s, true));
"""
ENGINES = {"qt": ("QtWebEngine", 'navigator.userAgent.includes("QtWebEngine")'),
           "gtk": ("WebKitGTK", '!navigator.userAgent.includes("Chrome")')}


@pytest.mark.parametrize("gui", ["qt", "gtk"])
def test_the_tests_run_in_the_apps_own_window(tmp_path: Path, display: str, gui: str) -> None:
    folder = _app(tmp_path)
    result = _test(folder, "--window", "--gui", gui, display=display)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(" # ")[0] for line in result.stdout.splitlines()] == [
        "TAP version 13", "ok 1 - app.test.js: app.py greets",
        "ok 2 - app.test.js: the data folder keeps what is written", "1..2", "# pass 2",
        "# fail 0"]
    (folder / "engine.test.js").write_text(ENGINE_TEST % ENGINES[gui])
    _check_failures_and_hangs(folder, "--window", "--gui", gui, display=display,
                              extra=f"engine.test.js: runs in {ENGINES[gui][0]}")


def _check_failures_and_hangs(folder: Path, *args: str, display: str | None = None,
                              extra: str | None = None) -> None:
    """The same failing run, in whichever engine ``args`` choose; ``extra``: a test of
    another file that must pass first."""
    (folder / "app.test.js").unlink()
    (folder / "more").mkdir()
    (folder / "more" / "cases.test.js").write_text(TESTS)
    (folder / "broken.test.js").write_text("import { nothing } from './missing.js';\n")
    result = _test(folder, *args, display=display)
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    first = 2 if extra else 1  # the engine's file sorts after broken.test.js
    assert "not ok 1 - broken.test.js: (loading the file)" in out
    if extra:
        assert f"ok 2 - {extra}" in out
    assert f"ok {first + 1} - more/cases.test.js: greets through app.py" in out
    assert f"not ok {first + 2} - more/cases.test.js: fails on purpose" in out
    assert '  expected: {"a":2}\n  actual: {"a":1}\n' in out
    assert f"not ok {first + 3} - more/cases.test.js: hangs" in out
    assert "timed out after 300 ms" in out
    assert f"ok {first + 4} - more/cases.test.js: the wall holds in tests too" in out
    passed = 3 if extra else 2
    assert out.rstrip().endswith(f"1..{first + 4}\n# pass {passed}\n# fail 3")
    events = [json.loads(line) for line in
              _test(folder, *args, "--json", display=display).stdout.splitlines()]
    assert events[-1] == {"event": "done", "passed": passed, "failed": 3}
    assert [e["ok"] for e in events if e["event"] == "test"] == [
        False, *([True] if extra else []), True, False, False, True]


def test_a_file_that_does_not_load_is_named_with_line_and_column(tmp_path: Path) -> None:
    folder = _app(tmp_path)
    (folder / "lib.js").write_text("export const one = 1;\n\nconst two = ;\n")
    (folder / "imports.test.js").write_text("import { one } from './lib.js';\n")
    (folder / "throws.test.js").write_text('import { test } from "shoal:test";\n\n'
                                           'JSON.parse("{");\ntest("never", () => {});\n')
    (folder / "quotes.test.js").write_text(
        'import { test, assert } from "shoal:test";\n'
        'test("quotes", () => assert.equal("Hi, x!", "Hi, y!"));\n')
    result = _test(folder)
    assert result.returncode == 1
    blocks = result.stdout.split("not ok ")[1:]
    assert "imports.test.js: (loading the file)" in blocks[0]
    assert "    lib.js:3:13: Unexpected token ';'" in blocks[0]
    assert "throws.test.js: (loading the file)" in blocks[1]
    assert "    throws.test.js:3:6: " in blocks[1]
    assert "quotes.test.js: quotes" in blocks[2]
    assert '    "Hi, x!" !== "Hi, y!"\n  expected: "Hi, y!"\n  actual: "Hi, x!"' in blocks[2]
    assert "never" not in result.stdout  # a file that threw is not run again


def test_no_tests_is_one_line(tmp_path: Path) -> None:
    folder = _app(tmp_path)
    (folder / "app.test.js").unlink()
    result = _test(folder)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"shoal: error: {folder}: no test files (*.test.js) (ENOENT)"]
