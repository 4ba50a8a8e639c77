#!/usr/bin/env python3
"""Debian boot to multi-user on copy-on-write roots against the plain directory.

    .venv/bin/python benchmarks/cow_boot.py [--runs N] [--accel tcg]

Same kernel, QEMU, transport (virtio-serial) and Debian tree (benchmarks/boot.py's,
built and cached on first use), interleaved:

* ``dir``      ninepd --export TREE (the unpacked tree, writable)
* ``cow-dir``  ninepd --export TREE --upper EMPTY (the tree as a read-only base)
* ``cow-tar``  ninepd --export debian.tar --upper EMPTY (the cached tarball, never unpacked)

Seconds from QEMU's start to the marker unit's line after multi-user.target. Each
COW run starts from an empty upper (a first boot: every file systemd writes is a
copy-up).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import trio

from ninep.vm.accel import default_kernel
from ninep.vm.qemu import VmConfig, run_vm
from ninep.vm.rootfs import BOOT_MARKER, build_debian_rootfs, debian_tarball

INIT_LINE = "Run /init as init process"


async def boot(root: Path, server_args: tuple[str, ...], accel: str) -> float | None:
    config = VmConfig(rootfs=root, kernel=default_kernel(), transport="virtio-serial",
                      server="ninepd", accel=accel, timeout=600, server_args=server_args,
                      extra_append=("ninep.marker=1",))
    result = await run_vm(config, watch=(INIT_LINE, re.escape(BOOT_MARKER)),
                          stop_when=re.escape(BOOT_MARKER))
    marker = result.seen.get(re.escape(BOOT_MARKER))
    if marker is None:
        print("no marker:\n" + "\n".join(result.console.splitlines()[-15:]), file=sys.stderr)
    return marker


async def main_async(args: argparse.Namespace) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"dir": [], "cow-dir": [], "cow-tar": []}
    with tempfile.TemporaryDirectory(prefix="ninep-cow-boot-") as tmp:
        os.chmod(tmp, 0o755)
        tree = build_debian_rootfs(Path(tmp) / "debian")
        tarball = debian_tarball()
        for run in range(args.runs):
            plans = {"dir": (tree, ()),
                     "cow-dir": (tree, ("--upper", f"{tmp}/upper-dir-{run}")),
                     "cow-tar": (tarball, ("--upper", f"{tmp}/upper-tar-{run}"))}
            for name, (root, server_args) in plans.items():
                seconds = await boot(root, server_args, args.accel)
                print(f"# {name}: {seconds}", file=sys.stderr, flush=True)
                if seconds is not None:
                    times[name].append(seconds)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm", "auto"))
    args = parser.parse_args()
    times = trio.run(main_async, args)
    base = statistics.median(times["dir"]) if times["dir"] else None
    print(f"{'root':10} {'to multi-user':>14} {'vs dir':>8}")
    for name, runs in times.items():
        if not runs:
            print(f"{name:10} {'failed':>14}")
            continue
        median = statistics.median(runs)
        print(f"{name:10} {median:>12.1f} s {median / base if base else float('nan'):>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
