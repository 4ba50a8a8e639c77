"""Opening a client: from a URL (``connect``) or from any trio Stream (``open_client``).

Both are async context managers: the reader task runs in a nursery that lives exactly
as long as the ``async with`` block. On the way in: Tversion, then (unless
``attach=False``) Tattach, whose fid becomes ``client.root``. On the way out: clunk the
root, wait (briefly) for requests still in flight, then hang up.
"""

from __future__ import annotations

import errno
import socket
from contextlib import asynccontextmanager
from typing import AsyncIterator, Callable

import trio

from ..protocol.constants import NONUNAME
from .operations import Client
from .remote_file import RemoteFile

DEFAULT_MSIZE = 128 * 1024 + 24  # the kernel's default payload (128 KiB) plus IOHDRSZ
DEFAULT_PORT = 5640  # ninepd's default (564 is 9P's registered port, which needs root)
DEFAULT_TIMEOUT = 30.0  # seconds to connect and to get Rversion/Rattach


def _timed_out(what: str, timeout: float) -> TimeoutError:
    return TimeoutError(errno.ETIMEDOUT, f"{what}: no answer within {timeout:g} s")


def parse_url(url: str) -> tuple[str, str | tuple[str, int]]:
    """``tcp://host:port`` -> ("tcp", (host, port)); ``unix:///abs`` or ``unix://rel``
    -> ("unix", path). A bare ``host:port`` means TCP."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "tcp", url
    if scheme == "unix":
        if not rest:
            raise ValueError(f"no socket path in {url!r}")
        return "unix", rest
    if scheme != "tcp":
        raise ValueError(f"unsupported scheme in {url!r} (use tcp:// or unix://)")
    host, colon, port = rest.rpartition(":")
    if not colon or "]" in port:  # no port given ("host" or "[::1]")
        host, port = rest, str(DEFAULT_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"expected tcp://host:port, got {url!r}")
    return "tcp", (host, int(port))


async def open_stream(url: str) -> trio.abc.Stream:
    """A connected stream for ``url``, with TCP_NODELAY on TCP (9P is request/reply:
    Nagle would hold back every small request)."""
    kind, address = parse_url(url)
    if kind == "unix":
        return await trio.open_unix_socket(address)
    assert isinstance(address, tuple)
    stream = await trio.open_tcp_stream(*address)
    stream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return stream


@asynccontextmanager
async def open_client(
    stream: trio.abc.Stream,
    *,
    aname: str = "",
    uname: str = "",
    n_uname: int = NONUNAME,
    msize: int = DEFAULT_MSIZE,
    attach: bool = True,
    max_in_flight: int = 64,
    flush_timeout: float = 5.0,
    trace: Callable[[str], object] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """A ``Client`` speaking 9P2000.L over ``stream`` (which it closes at the end).

    ``timeout``: seconds Tversion and Tattach may take (a silent server raises
    TimeoutError instead of hanging); None waits forever. Later requests have no
    built-in limit: wrap them in ``trio.fail_after``, and a cancelled request is flushed."""
    error: Exception | None = None
    async with trio.open_nursery() as nursery:
        client = Client(stream, msize=msize, max_in_flight=max_in_flight,
                        flush_timeout=flush_timeout, trace=trace)
        client.start(nursery)
        try:
            stage = "Tversion"
            with trio.move_on_after(timeout if timeout is not None else float("inf")) as limit:
                await client.version(msize)
                stage = "Tattach"
                if attach:
                    fid = client.fids.allocate()
                    qid = await client.attach(fid, aname=aname, uname=uname, n_uname=n_uname)
                    client.root = RemoteFile(client, fid, qid)
            if limit.cancelled_caught:
                raise _timed_out(stage, timeout)
            yield client
        except Exception as exc:  # re-raised below, outside the nursery, so it stays unwrapped
            error = exc
        finally:
            if client.root is not None and not client.closed:
                with trio.CancelScope(shield=True):
                    await client.root.clunk()  # so the server has no fid to complain about
            await client.aclose()
            nursery.cancel_scope.cancel()
    if error is not None:
        raise error


@asynccontextmanager
async def connect(
    url: str,
    *,
    aname: str = "",
    uname: str = "",
    n_uname: int = NONUNAME,
    msize: int = DEFAULT_MSIZE,
    attach: bool = True,
    max_in_flight: int = 64,
    flush_timeout: float = 5.0,
    trace: Callable[[str], object] | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
) -> AsyncIterator[Client]:
    """``async with connect("tcp://127.0.0.1:5640", aname="/srv") as client:``;
    the options are ``open_client``'s (``timeout`` also bounds connecting)."""
    with trio.move_on_after(timeout if timeout is not None else float("inf")) as limit:
        stream = await open_stream(url)
    if limit.cancelled_caught:
        raise _timed_out(f"connecting to {url}", timeout)
    async with open_client(stream, aname=aname, uname=uname, n_uname=n_uname, msize=msize,
                           attach=attach, max_in_flight=max_in_flight,
                           flush_timeout=flush_timeout, trace=trace,
                           timeout=timeout) as client:
        yield client
