"""The mapped model really needs no root: the backend and `ninep rootfs busybox` run
here as an unprivileged uid (dropped with setpriv; CI runs as root)."""

import json
import os
import stat
import struct
import subprocess
import tempfile
import textwrap
from pathlib import Path

import pytest

from ninep.vm.testing import UNPRIVILEGED, unprivileged_python

pytestmark = pytest.mark.root


@pytest.fixture
def as_user():
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found

    def run(args, cwd):
        return subprocess.run([*prefix, *args], env=env, cwd=cwd, capture_output=True,
                              text=True, timeout=120)
    return run


@pytest.fixture
def user_dir():
    """A directory the user owns and can reach (pytest's own are 0700 root's)."""
    with tempfile.TemporaryDirectory(prefix="ninep-unprivileged-") as place:
        os.chmod(place, 0o755)
        os.chown(place, *UNPRIVILEGED)
        yield Path(place)


GUEST_OPS = textwrap.dedent("""
    import json, stat, sys, trio
    from ninep.fs.backend import Credentials, SetAttr
    from ninep.fs.host import HostFilesystem
    from ninep.protocol.constants import OpenFlags, SetattrMask

    async def main():
        fs = HostFilesystem(sys.argv[1])
        root = await fs.attach("", Credentials(0, 0, ()))
        await root.mknod("null", stat.S_IFCHR | 0o666, 1, 3, 0)
        await root.mknod("fifo", stat.S_IFIFO | 0o644, 0, 0, 0)
        f, _ = await root.create("owned", OpenFlags.RDWR, 0o644, 0)
        await f.setattr(SetAttr(valid=SetattrMask.UID | SetattrMask.GID, uid=1000, gid=100))
        out = {"identity": fs.identity}
        for name in ("null", "fifo", "owned"):
            _, node = await root.walk([name])
            a = await node.getattr(0)
            out[name] = [a.mode, a.uid, a.gid, a.rdev]
        print(json.dumps(out))
    trio.run(main)
""")


def test_mapped_backend_as_an_ordinary_user(as_user, user_dir):
    export = user_dir / "export"
    export.mkdir()
    os.chown(export, *UNPRIVILEGED)
    done = as_user(["-c", GUEST_OPS, str(export)], cwd=user_dir)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["identity"] == "mapped"  # the default without root
    assert seen["null"] == [stat.S_IFCHR | 0o666, 0, 0, os.makedev(1, 3)]
    assert seen["fifo"][0] == stat.S_IFIFO | 0o644
    assert seen["owned"][:3] == [stat.S_IFREG | 0o644, 1000, 100]
    for name in ("null", "fifo", "owned"):
        st = os.lstat(export / name)
        assert stat.S_ISREG(st.st_mode) and (st.st_uid, st.st_gid) == UNPRIVILEGED, name
    assert os.getxattr(export / "owned", "user.virtfs.uid") == struct.pack("<I", 1000)


def test_rootfs_busybox_as_an_ordinary_user(as_user, user_dir):
    dest = user_dir / "root"
    done = as_user(["-c", "import sys; from ninep.vm.cli import main; sys.exit(main())",
                    "rootfs", "busybox", str(dest)], cwd=user_dir)
    assert done.returncode == 0, done.stderr
    sh = dest / "bin/sh"
    assert stat.S_ISREG(sh.lstat().st_mode) and sh.read_text() == "busybox"
    assert os.getxattr(sh, "user.virtfs.mode") == struct.pack("<I", stat.S_IFLNK | 0o777)
    guest_home = dest / "home/guest"
    assert os.getxattr(guest_home, "user.virtfs.uid") == struct.pack("<I", 1000)
    assert os.getxattr(dest / "tmp", "user.virtfs.mode") == struct.pack("<I", stat.S_IFDIR | 0o1777)
    busybox = dest / "bin/busybox"
    assert (busybox.stat().st_uid, os.getxattr(busybox, "user.virtfs.uid")) == (
        UNPRIVILEGED[0], struct.pack("<I", 0))
    assert os.getxattr(busybox, "user.virtfs.mode") == struct.pack(
        "<I", busybox.stat().st_mode)
