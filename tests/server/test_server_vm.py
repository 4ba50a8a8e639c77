"""ninepd under the real Linux v9fs client: a QEMU guest (TCG) whose root is served
by ninepd runs a static helper that uses xattrs and fcntl locks, and lists a big
directory. Needs qemu, the Debian kernel and musl-gcc (for the helper)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from ninep.vm.testing import boot_script, fresh_busybox_rootfs

pytestmark = pytest.mark.vm

HELPER_SOURCE = Path(__file__).with_name("srv_vm_helper.c")

SCRIPT = r"""
H=/srvhelper; D=/srvtest
mkdir $D && echo x > $D/f
$H xset $D/f user.color blue
$H xget $D/f user.color
$H xset $D/f user.shape round
$H xlist $D/f
$H xdel $D/f user.shape
$H xlist $D/f
$H xget $D/f user.shape
$H hold $D/lk 5 &
sleep 2
$H getlock $D/lk
$H trylock $D/lk
timeout 1 $H waitlock $D/lk || echo WAITLOCK:interrupted
$H waitlock $D/lk
mkdir $D/many && cd $D/many && seq 1 1500 | xargs touch && echo "COUNT:$(ls | wc -l)"
cd /; wait; sync; echo DONE
exit 7
"""


@pytest.fixture
def helper(tmp_path) -> Path:
    if shutil.which("musl-gcc") is None:
        pytest.skip("musl-gcc not installed")
    out = tmp_path / "srvhelper"
    subprocess.run(["musl-gcc", "-static", "-O2", "-o", str(out), str(HELPER_SOURCE)], check=True)
    return out


async def test_xattrs_locks_and_readdir_through_the_kernel(tmp_path, helper):
    root = fresh_busybox_rootfs(tmp_path / "root")
    shutil.copy2(helper, root / "srvhelper")
    result = await boot_script(root, SCRIPT, server="ninepd")
    lines = {line.strip() for line in result.console.splitlines()}
    assert result.exit_status == 7, result.console[-3000:]
    expected = {"XSET:ok", "XGET:blue", "XLIST:user.color,user.shape,", "XDEL:ok",
                "XLIST:user.color,", "XGET:errno=61", "TRYLOCK:busy", "WAITLOCK:interrupted",
                "WAITLOCK:granted", "COUNT:1500", "DONE"}
    assert expected <= lines, (sorted(expected - lines), result.console[-3000:])
    # Tgetlock told the truth: the holder's pid, whole file, write lock.
    [holder] = [line for line in lines if line.startswith("HOLD:")]
    assert f"GETLOCK:W:0:0:{holder.split(':')[1]}" in lines
    # The xattr really landed on the host file.
    assert os.getxattr(root / "srvtest/f", "user.color") == b"blue"
    assert len(os.listdir(root / "srvtest/many")) == 1500
