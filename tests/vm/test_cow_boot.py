"""Two guests boot at the same time from one copy-on-write base (issue 12).

Each guest creates, writes, deletes and renames files and directories of the base and
of its own; neither sees the other's changes, each guest's changes are plain files in
its own upper directory, and the base is byte-identical afterwards (checksummed).
"""

import hashlib
import os
import stat
from pathlib import Path

import pytest
import trio

from ninep.vm.testing import KERNEL_REACHED_INIT, boot_script

pytestmark = pytest.mark.vm

GUEST_OPS = r"""
ME={me}; OTHER={other}
echo "$ME" > /cow-$ME && echo "WROTE:$(cat /cow-$ME)"
echo "by-$ME" >> /etc/passwd && echo "APPENDED:$(tail -n 1 /etc/passwd)"
rm /etc/group && [ ! -e /etc/group ] && echo DELETED:ok
mv /etc/init.d /etc/init.$ME && [ -d /etc/init.$ME ] && [ ! -e /etc/init.d ] && echo DIRMOVED:ok
mkdir -p /work-$ME/sub && echo data > /work-$ME/sub/f && mv /work-$ME/sub/f /work-$ME/g && echo "MINE:$(cat /work-$ME/g)"
rm -r /home && [ ! -e /home ] && mkdir /home && echo "HOMEFRESH:$(ls -A /home | wc -l)"
sync; sleep 8
echo "SEES-OTHER:$(ls -d /cow-$OTHER /work-$OTHER /etc/init.$OTHER 2>/dev/null | wc -l)"
echo "PASSWD-OTHER:$(grep -c by-$OTHER /etc/passwd)"
echo "OWN-STILL:$(cat /cow-$ME):$(ls /etc/init.$ME | wc -l)"
sync; echo DONE
exit 3
"""


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_uid}\0{st.st_gid}\0"
                     f"{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(path.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return h.hexdigest()


async def test_two_guests_one_base(busybox_root, tmp_path):
    base = busybox_root
    before = tree_digest(base)
    init_entries = len(os.listdir(base / "etc" / "init.d"))
    results = {}

    async def guest(me: str, other: str) -> None:
        upper = tmp_path / f"upper-{me}"
        results[me] = await boot_script(
            base, GUEST_OPS.format(me=me, other=other), server="ninepd", timeout=400,
            server_args=("--upper", str(upper)))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(guest, "a", "b")
        nursery.start_soon(guest, "b", "a")
    for me in ("a", "b"):
        result = results[me]
        assert result.exit_status == 3, result.console[-3000:]
        assert KERNEL_REACHED_INIT in result.console
        lines = {line.strip() for line in result.console.splitlines()}
        expected = {f"WROTE:{me}", f"APPENDED:by-{me}", "DELETED:ok", "DIRMOVED:ok",
                    "MINE:data", "HOMEFRESH:0", "SEES-OTHER:0", "PASSWD-OTHER:0",
                    f"OWN-STILL:{me}:{init_entries}", "DONE"}
        assert expected <= lines, sorted(expected - lines)
        upper = tmp_path / f"upper-{me}"
        assert (upper / f"cow-{me}").read_bytes() == f"{me}\n".encode()
        assert (upper / "etc" / ".wh.group").exists() and (upper / "etc" / ".wh.init.d").exists()
        assert (upper / "home" / ".wh..wh..opq").exists()
        assert not list(upper.glob("*-" + ("b" if me == "a" else "a")))
    assert tree_digest(base) == before
