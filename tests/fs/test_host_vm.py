"""The host export under the real Linux v9fs client: a QEMU guest whose root is a
host directory served by ninepd does the everyday things a root filesystem sees, and
the results are checked on the host side too."""

import os
import stat

import pytest

from ninep.vm.testing import boot_script, fresh_busybox_rootfs

pytestmark = pytest.mark.vm

SCRIPT = r"""
D=/hosttest; mkdir $D && cd $D || exit 1
echo hello > f && ln f hard && ln -s f soft
echo "LINKS:$(stat -c %h f) CAT:$(cat soft) LINK:$(readlink soft)"
chown 1000:1000 f && echo "OWN:$(stat -c %u:%g f)"
chmod 4750 f && echo "MODE:$(stat -c %a f)"
touch -d '2001-01-01 00:00:00' f && echo "MTIME:$(stat -c %Y f)"
mkfifo p && (echo piped > p &) && read line < p && echo "FIFO:$line"
mknod null c 1 3 && echo x > null && echo "NULL:ok"
mkdir -p a/b/c && mv a z && echo "MOVED:$(ls z/b)" && echo "UP:$(cd z/b/c/../../.. && pwd)"
exec 3>tmp && echo data >&3 && rm tmp && echo more >&3 && exec 3>&- && echo "UNLINKED:ok"
dd if=/dev/zero of=big bs=65536 count=64 2>/dev/null && echo "BIG:$(wc -c < big)"
truncate -s 100 big 2>/dev/null || dd if=/dev/null of=big bs=1 seek=100 2>/dev/null
echo "TRUNC:$(wc -c < big)"
seq 1 700 | while read i; do : > e$i; done; echo "COUNT:$(ls | grep -c '^e[0-9]')"
rm e[0-9]* && echo "LEFT:$(ls | tr '\n' ' ')"
cd /; sync; echo DONE
exit 7
"""


async def test_everyday_root_filesystem_work_through_the_kernel(tmp_path):
    root = fresh_busybox_rootfs(tmp_path / "root")
    result = await boot_script(root, SCRIPT, server="ninepd")
    console = result.console
    lines = {line.strip() for line in console.splitlines()}
    assert result.exit_status == 7, console[-3000:]
    expected = {"LINKS:2 CAT:hello LINK:f", "MODE:4750", "OWN:1000:1000",
                "MTIME:978307200", "FIFO:piped", "NULL:ok", "MOVED:c", "UP:/hosttest",
                "UNLINKED:ok", "BIG:4194304", "TRUNC:100", "COUNT:700",
                "LEFT:big f hard null p soft z", "DONE"}
    assert expected <= lines, (sorted(expected - lines), [l for l in lines if l.startswith("LEFT")])
    host = root / "hosttest"
    st = os.lstat(host / "f")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1000, 0o4750)
    assert stat.S_ISFIFO(os.lstat(host / "p").st_mode)
    assert os.lstat(host / "null").st_rdev == os.makedev(1, 3)
    assert os.readlink(host / "soft") == "f"
