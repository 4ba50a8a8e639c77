"""Synthetic trees read by the real Linux 9p client in a QEMU guest (marker ``vm``).

The guest's root is served by tests/synthetic/vm_union_server.py: either a host
directory with the examples mounted under /run/host, or a root tarball (tarfs).
"""

from __future__ import annotations

import re
import sys
import tarfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.vm

HERE = Path(__file__).resolve().parent

UNION_SCRIPT = r"""
mount -t tmpfs tmpfs /tmp  # the served root is read-only
echo "hello=[$(cat /run/host/hello/hello)]"
echo "now=[$(cat /run/host/clock/now)]"
echo "listing=[$(ls /run/host | tr '\n' ' ')]"
echo "up=[$(ls /run/host/.. | grep -c host)]"
start=$(date +%s)
timeout -s INT 3 cat /run/host/clock/time > /tmp/ticks
echo "cat-exit=$? elapsed=$(( $(date +%s) - start )) lines=$(wc -l < /tmp/ticks)"
echo "from the guest" > /run/host/clock/ctl
timeout -s INT 2 cat /run/host/clock/events > /tmp/events
echo "event=[$(grep -c 'from the guest' /tmp/events)]"
echo "after=[$(cat /run/host/hello/hello)]"
echo "connections=[$(wc -l < /run/host/ctl/connections)]"
"""


def field(console: str, name: str) -> str:
    found = re.findall(rf"^{name}=\[(.*)\]", console, re.M)
    assert found, f"{name} missing from the console:\n{console[-3000:]}"
    return found[-1]


async def boot(mode: str, source: Path, script: str, workdir: Path, cache: str = "mmap"):
    from ninep.vm.accel import default_kernel
    from ninep.vm.qemu import VmConfig, run_vm

    config = VmConfig(
        rootfs=source, kernel=default_kernel(), script=script, accel="auto", cache=cache,
        timeout=150,
        server_argv=(sys.executable, str(HERE / "vm_union_server.py"), mode, str(source),
                     f"unix://{workdir}/ninepd.sock"))
    result = await run_vm(config, workdir=workdir)
    assert not result.timed_out and result.exit_status == 0, result.console[-3000:] + result.server_log
    return result.console


async def test_guest_reads_synthetic_run_host_and_interrupts_a_stream(tmp_path):
    from ninep.vm.rootfs import cached_busybox_rootfs

    console = await boot("union", cached_busybox_rootfs(), UNION_SCRIPT, tmp_path)
    assert field(console, "hello") == "hello, world"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", field(console, "now"))
    assert field(console, "listing").split() == ["clock", "ctl", "hello"]
    assert field(console, "up") == "1"  # /run/host/.. is the base's /run, which lists host
    # SIGINT while cat is blocked in read(2): the kernel flushes, cat dies at once
    status = re.search(r"cat-exit=(\d+) elapsed=(\d+) lines=\s*(\d+)", console)
    assert status, console[-3000:]
    exit_code, elapsed, lines = map(int, status.groups())
    assert exit_code == 130 and elapsed <= 4 and lines >= 3
    assert field(console, "event") == "1"
    assert field(console, "after") == "hello, world"  # the mount survived the flushes
    assert int(field(console, "connections")) >= 1


async def test_guest_boots_from_a_tarball_served_by_tarfs(tmp_path):
    from ninep.vm.rootfs import cached_busybox_rootfs

    archive = tmp_path / "root.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(cached_busybox_rootfs(), arcname=".")
    script = 'echo "passwd=[$(head -n 1 /etc/passwd)]"; echo "sh=[$(readlink /bin/sh)]"\n' \
             'echo "applets=[$(ls /bin | wc -l)]"'
    console = await boot("tarfs", archive, script, tmp_path)
    assert field(console, "passwd").startswith("root:x:0:0:")
    assert field(console, "sh") == "busybox"
    assert int(field(console, "applets")) > 50
