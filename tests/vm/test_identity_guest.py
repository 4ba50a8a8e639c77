"""The guest's own chown/chmod/mknod/permission decisions hold on a 9P root, in both
identity models: passthrough (ninepd as root) and mapped (`ninep vm` run entirely as
an unprivileged user: rootfs, ninepd and QEMU). Each test reads the guest's console
and then what the host shows (inodes, or user.virtfs.* xattrs)."""

import os
import shutil
import stat
import struct
import subprocess
import tempfile
from pathlib import Path

import pytest

from ninep.fs.hostmodel import write_mapped
from ninep.vm.initramfs import cache_dir
from ninep.vm.testing import UNPRIVILEGED, boot_script, unprivileged_python

pytestmark = [pytest.mark.vm, pytest.mark.root]

T = "/idt"
# Users the host has never heard of: only the guest's /etc/passwd and /etc/group
# know that u65533's groups are 65532 (primary) and 65531 (supplementary).
GUEST_SCRIPT = r"""
echo 'u65533:x:65533:65532::/:/bin/sh' >> /etc/passwd
echo 'u65530:x:65530:65530::/:/bin/sh' >> /etc/passwd
echo 'g65532:x:65532:' >> /etc/group
echo 'g65531:x:65531:u65533' >> /etc/group
as() { u=$1; shift; su "$u" -s /bin/sh -c "$*"; }
T=/idt; mkdir $T && chmod 1777 $T
as u65533 "echo a > $T/file; mkdir $T/dir; mkfifo $T/fifo; ln -s file $T/link"
echo "OWN:$(stat -c %u:%g $T/file):$(stat -c %u:%g $T/dir):$(stat -c %u:%g $T/fifo):$(stat -c %u:%g $T/link)"
mkdir $T/sg && chgrp 4321 $T/sg && chmod 2777 $T/sg
as u65533 "umask 022; echo b > $T/sg/f; mkdir $T/sg/d"
echo "SGID:$(stat -c %g $T/sg/f):$(stat -c %g:%a $T/sg/d)"
echo secret > $T/grp && chgrp 65532 $T/grp && chmod 640 $T/grp
echo "GROUPREAD:$(as u65533 "cat $T/grp" 2>&1)"
echo sup > $T/sup && chgrp 65531 $T/sup && chmod 640 $T/sup
echo "SUPREAD:$(as u65533 "cat $T/sup" 2>&1)"
echo "STRANGER:$(as u65530 "cat $T/sup" 2>/dev/null || echo denied)"
as u65533 "chgrp 65531 $T/file" && echo "CHGRP-OWN:$(stat -c %g $T/file)"
as u65533 "chgrp 7 $T/file" 2>/dev/null || echo "CHGRP-OTHER:denied"
as u65533 "chown 0 $T/file" 2>/dev/null || echo "CHOWN-OTHER:denied"
echo x > $T/suid && chown 65533:65532 $T/suid && chmod 6777 $T/suid
as u65530 "echo y >> $T/suid" && echo "SUIDWRITE:$(stat -c %a $T/suid)"
echo x > $T/suid2 && chmod 4755 $T/suid2 && chown 65533 $T/suid2 && echo "SUIDCHOWN:$(stat -c %a $T/suid2)"
echo c > $T/ct; sync; sleep 2; echo "CTIME:$(fsops chown-keep $T/ct)"
as u65530 "rm -f $T/file" 2>/dev/null; [ -e $T/file ] && echo "STICKY:kept"
mknod $T/null c 1 3 && mknod $T/loop b 7 0 && fsops mksock $T/sock > /dev/null
echo "NODES:$(stat -c %F:%t,%T $T/null):$(stat -c %F:%t,%T $T/loop):$(stat -c %F $T/fifo):$(stat -c %F $T/sock)"
echo hi > $T/null && echo "NULLWRITE:ok"
N=$(head -c 250 /dev/zero | tr '\0' d); P=$T
for i in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do P=$P/$N; mkdir $P || break; done
echo deep > $P/f && echo "DEEP:$(cat $P/f):${#P}"
sync; echo IDDONE
exit 3
"""

EXPECTED = [
    "OWN:65533:65532:65533:65532:65533:65532:65533:65532",
    "SGID:4321:4321:2755",
    "GROUPREAD:secret",
    "SUPREAD:sup",
    "STRANGER:denied",
    "CHGRP-OWN:65531",
    "CHGRP-OTHER:denied",
    "CHOWN-OTHER:denied",
    "SUIDWRITE:777",
    "SUIDCHOWN:755",
    "CTIME:ctime-moved",
    "STICKY:kept",
    "NODES:character special file:1,3:block special file:7,0:fifo:socket",
    "NULLWRITE:ok",
    "DEEP:deep:3769",
    "IDDONE",
]


def _check_console(console: str, status) -> None:
    lines = {line.strip() for line in console.splitlines()}
    missing = [want for want in EXPECTED if want not in lines]
    got = sorted(line for line in lines if line[:1].isupper() and ":" in line)
    assert not missing and status == 3, (missing, got, console[-3000:])


def _host_ctime_moved(path: Path) -> bool:
    """ctime set by the chown(-1, -1) two seconds after the file was written."""
    st = os.lstat(path)
    return st.st_ctime_ns - st.st_mtime_ns > 1_500_000_000


async def test_passthrough_guest_identity(busybox_root):
    result = await boot_script(busybox_root, GUEST_SCRIPT, server="ninepd", timeout=240,
                               server_args=("--identity", "passthrough"))
    _check_console(result.console, result.exit_status)
    assert "identity passthrough" in result.server_log
    t = busybox_root / T.lstrip("/")

    def own(name):
        st = os.lstat(t / name)
        return st.st_uid, st.st_gid

    assert own("file") == (65533, 65531) and own("dir") == (65533, 65532)
    assert own("fifo") == (65533, 65532) and own("link") == (65533, 65532)
    assert stat.S_ISFIFO(os.lstat(t / "fifo").st_mode) and os.path.islink(t / "link")
    assert own("sg/f")[1] == 4321
    assert stat.S_IMODE(os.lstat(t / "sg/d").st_mode) == 0o2755
    assert stat.S_IMODE(os.lstat(t / "suid").st_mode) == 0o777
    null = os.lstat(t / "null")
    assert stat.S_ISCHR(null.st_mode) and null.st_rdev == os.makedev(1, 3)
    assert stat.S_ISBLK(os.lstat(t / "loop").st_mode)
    assert stat.S_ISSOCK(os.lstat(t / "sock").st_mode)
    assert _host_ctime_moved(t / "ct")


def _le32(value: int) -> bytes:
    return struct.pack("<I", value)


async def test_mapped_guest_identity_without_host_root(guest_tools):
    """`ninep rootfs busybox` and `ninep vm` as an ordinary user: ninepd defaults to
    mapped, and QEMU runs unprivileged too."""
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found
    uid, gid = UNPRIVILEGED
    with tempfile.TemporaryDirectory(prefix="ninep-vm-mapped-") as place:
        home = Path(place)
        os.chmod(home, 0o755)
        cache = home / "cache" / "ninep"
        cache.mkdir(parents=True)
        for built in cache_dir().glob("ninep-init-*"):  # skip recompiling the init
            shutil.copy2(built, cache / built.name)
        subprocess.run(["chown", "-R", f"{uid}:{gid}", str(home)], check=True)
        user_env = dict(env, XDG_CACHE_HOME=str(home / "cache"))
        cli = "import sys; from ninep.vm.cli import main; sys.exit(main())"
        root = home / "root"
        made = subprocess.run([*prefix, "-c", cli, "rootfs", "busybox", str(root)],
                              env=user_env, cwd=home, capture_output=True, text=True)
        assert made.returncode == 0, made.stderr
        fsops = root / "usr/bin/fsops"
        shutil.copy2(guest_tools["fsops"], fsops)
        os.chown(fsops, uid, gid)
        write_mapped(str(fsops), uid=0, gid=0, mode=stat.S_IFREG | 0o755)
        booted = subprocess.run(
            [*prefix, "-c", cli, "vm", str(root), "--accel", "tcg", "--timeout", "240",
             "--cmd", GUEST_SCRIPT], env=user_env, cwd=home, capture_output=True,
            text=True, timeout=400)
        _check_console(booted.stdout, booted.returncode)
        t = root / T.lstrip("/")
        for entry in [t, *t.rglob("*")]:
            st = os.lstat(entry)
            assert stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode), entry
            assert (st.st_uid, st.st_gid) == (uid, gid), entry

        def xattr(name, key):
            return os.getxattr(t / name, f"user.virtfs.{key}")

        assert (xattr("file", "uid"), xattr("file", "gid")) == (_le32(65533), _le32(65531))
        assert xattr("dir", "mode") == _le32(stat.S_IFDIR | 0o755)
        assert xattr("fifo", "mode") == _le32(stat.S_IFIFO | 0o644)
        assert xattr("link", "mode") == _le32(stat.S_IFLNK | 0o777)
        assert (t / "link").read_text() == "file"
        assert xattr("sg/f", "gid") == _le32(4321)
        assert xattr("sg/d", "mode") == _le32(stat.S_IFDIR | 0o2755)
        assert xattr("suid", "mode") == _le32(stat.S_IFREG | 0o777)
        assert xattr("null", "mode") == _le32(stat.S_IFCHR | 0o644)
        assert xattr("null", "rdev") == struct.pack("<Q", os.makedev(1, 3))
        assert stat.S_IFMT(struct.unpack("<I", xattr("sock", "mode"))[0]) == stat.S_IFSOCK
        assert _host_ctime_moved(t / "ct")
        subprocess.run(["chown", "-R", "0:0", str(home)], check=True)  # let cleanup in
