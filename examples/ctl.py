"""A control tree like diod's ctl export: server facts and per-connection statistics.

    python examples/ctl.py --listen tcp://127.0.0.1:5640
    mount -t 9p -o trans=tcp,port=5640,cache=none 127.0.0.1 /mnt/ctl

    /version       the ninep version
    /connections   one line per live attach: id, uid, seconds connected
    /self          this attach's own counters (per-connection state)
    /stats/<id>    any attach's counters, listed on demand
    /ctl           write "reset" to zero this attach's counters, "drop <id>" to forget one
    /zero, /null   as /dev/zero and /dev/null (a hand-written Node, for the curious)
"""

from __future__ import annotations

import argparse
import functools
import time

import trio

import ninep
from ninep.fs.synthetic import (
    ControlFile, Directory, DynamicDirectory, GeneratedFile, Handle, Node, OpenContext, Session,
)


class ZeroFile(Node):
    """Endless zeros. A node of one's own is a Node whose open returns a Handle."""

    DEFAULT_MODE = 0o666
    writable = True  # writes are accepted and dropped, as /dev/zero does

    async def make_handle(self, ctx: OpenContext) -> Handle:
        return _ZeroHandle(ctx)


class _ZeroHandle(Handle):
    async def read(self, offset: int, count: int) -> bytes:
        return bytes(count)

    async def write(self, offset: int, data: memoryview) -> int:
        return len(data)


def format_stats(session: Session) -> str:
    return "".join(f"{name} {value}\n" for name, value in session.stats.items())


def make_tree() -> Directory:
    tree = Directory()
    stats_files: dict[str, GeneratedFile] = {}  # one node per session: stable qids

    # The export serving a request is the session's: this tree may be mounted inside
    # another one (a union, a bigger tree), so never ask ``tree.filesystem``.
    def list_stats(session: Session) -> dict[str, GeneratedFile]:
        live = {str(i): s for i, s in session.filesystem.sessions.items()}
        for gone in set(stats_files) - set(live):
            del stats_files[gone]
        for name, session in live.items():
            if name not in stats_files:
                stats_files[name] = GeneratedFile(functools.partial(format_stats, session))
        return dict(stats_files)

    def connections(ctx: OpenContext) -> str:
        now = time.time()
        return "".join(f"{s.id} {s.creds.uid if s.creds.uid is not None else '-'} "
                       f"{now - s.started:.0f}\n" for s in ctx.session.filesystem.sessions.values())

    def control(data: bytes, ctx: OpenContext) -> str:
        words = data.decode().split()
        if words == ["reset"]:
            for name in ctx.session.stats:
                ctx.session.stats[name] = 0
            return "reset\n"
        if len(words) == 2 and words[0] == "drop" and words[1].isdigit():
            return f"{'dropped' if stats_files.pop(words[1], None) else 'unknown'} {words[1]}\n"
        raise ValueError(f"unknown command {data!r}")  # the writer sees EINVAL

    tree["version"] = GeneratedFile(lambda: f"ninep {ninep.__version__}\n")
    tree["connections"] = GeneratedFile(connections)
    tree["self"] = GeneratedFile(lambda ctx: format_stats(ctx.session))
    tree["stats"] = DynamicDirectory(list_stats)
    tree["ctl"] = ControlFile(on_write=control, mode=0o200)
    tree["zero"] = ZeroFile()
    tree["null"] = ControlFile(on_write=lambda data: None, on_read=lambda: b"", mode=0o666)
    return tree


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="tcp://127.0.0.1:5640")
    try:
        trio.run(ninep.serve, make_tree(), parser.parse_args().listen)
    except* KeyboardInterrupt:  # Ctrl-C: stop without a traceback
        pass
