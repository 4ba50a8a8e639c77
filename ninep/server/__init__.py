"""The 9P2000.L server: pure session/dispatch/locks, trio connection/listeners/server."""

from .server import DEFAULT_LISTEN, Server, as_exports, serve
from .session import Export, Limits

__all__ = ["DEFAULT_LISTEN", "Export", "Limits", "Server", "as_exports", "serve"]
