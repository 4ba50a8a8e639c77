"""Where clients come from: listen URLs -> trio listeners (or one ready stream).

    tcp://HOST:PORT        TCP (IPv6 as tcp://[::1]:PORT); PORT 0 picks a free port
    unix:///PATH           a Unix stream socket at the absolute PATH; unix://REL (no third
                           slash) is REL relative to the current directory. The directory
                           must exist; a stale socket file is replaced; the socket file is
                           removed again on shutdown (if it is still this server's)
    vsock://CID:PORT       AF_VSOCK; CID -1 or "any" listens on every CID
    fd://RFD,WFD           one client already connected on a pair of fds (inetd, socat);
                           fd://N,N for a single socket (or tty) fd
    vhost-user-vsock:///PATH?cid=3&port=564[&forward=PREFIX]
                           ninepd is the guest's vsock device: QEMU connects its
                           vhost-user-vsock-pci chardev to PATH; a guest stream to
                           CID 2 port 564 is served in-process, other ports go to the
                           Unix socket PREFIX_<port> when forward is given
    systemd://             the listening sockets systemd passed (LISTEN_FDS/LISTEN_PID,
                           fds from 3); an Accept=yes connection socket is served as is

Firecracker and cloud-hypervisor turn a guest's connection to vsock port P into a
connection to the host Unix socket ``<uds_path>_<P>``: ``unix:///run/vm.vsock_564``
serves a guest that mounts over vsock port 564. A QEMU virtio-serial chardev
(``-chardev socket,path=/run/vm.9p``) connects to ``unix:///run/vm.9p``.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import socket as stdsocket
import stat
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import trio

log = logging.getLogger("ninep.server")

VMADDR_CID_ANY = 0xFFFFFFFF
SD_LISTEN_FDS_START = 3
# accept() errors that mean "out of something, try again soon" (as trio.serve_listeners)
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
_client_numbers = itertools.count(1)


class ListenError(Exception):
    """A listen URL that is malformed or cannot be opened; the message says which.
    ``url`` is the URL as given (a config file maps it back to its line)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


@dataclass
class Endpoint:
    """One opened URL: a listener to accept from, or a single connected stream."""

    url: str
    address: str  # what to print: the bound address (a real port for tcp://...:0)
    listener: trio.abc.Listener | None = None
    stream: trio.abc.Stream | None = None
    socket_file: tuple[str, int, int] | None = None  # (path, st_dev, st_ino) we bound


def _split_host_port(rest: str, url: str) -> tuple[str, int]:
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ListenError(f"{url}: expected HOST:PORT (port 0-65535)")
    return host, int(port)


def unix_path(url: str, rest: str) -> str:
    """The socket path of unix://REST: absolute as written (unix:///run/9p.sock), or
    relative to the current directory (unix://9p.sock). Its directory must exist: a
    typo should not quietly create directories."""
    if not rest:
        raise ListenError(f"{url}: expected unix:///ABSOLUTE/PATH or unix://RELATIVE/PATH", url)
    path = os.path.abspath(rest)
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        raise ListenError(f"{url}: directory {parent} does not exist (create it first)", url)
    return path


def check_url(url: str) -> None:
    """What can be said about ``url`` without opening it (before the event loop runs):
    the scheme, HOST:PORT, the directory of a Unix socket, that fd:// fds are open."""
    try:
        _check_url(url)
    except ListenError as exc:
        exc.url = url
        raise


def _check_url(url: str) -> None:
    scheme, sep, rest = url.partition("://")
    if scheme not in _OPENERS or not sep:
        raise ListenError(f"{url}: unknown scheme (tcp, unix, vsock, vhost-user-vsock, fd, systemd)", url)
    if scheme == "tcp":
        _split_host_port(rest, url)
    elif scheme == "unix":
        unix_path(url, rest)
    elif scheme == "vhost-user-vsock":
        parts = urlsplit(url)
        unix_path(url, parts.netloc + parts.path)
    elif scheme == "fd":
        for fd in _fd_numbers(url, rest):
            try:
                os.fstat(fd)
            except OSError:
                raise ListenError(f"{url}: fd {fd} is not open", url) from None


async def open_endpoints(url: str) -> list[Endpoint]:
    scheme, _, rest = url.partition("://")
    opener = _OPENERS.get(scheme)
    if opener is None or not _:
        raise ListenError(f"{url}: unknown scheme (tcp, unix, vsock, vhost-user-vsock, fd, systemd)", url)
    try:
        return await opener(url, rest)
    except ListenError as exc:
        exc.url = url
        raise
    except OSError as exc:
        raise ListenError(f"{url}: {exc.strerror or exc}", url) from exc


async def open_all(urls) -> list[Endpoint]:
    """Every URL opened, or none: what was opened is closed again if one fails."""
    endpoints: list[Endpoint] = []
    try:
        for url in urls:
            endpoints += await open_endpoints(url)
    except BaseException:
        with trio.CancelScope(shield=True):
            for endpoint in endpoints:
                await (endpoint.listener or endpoint.stream).aclose()
        raise
    return endpoints


async def close_listeners(endpoints: list[Endpoint]) -> None:
    for endpoint in endpoints:
        if endpoint.listener is not None:
            await endpoint.listener.aclose()  # idempotent
        if endpoint.socket_file is not None:
            _remove_own_socket(*endpoint.socket_file)
            endpoint.socket_file = None


def _remove_own_socket(path: str, dev: int, ino: int) -> None:
    """Unlink the socket file we bound, unless someone replaced it since (then it is
    theirs: a newer server on the same path must keep its socket)."""
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == (dev, ino):
            os.unlink(path)
    except OSError:
        pass


async def accept(endpoint: Endpoint) -> trio.abc.Stream:
    """The next connection; running out of fds or memory is logged and retried."""
    while True:
        try:
            return await endpoint.listener.accept()
        except OSError as exc:
            if exc.errno not in _ACCEPT_RETRY:
                raise
            log.error("%s: accept: %s; retrying", endpoint.address, exc)
            await trio.sleep(0.1)


def peer_name(stream: trio.abc.Stream, endpoint: Endpoint) -> str:
    """How log lines name a client: its address, or the endpoint and a number."""
    sock = getattr(stream, "socket", None)
    try:
        peer = sock.getpeername() if sock is not None else None
    except OSError:
        peer = None
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"[{peer[0]}]:{peer[1]}" if ":" in str(peer[0]) else f"{peer[0]}:{peer[1]}"
    return f"{endpoint.address}#{next(_client_numbers)}"


async def _tcp(url: str, rest: str) -> list[Endpoint]:
    host, port = _split_host_port(rest, url)
    listeners = await trio.open_tcp_listeners(port, host=host or None)
    out = []
    for listener in listeners:
        name = listener.socket.getsockname()
        shown = f"[{name[0]}]:{name[1]}" if listener.socket.family == stdsocket.AF_INET6 else f"{name[0]}:{name[1]}"
        out.append(Endpoint(url, f"tcp://{shown}", listener=listener))
    return out


def _remove_stale_socket(path: str) -> None:
    """Remove ``path`` if it is a socket nobody listens on; refuse a live one."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ListenError(f"unix://{path}: exists and is not a socket")
    probe = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        probe.connect(path)
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            os.unlink(path)
            return
        raise
    else:
        raise ListenError(f"unix://{path}: another server is listening there")
    finally:
        probe.close()


async def _bound_unix_socket(path: str) -> tuple[trio.socket.SocketType, tuple[str, int, int]]:
    """A listening socket at ``path`` and (path, st_dev, st_ino) of the file it made."""
    _remove_stale_socket(path)
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    try:
        await sock.bind(path)
        st = os.lstat(path)
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock, (path, st.st_dev, st.st_ino)


async def _unix(url: str, rest: str) -> list[Endpoint]:
    path = unix_path(url, rest)
    sock, socket_file = await _bound_unix_socket(path)
    return [Endpoint(url, f"unix://{path}", listener=trio.SocketListener(sock),
                     socket_file=socket_file)]


async def _vhost_user_vsock(url: str, rest: str) -> list[Endpoint]:
    from ..vhost.listener import VhostUserVsockListener  # only loaded when asked for

    parts = urlsplit(url)
    if not parts.netloc + parts.path:
        raise ListenError(f"{url}: expected vhost-user-vsock:///PATH?cid=CID&port=PORT")
    path = unix_path(url, parts.netloc + parts.path)
    options = dict(parse_qsl(parts.query))
    unknown = set(options) - {"cid", "port", "forward"}
    if unknown:
        raise ListenError(f"{url}: unknown option {sorted(unknown)[0]!r} (cid, port, forward)")
    cid_text, port_text = options.get("cid", "3"), options.get("port", "564")
    if not (cid_text.isdigit() and 3 <= int(cid_text) < 0xFFFFFFFF):
        raise ListenError(f"{url}: cid must be a guest CID (3 or more)")
    ports = port_text.split(",")
    if not all(p.isdigit() and int(p) < 2**32 for p in ports):
        raise ListenError(f"{url}: port must be a number (or several, comma-separated)")
    sock, socket_file = await _bound_unix_socket(path)
    listener = VhostUserVsockListener(sock, guest_cid=int(cid_text), ports={int(p) for p in ports},
                                      forward_prefix=options.get("forward") or None)
    return [Endpoint(url, f"vhost-user-vsock://{path}?cid={cid_text}&port={port_text}",
                     listener=listener, socket_file=socket_file)]


async def _vsock(url: str, rest: str) -> list[Endpoint]:
    if not hasattr(stdsocket, "AF_VSOCK"):
        raise ListenError(f"{url}: AF_VSOCK is not available on this host")
    cid_text, _, port_text = rest.rpartition(":")
    if cid_text in ("-1", "any", ""):
        cid = VMADDR_CID_ANY
    elif cid_text.isdigit():
        cid = int(cid_text)
    else:
        raise ListenError(f"{url}: expected vsock://CID:PORT")
    if not port_text.isdigit():
        raise ListenError(f"{url}: expected vsock://CID:PORT")
    sock = trio.socket.socket(stdsocket.AF_VSOCK, stdsocket.SOCK_STREAM)
    try:
        await sock.bind((cid, int(port_text)))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return [Endpoint(url, url, listener=trio.SocketListener(sock))]


def _stream_for_fds(read_fd: int, write_fd: int) -> trio.abc.Stream:
    if read_fd == write_fd:
        try:
            sock = stdsocket.socket(fileno=read_fd)
        except OSError:
            sock = None
        if sock is not None:
            if sock.type == stdsocket.SOCK_STREAM:
                return trio.SocketStream(trio.socket.from_stdlib_socket(sock))
            sock.detach()
        write_fd = os.dup(read_fd)  # a tty or pipe-like fd: two FdStreams need two fds
    return trio.StapledStream(trio.lowlevel.FdStream(write_fd), trio.lowlevel.FdStream(read_fd))


def _fd_numbers(url: str, rest: str) -> tuple[int, int]:
    read_text, _, write_text = rest.partition(",")
    write_text = write_text or read_text
    if not (read_text.isdigit() and write_text.isdigit()):
        raise ListenError(f"{url}: expected fd://RFD,WFD", url)
    return int(read_text), int(write_text)


async def _fd(url: str, rest: str) -> list[Endpoint]:
    read_fd, write_fd = _fd_numbers(url, rest)
    for fd in (read_fd, write_fd):
        try:
            os.fstat(fd)
        except OSError:
            raise ListenError(f"{url}: fd {fd} is not open", url) from None
    return [Endpoint(url, url, stream=_stream_for_fds(read_fd, write_fd))]


def _is_listening(sock: stdsocket.socket) -> bool:
    try:
        return bool(sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_ACCEPTCONN))
    except OSError:
        return True


async def _systemd(url: str, rest: str) -> list[Endpoint]:
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        raise ListenError(f"{url}: LISTEN_PID is not this process (not socket-activated)")
    count = int(os.environ.get("LISTEN_FDS", "0"))
    if count < 1:
        raise ListenError(f"{url}: LISTEN_FDS names no sockets")
    out = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sock = stdsocket.socket(fileno=fd)
        where = f"systemd fd {fd}"
        if _is_listening(sock):
            out.append(Endpoint(url, where, listener=trio.SocketListener(trio.socket.from_stdlib_socket(sock))))
        else:
            out.append(Endpoint(url, where, stream=trio.SocketStream(trio.socket.from_stdlib_socket(sock))))
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)  # not for our children
    return out


_OPENERS = {"tcp": _tcp, "unix": _unix, "vsock": _vsock, "fd": _fd, "systemd": _systemd,
            "vhost-user-vsock": _vhost_user_vsock}


def systemd_activated() -> bool:
    return os.environ.get("LISTEN_PID") == str(os.getpid()) and int(os.environ.get("LISTEN_FDS", "0") or 0) > 0
