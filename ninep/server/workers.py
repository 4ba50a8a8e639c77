"""Several processes behind one set of listeners: ``ninepd --workers N``.

One trio loop is one core: under many clients ninepd was CPU-bound on one core while
the machine had more (docs/performance.md). Python threads would not help (the GIL),
so, as gunicorn and nginx do, N worker processes each run their own ``Server``:

* the **supervisor** (the process started as ``ninepd``) opens the listeners, accepts,
  and hands each new connection to the worker serving the fewest (SCM_RIGHTS over a
  Unix socketpair, the "ctl" channel); it starts a new worker when one dies;
* it also keeps the **one lock table** (``locks.LockTable``): POSIX locks taken over
  one connection must stop another, whichever process serves it. A worker's table is
  a ``RemoteLockTable`` whose calls are round trips on a second socketpair (the "rpc"
  channel), awaited: the request that asked waits, the worker's other connections go
  on (a supervisor slow to answer stalls no getattr). Calls are numbered and
  pipelined (the supervisor answers them in order, one waiting caller reads the
  answers for all); a call that times out (``_RPC_TIMEOUT``) fails with EIO, and its
  late answer is skipped. A call once sent is finished even if
  its request is cancelled (the table changes either way). A blocked Tlock watches
  its key before asking (lockservice.py), so a release while the answer is on its way
  is not missed. When a call frees a range, the supervisor tells the other workers on
  ctl, and their blocked Tlocks retry;
* a **worker** is a fresh Python running ``worker_main``: its first message on ctl is
  a ``WorkerStart`` -- a function (pickled by reference) and the settings the
  supervisor parsed once -- which builds its ``Server`` with the same exports; then it
  serves what ctl hands it. It leaves when ctl closes (the supervisor is gone) and on
  SIGTERM, which the supervisor sends at shutdown.

Only host exports can be split so: their state is the host's. A synthetic tree lives
in one process's memory, so ``--workers`` refuses ``--synthetic``.

Messages on both channels are pickles on SOCK_SEQPACKET (one message per send); the
peers are this program's own processes, never a client.
"""

from __future__ import annotations

import array
import errno
import itertools
import logging
import signal as signals_module
import os
import pickle
import signal
import socket as stdsocket
import sys
from dataclasses import dataclass, field
from typing import Callable, Hashable, Mapping

import trio

from .lockservice import LockManager
from .listeners import Endpoint, ListenError, accept, close_listeners, open_all, peer_name
from ..protocol.constants import LockType
from .locks import LockLimitError, LockOwner, LockTable
from .server import use_fd_limit
from .session import Export

log = logging.getLogger("ninep.workers")

# Pickled lock calls and notices: usually a few hundred bytes, but a Tlock's client_id
# may be a 64 KiB string, and a reply can carry two of them.
_MAX_MESSAGE = 1 << 18
_RPC_TIMEOUT = 30.0  # a supervisor that does not answer a lock call in this is gone
_RESPAWN_DELAY = 0.5
_LOCK_RECHECK_SECONDS = 1.0
# LockTable methods a worker may call, and whether they can free ranges.
_RPC_METHODS = {"set": True, "release": True, "release_connection": True,
                "conflict": False, "begin_wait": False, "end_wait": False, "holding": False}


# --- the worker side ----------------------------------------------------------------------
class _Call:
    __slots__ = ("status", "value", "wake")

    def __init__(self) -> None:
        self.status: str | None = None  # "ok", "limit", "error"; None until answered
        self.value = None
        self.wake = trio.Event()  # answered, or it is this call's turn to read

    def answer(self, status: str, value) -> None:
        self.status, self.value = status, value
        self.wake.set()


class RemoteLockTable:
    """``LockTable``'s interface, as awaitables answered by the supervisor's table.

    Keys are (filesystem object, File.lock_key) in the dispatcher; on the wire the
    filesystem becomes its export's name, which every worker shares."""

    def __init__(self, rpc, exports: Mapping[str, Export]) -> None:
        self._rpc = rpc  # a trio socket (SOCK_SEQPACKET)
        self._names = {id(export.filesystem): name for name, export in exports.items()}
        self._filesystems = {name: export.filesystem for name, export in exports.items()}
        # connection -> keys it may hold locks on (granted here, maybe unlocked since).
        # Every clunk of a file's last fid releases the connection's locks there; with
        # this, only files it ever locked cost a round trip.
        self._maybe_held: dict[Hashable, set[Hashable]] = {}
        self._numbers = itertools.count(1)
        self._sending = trio.Lock()
        self._calls: dict[int, _Call] = {}  # calls sent and not answered, by number
        self._reading = False  # one caller at a time reads answers for all

    async def _call(self, method: str, *args):
        # Shielded: a call sent is a call made (the table changed), so its request
        # being cancelled must not drop it half way.
        number = next(self._numbers)
        call = self._calls[number] = _Call()
        with trio.CancelScope(shield=True):
            with trio.move_on_after(_RPC_TIMEOUT):
                try:
                    async with self._sending:
                        await self._rpc.send(pickle.dumps((number, method, args)))
                    await self._answer_of(call)
                finally:
                    self._calls.pop(number, None)  # a late answer is then skipped
        if call.status is None:
            raise OSError(errno.EIO, f"lock table: no answer to {method} in {_RPC_TIMEOUT} s")
        if call.status == "limit":
            raise LockLimitError(call.value)
        if call.status != "ok":
            raise OSError(errno.EIO, f"lock table: {call.value}")
        return call.value

    async def _answer_of(self, call: "_Call") -> None:
        """Until ``call`` is answered. Calls are pipelined: one waiting caller reads
        the channel and hands each answer to its call, until its own comes; then the
        next waiting caller takes over."""
        while call.status is None:
            if self._reading:
                await call.wake.wait()
                call.wake = trio.Event()
                continue
            self._reading = True
            try:
                while call.status is None:
                    data = await self._rpc.recv(_MAX_MESSAGE)
                    if not data:
                        for each in self._calls.values():
                            each.answer("gone", "the supervisor is gone")
                        break
                    number, status, value = pickle.loads(data)
                    answered = self._calls.get(number)
                    if answered is not None:
                        answered.answer(status, value)
            finally:
                self._reading = False
                for other in self._calls.values():  # the next reader
                    if other.status is None:
                        other.wake.set()
                        break

    def wire_key(self, key: Hashable) -> Hashable:
        filesystem, file_key = key
        return self._names[id(filesystem)], file_key

    def local_keys(self, keys) -> set[Hashable]:
        return {(self._filesystems[name], file_key) for name, file_key in keys
                if name in self._filesystems}

    async def set(self, key, owner: LockOwner, type_: int, start: int, length: int,
                  limit: int | None = None):
        if type_ != LockType.UNLCK:
            self._maybe_held.setdefault(owner.connection, set()).add(key)
        elif key not in self._maybe_held.get(owner.connection, ()):
            return True, set()  # nothing of this connection's there to unlock
        granted, released = await self._call("set", self.wire_key(key), owner, type_, start,
                                             length, limit)
        return granted, self.local_keys(released)

    async def holding(self, key, owners) -> set[LockOwner]:
        return await self._call("holding", self.wire_key(key), list(owners))

    async def conflict(self, key, owner: LockOwner, type_: int, start: int, length: int):
        return await self._call("conflict", self.wire_key(key), owner, type_, start, length)

    async def release(self, key, connection: Hashable) -> set[Hashable]:
        held = self._maybe_held.get(connection)
        if held is None or key not in held:
            return set()
        held.discard(key)
        return self.local_keys(await self._call("release", self.wire_key(key), connection))

    async def release_connection(self, connection: Hashable) -> set[Hashable]:
        if self._maybe_held.pop(connection, None) is None:
            return set()
        return self.local_keys(await self._call("release_connection", connection))

    async def begin_wait(self, owner: LockOwner, request: tuple) -> bool:
        return await self._call("begin_wait", owner, (self.wire_key(request[0]), *request[1:]))

    async def end_wait(self, owner: LockOwner, request: tuple) -> None:
        await self._call("end_wait", owner, (self.wire_key(request[0]), *request[1:]))


class WorkerLockManager(LockManager):
    """A worker's ``LockManager``: every table operation is a call to the supervisor."""

    prompt = False  # its calls wait for the supervisor: never in the reader

    def __init__(self, table: RemoteLockTable) -> None:
        super().__init__(table)
        self._pid = os.getpid()

    def connection_id(self, number: int) -> Hashable:
        # Unique across workers, and tells the supervisor whose it was if we die.
        return ("connection", self._pid, number)

    async def set(self, key, owner, type_, start, length, limit=None):
        return await self.table.set(key, owner, type_, start, length, limit)

    async def conflict(self, key, owner, type_, start, length):
        return await self.table.conflict(key, owner, type_, start, length)

    async def holding(self, key, owners):
        return await self.table.holding(key, owners)

    async def release(self, key, connection):
        return await self.table.release(key, connection)

    async def release_connection(self, connection):
        return await self.table.release_connection(connection)

    async def begin_wait(self, owner, request):
        return await self.table.begin_wait(owner, request)

    async def end_wait(self, owner, request):
        await self.table.end_wait(owner, request)

    async def wait_for_release(self, key: Hashable, ticket=None) -> None:
        # A release elsewhere arrives as a notice on ctl, which the supervisor sends
        # without waiting; should one be lost (ctl full), the blocked Tlock retries
        # anyway after a while instead of waiting for the next release.
        with trio.move_on_after(_LOCK_RECHECK_SECONDS):
            await super().wait_for_release(key, ticket)


def _send_message(sock: stdsocket.socket, message, fds=()) -> None:
    data = pickle.dumps(message)
    if fds:
        sock.sendmsg([data], [(stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


async def run_worker(server, ctl_fd: int, rpc_fd: int) -> None:
    """Serve, as one of the supervisor's workers, what its ctl channel hands over."""
    ctl = stdsocket.socket(fileno=ctl_fd)
    ctl.setblocking(False)
    rpc = trio.socket.from_stdlib_socket(stdsocket.socket(fileno=rpc_fd))
    table = RemoteLockTable(rpc, server.exports)
    server.locks = WorkerLockManager(table)

    def closed() -> None:
        try:
            _send_message(ctl, ("closed",))
        except OSError:
            pass  # only the supervisor's balancing notices; it may be gone already

    server.on_connection_closed = closed

    async def handoff(server, handlers: trio.Nursery) -> None:
        try:
            while True:
                await trio.lowlevel.wait_readable(ctl)
                try:
                    data, fds, _flags, _addr = stdsocket.recv_fds(ctl, _MAX_MESSAGE, 4)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    log.warning("supervisor gone: shutting down")
                    server.shutdown()
                    return
                message = pickle.loads(data)
                if message[0] == "conn":
                    _, peer, endpoint = message
                    sock = stdsocket.socket(fileno=fds[0])
                    stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
                    server.serve_stream(handlers, stream, peer, endpoint)
                elif message[0] == "released":
                    server.locks.released(table.local_keys(message[1]))
        finally:
            server.on_connection_closed = None

    try:
        await server.run([], handoff=handoff)
    finally:
        ctl.close()
        rpc.close()


@dataclass(frozen=True)
class WorkerStart:
    """How a worker builds its ``Server``: ``build(*args)``. ``build`` is pickled by
    reference (a module-level function); ``args`` are the settings, parsed once by
    the supervisor's caller and pickled. A build that raises ends the worker with
    status 2, which stops the supervisor (the next worker would fail the same way)."""

    build: Callable
    args: tuple = ()
    log_level: str = "INFO"


_WORKER_COMMAND = "from ninep.server.workers import worker_main; worker_main()"


def worker_main(argv: list[str] | None = None) -> None:
    """A worker process: ``python -c "<_WORKER_COMMAND>" CTL_FD RPC_FD``."""
    ctl_fd, rpc_fd = (int(x) for x in (argv or sys.argv[1:])[:2])
    ctl = stdsocket.socket(fileno=ctl_fd)
    try:
        start: WorkerStart = pickle.loads(ctl.recv(_MAX_MESSAGE))
        ctl.detach()  # run_worker wraps the same fd again
        logging.basicConfig(level=start.log_level, stream=sys.stderr,
                            format=f"%(asctime)s ninepd[worker {os.getpid()}] %(levelname)s %(message)s")
        server = start.build(*start.args)
        use_fd_limit()  # each worker holds its own connections' fids
    except Exception as exc:  # e.g. the build function cannot be imported here
        print(f"ninepd worker: {exc}", file=sys.stderr)
        sys.exit(2)
    trio.run(_serve_until_signalled, server, ctl_fd, rpc_fd)
    sys.exit(0)


async def _serve_until_signalled(server, ctl_fd: int, rpc_fd: int) -> None:
    """SIGTERM or SIGINT: graceful shutdown; a second one: stop now."""
    with trio.open_signal_receiver(signals_module.SIGINT, signals_module.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            async def watch() -> None:
                async for _ in signals:
                    if server.shutting_down:
                        nursery.cancel_scope.cancel()
                        return
                    server.shutdown()

            nursery.start_soon(watch)
            await run_worker(server, ctl_fd, rpc_fd)
            nursery.cancel_scope.cancel()


# --- the supervisor side ------------------------------------------------------------------
@dataclass(eq=False)
class _Worker:
    index: int
    process: trio.Process
    ctl: trio.socket.SocketType
    rpc: trio.socket.SocketType
    send_lock: trio.Lock = field(default_factory=trio.Lock)
    connections: int = 0
    gone: bool = False

    async def send(self, message, fds=()) -> None:
        async with self.send_lock:
            while True:
                try:
                    return _send_message(self.ctl._sock, message, fds)
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(self.ctl)


class Supervisor:
    """``Server``'s interface for the CLI (run, shutdown, shutting_down,
    grace_period), with ``count`` worker processes doing the serving."""

    def __init__(self, start: WorkerStart, count: int, *, grace_period: float = 10.0) -> None:
        self.start = start
        self.count = count
        self.grace_period = grace_period
        self.table = LockTable()
        self.addresses: list[str] = []
        self.workers: list[_Worker] = []
        self._replaced: list[_Worker] = []
        self._shutdown = trio.Event()
        self._failed: str | None = None

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def shutdown(self) -> None:
        self._shutdown.set()

    async def run(self, urls, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        endpoints = await open_all(urls)
        streams = [e for e in endpoints if e.listener is None]
        if streams:
            with trio.CancelScope(shield=True):
                for endpoint in endpoints:
                    await (endpoint.listener or endpoint.stream).aclose()
            raise ListenError(f"{streams[0].url}: one connected stream cannot be shared "
                              f"by workers; use --workers 1")
        self.addresses = [e.address for e in endpoints]
        try:
            async with trio.open_nursery() as nursery:
                for index in range(self.count):
                    await self._start_worker(nursery, index)
                async with trio.open_nursery() as acceptors:
                    for endpoint in endpoints:
                        acceptors.start_soon(self._accept_loop, endpoint)
                    for address in self.addresses:
                        log.info("serving 9P2000.L on %s with %d workers", address, self.count)
                    task_status.started(self)
                    await self._shutdown.wait()
                    acceptors.cancel_scope.cancel()
                await close_listeners(endpoints)
                await self._stop_workers()
                nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await close_listeners(endpoints)
                for worker in self.workers:
                    if worker.process.returncode is None:
                        worker.process.kill()
                        await worker.process.wait()
                for worker in self.workers + self._replaced:
                    worker.ctl.close()
                    worker.rpc.close()
        if self._failed:
            raise ListenError(self._failed)

    async def _start_worker(self, nursery: trio.Nursery, index: int) -> None:
        ctl_parent, ctl_child = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_SEQPACKET)
        rpc_parent, rpc_child = stdsocket.socketpair(stdsocket.AF_UNIX, stdsocket.SOCK_SEQPACKET)
        fds = (ctl_child.fileno(), rpc_child.fileno())
        argv = [sys.executable, "-c", _WORKER_COMMAND, str(fds[0]), str(fds[1])]
        try:
            _send_message(ctl_parent, self.start)  # read first thing by worker_main
            # Its own process group: a terminal's ^C reaches the supervisor only, which
            # then asks each worker once, so none takes it for an impatient second ^C.
            process = await trio.lowlevel.open_process(argv, pass_fds=fds, process_group=0)
        finally:
            ctl_child.close()
            rpc_child.close()
        worker = _Worker(index, process, trio.socket.from_stdlib_socket(ctl_parent),
                         trio.socket.from_stdlib_socket(rpc_parent))
        if index < len(self.workers):
            self._replaced.append(self.workers[index])  # its sockets are closed at the end
            self.workers[index] = worker
        else:
            self.workers.append(worker)
        log.debug("worker %d: pid %d", index, process.pid)
        nursery.start_soon(self._serve_locks, worker)
        nursery.start_soon(self._read_ctl, worker)
        nursery.start_soon(self._watch, nursery, worker)

    async def _watch(self, nursery: trio.Nursery, worker: _Worker) -> None:
        status = await worker.process.wait()
        worker.gone = True
        self._forget_locks_of(worker)
        if self.shutting_down:
            return
        if status == 2:  # the worker refused its arguments: so will the next one
            self._failed = f"worker {worker.index} exited with status 2 (could not build its server)"
            self.shutdown()
            return
        log.error("worker %d (pid %d) exited with status %s; starting another",
                  worker.index, worker.process.pid, status)
        await trio.sleep(_RESPAWN_DELAY)
        if not self.shutting_down:
            await self._start_worker(nursery, worker.index)

    def _forget_locks_of(self, worker: _Worker) -> None:
        released: set[Hashable] = set()
        for connection in self.table.connections():
            if isinstance(connection, tuple) and connection[1:2] == (worker.process.pid,):
                released |= self.table.release_connection(connection)
                self.table.end_waits_of(connection)
        if released:
            self._broadcast(released, source=worker)

    async def _accept_loop(self, endpoint: Endpoint) -> None:
        while True:
            await self._hand_over(await accept(endpoint), endpoint)

    async def _hand_over(self, stream: trio.SocketStream, endpoint: Endpoint) -> None:
        peer = peer_name(stream, endpoint)
        live = [w for w in self.workers if not w.gone]
        try:
            if not live:
                log.error("%s: no worker to serve it; closed", peer)
                return
            worker = min(live, key=lambda w: (w.connections, w.index))
            try:
                await worker.send(("conn", peer, endpoint.address), [stream.socket.fileno()])
            except OSError as exc:
                log.error("%s: handing it to worker %d failed: %s", peer, worker.index, exc)
                return
            worker.connections += 1
            log.debug("%s: to worker %d (pid %d)", peer, worker.index, worker.process.pid)
        finally:
            stream.socket.close()  # the worker has its own copy

    async def _read_ctl(self, worker: _Worker) -> None:
        while not worker.gone:
            try:
                data = await worker.ctl.recv(_MAX_MESSAGE)
            except OSError:  # ECONNRESET: it died with our notices unread
                return
            if not data:
                return
            if pickle.loads(data)[0] == "closed":
                worker.connections = max(0, worker.connections - 1)

    async def _serve_locks(self, worker: _Worker) -> None:
        """One lock call at a time per worker (the worker waits for each answer)."""
        while True:
            try:
                data = await worker.rpc.recv(_MAX_MESSAGE)
            except OSError:
                return
            if not data:
                return
            method = number = None
            try:
                number, method, args = pickle.loads(data)
                if method not in _RPC_METHODS:
                    raise ValueError(f"no lock call {method!r}")
                result = getattr(self.table, method)(*args)
                reply = ("ok", result)
            except LockLimitError as exc:  # the connection's answer is ENOLCK
                reply, result = ("limit", exc.limit), None
            except Exception as exc:  # a bad call costs that call, not the table
                log.exception("worker %d: lock call failed", worker.index)
                reply, result = ("error", str(exc)), None
            try:
                await worker.rpc.send(pickle.dumps((number, *reply)))
            except OSError:
                return  # it died waiting; _watch forgets its locks
            if _RPC_METHODS.get(method) and result is not None:
                released = result[1] if method == "set" else result
                if released:
                    self._broadcast(released, source=worker)

    def _broadcast(self, keys: set[Hashable], source: _Worker) -> None:
        """Wake blocked Tlocks on ``keys`` in every other worker. Sent without
        waiting: a worker too busy to drain small notices will find them later."""
        for worker in self.workers:
            if worker is not source and not worker.gone:
                try:
                    _send_message(worker.ctl._sock, ("released", list(keys)))
                except OSError as exc:
                    if worker.process.returncode is None and not self.shutting_down:
                        log.warning("worker %d: lock notice lost: %s", worker.index, exc)

    async def _stop_workers(self) -> None:
        for worker in self.workers:
            if worker.process.returncode is None:
                try:
                    worker.process.send_signal(signal.SIGTERM)
                except ProcessLookupError:
                    pass
        with trio.move_on_after(self.grace_period + 5):
            for worker in self.workers:
                await worker.process.wait()
        for worker in self.workers:
            if worker.process.returncode is None:
                log.warning("worker %d did not stop in time: killed", worker.index)
                worker.process.kill()
                await worker.process.wait()
