"""Byte pump between a guest connection and the host's 9P server.

    python -m ninep.vm.relay tcp:HOST:PORT | unix:PATH
        QEMU user networking runs this per guest connection (guestfwd=...-cmd:...):
        stdin/stdout are the guest's TCP stream.  If the server is not up, the relay
        exits at once, so the guest sees the connection close and retries.
    python -m ninep.vm.relay --listen-vsock PORT tcp:HOST:PORT | unix:PATH
        Accepts AF_VSOCK connections from guests (needs /dev/vhost-vsock) and pumps each
        to the server in a child process.

A separate tiny process, blocking I/O on two descriptors: nothing here needs trio.
Nothing may be written to stderr: slirp gives the command the guest stream as fd 2 too.
"""

from __future__ import annotations

import os
import socket
import sys

CHUNK = 1 << 20


def connect(target: str) -> socket.socket:
    kind, _, address = target.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(address)
        return sock
    if kind == "tcp":
        host, _, port = address.rpartition(":")
        sock = socket.create_connection((host, int(port)))
        # 9P is request/response: Nagle would hold each small message back ~40 ms.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock
    raise ValueError(f"relay target must be tcp:HOST:PORT or unix:PATH, not {target!r}")


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _tcp_socket(fd: int) -> socket.socket | None:
    """fd as a socket object if it is a TCP socket (slirp's end is), else None."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return None
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.close()
        return None
    return sock


def copy(source: int, sink: int) -> None:
    """One direction, blocking, until the source closes or the sink fails.

    slirp hands `cmd:` programs a loopback TCP connection, not a pipe.  Its end sends
    with Nagle, so the tail of every request larger than one segment waited for our
    delayed ACK (40 ms per 4 KiB write, measured): we set TCP_NODELAY on our sends
    and re-arm TCP_QUICKACK after every read (Linux clears it as it goes).
    """
    source_tcp, sink_tcp = _tcp_socket(source), _tcp_socket(sink)
    if sink_tcp is not None:
        sink_tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        while True:
            if source_tcp is not None:
                source_tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            data = os.read(source, CHUNK)
            if not data:
                return
            if source_tcp is not None:
                source_tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
            _write_all(sink, data)
    except OSError:
        pass


def pump(guest_in: int, guest_out: int, server: socket.socket) -> None:
    """Copy both directions until either side closes.

    One process per direction: a single loop blocked writing a large request to the
    server would stop reading the server's large reply, and a server blocked on that
    reply might stop reading requests -- with msize 512000 both can be large.
    """
    child = os.fork()
    if child == 0:  # server -> guest
        copy(server.fileno(), guest_out)
        guest = _tcp_socket(guest_out)
        if guest is not None:  # the server is gone: let the guest see EOF, not silence
            try:
                guest.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        os._exit(0)
    copy(guest_in, server.fileno())  # guest -> server
    try:
        server.shutdown(socket.SHUT_RDWR)  # ends the child's read as well
    except OSError:
        pass
    os.waitpid(child, 0)


def serve_vsock(port: int, target: str) -> None:
    listener = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
    listener.bind((socket.VMADDR_CID_ANY, port))
    listener.listen()
    while True:
        guest, _ = listener.accept()
        if os.fork() == 0:
            listener.close()
            try:
                with connect(target) as server:
                    pump(guest.fileno(), guest.fileno(), server)
            finally:
                os._exit(0)
        guest.close()
        while True:  # reap finished children without blocking
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "--listen-vsock":
        serve_vsock(int(argv[1]), argv[2])
        return 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)  # keep tracebacks out of the guest's 9P stream
    try:
        server = connect(argv[0])
    except OSError:
        return 1  # closing the guest's connection is the message: it retries
    with server:
        try:
            pump(0, 1, server)
        except OSError:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
