"""What a guest can make the vsock device hold stays bounded (found by fuzz/vsock.py):
a guest that sends packets but never posts RX buffers grew the reply queue by one per
packet, and every packet on a stream with data waiting re-queued that stream."""

import trio

from ninep.vhost.device import RX_QUEUE, TX_QUEUE, VsockDevice
from ninep.vhost.virtqueue import SplitQueue
from ninep.vhost.vsock import HEADER, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST
from test_vsock import GUEST, GUEST_PORT, PORT, connected, drain, guest
from vhost_ring import DriverRing, GuestRam

NUM = 8


def test_guest_packets_queue_a_waiting_stream_once():
    mux, connection = connected()
    mux.write(connection, b"host data the guest has no RX buffer for")
    for _ in range(1000):
        mux.receive(guest(OP_CREDIT_UPDATE))
    assert len(mux._ready) == 1  # was 1001
    assert [p.payload for p in drain(mux)] == [b"host data the guest has no RX buffer for"]
    assert not mux.has_output()


def test_host_close_after_data_still_sends_shutdown():
    mux, connection = connected()
    mux.write(connection, b"last words")
    mux.close(connection)
    assert [(p.op, bytes(p.payload)) for p in drain(mux)] == [(5, b"last words"), (4, b"")]


def _packet(op, src_port=GUEST_PORT):
    return HEADER.pack(GUEST, 2, src_port, PORT, 0, 1, op, 0, 65536, 0)


def test_a_guest_without_rx_buffers_cannot_queue_unbounded_replies():
    ram = GuestRam()
    send, accepted = trio.open_memory_channel(4)
    device = VsockDevice(GUEST, {PORT}, send, None)
    device.memory = ram.memory()
    tx, rx = DriverRing(ram, NUM), DriverRing(ram, NUM)
    device.vrings[TX_QUEUE].queue = SplitQueue(device.memory, NUM, *tx.user_addresses())
    device.vrings[RX_QUEUE].queue = SplitQueue(device.memory, NUM, *rx.user_addresses())
    tx.post([_packet(OP_REQUEST)])
    sent, outstanding = 1, 1
    for _ in range(200):  # credit requests, as fast as the TX ring takes them
        device._drain_tx()
        device.flush()
        outstanding -= len(tx.used_entries())
        while outstanding < NUM:
            tx.post([_packet(OP_CREDIT_REQUEST)])
            sent, outstanding = sent + 1, outstanding + 1
        assert device.mux.replies_queued <= NUM + 1  # was one per packet taken: 200+
    assert outstanding == NUM  # the device stopped taking packets: the guest must read
    # The guest posts RX buffers: the replies go out and the held packets are taken.
    answers = rx_posted = 0
    for _ in range(40):
        while rx_posted < NUM:
            rx.post(writable=[HEADER.size])
            rx_posted += 1
        device.flush()
        used = len(rx.used_entries())
        answers, rx_posted = answers + used, rx_posted - used
        outstanding -= len(tx.used_entries())
        if not outstanding and not device.mux.has_output():
            break
    assert (outstanding, answers) == (0, sent)  # a RESPONSE and then one update per request
    assert not device.broken
    ram.close()


def test_a_flood_of_malformed_packets_writes_a_few_log_lines(caplog):
    """One warning per short TX buffer let a guest write the host's log at ring speed."""
    ram = GuestRam(4 << 20)
    send, accepted = trio.open_memory_channel(4)
    device = VsockDevice(GUEST, {PORT}, send, None)
    device.memory = ram.memory()
    tx = DriverRing(ram, NUM)
    device.vrings[TX_QUEUE].queue = SplitQueue(device.memory, NUM, *tx.user_addresses())
    caplog.set_level("WARNING", logger="ninep.vhost")
    for _ in range(2000 // NUM):
        for _ in range(NUM):
            tx.post([b"short"])
        device._drain_tx()
        tx.used_entries()
    assert device.bad_packets == 2000 and not device.broken
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3 + 3, lines  # the first three, then at 10, 100 and 1000
    assert lines[0] == "vsock guest 3: 5 bytes is shorter than a vsock header"
    assert lines[-1].startswith("vsock guest 3: 1000 malformed packets so far")
