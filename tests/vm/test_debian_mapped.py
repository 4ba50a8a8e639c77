"""Debian with systemd, rootless end to end: the cached Debian tarball is imported into
a mapped tree by an ordinary user (`ninep rootfs import`), and `ninep vm` boots it as
that user (ninepd --identity mapped by default, QEMU unprivileged too). In the guest,
`systemctl --failed` lists nothing and root's chown and mknod work."""

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
from ninep.vm.rootfs import cached_debian_tarball
from ninep.vm.testing import UNPRIVILEGED, unprivileged_python

pytestmark = [pytest.mark.vm, pytest.mark.debian, pytest.mark.root]

CHECK_SCRIPT = """#!/bin/sh
# Runs once multi-user.target is reached; reports on the console, then powers off.
say() { echo "IDCHECK $*" > /dev/console; }
say "failed=$(systemctl --failed --no-legend --plain | wc -l)"
systemctl --failed --no-legend --plain > /dev/console
touch /root/owned && chown 1000:100 /root/owned && say "chown=$(stat -c %u:%g /root/owned)"
mknod /root/null c 1 3 && say "mknod=$(stat -c %F:%t,%T /root/null)"
say "whoami=$(id -u):$(stat -c %u:%g /etc/shadow):$(stat -c %a /usr/bin/passwd)"
systemctl --no-block poweroff
"""
CHECK_UNIT = """[Unit]
Description=ninep identity check
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/ninep-idcheck

[Install]
WantedBy=multi-user.target
"""


def _add(root: Path, rel: str, text: str, mode: int) -> None:
    """A file for the guest, as a mapped tree keeps it (the test's own instrument)."""
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    os.chown(path, *UNPRIVILEGED)
    os.chmod(path, 0o600)
    write_mapped(str(path), uid=0, gid=0, mode=mode)


@pytest.mark.timeout(1200)
def test_debian_boots_rootless_in_mapped_mode():
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found
    tarball = cached_debian_tarball()
    with tempfile.TemporaryDirectory(prefix="ninep-debian-mapped-") as place:
        home = Path(place)
        os.chmod(home, 0o755)
        cache = home / "cache" / "ninep"
        cache.mkdir(parents=True)
        for built in cache_dir().glob("ninep-init-*"):
            shutil.copy2(built, cache / built.name)
        shutil.copyfile(tarball, home / "debian.tar")
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED[0]}:{UNPRIVILEGED[1]}", str(home)],
                       check=True)
        user_env = dict(env, XDG_CACHE_HOME=str(home / "cache"))
        cli = "import sys; from ninep.vm.cli import main; sys.exit(main())"
        root = home / "root"
        made = subprocess.run([*prefix, "-c", cli, "rootfs", "import", str(home / "debian.tar"),
                               str(root)], env=user_env, cwd=home, capture_output=True,
                              text=True, timeout=600)
        assert made.returncode == 0, made.stderr
        _add(root, "usr/local/bin/ninep-idcheck", CHECK_SCRIPT, stat.S_IFREG | 0o755)
        _add(root, "etc/systemd/system/ninep-idcheck.service", CHECK_UNIT, stat.S_IFREG | 0o644)
        _add(root, "etc/systemd/system/multi-user.target.wants/ninep-idcheck.service",
             "/etc/systemd/system/ninep-idcheck.service", stat.S_IFLNK | 0o777)
        booted = subprocess.run([*prefix, "-c", cli, "vm", str(root), "--accel", "tcg"],
                                env=user_env, cwd=home, stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, errors="replace", timeout=900)
        console = booted.stdout
        lines = {line.strip() for line in console.splitlines()}
        assert booted.returncode == 0, console[-4000:]
        for want in ("IDCHECK failed=0", "IDCHECK chown=1000:100",
                     "IDCHECK mknod=character special file:1,3",
                     "IDCHECK whoami=0:0:42:4755"):
            assert want in lines, (want, [l for l in lines if "IDCHECK" in l], console[-3000:])
        assert "reboot: Power down" in console
        for entry in (root / "root/owned", root / "root/null", root / "etc/shadow"):
            st = os.lstat(entry)
            assert stat.S_ISREG(st.st_mode) and st.st_uid == UNPRIVILEGED[0], entry
        assert os.getxattr(root / "root/owned", "user.virtfs.uid") == struct.pack("<I", 1000)
        assert os.getxattr(root / "root/null", "user.virtfs.mode") == struct.pack(
            "<I", stat.S_IFCHR | 0o644)
        subprocess.run(["chown", "-R", "0:0", str(home)], check=True)  # let cleanup in
