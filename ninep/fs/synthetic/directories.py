"""Directory nodes: a fixed (program-edited) mapping, or a listing computed on demand.

``Directory`` is also a ``Filesystem`` whose root is itself, so a tree can be handed
straight to ``ninep.server.serve`` (so this module builds on ``adapter``, which serves
any tree of nodes and knows a directory by ``Node.is_dir``). Its mutation hooks (``create_file``, ``unlink``...)
refuse with EROFS: clients cannot change a program's tree. ``RamDirectory`` (ramfs.py)
implements them.
"""

from __future__ import annotations

import errno
import stat
from typing import Any, Callable, Iterator, Mapping

from ..backend import Credentials, Filesystem, errno_error
from .adapter import SyntheticFilesystem
from .files import ControlFile, GeneratedFile, StaticFile, StreamFile
from .node import DirectoryHandle, Handle, Node, OpenContext, Session, callback, opens_for_writing


def check_entry_name(name: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"invalid directory entry name {name!r}")


def as_node(value: Any) -> Node:
    """Shorthand in tree literals: bytes/str are static files, dicts are directories."""
    if isinstance(value, Node):
        return value
    if isinstance(value, (bytes, bytearray, str)):
        return StaticFile(value)
    if isinstance(value, Mapping):
        return Directory(value)
    raise TypeError(f"cannot make a file from {type(value).__name__}")


class Directory(Node, Filesystem):
    """A directory whose entries the program sets: ``Directory({"name": node})``,
    ``tree["name"] = node``, ``del tree["name"]``, or the decorators ``@tree.file(...)``,
    ``@tree.control(...)``, ``@tree.stream(...)``, ``@tree.directory(...)``."""

    FILE_TYPE = stat.S_IFDIR
    DEFAULT_MODE = 0o555

    def __init__(self, entries: Mapping[str, Any] | None = None, **meta: Any):
        super().__init__(**meta)
        self._entries: dict[str, Node] = {}
        self._changes = 0
        self._filesystem: Filesystem | None = None
        for name, value in (entries or {}).items():
            self.add(name, value)

    # --- the program's view: a mapping -------------------------------------------------
    def add(self, name: str, value: Any) -> Node:
        """Add an entry (``ValueError`` if it exists); returns the node."""
        check_entry_name(name)
        if name in self._entries:
            raise ValueError(f"{name!r} already exists")
        node = as_node(value)
        self._entries[name] = node
        node.links += 1
        self._changed()
        return node

    def pop(self, name: str) -> Node:
        node = self._entries.pop(name)
        node.links -= 1
        self._changed()
        return node

    def __setitem__(self, name: str, value: Any) -> None:
        if name in self._entries:
            self.pop(name)
        self.add(name, value)

    def __getitem__(self, name: str) -> Node:
        return self._entries[name]

    def __delitem__(self, name: str) -> None:
        self.pop(name)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def _changed(self) -> None:
        self._changes += 1
        self.touch()

    @property
    def version(self) -> int:
        return self._changes

    def nlink(self) -> int:
        return 2 + sum(1 for node in self._entries.values() if node.is_dir)

    # --- decorators: a function becomes a file ----------------------------------------
    def file(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``@tree.file("uptime")`` over ``def uptime(): return "..."``: a GeneratedFile."""
        return self._decorator(name, GeneratedFile, options)

    def control(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``@tree.control("ctl")`` over ``def ctl(data): ...``: a ControlFile."""
        return self._decorator(name, ControlFile, options)

    def stream(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``@tree.stream("ticks")`` over ``async def ticks(): ...``: a StreamFile."""
        return self._decorator(name, StreamFile, options)

    def directory(self, name: str, **options: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """``@tree.directory("procs")`` over ``def procs(): return {...}``: a DynamicDirectory."""
        return self._decorator(name, DynamicDirectory, options)

    def _decorator(self, name: str, kind: type[Node], options: dict[str, Any]):
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name, kind(fn, **options))
            return fn
        return register

    # --- what the fid adapter calls ----------------------------------------------------
    async def lookup(self, name: str, session: Session) -> Node | None:
        return self._entries.get(name)

    async def list(self, session: Session) -> list[tuple[str, Node]]:
        return list(self._entries.items())

    def check_open(self, flags: int) -> None:
        if opens_for_writing(flags):
            raise errno_error(errno.EISDIR)

    async def make_handle(self, ctx: OpenContext) -> Handle:
        return DirectoryHandle(ctx, await self.list(ctx.session))

    # Mutations requested by clients. A program's tree is read-only to them.
    async def create_file(self, name: str, flags: int, mode: int, gid: int,
                          session: Session) -> Node:
        """Make (or, without O_EXCL, find) the regular file ``name``; the caller opens it."""
        raise errno_error(errno.EROFS)

    async def make_directory(self, name: str, mode: int, gid: int, session: Session) -> Node:
        raise errno_error(errno.EROFS)

    async def make_symlink(self, name: str, target: str, gid: int, session: Session) -> Node:
        raise errno_error(errno.EROFS)

    async def make_special(self, name: str, mode: int, rdev: int, gid: int, session: Session) -> Node:
        raise errno_error(errno.EROFS)

    async def link(self, name: str, node: Node) -> None:
        raise errno_error(errno.EROFS)

    async def unlink(self, name: str, *, directory: bool | None) -> None:
        """Remove ``name``; ``directory`` True = rmdir, False = unlink, None = either."""
        raise errno_error(errno.EROFS)

    async def rename(self, name: str, new_parent: "Directory", new_name: str) -> None:
        raise errno_error(errno.EROFS)

    # --- a Directory is a whole export ---------------------------------------------------
    @property
    def filesystem(self) -> Filesystem:
        """The ``SyntheticFilesystem`` serving this tree: the first one made over it
        (``SyntheticFilesystem(tree, zero_versions=True)`` chooses options), else
        one with default options, made on first use."""
        if self._filesystem is None:
            self._filesystem = SyntheticFilesystem(self)
        return self._filesystem

    async def attach(self, aname: str, creds: Credentials):  # type: ignore[override]
        return await self.filesystem.attach(aname, creds)


class DynamicDirectory(Directory):
    """A directory whose listing a function computes each time it is listed or
    searched: ``DynamicDirectory(fn)`` with ``fn()`` or ``fn(session)`` (sync or async)
    returning ``{name: node}``. Return the *same* node objects for the same entries to
    keep their qids stable (e.g. keep a dict of nodes and update it).

    ``lookup=fn(name)`` / ``fn(name, session)`` can find one entry without listing all
    (return a node or None); by default a lookup lists."""

    def __init__(self, list_entries: Callable[..., Any], *,
                 lookup: Callable[..., Any] | None = None, **meta: Any):
        super().__init__(**meta)
        self._list = callback(list_entries, 0)
        self._lookup = callback(lookup, 1) if lookup is not None else None

    async def list(self, session: Session) -> list[tuple[str, Node]]:
        entries = await self._list(session)
        result = []
        for name, value in dict(entries).items():
            check_entry_name(name)
            result.append((name, as_node(value)))
        return result

    async def lookup(self, name: str, session: Session) -> Node | None:
        if self._lookup is not None:
            found = await self._lookup(name, session)
            return None if found is None else as_node(found)
        return dict(await self.list(session)).get(name)

    @property
    def version(self) -> int:
        # The listing may differ on every call: never let a client cache it.
        self._changes += 1
        return self._changes

    def nlink(self) -> int:
        return 2
