"""A guest's metadata work under each identity model, end to end (TCG guest, v9fs,
cache=loose, ninepd over virtio-serial). Run as root:
    .venv/bin/python benchmarks/identity_guest.py [N]
Prints ms per phase for N files (default 1000). Numbers: docs/host-export.md.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path

import trio

from ninep.vm.rootfs import build_busybox_rootfs, cached_busybox_rootfs, copy_tree
from ninep.vm.testing import boot_script

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
SCRIPT = f"""
ms() {{ awk '{{printf "%d\\n", $1 * 1000}}' /proc/uptime; }}
mkdir /bench && cd /bench
t0=$(ms); i=0; while [ $i -lt {N} ]; do : > f$i; i=$((i+1)); done
t1=$(ms); ls -l > /dev/null
t2=$(ms); chown 1000:1000 f*
t3=$(ms); chmod 600 f*
t4=$(ms); rm f*
t5=$(ms)
echo "BENCH create=$((t1-t0)) ls-l=$((t2-t1)) chown=$((t3-t2)) chmod=$((t4-t3)) rm=$((t5-t4))"
"""


async def run(model: str) -> str:
    with tempfile.TemporaryDirectory(prefix="ninep-bench-") as parent:
        os.chmod(parent, 0o755)
        root = Path(parent) / "root"
        if model == "mapped":
            build_busybox_rootfs(root, mapped=True)
        else:
            copy_tree(cached_busybox_rootfs(), root)
        result = await boot_script(root, SCRIPT, server="ninepd", timeout=600,
                                   server_args=("--identity", model))
        found = re.search(r"BENCH .*", result.console)
        return found.group(0) if found else f"no result ({result.console[-500:]})"


async def main() -> None:
    for model in ("passthrough", "mapped", "per-user"):
        print(f"{model:<12} {N} files, ms: {await run(model)}", flush=True)


if __name__ == "__main__":
    trio.run(main)
