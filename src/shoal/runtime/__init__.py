"""The app runtime: web apps with a checked JS API, in a native window or a browser tab.

An app is a folder with ``shoal.toml``, web files and optionally ``app.py``; see
``docs/runtime.md``. ``expose`` marks ``app.py`` functions the page may ``invoke``.
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from shoal.runtime.config import AppConfig, ConfigError, load_config
    from shoal.runtime.host import AppHost
    from shoal.runtime.netapi import expose

__all__ = ["AppConfig", "AppHost", "ConfigError", "expose", "load_config"]

_LAZY = {
    "AppConfig": "shoal.runtime.config",
    "ConfigError": "shoal.runtime.config",
    "load_config": "shoal.runtime.config",
    "AppHost": "shoal.runtime.host",
    "expose": "shoal.runtime.netapi",
}


def __getattr__(name: str) -> Any:
    # Loading lazily lets a window start before the web server's modules are imported.
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shoal.runtime' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
