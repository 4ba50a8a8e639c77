"""What the client raises besides ``OSError``, and how server errors become ``OSError``.

A server's refusal (Rlerror, Rerror) is an ``OSError`` with the errno the server named,
so callers handle remote failures exactly like local ones. Anything that ends the
connection is a ``ConnectionLost``; its ``__cause__`` says why (the server hung up, or
sent something that broke the protocol -- then the cause is a ``codec.ProtocolError``).
"""

from __future__ import annotations

import errno
import os

from ..protocol.messages import Rerror, Rlerror


class ConnectionLost(Exception):
    """The connection is gone; this request and every later one fail."""


class VersionError(Exception):
    """Tversion failed: the server does not speak 9P2000.L, or offered a uselessly
    small msize. The connection is closed."""


# Rerror carries only a string. Servers that send it (classic 9P2000 ones, or a 9P2000.L
# server refusing Tversion) mostly use strerror() texts or Plan 9's own phrases.
_PLAN9_ERROR_NAMES = {
    "file does not exist": errno.ENOENT,
    "file not found": errno.ENOENT,
    "permission denied": errno.EACCES,
    "file already exists": errno.EEXIST,
    "not a directory": errno.ENOTDIR,
    "is a directory": errno.EISDIR,
    "unknown fid": errno.EBADF,
    "fid already in use": errno.EBADF,
    "directory is not empty": errno.ENOTEMPTY,
    "read-only file system": errno.EROFS,
}
_STRERROR_TO_ERRNO = {os.strerror(code).lower(): code for code in errno.errorcode}


def errno_from_ename(ename: str) -> int:
    """The errno an Rerror's text most likely means (EIO when it names none we know)."""
    key = ename.strip().lower()
    return _PLAN9_ERROR_NAMES.get(key) or _STRERROR_TO_ERRNO.get(key) or errno.EIO


def error_from_reply(reply: Rlerror | Rerror) -> OSError:
    """The ``OSError`` a server's error reply stands for."""
    if isinstance(reply, Rlerror):
        code = reply.ecode
        try:
            text = os.strerror(code)
        except (ValueError, OverflowError):  # a code too large for C strerror()
            text = f"errno {code}"
        return OSError(code, text)
    return OSError(errno_from_ename(reply.ename), reply.ename)
