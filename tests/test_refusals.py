"""Refusal reports: read as the browser sends them, told once per kind, and taken from
the app's own pages only."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp

from shoal.runtime.host import AppHost
from shoal.runtime.refusals import MAX_KINDS, Refusal, Refusals

ORIGIN = "http://127.0.0.1:4000"


def _report(**fields: object) -> bytes:
    return json.dumps({"csp-report": {"document-uri": ORIGIN + "/", **fields}}).encode()


def test_each_kind_is_told_once_and_malformed_reports_are_dropped() -> None:
    refusals = Refusals(ORIGIN, "main.html")
    image = _report(**{"effective-directive": "img-src", "blocked-uri": "https://a.example/1.png",
                       "source-file": ORIGIN + "/", "line-number": 7})
    first = refusals.read(image)
    assert first == Refusal("img-src", "https://a.example/1.png", "", "main.html:7",
                            'to allow it add to shoal.toml: [csp] img-src = ["https://a.example"]')
    other_picture = image.replace(b"1.png", b"2.png")
    assert refusals.read(image) is None and refusals.read(other_picture) is None
    for junk in (b"", b"not json", b"[]", b"{}", json.dumps({"csp-report": []}).encode(),
                 _report(**{"effective-directive": 3})):
        assert refusals.read(junk) is None
    # The window's pages (shoal://app/...): the browser keeps only the URL's scheme.
    shown = refusals.read(_report(**{"effective-directive": "script-src", "blocked-uri": "eval",
                                     "source-file": "shoal", "line-number": 3}))
    assert shown is not None and shown.where == "(a file of the app):3"


def test_a_page_inventing_kinds_is_heard_a_bounded_number_of_times() -> None:
    refusals = Refusals(ORIGIN)
    told = [refusals.read(_report(**{"effective-directive": "img-src",
                                     "blocked-uri": f"https://h{n}.example/x"}))
            for n in range(MAX_KINDS + 50)]
    assert sum(r is not None for r in told) == MAX_KINDS


async def test_another_sites_page_cannot_post_refusals_to_the_terminal(tmp_path: Path) -> None:
    """A page of another site, in the developer's browser, can send a POST that needs
    no preflight (text/plain, a form): it is refused and nothing is told."""
    app = tmp_path / "app"
    app.mkdir()
    (app / "shoal.toml").write_text('[app]\nname = "R"\nid = "org.example.r"\n')
    (app / "index.html").write_text("<!doctype html><title>r</title>")
    told: list[Refusal] = []
    body = _report(**{"effective-directive": "connect-src",
                      "blocked-uri": "https://evil.example/run-this"})
    async with AppHost(app, data_dir=tmp_path / "data", on_refusal=told.append) as host, \
            aiohttp.ClientSession() as session:
        report = f"{host.server.origin}/_shoal/csp-report"
        for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
            async with session.post(report, data=body, headers={
                    "Content-Type": kind, "Origin": "https://evil.example"}) as response:
                assert response.status == 415
        async with session.get(report) as response:
            assert response.status == 405
        assert told == []
        async with session.post(report, data=body, headers={
                "Content-Type": "application/csp-report"}) as response:
            assert response.status == 204
        assert [r.blocked for r in told] == ["https://evil.example/run-this"]
