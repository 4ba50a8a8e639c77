"""One mapped tree, two servers: what a guest wrote through ninepd (--identity mapped)
boots under QEMU's own 9p with security_model=mapped-xattr and shows the same owners,
modes, types and devices; and what a guest wrote through QEMU shows the same through
ninepd."""

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from ninep.fs.hostmodel import write_mapped
from ninep.vm.rootfs import build_busybox_rootfs
from ninep.vm.testing import boot_script

pytestmark = [pytest.mark.vm, pytest.mark.root]


def make(top: str) -> str:
    return rf"""
mkdir {top} && cd {top}
echo data > file && chown 1000:100 file && chmod 4751 file
mkdir dir && chown 65533:65532 dir && chmod 2770 dir
ln -s file link && chown -h 1000:1000 link
mkfifo fifo && chown 7:8 fifo
mknod null c 1 3 && mknod loop b 7 0 && chmod 600 loop
fsops mksock sock > /dev/null
cd /
"""


def listing(top: str) -> str:
    return rf"""
find {top} | sort | while read f; do echo "LS:$(stat -c '%n %u:%g %a %F %t,%T' "$f")"; done
for l in $(find {top} -type l | sort); do echo "LNK:$l:$(readlink $l)"; done
sync
"""


def seen(console: str, top: str) -> list[str]:
    return sorted(line.strip() for line in console.splitlines()
                  if line.strip().startswith((f"LS:{top}", f"LNK:{top}")))


@pytest.fixture
def mapped_root(guest_tools):
    with tempfile.TemporaryDirectory(prefix="ninep-vm-interop-") as parent:
        os.chmod(parent, 0o755)
        root = build_busybox_rootfs(Path(parent) / "root", mapped=True)
        fsops = root / "usr/bin/fsops"
        shutil.copy2(guest_tools["fsops"], fsops)
        write_mapped(str(fsops), uid=0, gid=0, mode=stat.S_IFREG | 0o755)
        yield root


async def test_ninepd_and_qemu_mapped_xattr_read_each_others_trees(mapped_root):
    by_ninepd = await boot_script(mapped_root, make("/x") + listing("/x") + "exit 0",
                                  server="ninepd", server_args=("--identity", "mapped"),
                                  timeout=240)
    assert by_ninepd.exit_status == 0, by_ninepd.console[-3000:]
    written = seen(by_ninepd.console, "/x")
    assert "LS:/x/file 1000:100 4751 regular file 0,0" in written
    assert "LS:/x/null 0:0 644 character special file 1,3" in written
    assert "LNK:/x/link:file" in written and len(written) == 9, written

    by_qemu = await boot_script(mapped_root, listing("/x") + make("/y") + listing("/y")
                                + "exit 0", transport="virtio", timeout=240,
                                virtio_security_model="mapped-xattr")
    assert by_qemu.exit_status == 0, by_qemu.console[-3000:]
    assert seen(by_qemu.console, "/x") == written

    back = await boot_script(mapped_root, listing("/y") + "exit 0", server="ninepd",
                             server_args=("--identity", "mapped"), timeout=240)
    assert back.exit_status == 0, back.console[-3000:]
    assert seen(back.console, "/y") == seen(by_qemu.console, "/y")
    assert len(seen(back.console, "/y")) == 9
    # Nothing special was made on the host by either server.
    for entry in [mapped_root / "x", *(mapped_root / "x").iterdir(),
                  mapped_root / "y", *(mapped_root / "y").iterdir()]:
        st = os.lstat(entry)
        assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), entry
