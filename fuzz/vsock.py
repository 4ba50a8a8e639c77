"""The vhost-user vsock device's guest side: split virtqueues and vsock packets in guest
memory the fuzzer writes. The memory is two memfd regions with a hole between them; the
TX and RX rings sit in the first. The input is two ring sizes and then a script of guest
and host steps: write bytes anywhere in guest memory (descriptors, rings, packets), kick
TX or RX, and, as a host application on an accepted stream, write, read, close or reset.
The real VsockDevice drains TX and fills RX (``_drain_tx``, ``flush``: what a kick runs).

After every step:
- nothing but a step of the script raised (the device turns QueueBroken and BadPacket
  into a broken device or a warning; a host write to a closed stream is BrokenPipeError);
- every range the device asked guest memory for lies inside one region and the view it
  got has exactly that length (nothing outside the regions is ever touched);
- what the device holds is bounded: replies queued for the guest, streams, and bytes
  per stream within their credit."""

from __future__ import annotations

import logging
import mmap
import os
import struct

import trio

from ninep.vhost.device import RX_QUEUE, TX_QUEUE, VsockDevice
from ninep.vhost.memory import GuestMemory, Region
from ninep.vhost.virtqueue import SplitQueue
from ninep.vhost.vsock import MAX_CONNECTIONS

GUEST_CID = 3
PORT = 564
REGION_SIZE = 2048
REGIONS = ((0x10000, 0x7F0000000000), (0x10000 + 2 * REGION_SIZE, 0x7F0000100000))  # a hole between
# Ring addresses in region 0 for the largest ring (16): desc 256 B, avail 38 B, used 134 B.
RINGS = {TX_QUEUE: (0, 256, 296), RX_QUEUE: (432, 688, 728)}

WRITE, KICK_TX, KICK_RX, APP_WRITE, APP_READ, APP_CLOSE, APP_RESET = range(7)



class CheckedMemory(GuestMemory):
    """GuestMemory that asserts every view it hands out is inside one region, in full."""

    def _find(self, addr: int, length: int, key: str) -> memoryview:
        view = super()._find(addr, length, key)  # GuestMemoryFault is its documented refusal
        assert len(view) == length, (addr, length, len(view))
        assert any(getattr(r, key) <= addr and addr + length <= getattr(r, key) + r.size
                   for r in self.regions), (hex(addr), length)
        return view


class Guest:
    def __init__(self, data: bytes) -> None:
        self.fds = [os.memfd_create("fuzz-guest-ram") for _ in REGIONS]
        self.maps = []
        regions = []
        for fd, (gpa, uva) in zip(self.fds, REGIONS):
            os.ftruncate(fd, REGION_SIZE)
            mapped = mmap.mmap(fd, REGION_SIZE)
            self.maps.append(mapped)
            regions.append(Region(gpa, REGION_SIZE, uva, 0, memoryview(mapped)))
        self.memory = CheckedMemory(regions)
        send, self.accepted = trio.open_memory_channel(4)
        self.device = VsockDevice(GUEST_CID, {PORT}, send, forward_prefix="/nonexistent/fuzz")
        self.device.memory = self.memory
        self.streams = []
        self.app_steps = 0  # each may queue one reply (credit update, RST) for the guest
        sizes = data[:2].ljust(2, b"\0")
        for index, size_byte in zip((TX_QUEUE, RX_QUEUE), sizes):
            num = 1 << (size_byte % 5)  # 1..16
            desc, avail, used = (REGIONS[0][1] + a for a in RINGS[index])
            self.device.vrings[index].queue = SplitQueue(self.memory, num, desc, avail, used)

    def step(self, op: int, data: bytes) -> None:
        device = self.device
        if op == WRITE:  # offset (u16, across both regions and the hole) then the bytes
            if len(data) < 2:
                return
            offset = struct.unpack_from("<H", data)[0] % (2 * REGION_SIZE)
            payload = data[2:]
            region, start = divmod(offset, REGION_SIZE)
            chunk = payload[:REGION_SIZE - start]
            self.maps[region][start:start + len(chunk)] = chunk
        elif op == KICK_TX:
            device._drain_tx()
            device.flush()
        elif op == KICK_RX:
            device.flush()
        else:
            self.app_steps += 1
            self._accept()
            if not self.streams:
                return
            connection = self.streams[(data[0] if data else 0) % len(self.streams)]
            if op == APP_WRITE:
                try:
                    device.mux.write(connection, data[1:] * 64)
                except BrokenPipeError:  # the stream is closed: the documented refusal
                    pass
            elif op == APP_READ:
                device.mux.read(connection, 1 + (data[1] if len(data) > 1 else 0) * 64)
            elif op == APP_CLOSE:
                device.mux.close(connection)
            else:
                device.mux.reset(connection)
            device.flush()

    def _accept(self) -> None:
        while True:
            try:
                stream = self.accepted.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return
            self.streams.append(stream._connection)

    def check(self) -> None:
        mux = self.device.mux
        # Guest packets are not taken while a ring's worth of replies waits (the last one
        # taken may add two: a RESPONSE, then RST when nobody accepts); host steps add one.
        tx = self.device.vrings[TX_QUEUE].queue
        limit = tx.num + 1 + self.app_steps
        assert mux.replies_queued <= limit, f"{mux.replies_queued} replies queued, limit {limit}"
        assert len({id(c) for c in mux._ready}) == len(mux._ready), "a stream queued twice"
        assert all(c.ready for c in mux._ready)
        assert len(mux.connections) <= MAX_CONNECTIONS
        for connection in mux.connections.values():
            assert len(connection.received) <= connection.buf_alloc

    def close(self) -> None:
        self.device.vrings = [type(v)() for v in self.device.vrings]
        self.memory.regions = []
        for mapped in self.maps:
            try:
                mapped.close()
            except BufferError:  # a chain's view outlives the step; the map goes with it
                pass
        for fd in self.fds:
            os.close(fd)


def steps(data: bytes):
    """The script after the two size bytes: [op, length, bytes...]*."""
    at = 2
    while at + 2 <= len(data):
        op, length = data[at] % 7, data[at + 1]
        yield op, data[at + 2:at + 2 + length]
        at += 2 + length


def one_input(data: bytes) -> None:
    guest = Guest(data)
    try:
        for count, (op, argument) in enumerate(steps(data)):
            if count >= 200:
                break
            guest.step(op, argument)
            guest.check()
    finally:
        guest.close()


def main() -> None:
    from fuzz.driver import run
    logging.getLogger("ninep.vhost").setLevel(logging.CRITICAL + 1)  # faults are expected here
    run("vsock", one_input)


if __name__ == "__main__":
    main()
