"""P9_DOTL open flags -> this host's ``os.O_*`` values (the wire's are Linux x86's)."""

from __future__ import annotations

import os

from ..protocol.constants import ACCMODE, OpenFlags

# Explicit P9_DOTL -> host mapping: the wire values are Linux x86's, the host's may differ.
# Flags that would let a guest change how the *server* resolves or blocks (NOFOLLOW,
# NONBLOCK, NOCTTY, CLOEXEC, FASYNC, LARGEFILE, DIRECT) are deliberately not mapped.
_DOTL_TO_HOST: tuple[tuple[int, int], ...] = (
    (OpenFlags.CREATE, os.O_CREAT),
    (OpenFlags.EXCL, os.O_EXCL),
    (OpenFlags.TRUNC, os.O_TRUNC),
    (OpenFlags.APPEND, os.O_APPEND),
    (OpenFlags.DSYNC, getattr(os, "O_DSYNC", 0)),
    (OpenFlags.SYNC, getattr(os, "O_SYNC", 0)),
    (OpenFlags.DIRECTORY, getattr(os, "O_DIRECTORY", 0)),
    (OpenFlags.NOATIME, getattr(os, "O_NOATIME", 0)),
)
_ACCMODE_TO_HOST = {0: os.O_RDONLY, 1: os.O_WRONLY, 2: os.O_RDWR, 3: os.O_RDONLY}


def dotl_to_host_flags(flags: int) -> int:
    """Translate P9_DOTL open flags to this host's ``os.O_*`` values."""
    host = _ACCMODE_TO_HOST[flags & ACCMODE]
    for dotl, hostbit in _DOTL_TO_HOST:
        if flags & dotl:
            host |= hostbit
    return host
