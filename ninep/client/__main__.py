"""``python -m ninep.client URL COMMAND PATH...``: poke at any 9P2000.L server.

    python -m ninep.client tcp://127.0.0.1:5640 ls /
    python -m ninep.client -a /srv/export -u root tcp://host:5640 cat etc/hostname
    echo hi | python -m ninep.client unix:///run/9p.sock put tmp/greeting
    python -m ninep.client -D tcp://127.0.0.1:5640 stat etc     # -D traces every message

The port defaults to 5640 (ninepd's). `cat` follows symlinks, as cat(1) does: an
absolute target is taken from the attach point. A server that does not answer within
--timeout seconds (connecting, attaching, or one command on one path) is an error.

Exit status 0 on success, 1 when the server refuses (the errno is printed), 2 for a
connection or usage problem, or a timeout.
"""

from __future__ import annotations

import argparse
import stat as stat_module
import sys
from dataclasses import dataclass
from typing import BinaryIO, Sequence, TextIO

import trio

from .. import pathwalk
from ..protocol.constants import DirentType
from .connect import DEFAULT_TIMEOUT, open_client, open_stream
from .errors import ConnectionLost, VersionError
from .remote_file import RemoteFile

@dataclass
class Streams:
    out: TextIO
    err: TextIO
    inp: BinaryIO


_DIRENT_MARK = {DirentType.DIR: "/", DirentType.LNK: "@", DirentType.FIFO: "|",
                DirentType.SOCK: "="}


async def _ls(root: RemoteFile, path: str, io: Streams) -> None:
    entries = await root.listdir(path)
    for entry in sorted(entries, key=lambda e: e.name):
        if entry.name not in (".", ".."):
            print(entry.name + _DIRENT_MARK.get(entry.type, ""), file=io.out)


async def _follow_symlinks(root: RemoteFile, path: str) -> str:
    """``path`` with every symlink in it replaced by its target, one component at a
    time (the server walks symlinks as names, it never follows them)."""
    walk = pathwalk.follow(path)
    try:
        candidate = next(walk)
        while True:
            link = stat_module.S_ISLNK((await root.stat(candidate)).mode)
            candidate = walk.send(await root.readlink(candidate) if link else None)
    except StopIteration as done:
        return done.value


async def _cat(root: RemoteFile, path: str, io: Streams) -> None:
    data = await root.read_file(await _follow_symlinks(root, path))
    buffer = getattr(io.out, "buffer", None)
    if buffer is not None:
        io.out.flush()
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (tests): show bytes as text
        io.out.write(data.decode(errors="replace"))


async def _stat(root: RemoteFile, path: str, io: Streams) -> None:
    attr = await root.stat(path)
    print(f"{stat_module.filemode(attr.mode)} nlink={attr.nlink} uid={attr.uid} "
          f"gid={attr.gid} size={attr.size} mtime={attr.mtime_sec}.{attr.mtime_nsec:09d} "
          f"qid.path={attr.qid.path} qid.version={attr.qid.version}", file=io.out)


async def _put(root: RemoteFile, path: str, io: Streams) -> None:
    await root.write_file(path, io.inp.read())


async def _mkdir(root: RemoteFile, path: str, io: Streams) -> None:
    await root.mkdir(path)


async def _rm(root: RemoteFile, path: str, io: Streams) -> None:
    target = await root.stat(path)
    await root.unlink(path, directory=stat_module.S_ISDIR(target.mode))


async def _df(root: RemoteFile, path: str, io: Streams) -> None:
    async with root.walk(path) as target:
        fs = await target.statfs()
    print(f"bsize={fs.bsize} blocks={fs.blocks} bfree={fs.bfree} bavail={fs.bavail} "
          f"files={fs.files} ffree={fs.ffree} namelen={fs.namelen}", file=io.out)


COMMANDS = {"ls": _ls, "cat": _cat, "stat": _stat, "put": _put, "mkdir": _mkdir,
            "rm": _rm, "df": _df}


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ninep.client",
                                     description="Talk to a 9P2000.L server.")
    parser.add_argument("url", help="tcp://HOST[:PORT] (port 5640 by default), unix:///ABS/PATH "
                                    "or unix://REL/PATH")
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument("paths", nargs="*", default=[""], metavar="path",
                        help="relative to the attach point (default: the root)")
    parser.add_argument("-a", "--aname", default="", help="export to attach to")
    parser.add_argument("-u", "--uname", default="", help="user name to attach as")
    parser.add_argument("-n", "--n-uname", type=int, default=None, help="numeric uid")
    parser.add_argument("-m", "--msize", type=int, default=128 * 1024 + 24)
    parser.add_argument("-D", "--trace", action="store_true", help="print every message")
    parser.add_argument("-t", "--timeout", type=float, default=DEFAULT_TIMEOUT,
                        help="seconds to wait for the server: to connect and attach, and "
                             "for each command on each path; 0 waits forever (default %(default)g)")
    return parser


async def run(argv: Sequence[str], io: Streams | None = None) -> int:
    io = io or Streams(sys.stdout, sys.stderr, sys.stdin.buffer)
    args = _parser().parse_args(argv)
    options: dict = {"aname": args.aname, "uname": args.uname, "msize": args.msize}
    if args.n_uname is not None:
        options["n_uname"] = args.n_uname
    if args.trace:
        options["trace"] = lambda line: print(line, file=io.err)
    timeout = args.timeout if args.timeout > 0 else None
    limit = timeout if timeout is not None else float("inf")
    options["timeout"] = timeout
    try:
        with trio.move_on_after(limit) as connecting:
            stream = await open_stream(args.url)
        if connecting.cancelled_caught:
            print(f"{args.url}: no connection within {timeout:g} s", file=io.err)
            return 2
    except (OSError, ValueError) as exc:
        print(f"{args.url}: {getattr(exc, 'strerror', None) or exc}", file=io.err)
        return 2
    try:
        async with open_client(stream, **options) as client:
            assert client.root is not None
            for path in args.paths:
                with trio.move_on_after(limit) as command:
                    await COMMANDS[args.command](client.root, path, io)
                if command.cancelled_caught:
                    print(f"{args.url}: {args.command} {path}: no answer within {timeout:g} s",
                          file=io.err)
                    return 2
    except (ConnectionLost, VersionError) as exc:
        print(f"{args.url}: {exc}", file=io.err)
        return 2
    except TimeoutError as exc:
        print(f"{args.url}: {exc.strerror}", file=io.err)
        return 2
    except OSError as exc:
        print(f"{args.command} {exc.filename or ''}: {exc.strerror}", file=io.err)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return trio.run(run, sys.argv[1:] if argv is None else list(argv))


if __name__ == "__main__":
    sys.exit(main())
