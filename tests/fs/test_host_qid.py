"""qid.path stays unique when the export spans host filesystems."""

import os
import subprocess

import pytest

from conformance.helpers import walk_to
from ninep.fs.hostqid import HOST_QID_VERSION, QidMapper
from ninep.protocol.constants import QidType


def test_first_device_maps_inode_directly_and_next_gets_own_index():
    m = QidMapper()
    assert m.path(dev=7, ino=42) == 42
    assert m.path(dev=9, ino=42) == (1 << 48) | 42
    assert m.path(dev=7, ino=42) == 42  # stable


def test_overflowing_inodes_and_devices_stay_unique():
    m = QidMapper()
    huge = (1 << 60) + 5
    paths = {m.path(1, huge), m.path(1, huge + 1), m.path(1, 5)}
    for dev in range(2, 0x10005):  # more devices than index slots
        paths.add(m.path(dev, 5))
    assert len(paths) == 3 + 0x10003
    assert m.path(1, huge) == m.path(1, huge)
    assert m.path(0x10004, 5) >> 48 == 0xFFFF  # from the fallback table


def test_qid_type_and_version():
    m = QidMapper()
    assert m.qid(0o040755, 1, 2).type == QidType.DIR
    assert m.qid(0o120777, 1, 3).type == QidType.SYMLINK
    assert m.qid(0o100644, 1, 4).type == QidType.FILE
    # One constant, never 0 (Linux 6.4+ would then bypass its page cache).
    assert {m.qid(mode, 1, 5).version for mode in (0o040755, 0o100644)} == {HOST_QID_VERSION}
    assert HOST_QID_VERSION != 0


@pytest.fixture
def tmpfs_inside(export):
    mountpoint = export / "mnt"
    mountpoint.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "none", str(mountpoint)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.mark.root
async def test_qids_unique_across_a_mount(root, export, tmpfs_inside):
    # Make inode numbers that collide across the two filesystems likely: many files each.
    for i in range(50):
        (export / "d" / f"x{i}").write_bytes(b"")
        (tmpfs_inside / f"x{i}").write_bytes(b"")
    seen = {}
    for directory in ("d", "mnt"):
        for i in range(50):
            f = await walk_to(root, f"{directory}/x{i}")
            st = os.lstat(export / directory / f"x{i}")
            seen[(st.st_dev, st.st_ino)] = f.qid.path
            await f.close()
    assert len(set(seen.values())) == len(seen) == 100
    mnt = await walk_to(root, "mnt")
    up_qids, up = await mnt.walk([".."])
    assert up_qids[0].path == root.qid.path  # ".." from the mount's root is the export
    assert mnt.qid.path >> 48 != root.qid.path >> 48
    await up.close()
    await mnt.close()


def test_device_base_agrees_with_path():
    m = QidMapper()
    for dev in (3, 8, 3):
        base = m.device_base(dev)
        assert base is not None and all(m.path(dev, ino) == base | ino for ino in (1, 99, 2**48 - 1))
    for dev in range(100, 100 + 0xFFFF):  # fill every index slot
        m.path(dev, 1)
    assert m.device_base(10**9) is None  # past the index slots: fallback table
