"""Boot-to-multi-user time of Debian + systemd: ninepd vs diod vs QEMU's 9p vs ext4.

Same kernel, same QEMU, same rootfs tree, same run.  Each configuration boots the
debootstrapped Debian (built and cached on first use) until the marker unit prints
its line after multi-user.target; QEMU is killed at that moment.  Times are seconds
from QEMU's start to the marker (and to the kernel's "Run /init" line).

    .venv/bin/python benchmarks/boot.py [--runs N] [--accel tcg] [--smp N] [--cache MODE]
                                        [--only NAME ...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import trio

from ninep.vm.accel import default_kernel
from ninep.vm.qemu import VmConfig, run_vm
from ninep.vm.rootfs import BOOT_MARKER, build_debian_rootfs

#: name -> (transport, server[, more server arguments]); "disk" boots an ext4 image of
#: the same tree.
CONFIGURATIONS = {
    "ninepd/virtio-serial": ("virtio-serial", "ninepd"),
    "ninepd/tcp": ("tcp", "ninepd"),
    "ninepd/tcp/no-poll": ("tcp", "ninepd", ("--poll-us", "0")),  # what polling buys
    "ninepd/tcp/poll-100": ("tcp", "ninepd", ("--poll-us", "100")),  # the shorter window
    "ninepd/vsock": ("vsock", "ninepd"),
    "diod/tcp": ("tcp", "diod"),
    "diod/virtio-serial": ("virtio-serial", "diod"),
    "qemu-9p/virtio": ("virtio", "ninepd"),
    "virtiofsd/virtiofs": ("virtiofs", "ninepd"),
    "ext4/virtio-blk": ("disk", "ninepd"),
}
INIT_LINE = "Run /init as init process"


def make_ext4_image(tree: Path, image: Path) -> Path:
    subprocess.run(["mkfs.ext4", "-q", "-F", "-L", "root", "-d", str(tree), str(image), "2G"],
                   check=True)
    return image


async def boot_once(name: str, root: Path, image: Path | None, accel: str,
                    cache: str, smp: int) -> dict:
    transport, server, *more = CONFIGURATIONS[name]
    config = VmConfig(rootfs=root, kernel=default_kernel(), transport=transport, server=server,
                      accel=accel, cache=cache, smp=smp, timeout=300, disk_image=image,
                      extra_append=("ninep.marker=1",), server_args=more[0] if more else ())
    result = await run_vm(config, watch=(INIT_LINE, re.escape(BOOT_MARKER)),
                          stop_when=re.escape(BOOT_MARKER))
    marker = result.seen.get(re.escape(BOOT_MARKER))
    if marker is None:
        tail = "\n".join(result.console.splitlines()[-15:])
        print(f"{name}: no marker (timed out={result.timed_out})\n{tail}", file=sys.stderr)
    return {"init": result.seen.get(INIT_LINE), "marker": marker}


async def main_async(args: argparse.Namespace) -> dict:
    names = args.only or list(CONFIGURATIONS)
    with tempfile.TemporaryDirectory(prefix="ninep-boot-bench-") as tmp:
        os.chmod(tmp, 0o755)  # diod refuses exports below a directory others cannot enter
        root = build_debian_rootfs(Path(tmp) / "debian")
        image = make_ext4_image(root, Path(tmp) / "root.ext4") if "ext4/virtio-blk" in names \
            else None
        results: dict[str, list[dict]] = {name: [] for name in names}
        for _ in range(args.runs):  # interleaved, so drift in the host hits all alike
            for name in names:
                if CONFIGURATIONS[name][1] == "diod" and shutil.which("diod") is None:
                    continue
                results[name].append(await boot_once(name, root, image, args.accel, args.cache,
                                                     args.smp))
    summary = {}
    for name, runs in results.items():
        markers = [run["marker"] for run in runs if run["marker"] is not None]
        inits = [run["init"] for run in runs if run["init"] is not None]
        summary[name] = {
            "marker_s": round(statistics.median(markers), 2) if markers else None,
            "init_s": round(statistics.median(inits), 2) if inits else None,
            "runs": len(runs), "failed": len(runs) - len(markers),
        }
    return summary


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--accel", default="tcg", choices=("tcg", "kvm", "auto"))
    parser.add_argument("--cache", default="loose", help="9P cache mode for the 9P runs")
    parser.add_argument("--smp", type=int, default=1, help="guest CPUs")
    parser.add_argument("--only", action="append", choices=list(CONFIGURATIONS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    summary = trio.run(main_async, args)
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    baseline = summary.get("qemu-9p/virtio", {}).get("marker_s")
    print(f"{'configuration':24} {'to /init':>9} {'to multi-user':>14} {'vs qemu-9p':>11}")
    for name, row in summary.items():
        ratio = (f"{row['marker_s'] / baseline:.2f}x" if baseline and row["marker_s"] else "-")
        marker = f"{row['marker_s']:.1f} s" if row["marker_s"] is not None else "failed"
        init = f"{row['init_s']:.1f} s" if row["init_s"] is not None else "-"
        print(f"{name:24} {init:>9} {marker:>14} {ratio:>11}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
