"""What the identity models cost per operation, backend only (no wire).

passthrough and per-user read owners from the inode; mapped reads user.virtfs.* too
(one listxattr, plus a getxattr per field present), and readdir does one getxattr
per regular entry to give its mapped type. Run:
    .venv/bin/python benchmarks/identity_models.py [--quick]
Numbers are recorded in docs/host-export.md ("Identity").
"""

from __future__ import annotations

import os
import sys
import tempfile
import time

import trio

from ninep.fs.backend import Credentials
from ninep.fs.host import HostFilesystem
from ninep.protocol.constants import OpenFlags

QUICK = "--quick" in sys.argv
N = 300 if QUICK else 3000
ENTRIES = 1000


async def per_call(fn, n: int) -> float:
    await fn()
    start = time.perf_counter()
    for _ in range(n):
        await fn()
    return (time.perf_counter() - start) / n * 1e6


async def measure(model: str, place: str) -> dict[str, float]:
    fs = HostFilesystem(place, identity=model, listing_cache=False)
    root = await fs.attach("", Credentials(1000, 1000, ()))
    f, _ = await root.create("file", OpenFlags.RDWR, 0o644, 1000)
    await f.close()
    await root.mkdir("big", 0o755, 1000)
    _, big = await root.walk(["big"])
    for i in range(ENTRIES):
        made, _ = await big.create(f"f{i}", OpenFlags.RDWR, 0o644, 1000)
        await made.close()
    _, node = await root.walk(["file"])
    out = {"getattr (file changed < 2 s ago)": await per_call(lambda: node.getattr(0), N)}
    fs.mapped_cache.settled_ns = 0  # as if the file had been left alone for 2 s
    out["getattr (settled file)"] = await per_call(lambda: node.getattr(0), N)

    async def walk_close():
        _, there = await root.walk(["file"])
        await there.close()
    out["walk+clunk"] = await per_call(walk_close, N)

    async def create_remove():
        made, _ = await root.create("tmp", OpenFlags.RDWR, 0o644, 1000)
        await made.close()
        await root.unlinkat("tmp", 0)
    out["create+unlink"] = await per_call(create_remove, N // 3)
    await big.open(OpenFlags.RDONLY)

    async def list_all():
        await big.readdir_packed(0, 65536)
    out[f"readdir {ENTRIES} entries (first 64 KiB)"] = await per_call(list_all, N // 30)
    for f in (node, big, root):
        await f.close()
    await fs.aclose()
    return out


async def main() -> None:
    models = ["mapped"] + (["passthrough", "per-user"] if os.geteuid() == 0 else [])
    results = {}
    for model in models:
        with tempfile.TemporaryDirectory(prefix="ninep-bench-identity-") as place:
            os.chmod(place, 0o777)  # per-user acts as uid 1000 there
            results[model] = await measure(model, place)
    names = list(results[models[0]])
    print(f"{'µs per call':<38}" + "".join(f"{m:>14}" for m in models))
    for name in names:
        print(f"{name:<38}" + "".join(f"{results[m][name]:>14.1f}" for m in models))


if __name__ == "__main__":
    trio.run(main)
