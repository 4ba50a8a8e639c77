"""The trio shell around the pure parts: ninepd as a vhost-user-vsock back-end.

``VhostUserVsockListener`` is a ``trio.abc.Listener`` like any other: the server's
accept loop gets one ``VsockStream`` per guest connection to an in-process port, so
9P over vsock goes through the same entry as TCP or Unix clients, with no socket hop.

The device runs in ninepd's own trio loop (kick eventfds are awaited with
``wait_readable``): a guest packet is parsed, handed to the connection and answered
on the same task, with no thread handoff. One QEMU at a time is served per socket;
when it goes away every stream of that guest ends and the socket takes the next QEMU
(a restarted VM). Other ports, with ``forward=PREFIX``, go to the Unix socket
``PREFIX_<port>`` (the Firecracker / vhost-device-vsock convention).
"""

from __future__ import annotations

import array
import logging
import mmap
import os
import socket as stdsocket
import struct
from dataclasses import dataclass

import trio

from . import protocol as vu
from .memory import GuestMemory, GuestMemoryFault, Region
from .virtqueue import QueueBroken, SplitQueue
from .vsock import HEADER, BadPacket, VsockConnection, VsockMux, parse_packet

log = logging.getLogger("ninep.vhost")

RX_QUEUE, TX_QUEUE = 0, 1   # the event queue (2) stays in QEMU
SEND_BUFFER_LIMIT = 256 * 1024
OFFERED_FEATURES = vu.VIRTIO_F_VERSION_1 | vu.VHOST_USER_F_PROTOCOL_FEATURES
OFFERED_PROTOCOL_FEATURES = vu.PROTOCOL_F_CONFIG
_EVENTFD_ONE = struct.pack("<Q", 1)


class VsockStream(trio.abc.Stream):
    """One guest stream as a trio Stream (what a ninepd connection reads and writes)."""

    def __init__(self, device: "VsockDevice", connection: VsockConnection) -> None:
        self._device = device
        self._connection = connection
        self._changed = trio.Event()
        connection.shell = self

    def wake(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    @property
    def peer(self) -> str:
        return f"vsock:{self._device.mux.guest_cid}:{self._connection.peer_port}"

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        connection = self._connection
        while not connection.received and not connection.at_eof:
            await self._changed.wait()
        await trio.lowlevel.checkpoint()
        data = self._device.mux.read(connection, max_bytes or 65536)
        self._device.flush()
        return data

    async def send_all(self, data) -> None:
        connection = self._connection
        while len(connection.pending) >= SEND_BUFFER_LIMIT and not connection.closed:
            await self._changed.wait()
        if connection.closed or connection.closing:
            raise trio.BrokenResourceError("the guest closed the vsock stream")
        self._device.mux.write(connection, data)
        self._device.flush()
        await trio.lowlevel.checkpoint()

    async def wait_send_all_might_not_block(self) -> None:
        while len(self._connection.pending) >= SEND_BUFFER_LIMIT and not self._connection.closed:
            await self._changed.wait()

    async def send_eof(self) -> None:
        self._device.mux.close(self._connection)
        self._device.flush()

    async def aclose(self) -> None:
        self._device.mux.close(self._connection)
        self._device.flush()
        await trio.lowlevel.checkpoint()


@dataclass
class _Vring:
    num: int = 0
    addresses: tuple[int, int, int] | None = None  # desc, avail, used (QEMU addresses)
    base: int = 0
    kick_fd: int = -1
    call_fd: int = -1
    enabled: bool = False
    queue: SplitQueue | None = None
    watcher: trio.CancelScope | None = None


class VsockDevice:
    """The state of one vhost-user session (one QEMU) and its guest's streams."""

    def __init__(self, guest_cid: int, ports, accepted: trio.MemorySendChannel,
                 forward_prefix: str | None) -> None:
        self.mux = VsockMux(guest_cid, ports, forward_other_ports=forward_prefix is not None)
        self.accepted = accepted
        self.forward_prefix = forward_prefix
        self.features = 0
        self.protocol_features = 0
        self.memory = GuestMemory()
        self._maps: list[mmap.mmap] = []
        self.vrings = [_Vring(), _Vring()]
        self.nursery: trio.Nursery | None = None
        self.broken: str | None = None
        self._tx_held = False  # TX chains left in the ring until the guest takes our replies
        self.bad_packets = 0

    # -- vhost-user messages ------------------------------------------------------

    def handle(self, message: vu.Message) -> bytes | None:
        """Apply one message; the reply to send, if the request has one."""
        request = message.request
        if request == vu.GET_FEATURES:
            return vu.reply_u64(request, OFFERED_FEATURES)
        if request == vu.SET_FEATURES:
            self.features = message.u64() & OFFERED_FEATURES
        elif request == vu.GET_PROTOCOL_FEATURES:
            return vu.reply_u64(request, OFFERED_PROTOCOL_FEATURES)
        elif request == vu.SET_PROTOCOL_FEATURES:
            self.protocol_features = message.u64() & OFFERED_PROTOCOL_FEATURES
        elif request in (vu.SET_OWNER, vu.RESET_OWNER):
            self.reset()
        elif request == vu.SET_MEM_TABLE:
            self._set_memory(message)
        elif request == vu.GET_CONFIG:
            offset, size = message.config_request()
            space = struct.pack("<Q", self.mux.guest_cid)
            return vu.reply_config(offset, space[offset:offset + size].ljust(size, b"\0"))
        elif request in (vu.SET_VRING_NUM, vu.SET_VRING_BASE, vu.GET_VRING_BASE, vu.SET_VRING_ENABLE):
            index, value = message.vring_state()
            vring = self._vring(index)
            if request == vu.SET_VRING_NUM:
                vring.num = value
            elif request == vu.SET_VRING_BASE:
                vring.base = value
            elif request == vu.SET_VRING_ENABLE:
                vring.enabled = bool(value)
                self._maybe_start(index)
            else:
                base = self._stop(index)
                return vu.reply(request, vu.VRING_STATE.pack(index, base))
        elif request == vu.SET_VRING_ADDR:
            index, _flags, desc, used, avail, _log = message.vring_addr()
            self._vring(index).addresses = (desc, avail, used)
        elif request in (vu.SET_VRING_KICK, vu.SET_VRING_CALL, vu.SET_VRING_ERR):
            self._set_vring_fd(request, message)
        else:
            log.debug("vhost-user request %d ignored", request)
            if message.needs_reply:
                return vu.reply_u64(request, 0)
        return None

    def _vring(self, index: int) -> _Vring:
        if not 0 <= index < len(self.vrings):
            raise vu.ProtocolError(f"vring {index} does not exist (vsock has 2)")
        return self.vrings[index]

    def _set_memory(self, message: vu.Message) -> None:
        wanted = message.memory_regions()  # checks one fd per region; they stay the message's
        fds = list(message.fds)
        message.fds.clear()
        try:
            running = [i for i, v in enumerate(self.vrings) if v.queue is not None]
            for index in running:
                self._stop(index, keep_streams=True)
            self._release_memory()
            regions = []
            for fd, (guest_addr, size, user_addr, offset) in zip(fds, wanted):
                mapped = mmap.mmap(fd, offset + size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
                self._maps.append(mapped)
                regions.append(Region(guest_addr, size, user_addr, offset,
                                      memoryview(mapped)[offset:offset + size]))
            self.memory = GuestMemory(regions)
            for index in running:
                self._maybe_start(index)
        finally:
            for fd in fds:
                os.close(fd)

    def _set_vring_fd(self, request: int, message: vu.Message) -> None:
        value = message.u64()
        vring = self._vring(value & vu.VRING_IDX_MASK)
        fd = -1
        if not value & vu.VRING_NOFD_MASK:
            if len(message.fds) != 1:
                raise vu.ProtocolError(f"request {request} without its eventfd")
            fd = message.fds.pop()
            os.set_blocking(fd, False)
        if request == vu.SET_VRING_ERR:
            if fd >= 0:
                os.close(fd)
            return
        attribute = "kick_fd" if request == vu.SET_VRING_KICK else "call_fd"
        if request == vu.SET_VRING_KICK:
            self._stop(value & vu.VRING_IDX_MASK, keep_streams=True)
        old = getattr(vring, attribute)
        if old >= 0:
            os.close(old)
        setattr(vring, attribute, fd)
        if request == vu.SET_VRING_KICK:
            if fd < 0:
                log.error("vhost-user: vring polling (no kick fd) is not supported")
            if not self.features & vu.VHOST_USER_F_PROTOCOL_FEATURES:
                vring.enabled = True  # without protocol features a kicked ring starts enabled
            self._maybe_start(value & vu.VRING_IDX_MASK)

    # -- rings --------------------------------------------------------------------

    def _maybe_start(self, index: int) -> None:
        vring = self.vrings[index]
        if vring.queue is not None or not vring.enabled or vring.kick_fd < 0 or vring.addresses is None:
            return
        try:
            vring.queue = SplitQueue(self.memory, vring.num, *vring.addresses, last_avail_idx=vring.base)
        except QueueBroken as exc:
            self._broken(f"vring {index}: {exc}")
            return
        if self.nursery is not None:
            vring.watcher = trio.CancelScope()
            self.nursery.start_soon(self._watch_kicks, index, vring.watcher)
        self.flush()

    def _stop(self, index: int, *, keep_streams: bool = False) -> int:
        vring = self._vring(index)
        if vring.watcher is not None:
            vring.watcher.cancel()
            vring.watcher = None
        if vring.queue is not None:
            vring.base = vring.queue.last_avail_idx
            vring.queue.release()
            vring.queue = None
        if not keep_streams:
            self._end_streams()  # the driver is resetting the device
        return vring.base

    async def _watch_kicks(self, index: int, scope: trio.CancelScope) -> None:
        with scope:
            fd = self.vrings[index].kick_fd
            while True:
                await trio.lowlevel.wait_readable(fd)
                try:
                    os.read(fd, 8)
                except BlockingIOError:
                    continue
                if index == TX_QUEUE:
                    self._drain_tx()
                self.flush()

    def _drain_tx(self) -> None:
        vring = self.vrings[TX_QUEUE]
        queue = vring.queue
        if queue is None or self.broken:
            return
        events = []
        took = False
        try:
            # As Linux's vhost-vsock: each guest packet may queue one reply; a guest that
            # posts no RX buffers is not read until it takes them, so replies stay bounded.
            while not (held := self.mux.replies_queued >= queue.num) and \
                    (chain := queue.pop()) is not None:
                took = True
                try:
                    packet = parse_packet(chain.gather())
                    events += self.mux.receive(packet)
                except BadPacket as exc:
                    self._bad_packet(exc)
                queue.push(chain.head, 0)
        except QueueBroken as exc:
            self._broken(f"TX ring: {exc}")
            return
        self._tx_held = held
        if took:
            self._notify(vring)
        for kind, connection in events:
            self._deliver(kind, connection)

    def _bad_packet(self, exc: BadPacket) -> None:
        """A guest can send bad packets at ring speed: the first three are logged, then
        one line at each power of ten, so a million cost ten lines, not a million."""
        self.bad_packets += 1
        count = self.bad_packets
        if count <= 3:
            log.warning("vsock guest %d: %s", self.mux.guest_cid, exc)
        elif count == 10 ** (len(str(count)) - 1):
            log.warning("vsock guest %d: %d malformed packets so far, the last: %s",
                        self.mux.guest_cid, count, exc)

    def _deliver(self, kind: str, connection: VsockConnection) -> None:
        if kind == "changed":
            if connection.shell is not None:
                connection.shell.wake()
            return
        stream = VsockStream(self, connection)
        if kind == "accept":
            try:
                self.accepted.send_nowait(stream)
            except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
                log.warning("vsock guest %d: nobody accepts port %d now; resetting",
                            self.mux.guest_cid, connection.local_port)
                self.mux.reset(connection)
        elif self.nursery is not None:
            self.nursery.start_soon(self._forward, stream, connection.local_port)

    async def _forward(self, stream: VsockStream, port: int) -> None:
        path = f"{self.forward_prefix}_{port}"
        try:
            sock = await trio.open_unix_socket(path)
        except OSError as exc:
            log.info("vsock guest %d: port %d: %s: %s", self.mux.guest_cid, port, path, exc)
            self.mux.reset(stream._connection)
            self.flush()
            return

        async def copy(source, sink):
            try:
                while data := await source.receive_some(65536):
                    await sink.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            finally:
                try:
                    await sink.send_eof()
                except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                    pass

        async with sock, stream:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(copy, stream, sock)
                nursery.start_soon(copy, sock, stream)

    def flush(self) -> None:
        """Move whatever the mux has for the guest into RX buffers it has offered, and
        take the guest packets held back while replies waited for room."""
        while True:
            self._fill_rx()
            tx = self.vrings[TX_QUEUE].queue
            if not self._tx_held or self.broken or tx is None or self.mux.replies_queued >= tx.num:
                return
            self._drain_tx()

    def _fill_rx(self) -> None:
        vring = self.vrings[RX_QUEUE]
        queue = vring.queue
        if queue is None or self.broken or not self.mux.has_output():
            return
        filled = 0
        try:
            while self.mux.has_output():
                chain = queue.pop()
                if chain is None:
                    break
                room = chain.writable_size - HEADER.size
                packet = self.mux.next_packet(room) if room >= 0 else None
                if packet is None:
                    queue.last_avail_idx = (queue.last_avail_idx - 1) & 0xFFFF  # give it back
                    break
                queue.push(chain.head, chain.scatter(packet.header(), packet.payload))
                filled += 1
        except QueueBroken as exc:
            self._broken(f"RX ring: {exc}")
            return
        if filled:
            self._notify(vring)
        for connection in list(self.mux.connections.values()):
            if connection.shell is not None and connection.pending.__len__() < SEND_BUFFER_LIMIT:
                connection.shell.wake()

    def _notify(self, vring: _Vring) -> None:
        if vring.call_fd >= 0 and vring.queue is not None and vring.queue.wants_interrupt():
            try:
                os.write(vring.call_fd, _EVENTFD_ONE)
            except BlockingIOError:
                pass  # the counter is full: the guest is interrupted anyway

    def _broken(self, why: str) -> None:
        """Hostile or corrupt rings: this guest's device stops; ninepd and others go on."""
        log.error("vsock guest %d: device broken: %s", self.mux.guest_cid, why)
        self.broken = why
        for vring in self.vrings:
            if vring.watcher is not None:
                vring.watcher.cancel()
                vring.watcher = None
        self._end_streams()

    def _end_streams(self) -> None:
        for connection in self.mux.reset_all():
            if connection.shell is not None:
                connection.shell.wake()

    def _release_memory(self) -> None:
        self.memory.release()
        for mapped in self._maps:
            try:
                mapped.close()
            except BufferError:
                pass  # a slice is still referenced somewhere; the mapping goes with it
        self._maps = []

    def reset(self) -> None:
        for index in range(len(self.vrings)):
            self._stop(index)
        for vring in self.vrings:
            for fd in (vring.kick_fd, vring.call_fd):
                if fd >= 0:
                    os.close(fd)
        self.vrings = [_Vring(), _Vring()]
        self._release_memory()
        self.broken = None
        self._tx_held = False

    def close(self) -> None:
        self.reset()


async def _receive_message(sock: trio.socket.SocketType) -> vu.Message | None:
    fd_space = stdsocket.CMSG_SPACE(vu.MAX_FDS * array.array("i").itemsize)
    data, ancillary, _flags, _addr = await sock.recvmsg(vu.HEADER.size, fd_space)
    fds: list[int] = []
    for level, kind, payload in ancillary:
        if level == stdsocket.SOL_SOCKET and kind == stdsocket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
            fds += list(received)
    if not data:
        for fd in fds:
            os.close(fd)
        return None
    try:
        while len(data) < vu.HEADER.size:
            more = await sock.recv(vu.HEADER.size - len(data))
            if not more:
                raise vu.ProtocolError("QEMU left in the middle of a message")
            data += more
        request, flags, size = vu.parse_header(data)
        payload = b""
        while len(payload) < size:
            more = await sock.recv(size - len(payload))
            if not more:
                raise vu.ProtocolError("QEMU left in the middle of a message")
            payload += more
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return vu.Message(request, flags, payload, fds)


async def _send_all(sock: trio.socket.SocketType, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[await sock.send(view):]


async def serve_session(sock: trio.socket.SocketType, device: VsockDevice) -> None:
    """One QEMU's vhost-user connection, until it disconnects."""
    async with trio.open_nursery() as nursery:
        device.nursery = nursery
        try:
            while (message := await _receive_message(sock)) is not None:
                try:
                    answer = device.handle(message)
                finally:
                    for fd in message.fds:  # any fd the request did not take
                        os.close(fd)
                if answer is not None:
                    await _send_all(sock, answer)
        except (vu.ProtocolError, GuestMemoryFault, OSError, ValueError) as exc:
            log.error("vhost-user: dropping QEMU's connection: %s", exc)
        finally:
            device.close()
            nursery.cancel_scope.cancel()
