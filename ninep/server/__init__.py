"""The 9P2000.L server: pure session/dispatch/locks, trio connection/listeners/server."""

from .server import DEFAULT_LISTEN, ConnectionInfo, Server, as_exports, current_connection, serve
from .session import Export, Limits

__all__ = ["DEFAULT_LISTEN", "ConnectionInfo", "Export", "Limits", "Server", "as_exports",
           "current_connection", "serve"]
