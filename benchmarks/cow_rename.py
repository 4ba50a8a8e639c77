#!/usr/bin/env python3
"""What a guest's rename of a big base directory costs on a COW export, in one process.

    .venv/bin/python benchmarks/cow_rename.py [--files 2000] [--kib 64] [--tar]

The base holds ``usr/share/big`` with ``--files`` files of ``--kib`` KiB each (a
directory base, or with ``--tar`` the same tree as a tarball). Each run renames it
(``mv /usr/share/big /usr/share/moved``) in a fresh upper and reports the time and
what the upper holds afterwards (files and bytes), then lists the moved directory
and reads one file back through it. Run it on two checkouts to compare (the
deep copy-up before redirects, the redirect after).
"""

from __future__ import annotations

import argparse
import os
import shutil
import tarfile
import tempfile
import time
from pathlib import Path

import trio

from ninep.fs.backend import Credentials
from ninep.fs.cow import CowFilesystem
from ninep.protocol.constants import OpenFlags

CREDS = Credentials(None, None)


def make_base(place: Path, files: int, kib: int, as_tar: bool) -> str:
    tree = place / "tree"
    big = tree / "usr" / "share" / "big"
    big.mkdir(parents=True)
    chunk = os.urandom(kib * 1024)
    for i in range(files):
        (big / f"f{i:05d}").write_bytes(chunk)
    if not as_tar:
        return str(tree)
    path = place / "base.tar"
    with tarfile.open(path, "w") as tar:
        tar.add(tree, arcname=".")
    return str(path)


def upper_size(upper: Path) -> tuple[int, int]:
    count = size = 0
    for dirpath, _, names in os.walk(upper):
        if ".ninep-cow" in dirpath:
            continue
        for name in names:
            count += 1
            size += os.lstat(os.path.join(dirpath, name)).st_size
    return count, size


async def one_run(base: str, upper: Path) -> tuple[float, float]:
    fs = CowFilesystem(base, str(upper))
    root = await fs.attach("", CREDS)
    try:
        _, share = await root.walk(["usr", "share"])
        start = time.perf_counter()
        await share.renameat("big", share, "moved")
        renamed = time.perf_counter() - start
        start = time.perf_counter()
        _, moved = await share.walk(["moved"])
        await moved.open(int(OpenFlags.RDONLY))
        listed = await moved.readdir(0, 1 << 20)
        _, f = await moved.walk(["f00000"])
        await f.open(int(OpenFlags.RDONLY))
        assert len(await f.read(0, 1 << 20)) > 0 and len(listed) > 2
        for item in (f, moved, share):
            await item.close()
        return renamed, time.perf_counter() - start
    finally:
        await root.close()
        await fs.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--kib", type=int, default=64)
    parser.add_argument("--tar", action="store_true")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="ninep-cow-rename-") as name:
        place = Path(name)
        base = make_base(place, args.files, args.kib, args.tar)
        print(f"base: {'tarball' if args.tar else 'directory'}, {args.files} files x "
              f"{args.kib} KiB = {args.files * args.kib / 1024:.0f} MiB")
        for rep in range(args.reps):
            upper = place / f"upper{rep}"
            renamed, after = trio.run(one_run, base, upper)
            count, size = upper_size(upper)
            print(f"rename {renamed * 1000:9.1f} ms   list + read after {after * 1000:7.1f} ms"
                  f"   upper: {count} files, {size / 2**20:.1f} MiB")
            shutil.rmtree(upper)


if __name__ == "__main__":
    main()
