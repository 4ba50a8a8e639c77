"""Following symlinks inside a root, one component at a time, as Linux's path walk does.

Sans I/O: ``follow(path)`` yields each path (relative to the root, "/"-joined) whose
kind it must know, is sent back that path's symlink target (None: not a symlink), and
returns the resolved path. ``..`` at the root stays at the root; an absolute target
starts again at the root. The caller does the lookups: over the host (``ninep vm``'s
root check) or over 9P (the client shell's ``cat``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Generator

MAX_SYMLINKS = 40  # as Linux's path walk


def _parts(path: str) -> list[str]:
    return [p for p in path.split("/") if p not in ("", ".")]


def follow(path: str) -> Generator[str, str | None, str]:
    pending = _parts(path)
    resolved: list[str] = []
    hops = 0
    while pending:
        name = pending.pop(0)
        if name == "..":
            if resolved:
                resolved.pop()
            continue
        target = yield "/".join([*resolved, name])
        if target is None:
            resolved.append(name)
            continue
        hops += 1
        if hops > MAX_SYMLINKS:
            raise OSError(errno.ELOOP, "Too many levels of symbolic links", path)
        if target.startswith("/"):
            resolved = []
        pending = _parts(target) + pending
    return "/".join(resolved)


def resolve(path: str, target_of: Callable[[str], str | None]) -> str:
    """``follow`` driven by a blocking lookup; its OSErrors (a missing name) pass through."""
    walk = follow(path)
    try:
        candidate = next(walk)
        while True:
            candidate = walk.send(target_of(candidate))
    except StopIteration as done:
        return done.value
