"""What `ninep vm` can tell before it boots, and what the console says went wrong.

A root with no init makes the guest kernel panic after a minute of booting, its reason
buried in a long trace: check the root on the host first.  When the guest does panic,
`panic_reason` finds the one line that says why.
"""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from ninep import pathwalk
from ninep.fs import hostmodel
from ninep.fs.hostmodel import XATTR_MODE


#: The guest init says why it gives up just before PID 1 exits; the kernel's own
#: line comes after it.
_INIT_PANIC = re.compile(r"ninep-init: panic: (.*)")
_KERNEL_PANIC = re.compile(r"Kernel panic - not syncing: (.*)")


class RootProblem(Exception):
    """The root cannot boot as asked; the message says what is missing."""


def guest_mode(path: Path) -> int:
    """The file's mode as the guest sees it: in a mapped tree (ninepd --identity mapped,
    QEMU mapped-xattr) type and permissions live in ``user.virtfs.mode`` and the host
    file is a plain 0600 file, a symlink a file holding its target."""
    try:
        raw = os.getxattr(path, XATTR_MODE, follow_symlinks=False)
    except OSError:
        raw = b""
    return int.from_bytes(raw, "little") if len(raw) == 4 else os.lstat(path).st_mode


def is_mapped_tree(root: Path) -> bool:
    """Whether ``root`` was made as a mapped tree: its top directory carries the mode."""
    return hostmodel.is_mapped_tree(os.fspath(root))


def _link_target(path: Path) -> str:
    if os.path.islink(path):
        return os.readlink(path)
    return path.read_bytes().decode(errors="surrogateescape")  # a mapped symlink


def resolve_in_root(root: Path, path: str) -> Path | None:
    """``path`` as the guest would see it with ``root`` as /: symlinks followed inside
    the root (an absolute target starts again at ``root``).  None if it does not exist."""
    def target_of(candidate: str) -> str | None:
        here = root / candidate
        return _link_target(here) if stat.S_ISLNK(guest_mode(here)) else None

    try:
        return root / pathwalk.resolve(path, target_of)
    except OSError:
        return None


def _executable(root: Path, path: str) -> str | None:
    """None if ``path`` is an executable file in the root, else what is wrong."""
    found = resolve_in_root(root, path)
    if found is None:
        return "does not exist"
    try:
        mode = guest_mode(found)
    except OSError as exc:
        return exc.strerror or str(exc)
    if not stat.S_ISREG(mode):
        return "is not a regular file"
    if not mode & 0o111:
        return "is not executable"
    return None


def check_root(root: Path, script: str | None, append: tuple[str, ...] = ()) -> None:
    """Raise RootProblem if the guest could not start: no /bin/sh for a --cmd script,
    no init (``init=`` on the kernel command line, else /sbin/init) otherwise."""
    if script is not None:
        problem = _executable(root, "/bin/sh")
        if problem:
            raise RootProblem(f"{root}: /bin/sh {problem}; --cmd runs its command with "
                              "/bin/sh -c (build a root with `ninep rootfs busybox DIR`)")
        return
    init = "/sbin/init"
    for word in " ".join(append).split():
        if word.startswith("init="):
            init = word.removeprefix("init=")
    problem = _executable(root, init)
    if problem:
        raise RootProblem(f"{root}: {init} {problem}, so the guest has nothing to start "
                          "(give --cmd \"...\", --append init=/PATH, or build a root with "
                          "`ninep rootfs busybox DIR`)")


def panic_reason(console: str) -> str | None:
    """Why the guest kernel panicked, on one line; None if it did not."""
    kernel = _KERNEL_PANIC.search(console)
    if kernel is None:
        return None
    init = _INIT_PANIC.findall(console[:kernel.start()])
    reason = kernel.group(1).strip()
    return f"{init[-1].strip()} ({reason})" if init else reason
