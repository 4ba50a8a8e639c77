#!/usr/bin/env python3
"""Per-operation cost of the COW backend against the host export, in one process.

    .venv/bin/python benchmarks/cow_inprocess.py [--reps 3]

No server, no sockets: the backend contract called in a loop (getattr of a file,
a two-name walk + clunk, a 200-entry directory listed from offset 0, create +
unlink in a directory of the guest's own), in CPU time (the process's, so time other
jobs take on a shared machine does not count), best of ``--reps``. Steadier than
benchmarks/cow.py, which adds the server and TCP round trips (the same for both, so
over the wire the ratios move toward 1).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import trio

from ninep.fs.backend import Credentials
from ninep.fs.cow import CowFilesystem
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import OpenFlags

CREDS = Credentials(None, None)
_CREATE = int(OpenFlags.WRONLY | OpenFlags.CREATE | OpenFlags.EXCL)


async def measure(fs) -> dict[str, float]:
    root = await fs.attach("", CREDS)
    out: dict[str, float] = {}
    _, f = await root.walk(["big"])
    n, t = 20000, time.process_time()
    for _ in range(n):
        await f.getattr(0x7FF)
    out["getattr"] = (time.process_time() - t) / n * 1e6
    n, t = 5000, time.process_time()
    for _ in range(n):
        _, x = await root.walk(["dir", "entry-1"])
        await x.close()
    out["walk 2 names + clunk"] = (time.process_time() - t) / n * 1e6
    n, t = 1000, time.process_time()
    for _ in range(n):
        _, d = await root.walk(["dir"])
        await d.open(0)
        await d.readdir_packed(0, 1 << 20)
        await d.close()
    out["list 200 entries"] = (time.process_time() - t) / n * 1e6
    await root.mkdir("own", 0o755, 0)
    _, own = await root.walk(["own"])
    n, t = 3000, time.process_time()
    for i in range(n):
        clone = await own.clone()
        made, _ = await clone.create(f"f{i}", _CREATE, 0o644, 0)
        await made.close()
        await own.unlinkat(f"f{i}", 0)
    out["create + unlink"] = (time.process_time() - t) / n * 1e6
    for file in (own, f, root):
        await file.close()
    await fs.aclose()
    return out


async def main_async(reps: int) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="ninep-cow-inproc-"))
    try:
        best: dict[tuple[str, str], float] = {}
        for rep in range(reps):
            for name in ("host", "cow-dir"):
                base = scratch / f"base-{name}-{rep}"
                (base / "dir").mkdir(parents=True)
                for i in range(200):
                    (base / "dir" / f"entry-{i}").write_bytes(b"")
                (base / "big").write_bytes(b"x" * 4096)
        time.sleep(2.5)  # settled: the host export's listing cache keeps only such directories
        for rep in range(reps):
            for name in ("host", "cow-dir"):
                base = scratch / f"base-{name}-{rep}"
                fs = HostFilesystem(str(base)) if name == "host" else \
                    CowFilesystem(str(base), str(scratch / f"upper-{rep}"))
                for op, us in (await measure(fs)).items():
                    best[(name, op)] = min(best.get((name, op), us), us)
        print("| operation | host export | COW (dir base) | host/COW |")
        print("|---|---:|---:|---:|")
        for op in ("getattr", "walk 2 names + clunk", "list 200 entries", "create + unlink"):
            h, c = best[("host", op)], best[("cow-dir", op)]
            print(f"| {op} | {h:.1f} us | {c:.1f} us | {h / c:.2f} |")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=3)
    trio.run(main_async, ap.parse_args().reps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
