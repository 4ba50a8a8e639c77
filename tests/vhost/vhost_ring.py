"""The driver's half of a split virtqueue, built by hand in a memfd (what a guest does)."""

from __future__ import annotations

import mmap
import os
import struct

from ninep.vhost.memory import GuestMemory, Region
from ninep.vhost.virtqueue import VRING_DESC_F_NEXT, VRING_DESC_F_WRITE, ring_sizes

GUEST_BASE = 0x100000      # guest physical address of the memfd's first byte
USER_BASE = 0x7F0000000000  # where "QEMU" has it mapped


class GuestRam:
    def __init__(self, size: int = 1 << 20) -> None:
        self.fd = os.memfd_create("test-guest-ram")
        os.ftruncate(self.fd, size)
        self.size = size
        self.map = mmap.mmap(self.fd, size)
        self.next_free = 0

    def alloc(self, size: int, align: int = 16) -> int:
        """A guest physical address of ``size`` fresh bytes."""
        self.next_free = (self.next_free + align - 1) // align * align
        offset = self.next_free
        self.next_free += size
        assert self.next_free <= self.size
        return GUEST_BASE + offset

    def write(self, gpa: int, data: bytes) -> None:
        self.map[gpa - GUEST_BASE:gpa - GUEST_BASE + len(data)] = data

    def read(self, gpa: int, size: int) -> bytes:
        return bytes(self.map[gpa - GUEST_BASE:gpa - GUEST_BASE + size])

    def memory(self) -> GuestMemory:
        """The device's view, mapped separately from the same fd, as a device would."""
        device_map = mmap.mmap(self.fd, self.size)
        return GuestMemory([Region(GUEST_BASE, self.size, USER_BASE, 0, memoryview(device_map))])

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


class DriverRing:
    """One split ring: the driver posts chains and reads the used ring."""

    def __init__(self, ram: GuestRam, num: int) -> None:
        self.ram, self.num = ram, num
        desc_size, avail_size, used_size = ring_sizes(num)
        self.desc = ram.alloc(desc_size)
        self.avail = ram.alloc(avail_size, 2)
        self.used = ram.alloc(used_size, 4)
        self.avail_idx = 0
        self.used_seen = 0
        self.next_desc = 0

    def user_addresses(self) -> tuple[int, int, int]:
        return tuple(a - GUEST_BASE + USER_BASE for a in (self.desc, self.avail, self.used))

    def set_desc(self, index: int, addr: int, length: int, flags: int, nxt: int) -> None:
        self.ram.write(self.desc + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))

    def publish(self, head: int) -> None:
        self.ram.write(self.avail + 4 + 2 * (self.avail_idx % self.num), struct.pack("<H", head))
        self.avail_idx = (self.avail_idx + 1) & 0xFFFF
        self.ram.write(self.avail + 2, struct.pack("<H", self.avail_idx))

    def post(self, readable: list[bytes] = (), writable: list[int] = ()) -> tuple[int, list[int]]:
        """Post one chain; returns its head and the addresses of its writable buffers."""
        buffers = [(self.ram.alloc(len(d)), len(d), 0, d) for d in readable]
        buffers += [(self.ram.alloc(n), n, VRING_DESC_F_WRITE, None) for n in writable]
        indices = [(self.next_desc + i) % self.num for i in range(len(buffers))]
        self.next_desc = (self.next_desc + len(buffers)) % self.num
        for i, (addr, length, flags, data) in enumerate(buffers):
            if data is not None:
                self.ram.write(addr, data)
            last = i == len(buffers) - 1
            self.set_desc(indices[i], addr, length, flags | (0 if last else VRING_DESC_F_NEXT),
                          0 if last else indices[i + 1])
        self.publish(indices[0])
        return indices[0], [b[0] for b in buffers if b[2] & VRING_DESC_F_WRITE]

    def used_entries(self) -> list[tuple[int, int]]:
        idx = struct.unpack("<H", self.ram.read(self.used + 2, 2))[0]
        out = []
        while self.used_seen != idx:
            out.append(struct.unpack("<II", self.ram.read(self.used + 4 + 8 * (self.used_seen % self.num), 8)))
            self.used_seen = (self.used_seen + 1) & 0xFFFF
        return out
