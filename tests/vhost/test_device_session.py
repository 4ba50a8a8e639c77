"""The vhost-user device end to end, with this test as QEMU and as the guest's driver.

A fake QEMU speaks vhost-user to ``VhostUserVsockListener`` over a real Unix socket,
passing the guest RAM (a memfd) and the kick/call eventfds as SCM_RIGHTS, exactly the
messages QEMU 7.2 sends for vhost-user-vsock-pci.  The guest side is hand-built split
rings in that memfd.  What QEMU and the guest see is checked, not the device's insides.
"""

from __future__ import annotations

import array
import os
import socket as stdsocket
import struct

import pytest
import trio

from ninep.vhost import protocol as vu
from ninep.vhost.listener import VhostUserVsockListener
from ninep.vhost.vsock import (HEADER, HOST_CID, OP_REQUEST, OP_RESPONSE, OP_RST, OP_RW,
                               OP_SHUTDOWN, SHUTDOWN_BOTH, Packet)

from vhost_ring import GUEST_BASE, USER_BASE, DriverRing, GuestRam

GUEST_CID = 3
PORT = 564
GUEST_PORT = 40000
RING = 64


class FakeQemu:
    """The front-end half of vhost-user: what QEMU sends, and the replies it reads."""

    def __init__(self, sock: trio.socket.SocketType) -> None:
        self.sock = sock

    async def send(self, request: int, payload: bytes = b"", fds: list[int] = (), flags: int = 0):
        message = vu.HEADER.pack(request, vu.VERSION | flags, len(payload)) + payload
        ancillary = [(stdsocket.SOL_SOCKET, stdsocket.SCM_RIGHTS, array.array("i", fds))] if fds else []
        await self.sock.sendmsg([message], ancillary)

    async def reply(self, request: int) -> bytes:
        header = await self._exactly(vu.HEADER.size)
        got, flags, size = vu.HEADER.unpack(header)
        assert (got, flags) == (request, vu.VERSION | vu.FLAG_REPLY)
        return await self._exactly(size)

    async def _exactly(self, size: int) -> bytes:
        data = b""
        while len(data) < size:
            more = await self.sock.recv(size - len(data))
            assert more, "the device closed the vhost-user socket"
            data += more
        return data

    async def start_device(self, ram: GuestRam, rings: list[DriverRing]) -> list[tuple[int, int]]:
        """QEMU's start-up and the driver's DRIVER_OK; returns (kick, call) per ring."""
        await self.send(vu.GET_FEATURES)
        features = vu.U64.unpack(await self.reply(vu.GET_FEATURES))[0]
        assert features & vu.VIRTIO_F_VERSION_1 and features & vu.VHOST_USER_F_PROTOCOL_FEATURES
        await self.send(vu.GET_PROTOCOL_FEATURES)
        protocol = vu.U64.unpack(await self.reply(vu.GET_PROTOCOL_FEATURES))[0]
        assert protocol & vu.PROTOCOL_F_CONFIG
        await self.send(vu.SET_PROTOCOL_FEATURES, vu.U64.pack(vu.PROTOCOL_F_CONFIG))
        await self.send(vu.SET_OWNER)
        await self.send(vu.GET_CONFIG, vu.CONFIG_HEADER.pack(0, 8, 0) + bytes(8))
        config = await self.reply(vu.GET_CONFIG)
        assert struct.unpack_from("<Q", config, vu.CONFIG_HEADER.size)[0] == GUEST_CID
        await self.send(vu.SET_FEATURES, vu.U64.pack(features))
        table = struct.pack("<II", 1, 0) + vu.MEM_REGION.pack(GUEST_BASE, ram.size, USER_BASE, 0)
        await self.send(vu.SET_MEM_TABLE, table, [ram.fd])
        eventfds = []
        for index, ring in enumerate(rings):
            kick, call = os.eventfd(0, os.EFD_NONBLOCK), os.eventfd(0, os.EFD_NONBLOCK)
            eventfds.append((kick, call))
            desc, avail, used = ring.user_addresses()
            await self.send(vu.SET_VRING_NUM, vu.VRING_STATE.pack(index, ring.num))
            await self.send(vu.SET_VRING_BASE, vu.VRING_STATE.pack(index, 0))
            await self.send(vu.SET_VRING_ADDR, vu.VRING_ADDR.pack(index, 0, desc, used, avail, 0))
            await self.send(vu.SET_VRING_KICK, vu.U64.pack(index), [kick])
            await self.send(vu.SET_VRING_CALL, vu.U64.pack(index), [call])
            await self.send(vu.SET_VRING_ENABLE, vu.VRING_STATE.pack(index, 1))
        return eventfds


class Guest:
    """The guest's vsock driver: RX buffers offered, TX packets posted, kicks sent."""

    def __init__(self, ram: GuestRam) -> None:
        self.ram = ram
        self.rx, self.tx = DriverRing(ram, RING), DriverRing(ram, RING)
        self.rx_buffers: dict[int, int] = {}
        self.kicks: list[tuple[int, int]] = []

    def offer_rx(self, count: int, size: int = 4096) -> None:
        for _ in range(count):
            head, [address] = self.rx.post(writable=[size])
            self.rx_buffers[head] = address

    def send(self, op: int, payload: bytes = b"", *, flags: int = 0) -> None:
        packet = Packet(GUEST_CID, HOST_CID, GUEST_PORT, PORT, op, flags=flags,
                        buf_alloc=65536, fwd_cnt=0, payload=payload)
        self.tx.post(readable=[packet.header() + payload])
        os.write(self.kicks[1][0], struct.pack("<Q", 1))

    async def receive(self) -> list[tuple[int, bytes]]:
        """(op, payload) of the packets the device put in RX buffers, waiting for some."""
        with trio.fail_after(5):
            while not (used := self.rx.used_entries()):
                await trio.sleep(0.005)
        out = []
        for head, written in used:
            data = self.ram.read(self.rx_buffers.pop(head), written)
            fields = HEADER.unpack_from(data)
            src_cid, dst_cid, src_port, dst_port, length, _type, op = fields[:7]
            assert (src_cid, dst_cid, src_port, dst_port) == (HOST_CID, GUEST_CID, PORT, GUEST_PORT)
            out.append((op, data[HEADER.size:HEADER.size + length]))
        return out


@pytest.fixture
async def device(tmp_path):
    path = str(tmp_path / "vm.vsock")
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await sock.bind(path)
    sock.listen()
    listener = VhostUserVsockListener(sock, guest_cid=GUEST_CID, ports={PORT})
    yield listener, path
    await listener.aclose()


async def guest_connects(guest: Guest, listener):
    """The guest opens a stream (OP_REQUEST): the listener hands it over, the guest
    is answered OP_RESPONSE."""
    guest.send(OP_REQUEST)
    with trio.fail_after(5):
        stream = await listener.accept()
    assert [op for op, _ in await guest.receive()] == [OP_RESPONSE]
    return stream


async def connect_qemu(path: str) -> FakeQemu:
    sock = trio.socket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
    await sock.connect(path)
    return FakeQemu(sock)


async def test_qemu_handshake_then_a_guest_stream_both_ways(device):
    listener, path = device
    ram = GuestRam()
    guest = Guest(ram)
    qemu = await connect_qemu(path)
    guest.kicks = await qemu.start_device(ram, [guest.rx, guest.tx])
    guest.offer_rx(16)

    stream = await guest_connects(guest, listener)

    guest.send(OP_RW, b"Tversion please")
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b"Tversion please"
    await stream.send_all(b"Rversion here")
    assert await guest.receive() == [(OP_RW, b"Rversion here")]

    guest.send(OP_SHUTDOWN, flags=SHUTDOWN_BOTH)
    with trio.fail_after(5):
        assert await stream.receive_some(100) == b""
    assert OP_RST in [op for op, _ in await guest.receive()]
    await stream.aclose()
    qemu.sock.close()
    ram.close()


async def test_a_bad_memory_table_drops_that_qemu_and_the_next_one_is_served(device):
    listener, path = device
    first = await connect_qemu(path)
    table = struct.pack("<II", 1, 0) + vu.MEM_REGION.pack(GUEST_BASE, 4096, USER_BASE, 0)
    await first.send(vu.SET_MEM_TABLE, table)  # one region, no fd
    with trio.fail_after(5):
        assert await first.sock.recv(1) == b""  # the device hung up on it
    first.sock.close()

    ram = GuestRam()
    guest = Guest(ram)
    second = await connect_qemu(path)
    guest.kicks = await second.start_device(ram, [guest.rx, guest.tx])
    guest.offer_rx(4)
    stream = await guest_connects(guest, listener)
    assert listener.sessions == 2
    await stream.aclose()
    second.sock.close()
    ram.close()


async def test_a_guest_reboot_ends_its_streams_and_the_restarted_rings_serve_again(device):
    """On a reset QEMU stops each ring (GET_VRING_BASE) and sets it up afresh; the
    streams of the old boot end, and the rebooted guest's first connection is served."""
    listener, path = device
    ram = GuestRam(2 << 20)
    guest = Guest(ram)
    qemu = await connect_qemu(path)
    guest.kicks = await qemu.start_device(ram, [guest.rx, guest.tx])
    guest.offer_rx(4)
    old_stream = await guest_connects(guest, listener)

    for index in (0, 1):
        await qemu.send(vu.GET_VRING_BASE, vu.VRING_STATE.pack(index, 0))
        assert vu.VRING_STATE.unpack(await qemu.reply(vu.GET_VRING_BASE))[0] == index
    with trio.fail_after(5):
        assert await old_stream.receive_some(100) == b""  # the old boot's stream ended

    rebooted = Guest(ram)  # fresh rings in the same RAM, as after a reboot
    rebooted.kicks = await qemu.start_device(ram, [rebooted.rx, rebooted.tx])
    rebooted.offer_rx(4)
    new_stream = await guest_connects(rebooted, listener)
    rebooted.send(OP_RW, b"after the reboot")
    with trio.fail_after(5):
        assert await new_stream.receive_some(100) == b"after the reboot"
    assert listener.sessions == 1  # the same QEMU connection throughout
    await old_stream.aclose()
    await new_stream.aclose()
    qemu.sock.close()
    ram.close()
