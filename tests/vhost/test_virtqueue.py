"""Split virtqueue parsing against rings built by hand in a memfd, hostile ones included."""

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.vhost.memory import GuestMemoryFault
from ninep.vhost.virtqueue import (VRING_DESC_F_INDIRECT, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
                                   QueueBroken, SplitQueue)
from vhost_ring import GUEST_BASE, DriverRing, GuestRam

NUM = 8


@pytest.fixture
def ram():
    ram = GuestRam()
    yield ram
    ram.close()


def queue_for(ram, ring):
    return SplitQueue(ram.memory(), ring.num, *ring.user_addresses())


def test_chain_payloads_are_views_of_guest_memory(ram):
    ring = DriverRing(ram, NUM)
    head, (reply_addr,) = ring.post([b"hdr", b"payload"], [16])
    queue = queue_for(ram, ring)
    chain = queue.pop()
    assert chain.head == head
    assert [bytes(b) for b in chain.readable] == [b"hdr", b"payload"]
    ram.write(reply_addr - 0, b"x")  # the device's view sees the driver's write: no copy
    assert bytes(chain.writable[0][:1]) == b"x"
    assert chain.scatter(b"0123456789", b"abcdef") == 16
    queue.push(chain.head, 16)
    assert ram.read(reply_addr, 16) == b"0123456789abcdef"
    assert ring.used_entries() == [(head, 16)]
    assert queue.pop() is None


def test_scatter_spans_buffers_and_refuses_overflow(ram):
    ring = DriverRing(ram, NUM)
    _, (a, b) = ring.post([], [4, 8])
    chain = queue_for(ram, ring).pop()
    assert chain.writable_size == 12
    chain.scatter(b"abcdef", b"ghijkl")
    assert ram.read(a, 4) + ram.read(b, 8) == b"abcdefghijkl"
    with pytest.raises(ValueError):
        chain.scatter(b"x" * 13)


def test_ring_index_wraps_past_65535(ram):
    ring = DriverRing(ram, NUM)
    ring.avail_idx = 0xFFFF
    ring.post([b"a"])
    ring.post([b"b"])
    queue = SplitQueue(ram.memory(), NUM, *ring.user_addresses(), last_avail_idx=0xFFFF)
    assert bytes(queue.pop().readable[0]) == b"a"
    assert bytes(queue.pop().readable[0]) == b"b"
    assert queue.pop() is None


@pytest.mark.parametrize("hostile, message", [
    ("loop", "longer than the ring"),
    ("index", "outside a ring"),
    ("address", "outside guest memory"),
    ("length", "outside guest memory"),
    ("indirect", "indirect"),
    ("order", "readable buffer after a writable"),
    ("avail_idx", "runs"),
])
def test_hostile_rings_break_the_queue(ram, hostile, message):
    ring = DriverRing(ram, NUM)
    buf = ram.alloc(64)
    if hostile == "loop":
        ring.set_desc(0, buf, 8, VRING_DESC_F_NEXT, 1)
        ring.set_desc(1, buf, 8, VRING_DESC_F_NEXT, 0)
    elif hostile == "index":
        ring.set_desc(0, buf, 8, VRING_DESC_F_NEXT, NUM)
    elif hostile == "address":
        ring.set_desc(0, GUEST_BASE + ram.size, 8, 0, 0)
    elif hostile == "length":
        ring.set_desc(0, GUEST_BASE + ram.size - 4, 8, 0, 0)
    elif hostile == "indirect":
        ring.set_desc(0, buf, 16, VRING_DESC_F_INDIRECT, 0)
    elif hostile == "order":
        ring.set_desc(0, buf, 8, VRING_DESC_F_WRITE | VRING_DESC_F_NEXT, 1)
        ring.set_desc(1, buf, 8, 0, 0)
    ring.publish(0)
    if hostile == "avail_idx":
        ram.write(ring.avail + 2, struct.pack("<H", NUM + 1))
    queue = queue_for(ram, ring)
    with pytest.raises(QueueBroken, match=message):
        queue.pop()
    assert queue.broken
    with pytest.raises(QueueBroken):  # stays broken: nothing more is read or written
        queue.push(0, 0)


def test_rings_outside_memory_or_bad_sizes_are_refused(ram):
    ring = DriverRing(ram, NUM)
    desc, avail, used = ring.user_addresses()
    with pytest.raises(QueueBroken, match="outside"):
        SplitQueue(ram.memory(), NUM, desc + ram.size, avail, used)
    for num in (0, 3, 65536):
        with pytest.raises(QueueBroken, match="power of two"):
            SplitQueue(ram.memory(), num, desc, avail, used)


def test_memory_lookups_never_leave_the_regions(ram):
    memory = ram.memory()
    assert len(memory.guest(GUEST_BASE, ram.size)) == ram.size
    for addr, length in [(GUEST_BASE - 1, 1), (GUEST_BASE, ram.size + 1), (GUEST_BASE, -1), (0, 0)]:
        with pytest.raises(GuestMemoryFault):
            memory.guest(addr, length)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(table=st.binary(min_size=16 * NUM, max_size=16 * NUM),
       avail=st.binary(min_size=6 + 2 * NUM, max_size=6 + 2 * NUM),
       aim=st.lists(st.integers(0, NUM - 1), max_size=NUM))
def test_fuzzed_rings_give_chains_inside_memory_or_break(ram, table, avail, aim):
    """Random descriptor tables and avail rings (some addresses aimed into the memfd)."""
    ring = DriverRing(ram, NUM)
    ram.write(ring.desc, table)
    ram.write(ring.avail, avail)
    for index in aim:  # make some descriptors point at real memory so chains get walked
        addr = GUEST_BASE + (index * 4096) % ram.size
        ram.write(ring.desc + 16 * index, struct.pack("<Q", addr))
    memory = ram.memory()
    regions = [(r.guest_phys_addr, r.size) for r in memory.regions]
    queue = SplitQueue(memory, NUM, *ring.user_addresses())
    try:
        for _ in range(NUM + 1):
            chain = queue.pop()
            if chain is None:
                break
            assert len(chain.readable) + len(chain.writable) <= NUM
            for buffer in chain.readable + chain.writable:
                assert len(buffer) <= regions[0][1]
            queue.push(chain.head, 0)
    except QueueBroken:
        assert queue.broken
