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


@pytest.mark.debian
@pytest.mark.timeout(1500)
async def test_debian_boots_from_a_tarball_with_a_persistent_upper(tmp_path):
    """systemd reaches multi-user on the cached Debian tarball served in place (never
    unpacked) with a persistent upper; a second boot sees what the first one wrote."""
    import re

    from ninep.vm.rootfs import BOOT_MARKER, build_debian_rootfs, debian_tarball

    if not debian_tarball().exists():
        build_debian_rootfs(tmp_path / "unpacked")  # debootstraps into the cache once
    tarball = debian_tarball()
    tar_digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    upper = tmp_path / "upper"
    first = await boot_script(tarball, None, server="ninepd", timeout=600,
                              server_args=("--upper", str(upper)),
                              extra_append=("ninep.marker=1",))
    console = re.sub(r"\x1b\[[0-9;]*m", "", first.console)
    assert not first.timed_out, console[-4000:]
    assert "Reached target multi-user.target - Multi-User System." in console, console[-4000:]
    assert BOOT_MARKER in console.splitlines()
    assert "Failed to start" not in console, [l for l in console.splitlines() if "Failed" in l]
    seed = upper / "var" / "lib" / "systemd" / "random-seed"
    assert seed.is_file(), sorted(str(p.relative_to(upper)) for p in upper.rglob("*"))[:80]
    seed_md5 = hashlib.md5(seed.read_bytes()).hexdigest()
    second = await boot_script(tarball, "md5sum /var/lib/systemd/random-seed; "
                                        "echo booted-twice > /root/second; exit 4",
                               server="ninepd", timeout=300, server_args=("--upper", str(upper)))
    assert second.exit_status == 4, second.console[-3000:]
    assert f"{seed_md5}  /var/lib/systemd/random-seed" in second.console
    assert (upper / "root" / "second").read_bytes() == b"booted-twice\n"
    assert hashlib.sha256(tarball.read_bytes()).hexdigest() == tar_digest
