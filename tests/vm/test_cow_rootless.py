"""Debian with systemd boots from a compressed tarball base with a persistent upper,
everything run by an ordinary user (issue 12): `ninep vm debian.tar.zst --upper DIR`
as uid 4711, so ninepd serves the COW root with the mapped identity and QEMU runs
unprivileged too. The first boot (systemd to multi-user) adds a user (useradd
rewrites /etc/passwd, shadow and group by rename, with their owners and modes),
writes and chowns files, makes a device node and a symlink; the second boot (a shell
command) sees all of it, and root-owned, setuid and group-owned base files keep
their owners and modes throughout."""

import os
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ninep.fs.hostmodel import write_mapped
from ninep.vm.initramfs import cache_dir
from ninep.vm.rootfs import cached_debian_tarball
from ninep.vm.testing import UNPRIVILEGED, unprivileged_python

pytestmark = [pytest.mark.vm, pytest.mark.debian, pytest.mark.root]

# Runs once multi-user.target is reached, reports on the console, powers off.
CHECK_SCRIPT = """#!/bin/sh
say() { echo "COWCHECK $*" > /dev/console; }
say "failed=$(systemctl --failed --no-legend --plain | wc -l)"
systemctl --failed --no-legend --plain > /dev/console
say "base=$(stat -c %u:%g:%a /etc/shadow):$(stat -c %u:%g:%a /usr/bin/passwd):$(stat -c %u:%g /usr/bin/ls)"
echo first > /root/boot1 && chown 1000:100 /root/boot1 && chmod 640 /root/boot1
useradd -m -u 1001 -s /bin/sh tester
mkdir -p /var/lib/pkgstate && echo installed > /var/lib/pkgstate/state
chown -R 100:101 /var/lib/pkgstate && chmod 750 /var/lib/pkgstate
mknod /root/null c 1 3 && ln -s /etc/shadow /root/sl && chgrp 42 /etc/hostname
sync
say "made=$(id -u tester):$(stat -c %u:%g:%a /etc/shadow)"
systemctl --no-block poweroff
"""
# The second boot runs this instead of systemd (a full second boot would add ~100 s
# to the default suite and prove nothing more about the upper).
SECOND_BOOT = """
echo "COWCHECK base=$(stat -c %u:%g:%a /etc/shadow):$(stat -c %u:%g:%a /usr/bin/passwd):$(stat -c %u:%g /usr/bin/ls)"
echo "COWCHECK boot1=$(cat /root/boot1):$(stat -c %u:%g:%a /root/boot1)"
echo "COWCHECK user=$(id -u tester):$(stat -c %U:%G:%a /home/tester):$(stat -c %U /home/tester/.bashrc)"
echo "COWCHECK pkg=$(stat -c %u:%g:%a /var/lib/pkgstate /var/lib/pkgstate/state | tr '\\n' ' ')"
echo "COWCHECK dev=$(stat -c %F:%t,%T /root/null):$(readlink /root/sl):$(stat -c %u:%g /etc/hostname)"
"""
CHECK_UNIT = """[Unit]
Description=ninep rootless COW check
After=multi-user.target

[Service]
Type=oneshot
ExecStart=/usr/local/bin/ninep-cowcheck

[Install]
WantedBy=multi-user.target
"""


def _seed(upper: Path, rel: str, text: str, mode: int) -> None:
    """The test's instrument, put into the upper as a mapped upper keeps files: root's
    in the guest (user.virtfs.*), the user's on the host. An upper directory is a
    layer: these merge with the base's directories of the same names."""
    path = upper / rel
    for parent in reversed(path.relative_to(upper).parents[:-1]):
        d = upper / parent
        if not d.exists():
            d.mkdir(mode=0o755)
            write_mapped(str(d), uid=0, gid=0, mode=stat.S_IFDIR | 0o755)
    path.write_text(text)
    os.chmod(path, 0o600)
    write_mapped(str(path), uid=0, gid=0, mode=mode)


def _user_home(home: Path) -> Path:
    """``home`` opened to the unprivileged user, its cache holding the guest init
    already built here (copied, so the user's runs do not build it again)."""
    os.chmod(home, 0o755)
    cache = home / "cache" / "ninep"
    cache.mkdir(parents=True)
    for built in cache_dir().glob("ninep-init-*"):
        shutil.copy2(built, cache / built.name)
    return home


def _console_lines(booted: subprocess.CompletedProcess, tag: str = "") -> set[str]:
    """Stripped lines, each from ``tag`` on: the autologin shell's prompt may share
    the console line with what the check script printed."""
    lines = (line[line.find(tag):] if tag and tag in line else line
             for line in booted.stdout.splitlines())
    return {line.strip() for line in lines}


@pytest.mark.timeout(2400)
def test_debian_boots_rootless_from_a_tarball_with_a_persistent_upper():
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found
    tarball = cached_debian_tarball()
    if shutil.which("zstd") is None:
        pytest.skip("zstd not installed")
    with tempfile.TemporaryDirectory(prefix="ninep-cow-rootless-") as place:
        home = _user_home(Path(place))
        image = home / "debian.tar.zst"
        subprocess.run(["zstd", "-q", "-3", "-T0", str(tarball), "-o", str(image)], check=True)
        upper = home / "upper"
        upper.mkdir()
        _seed(upper, "usr/local/bin/ninep-cowcheck", CHECK_SCRIPT, stat.S_IFREG | 0o755)
        _seed(upper, "etc/systemd/system/ninep-cowcheck.service", CHECK_UNIT, stat.S_IFREG | 0o644)
        _seed(upper, "etc/systemd/system/multi-user.target.wants/ninep-cowcheck.service",
              "/etc/systemd/system/ninep-cowcheck.service", stat.S_IFLNK | 0o777)
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED[0]}:{UNPRIVILEGED[1]}", str(home)],
                       check=True)
        image_digest = subprocess.run(["sha256sum", str(image)], capture_output=True,
                                      text=True, check=True).stdout.split()[0]
        user_env = dict(env, XDG_CACHE_HOME=str(home / "cache"))
        cli = "import sys; from ninep.vm.cli import main; sys.exit(main())"
        try:
            boots, seconds = [], []
            for extra in ((), ("--cmd", SECOND_BOOT)):
                started = time.monotonic()
                booted = subprocess.run(
                    [*prefix, "-c", cli, "vm", str(image), "--upper", str(upper),
                     "--accel", "tcg", *extra], env=user_env, cwd=home,
                    stdin=subprocess.DEVNULL, capture_output=True, text=True,
                    errors="replace", timeout=1100)
                assert booted.returncode == 0, (booted.stderr[-2000:], booted.stdout[-4000:])
                if not extra:
                    assert "reboot: Power down" in booted.stdout, booted.stdout[-4000:]
                seconds.append(time.monotonic() - started)
                boots.append(_console_lines(booted, "COWCHECK"))
            print(f"rootless COW Debian: systemd boot to power-off {seconds[0]:.1f} s, "
                  f"second boot's check {seconds[1]:.1f} s")
            base = "COWCHECK base=0:42:640:0:0:4755:0:0"
            first = {"COWCHECK failed=0", base, "COWCHECK made=1001:0:42:640"}
            second = {base, "COWCHECK boot1=first:1000:100:640",
                      "COWCHECK user=1001:tester:tester:755:tester",
                      "COWCHECK pkg=100:101:750 100:101:644",
                      "COWCHECK dev=character special file:1,3:/etc/shadow:0:42"}
            for want, lines in ((first, boots[0]), (second, boots[1])):
                missing = want - lines
                assert not missing, (sorted(missing), sorted(l for l in lines if "COWCHECK" in l))
            # On the host: the user's own plain files, the guest's view in user.virtfs.*.
            for rel in ("root/boot1", "root/null", "root/sl", "etc/shadow", "home/tester"):
                st = os.lstat(upper / rel)
                assert st.st_uid == UNPRIVILEGED[0], rel
                assert stat.S_ISDIR(st.st_mode) == (rel == "home/tester"), rel
            assert os.getxattr(upper / "root/boot1", "user.virtfs.uid") == struct.pack("<I", 1000)
            assert os.getxattr(upper / "etc/shadow", "user.virtfs.gid") == struct.pack("<I", 42)
            assert os.getxattr(upper / "root/null", "user.virtfs.rdev") == struct.pack(
                "<Q", os.makedev(1, 3))
            assert subprocess.run(["sha256sum", str(image)], capture_output=True, text=True,
                                  check=True).stdout.split()[0] == image_digest
        finally:
            subprocess.run(["chown", "-R", "0:0", str(home)], check=True)  # let cleanup in


FIRST_RUN = ("touch /etc/made && chown 1000:100 /etc/made && chmod 4750 /etc/made && "
             "mknod /root/null c 1 3 && ln -s /etc/passwd /root/sl && chgrp 5 /etc/passwd && "
             "echo RUN1:$(stat -c %u:%g:%a /etc/made):$(stat -c %u:%g:%a /etc/passwd)")
SECOND_RUN = ("echo RUN2:$(stat -c %u:%g:%a /etc/made):$(stat -c %t,%T /root/null):"
              "$(readlink /root/sl):$(stat -c %u:%g:%a /etc/passwd):$(stat -c %u /bin/busybox)")


@pytest.mark.timeout(900)
def test_busybox_dir_cow_boots_rootless_and_keeps_the_guests_owners():
    """`ninep vm DIR --cow --upper U` as an ordinary user, DIR a mapped tree made by
    `ninep rootfs busybox` without root: owners set in one boot hold in the next;
    without --upper the temporary upper is gone when ninep vm exits."""
    found = unprivileged_python()
    if found is None:
        pytest.skip("cannot run Python as an unprivileged user here")
    prefix, env = found
    with tempfile.TemporaryDirectory(prefix="ninep-cow-rootless-bb-") as place:
        home = _user_home(Path(place))
        subprocess.run(["chown", "-R", f"{UNPRIVILEGED[0]}:{UNPRIVILEGED[1]}", str(home)],
                       check=True)
        user_env = dict(env, XDG_CACHE_HOME=str(home / "cache"))
        cli = "import sys; from ninep.vm.cli import main; sys.exit(main())"
        run = dict(env=user_env, cwd=home, stdin=subprocess.DEVNULL, capture_output=True,
                   text=True, errors="replace", timeout=400)
        try:
            made = subprocess.run([*prefix, "-c", cli, "rootfs", "busybox", str(home / "root")],
                                  **run)
            assert made.returncode == 0, made.stderr[-2000:]
            outputs = []
            for script in (FIRST_RUN, SECOND_RUN):
                booted = subprocess.run(
                    [*prefix, "-c", cli, "vm", str(home / "root"), "--cow", "--upper",
                     str(home / "upper"), "--accel", "tcg", "--cmd", script], **run)
                assert booted.returncode == 0, (booted.stderr[-2000:], booted.stdout[-3000:])
                outputs.append(_console_lines(booted))
            # Without --upper: a temporary upper, gone when ninep vm exits.
            (home / "tmp").mkdir()
            throwaway = subprocess.run(
                [*prefix, "-c", cli, "vm", str(home / "root"), "--cow", "--accel", "tcg",
                 "--cmd", "touch /t && chown 7:8 /t && echo RUN3:$(stat -c %u:%g /t)"],
                **dict(run, env=dict(user_env, TMPDIR=str(home / "tmp"))))
            assert "RUN3:7:8" in _console_lines(throwaway), throwaway.stdout[-3000:]
            assert os.listdir(home / "tmp") == []
            assert "RUN1:1000:100:4750:0:5:644" in outputs[0], outputs[0]
            assert "RUN2:1000:100:4750:1,3:/etc/passwd:0:5:644:0" in outputs[1], outputs[1]
            assert os.lstat(home / "upper/root/null").st_uid == UNPRIVILEGED[0]
            made_uid = os.getxattr(home / "upper/etc/made", "user.virtfs.uid")
            assert made_uid == struct.pack("<I", 1000)
            assert not os.path.exists(home / "root/etc/made")  # the base was not written
        finally:
            subprocess.run(["chown", "-R", "0:0", str(home)], check=True)  # let cleanup in
