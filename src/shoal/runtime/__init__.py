"""The app runtime: web apps with a checked JS API, in a native window or a browser tab.

An app is a folder with ``shoal.toml``, web files and optionally ``app.py``; see
``docs/runtime.md``. ``expose`` marks ``app.py`` functions the page may ``invoke``.
"""

from typing import TYPE_CHECKING

from shoal._lazy import lazy_exports

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, ConfigError, load_config
    from shoal.runtime.host import AppHost
    from shoal.runtime.launch import Launch
    from shoal.runtime.netapi import expose

__all__ = ["AppConfig", "AppHost", "ConfigError", "Launch", "expose", "load_config"]

_LAZY = {
    "AppConfig": "shoal.runtime.config",
    "ConfigError": "shoal.runtime.config",
    "load_config": "shoal.runtime.config",
    "AppHost": "shoal.runtime.host",
    "Launch": "shoal.runtime.launch",
    "expose": "shoal.runtime.netapi",
}


# The web server's modules load on first use.
__getattr__ = lazy_exports(globals(), _LAZY)
