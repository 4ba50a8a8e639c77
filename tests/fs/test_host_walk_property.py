"""Property: whatever names a client walks, the File it gets is inside the export."""

import os

import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.fs.backend import Credentials
from ninep.fs.host import HostFilesystem

NAMES = st.sampled_from(["..", ".", "a", "b", "up", "abs", "f", "x/y", "", "a\0", "missing"])


def make_export(base):
    export = base / "export"
    (export / "a" / "b").mkdir(parents=True)
    (export / "f").write_bytes(b"")
    (base / "outside").mkdir(exist_ok=True)
    os.symlink("../..", export / "a" / "up")
    os.symlink(str(base / "outside"), export / "abs")
    os.symlink("../../outside", export / "a" / "b" / "up")
    return export


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(walks=st.lists(st.lists(NAMES, min_size=1, max_size=8), min_size=1, max_size=4))
def test_walks_never_leave_the_export(tmp_path_factory, walks):
    export = make_export(tmp_path_factory.mktemp("walk"))
    real_root = os.path.realpath(export)

    async def main():
        fs = HostFilesystem(str(export))
        root = await fs.attach("", Credentials(None, None))
        current = root
        for names in walks:  # each walk starts where the previous complete one ended
            try:
                qids, new = await current.walk(names)
            except OSError:
                continue
            assert len(qids) <= len(names)
            if new is None:
                continue
            where = os.readlink(f"/proc/self/fd/{new._node.fd}")
            assert where == real_root or where.startswith(real_root + "/"), (names, where)
            if current is not root:
                await current.close()
            current = new
        if current is not root:
            await current.close()
        await root.close()
        await fs.aclose()

    trio.run(main)
