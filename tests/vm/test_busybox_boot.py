"""Boot the Debian kernel on a busybox root served over 9P and exercise it from inside.

Every test reads what the guest printed (kernel lines, ninep-init lines, the script's
markers) and, where the root is writable, what landed in the host directory.
"""

import hashlib
import os
import re
import stat
from pathlib import Path

import pytest

from ninep.vm.qemu import LaunchError, VmConfig, plan_vm
from ninep.vm.testing import KERNEL_REACHED_INIT, ROOT_MOUNTED, boot_script

pytestmark = pytest.mark.vm

# One line per operation; the test knows each expected line.  `big` checks that
# messages of full msize cross the transport intact (hash compared with the host's).
FILE_OPS = r"""
cd / && mkdir /vmtest && cd /vmtest && echo MKDIR:ok
echo "hello 9p" > file.txt && echo "READ:$(cat file.txt)"
echo more >> file.txt && echo "APPEND:$(wc -l < file.txt)"
mv file.txt renamed.txt && [ ! -e file.txt ] && echo RENAME:ok
ln renamed.txt hard.txt && echo "LINKS:$(stat -c %h renamed.txt)"
rm hard.txt && echo "UNLINK:$(stat -c %h renamed.txt)"
ln -s renamed.txt sym.txt && echo "SYMLINK:$(readlink sym.txt):$(head -n 1 sym.txt)"
chmod 640 renamed.txt && echo "MODE:$(stat -c %a renamed.txt)"
chown 1000:1000 renamed.txt && echo "OWNER:$(stat -c %u:%g renamed.txt)"
truncate -s 5 renamed.txt && echo "TRUNCATE:$(stat -c %s renamed.txt):$(cat renamed.txt)"
mkdir -p sub/deeper && rmdir sub/deeper && [ -d sub ] && echo RMDIR:ok
mkfifo pipe && echo "FIFO:$(stat -c %F pipe)"
dd if=/dev/urandom of=big bs=65536 count=24 2>/dev/null && echo "BIG:$(md5sum big | cut -d' ' -f1)"
su guest -s /bin/sh -c 'echo mine > /home/guest/own.txt' && echo "GUESTFILE:$(stat -c %u /home/guest/own.txt)"
su guest -s /bin/sh -c 'echo x > /vmtest/denied.txt' 2>/dev/null || echo PERM:denied
fsops flock-hold lockfile 3 | sed 's/^/FLOCK-HOLDER:/' &
sleep 1.5; echo "FLOCK-OTHER:$(fsops flock-try lockfile)"
fsops lock-hold recordlock 3 | sed 's/^/LOCK-HOLDER:/' &
sleep 1.5; echo "LOCK-OTHER:$(fsops lock-try recordlock)"
wait; echo "FLOCK-AFTER:$(fsops flock-try lockfile)"; echo "LOCK-AFTER:$(fsops lock-try recordlock)"
echo "XATTR:$(fsops setxattr renamed.txt user.color blue):$(fsops getxattr renamed.txt user.color)"
echo "ROOT:$(grep ' / ' /proc/mounts | cut -d' ' -f3 | tail -n 1)"
sync; echo DONE
exit 7
"""


def _lines(console: str) -> set[str]:
    return {line.strip() for line in console.splitlines()}


def _check_file_ops(result, root: Path | None, *, user_xattrs: bool = True) -> None:
    assert result.exit_status == 7, result.console[-3000:]
    assert KERNEL_REACHED_INIT in result.console
    lines = _lines(result.console)
    expected = {"MKDIR:ok", "READ:hello 9p", "APPEND:2", "RENAME:ok", "LINKS:2", "UNLINK:1",
                "SYMLINK:renamed.txt:hello 9p", "MODE:640", "OWNER:1000:1000",
                "TRUNCATE:5:hello", "RMDIR:ok", "FIFO:fifo", "GUESTFILE:1000", "PERM:denied",
                "FLOCK-HOLDER:held", "FLOCK-OTHER:busy", "FLOCK-AFTER:acquired",
                "LOCK-HOLDER:held", "LOCK-OTHER:busy", "LOCK-AFTER:acquired",
                "DONE"}
    assert expected <= lines, sorted(expected - lines)
    # tmpfs (the overlay's upper layer) has no user.* xattrs before Linux 6.6
    xattr = "XATTR:set:blue" if user_xattrs else \
        "XATTR:setxattr-failed:Not supported:getxattr-failed:Not supported"
    assert xattr in lines, [line for line in lines if line.startswith("XATTR")]
    big_lines = [line for line in lines if line.startswith("BIG:")]
    assert len(big_lines) == 1
    if root is None:
        return
    work = root / "vmtest"
    renamed = work / "renamed.txt"
    assert renamed.read_bytes() == b"hello"
    info = renamed.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and (info.st_uid, info.st_gid) == (1000, 1000)
    assert info.st_nlink == 1 and not (work / "hard.txt").exists()
    assert not (work / "file.txt").exists()
    assert os.readlink(work / "sym.txt") == "renamed.txt"
    assert (work / "sub").is_dir() and not (work / "sub/deeper").exists()
    assert stat.S_ISFIFO((work / "pipe").lstat().st_mode)
    assert not (work / "denied.txt").exists()
    assert (root / "home/guest/own.txt").stat().st_uid == 1000
    host_md5 = hashlib.md5((work / "big").read_bytes()).hexdigest()
    assert big_lines == [f"BIG:{host_md5}"]
    assert (work / "big").stat().st_size == 24 * 65536
    assert os.getxattr(renamed, "user.color") == b"blue"


async def test_file_operations_served_by_ninepd_workers(busybox_root):
    """The kernel's client through --workers: its connection handed to a worker
    process, fcntl locks answered by the supervisor's table."""
    result = await boot_script(busybox_root, FILE_OPS, transport="tcp",
                               server_args=("--workers", "2", "--log-level", "debug"))
    assert "ROOT:9p" in _lines(result.console)
    _check_file_ops(result, busybox_root)
    assert re.search(r": to worker \d \(pid \d+\)", result.server_log), result.server_log[-2000:]


async def test_file_operations_with_cache_fscache(busybox_root):
    """cache=fscache (loose plus the kernel's fscache cookies, with no cache backend
    in the guest) must behave as loose does."""
    result = await boot_script(busybox_root, FILE_OPS, cache="fscache")
    assert "ROOT:9p" in _lines(result.console)
    assert "cache=fscache" in result.console  # ninep-init's mount line
    _check_file_ops(result, busybox_root)


@pytest.mark.parametrize("transport", ["virtio-serial", "tcp", "vsock"])
async def test_file_operations_on_the_9p_root(busybox_root, transport):
    result = await boot_script(busybox_root, FILE_OPS, transport=transport)
    assert f"{ROOT_MOUNTED} " in result.console
    assert "ROOT:9p" in _lines(result.console)
    _check_file_ops(result, busybox_root)


async def test_overlay_keeps_writes_in_the_guest(busybox_root):
    before = sorted(str(p.relative_to(busybox_root)) for p in busybox_root.rglob("*"))
    result = await boot_script(busybox_root, FILE_OPS, overlay=True)
    assert "ninep-init: overlay: tmpfs upper over the read-only 9P root" in result.console
    assert "ROOT:overlay" in _lines(result.console)
    _check_file_ops(result, None, user_xattrs=False)
    after = sorted(str(p.relative_to(busybox_root)) for p in busybox_root.rglob("*"))
    assert after == before and not (busybox_root / "vmtest").exists()


@pytest.mark.parametrize("transport", ["tcp", "virtio-serial"])
async def test_guest_waits_for_a_server_that_starts_late(busybox_root, transport):
    result = await boot_script(busybox_root, "cat /etc/hostname 2>/dev/null; echo LATE:ok",
                               transport=transport, server_wait_for=KERNEL_REACHED_INIT,
                               server_delay=2.0, watch=(KERNEL_REACHED_INIT, ROOT_MOUNTED))
    assert result.exit_status == 0, result.console[-3000:]
    assert "LATE:ok" in _lines(result.console)
    # The guest was up and retrying before the server existed, then mounted.
    retry = ("mount 9p over tcp 10.0.2.100:564" if transport == "tcp"
             else "no 9P server connected on the host yet")
    assert retry in result.console
    assert result.seen[KERNEL_REACHED_INIT] < result.seen[ROOT_MOUNTED]


async def test_guest_gives_up_with_a_clear_panic_when_no_server_comes(busybox_root):
    result = await boot_script(busybox_root, "echo never", transport="tcp",
                               server_wait_for="never printed",
                               timeout=90, extra_append=("ninep.timeout=3",))
    assert result.exit_status is None and not result.timed_out
    assert "ninep-init: panic: no 9P root from tcp://10.0.2.100:564 within 3 s" in result.console
    assert "Kernel panic - not syncing: Attempted to kill init!" in result.console


async def test_init_panics_on_a_prefix_out_of_range_instead_of_shifting_by_it(busybox_root):
    """ninep.ip=A/40 shifted a 32-bit mask by -8 (undefined; found by fuzz/cmdline.py)."""
    result = await boot_script(busybox_root, "echo never", transport="tcp",
                               server_wait_for="never printed", timeout=90,
                               extra_append=("ninep.ip=10.0.2.15/40",))
    assert "ninep-init: panic: bad ninep.ip=10.0.2.15/40: expected A.B.C.D/PREFIX, PREFIX 0..32" \
        in result.console, result.console[-3000:]
    assert result.exit_status is None and not result.timed_out


@pytest.mark.diod
async def test_file_operations_served_by_diod(busybox_root):
    """The launcher's server is pluggable: the same script against diod over TCP."""
    result = await boot_script(busybox_root, FILE_OPS, transport="tcp", server="diod")
    assert f"aname={busybox_root}" in result.console  # diod attaches by export path
    _check_file_ops(result, busybox_root)


def test_diod_below_a_closed_directory_is_refused_up_front(tmp_path):
    assert not tmp_path.parent.stat().st_mode & 0o001  # pytest's tmp dirs are 0700
    with pytest.raises(LaunchError, match="not searchable by others"):
        plan_vm(VmConfig(rootfs=tmp_path / "root", kernel=Path("/boot/vmlinuz"), server="diod"),
                tmp_path, tmp_path / "initrd", "tcg")


# The kernel's own root keys, handled by ninep-init: init= picks what runs, ro mounts
# the root read-only, rootflags= adds 9P mount options; ninep.ip= and ninep.cache= are
# the init's.  The custom init reports what it sees, then powers off.
CUSTOM_INIT = """#!/bin/sh
echo "CUSTOM-INIT:pid=$$"
grep ' / 9p ' /proc/mounts | sed 's/^/ROOTMOUNT:/'
touch /rotest 2>/dev/null && echo "RO:writable" || echo "RO:refused"
ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9./]*\\).*/ADDR:\\1/p'
grep -q "^root:" /etc/passwd && echo "READ:ok"
poweroff -f
"""


async def test_init_ro_rootflags_ip_and_cache_from_the_command_line(busybox_root):
    custom = busybox_root / "sbin/custom-init"
    custom.write_text(CUSTOM_INIT)
    custom.chmod(0o755)
    result = await boot_script(busybox_root, None, transport="tcp", cache="mmap",
                               extra_append=("ro", "init=/sbin/custom-init",
                                             "rootflags=posixacl", "ninep.ip=10.0.2.77/24"))
    lines = _lines(result.console)
    assert "CUSTOM-INIT:pid=1" in lines, result.console[-3000:]
    mount = next(line for line in lines if line.startswith("ROOTMOUNT:"))
    options = mount.split()[3].split(",")
    assert "ro" in options and "mmap" in options and "posixacl" in options, mount  # 6.1 shows the cache mode bare
    assert "RO:refused" in lines and not (busybox_root / "rotest").exists()
    assert "ADDR:10.0.2.77/24" in lines and "READ:ok" in lines
    assert result.qemu_returncode == 0 and not result.timed_out
