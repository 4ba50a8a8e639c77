"""virtio-vsock stream rules, table-tested against the pure mux (no rings, no trio)."""

import pytest

from ninep.vhost.vsock import (HEADER, HOST_CID, OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST,
                               OP_RESPONSE, OP_RST, OP_RW, OP_SHUTDOWN, SHUTDOWN_BOTH,
                               SHUTDOWN_SEND, BadPacket, Packet, VsockMux, parse_packet)

GUEST = 3
GUEST_PORT = 1025
PORT = 564


def guest(op, *, port=PORT, src_port=GUEST_PORT, payload=b"", buf_alloc=65536, fwd_cnt=0,
          flags=0, type_=1, src_cid=GUEST):
    return Packet(src_cid, HOST_CID, src_port, port, op, type=type_, flags=flags,
                  buf_alloc=buf_alloc, fwd_cnt=fwd_cnt, payload=payload)


def drain(mux, room=4096):
    out = []
    while (packet := mux.next_packet(room)) is not None:
        out.append(packet)
    return out


def connected(buf_alloc=65536, **options):
    mux = VsockMux(GUEST, {PORT}, buf_alloc=buf_alloc, **options)
    [(kind, connection)] = mux.receive(guest(OP_REQUEST))
    assert kind == "accept"
    [response] = drain(mux)
    assert (response.op, response.src_cid, response.dst_cid) == (OP_RESPONSE, HOST_CID, GUEST)
    assert (response.src_port, response.dst_port, response.buf_alloc) == (PORT, GUEST_PORT, buf_alloc)
    return mux, connection


def test_header_round_trip_and_payload_is_a_view():
    packet = guest(OP_RW, payload=b"hello")
    wire = memoryview(bytearray(packet.header() + b"hello" + b"junk"))
    parsed = parse_packet(wire)
    assert len(packet.header()) == HEADER.size == 44
    assert (parsed.op, parsed.src_port, bytes(parsed.payload)) == (OP_RW, GUEST_PORT, b"hello")
    assert parsed.payload.obj is wire.obj  # a slice of the buffer, not a copy
    with pytest.raises(BadPacket):
        parse_packet(wire[:40])
    with pytest.raises(BadPacket):
        parse_packet(memoryview(packet.header()))  # says 5 payload bytes, has none


@pytest.mark.parametrize("packet, answer", [
    (guest(OP_REQUEST, port=9999), OP_RST),                   # nobody listens there
    (guest(OP_RW, payload=b"x"), OP_RST),                     # no such stream
    (guest(OP_REQUEST, type_=2), OP_RST),                     # seqpacket is not offered
    (guest(OP_RST), None),                                    # a reset is never answered
    (guest(OP_REQUEST, src_cid=7), None),                     # not this guest's CID: dropped
])
def test_packets_outside_a_stream(packet, answer):
    mux = VsockMux(GUEST, {PORT})
    assert mux.receive(packet) == []
    assert [p.op for p in drain(mux)] == ([answer] if answer else [])
    assert not mux.connections


def test_data_both_ways_with_credit():
    mux, connection = connected()
    mux.receive(guest(OP_RW, payload=b"Tversion"))
    assert mux.read(connection, 100) == b"Tversion" and connection.fwd_cnt == 8
    mux.write(connection, b"R" * 10000)
    packets = drain(mux, room=4096)
    assert [len(p.payload) for p in packets] == [4096, 4096, 1808]  # split to the RX buffers
    assert all(p.op == OP_RW and p.fwd_cnt == 8 for p in packets)  # credit piggybacks


def test_host_never_sends_past_the_guest_credit():
    mux, connection = connected()
    mux.receive(guest(OP_CREDIT_UPDATE, buf_alloc=5000, fwd_cnt=0))
    mux.write(connection, b"x" * 8000)
    packets = drain(mux)
    assert [p.op for p in packets] == [OP_RW, OP_RW, OP_CREDIT_REQUEST]
    assert sum(len(p.payload) for p in packets) == 5000
    mux.receive(guest(OP_CREDIT_UPDATE, buf_alloc=5000, fwd_cnt=5000))  # guest read it all
    assert sum(len(p.payload) for p in drain(mux)) == 3000


def test_guest_past_its_credit_is_reset():
    mux, connection = connected(buf_alloc=4096)
    mux.receive(guest(OP_RW, payload=b"a" * 4096))
    events = mux.receive(guest(OP_RW, payload=b"b"))
    assert events == [("changed", connection)] and connection.closed
    assert [p.op for p in drain(mux)] == [OP_RST]


def test_reading_returns_credit_to_the_guest():
    mux, connection = connected(buf_alloc=8192)
    mux.receive(guest(OP_RW, payload=b"a" * 4096))
    mux.read(connection, 1000)
    assert drain(mux) == []  # under a quarter of the buffer: wait for more or piggyback
    mux.read(connection, 3096)
    [update] = drain(mux)
    assert (update.op, update.fwd_cnt, update.buf_alloc) == (OP_CREDIT_UPDATE, 4096, 8192)


def test_credit_request_is_answered():
    mux, connection = connected()
    mux.receive(guest(OP_RW, payload=b"abc"))
    mux.read(connection, 3)
    mux.receive(guest(OP_CREDIT_REQUEST))
    [update] = drain(mux)
    assert (update.op, update.fwd_cnt) == (OP_CREDIT_UPDATE, 3)


def test_guest_shutdown_then_host_close():
    mux, connection = connected()
    mux.receive(guest(OP_RW, payload=b"last"))
    mux.receive(guest(OP_SHUTDOWN, flags=SHUTDOWN_SEND))
    assert connection.at_eof and mux.read(connection, 10) == b"last"
    mux.close(connection)
    assert [p.op for p in drain(mux)] == [OP_SHUTDOWN]
    mux.receive(guest(OP_RST))
    assert connection.closed and not mux.connections


def test_guest_full_shutdown_is_answered_with_rst():
    mux, connection = connected()
    mux.receive(guest(OP_SHUTDOWN, flags=SHUTDOWN_BOTH))
    assert connection.closed and [p.op for p in drain(mux)] == [OP_RST]


def test_host_close_sends_pending_data_first():
    mux, connection = connected()
    mux.write(connection, b"Rclunk")
    mux.close(connection)
    assert [(p.op, bytes(p.payload)) for p in drain(mux)] == [(OP_RW, b"Rclunk"), (OP_SHUTDOWN, b"")]
    mux.receive(guest(OP_SHUTDOWN, flags=SHUTDOWN_BOTH))
    assert connection.closed and [p.op for p in drain(mux)] == [OP_RST]
    with pytest.raises(BrokenPipeError):
        mux.write(connection, b"more")


def test_request_on_an_open_stream_resets_it():
    mux, connection = connected()
    mux.receive(guest(OP_REQUEST))
    assert connection.closed and [p.op for p in drain(mux)] == [OP_RST]


def test_other_ports_are_forwarded_only_when_asked_and_connections_are_bounded():
    mux = VsockMux(GUEST, {PORT}, forward_other_ports=True, max_connections=2)
    assert mux.receive(guest(OP_REQUEST, port=5000))[0][0] == "forward"
    assert mux.receive(guest(OP_REQUEST, src_port=2000))[0][0] == "accept"
    assert mux.receive(guest(OP_REQUEST, src_port=2001)) == []  # over the bound: refused
    assert [p.op for p in drain(mux)] == [OP_RESPONSE, OP_RESPONSE, OP_RST]


def test_device_reset_ends_every_stream():
    mux, connection = connected()
    mux.write(connection, b"pending")
    assert mux.reset_all() == [connection]
    assert connection.closed and not mux.has_output()
