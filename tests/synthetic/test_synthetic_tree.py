"""Synthetic trees through the backend contract: walks, reads, metadata, sessions."""

from __future__ import annotations

import errno
import os
import stat

import pytest
import trio

from ninep.fs.backend import SetAttr
from ninep.fs.synthetic import (
    ControlFile, Directory, DynamicDirectory, GeneratedFile, StaticFile, Symlink, as_filesystem,
)
from ninep.protocol.constants import DirentType, OpenFlags, QidType, SetattrMask

from synthetic_helpers import attach, list_dir, read_all, walk, write_to


def sample_tree(log: list[bytes]) -> Directory:
    return Directory({
        "hello": StaticFile(b"hi\n"),
        "sub": {"deeper": {"leaf": "leaf\n"}},
        "count": GeneratedFile(lambda: f"{len(log)}\n"),
        "ctl": ControlFile(on_write=log.append),
        "link": Symlink("sub/deeper/leaf"),
    })


async def test_static_read_and_walk_through_dict_shorthand():
    root = await attach(sample_tree([]))
    assert await read_all(root, "hello") == b"hi\n"
    assert await read_all(root, "sub/deeper/leaf") == b"leaf\n"
    assert await read_all(root, "sub/deeper/../../hello") == b"hi\n"
    assert await read_all(root, "../../hello") == b"hi\n"  # ".." at the root stays there


async def test_walk_errors_first_name_raises_later_names_stop_short():
    root = await attach(sample_tree([]))
    with pytest.raises(OSError) as failure:
        await root.walk(["missing"])
    assert failure.value.errno == errno.ENOENT
    qids, file = await root.walk(["sub", "missing", "x"])
    assert file is None and len(qids) == 1 and qids[0].type == QidType.DIR
    qids, file = await root.walk(["hello", "x"])
    assert file is None and len(qids) == 1
    with pytest.raises(OSError) as failure:
        await root.walk(["a/b"])
    assert failure.value.errno == errno.ENOENT


async def test_qids_unique_stable_and_versions_follow_content():
    log: list[bytes] = []
    tree = sample_tree(log)
    root = await attach(tree)
    first = await walk(root, "hello")
    again = await walk(root, "hello")
    assert first.qid == again.qid and first.qid.version == 0
    paths = {(await walk(root, name)).qid.path for name in ("hello", "sub", "count", "ctl", "link", "")}
    assert len(paths) == 6
    count = await walk(root, "count")
    before = (await count.getattr(0)).qid.version
    await read_all(root, "count")
    assert (await count.getattr(0)).qid.version != before
    tree["hello"].data = b"changed\n"
    assert (await first.getattr(0)).qid.version == 1
    assert (await first.getattr(0)).size == len(b"changed\n")


async def test_generated_content_is_snapshotted_per_open():
    counter = iter(range(1000))
    tree = Directory({"n": GeneratedFile(lambda: f"{next(counter):04d}" * 100)})
    root = await attach(tree)
    file = await walk(root, "n")
    await file.open(OpenFlags.RDONLY)
    head = await file.read(0, 10)
    other = await read_all(root, "n")  # another open regenerates...
    tail = await file.read(390, 100)  # ...but this open keeps its snapshot
    assert head == b"0000000000" and tail == b"0000000000" and other.startswith(b"0001")
    await file.close()


async def test_generated_refresh_on_read_regenerates_at_offset_zero():
    values = iter(["a" * 10, "b" * 10])
    tree = Directory({"v": GeneratedFile(lambda: next(values), refresh="read")})
    root = await attach(tree)
    file = await walk(root, "v")
    await file.open(OpenFlags.RDONLY)
    assert await file.read(0, 4) == b"aaaa"
    assert await file.read(4, 100) == b"aaaaaa"
    assert await file.read(0, 4) == b"bbbb"
    await file.close()


async def test_async_generator_and_context_argument():
    async def whoami(ctx):
        await trio.sleep(0)
        return f"session {ctx.session.id} flags {ctx.flags}\n"

    root = await attach(Directory({"who": GeneratedFile(whoami)}))
    assert await read_all(root, "who") == b"session 1 flags 0\n"


async def test_control_file_calls_handler_and_reply_is_readable():
    seen = []

    def command(data, ctx):
        seen.append(data)
        return f"ok {data.decode().strip()}\n"

    tree = Directory({"ctl": ControlFile(on_write=command, on_read=lambda: "idle\n")})
    root = await attach(tree)
    ctl = await walk(root, "ctl")
    mtime_before = (await ctl.getattr(0)).mtime_sec, (await ctl.getattr(0)).mtime_nsec
    await ctl.open(OpenFlags.RDWR)
    assert await ctl.read(0, 100) == b"idle\n"
    assert await ctl.write(0, memoryview(b"start 3\n")) == 8
    assert await ctl.read(0, 100) == b"ok start 3\n"
    assert seen == [b"start 3\n"]
    attr = await ctl.getattr(0)
    assert (attr.mtime_sec, attr.mtime_nsec) > mtime_before and attr.qid.version == 1
    await ctl.close()


async def test_control_file_accepts_shell_truncation_and_maps_valueerror():
    def strict(data):
        if data != b"go\n":
            raise ValueError("unknown command")

    root = await attach(Directory({"ctl": ControlFile(on_write=strict)}))
    ctl = await walk(root, "ctl")
    await ctl.setattr(SetAttr(valid=SetattrMask.SIZE, size=0))  # `echo go > ctl` does this
    assert await write_to(root, "ctl", b"go\n", OpenFlags.WRONLY | OpenFlags.TRUNC) == 3
    with pytest.raises(OSError) as failure:
        await write_to(root, "ctl", b"stop\n")
    assert failure.value.errno == errno.EINVAL
    with pytest.raises(OSError) as failure:  # no on_read: write-only
        await read_all(root, "ctl")
    assert failure.value.errno == errno.EACCES


async def test_read_only_nodes_refuse_writes_and_mutations():
    root = await attach(sample_tree([]))
    hello = await walk(root, "hello")
    for flags in (OpenFlags.WRONLY, OpenFlags.RDWR, OpenFlags.RDONLY | OpenFlags.TRUNC):
        with pytest.raises(OSError) as failure:
            await hello.open(flags)
        assert failure.value.errno == errno.EROFS
    with pytest.raises(OSError) as failure:
        await root.open(OpenFlags.WRONLY)
    assert failure.value.errno == errno.EISDIR
    for attempt in (root.mkdir("d", 0o755, 0), root.create("f", 0, 0o644, 0),
                    root.unlinkat("hello", 0), root.symlink("s", "t", 0)):
        with pytest.raises(OSError) as failure:
            await attempt
        assert failure.value.errno == errno.EROFS
    with pytest.raises(OSError) as failure:
        await hello.setattr(SetAttr(valid=SetattrMask.MODE, mode=0o777))
    assert failure.value.errno == errno.EPERM


async def test_metadata_defaults_and_overrides():
    tree = Directory({"own": StaticFile(b"x", mode=0o600, uid=12, gid=34, mtime=1_000_000.5),
                      "plain": StaticFile(b"abc"), "link": Symlink("plain"), "d": {}})
    root = await attach(tree)
    own = await (await walk(root, "own")).getattr(0)
    assert (own.mode, own.uid, own.gid) == (stat.S_IFREG | 0o600, 12, 34)
    assert (own.mtime_sec, own.mtime_nsec) == (1_000_000, 500_000_000)
    plain = await (await walk(root, "plain")).getattr(0)
    assert (plain.uid, plain.gid, plain.size) == (os.getuid(), os.getgid(), 3)
    link = await walk(root, "link")
    assert stat.S_ISLNK((await link.getattr(0)).mode) and await link.readlink() == "plain"
    top = await root.getattr(0)
    assert stat.S_ISDIR(top.mode) and top.nlink == 3  # ".", "..", and d's ".."
    assert (await (await walk(root, "d")).getattr(0)).qid.type == QidType.DIR


async def test_readdir_lists_dot_dotdot_and_entries_with_types():
    root = await attach(sample_tree([]))
    entries = await list_dir(root)
    assert list(entries) == [".", "..", "hello", "sub", "count", "ctl", "link"]
    assert entries["sub"].type == DirentType.DIR and entries["link"].type == DirentType.LNK
    assert entries["hello"].qid == (await walk(root, "hello")).qid
    sub_entries = await list_dir(root, "sub")
    assert sub_entries[".."].qid == root.qid


async def test_read_on_directory_and_readdir_on_file_fail():
    root = await attach(sample_tree([]))
    await root.open(OpenFlags.RDONLY)
    with pytest.raises(OSError) as failure:
        await root.read(0, 10)
    assert failure.value.errno == errno.EISDIR
    hello = await walk(root, "hello")
    await hello.open(OpenFlags.RDONLY)
    with pytest.raises(OSError) as failure:
        await hello.readdir(0, 100)
    assert failure.value.errno == errno.ENOTDIR


async def test_dynamic_directory_lists_and_looks_up_on_demand():
    items = {"a": StaticFile(b"A")}
    tree = Directory({"dyn": DynamicDirectory(lambda: items)})
    root = await attach(tree)
    assert set(await list_dir(root, "dyn")) == {".", "..", "a"}
    items["b"] = StaticFile(b"B")
    assert await read_all(root, "dyn/b") == b"B"
    del items["a"]
    qids, file = await root.walk(["dyn", "a"])
    assert file is None and len(qids) == 1
    assert set(await list_dir(root, "dyn")) == {".", "..", "b"}


async def test_dynamic_directory_custom_lookup_and_decorators():
    tree = Directory()

    @tree.directory("squares", lookup=lambda name: str(int(name) ** 2) if name.isdigit() else None)
    def squares():
        return {str(n): str(n * n) for n in range(3)}

    @tree.file("greeting")
    async def greeting(ctx):
        return f"hello {ctx.session.aname or 'anonymous'}\n"

    root = await attach(tree)
    assert await read_all(root, "squares/12") == b"144"
    assert set(await list_dir(root, "squares")) == {".", "..", "0", "1", "2"}
    assert await read_all(root, "greeting") == b"hello anonymous\n"


async def test_sessions_live_until_last_fid_closes():
    ended = []
    tree = Directory({"f": b"x"})
    fs = as_filesystem(tree)
    root = await fs.attach("guest", None)  # type: ignore[arg-type]
    session = root.session
    session.on_close.append(lambda s: ended.append(s.id))
    child = await walk(root, "f")
    assert fs.sessions == {session.id: session}
    await root.close()
    assert not ended and session.id in fs.sessions
    await child.close()
    assert ended == [session.id] and not fs.sessions
    assert session.stats["walks"] == 1


def test_as_filesystem_accepts_trees_factories_and_filesystems():
    tree = Directory({"a": b"x"})
    assert as_filesystem(tree) is tree.filesystem is as_filesystem(tree)
    made = as_filesystem(lambda: tree)
    assert made is tree.filesystem
    assert as_filesystem(made) is made
    assert as_filesystem({"b": b"y"}).root["b"].data == b"y"
    with pytest.raises(TypeError):
        as_filesystem(42)
    with pytest.raises(ValueError):
        Directory({"a/b": b""})


async def test_directory_is_itself_an_export():
    tree = Directory({"a": b"x"})
    root = await tree.attach("", None)  # type: ignore[arg-type]
    assert await read_all(root, "a") == b"x"


async def test_callback_context_detection():
    from ninep.fs.synthetic.node import callback

    assert await callback(lambda: 1, 0)("ctx") == 1
    assert await callback(lambda ctx: ctx, 0)("ctx") == "ctx"
    assert await callback(lambda bound=7: bound, 0)("ctx") == 7  # defaults bind, not receive
    assert await callback(lambda data: data, 1)(b"d", "ctx") == b"d"
    assert await callback(lambda data, ctx: (data, ctx), 1)(b"d", "ctx") == (b"d", "ctx")
    assert await callback(len, 1)(b"abc", "ctx") == 3  # no signature: never a context

    async def later(ctx):
        return ctx

    assert await callback(later, 0)("ctx") == "ctx"


async def test_zero_versions_option_reports_version_zero_everywhere():
    from ninep.fs.synthetic import SyntheticFilesystem

    tree = Directory({"n": GeneratedFile(lambda: "x"), "ctl": ControlFile(on_write=print)})
    fs = SyntheticFilesystem(tree, zero_versions=True)
    assert tree.filesystem is fs and as_filesystem(tree) is fs
    root = await fs.attach("", None)  # type: ignore[arg-type]
    await read_all(root, "n")
    await read_all(root, "n")
    qids, n = await root.walk(["n"])
    attr = await n.getattr(0)
    assert qids[0].version == n.qid.version == attr.qid.version == attr.data_version == 0
    assert tree["n"].version == 2  # the node still counts; only the wire says 0
    assert {d.qid.version for d in (await list_dir(root)).values()} == {0}
    default_root = await attach(Directory({"n": GeneratedFile(lambda: "x")}))
    await read_all(default_root, "n")
    assert (await walk(default_root, "n")).qid.version == 1  # without the option
