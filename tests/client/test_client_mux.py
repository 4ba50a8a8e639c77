"""The multiplexer: concurrent requests, error replies, broken connections and Tflush."""

import errno
import struct

import pytest
import trio
import trio.testing

from client_fake_server import FakeServer, served
from ninep.client import ConnectionLost, ProtocolError, error_from_reply, open_client
from ninep.protocol import messages as m
from ninep.protocol.codec import encode_bytes


def tree_with_files(count: int) -> dict:
    return {f"f{i}": bytearray(f"content {i}".encode()) for i in range(count)}


async def test_concurrent_requests_get_their_own_replies_even_out_of_order():
    async with served(tree=tree_with_files(10)) as (server, client):
        handle_read = server.handlers[m.Tread]
        arrived = 0
        all_arrived = trio.Event()

        async def read_when_all_arrived(request):
            nonlocal arrived
            arrived += 1
            if arrived == 10:
                all_arrived.set()
            await all_arrived.wait()
            await trio.sleep(0.01 * (10 - request.fid))  # answer the last request first
            return await handle_read(request)

        files = [await client.root.open(f"f{i}") for i in range(10)]
        server.handlers[m.Tread] = read_when_all_arrived
        results = {}

        async def read(index):
            results[index] = await files[index].read(100)

        async with trio.open_nursery() as nursery:
            for index in range(10):
                nursery.start_soon(read, index)
        assert results == {i: f"content {i}".encode() for i in range(10)}
        assert server.max_in_flight == 10
        tags = [r.tag for r in server.requests(m.Tread)]
        assert len(set(tags)) == 10


async def test_max_in_flight_bounds_the_requests_outstanding():
    async with served(tree=tree_with_files(1), max_in_flight=3) as (server, client):
        handle_read = server.handlers[m.Tread]

        async def slow_read(request):
            await trio.sleep(0.01)
            return await handle_read(request)

        server.handlers[m.Tread] = slow_read
        opened = await client.root.open("f0")
        async with trio.open_nursery() as nursery:
            for _ in range(12):
                nursery.start_soon(opened.read, 5)
        assert len(server.requests(m.Tread)) == 12
        assert server.max_in_flight == 3


async def test_rlerror_becomes_oserror_with_errno_and_text():
    async with served() as (server, client):
        with pytest.raises(FileNotFoundError) as caught:
            await client.root.walk("missing")
        assert caught.value.errno == errno.ENOENT
        assert caught.value.strerror == "No such file or directory"
        assert caught.value.filename == "missing"
        assert not client.closed  # an error reply is not a broken connection


def test_rerror_text_maps_to_errno():
    assert error_from_reply(m.Rerror(1, "file does not exist")).errno == errno.ENOENT
    assert error_from_reply(m.Rerror(1, "Permission denied")).errno == errno.EACCES
    unknown = error_from_reply(m.Rerror(1, "the moon is in the wrong phase"))
    assert (unknown.errno, unknown.strerror) == (errno.EIO, "the moon is in the wrong phase")
    huge = error_from_reply(m.Rlerror(1, 0xFFFFFFFF))
    assert huge.errno == 0xFFFFFFFF and "4294967295" in huge.strerror


async def test_rerror_reply_raises_oserror():
    async with served() as (server, client):
        async def refuse(request):
            return m.Rerror(request.tag, "permission denied")

        server.handlers[m.Tgetattr] = refuse
        with pytest.raises(PermissionError):
            await client.getattr(client.root.fid)


async def expect_connection_lost(client, server, cause_type):
    with pytest.raises(ConnectionLost) as caught:
        await client.getattr(client.root.fid)
    assert isinstance(caught.value.__cause__, cause_type)
    assert client.closed
    with trio.fail_after(1):
        await server.closed_by_peer.wait()  # the client hung up
    with pytest.raises(ConnectionLost):  # and every later request fails at once
        await client.statfs(client.root.fid)
    return caught.value


async def test_malformed_frame_closes_the_connection():
    async with served() as (server, client):
        async def garbage(request):
            await server.send_raw(struct.pack("<IBH", 9, int(m.Rgetattr.TYPE), request.tag) + b"xy")

        server.handlers[m.Tgetattr] = garbage
        lost = await expect_connection_lost(client, server, ProtocolError)
        assert "Rgetattr" in str(lost)


async def test_reply_of_the_wrong_type_closes_the_connection():
    async with served() as (server, client):
        async def wrong(request):
            return m.Rclunk(request.tag)

        server.handlers[m.Tgetattr] = wrong
        lost = await expect_connection_lost(client, server, ProtocolError)
        assert "answered Tgetattr with Rclunk" in str(lost)


async def test_reply_for_an_unknown_tag_closes_the_connection():
    async with served() as (server, client):
        async def stray(request):
            return m.Rgetattr(request.tag + 1000, 0, m.Qid(0, 0, 0), *([0] * 18))

        server.handlers[m.Tgetattr] = stray
        await expect_connection_lost(client, server, ProtocolError)


async def test_frame_larger_than_msize_closes_the_connection():
    async with served(msize=4096) as (server, client):
        async def huge(request):
            return m.Rread(request.tag, b"x" * 5000)

        server.handlers[m.Tgetattr] = huge
        await expect_connection_lost(client, server, ProtocolError)


@pytest.mark.parametrize("request_name, bad_reply", [
    ("read", lambda r: m.Rread(r.tag, b"x" * (r.count + 1))),
    ("write", lambda r: m.Rwrite(r.tag, len(r.data) + 1)),
    ("walk", lambda r: m.Rwalk(r.tag, (m.Qid(0, 0, 1),) * (len(r.wnames) + 1))),
    ("readdir", lambda r: m.Rreaddir(r.tag, b"\x01\x02\x03")),  # a truncated record
])
async def test_replies_that_contradict_their_request_close_the_connection(request_name,
                                                                          bad_reply):
    async with served(tree={"d": {}}) as (server, client):
        request_cls = {"read": m.Tread, "write": m.Twrite, "walk": m.Twalk,
                       "readdir": m.Treaddir}[request_name]

        async def contradict(request):
            return bad_reply(request)

        calls = {
            "read": lambda: client.read(client.root.fid, 0, 10),
            "write": lambda: client.write(client.root.fid, 0, b"abc"),
            "walk": lambda: client.walk(client.root.fid, client.fids.allocate(), ["d"]),
            "readdir": lambda: client.readdir(client.root.fid, 0, 100),
        }
        server.handlers[request_cls] = contradict
        with pytest.raises(ConnectionLost) as caught:
            await calls[request_name]()
        assert isinstance(caught.value.__cause__, ProtocolError)
        assert client.closed
        with trio.fail_after(1):
            await server.closed_by_peer.wait()


async def test_server_hanging_up_fails_waiting_requests():
    async with served() as (server, client):
        async def hang_up(request):
            await server.stream.aclose()

        server.handlers[m.Tgetattr] = hang_up
        await expect_connection_lost(client, server, ConnectionLost)


async def test_exception_in_the_body_is_not_wrapped_in_an_exception_group():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with pytest.raises(KeyError):
            async with open_client(client_stream):
                raise KeyError("mine")
        await server.closed_by_peer.wait()
    assert server.fids == {}  # the root fid was clunked on the way out


# --- Tflush ------------------------------------------------------------------------------

def block_getattr(server):
    """Make Tgetattr wait until the returned event is set."""
    release = trio.Event()
    handle = server.handlers[m.Tgetattr]

    async def blocked(request):
        await release.wait()
        return await handle(request)

    server.handlers[m.Tgetattr] = blocked
    return release


async def start_cancellable(nursery, function, *args) -> trio.CancelScope:
    """Run ``function(*args)`` in ``nursery`` under a scope the test can cancel alone."""
    async def run(task_status):
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await function(*args)

    return await nursery.start(run)


async def wait_for(predicate):
    with trio.fail_after(5):
        while not predicate():
            await trio.sleep(0.001)


async def test_cancelling_a_request_sends_tflush_and_keeps_the_tag_until_rflush():
    async with served() as (server, client):
        release = block_getattr(server)
        rflush_allowed = trio.Event()

        async def late_rflush(request):
            await rflush_allowed.wait()
            return m.Rflush(request.tag)

        server.handlers[m.Tflush] = late_rflush
        async with trio.open_nursery() as nursery:
            request = await start_cancellable(nursery, client.getattr, client.root.fid)
            await wait_for(lambda: server.requests(m.Tgetattr))
            request.cancel()
            await wait_for(lambda: server.requests(m.Tflush))
            # The cancelled task is still waiting for Rflush: both tags stay taken.
            assert client.in_flight == 2
            rflush_allowed.set()
        (flush,) = server.requests(m.Tflush)
        (getattr_request,) = server.requests(m.Tgetattr)
        assert flush.oldtag == getattr_request.tag != flush.tag
        assert client.in_flight == 0
        release.set()
        assert (await client.getattr(client.root.fid)).size == 0  # still usable


async def test_reply_arriving_before_rflush_is_discarded_and_its_fid_clunked():
    async with served(tree={"d": {}}) as (server, client):
        server.flush_answers_original_first = True
        walk_arrived = trio.Event()
        release = trio.Event()
        handle_walk = server.handlers[m.Twalk]

        async def blocked_walk(request):
            walk_arrived.set()
            await release.wait()
            return await handle_walk(request)

        server.handlers[m.Twalk] = blocked_walk
        with trio.move_on_after(1) as scope:
            async with trio.open_nursery() as nursery:
                request = await start_cancellable(nursery, client.root._walk, "d")
                await walk_arrived.wait()
                request.cancel()
                await wait_for(lambda: server.requests(m.Tflush))
                release.set()  # the walk succeeds after all, before Rflush
        assert not scope.cancelled_caught
        (walk,) = server.requests(m.Twalk)
        await wait_for(lambda: server.requests(m.Tclunk))
        assert server.requests(m.Tclunk)[0].fid == walk.newfid
        await wait_for(lambda: walk.newfid not in client.fids)
        assert set(server.fids) == {client.root.fid}


async def test_flushed_walk_gives_its_fid_back():
    async with served(tree={"d": {}}) as (server, client):
        arrived = trio.Event()

        async def never(request):
            arrived.set()
            await trio.sleep_forever()

        server.handlers[m.Twalk] = never
        with trio.move_on_after(1):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(client.root._walk, "d")
                await arrived.wait()
                nursery.cancel_scope.cancel()
        assert len(client.fids) == 1  # only the root: the flushed walk made nothing
        assert server.requests(m.Tclunk) == []


async def test_unanswered_tflush_times_out_and_a_late_rflush_frees_both_tags(autojump_clock):
    async with served(flush_timeout=2.0) as (server, client):
        block_getattr(server)
        rflush_allowed = trio.Event()

        async def very_late_rflush(request):
            await rflush_allowed.wait()
            return m.Rflush(request.tag)

        server.handlers[m.Tflush] = very_late_rflush
        started = trio.current_time()
        with trio.move_on_after(1):
            await client.getattr(client.root.fid)
        assert trio.current_time() - started == pytest.approx(3.0)  # 1 s + the 2 s timeout
        assert client.in_flight == 2  # neither tag may be reused yet
        rflush_allowed.set()
        await wait_for(lambda: client.in_flight == 0)


async def test_a_frame_being_sent_is_never_cut_by_cancellation():
    client_stream, server_stream = trio.testing.lockstep_stream_pair()
    server = FakeServer(server_stream, msize=1 << 20)
    server.tree = {"f": bytearray()}
    partly_received, resume = trio.Event(), trio.Event()

    async def pause_inside_the_twrite(buffered):
        if payload_sent and buffered:
            partly_received.set()
            await resume.wait()

    payload_sent = False
    server.after_receive = pause_inside_the_twrite
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with open_client(client_stream, msize=1 << 20) as client:
            opened = await client.root.open("f")
            payload = bytes(range(256)) * 1024
            payload_sent = True
            async with trio.open_nursery() as writers:
                writers.start_soon(client.write, opened.fid, 0, payload)
                await partly_received.wait()
                writers.cancel_scope.cancel()  # while the frame is half out
                payload_sent = False
                resume.set()
            twrite, = server.requests(m.Twrite)
            assert bytes(twrite.data) == payload  # the whole frame arrived intact
            assert server.requests(m.Tflush)[0].oldtag == twrite.tag
            assert bytes(server.tree["f"]) in (b"", payload)
            await opened.clunk()
        nursery.cancel_scope.cancel()


async def test_flush_method_waits_for_rflush():
    async with served() as (server, client):
        await client.flush(1234)
        (flush,) = server.requests(m.Tflush)
        assert flush.oldtag == 1234


async def test_tags_wrap_around_before_notag_and_skip_tags_in_use():
    async with served() as (server, client):
        release = block_getattr(server)
        client._next_tag = 0xFFFE  # the last tag below NOTAG
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.getattr, client.root.fid)
            await wait_for(lambda: server.requests(m.Tgetattr))
            client._next_tag = 0xFFFE  # busy: the next request must skip it, and NOTAG
            await client.walk(client.root.fid, client.fids.allocate(), [])
            release.set()
        (getattr_request,) = server.requests(m.Tgetattr)
        (walk,) = server.requests(m.Twalk)
        assert (getattr_request.tag, walk.tag) == (0xFFFE, 0)


def test_encode_of_a_tflush_is_what_the_kernel_sends():
    # size[4]=9 type[1]=108 tag[2] oldtag[2]
    assert encode_bytes(m.Tflush(7, 3)) == bytes([9, 0, 0, 0, 108, 7, 0, 3, 0])


async def test_leaving_the_block_waits_for_requests_still_in_flight():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream)
    release = block_getattr(server)
    outcome = {}

    async def stat_clone(clone):
        outcome["size"] = (await clone.getattr()).size

    async def release_soon():
        await trio.sleep(0.05)
        release.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with open_client(client_stream) as client:
            clone = await client.root.walk()  # the root fid is clunked on the way out
            nursery.start_soon(stat_clone, clone)
            await wait_for(lambda: server.requests(m.Tgetattr))
            nursery.start_soon(release_soon)
        # Leaving the block waited for the Tgetattr's reply before hanging up.
        assert outcome == {"size": 0}
        await server.closed_by_peer.wait()


async def test_a_request_that_cannot_be_encoded_frees_its_tag_and_fid():
    async with served() as (server, client):
        newfid = client.fids.allocate()
        with pytest.raises(ValueError):
            await client.walk(client.root.fid, newfid, ["bad\0name"])
        assert newfid not in client.fids and client.in_flight == 0
        assert not client.closed and not server.requests(m.Twalk)


class BreakingStream(trio.abc.HalfCloseableStream):
    """A memory stream whose sends fail once ``broken`` is set (a reset connection)."""

    def __init__(self, inner):
        self.inner = inner
        self.broken = False

    async def send_all(self, data):
        if self.broken:
            raise trio.BrokenResourceError("connection reset")
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self):
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes=None):
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self):
        await self.inner.send_eof()

    async def aclose(self):
        await self.inner.aclose()


async def test_a_failed_send_closes_the_connection():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    breaking = BreakingStream(client_stream)
    server = FakeServer(server_stream)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        async with open_client(breaking) as client:
            breaking.broken = True
            newfid = client.fids.allocate()
            with pytest.raises(ConnectionLost) as caught:
                await client.walk(client.root.fid, newfid, ["x"])
            assert isinstance(caught.value.__cause__, trio.BrokenResourceError)
            assert client.closed and newfid not in client.fids
        with trio.fail_after(1):
            await server.closed_by_peer.wait()


async def test_cancelling_the_whole_client_block_flushes_and_closes_cleanly():
    client_stream, server_stream = trio.testing.memory_stream_pair()
    server = FakeServer(server_stream)
    block_getattr(server)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.serve)
        with trio.fail_after(2):  # no waiting for timeouts: the Rflush is read at once
            with trio.move_on_after(0.05) as scope:
                async with open_client(client_stream) as client:
                    await client.getattr(client.root.fid)
        assert scope.cancelled_caught  # plain cancellation: nothing else escaped
        await server.closed_by_peer.wait()
    (getattr_request,) = server.requests(m.Tgetattr)
    assert server.requests(m.Tflush)[0].oldtag == getattr_request.tag
    assert server.requests(m.Tclunk)[0].fid == client.root.fid  # and the root was clunked
    assert client.closed


async def test_requests_are_kept_within_msize():
    async with served(msize=4096, tree={"f": bytearray(b"x" * 10000)}) as (server, client):
        opened = await client.root.open("f")
        with pytest.raises(ValueError):
            await client.write(opened.fid, 0, b"y" * 4096)  # would be a 4119-byte frame
        assert len(await client.read(opened.fid, 0, 1 << 20)) == 4096 - 24
        assert server.requests(m.Tread)[0].count == 4096 - 24
        assert client.in_flight == 0 and not client.closed
