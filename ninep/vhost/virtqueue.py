"""Split virtqueues (virtio 1.2, 2.7) over guest memory, with the guest as hostile input.

The ring lives in memory the guest can rewrite at any moment, so every value read from
it is checked before use: the available index may run at most ``num`` ahead, a head or
``next`` index must be below ``num``, a chain may not be longer than ``num`` (which
also catches loops), readable buffers come before writable ones, indirect tables are
refused (the feature is never offered) and every buffer must lie inside one memory
region. The first violation marks the queue ``broken`` and raises ``QueueBroken``; a
broken queue does nothing more until it is set up again, and nothing outside the
mapped regions is ever touched.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from .memory import GuestMemory, GuestMemoryFault

VRING_DESC_F_NEXT = 1
VRING_DESC_F_WRITE = 2
VRING_DESC_F_INDIRECT = 4
VRING_AVAIL_F_NO_INTERRUPT = 1
MAX_QUEUE_SIZE = 32768  # virtio's limit for a split ring

_DESC = struct.Struct("<QIHH")
_U16 = struct.Struct("<H")
_USED_ELEM = struct.Struct("<II")


class QueueBroken(Exception):
    """The guest put something impossible in the ring; the message says what."""


@dataclass
class Chain:
    """One descriptor chain: ``readable`` buffers the device reads, ``writable`` ones it fills."""

    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)

    @property
    def writable_size(self) -> int:
        return sum(len(b) for b in self.writable)

    def gather(self) -> memoryview:
        """The readable bytes as one view: the buffer itself when there is one, else a copy."""
        if len(self.readable) == 1:
            return self.readable[0]
        return memoryview(b"".join(self.readable))

    def scatter(self, *parts) -> int:
        """Copy ``parts`` into the writable buffers in order; returns the bytes written."""
        buffers = iter(self.writable)
        target, used, written = None, 0, 0
        for part in parts:
            part = memoryview(part).cast("B")
            while len(part):
                if target is None or used == len(target):
                    target = next(buffers, None)
                    used = 0
                    if target is None:
                        raise ValueError("the chain's writable buffers are too small")
                    continue
                step = min(len(part), len(target) - used)
                target[used:used + step] = part[:step]
                used += step
                written += step
                part = part[step:]
        return written


def ring_sizes(num: int) -> tuple[int, int, int]:
    """Bytes of the descriptor table, the available ring and the used ring (with event words)."""
    return 16 * num, 6 + 2 * num, 6 + 8 * num


class SplitQueue:
    def __init__(self, memory: GuestMemory, num: int, desc_addr: int, avail_addr: int,
                 used_addr: int, *, last_avail_idx: int = 0, by_guest_address: bool = False) -> None:
        """Addresses are QEMU's virtual addresses (SET_VRING_ADDR), or guest physical
        ones with ``by_guest_address``. Raises QueueBroken if the rings do not fit."""
        if not 0 < num <= MAX_QUEUE_SIZE or num & (num - 1):
            raise QueueBroken(f"queue size {num} is not a power of two up to {MAX_QUEUE_SIZE}")
        self.memory = memory
        self.num = num
        self.broken: str | None = None
        desc_size, avail_size, used_size = ring_sizes(num)
        lookup = memory.guest if by_guest_address else memory.user
        try:
            self._desc = lookup(desc_addr, desc_size)
            self._avail = lookup(avail_addr, avail_size)
            self._used = lookup(used_addr, used_size)
        except GuestMemoryFault as exc:
            raise QueueBroken(f"ring outside guest memory: {exc}") from None
        self.last_avail_idx = last_avail_idx & 0xFFFF
        self.used_idx = _U16.unpack_from(self._used, 2)[0]

    def _break(self, why: str):
        self.broken = why
        raise QueueBroken(why)

    def available(self) -> int:
        """Chains the guest has made available and the device has not taken yet."""
        if self.broken:
            raise QueueBroken(self.broken)
        waiting = (_U16.unpack_from(self._avail, 2)[0] - self.last_avail_idx) & 0xFFFF
        if waiting > self.num:
            self._break(f"available index runs {waiting} ahead of a ring of {self.num}")
        return waiting

    def pop(self) -> Chain | None:
        """The next available chain, or None when the guest has offered nothing new."""
        if not self.available():
            return None
        head = _U16.unpack_from(self._avail, 4 + 2 * (self.last_avail_idx % self.num))[0]
        chain = self._walk(head)
        self.last_avail_idx = (self.last_avail_idx + 1) & 0xFFFF
        return chain

    def _walk(self, head: int) -> Chain:
        chain = Chain(head)
        index = head
        for _ in range(self.num):
            if index >= self.num:
                self._break(f"descriptor index {index} outside a ring of {self.num}")
            addr, length, flags, nxt = _DESC.unpack_from(self._desc, 16 * index)
            if flags & VRING_DESC_F_INDIRECT:
                self._break(f"descriptor {index}: indirect tables were not negotiated")
            try:
                buffer = self.memory.guest(addr, length)
            except GuestMemoryFault as exc:
                self._break(f"descriptor {index}: {exc}")
            if flags & VRING_DESC_F_WRITE:
                chain.writable.append(buffer)
            elif chain.writable:
                self._break(f"descriptor {index}: a readable buffer after a writable one")
            else:
                chain.readable.append(buffer)
            if not flags & VRING_DESC_F_NEXT:
                return chain
            index = nxt
        self._break(f"chain from head {head} is longer than the ring (a loop?)")

    def push(self, head: int, written: int) -> None:
        """Give chain ``head`` back to the guest with ``written`` bytes filled in."""
        if self.broken:
            raise QueueBroken(self.broken)
        _USED_ELEM.pack_into(self._used, 4 + 8 * (self.used_idx % self.num), head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        # The element is stored before the index that publishes it (x86 keeps store order;
        # CPython does not reorder these two writes).
        _U16.pack_into(self._used, 2, self.used_idx)

    def wants_interrupt(self) -> bool:
        return not _U16.unpack_from(self._avail, 0)[0] & VRING_AVAIL_F_NO_INTERRUPT

    def release(self) -> None:
        for view in (self._desc, self._avail, self._used):
            view.release()
