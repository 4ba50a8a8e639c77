"""Hostile clients against a live ninepd (``serve`` on TCP, a HostFilesystem export).

The server runs in a thread of its own (its own ``trio.run``), so the test can be a
plain hypothesis test speaking blocking sockets, and "the server is still healthy"
is checked from outside: a second, honest connection reads a file, the process's fd
count returns to where it was (every fid's File closed), nothing outside the export
changed, and no ERROR record or traceback was logged.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import resource
import socket
import struct
import threading
import time

import pytest
import trio
from construct import FormatField, Renamed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ninep.fs.host import HostFilesystem
from ninep.protocol import messages as m
from ninep.protocol import schema
from ninep.protocol.codec import FrameReader, decode, encode_bytes
from ninep.protocol.constants import NOFID, NONUNAME, LockFlags, LockStatus, LockType
from ninep.protocol.messages import MESSAGE_CLASSES
from ninep.server import serve
from ninep.server.session import Export, Limits

MAX_MSIZE = 65536
SECRET = b"outside the export"
HONEST = b"the honest client reads this"
SETTLE_SECONDS = 20.0  # generous: only a broken server ever waits this long


# --- the server, in a thread ----------------------------------------------------------

class ServerThread:
    """``serve()`` in its own thread and trio loop; stopped with ``shutdown()``."""

    def __init__(self, exports, limits: Limits) -> None:
        self._exports = exports
        self._limits = limits
        self._ready = threading.Event()
        self.server = None
        self._thread = threading.Thread(target=trio.run, args=(self._main,), daemon=True)

    async def _main(self) -> None:
        self.token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self.server = await nursery.start(
                lambda task_status: serve(self._exports, "tcp://127.0.0.1:0", limits=self._limits,
                                          grace_period=1.0, task_status=task_status))
            self._ready.set()

    def __enter__(self) -> "ServerThread":
        self._thread.start()
        assert self._ready.wait(10), "server did not start"
        host, port = self.server.addresses[0].removeprefix("tcp://").rsplit(":", 1)
        self.address = (host, int(port))
        return self

    def __exit__(self, *exc) -> None:
        trio.from_thread.run_sync(self.server.shutdown, trio_token=self.token)
        self._thread.join(10)
        assert not self._thread.is_alive(), "server did not stop"

    def in_loop(self, fn):
        """Run ``fn()`` in the server's trio thread (to read its books without races)."""
        return trio.from_thread.run_sync(fn, trio_token=self.token)

    def connection_count(self) -> int:
        return self.in_loop(lambda: len(self.server.connections))

    def wait_idle(self) -> None:
        """Until every connection is gone (closed, its fids clunked)."""
        deadline = time.monotonic() + SETTLE_SECONDS
        while self.connection_count():
            assert time.monotonic() < deadline, "a closed connection was never cleaned up"
            time.sleep(0.005)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


class Records(logging.Handler):
    """Every record of the ``ninep`` loggers, to find ERRORs and tracebacks."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def internal_errors(self) -> list[str]:
        return [f"{r.name} {r.levelname}: {r.getMessage()}" for r in self.records
                if r.levelno >= logging.ERROR or r.exc_info]


def make_trees(base):
    """play: what the fuzz attacks; honest: the read-only export the honest client
    reads; outside: what must never change."""
    play, honest, outside = base / "play", base / "honest", base / "outside"
    for d in (play / "dir" / "sub", honest, outside):
        d.mkdir(parents=True)
    (outside / "secret").write_bytes(SECRET)
    (honest / "file").write_bytes(HONEST)
    (play / "file").write_bytes(bytes(range(256)) * 40)
    (play / "dir" / "inner").write_bytes(b"inner")
    os.symlink(str(outside), play / "out-link")
    os.symlink("../outside/secret", play / "up-link")
    os.symlink("dir/inner", play / "in-link")
    os.mkfifo(play / "fifo")
    (play / "big").write_bytes(b"\xab" * (2 << 20))
    return play, honest, outside


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    """Shared by the fuzz examples (which may rename or remove anything in play)."""
    return make_trees(tmp_path_factory.mktemp("fuzz"))


@pytest.fixture
def fresh_trees(tmp_path):
    return make_trees(tmp_path)


@pytest.fixture(scope="module")
def records():
    handler = Records()
    logger = logging.getLogger("ninep")
    old_level = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old_level)


def exports(trees):
    play, honest, _ = trees
    return {"": Export(HostFilesystem(str(play))),
            "honest": Export(HostFilesystem(str(honest)), read_only=True)}


@pytest.fixture(scope="module")
def fuzz_server(trees, records):
    with ServerThread(exports(trees), Limits(max_msize=MAX_MSIZE)) as server:
        yield server


# --- a blocking raw client ------------------------------------------------------------

class RawClient:
    def __init__(self, address, timeout: float = SETTLE_SECONDS) -> None:
        self.sock = socket.create_connection(address, timeout=timeout)
        self.frames = FrameReader(1 << 30)

    def send(self, *msgs: m.Message) -> None:
        self.sock.sendall(b"".join(encode_bytes(x) for x in msgs))

    def recv_frame(self) -> bytes | None:
        """The next frame, or None at EOF."""
        while True:
            frame = self.frames.next_frame()
            if frame is not None:
                return bytes(frame)
            try:
                data = self.sock.recv(1 << 20)
            except ConnectionResetError:
                data = b""
            if not data:
                return None
            self.frames.feed(data)

    def rpc(self, msg: m.Message) -> m.Message:
        self.send(msg)
        frame = self.recv_frame()
        assert frame is not None, f"connection closed instead of answering {msg}"
        reply = decode(frame)
        assert reply.tag == msg.tag, (msg, reply)
        return reply

    def start(self, aname: str = "", msize: int = MAX_MSIZE, n_uname: int = 0) -> None:
        assert self.rpc(m.Tversion(0xFFFF, msize, "9P2000.L")) == m.Rversion(0xFFFF, msize, "9P2000.L")
        assert isinstance(self.rpc(m.Tattach(1, 0, NOFID, "root", aname, n_uname)), m.Rattach)

    def close(self) -> None:
        self.sock.close()


def honest_check(server: ServerThread) -> None:
    """A well-behaved client on a new connection walks to and reads a file."""
    client = RawClient(server.address)
    try:
        client.start(aname="honest")
        assert isinstance(client.rpc(m.Twalk(2, 0, 1, ("file",))), m.Rwalk)
        assert isinstance(client.rpc(m.Tlopen(3, 1, 0)), m.Rlopen)
        assert client.rpc(m.Tread(4, 1, 0, 4096)) == m.Rread(4, HONEST)
        assert client.rpc(m.Tclunk(5, 1)) == m.Rclunk(5)
    finally:
        client.close()


# --- hypothesis strategies ------------------------------------------------------------

NAMES = st.one_of(
    st.sampled_from(["", ".", "..", "a/b", "/", "file", "dir", "sub", "inner", "fifo", "out-link",
                     "up-link", "in-link", "big", "new", "secret", "x" * 256, "\u00e9t\u00e9"]),
    st.text(max_size=8).filter(lambda s: "\x00" not in s),
)
EXISTING = st.sampled_from(["file", "dir", "fifo", "out-link", "up-link", "in-link", "big", ".."])
KNOWN_FIDS = st.sampled_from([0, 1, 2, 3, 4, NOFID])
FIDS = st.one_of(KNOWN_FIDS, KNOWN_FIDS, KNOWN_FIDS, st.integers(0, 0xFFFFFFFF))  # one_of: equal odds
OPEN_FLAGS = st.sampled_from([0, 1, 2, 0o100, 0o200, 0o1000, 0o2000, 0o4000, 0o200000, 0x200])
TAGS = st.one_of(st.integers(0, 7), st.just(0xFFFF), st.integers(0, 0xFFFF))


def edgy(bits: int) -> st.SearchStrategy:
    top = (1 << bits) - 1
    edges = {0, 1, 2, top, top - 1, top >> 1, 4095, 4096, MAX_MSIZE - 24, MAX_MSIZE, MAX_MSIZE + 1}
    return st.one_of(st.sampled_from(sorted(e for e in edges if 0 <= e <= top)), st.integers(0, top))


BY_NAME = {
    "fid": FIDS, "newfid": FIDS, "afid": FIDS, "dfid": FIDS, "dirfid": FIDS,
    "olddirfid": FIDS, "newdirfid": FIDS,
    "oldtag": TAGS,
    "name": NAMES, "oldname": NAMES, "newname": NAMES, "symtgt": NAMES,
    "aname": st.sampled_from(["", "/", "nope", "honest/.."]),
    "version": st.sampled_from(["9P2000.L"] * 4 + ["9P2000", "9P2000.u", "", "9P2000.L.x"]),
    "wnames": st.lists(NAMES, max_size=16).map(tuple),
    "msize": st.one_of(st.sampled_from([0, 7, 19, 20, 4095, 4096, 8192, MAX_MSIZE, 1 << 20, 0xFFFFFFFF]),
                       st.integers(0, 0xFFFFFFFF)),
    "flags": st.one_of(OPEN_FLAGS, OPEN_FLAGS, edgy(32)),
    "n_uname": st.sampled_from([0, 1000, 65534, NONUNAME]),
}


def field_strategy(con) -> st.SearchStrategy:
    """Any valid value of one schema field, edge values often."""
    if isinstance(con, Renamed):
        return BY_NAME[con.name] if con.name in BY_NAME else field_strategy(con.subcon)
    if isinstance(con, FormatField):
        return edgy(8 * con.length)
    if isinstance(con, schema.Record):
        return st.builds(con.cls, *(field_strategy(sub) for sub in con.subcon.subcons))
    if isinstance(con, schema.String9P):
        return NAMES
    if isinstance(con, schema.BoundedArray):
        return st.lists(field_strategy(con.element), max_size=con.maximum).map(tuple)
    if isinstance(con, schema.Payload):
        return st.binary(max_size=64)
    if isinstance(con, schema.Sized):
        return field_strategy(con.subcon)
    raise TypeError(f"no strategy for {con!r}")


def encodable(msg: m.Message) -> bool:
    try:
        encode_bytes(msg)
    except Exception:
        return False
    return True


def message(type_byte: int) -> st.SearchStrategy:
    body = schema.BODIES[type_byte]
    return st.builds(MESSAGE_CLASSES[type_byte], TAGS, *(field_strategy(sub) for sub in body.subcons))


T_TYPES = sorted(t for t, cls in MESSAGE_CLASSES.items()
                 if cls.__name__.startswith("T") and t in schema.BODIES and cls is not m.Tversion)
OTHER_TYPES = sorted(t for t in schema.BODIES if t not in T_TYPES)  # R-messages, Rerror
# Requests mostly; R-messages sometimes. Filtered to what the codec will encode (a
# wname of 256 bytes is fine, but the strategies could make a field the wire refuses).
MESSAGES = st.one_of(
    st.one_of(*(message(t) for t in T_TYPES)),
    st.one_of(*(message(t) for t in T_TYPES)),
    st.one_of(*(message(t) for t in OTHER_TYPES)),
).filter(encodable)
# What reaches the backend once fids exist: drawn more often.
CORE_MESSAGES = st.one_of(*(message(cls.TYPE) for cls in (
    m.Twalk, m.Tlopen, m.Tread, m.Treaddir, m.Tgetattr, m.Treadlink, m.Tclunk, m.Tflush,
    m.Txattrwalk, m.Tlcreate, m.Tmkdir, m.Tunlinkat, m.Twrite, m.Tlock, m.Tsetattr))).filter(encodable)


@st.composite
def mutated_frame(draw) -> bytes:
    """A valid frame with some body bytes changed, or cut/extended with its size field
    kept honest: framing stays in step, so the tag the server answers is in the frame."""
    frame = bytearray(encode_bytes(draw(MESSAGES)))
    how = draw(st.sampled_from(["flip", "cut", "extend"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 4))):
            frame[draw(st.integers(4, len(frame) - 1))] = draw(st.integers(0, 255))
    elif how == "cut":
        del frame[draw(st.integers(7, len(frame))):]
    else:
        frame += draw(st.binary(min_size=1, max_size=16))
    frame[:4] = struct.pack("<I", len(frame))
    return bytes(frame)


FRAMING_BREAKERS = st.builds(
    lambda size, tail: struct.pack("<I", size) + tail,
    st.one_of(st.integers(0, 6), st.integers(MAX_MSIZE + 1, 0xFFFFFFFF)),
    st.binary(max_size=32),
)


@st.composite
def sessions(draw) -> tuple[list[bytes], list[bytes], bool]:
    """Frames for one connection: a start (usually proper: version, attach, fids 1-4
    walked to real nodes, some opened) sent in lockstep, then anything, sent either
    in lockstep too (one at a time, waiting a little for each reply: deeper states)
    or all pipelined at once (races, duplicate tags). Requests mostly get tags of
    their own, sometimes any."""
    start = []
    tags = iter(range(1, 0xFFFF))
    if draw(st.integers(0, 9)) < 8:
        start.append(encode_bytes(m.Tversion(0xFFFF, draw(st.sampled_from([4096, 8192, MAX_MSIZE, 1 << 20])),
                                              "9P2000.L")))
        start.append(encode_bytes(m.Tattach(next(tags), 0, NOFID, "root", "", draw(BY_NAME["n_uname"]))))
        for fid in (1, 2, 3, 4):  # fids worth using: walked to real nodes, some opened
            start.append(encode_bytes(m.Twalk(next(tags), 0, fid, (draw(EXISTING),))))
            if draw(st.booleans()):
                start.append(encode_bytes(m.Tlopen(next(tags), fid, draw(st.sampled_from([0, 2, 0o200000])))))
    frames = []
    for _ in range(draw(st.integers(1, 20))):
        kind = draw(st.integers(0, 9))
        if kind < 7:
            msg = draw(st.one_of(CORE_MESSAGES, MESSAGES))
            if draw(st.integers(0, 4)):
                msg = dataclasses.replace(msg, tag=next(tags))
            frames.append(encode_bytes(msg))
        elif kind == 7:  # mid-session: often a reset, sometimes a refusal that ends the protocol
            frames.append(encode_bytes(draw(message(m.Tversion.TYPE))))
        else:
            frames.append(draw(mutated_frame()))
    if draw(st.integers(0, 9)) == 0:
        frames.append(draw(FRAMING_BREAKERS))
    return start, frames, draw(st.booleans())


class ReplyChecker:
    """Every reply decodes, is an R-message, answers a tag that was sent and fits the
    msize in effect (the last Rversion's; the server's own before that)."""

    def __init__(self) -> None:
        self.sent_tags: set[int] = set()
        self.limit = MAX_MSIZE
        self.replies: list[m.Message] = []

    def sent(self, frame: bytes) -> None:
        if len(frame) >= 7:
            self.sent_tags.add(int.from_bytes(frame[5:7], "little"))

    def check(self, frame: bytes) -> None:
        reply = decode(frame)
        assert type(reply).__name__.startswith("R"), reply
        assert reply.tag in self.sent_tags, reply
        if isinstance(reply, m.Rversion):
            self.limit = reply.msize
            assert len(frame) <= reply.msize <= 0xFFFFFFFF, reply
            assert reply.version == "unknown" or 4096 <= reply.msize <= MAX_MSIZE, reply
        else:
            assert len(frame) < self.limit, (type(reply).__name__, len(frame), self.limit)
        self.replies.append(reply)


LOCKSTEP_WAIT = 0.5  # for one reply; a request that never answers (a blocked lock) only costs time


def run_session(client: RawClient, start: list[bytes], frames: list[bytes],
                lockstep: bool) -> ReplyChecker:
    checker = ReplyChecker()
    one_by_one, pipelined = (start + frames, []) if lockstep else (start, frames)
    try:
        for frame in one_by_one:
            checker.sent(frame)
            client.sock.sendall(frame)
            client.sock.settimeout(LOCKSTEP_WAIT)
            try:
                reply = client.recv_frame()
            except TimeoutError:
                continue
            finally:
                client.sock.settimeout(SETTLE_SECONDS)
            if reply is None:
                return checker  # it hung up (a broken frame)
            checker.check(reply)
        for frame in pipelined:
            checker.sent(frame)
        client.sock.sendall(b"".join(pipelined))
        client.sock.shutdown(socket.SHUT_WR)  # EOF: the server answers what it can, then closes
    except (BrokenPipeError, ConnectionResetError):
        pass  # it already hung up on a broken frame
    while (reply := client.recv_frame()) is not None:
        checker.check(reply)
    return checker


def outside_untouched(outside) -> None:
    assert os.listdir(outside) == ["secret"]
    assert (outside / "secret").read_bytes() == SECRET


# --- 1. random sessions ---------------------------------------------------------------

@settings(max_examples=150, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(session=sessions())
def test_random_sessions_never_hurt_the_server(fuzz_server, trees, records, session):
    records.records.clear()
    fds_before = open_fds()
    client = RawClient(fuzz_server.address)
    try:
        run_session(client, *session)
    finally:
        client.close()
    fuzz_server.wait_idle()
    assert records.internal_errors() == []
    honest_check(fuzz_server)
    fuzz_server.wait_idle()
    assert open_fds() == fds_before, "a fid's File (or a socket) was not closed"
    outside_untouched(trees[2])


# --- 2. resource bounds -----------------------------------------------------------------

def test_fid_exhaustion_gets_emfile_and_frees_everything(fresh_trees, records):
    records.records.clear()
    with ServerThread(exports(fresh_trees), Limits(max_msize=MAX_MSIZE, max_fids=64)) as server:
        fds_before = open_fds()
        client = RawClient(server.address)
        client.start()
        replies = [client.rpc(m.Twalk(2, 0, fid, ("file",))) for fid in range(1, 80)]
        made = [r for r in replies if isinstance(r, m.Rwalk)]
        refused = replies[len(made):]
        assert len(made) == 63  # fid 0 (the attach) is the 64th
        assert refused and all(r == m.Rlerror(2, 24) for r in refused)  # EMFILE
        honest_check(server)
        # Clunking one makes room for exactly one more.
        assert client.rpc(m.Tclunk(3, 5)) == m.Rclunk(3)
        assert isinstance(client.rpc(m.Twalk(4, 0, 100, ("file",))), m.Rwalk)
        assert client.rpc(m.Twalk(5, 0, 101, ("file",))) == m.Rlerror(5, 24)
        assert open_fds() >= fds_before + 63  # each walked fid holds an O_PATH fd
        client.close()
        server.wait_idle()
        assert open_fds() == fds_before
    assert records.internal_errors() == []


def test_a_client_that_never_reads_is_bounded_and_others_are_served(fresh_trees, records):
    records.records.clear()
    mib = 1 << 20
    limits = Limits(max_msize=mib + 4096, max_buffered=8 * mib)
    with ServerThread(exports(fresh_trees), limits) as server:
        greedy = RawClient(server.address)
        greedy.start(msize=mib + 4096)
        assert isinstance(greedy.rpc(m.Twalk(2, 0, 1, ("big",))), m.Rwalk)
        assert isinstance(greedy.rpc(m.Tlopen(3, 1, 0)), m.Rlopen)
        rss_before = rss_bytes()
        asked = 2000  # 2 GiB of replies if the server kept going
        greedy.sock.setblocking(False)
        pending = b"".join(encode_bytes(m.Tread(tag, 1, 0, mib)) for tag in range(10, 10 + asked))
        while pending:  # send what the server accepts; it stops reading, so not all may go
            try:
                pending = pending[greedy.sock.send(pending):]
            except BlockingIOError:
                break
        time.sleep(1.0)  # let it run as far as it will go
        start = time.monotonic()
        honest_check(server)
        assert time.monotonic() - start < 5.0, "the honest client waited on the greedy one"
        served, queued = server.in_loop(lambda: next(
            (c.requests_served, c.rules.buffered + c.rules.promised) for c in server.server.connections
            if c.requests_served > 3))
        grown = rss_bytes() - rss_before
        # Kernel socket buffers take some replies; the server holds max_buffered at most.
        assert served < 100, served
        assert queued <= limits.max_buffered + mib + 4096, queued
        assert grown < 64 * mib, grown
        greedy.close()
        server.wait_idle()
    assert records.internal_errors() == []


def test_disconnect_with_100_requests_in_flight(fresh_trees, records):
    records.records.clear()
    wrlck, block = int(LockType.WRLCK), int(LockFlags.BLOCK)
    with ServerThread(exports(fresh_trees), Limits(max_msize=MAX_MSIZE)) as server:
        fds_before = open_fds()
        client = RawClient(server.address)
        client.start()
        for fid in (1, 2):
            assert isinstance(client.rpc(m.Twalk(2, 0, fid, ("file",))), m.Rwalk)
            assert isinstance(client.rpc(m.Tlopen(3, fid, 2)), m.Rlopen)
        held = client.rpc(m.Tlock(4, 1, wrlck, 0, 0, 0, 1, "holder"))
        assert held == m.Rlock(4, int(LockStatus.SUCCESS))
        # 100 blocking locks by other owners: all wait, none is answered.
        client.send(*(m.Tlock(tag, 2, wrlck, block, 0, 0, 1000 + tag, "waiter")
                      for tag in range(100, 200)))
        deadline = time.monotonic() + SETTLE_SECONDS
        while server.in_loop(lambda: sum(len(c.rules.in_flight) for c in server.server.connections)) < 100:
            assert time.monotonic() < deadline, "the blocking locks never arrived"
            time.sleep(0.01)
        client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        client.close()  # RST with everything in flight
        server.wait_idle()
        assert open_fds() == fds_before  # every fid's File was closed
        # The dead connection's lock went with it: another client gets it at once.
        other = RawClient(server.address)
        other.start()
        assert isinstance(other.rpc(m.Twalk(2, 0, 1, ("file",))), m.Rwalk)
        assert isinstance(other.rpc(m.Tlopen(3, 1, 2)), m.Rlopen)
        assert other.rpc(m.Tlock(4, 1, wrlck, 0, 0, 0, 7, "other")) == m.Rlock(4, int(LockStatus.SUCCESS))
        other.close()
        honest_check(server)
        server.wait_idle()
    assert records.internal_errors() == []


# --- 3. the fifo and a symlink out of the export ------------------------------------------

def test_fifo_and_outward_symlink_are_inert(tmp_path, records):
    """getattr/readlink/readdir/open on them answer about the node itself and never
    block or read the target (walks *through* links: test_server_hostile). A tree of
    its own: the fuzz may have renamed or removed anything in the shared one."""
    records.records.clear()
    export, outside = tmp_path / "export", tmp_path / "outside"
    export.mkdir()
    outside.mkdir()
    (outside / "secret").write_bytes(SECRET)
    os.mkfifo(export / "fifo")
    os.symlink(str(outside), export / "out-link")
    with ServerThread({"": Export(HostFilesystem(str(export)))}, Limits(max_msize=MAX_MSIZE)) as server:
        client = RawClient(server.address, timeout=10)
        try:
            client.start()
            assert isinstance(client.rpc(m.Twalk(2, 0, 1, ("fifo",))), m.Rwalk)
            attr = client.rpc(m.Tgetattr(3, 1, 0x7FF))
            assert isinstance(attr, m.Rgetattr) and attr.mode & 0o170000 == 0o010000
            assert client.rpc(m.Tlopen(4, 1, 0)) == m.Rlerror(4, 6)  # ENXIO, not a blocked open
            assert isinstance(client.rpc(m.Treaddir(5, 1, 0, 4096)), m.Rlerror)
            assert isinstance(client.rpc(m.Treadlink(6, 1)), m.Rlerror)
            assert isinstance(client.rpc(m.Twalk(7, 0, 2, ("out-link",))), m.Rwalk)
            attr = client.rpc(m.Tgetattr(8, 2, 0x7FF))
            assert isinstance(attr, m.Rgetattr) and attr.mode & 0o170000 == 0o120000
            assert attr.size == len(str(outside))  # the link's own size, not the directory's
            assert client.rpc(m.Treadlink(9, 2)) == m.Rreadlink(9, str(outside))
            assert isinstance(client.rpc(m.Tlopen(10, 2, 0)), m.Rlerror)
            assert isinstance(client.rpc(m.Treaddir(11, 2, 0, 4096)), m.Rlerror)
            assert isinstance(client.rpc(m.Twalk(12, 2, 3, ("secret",))), m.Rlerror)
        finally:
            client.close()
        server.wait_idle()
    outside_untouched(outside)
    assert records.internal_errors() == []


# --- found by the fuzz ---------------------------------------------------------------------

def test_concurrent_tlopens_of_one_fid_open_it_once(fresh_trees, records):
    """Two pipelined Tlopens of one fid both passed the "already open" check while
    the first was in the backend (a guest user's open runs in a worker thread), so
    the fid was opened twice and one host fd leaked per pair. Now the second gets
    EINVAL, and every fd is given back at disconnect."""
    records.records.clear()
    with ServerThread(exports(fresh_trees), Limits(max_msize=MAX_MSIZE)) as server:
        fds_before = open_fds()
        client = RawClient(server.address)
        client.start(n_uname=1000)  # not the server's own identity: open goes to a thread
        fids = range(1, 21)
        for fid in fids:
            assert isinstance(client.rpc(m.Twalk(2, 0, fid, ("file",))), m.Rwalk)
        client.send(*(m.Tlopen(tag, fid, 0) for fid in fids for tag in (100 + 2 * fid, 101 + 2 * fid)))
        replies = [decode(client.recv_frame()) for _ in range(2 * len(fids))]
        assert sum(isinstance(r, m.Rlopen) for r in replies) == len(fids), replies
        assert sum(r == m.Rlerror(r.tag, 22) for r in replies) == len(fids), replies
        client.close()
        server.wait_idle()
        assert open_fds() == fds_before
    assert records.internal_errors() == []


def test_tlopen_and_txattrcreate_racing_on_one_fid_only_one_wins(fresh_trees, records):
    """Txattrcreate while a Tlopen of the same fid was in the backend turned the fid
    into an xattr fid that the open then marked opened too. Exactly one may win."""
    records.records.clear()
    with ServerThread(exports(fresh_trees), Limits(max_msize=MAX_MSIZE)) as server:
        fds_before = open_fds()
        client = RawClient(server.address)
        client.start(n_uname=1000)
        fids = range(1, 21)
        for fid in fids:
            assert isinstance(client.rpc(m.Twalk(2, 0, fid, ("file",))), m.Rwalk)
        client.send(*(msg for fid in fids for msg in (
            m.Tlopen(100 + 2 * fid, fid, 0), m.Txattrcreate(101 + 2 * fid, fid, "user.x", 1, 0))))
        replies = [decode(client.recv_frame()) for _ in range(2 * len(fids))]
        wins = sum(isinstance(r, (m.Rlopen, m.Rxattrcreate)) for r in replies)
        assert wins == len(fids), replies
        client.close()
        server.wait_idle()
        assert open_fds() == fds_before
    assert records.internal_errors() == []
