"""Every complete Python program in the docs runs as printed."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
BLOCK = re.compile(r"```python\n(.*?)```", re.S)


def _programs() -> list[tuple[str, str]]:
    found = []
    for page in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for index, code in enumerate(BLOCK.findall(page.read_text())):
            if "asyncio.run(" in code or "sim.run(" in code:
                found.append((f"{page.name}#{index}", code))
    return found


@pytest.mark.parametrize(("where", "code"), _programs(), ids=[w for w, _ in _programs()])
def test_program_in_the_docs_runs(where: str, code: str, tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=180, cwd=tmp_path, env={"SHOAL_NO_LAN": "1", "PATH": ""},
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, f"{where}: {result.stderr}"
    assert result.stdout.strip(), where


def test_the_readme_program_is_found() -> None:
    assert any(where.startswith("README.md") for where, _ in _programs())


def test_the_channel_and_simulator_examples_are_found() -> None:
    programs = [code for where, code in _programs() if where.startswith("python-api.md")]
    assert any("channel(" in code for code in programs)
    assert any("sim.run(" in code for code in programs)


def _blocks(page: Path, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", page.read_text(), re.S)


def test_the_shoal_toml_in_the_docs_is_valid(tmp_path: Path) -> None:
    from shoal.runtime.config import load_config

    (example,) = _blocks(DOCS / "runtime.md", "toml")
    (tmp_path / "shoal.toml").write_text(example)
    (tmp_path / "index.html").write_text("<!doctype html><p>notes")
    (tmp_path / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    config = load_config(tmp_path)
    assert config.permissions.shell and config.permissions.invoke == ("search", "export")
    assert config.tray is not None and [i.id for i in config.tray.items] == ["sync", "", "quit"]


def test_the_js_api_in_the_docs_is_what_the_module_exports() -> None:
    api = (ROOT / "src" / "shoal" / "runtime" / "assets" / "api.js").read_text()
    exported = set(re.findall(r"^export (?:const|class|function) (\w+)", api, re.M))
    imports = [block for block in _blocks(DOCS / "runtime.md", "js") if "shoal:api" in block]
    assert imports
    for block in imports:
        for names in re.findall(r"import \{([^}]*)\} from \"shoal:api\"", block):
            named = {n.strip() for n in names.split(",") if n.strip()}
            assert named <= exported, named - exported


def _app_blocks() -> list[tuple[str, str]]:
    readme = [b for b in _blocks(ROOT / "README.md", "sh") if "shoal init " in b]
    runtime = [b for b in _blocks(DOCS / "runtime.md", "sh") if "shoal init " in b]
    return [*((f"runtime.md#{i}", b) for i, b in enumerate(runtime)),
            *((f"README.md#{i}", b) for i, b in enumerate(readme))]


@pytest.mark.parametrize(("where", "block"), _app_blocks(), ids=[w for w, _ in _app_blocks()])
def test_the_app_commands_in_the_docs_run_as_printed(where: str, block: str,
                                                      tmp_path: Path) -> None:
    """Each line of a block of app commands, in a fresh folder, on a virtual display:
    ``init``, ``info``, ``build``, ``install`` and the like finish, and each
    ``run``/``dev`` opens its window or serves."""
    import os

    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands[0].startswith("shoal init ")
    env = {**os.environ, "SHOAL_NO_LAN": "1", "SHOAL_DATA_DIR": str(tmp_path / "data"),
           "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
           "XDG_STATE_HOME": str(tmp_path / "xdg-state")}
    env.pop("QT_QPA_PLATFORM", None)
    if os.geteuid() == 0:
        env["WEBKIT_DISABLE_SANDBOX_THIS_IS_DANGEROUS"] = "1"
    for command in commands:
        argv = ["xvfb-run", "--auto-servernum", "bash", "-c", command]
        if not command.startswith(("shoal run ", "shoal dev ")):
            result = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True,
                                    text=True, timeout=60)
            assert result.returncode == 0, (command, result.stderr)
            continue
        process = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            assert process.stdout is not None
            line = process.stdout.readline()
            assert "window open" in line or '"ready"' in line or " in a browser" in line, (
                command, line, process.stderr.read() if not line else "")
        finally:
            _end_group(process)


def _end_group(process: subprocess.Popen[str]) -> None:
    """End the process group ``process`` leads (xvfb-run, its X server, the app) and see
    every member of it gone: a stuck app is killed rather than left running."""
    import os
    import signal
    import time

    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=20)
    deadline = time.monotonic() + 20
    while _group_alive(process.pid):
        if time.monotonic() > deadline:
            os.killpg(process.pid, signal.SIGKILL)
            pytest.fail(f"{process.args}: still running 20 s after SIGTERM")
        time.sleep(0.2)


def _group_alive(group: int) -> bool:
    """Whether a process of ``group`` still runs (a zombie waiting to be reaped does not)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == group and fields[0] != "Z":
            return True
    return False


def test_the_js_test_shown_in_the_docs_is_the_templates_own() -> None:
    """It runs as printed: ``shoal test`` runs the blank template's copy in the tests."""
    template = (ROOT / "src/shoal/runtime/templates/blank/app.test.js").read_text()
    assert template.rstrip() in [b.rstrip() for b in _blocks(DOCS / "runtime.md", "js")]
