"""ninepd --workers N: connections spread over processes, one lock table for all.

Connections go to the worker with the fewest, lowest index first, so the first client
lands on worker 0 and the second on worker 1: the lock tests below really cross
processes (each asserts so from the supervisor's log)."""

import os
import re
import signal
import subprocess
import time

import trio

from ninep.protocol import messages as m
from ninep.protocol.constants import Errno, LockFlags, LockStatus, LockType

from test_server_cli import NINEPD, REPO, connect_when_up, free_port, reaped

WR, UN = LockType.WRLCK, LockType.UNLCK


def start_workers(root, log_path, *extra):
    port = free_port()
    log = open(log_path, "w")
    process = subprocess.Popen(
        [*NINEPD, "--export", str(root), "--listen", f"tcp://127.0.0.1:{port}", "--workers", "2",
         "--log-level", "debug", *extra], cwd=REPO, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    return process, port


def worker_pids(log_path) -> dict[int, int]:
    """worker index -> pid, the latest start of each, from the supervisor's log."""
    return {int(i): int(pid) for i, pid in
            re.findall(r"worker (\d+): pid (\d+)", log_path.read_text())}


def placements(log_path) -> list[int]:
    """The worker each connection went to, in order."""
    return [int(i) for i in re.findall(r": to worker (\d+) ", log_path.read_text())]


async def open_locked_file(peer, name="f"):
    """fid 1 = ``name`` opened read-write (tags 2-3)."""
    assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, (name,))), m.Rwalk)
    assert isinstance(await peer.rpc(m.Tlopen(3, 1, 0o2)), m.Rlopen)


async def two_clients_with_f_open(process, port, log_path, msize=65536):
    """Clients a and b, one per worker (asserted), each with fid 1 = "f" open read-write."""
    a = await connect_when_up(process, port)
    await a.start(msize)
    b = await connect_when_up(process, port)
    await b.start(msize)
    await until(lambda: len(placements(log_path)) == 2)
    assert placements(log_path) == [0, 1]
    for peer in (a, b):
        await open_locked_file(peer)
    return a, b


async def until(predicate, seconds=10.0):
    with trio.fail_after(seconds):
        while not predicate():
            await trio.sleep(0.05)


async def test_locks_hold_across_workers_and_blocked_locks_wake(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "f").write_bytes(b"x" * 100)
    log_path = tmp_path / "log"
    process, port = start_workers(tmp_path / "export", log_path)
    with reaped(process):
        a, b = await two_clients_with_f_open(process, port, log_path)
        assert await a.rpc(m.Tlock(4, 1, WR, 0, 0, 10, 1, "a")) == m.Rlock(4, LockStatus.SUCCESS)
        # b, in the other process, sees a's lock...
        assert await b.rpc(m.Tlock(4, 1, WR, 0, 5, 1, 2, "b")) == m.Rlock(4, LockStatus.BLOCKED)
        assert await b.rpc(m.Tgetlock(5, 1, WR, 0, 0, 2, "b")) == m.Rgetlock(5, WR, 0, 10, 1, "a")
        # ... and a blocking request there waits until a lets go.
        await b.send(m.Tlock(6, 1, WR, LockFlags.BLOCK, 5, 1, 2, "b"))
        with trio.move_on_after(0.5) as early:
            await b.recv()
        assert early.cancelled_caught
        assert await a.rpc(m.Tlock(5, 1, UN, 0, 0, 10, 1, "a")) == m.Rlock(5, LockStatus.SUCCESS)
        with trio.fail_after(10):
            assert await b.recv() == m.Rlock(6, LockStatus.SUCCESS)

        # A cycle across the two processes is a deadlock, refused with EDEADLK.
        assert await a.rpc(m.Tlock(6, 1, WR, 0, 20, 10, 1, "a")) == m.Rlock(6, LockStatus.SUCCESS)
        await a.send(m.Tlock(7, 1, WR, LockFlags.BLOCK, 5, 1, 1, "a"))  # waits for b
        await trio.sleep(0.3)
        assert await b.rpc(m.Tlock(7, 1, WR, LockFlags.BLOCK, 25, 1, 2, "b")) == \
            m.Rlerror(7, Errno.EDEADLK)
        # b's clunk drops its lock (its last fid there): a's wait ends.
        assert await b.rpc(m.Tclunk(8, 1)) == m.Rclunk(8)
        with trio.fail_after(10):
            assert await a.recv() == m.Rlock(7, LockStatus.SUCCESS)
        await a.stream.aclose()
        await b.stream.aclose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    text = log_path.read_text()
    assert "with 2 workers" in text and "Traceback" not in text, text


async def test_a_dead_worker_loses_its_locks_and_is_replaced(tmp_path):
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "f").write_bytes(b"hello")
    log_path = tmp_path / "log"
    process, port = start_workers(tmp_path / "export", log_path)
    with reaped(process):
        a, b = await two_clients_with_f_open(process, port, log_path)
        assert await a.rpc(m.Tlock(4, 1, WR, 0, 0, 0, 1, "a")) == m.Rlock(4, LockStatus.SUCCESS)
        await b.send(m.Tlock(4, 1, WR, LockFlags.BLOCK, 0, 0, 2, "b"))
        await trio.sleep(0.3)
        first = worker_pids(log_path)
        os.kill(first[0], signal.SIGKILL)  # a's worker
        # Its connection goes, its lock with it: b's blocked request is granted.
        assert await a.at_eof()
        with trio.fail_after(10):
            assert await b.recv() == m.Rlock(4, LockStatus.SUCCESS)
        # A new worker takes the next client, and b was never disturbed.
        await until(lambda: worker_pids(log_path)[0] != first[0])
        c = await connect_when_up(process, port)
        await c.start()
        assert isinstance(await c.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await c.rpc(m.Tlopen(3, 1, 0)), m.Rlopen)
        assert await c.rpc(m.Tread(4, 1, 0, 100)) == m.Rread(4, b"hello")
        assert await b.rpc(m.Tread(5, 1, 0, 100)) == m.Rread(5, b"hello")
        await until(lambda: len(placements(log_path)) == 3)
        assert placements(log_path)[2] == 0  # the replacement had none
        for peer in (a, b, c):
            await peer.stream.aclose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    assert "exited with status -9; starting another" in log_path.read_text()


def test_workers_leave_with_the_supervisor_and_refuse_what_they_cannot_share(tmp_path):
    log_path = tmp_path / "log"
    process, port = start_workers(tmp_path, log_path)
    with reaped(process):
        deadline = time.monotonic() + 20
        while len(worker_pids(log_path)) < 2 or "serving" not in log_path.read_text():
            assert time.monotonic() < deadline and process.poll() is None, log_path.read_text()
            time.sleep(0.05)
        pids = worker_pids(log_path).values()
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 0
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or \
            open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    # One connected stream cannot be shared: exit 1 naming the URL.
    r, w = os.pipe()
    try:
        out = subprocess.run([*NINEPD, "--export", str(tmp_path), "--workers", "2",
                              "--listen", f"fd://{r},{w}"], cwd=REPO, pass_fds=(r, w),
                             capture_output=True, text=True, timeout=60)
    finally:
        os.close(r)
        os.close(w)
    assert out.returncode == 1 and "use --workers 1" in out.stderr, out.stderr
    # Zero workers is a mistake, not "the default".
    out = subprocess.run([*NINEPD, "--export", str(tmp_path), "--workers", "0"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "--workers must be at least 1" in out.stderr, out.stderr
    # A synthetic tree lives in one process: refused up front.
    out = subprocess.run([*NINEPD, "--synthetic", "examples.hello:tree", "--workers", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "host exports only" in out.stderr, out.stderr


async def test_a_blocked_lock_in_a_worker_rechecks_even_if_a_notice_is_lost(autojump_clock):
    """Release notices reach workers without the supervisor waiting; one that is lost
    (the worker's channel full) must not leave a blocked Tlock waiting for ever."""
    from ninep.server.workers import _LOCK_RECHECK_SECONDS, WorkerLockManager

    locks = WorkerLockManager(table=None)
    start = trio.current_time()
    await locks.wait_for_release(("export", (1, 2)))  # nobody releases anything
    assert trio.current_time() - start == _LOCK_RECHECK_SECONDS


async def test_a_64k_client_id_crosses_the_lock_channel(tmp_path):
    """9P strings run to 65535 bytes; a lock owner named so must not break the
    round trip to the supervisor (its reply carries the name back)."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "f").write_bytes(b"")
    log_path = tmp_path / "log"
    process, port = start_workers(tmp_path / "export", log_path)
    name = "n" * 65535
    with reaped(process):
        a, b = await two_clients_with_f_open(process, port, log_path, msize=1 << 20)
        assert await a.rpc(m.Tlock(4, 1, WR, 0, 0, 0, 7, name)) == m.Rlock(4, LockStatus.SUCCESS)
        assert await b.rpc(m.Tgetlock(4, 1, WR, 0, 0, 2, "b")) == m.Rgetlock(4, WR, 0, 0, 7, name)
        for peer in (a, b):
            await peer.stream.aclose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0


async def test_lock_limit_holds_across_workers(tmp_path):
    """The supervisor's table counts a connection's ranges; its ENOLCK reaches the
    worker as ENOLCK (not EIO), and leaves both the table and the other client fine."""
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "f").write_bytes(b"x")
    log_path = tmp_path / "log"
    process, port = start_workers(tmp_path / "export", log_path, "--limit", "max_locks=2")
    with reaped(process):
        a, b = await two_clients_with_f_open(process, port, log_path)
        for tag, start in ((4, 0), (5, 10)):
            assert await a.rpc(m.Tlock(tag, 1, WR, 0, start, 1, 1, "a")) == m.Rlock(tag, LockStatus.SUCCESS)
        assert await a.rpc(m.Tlock(6, 1, WR, 0, 20, 1, 1, "a")) == m.Rlerror(6, Errno.ENOLCK)
        assert await b.rpc(m.Tlock(4, 1, WR, 0, 20, 1, 2, "b")) == m.Rlock(4, LockStatus.SUCCESS)
        assert await b.rpc(m.Tgetlock(5, 1, WR, 0, 0, 2, "b")) == m.Rgetlock(5, WR, 0, 1, 1, "a")
        assert await a.rpc(m.Tlock(7, 1, UN, 0, 0, 1, 1, "a")) == m.Rlock(7, LockStatus.SUCCESS)
        assert await a.rpc(m.Tlock(8, 1, WR, 0, 30, 1, 1, "a")) == m.Rlock(8, LockStatus.SUCCESS)
        await a.stream.aclose()
        await b.stream.aclose()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    text = log_path.read_text()
    assert "refused (lock limit)" in text and "Traceback" not in text, text


async def test_workers_start_from_a_function_with_settings_parsed_once(tmp_path):
    """No CLI argv: the supervisor hands each worker a WorkerStart (a function and
    its pickled settings); a build that fails stops the supervisor with a clear error."""
    import argparse

    import pytest

    from ninep.cli import build_parser, build_server
    from ninep.server.listeners import ListenError
    from ninep.server.workers import Supervisor, WorkerStart

    from srv_wire import Peer

    (tmp_path / "f").write_bytes(b"hello")
    args: argparse.Namespace = build_parser().parse_args(["--export", str(tmp_path)])
    async with trio.open_nursery() as nursery:
        supervisor = await nursery.start(
            Supervisor(WorkerStart(build_server, (args, None), "WARNING"), 2).run,
            ["tcp://127.0.0.1:0"])
        port = int(supervisor.addresses[0].rsplit(":", 1)[1])
        peer = Peer(await trio.open_tcp_stream("127.0.0.1", port))
        await peer.start()
        assert isinstance(await peer.rpc(m.Twalk(2, 0, 1, ("f",))), m.Rwalk)
        assert isinstance(await peer.rpc(m.Tlopen(3, 1, 0)), m.Rlopen)
        assert await peer.rpc(m.Tread(4, 1, 0, 10)) == m.Rread(4, b"hello")
        await peer.stream.aclose()
        supervisor.shutdown()

    gone = build_parser().parse_args(["--export", str(tmp_path / "gone")])
    failing = Supervisor(WorkerStart(build_server, (gone, None), "CRITICAL"), 1)
    with pytest.raises(ListenError, match="could not build its server"), trio.fail_after(30):
        await failing.run(["tcp://127.0.0.1:0"])


async def test_copy_on_write_exports_across_workers(tmp_path):
    """COW exports under --workers: guests with their own anames on either worker each
    get their own upper; a second connection for an aname whose upper the other worker
    serves gets EBUSY (one process per upper), while the same worker shares it."""
    import errno

    from ninep.client import connect

    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc" / "hostname").write_bytes(b"base\n")
    log_path = tmp_path / "log"
    process, port = start_workers(base, log_path, "--upper", str(tmp_path / "vms" / "{aname}"))
    url = f"tcp://127.0.0.1:{port}"
    with reaped(process):
        await until(lambda: len(worker_pids(log_path)) == 2, 30)
        async with connect(url, aname="a") as a, connect(url, aname="b") as b:
            await a.root.write_file("etc/hostname", b"a\n")
            await b.root.write_file("etc/hostname", b"b\n")
            assert await a.root.read_file("etc/hostname") == b"a\n"
            async with connect(url, aname="a") as a2:  # a tie: the lowest index, a's
                assert await a2.root.read_file("etc/hostname") == b"a\n"
                await until(lambda: len(placements(log_path)) == 3)
                refused = None
                try:
                    async with connect(url, aname="a"):  # worker 1 now, while 0 serves "a"
                        pass
                except OSError as exc:
                    refused = exc.errno
                await until(lambda: len(placements(log_path)) == 4)
                at = placements(log_path)
        assert at[:2] == [0, 1] or at[:2] == [1, 0], at
        assert at[2] == at[0] and at[3] != at[0], at
        assert refused == errno.EBUSY
        assert "in use by another ninepd process" in log_path.read_text()
    assert (tmp_path / "vms" / "a" / "etc" / "hostname").read_bytes() == b"a\n"
    assert (tmp_path / "vms" / "b" / "etc" / "hostname").read_bytes() == b"b\n"
    assert (base / "etc" / "hostname").read_bytes() == b"base\n"
