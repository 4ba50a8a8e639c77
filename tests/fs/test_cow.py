"""Copy-on-write specifics the conformance suite cannot see: what lands in the upper
directory, that the base never changes, qids across copy-up and restarts, fids that
outlive a copy-up or an unlink, per-aname uppers, crash leftovers."""

import errno
import hashlib
import os
import stat
from pathlib import Path

import pytest
import trio

import ninep.server
from ninep.client import connect
from ninep.fs.backend import Credentials, SetAttr
from ninep.fs.cow import CowFilesystem
from ninep.fs import cowupper
from ninep.protocol.constants import AT_REMOVEDIR, OpenFlags, SetattrMask

from conformance.helpers import list_dir, raises_errno, read_all, walk_to, walked

CREDS = Credentials(None, None)


def tree_digest(root: Path) -> str:
    """Names, types, modes, sizes, link targets and contents of everything below."""
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in sorted(os.walk(root)):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = Path(dirpath) / name
            st = path.lstat()
            h.update(f"{path.relative_to(root)}\0{st.st_mode}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
            if stat.S_ISREG(st.st_mode):
                h.update(path.read_bytes())
            elif stat.S_ISLNK(st.st_mode):
                h.update(os.readlink(path).encode())
    return h.hexdigest()


@pytest.fixture
def base(tmp_path) -> Path:
    b = tmp_path / "base"
    (b / "etc" / "deep" / "er").mkdir(parents=True)
    (b / "etc" / "hostname").write_bytes(b"base\n")
    (b / "etc" / "deep" / "er" / "leaf").write_bytes(b"leaf\n")
    (b / "etc" / "deep" / "x").write_bytes(b"x\n")
    (b / "data").write_bytes(os.urandom(3 << 20))  # copied in a worker thread
    (b / "gone").mkdir()
    (b / "gone" / "child").write_bytes(b"c\n")
    os.symlink("etc/hostname", b / "link")
    os.link(b / "etc" / "hostname", b / "hostname-link")
    return b


@pytest.fixture
def upper(tmp_path) -> Path:
    return tmp_path / "upper"


@pytest.fixture
async def cow(base, upper):
    fs = CowFilesystem(str(base), str(upper))
    yield fs
    await fs.aclose()


@pytest.fixture
async def root(cow):
    r = await cow.attach("", CREDS)
    yield r
    await r.close()


async def names(root, path=""):
    async with walked(root, path, OpenFlags.RDONLY) as d:
        return {e.name for e in await list_dir(d)} - {".", ".."}


def died(fs: CowFilesystem) -> None:
    """What the kernel does for a process that dies: its flock on each upper goes."""
    for fd, _ in fs._upper_locks.values():
        os.close(fd)
    fs._upper_locks.clear()


async def read(root, path):
    async with walked(root, path, OpenFlags.RDONLY) as f:
        return await read_all(f)


async def test_write_copies_up_and_the_base_never_changes(root, base, upper):
    before = tree_digest(base)
    f = await walk_to(root, "etc/hostname")
    qid = f.qid
    await f.open(OpenFlags.RDWR)
    await f.write(0, memoryview(b"GU"))
    await f.close()
    assert (upper / "etc" / "hostname").read_bytes() == b"GUse\n"
    assert (base / "etc" / "hostname").read_bytes() == b"base\n"
    assert tree_digest(base) == before
    again = await walk_to(root, "etc/hostname")
    assert again.qid == qid  # the base's identity survives copy-up
    await again.close()
    # metadata came along; no temporaries are left behind
    assert (upper / "etc" / "hostname").stat().st_mode == (base / "etc" / "hostname").stat().st_mode
    assert os.listdir(upper / ".ninep-cow" / "work") == []


async def test_big_file_copy_up_and_xattrs(root, base, upper):
    os.setxattr(base / "data", "user.kept", b"yes")
    async with walked(root, "data") as f:
        await f.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o600))
    assert (upper / "data").read_bytes() == (base / "data").read_bytes()
    assert os.getxattr(upper / "data", "user.kept") == b"yes"
    assert stat.S_IMODE((upper / "data").stat().st_mode) == 0o600
    async with walked(root, "data") as f:
        assert "user.ninep.origin" not in await f.xattr_list()  # bookkeeping stays hidden
        with raises_errno(errno.EPERM):
            await f.xattr_set("user.ninep.origin", b"12345678", 0)


async def test_fid_opened_before_copy_up_reads_later_writes(root):
    reader = await walk_to(root, "etc/hostname")
    await reader.open(OpenFlags.RDONLY)
    assert bytes(await reader.read(0, 100)) == b"base\n"
    async with walked(root, "etc/hostname", OpenFlags.WRONLY | OpenFlags.TRUNC) as w:
        await w.write(0, memoryview(b"after copy-up\n"))
    assert bytes(await reader.read(0, 100)) == b"after copy-up\n"
    await reader.close()


async def test_unlink_leaves_a_whiteout_and_recreate_drops_it(root, base, upper):
    await root.unlinkat("link", 0)
    etc = await walk_to(root, "etc")
    await etc.unlinkat("hostname", 0)
    assert "hostname" not in await names(root, "etc")
    assert (upper / "etc" / ".wh.hostname").exists() and (base / "etc" / "hostname").exists()
    qids, none = await root.walk(["etc", "hostname"])
    assert len(qids) == 1 and none is None
    new, _ = await etc.create("hostname", OpenFlags.RDWR, 0o644, 0)
    await new.write(0, memoryview(b"new\n"))
    await new.close()
    await etc.close()
    assert not (upper / "etc" / ".wh.hostname").exists()
    assert await read(root, "etc/hostname") == b"new\n"
    with raises_errno(errno.ENOENT):
        await root.walk(["link"])


async def test_rmdir_then_mkdir_is_opaque(root, base, upper):
    gone = await walk_to(root, "gone")
    await gone.unlinkat("child", 0)
    await gone.close()
    await root.unlinkat("gone", AT_REMOVEDIR)
    assert "gone" not in await names(root)
    await root.mkdir("gone", 0o755, 0)
    assert await names(root, "gone") == set()  # the base's "child" stays hidden
    assert (upper / "gone" / ".wh..wh..opq").exists()
    with raises_errno(errno.ENOTEMPTY):
        await root.unlinkat("etc", AT_REMOVEDIR)


async def test_directory_rename_moves_the_merged_tree(root, base, upper):
    before = tree_digest(base)
    leaf = await walk_to(root, "etc/deep/er/leaf")
    leaf_qid = leaf.qid
    await leaf.open(OpenFlags.RDONLY)
    etc = await walk_to(root, "etc")
    await etc.renameat("deep", root, "moved")
    await etc.close()
    assert "deep" not in await names(root, "etc")
    assert await names(root, "moved") == {"er", "x"}
    assert await read(root, "moved/er/leaf") == b"leaf\n"
    again = await walk_to(root, "moved/er/leaf")
    assert again.qid == leaf_qid
    await again.close()
    assert bytes(await leaf.read(0, 10)) == b"leaf\n"  # the open fid moved with it
    async with walked(root, "moved/er/leaf", OpenFlags.WRONLY | OpenFlags.APPEND) as w:
        await w.write(0, memoryview(b"more\n"))
    assert bytes(await leaf.read(0, 20)) == b"leaf\nmore\n"
    await leaf.close()
    assert tree_digest(base) == before
    # renaming back over the whiteout brings it back where it was
    moved = await walk_to(root, "moved")
    etc = await walk_to(root, "etc")
    await moved.rename(etc, "deep")
    await moved.close()
    await etc.close()
    assert await names(root, "etc/deep") == {"er", "x"}


async def test_file_rename_over_a_base_file(root, base, upper):
    etc = await walk_to(root, "etc")
    await etc.renameat("hostname", root, "data")
    await etc.close()
    assert await read(root, "data") == b"base\n"
    assert "hostname" not in await names(root, "etc")
    assert len((base / "data").read_bytes()) == 3 << 20


async def test_hard_links_across_copy_up(root):
    target = await walk_to(root, "etc/deep/x")
    await root.link(target, "x-link")
    await target.close()
    async with walked(root, "x-link", OpenFlags.WRONLY | OpenFlags.APPEND) as w:
        await w.write(0, memoryview(b"via link\n"))
    assert await read(root, "etc/deep/x") == b"x\nvia link\n"
    a, b = await walk_to(root, "etc/deep/x"), await walk_to(root, "x-link")
    assert a.qid == b.qid and (await a.getattr(0)).nlink == 2
    await a.close()
    await b.close()


async def test_base_hard_links_stay_one_file_after_copy_up(root, upper):
    a = await walk_to(root, "etc/hostname")
    b = await walk_to(root, "hostname-link")
    assert a.qid == b.qid  # one inode in the base
    await b.close()
    await a.open(OpenFlags.WRONLY | OpenFlags.APPEND)
    await a.write(0, memoryview(b"both names\n"))
    assert await read(root, "hostname-link") == b"base\nboth names\n"
    b = await walk_to(root, "hostname-link")
    assert a.qid == b.qid
    assert (await b.getattr(0)).nlink == 2  # the index's own name is not counted
    await a.close()
    await b.close()
    assert (upper / "hostname-link").stat().st_ino == (upper / "etc" / "hostname").stat().st_ino


async def test_open_unlinked_files(root, upper):
    w = await walk_to(root, "etc/deep/x")
    await w.open(OpenFlags.RDWR)
    r = await walk_to(root, "etc/deep/er/leaf")
    await r.open(OpenFlags.RDONLY)
    deep = await walk_to(root, "etc/deep")
    await deep.unlinkat("x", 0)
    er = await walk_to(root, "etc/deep/er")
    await er.unlinkat("leaf", 0)
    await w.write(0, memoryview(b"still here"))
    assert bytes(await w.read(0, 100)) == b"still here"
    assert bytes(await r.read(0, 100)) == b"leaf\n"
    # a change to a base-only unlinked file copies it up under no name
    await r.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o600))
    assert stat.S_IMODE((await r.getattr(0)).mode) == 0o600
    assert bytes(await r.read(0, 100)) == b"leaf\n"
    for f in (w, r, deep, er):
        await f.close()
    assert await names(root, "etc/deep/er") == set()
    assert os.listdir(upper / ".ninep-cow" / "work") == []


async def test_a_created_files_fid_and_its_node_share_one_host_file(root, upper):
    """The creating fid's open file is its Node's upper (no second HostFile): its
    clunk must close only the I/O fd, and the Node must go on working for other fids,
    through a rename and an unlink of the open file, with no fd left behind."""
    own = await walk_to(root, "etc")
    await own.mkdir("own", 0o755, 0)
    d = await walk_to(root, "etc/own")
    flags = OpenFlags.RDWR | OpenFlags.CREATE | OpenFlags.EXCL

    async def create(name, how=flags):
        at = await d.clone()
        try:
            return (await at.create(name, how, 0o644, 0))[0]
        finally:
            await at.close()

    def fds() -> int:
        return len(os.listdir("/proc/self/fd"))

    before = fds()
    made = await create("a")
    assert fds() == before + 2  # the file's O_PATH fd and its I/O fd
    await made.write(0, memoryview(b"first"))
    other = await walk_to(root, "etc/own/a")
    await d.renameat("a", d, "b")  # the creating fid is still open
    await made.write(5, memoryview(b"+more"))
    await made.close()
    assert fds() == before + 1  # the Node (held by ``other``) keeps its O_PATH fd
    assert (upper / "etc" / "own" / "b").read_bytes() == b"first+more"
    assert (await other.getattr(0)).size == 10
    await other.open(OpenFlags.RDONLY)
    assert await read_all(other) == b"first+more"
    with raises_errno(errno.EEXIST):
        await create("b")
    reopened = await create("b", OpenFlags.RDWR | OpenFlags.CREATE)
    assert await read_all(reopened) == b"first+more"
    await reopened.close()
    gone = await create("c")
    await d.unlinkat("c", 0)
    await gone.write(0, memoryview(b"nameless"))
    assert bytes(await gone.read(0, 100)) == b"nameless"
    await gone.close()
    await other.close()
    await d.unlinkat("b", 0)
    assert fds() == before
    await d.close()
    await own.close()
    assert os.listdir(upper / "etc" / "own") == []


async def test_reserved_names(root):
    for name in (".wh.x", ".wh..wh..opq"):
        with raises_errno(errno.EPERM):
            await root.mkdir(name, 0o755, 0)
    with raises_errno(errno.ENOENT):
        await root.walk([".ninep-cow"])
    assert ".ninep-cow" not in await names(root)
    sub = await walk_to(root, "etc")
    await sub.mkdir(".ninep-cow", 0o755, 0)  # reserved only at the root
    await sub.close()


async def test_changes_and_qids_persist_across_restarts(base, upper):
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    f = await walk_to(r, "etc/hostname")
    qid = f.qid
    await f.setattr(SetAttr(valid=SetattrMask.SIZE, size=2))
    await f.close()
    await r.unlinkat("data", 0)
    await r.close()
    await fs.aclose()
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    assert await read(r, "etc/hostname") == b"ba"
    assert (await walk_to(r, "etc/hostname")).qid == qid
    assert "data" not in await names(r)
    await r.close()
    await fs.aclose()


async def test_each_aname_gets_its_own_upper(base, tmp_path):
    before = tree_digest(base)
    fs = CowFilesystem(str(base), str(tmp_path / "vms" / "{aname}"))
    one, two = await fs.attach("one", CREDS), await fs.attach("two", CREDS)
    async with walked(one, "etc/hostname", OpenFlags.WRONLY | OpenFlags.TRUNC) as f:
        await f.write(0, memoryview(b"one\n"))
    await two.unlinkat("data", 0)
    assert await read(one, "etc/hostname") == b"one\n"
    assert await read(two, "etc/hostname") == b"base\n"
    assert "data" in await names(one) and "data" not in await names(two)
    assert sorted(os.listdir(tmp_path / "vms")) == ["one", "two"]
    with raises_errno(errno.EINVAL):
        await fs.attach("../escape", CREDS)
    await one.close()
    await two.close()
    await fs.aclose()
    assert tree_digest(base) == before


async def test_throwaway_upper_goes_with_the_last_fid(base, tmp_path):
    fs = CowFilesystem(str(base), None, tmpdir=str(tmp_path))
    r = await fs.attach("guest", CREDS)
    await r.mkdir("scratch", 0o755, 0)
    made = [p for p in tmp_path.iterdir() if p.name.startswith("ninep-cow-guest-")]
    assert len(made) == 1 and (made[0] / "scratch").is_dir()
    await r.close()
    assert not made[0].exists()
    r = await fs.attach("guest", CREDS)
    assert "scratch" not in await names(r)
    # Every identity of one guest (access=client attaches per uid) sees one upper.
    user = await fs.attach("guest", Credentials(1000, 1000))
    await user.mkdir("by-user", 0o755, 0)
    assert "by-user" in await names(r)
    made = [p for p in tmp_path.iterdir() if p.name.startswith("ninep-cow-guest-")]
    assert len(made) == 1
    await user.close()
    assert made[0].exists()  # root's tree still uses it
    await r.close()
    assert not made[0].exists()
    await fs.aclose()


async def test_crash_leftovers(base, upper):
    """A temporary never renamed into place is dropped; a whiteout next to an upper
    entry of the same name (a crash between the two steps) loses to the entry."""
    (upper / ".ninep-cow" / "work").mkdir(parents=True)
    (upper / ".ninep-cow" / "work" / "123.4").write_bytes(b"half a copy")
    (upper / "etc").mkdir()
    (upper / "etc" / "hostname").write_bytes(b"upper\n")
    (upper / "etc" / ".wh.hostname").write_bytes(b"")
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    assert os.listdir(upper / ".ninep-cow" / "work") == []
    assert await read(r, "etc/hostname") == b"upper\n"
    assert await names(r, "etc") == {"hostname", "deep"}
    await r.close()
    await fs.aclose()


async def test_over_the_wire(cow, base, upper):
    before = tree_digest(base)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, cow, ["tcp://127.0.0.1:0"])
        async with connect(server.addresses[0], msize=65536 + 24) as c:
            assert await c.root.read_file("etc/hostname") == b"base\n"
            await c.root.write_file("etc/hostname", b"wire\n")
            await c.root.mkdir("etc/new")
            await c.root.rename("etc/deep", "etc/new/deep")
            await c.root.unlink("gone/child")
            await c.root.rmdir("gone")
            assert await c.root.read_file("etc/new/deep/er/leaf") == b"leaf\n"
            listed = {e.name for e in await c.root.listdir("etc")}
            assert listed == {".", "..", "hostname", "new"}
        server.shutdown()
    assert (upper / "etc" / "hostname").read_bytes() == b"wire\n"
    assert tree_digest(base) == before


def test_upper_markers_are_oci_names():
    assert cowupper.WHITEOUT_PREFIX == ".wh." and cowupper.OPAQUE_MARKER == ".wh..wh..opq"


async def test_kept_listings_follow_every_change(root):
    """Listings and Nodes are kept between fids; each change through the tree drops them."""
    assert await names(root, "etc") == {"hostname", "deep"}
    etc = await walk_to(root, "etc")
    f, _ = await etc.create("new", OpenFlags.WRONLY, 0o644, 0)
    await f.close()
    assert await names(root, "etc") == {"hostname", "deep", "new"}
    await etc.symlink("sl", "new", 0)
    await etc.mkdir("d", 0o755, 0)
    assert await names(root, "etc") == {"hostname", "deep", "new", "sl", "d"}
    await etc.renameat("new", root, "top")
    await etc.unlinkat("hostname", 0)
    assert await names(root, "etc") == {"deep", "sl", "d"}
    assert "top" in await names(root)
    deep = await walk_to(root, "etc/deep")
    await deep.rename(root, "deep2")
    assert await names(root, "etc") == {"sl", "d"}
    async with walked(root, "deep2", OpenFlags.RDONLY) as d:
        entries = {e.name: e for e in await list_dir(d)}
    assert entries[".."].qid == root.qid
    await deep.close()
    await etc.close()


async def test_two_identities_on_one_upper_see_each_other(cow):
    """access=user: one tree per identity over the same upper, without the caches."""
    alice = await cow.attach("", Credentials(None, None))
    assert await names(alice, "etc") == {"hostname", "deep"}
    bob = await cow.attach("", Credentials(0, 0))
    etc = await walk_to(bob, "etc")
    made, _ = await etc.create("by-bob", OpenFlags.WRONLY, 0o644, 0)
    await made.close()
    await etc.close()
    assert await names(alice, "etc") == {"hostname", "deep", "by-bob"}
    await bob.unlinkat("data", 0)
    assert "data" not in await names(alice)
    await alice.close()
    await bob.close()


@pytest.mark.parametrize("step", ["finish_copy", "move_into_place"])
async def test_a_crash_during_copy_up_leaves_the_old_state(base, upper, monkeypatch, step):
    """Stop the copy-up at a step (as a crash would: nothing after it runs), then
    start again on the same upper: the guest sees the base's file, unchanged, and
    the half-made temporary is gone."""
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)

    def crash(*args, **kwargs):
        raise SystemExit("power cut")
    monkeypatch.setattr(cowupper, step, crash)
    monkeypatch.setattr(cowupper, "remove_tree", lambda *a: None)  # a crash cleans nothing
    f = await walk_to(r, "etc/hostname")
    with pytest.raises(SystemExit):
        await f.open(OpenFlags.RDWR)
    monkeypatch.undo()
    # the process "died": drop it without cleanup, leave whatever is on disk
    leftovers = os.listdir(upper / ".ninep-cow" / "work")
    died(fs)
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    assert await read(r, "etc/hostname") == b"base\n"
    assert not (upper / "etc" / "hostname").exists()
    assert os.listdir(upper / ".ninep-cow" / "work") == []
    async with walked(r, "etc/hostname", OpenFlags.WRONLY | OpenFlags.APPEND) as w:
        await w.write(0, memoryview(b"after\n"))
    assert await read(r, "etc/hostname") == b"base\nafter\n"
    await r.close()
    await fs.aclose()
    assert len(leftovers) == 1  # the temporary was there until the restart


async def test_a_crash_between_whiteout_and_unlink_keeps_the_file(base, upper, monkeypatch):
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    async with walked(r, "etc/hostname", OpenFlags.WRONLY | OpenFlags.TRUNC) as w:
        await w.write(0, memoryview(b"copied\n"))
    etc = await walk_to(r, "etc")
    session = next(iter(fs._sessions.values()))

    async def crash(*args):
        raise SystemExit("power cut")
    monkeypatch.setattr(session, "_unlink_upper", crash)
    with pytest.raises(SystemExit):
        await etc.unlinkat("hostname", 0)
    monkeypatch.undo()
    assert (upper / "etc" / ".wh.hostname").exists()  # the whiteout came first ...
    died(fs)
    fs = CowFilesystem(str(base), str(upper))
    r = await fs.attach("", CREDS)
    assert await read(r, "etc/hostname") == b"copied\n"  # ... and the upper entry wins
    await r.close()
    await fs.aclose()


async def test_a_fresh_upper_takes_the_base_roots_metadata(base, tmp_path):
    os.chmod(base, 0o751)
    fs = CowFilesystem(str(base), None, tmpdir=str(tmp_path))  # mkdtemp: 0700
    r = await fs.attach("", CREDS)
    a = await r.getattr(0)
    assert stat.S_IMODE(a.mode) == 0o751 and a.mtime_sec == int(base.stat().st_mtime)
    await r.close()
    await fs.aclose()


async def test_directory_rename_copies_only_the_directory(root, base, upper, cow):
    """A redirect (overlayfs's redirect_dir), not a deep copy: nothing below the moved
    directory is copied up, yet it all shows there, after a restart too."""
    before = tree_digest(base)
    etc = await walk_to(root, "etc")
    await etc.renameat("deep", root, "moved")
    await etc.close()
    assert os.getxattr(upper / "moved", "user.ninep.redirect") == b"etc/deep"
    assert sorted(os.listdir(upper / "moved")) == []  # no data, not even "er"
    assert (upper / "etc" / ".wh.deep").exists()
    assert await names(root, "moved") == {"er", "x"}
    assert await read(root, "moved/er/leaf") == b"leaf\n"
    async with walked(root, "moved") as d:  # bookkeeping stays hidden
        assert "user.ninep.redirect" not in await d.xattr_list()
        with raises_errno(errno.ENODATA):
            await d.xattr_get("user.ninep.redirect")
        with raises_errno(errno.EPERM):
            await d.xattr_set("user.ninep.redirect", b"gone", 0)
    # a directory below one that moved keeps its own base path when it moves too
    moved = await walk_to(root, "moved")
    await moved.renameat("er", root, "er2")
    await moved.close()
    assert os.getxattr(upper / "er2", "user.ninep.redirect") == b"etc/deep/er"
    assert await read(root, "er2/leaf") == b"leaf\n"
    assert await names(root, "moved") == {"x"}
    await root.close()
    await cow.aclose()
    again = CowFilesystem(str(base), str(upper))
    r = await again.attach("", CREDS)
    try:
        assert await names(r, "moved") == {"x"} and await names(r, "er2") == {"leaf"}
        assert "deep" not in await names(r, "etc")
        async with walked(r, "er2/leaf", OpenFlags.WRONLY | OpenFlags.APPEND) as w:
            await w.write(0, memoryview(b"more\n"))
        assert (upper / "er2" / "leaf").read_bytes() == b"leaf\nmore\n"
        assert await read(r, "er2/leaf") == b"leaf\nmore\n"
    finally:
        await r.close()
        await again.aclose()
    assert tree_digest(base) == before


async def test_a_moved_directory_keeps_its_base_when_its_new_parent_moves(root):
    """Open fids below a redirected directory inside a directory of the guest's own:
    moving that parent (which has no base) must not cut them off from the base."""
    await root.mkdir("mine", 0o755, 0)
    etc = await walk_to(root, "etc")
    mine = await walk_to(root, "mine")
    await etc.renameat("deep", mine, "deep")
    held = await walk_to(root, "mine/deep")  # keeps the Node (and its base) alive
    await root.renameat("mine", root, "other")
    assert await names(root, "other/deep") == {"er", "x"}
    assert await read(root, "other/deep/er/leaf") == b"leaf\n"
    for f in (held, mine, etc):
        await f.close()


async def test_a_directory_renamed_over_an_emptied_base_directory(root, upper):
    """The target's base contents (deleted) stay hidden: the redirect, not the new
    name, says which base directory shows through."""
    gone = await walk_to(root, "gone")
    await gone.unlinkat("child", 0)
    await gone.close()
    etc = await walk_to(root, "etc")
    await etc.renameat("deep", root, "gone")
    await etc.close()
    assert await names(root, "gone") == {"er", "x"}
    assert os.getxattr(upper / "gone", "user.ninep.redirect") == b"etc/deep"


async def test_one_process_per_upper(base, upper):
    """A second server (another ninepd, another --workers process: here another
    CowFilesystem) attaching an upper in use gets EBUSY; once the first lets go of it
    the second attaches. Within one server every identity shares the upper."""
    first, second = CowFilesystem(str(base), str(upper)), CowFilesystem(str(base), str(upper))
    r1 = await first.attach("", CREDS)
    r1b = await first.attach("", Credentials(1000, 1000))  # another identity, same process
    with raises_errno(errno.EBUSY):
        await second.attach("", CREDS)
    await r1.close()
    with raises_errno(errno.EBUSY):
        await second.attach("", CREDS)  # still held: one tree is attached
    await r1b.close()
    r2 = await second.attach("", CREDS)
    assert await read(r2, "etc/hostname") == b"base\n"
    await r2.close()
    await first.aclose()
    await second.aclose()


async def test_the_tree_lock_serializes_and_hands_over_in_order():
    from ninep.fs.cowtree import TreeLock
    lock, inside, order = TreeLock(), [], []

    async def holder(name):
        async with lock:
            inside.append(name)
            assert len(inside) == 1
            order.append(name)
            await trio.sleep(0.01)
            inside.remove(name)

    async with trio.open_nursery() as nursery:
        for name in "abc":
            nursery.start_soon(holder, name)
            await trio.sleep(0.001)  # queued in this order
        with trio.CancelScope() as scope:  # a waiter cancelled in the queue gives up its turn
            scope.cancel()
            await holder("never")
    assert order == ["a", "b", "c"]
    assert not lock.locked()
