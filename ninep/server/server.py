"""The server: listeners, one Connection per client, graceful shutdown.

    async with trio.open_nursery() as nursery:
        server = await nursery.start(ninep.server.serve, fs, ["tcp://127.0.0.1:0"])
        print(server.addresses)        # the real port
        ...
        server.shutdown()              # stop accepting, let requests finish, return

Shutdown is a deadline on the handler nursery (as in trio's and hypercorn's servers):
listeners close at once, every connection stops reading, requests in flight get
``grace_period`` seconds to finish and be answered, then whatever is left is cancelled.
"""

from __future__ import annotations

import contextvars
import logging
import os
import signal
import threading
from dataclasses import dataclass, replace
from typing import Iterable, Mapping, Union

import trio

from ..fs.backend import Filesystem
from .connection import Connection, LockManager
from .listeners import Endpoint, accept, close_listeners, open_all, peer_name
from .polling import MAX_WINDOW as MAX_POLL_WINDOW
from .rules import ByteBudget
from .session import PROCESS_FIDS, Export, Limits

log = logging.getLogger("ninep.server")

DEFAULT_LISTEN = "tcp://127.0.0.1:5640"

Exportable = Union[Filesystem, Export, Mapping[str, Union[Filesystem, Export]]]


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Which client a request came from, for backends that want to show it.

    ``number`` counts connections from 1 for the life of the process (the number in
    log lines); ``peer`` is the client's address ("127.0.0.1:41234", "[::1]:5000") or,
    where the transport has none, the endpoint and a client number for accepted
    sockets ("unix:///run/9p.sock#3") or the endpoint alone for a single connected
    stream ("fd://0,1"); ``endpoint`` is the listen address it came in on.
    """

    number: int
    peer: str
    endpoint: str


current_connection: contextvars.ContextVar[ConnectionInfo | None] = contextvars.ContextVar(
    "ninep.server.current_connection", default=None)
"""The ``ConnectionInfo`` of the client whose request is running, or None outside a
request (or for a ``Connection`` run by hand rather than by ``Server``). Set in the
connection's own task before it reads anything, so every request task and every
backend call made for that client sees it: trio gives each task a copy of the context
of the task that started it."""


def as_exports(what: Exportable) -> dict[str, Export]:
    """A Filesystem (the default export), an Export, or aname -> either; the first
    entry is the default that aname "" and "/" select."""
    if isinstance(what, Export):
        return {"": what}
    if isinstance(what, Filesystem):
        return {"": Export(what)}
    exports = {name: (v if isinstance(v, Export) else Export(v)) for name, v in what.items()}
    if not exports:
        raise ValueError("no exports to serve")
    return exports


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class Server:
    def __init__(self, exports: Exportable, *, limits: Limits = Limits(), trace: bool = False,
                 grace_period: float = 10.0, poll_window: float = MAX_POLL_WINDOW) -> None:
        self.exports = as_exports(exports)
        self.limits = limits
        self.trace = trace
        # Seconds; see polling.py. With one CPU the client cannot run while we poll.
        self.poll_window = poll_window if _usable_cpus() > 1 else 0.0
        self.grace_period = grace_period
        self.locks = LockManager()
        self.bulk = ByteBudget(limits.max_buffered_process)  # shared by its connections
        self.addresses: list[str] = []
        self.connections: set[Connection] = set()
        self._shutdown = trio.Event()
        # Called (no arguments) after each connection ends: a worker tells its supervisor.
        self.on_connection_closed = None
        self._single_streams = 0
        self._listeners = 0

    @property
    def shutting_down(self) -> bool:
        return self._shutdown.is_set()

    def shutdown(self) -> None:
        """Begin a graceful shutdown (safe to call more than once)."""
        self._shutdown.set()

    async def run(self, urls: Iterable[str], *, task_status=trio.TASK_STATUS_IGNORED,
                  handoff=None) -> None:
        """Serve ``urls`` until ``shutdown()``. ``handoff(server, handlers)``, if given,
        is one more source of connections, run beside the accept loops (a worker's
        supervisor); it calls ``server.serve_stream(handlers, stream, peer, endpoint)``."""
        endpoints = await open_all(urls)
        self.addresses = [e.address for e in endpoints]
        try:
            async with trio.open_nursery() as handlers:
                async with trio.open_nursery() as acceptors:
                    for endpoint in endpoints:
                        if endpoint.listener is not None:
                            self._listeners += 1
                            acceptors.start_soon(self._accept_loop, endpoint, handlers)
                        else:
                            self._single_streams += 1
                            handlers.start_soon(self._handle_single, endpoint)
                    if handoff is not None:
                        self._listeners += 1
                        acceptors.start_soon(handoff, self, handlers)
                    for address in self.addresses:
                        log.info("serving 9P2000.L on %s", address)
                    task_status.started(self)
                    await self._shutdown.wait()
                    acceptors.cancel_scope.cancel()
                await close_listeners(endpoints)
                for connection in list(self.connections):
                    connection.stop_reading()
                handlers.cancel_scope.deadline = trio.current_time() + self.grace_period
        finally:
            with trio.CancelScope(shield=True):
                await close_listeners(endpoints)
                for export in self.exports.values():
                    try:
                        await export.filesystem.aclose()
                    except Exception:
                        log.exception("closing an export failed")

    async def _accept_loop(self, endpoint: Endpoint, handlers: trio.Nursery) -> None:
        while True:
            stream = await accept(endpoint)
            handlers.start_soon(self._handle, stream, peer_name(stream, endpoint), endpoint.address)

    def serve_stream(self, handlers: trio.Nursery, stream: trio.abc.Stream, peer: str,
                     endpoint: str) -> None:
        handlers.start_soon(self._handle, stream, peer, endpoint)

    async def _handle(self, stream: trio.abc.Stream, name: str, endpoint: str) -> None:
        connection = Connection(stream, self.exports, self.locks, limits=self.limits,
                                trace=self.trace, name=name, budget=self.bulk,
                                poll_window=self.poll_window)
        # This task is the connection's reader and starts its request tasks: they all
        # inherit this value, and no other connection's task ever sees it.
        current_connection.set(ConnectionInfo(connection.number, name, endpoint))
        self.connections.add(connection)
        log.debug("%s: connected", name)
        try:
            await connection.run()
        except Exception:
            log.exception("%s: connection failed", name)
        finally:
            self.connections.discard(connection)
            log.debug("%s: closed after %d requests (%d in the reader; %d waited for "
                      "outside the scheduler, %d of them found by polling)", name,
                      connection.requests_served, connection.requests_inline,
                      connection.lone_waits, connection.lone_polls)
            if self.on_connection_closed is not None:
                self.on_connection_closed()

    async def _handle_single(self, endpoint: Endpoint) -> None:
        """fd:// and Accept=yes sockets: one client; when it leaves and nothing else
        is being listened on, the server is done (inetd style)."""
        await self._handle(endpoint.stream, endpoint.address, endpoint.address)
        self._single_streams -= 1
        if self._single_streams == 0 and self._listeners == 0:
            self.shutdown()


def use_fd_limit(reserve: int = 256) -> int | None:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the soft one is often
    1024, far below what a guest's dentry cache holds in fids), and bound the fids of
    all its connections (``session.PROCESS_FIDS``) so that they leave ``reserve`` fds
    for accept() and I/O: a fid holds one fd, an opened one two, hence half of what
    is left. Returns the budget (None if the limit is unbounded)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:  # an unlimited hard limit is above nr_open
            log.debug("open files limit stays at %d: %s", soft, exc)
    PROCESS_FIDS.limit = None if soft == resource.RLIM_INFINITY else max(64, (soft - reserve) // 2)
    return PROCESS_FIDS.limit


async def serve(filesystem_or_exports: Exportable, urls: str | Iterable[str] = DEFAULT_LISTEN, *,
                task_status=trio.TASK_STATUS_IGNORED, trace: bool = False,
                msize: int | None = None, limits: Limits | None = None,
                grace_period: float = 10.0, handle_signals: bool | None = None) -> None:
    """Serve until cancelled or ``shutdown()`` is called on the started value.

    ``task_status.started`` hands back the ``Server`` (its ``addresses`` show real
    ports for ``tcp://...:0``). ``handle_signals``: SIGINT (Ctrl-C) and SIGTERM start a
    graceful shutdown and serve() returns (a second signal stops at once); by default
    only when serve() is the program's main task, ``trio.run(ninep.serve, tree, url)``,
    where the alternative is a KeyboardInterrupt wrapped in every nursery on the way."""
    if isinstance(urls, str):
        urls = [urls]
    limits = limits or Limits()
    if msize is not None:
        limits = replace(limits, max_msize=msize)  # the other limits as they were
    server = Server(filesystem_or_exports, limits=limits, trace=trace, grace_period=grace_period)
    if handle_signals is None:
        handle_signals = _is_main_task()
    if not handle_signals:
        await server.run(list(urls), task_status=task_status)
        return
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signals, signals, server, nursery.cancel_scope)
            await server.run(list(urls), task_status=task_status)
            nursery.cancel_scope.cancel()


def _is_main_task() -> bool:
    """Is the running task the one trio.run() started, in the main thread?"""
    if threading.current_thread() is not threading.main_thread():
        return False
    parent = trio.lowlevel.current_task().parent_nursery
    return parent is not None and parent.parent_task is trio.lowlevel.current_root_task()


async def _stop_on_signals(signals, server: Server, everything: trio.CancelScope) -> None:
    async for signum in signals:
        if server.shutting_down:
            everything.cancel()
            return
        log.info("%s: shutting down (grace %gs)", signal.Signals(signum).name, server.grace_period)
        server.shutdown()
