"""Debian (debootstrap minbase + systemd + udev) boots its real systemd over the 9P root.

The first run debootstraps from deb.debian.org and caches a tarball under
~/.cache/ninep; later runs extract it (seconds).  The marker unit in the image
prints a line once multi-user.target is reached and powers the guest off.
"""

import re

import pytest

from ninep.vm.rootfs import BOOT_MARKER, build_debian_rootfs
from ninep.vm.testing import KERNEL_REACHED_INIT, ROOT_MOUNTED, boot_script

pytestmark = [pytest.mark.vm, pytest.mark.debian]
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture(scope="module")
def debian_root(tmp_path_factory):
    return build_debian_rootfs(tmp_path_factory.mktemp("debian") / "root")


SOURCES = {"tcp": "tcp://10.0.2.100:564", "virtio-serial": "virtio-serial://ninep",
           "vsock": "vsock://2:564"}


# Every transport: systemd reaches multi-user, then the marker unit powers the guest
# off, and systemd-shutdown must get all the way to "Power down" (over virtio-serial
# it used to hang in its final kill phase: docs/diskless-boot.md).
@pytest.mark.timeout(1200)  # a cold cache means a debootstrap first
@pytest.mark.parametrize("transport", sorted(SOURCES))
async def test_debian_systemd_reaches_multi_user_over_9p(debian_root, transport):
    result = await boot_script(debian_root, None, transport=transport, timeout=240,
                               extra_append=("ninep.marker=1",))
    console = ANSI_ESCAPE.sub("", result.console)
    assert not result.timed_out, console[-4000:]
    assert KERNEL_REACHED_INIT in console
    assert f"{ROOT_MOUNTED} {SOURCES[transport]} on /newroot" in console
    assert re.search(r"systemd\[1\]: systemd 252.* running in system mode", console), console[-4000:]
    assert "Reached target multi-user.target - Multi-User System." in console
    assert BOOT_MARKER in console.splitlines()
    assert "Failed to start" not in console, [l for l in console.splitlines() if "Failed" in l]
    assert "systemd-shutdown[1]: Sending SIGKILL to remaining processes..." in console
    assert "systemd-shutdown[1]: Syncing filesystems and block devices." in console
    assert "reboot: Power down" in console and result.qemu_returncode == 0
