"""The 9P2000.L server: pure rules/session/dispatch/locks, trio connection/listeners/server.

The trio side is loaded on first use (PEP 562), so that importing the pure modules
(``ninep.server.dispatch``, ``session``, ``locks``, ``rules``) loads no trio.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "DEFAULT_LISTEN": "server", "ConnectionInfo": "server", "Server": "server",
    "as_exports": "server", "current_connection": "server", "serve": "server",
    "Export": "session", "Limits": "session",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
