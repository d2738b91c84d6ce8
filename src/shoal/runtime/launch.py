"""How one copy of an app is launched: the options ``shoal run``, ``dev`` and ``test``
decide, in one place, and what a launch may add to the app host beyond the app
(plugins: ``shoal test``'s runner, say)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from shoal.runtime.bridge import Handler
    from shoal.runtime.config import AppConfig
    from shoal.runtime.refusals import Refusal
    from shoal.runtime.system import WindowBackend


class HostPlugin(Protocol):
    """Something a launch adds to the app host: bridge calls, and pages of its own."""

    def calls(self, window: WindowBackend) -> dict[str, Handler]:
        """Its bridge calls by name, once the host has started; ``window`` is the app's
        window (or a browser tab's stand-in)."""
        ...

    def page(self, path: str) -> tuple[str, bytes] | None:
        """Its page at ``path`` (under ``/_shoal/``): ``(content type, body)``, or None
        for a path not its own."""
        ...


@dataclass(frozen=True, slots=True)
class Launch:
    """The options of one launch of an app; every one has a default."""

    data_dir: Path | None = None
    """The app's data folder (default: the app id's folder in the user's data dir)."""
    config: AppConfig | None = None
    """The app's ``shoal.toml``, when the caller has read it already."""
    dev: bool = False
    """``shoal dev``: reload pages when the app's files change, report errors."""
    on_dev: Callable[[str, str], None] | None = None
    """Under ``dev``: told ``(kind, line)`` of each reload (``"reload"``), error
    (``"error"``), notice and inspector address (``"inspector"``), for the terminal."""
    port: int = 0
    """The app server's port on 127.0.0.1 (0: the app's own, else any free one)."""
    host: str | None = None
    """The host name the pages are served under for a browser (``origins.app_host``: an
    origin of the app's own); None: ``127.0.0.1``."""
    lan_discovery: bool | None = None
    """Find peers on the LAN (None: as ``shoal.toml`` says)."""
    argv: tuple[str, ...] = ()
    """The app's own arguments (``process.info().argv``)."""
    instance: Path | None = None
    """The socket a second launch hands its deep link to (see ``instance``)."""
    url: str | None = None
    """The deep link this launch was opened with."""
    entry: str = "/"
    """The path the window opens first: the app's own page, or a plugin's."""
    plugins: tuple[HostPlugin, ...] = ()
    on_refusal: Callable[[Refusal], None] | None = None
    """Told each kind of thing the pages' policy refused, once (under ``dev`` the pages'
    error overlay shows it too; without it, ``on_dev`` is told ``("refused", line)``)."""
    dev_url: str | None = None
    """Under ``dev``: a framework's dev server whose pages are shown instead of the
    app's files (which it reloads itself)."""
