"""A client that tries to make ninepd hold hundreds of MiB gets errnos, and the
process's resident memory stays flat: ninepd as a subprocess with its default limits,
measured from /proc/PID/status (VmRSS)."""

import dataclasses
import errno
import struct
import subprocess
from pathlib import Path

import trio

from ninep.protocol import messages as m
from ninep.protocol.constants import LockStatus, LockType, OpenFlags

from test_server_cli import NINEPD, REPO, connect_when_up, free_port, reaped

XATTR = 65536  # the largest value Linux sends
ATTEMPTS = 3200  # x 64 KiB: 200 MiB of xattr values offered
LOCK_ATTEMPTS = 40000  # beyond the default max_locks (32768)
BATCH = 100
MiB = 1 << 20


def start_ninepd(tmp_path: Path, **popen) -> tuple[subprocess.Popen, int, Path]:
    """ninepd with its defaults exporting a one-file directory, logging to a file:
    (process, port, log path)."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "f").write_bytes(b"x")
    port = free_port()
    log_path = tmp_path / "log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [*NINEPD, "--export", str(tmp_path / "export"), "--listen", f"tcp://127.0.0.1:{port}"],
            cwd=REPO, stderr=log, stdin=subprocess.DEVNULL, **popen)
    return process, port, log_path


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def exchange(peer, msgs) -> list:
    """Send ``msgs`` pipelined (tags 0..n-1 are set here) and return their replies in
    the same order, whatever order they come back in."""
    msgs = [dataclasses.replace(msg, tag=i) for i, msg in enumerate(msgs)]
    await peer.send(*msgs)
    got = {}
    for _ in msgs:
        reply = await peer.recv()
        got[reply.tag] = reply
    return [got[i] for i in range(len(msgs))]


async def push_xattrs(peer) -> tuple[int, int]:
    """Offer ATTEMPTS pending 64 KiB values, each sent in full whatever the answer;
    clunk the refused ones (so fds are not what runs out). (accepted, refused)."""
    accepted = refused = 0
    for first in range(0, ATTEMPTS, BATCH):
        fids = range(10 + first, 10 + first + BATCH)
        walks = await exchange(peer, [m.Twalk(0, 0, fid, ("f",)) for fid in fids])
        assert all(isinstance(walk, m.Rwalk) for walk in walks), walks
        creates = await exchange(peer, [m.Txattrcreate(0, fid, f"user.v{fid}", XATTR, 0)
                                        for fid in fids])
        writes = await exchange(peer, [m.Twrite(0, fid, 0, bytes([fid % 251]) * XATTR)
                                       for fid in fids])
        refused_fids = []
        for fid, create, write in zip(fids, creates, writes):
            if isinstance(create, m.Rxattrcreate):
                assert write == m.Rwrite(write.tag, XATTR)
                accepted += 1
            else:
                assert create == m.Rlerror(create.tag, errno.EDQUOT), create
                assert write == m.Rlerror(write.tag, errno.EBADF), write  # not held
                refused_fids.append(fid)
                refused += 1
        clunks = await exchange(peer, [m.Tclunk(0, fid) for fid in refused_fids])
        assert all(isinstance(clunk, m.Rclunk) for clunk in clunks), clunks
    return accepted, refused


async def pile_up_locks(peer) -> tuple[int, int]:
    granted = refused = 0
    for first in range(0, LOCK_ATTEMPTS, BATCH * 10):
        for reply in await exchange(peer, [m.Tlock(0, 1, LockType.WRLCK, 0, 4 * i, 2, 1, "hog")
                                           for i in range(first, first + BATCH * 10)]):
            if isinstance(reply, m.Rlock) and reply.status == LockStatus.SUCCESS:
                granted += 1
            else:
                assert reply == m.Rlerror(reply.tag, errno.ENOLCK), reply
                refused += 1
    return granted, refused


async def test_rss_stays_flat_while_a_client_piles_up_xattrs_and_locks(tmp_path):
    process, port, log_path = start_ninepd(tmp_path)
    with reaped(process):
        peer = await connect_when_up(process, port)
        await peer.start(msize=1 << 20)
        assert isinstance(await peer.rpc(m.Twalk(1, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(2, 1, OpenFlags.RDWR)), m.Rlopen)
        # Warm up what any client would cause (buffers at msize, the first frames).
        await peer.rpc(m.Twrite(3, 1, 0, b"y" * XATTR))
        await peer.rpc(m.Tlock(4, 1, LockType.WRLCK, 0, 1 << 40, 1, 9, "warm"))
        before = rss(process.pid)

        with trio.fail_after(300):
            accepted, refused = await push_xattrs(peer)
        assert (accepted, refused) == (16, ATTEMPTS - 16)  # 1 MiB of 64 KiB values
        after_xattrs = rss(process.pid)

        with trio.fail_after(300):
            granted, refused = await pile_up_locks(peer)
        assert granted == 32768 - 1 and refused == LOCK_ATTEMPTS - granted  # the warm-up's
        after_locks = rss(process.pid)
        # Still serving, and the client gets its room back by letting go.
        assert await peer.rpc(m.Tlock(6, 1, LockType.UNLCK, 0, 0, 0, 1, "hog")) == \
            m.Rlock(6, LockStatus.SUCCESS)
        assert await peer.rpc(m.Tlock(7, 1, LockType.WRLCK, 0, 4, 2, 1, "hog")) == \
            m.Rlock(7, LockStatus.SUCCESS)
        await peer.stream.aclose()
        process.terminate()
        assert process.wait(timeout=30) == 0
    growth = after_locks - before
    print(f"VmRSS {before / MiB:.1f} MiB -> {after_xattrs / MiB:.1f} after 200 MiB of xattrs "
          f"offered -> {after_locks / MiB:.1f} after {LOCK_ATTEMPTS} locks asked")
    assert after_xattrs - before < 12 * MiB, (before, after_xattrs)
    assert growth < 20 * MiB, (before, after_xattrs, after_locks)
    text = log_path.read_text()
    assert "refused (xattr limit)" in text and "refused (lock limit)" in text, text
    assert text.count("refused (") <= 12, text  # rate-limited: a few lines, not thousands


async def test_rss_stays_flat_while_clients_announce_big_frames_they_never_send(tmp_path):
    """A frame's own buffer is made once a quarter of it has come: 100 connections
    that each announce a 1 MiB Twrite and send 1,000 bytes of it cost ~100 KiB, where
    the whole announced frames (100 MiB) used to be allocated up front."""
    process, port, _ = start_ninepd(tmp_path)
    with reaped(process):
        first = await connect_when_up(process, port)
        await first.start(msize=1 << 20)
        await first.rpc(m.Twrite(1, 0, 0, b"y" * XATTR))  # (fails: fid 0 is not open)
        before = rss(process.pid)
        size = (1 << 20) - 100
        head = struct.pack("<IBHIQI", size, 118, 1, 0, 0, size - 23)
        peers = []
        for _ in range(100):
            peer = await connect_when_up(process, port)
            await peer.start(msize=1 << 20)
            await peer.stream.send_all(head + b"x" * 1000)
            peers.append(peer)
        # Served meanwhile, and each announced frame is still waited for.
        assert isinstance(await first.rpc(m.Tgetattr(2, 0, 0x7FF)), m.Rgetattr)
        await trio.sleep(0.5)
        after = rss(process.pid)
        for peer in (first, *peers):
            await peer.stream.aclose()
        process.terminate()
        assert process.wait(timeout=30) == 0
    print(f"VmRSS {before / MiB:.1f} MiB -> {after / MiB:.1f} MiB with 100 MiB of frames announced")
    assert after - before < 16 * MiB, (before, after)


async def test_a_fid_hog_leaves_fds_for_accept_and_other_clients(tmp_path):
    """ninepd with 512 fds: one client walking fids gets ENFILE before the fd table is
    full, and a new client is still accepted and served (before, the hog took every
    fd, accept() failed with EMFILE in a loop, and the new client hung)."""
    import resource

    process, port, log_path = start_ninepd(
        tmp_path, preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (512, 512)))
    with reaped(process):
        hog = await connect_when_up(process, port)
        await hog.start()
        walks = []
        for first in range(1, 1001, BATCH):
            walks += await exchange(hog, [m.Twalk(0, 0, fid, ("f",)) for fid in range(first, first + BATCH)])
        granted = sum(isinstance(w, m.Rwalk) for w in walks)
        refused = [w for w in walks if not isinstance(w, m.Rwalk)]
        assert 0 < granted < 256, granted
        assert all(w == m.Rlerror(w.tag, errno.ENFILE) for w in refused), set(refused)
        other = await connect_when_up(process, port)
        with trio.fail_after(10):
            await other.start()
            assert isinstance(await other.rpc(m.Twalk(1, 0, 1, ("f",))), m.Rwalk)
            assert isinstance(await other.rpc(m.Tgetattr(2, 1, 0x7FF)), m.Rgetattr)
        await hog.stream.aclose()
        await other.stream.aclose()
        process.terminate()
        assert process.wait(timeout=30) == 0
    text = log_path.read_text()
    assert "refused (process fid limit)" in text and "accept:" not in text, text
