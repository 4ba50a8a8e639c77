"""Inline syscall vs trio.to_thread.run_sync for the host export's operations.

Decides what ninep/fs/host.py runs on the event loop and what it hands to a worker
thread (THREAD_IO_MIN, the RWF_NOWAIT read path), and what switching to a guest's
identity costs. Run: .venv/bin/python benchmarks/host_inline.py [--quick]
Numbers are recorded in docs/host-export.md.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import trio

from ninep.fs.backend import Credentials
from ninep.fs.host import HostFilesystem
from ninep.fs.identity import run_as
from ninep.protocol.constants import OpenFlags

QUICK = "--quick" in sys.argv
N = 300 if QUICK else 3000


def time_sync(fn, n: int) -> float:
    """µs per call, called directly (what 'inline' costs the event loop)."""
    fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) / n * 1e6


async def time_async(fn, n: int) -> float:
    """µs per awaited call (a thread hop, or a whole backend method)."""
    await fn()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


async def concurrent_mib_per_s(read, size: int, tasks: int, per_task: int) -> float:
    async def worker():
        for _ in range(per_task):
            await read()
    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(tasks):
            nursery.start_soon(worker)
    return size * tasks * per_task / (time.perf_counter() - start) / (1 << 20)


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.chmod(tmp, 0o755)  # searchable by the uid-1000 row
        with open(os.path.join(tmp, "data"), "wb") as f:
            f.write(os.urandom(1 << 20))
        os.mkdir(os.path.join(tmp, "d"))
        fs = HostFilesystem(tmp)
        root = await fs.attach("", Credentials(None, None))
        _, data = await root.walk(["data"])
        await data.open(OpenFlags.RDONLY)
        fd = data._io_fd()
        node = data._node.fd
        root_fd = root._node.fd

        def walk_one():
            new = os.open("d", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=root_fd)
            os.stat(new)
            os.close(new)

        def hop(fn, *args):
            return lambda: trio.to_thread.run_sync(fn, *args)

        rows = [
            ("fstat (getattr core)", time_sync(lambda: os.stat(node), N),
             await time_async(hop(os.stat, node), N)),
            ("walk 1 name (openat+fstat+close)", time_sync(walk_one, N),
             await time_async(hop(walk_one), N)),
        ]
        if os.geteuid() == 0:
            user = Credentials(1000, 1000, ())
            rows.append(("walk 1 name as uid 1000 (setfsuid+capset...)",
                         time_sync(lambda: run_as(user, walk_one), N),
                         await time_async(hop(run_as, user, walk_one), N)))
        for size in (4096, 65536, 262144, 1 << 20):
            reps = max(50, N * 4096 // size)
            rows.append((f"pread {size // 1024} KiB", time_sync(lambda: os.pread(fd, size, 0), reps),
                         await time_async(hop(os.pread, fd, size, 0), reps)))
            rows.append((f"preadv RWF_NOWAIT {size // 1024} KiB, fresh buffer",
                         time_sync(lambda: os.preadv(fd, [bytearray(size)], 0, os.RWF_NOWAIT), reps),
                         None))

        async def walk_close():
            _, new = await root.walk(["d"])
            await new.close()
        rows += [
            ("HostFile.walk + close", await time_async(walk_close, N), None),
            ("HostFile.getattr (statx via ctypes)", await time_async(lambda: data.getattr(0), N), None),
            ("HostFile.read 4 KiB", await time_async(lambda: data.read(0, 4096), N), None),
            ("HostFile.read 1 MiB", await time_async(lambda: data.read(0, 1 << 20), N // 10), None),
        ]
        print(f"{'operation':52} {'inline µs':>10} {'thread µs':>10}")
        for name, inline, threaded in rows:
            cells = [f"{v:10.1f}" if v is not None else f"{'-':>10}" for v in (inline, threaded)]
            print(f"{name:52} {cells[0]} {cells[1]}")

        size, per_task = 1 << 20, (50 if QUICK else 300)
        async def inline_read():
            os.pread(fd, size, 0)
            await trio.lowlevel.checkpoint()
        print("\n1 MiB reads, 4 concurrent tasks (MiB/s):")
        for name, read in (("inline pread", inline_read),
                           ("thread pread", hop(os.pread, fd, size, 0)),
                           ("HostFile.read", lambda: data.read(0, size))):
            print(f"  {name:14} {await concurrent_mib_per_s(read, size, 4, per_task):8.0f}")
        await data.close()
        await root.close()
        await fs.aclose()


if __name__ == "__main__":
    trio.run(main)
