"""What the test app's page script (tests/data/webapp/checks.js) must report, wherever
the page runs: a browser tab or the native window."""

from __future__ import annotations

from pathlib import Path

WEBAPP = Path(__file__).parent / "data" / "webapp"

EXPECTED = {
    # The policy: the page's own inline code runs, no code injected later, no eval, no
    # connections but the app's own files and the bridge.
    "eval": {"error": "EvalError"},
    "newFunction": {"error": "EvalError"},
    "inlineScript": {"ok": False},
    "unhashedInline": {"ok": True},  # in the page's HTML: allowed by its hash
    "hashedInline": {"ok": True},  # its hash is in the app's [csp] too
    "ownStyleAttribute": {"ok": "rgb(0, 128, 0)"},
    "injectedFragmentScript": {"ok": False},
    "injectedOnclick": {"ok": False},
    "injectedJavascriptLink": {"ok": False},
    "injectedStyleAttribute": {"ok": "rgb(0, 0, 0)"},
    "fetchOwnFile": {"ok": 200},
    "fetchFileReadWithoutSecret": {"ok": False},
    "fetchElsewhere": {"error": "TypeError"},
    "isolated": {"ok": True},  # COOP and COEP were applied
    "characterSet": {"ok": "UTF-8"},  # the page has no <meta charset>
    "qtChannel": {"ok": "undefined"},  # no second way into Python: not pywebview's Qt
    "gtkBridge": {"ok": "undefined"},  # channel, nor its WebKitGTK message handler
    "oneModule": {"ok": True},  # "shoal:api" and /_shoal/api.js are one module
    # What the app may do works.
    "writeRead": {"ok": "hello from the page"},
    "mkdirReaddir": {"ok": ["deeper"]},
    "binaryRoundTrip": {"ok": True},
    "stream": {"ok": 300000},
    "osPlatform": {"ok": "linux"},
    "invokeAdd": {"ok": 5},
    "invokeAsync": {"ok": "later"},
    "path": {"ok": "/a/c/d.txt"},
    # What it may not do is refused with a code.
    "readOutside": {"error": "EPERM"},
    "traversal": {"error": "EPERM"},
    "writeOutside": {"error": "EPERM"},
    "missing": {"error": "ENOENT"},
    "writeMissingFolder": {"error": "ENOENT"},
    "invokeNotGranted": {"error": "EPERM"},
    "invokeAppError": {"error": "EAPP"},
    "networkDenied": {"error": "EPERM"},
}


def assert_page_results(results: dict, data_dir: Path, origin: str) -> None:
    """Every check came out as expected, the page ran at ``origin``, and what it wrote
    (or was refused) is on disk (or is not)."""
    for name, expected in EXPECTED.items():
        assert results.get(name) == expected, (name, results.get(name))
    assert results["origin"] == {"ok": origin}
    assert (data_dir / "notes" / "today.txt").read_text() == "hello from the page"
    assert not Path("/tmp/shoal-page-escape.txt").exists()
