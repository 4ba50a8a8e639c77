"""Guest memory as the vhost-user memory table describes it.

QEMU hands the device one fd per RAM region (SET_MEM_TABLE) and names three address
spaces: guest physical addresses (what descriptors hold), QEMU's own virtual
addresses (what SET_VRING_ADDR holds) and the offset into the fd. Every lookup is
checked against the table: an address or length the guest made up raises
``GuestMemoryFault`` and never reads outside the mapped regions.
"""

from __future__ import annotations

from dataclasses import dataclass


class GuestMemoryFault(Exception):
    """An address range that no region covers: the guest (or QEMU) is broken or hostile."""


@dataclass
class Region:
    guest_phys_addr: int
    size: int
    user_addr: int
    mmap_offset: int
    view: memoryview  # exactly ``size`` bytes, starting at the region's first byte


class GuestMemory:
    def __init__(self, regions: list[Region] = ()) -> None:
        self.regions = list(regions)

    def _find(self, addr: int, length: int, key: str) -> memoryview:
        if length < 0 or addr < 0:
            raise GuestMemoryFault(f"bad range {addr:#x}+{length}")
        for region in self.regions:
            start = getattr(region, key)
            if start <= addr and addr + length <= start + region.size:
                offset = addr - start
                return region.view[offset:offset + length]
        raise GuestMemoryFault(f"{addr:#x}+{length} is outside guest memory")

    def guest(self, addr: int, length: int) -> memoryview:
        """``length`` bytes at guest physical address ``addr`` (a slice, not a copy)."""
        return self._find(addr, length, "guest_phys_addr")

    def user(self, addr: int, length: int) -> memoryview:
        """``length`` bytes at QEMU virtual address ``addr`` (vring addresses)."""
        return self._find(addr, length, "user_addr")

    def release(self) -> None:
        for region in self.regions:
            region.view.release()
        self.regions = []
