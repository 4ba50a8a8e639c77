"""Cheaper host syscalls where the answer is the same: fstat when btime is not asked
for, no stat of a walk's starting point unless "." or the root's ".." needs its qid."""

import os

from ninep.protocol.constants import GetattrMask


async def test_getattr_without_btime_uses_fstat_and_says_so(root, export):
    (export / "file").write_bytes(b"12345")
    _, f = await root.walk(["file"])
    try:
        basic = await f.getattr(int(GetattrMask.BASIC))
        full = await f.getattr(int(GetattrMask.ALL))
        st = os.lstat(export / "file")
        assert basic.valid & GetattrMask.BTIME == 0 and basic.btime_sec == 0
        for attr in (basic, full):
            assert attr.valid & GetattrMask.BASIC == GetattrMask.BASIC
            assert (attr.size, attr.mode, attr.nlink, attr.uid) == (5, st.st_mode, 1, st.st_uid)
            assert attr.mtime_sec * 10**9 + attr.mtime_nsec == st.st_mtime_ns
            assert attr.ctime_sec * 10**9 + attr.ctime_nsec == st.st_ctime_ns
            assert attr.qid == basic.qid
        if full.valid & GetattrMask.BTIME:  # where the host filesystem records it
            assert full.btime_sec > 0
    finally:
        await f.close()


async def test_walk_dot_and_dotdot_qids(root, export):
    qids, d = await root.walk(["d"])
    try:
        dot_qids, same = await d.walk(["."])
        assert dot_qids == qids and same.qid == d.qid
        await same.close()
        up_qids, up = await d.walk(["..", ".", "d", "f"])
        assert up_qids[0] == up_qids[1] == root.qid and up_qids[2] == qids[0]
        await up.close()
        at_root, still_root = await root.walk([".."])
        assert at_root == [root.qid] and still_root.qid == root.qid
        await still_root.close()
    finally:
        await d.close()
