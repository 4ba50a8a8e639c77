"""Synthetic filesystems: serve a tree of Python objects over 9P.

    from ninep.fs.synthetic import Directory, StaticFile, GeneratedFile, ControlFile, StreamFile
    tree = Directory({"hello": StaticFile(b"hi\\n"),
                      "time": GeneratedFile(lambda: f"{time.time()}\\n")})
    await ninep.server.serve(tree, "tcp://127.0.0.1:5640")

See docs/library.md for the whole API, in the order a new user needs it.
"""

from __future__ import annotations

from typing import Any

from ..backend import Filesystem
from .adapter import SyntheticFile, SyntheticFilesystem
from .directories import Directory, DynamicDirectory, as_node
from .files import ControlFile, Feed, GeneratedFile, SpecialFile, StaticFile, StreamFile, Symlink
from .node import Handle, Node, OpenContext, Session
from .ramfs import RamDirectory, RamFile, RamFilesystem

__all__ = [
    "ControlFile", "Directory", "DynamicDirectory", "Feed", "GeneratedFile", "Handle",
    "Node", "OpenContext", "RamDirectory", "RamFile", "RamFilesystem", "Session",
    "SpecialFile", "StaticFile", "StreamFile", "Symlink", "SyntheticFile",
    "SyntheticFilesystem", "as_filesystem", "as_node",
]


def as_filesystem(obj: Any) -> Filesystem:
    """What ``ninepd --synthetic module:attribute`` serves: a ``Filesystem`` as is, a
    ``Directory`` (its own export), a mapping (a tree literal), or a callable
    returning any of those (called once, with no arguments)."""
    if isinstance(obj, Directory):
        return obj.filesystem
    if isinstance(obj, Filesystem):
        return obj
    if isinstance(obj, dict):
        return Directory(obj).filesystem
    if callable(obj):
        made = obj()
        if callable(made) and not isinstance(made, (Filesystem, dict)):
            raise TypeError("the factory returned another callable, not a tree")
        return as_filesystem(made)
    raise TypeError(f"cannot serve {type(obj).__name__}: expected a Filesystem, a Directory "
                    "or a function returning one")
