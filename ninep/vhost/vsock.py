"""virtio-vsock stream sockets (virtio 1.2, 5.10 "Socket Device"), host side, sans I/O.

``VsockMux`` is fed the packets the guest puts in the TX queue (``receive``) and is
asked for the next packet to put in an RX buffer (``next_packet``). Applications on
the host side read and write through it (``read``, ``write``, ``close``); it never
blocks and does no I/O, so the trio shell in device.py decides when to wake whom.

Flow control is virtio's credit scheme, both ways. Every packet carries the sender's
``buf_alloc`` (its receive buffer) and ``fwd_cnt`` (bytes it has consumed from it); a
sender may have at most ``peer_buf_alloc - (tx_cnt - peer_fwd_cnt)`` bytes in flight.
A guest that sends past the credit it was given is reset, so a connection never holds
more than ``buf_alloc`` bytes of guest data.
"""

from __future__ import annotations

import logging
import struct
from collections import deque
from dataclasses import dataclass, field

log = logging.getLogger("ninep.vhost")

HEADER = struct.Struct("<QQIIIHHIII")  # struct virtio_vsock_hdr, 44 bytes
HOST_CID = 2
TYPE_STREAM = 1
OP_REQUEST, OP_RESPONSE, OP_RST, OP_SHUTDOWN, OP_RW, OP_CREDIT_UPDATE, OP_CREDIT_REQUEST = range(1, 8)
SHUTDOWN_RCV, SHUTDOWN_SEND = 1, 2
SHUTDOWN_BOTH = SHUTDOWN_RCV | SHUTDOWN_SEND
DEFAULT_BUF_ALLOC = 256 * 1024
MAX_CONNECTIONS = 1024  # a guest cannot make the host hold more than this many sockets


@dataclass
class Packet:
    src_cid: int
    dst_cid: int
    src_port: int
    dst_port: int
    op: int
    type: int = TYPE_STREAM
    flags: int = 0
    buf_alloc: int = 0
    fwd_cnt: int = 0
    payload: memoryview | bytes = b""

    def header(self) -> bytes:
        return HEADER.pack(self.src_cid, self.dst_cid, self.src_port, self.dst_port,
                           len(self.payload), self.type, self.op, self.flags,
                           self.buf_alloc, self.fwd_cnt)


class BadPacket(Exception):
    pass


def parse_packet(data: memoryview) -> Packet:
    """Header and payload of one TX buffer; the payload is a slice of ``data``."""
    if len(data) < HEADER.size:
        raise BadPacket(f"{len(data)} bytes is shorter than a vsock header")
    (src_cid, dst_cid, src_port, dst_port, length, type_, op, flags, buf_alloc,
     fwd_cnt) = HEADER.unpack_from(data)
    if length > len(data) - HEADER.size:
        raise BadPacket(f"header says {length} payload bytes, the buffer holds {len(data) - HEADER.size}")
    return Packet(src_cid, dst_cid, src_port, dst_port, op, type_, flags, buf_alloc, fwd_cnt,
                  data[HEADER.size:HEADER.size + length])


@dataclass(eq=False)
class VsockConnection:
    """One stream between a guest port and a host port."""

    local_port: int
    peer_port: int
    buf_alloc: int = DEFAULT_BUF_ALLOC
    received: bytearray = field(default_factory=bytearray)  # guest data not yet read
    fwd_cnt: int = 0            # bytes read from ``received`` so far (mod 2**32 on the wire)
    advertised_fwd_cnt: int = 0
    peer_buf_alloc: int = 0
    peer_fwd_cnt: int = 0
    tx_cnt: int = 0
    pending: bytearray = field(default_factory=bytearray)  # host data waiting for RX buffers
    peer_shutdown: int = 0
    closing: bool = False       # the host side closed: drain ``pending``, then SHUTDOWN
    closed: bool = False        # gone for good (RST either way)
    credit_requested: bool = False
    shutdown_sent: bool = False
    ready: bool = False         # in the mux's ready queue (once: guest packets must not grow it)
    shell: object = None        # the trio side's per-connection state

    @property
    def peer_credit(self) -> int:
        return max(0, self.peer_buf_alloc - ((self.tx_cnt - self.peer_fwd_cnt) & 0xFFFFFFFF))

    @property
    def at_eof(self) -> bool:
        """Nothing more will arrive from the guest."""
        return self.closed or bool(self.peer_shutdown & SHUTDOWN_SEND)


class VsockMux:
    """Every stream of one guest. ``listen_ports`` are served in-process; any other
    port is accepted only if ``forward_other_ports`` (the shell connects it onward)."""

    def __init__(self, guest_cid: int, listen_ports, *, forward_other_ports: bool = False,
                 buf_alloc: int = DEFAULT_BUF_ALLOC, max_connections: int = MAX_CONNECTIONS) -> None:
        self.guest_cid = guest_cid
        self.listen_ports = set(listen_ports)
        self.forward_other_ports = forward_other_ports
        self.buf_alloc = buf_alloc
        self.max_connections = max_connections
        self.connections: dict[tuple[int, int], VsockConnection] = {}  # (peer_port, local_port)
        self._control: deque[Packet] = deque()
        self._ready: deque[VsockConnection] = deque()  # may have data to send

    # -- from the guest ---------------------------------------------------------------

    def receive(self, packet: Packet) -> list[tuple[str, VsockConnection]]:
        """Handle one guest packet. Events: ("accept", c) a new in-process stream,
        ("forward", c) a new stream for another port, ("changed", c) data, credit or
        state moved."""
        if packet.src_cid != self.guest_cid or packet.dst_cid != HOST_CID:
            log.debug("vsock: dropping a packet from %d to %d", packet.src_cid, packet.dst_cid)
            return []
        key = (packet.src_port, packet.dst_port)
        connection = self.connections.get(key)
        if packet.type != TYPE_STREAM:
            self._reply_rst(packet)
            return []
        if packet.op == OP_REQUEST:
            return self._request(packet, connection)
        if connection is None:
            if packet.op != OP_RST:
                self._reply_rst(packet)
            return []
        connection.peer_buf_alloc = packet.buf_alloc
        connection.peer_fwd_cnt = packet.fwd_cnt
        connection.credit_requested = False  # any packet carries fresh credit
        if packet.op == OP_RW:
            if len(connection.received) + len(packet.payload) > connection.buf_alloc:
                log.warning("vsock: guest port %d sent past its credit; resetting", packet.src_port)
                return [("changed", self._reset(connection))]
            connection.received += packet.payload
        elif packet.op == OP_CREDIT_REQUEST:
            self._send_control(connection, OP_CREDIT_UPDATE)
        elif packet.op == OP_SHUTDOWN:
            connection.peer_shutdown |= packet.flags & SHUTDOWN_BOTH
            if connection.peer_shutdown == SHUTDOWN_BOTH or connection.closing:
                # As Linux does: the side that hears the last SHUTDOWN answers with RST.
                self._reset(connection)
        elif packet.op == OP_RST:
            self._forget(connection)
        elif packet.op != OP_CREDIT_UPDATE:
            log.debug("vsock: op %d on an open stream; resetting", packet.op)
            self._reset(connection)
        if connection.pending and connection.peer_credit:
            self._mark_ready(connection)
        return [("changed", connection)]

    def _request(self, packet: Packet, existing) -> list:
        if existing is not None:
            return [("changed", self._reset(existing))]
        port = packet.dst_port
        in_process = port in self.listen_ports
        if not (in_process or self.forward_other_ports) or len(self.connections) >= self.max_connections:
            self._reply_rst(packet)
            return []
        connection = VsockConnection(port, packet.src_port, buf_alloc=self.buf_alloc,
                                     peer_buf_alloc=packet.buf_alloc, peer_fwd_cnt=packet.fwd_cnt)
        self.connections[(packet.src_port, port)] = connection
        self._send_control(connection, OP_RESPONSE)
        return [("accept" if in_process else "forward", connection)]

    # -- from host applications ---------------------------------------------------

    def read(self, connection: VsockConnection, max_bytes: int) -> bytes:
        data = bytes(connection.received[:max_bytes])
        del connection.received[:len(data)]
        connection.fwd_cnt += len(data)
        unadvertised = connection.fwd_cnt - connection.advertised_fwd_cnt
        if not connection.closed and unadvertised >= connection.buf_alloc // 4:
            self._send_control(connection, OP_CREDIT_UPDATE)
        return data

    def write(self, connection: VsockConnection, data) -> None:
        if connection.closed or connection.closing:
            raise BrokenPipeError("vsock stream is closed")
        connection.pending += data
        self._mark_ready(connection)

    def close(self, connection: VsockConnection) -> None:
        """The host side is done: what is pending still goes, then SHUTDOWN."""
        if connection.closed or connection.closing:
            return
        connection.closing = True
        self._mark_ready(connection)

    def reset(self, connection: VsockConnection) -> None:
        if not connection.closed:
            self._reset(connection)

    def reset_all(self) -> list[VsockConnection]:
        """The device went away (QEMU left, the guest reset it): every stream ends."""
        gone = list(self.connections.values())
        for connection in gone:
            self._forget(connection)
        self._control.clear()
        for connection in self._ready:
            connection.ready = False
        self._ready.clear()
        return gone

    # -- to the guest -------------------------------------------------------------

    def has_output(self) -> bool:
        return bool(self._control or self._ready)

    @property
    def replies_queued(self) -> int:
        """Control packets waiting for RX buffers: the device stops taking guest packets
        while the guest has not made room for this many (each can cause one)."""
        return len(self._control)

    def next_packet(self, max_payload: int) -> Packet | None:
        """The next packet for an RX buffer with room for ``max_payload`` payload bytes."""
        if self._control:
            return self._control.popleft()
        while self._ready:
            connection = self._ready[0]
            if connection.closed:
                self._unready()
                continue
            size = min(len(connection.pending), connection.peer_credit, max_payload)
            if size > 0:
                payload = bytes(connection.pending[:size])
                del connection.pending[:size]
                connection.tx_cnt += size
                if not connection.pending and not connection.closing:
                    self._unready()  # a closing one stays for its SHUTDOWN
                return self._packet(connection, OP_RW, payload=payload)
            self._unready()
            if connection.pending:
                if not connection.credit_requested:  # blocked: ask the guest for credit once
                    connection.credit_requested = True
                    return self._packet(connection, OP_CREDIT_REQUEST)
            elif connection.closing and not connection.shutdown_sent:
                connection.shutdown_sent = True
                return self._packet(connection, OP_SHUTDOWN, flags=SHUTDOWN_BOTH)
        return None

    # -- helpers ------------------------------------------------------------------

    def _packet(self, connection: VsockConnection, op: int, *, flags: int = 0, payload=b"") -> Packet:
        connection.advertised_fwd_cnt = connection.fwd_cnt
        return Packet(HOST_CID, self.guest_cid, connection.local_port, connection.peer_port, op,
                      flags=flags, buf_alloc=connection.buf_alloc,
                      fwd_cnt=connection.fwd_cnt & 0xFFFFFFFF, payload=payload)

    def _mark_ready(self, connection: VsockConnection) -> None:
        if not connection.ready:
            connection.ready = True
            self._ready.append(connection)

    def _unready(self) -> None:
        self._ready.popleft().ready = False

    def _send_control(self, connection: VsockConnection, op: int, flags: int = 0) -> None:
        self._control.append(self._packet(connection, op, flags=flags))

    def _reply_rst(self, packet: Packet) -> None:
        if packet.op == OP_RST:
            return  # never answer a reset with a reset
        self._control.append(Packet(HOST_CID, self.guest_cid, packet.dst_port, packet.src_port,
                                    OP_RST, type=packet.type))

    def _reset(self, connection: VsockConnection) -> VsockConnection:
        self._send_control(connection, OP_RST)
        return self._forget(connection)

    def _forget(self, connection: VsockConnection) -> VsockConnection:
        connection.closed = True
        connection.pending.clear()
        self.connections.pop((connection.peer_port, connection.local_port), None)
        return connection
