"""The vhost-user wire format, device ("back-end") side (QEMU docs/interop/vhost-user.rst).

Every message is a 12-byte header (request, flags, payload size) and a payload; fds
(memory regions, eventfds) come as SCM_RIGHTS on the same sendmsg. Pure: parsing and
building bytes only.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

HEADER = struct.Struct("<III")
VERSION = 0x1
FLAG_REPLY = 1 << 2
FLAG_NEED_REPLY = 1 << 3
MAX_PAYLOAD = 4096  # the largest message we take (a memory table of 8 regions is 328)
MAX_FDS = 8

GET_FEATURES = 1
SET_FEATURES = 2
SET_OWNER = 3
RESET_OWNER = 4
SET_MEM_TABLE = 5
SET_LOG_BASE = 6
SET_LOG_FD = 7
SET_VRING_NUM = 8
SET_VRING_ADDR = 9
SET_VRING_BASE = 10
GET_VRING_BASE = 11
SET_VRING_KICK = 12
SET_VRING_CALL = 13
SET_VRING_ERR = 14
GET_PROTOCOL_FEATURES = 15
SET_PROTOCOL_FEATURES = 16
GET_QUEUE_NUM = 17
SET_VRING_ENABLE = 18
GET_CONFIG = 24
SET_CONFIG = 25

VIRTIO_F_VERSION_1 = 1 << 32
VHOST_USER_F_PROTOCOL_FEATURES = 1 << 30
PROTOCOL_F_REPLY_ACK = 1 << 3
PROTOCOL_F_CONFIG = 1 << 9

VRING_IDX_MASK = 0xFF
VRING_NOFD_MASK = 1 << 8

U64 = struct.Struct("<Q")
VRING_STATE = struct.Struct("<II")
VRING_ADDR = struct.Struct("<IIQQQQ")  # index, flags, desc, used, avail, log (user addresses)
MEM_REGION = struct.Struct("<QQQQ")    # guest_phys_addr, memory_size, userspace_addr, mmap_offset
CONFIG_HEADER = struct.Struct("<III")  # offset, size, flags


class ProtocolError(Exception):
    """QEMU sent something this device cannot make sense of; the connection is dropped."""


@dataclass
class Message:
    request: int
    flags: int
    payload: bytes
    fds: list[int]

    @property
    def needs_reply(self) -> bool:
        return bool(self.flags & FLAG_NEED_REPLY)

    def u64(self) -> int:
        return self._unpack(U64)[0]

    def vring_state(self) -> tuple[int, int]:
        return self._unpack(VRING_STATE)

    def vring_addr(self):
        return self._unpack(VRING_ADDR)

    def memory_regions(self) -> list[tuple[int, int, int, int]]:
        if len(self.payload) < 8:
            raise ProtocolError("SET_MEM_TABLE too short")
        count = struct.unpack_from("<I", self.payload)[0]
        if count > MAX_FDS or len(self.payload) < 8 + count * MEM_REGION.size:
            raise ProtocolError(f"SET_MEM_TABLE with {count} regions")
        if len(self.fds) != count:
            raise ProtocolError(f"SET_MEM_TABLE: {count} regions but {len(self.fds)} fds")
        return [MEM_REGION.unpack_from(self.payload, 8 + i * MEM_REGION.size) for i in range(count)]

    def config_request(self) -> tuple[int, int]:
        offset, size, _flags = self._unpack(CONFIG_HEADER)
        return offset, size

    def _unpack(self, layout: struct.Struct):
        if len(self.payload) < layout.size:
            raise ProtocolError(f"request {self.request}: {len(self.payload)} bytes, need {layout.size}")
        return layout.unpack_from(self.payload)


def parse_header(data: bytes) -> tuple[int, int, int]:
    request, flags, size = HEADER.unpack(data)
    if flags & 0x3 != VERSION:
        raise ProtocolError(f"vhost-user version {flags & 0x3}, expected {VERSION}")
    if size > MAX_PAYLOAD:
        raise ProtocolError(f"request {request}: payload of {size} bytes")
    return request, flags, size


def reply(request: int, payload: bytes) -> bytes:
    return HEADER.pack(request, VERSION | FLAG_REPLY, len(payload)) + payload


def reply_u64(request: int, value: int) -> bytes:
    return reply(request, U64.pack(value))


def reply_config(offset: int, space: bytes) -> bytes:
    """GET_CONFIG's answer: the request's header echoed with the bytes asked for."""
    return reply(GET_CONFIG, CONFIG_HEADER.pack(offset, len(space), 0) + space)
