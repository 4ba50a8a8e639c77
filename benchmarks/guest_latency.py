"""What one file-system call costs inside a guest, per transport and server, in one run.

Boots the busybox root (the VM tests' tree, with tests/vm/fsx.c as /usr/bin/fsx) once
per configuration, same kernel, same QEMU, TCG, and runs in the guest:

  * ``stat`` of one existing path N times: with cache=loose the guest should answer
    from its own caches, so this measures the client, not the server;
  * ``stat`` of M fresh files after dropping the guest's caches: each is a lookup that
    must reach the server (Twalk + Tgetattr).

    .venv/bin/python benchmarks/guest_latency.py [--root busybox|debian] [--cache loose]
                                                 [--stats 10000] [--lookups 2000]
                                                 [--only NAME ...] [--json]

``--root debian`` runs the same programs (no systemd) on the debootstrapped Debian
tree that the Debian VM tests boot.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
from pathlib import Path

import trio

from ninep.vm.initramfs import compile_static
from ninep.vm.rootfs import build_debian_rootfs
from ninep.vm.testing import boot_script, fresh_busybox_rootfs

FSX_SOURCE = Path(__file__).resolve().parent.parent / "tests/vm/fsx.c"

#: name -> (transport, server)
CONFIGURATIONS = {
    "ninepd/virtio-serial": ("virtio-serial", "ninepd"),
    "ninepd/tcp": ("tcp", "ninepd"),
    "ninepd/vsock": ("vsock", "ninepd"),
    "diod/tcp": ("tcp", "diod"),
    "qemu-9p/virtio": ("virtio", "ninepd"),
    "virtiofsd/virtiofs": ("virtiofs", "ninepd"),
}


async def measure(name: str, fsx: Path, tree: str, cache: str, stats: int,
                  lookups: int) -> dict:
    transport, server = CONFIGURATIONS[name]
    with tempfile.TemporaryDirectory(prefix="ninep-latency-") as parent:
        Path(parent).chmod(0o755)  # diod refuses an export below a closed directory
        make_root = build_debian_rootfs if tree == "debian" else fresh_busybox_rootfs
        root = make_root(Path(parent) / "root")
        shutil.copy2(fsx, root / "usr/bin/fsx")
        script = (f"fsx statloop /etc/passwd {stats}; fsx lookups /latency {lookups}; "
                  "echo LATENCY-DONE")
        result = await boot_script(root, script, transport=transport, server=server,
                                   cache=cache, timeout=600)
    found = dict(re.findall(r"^(STAT|LOOKUP):(\d+)\s*$", result.console, re.M))
    if "LATENCY-DONE" not in result.console or len(found) != 2:
        tail = "\n".join(result.console.splitlines()[-15:])
        raise SystemExit(f"{name}: no result\n{tail}")
    return {"name": name, "root": tree, "cache": cache, "stat_us": int(found["STAT"]) / 1000,
            "lookup_us": int(found["LOOKUP"]) / 1000}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", choices=("busybox", "debian"), default="busybox")
    parser.add_argument("--cache", default="loose")
    parser.add_argument("--stats", type=int, default=10000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--only", nargs="*", choices=sorted(CONFIGURATIONS))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    fsx = compile_static(FSX_SOURCE)
    rows = []
    for name in args.only or CONFIGURATIONS:
        if CONFIGURATIONS[name][1] == "diod" and not shutil.which("diod"):
            print(f"{name}: skipped (no diod)", file=sys.stderr)
            continue
        rows.append(await measure(name, fsx, args.root, args.cache, args.stats, args.lookups))
        if not args.json:
            row = rows[-1]
            print(f"{name:22} {row['root']:8} cache={row['cache']:8} cached stat {row['stat_us']:8.1f} us"
                  f"   lookup {row['lookup_us']:8.1f} us", flush=True)
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    trio.run(main)
