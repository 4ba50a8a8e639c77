#!/usr/bin/env python3
"""One ninepd, one base, 1 guest then 3 guests at once: ninepd's memory and the base's
pages in the host page cache.

    .venv/bin/python benchmarks/cow_guests.py [--base TARBALL]

One ninepd serves a tarball base (default: the cached busybox root, packed) copy-on-
write with an upper per aname, on one unix socket per guest; each guest (QEMU TCG,
busybox) mounts its root with its own aname (``ninep.aname=gN``), reads every file of
its root, writes a little, and powers off. Reported: ninepd's VmRSS after each round
and its VmHWM, and how much of the base archive is resident in the page cache
(``fincore``, after dropping that file's pages with POSIX_FADV_DONTNEED first) --
one copy, however many guests read it.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import trio

from ninep.vm.accel import default_kernel
from ninep.vm.qemu import VmConfig, ninepd_command, run_vm
from ninep.vm.rootfs import cached_busybox_rootfs

SCRIPT = ("find / -xdev -type f -exec cat {} + > /dev/null 2>&1; "
          "echo guest-$(cat /proc/cmdline | tr ' ' '\\n' | grep aname) > /mine; sync; "
          "echo READ-ALL-DONE; exit 5")


def status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def resident_kib(path: Path) -> str:
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "-o", "RES,SIZE", str(path)],
                         capture_output=True, text=True)
    return out.stdout.strip() or out.stderr.strip()


async def guests(n: int, work: Path, sockets: list[Path]) -> list[bool]:
    ok: list[bool] = []

    async def one(i: int) -> None:
        config = VmConfig(rootfs=work, kernel=default_kernel(), transport="virtio-serial",
                          server="ninepd", script=SCRIPT, accel="tcg", timeout=400,
                          server_argv=("sleep", "100000"), extra_append=(f"ninep.aname=g{i}",))
        result = await run_vm(config, workdir=sockets[i].parent)
        ok.append("READ-ALL-DONE" in result.console and result.exit_status == 5)
        if not ok[-1]:
            print(result.console[-1500:], file=sys.stderr)

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(one, i)
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base", type=Path, help="a tarball (default: the busybox root, packed)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="ninep-cow-guests-") as tmp:
        tmp_path = Path(tmp)
        os.chmod(tmp_path, 0o755)
        base = args.base
        if base is None:
            base = tmp_path / "busybox.tar"
            with tarfile.open(base, "w") as tar:
                tar.add(cached_busybox_rootfs(), arcname=".")
        fd = os.open(base, os.O_RDONLY)  # start cold: drop this one file's cached pages
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)
        sockets = []
        for i in range(3):
            (tmp_path / f"vm{i}").mkdir()
            sockets.append(tmp_path / f"vm{i}" / "ninepd.sock")
        argv = [*ninepd_command(), "--export", str(base), "--upper", f"{tmp}/uppers/{{aname}}",
                "--log-level", "warning"]
        for sock in sockets:
            argv += ["--listen", f"unix://{sock}"]
        server = subprocess.Popen(argv)
        try:
            deadline = time.monotonic() + 60
            while not all(s.exists() for s in sockets) and time.monotonic() < deadline:
                time.sleep(0.1)
            print(f"base {base} ({base.stat().st_size >> 10} KiB)")
            print(f"idle:     ninepd VmRSS {status(server.pid, 'VmRSS') / 1024:.1f} MiB, "
                  f"base resident {resident_kib(base)}")
            for n in (1, 3):
                ok = trio.run(guests, n, base, sockets)
                print(f"{n} guest(s) (all ok: {all(ok)}): ninepd VmRSS "
                      f"{status(server.pid, 'VmRSS') / 1024:.1f} MiB, VmHWM "
                      f"{status(server.pid, 'VmHWM') / 1024:.1f} MiB, base resident {resident_kib(base)}")
            uppers = sorted(p.name for p in (tmp_path / "uppers").iterdir())
            print(f"uppers: {uppers}")
        finally:
            server.terminate()
            server.wait(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
