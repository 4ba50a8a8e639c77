"""Interoperability: our codec against diod, an independent 9P2000.L implementation in C.

Every reply diod sends must decode identically on both codec paths, be the R-message of
the request (or Rlerror), and re-encode to exactly the bytes diod sent -- so the schema
agrees with a real server, not only with our own reading of the spec. Plain blocking
sockets: the protocol layer needs no event loop.
"""

from __future__ import annotations

import socket
import subprocess
import time

import pytest

from ninep.protocol import codec
from ninep.protocol import messages as m
from ninep.protocol.constants import NOFID, MessageType, OpenFlags

pytestmark = [pytest.mark.diod, pytest.mark.root]

DIOD = "/usr/sbin/diod"
MSIZE = 65536


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def diod(tmp_path):
    export = tmp_path / "export"
    export.mkdir()
    (export / "hello").write_bytes(b"hello, 9p\n")
    port = free_port()
    server = subprocess.Popen([DIOD, "-f", "-n", "-l", f"127.0.0.1:{port}", "-e", str(export)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                connection = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError(f"diod did not start: {server.stderr.read()!r}")
                time.sleep(0.05)
        with connection:
            yield Peer(connection), str(export)
    finally:
        server.terminate()
        server.wait(timeout=10)
        server.stderr.close()


class Peer:
    """A synchronous 9P client made of nothing but the codec and a socket."""

    def __init__(self, connection: socket.socket):
        self.connection = connection
        self.reader = codec.FrameReader(MSIZE)
        self.next_tag = 1
        self.replies: list[bytes] = []

    def rpc(self, request, expect: str = "reply"):
        """Send ``request``; the answer must be its R-message ("reply"), Rlerror
        ("error"), or either one ("either")."""
        self.connection.sendmsg(codec.encode(request))
        while (frame := self.reader.next_frame()) is None:
            data = self.connection.recv(MSIZE)
            assert data, "diod hung up"
            self.reader.feed(data)
        reply = codec.decode(frame)
        assert codec.decode_interpreted(frame) == reply
        assert codec.encode_bytes(reply) == frame  # byte-exact round trip of diod's bytes
        assert reply.tag == request.tag
        is_reply = reply.TYPE == request.TYPE + 1
        is_error = type(reply) is m.Rlerror
        assert {"reply": is_reply, "error": is_error, "either": is_reply or is_error}[expect], reply
        self.replies.append(frame)
        return reply


def test_a_session_with_diod_covers_the_dotl_messages(diod):
    peer, export = diod
    t = 1
    assert peer.rpc(m.Tversion(0xFFFF, MSIZE, "9P2000.L")).version == "9P2000.L"
    root = peer.rpc(m.Tattach(t, 0, NOFID, "root", export, 0)).qid
    assert root.type & 0x80
    assert len(peer.rpc(m.Twalk(t, 0, 1, ("hello",))).qids) == 1
    attr = peer.rpc(m.Tgetattr(t, 1, 0x3FFF))
    assert attr.size == len(b"hello, 9p\n")
    peer.rpc(m.Tlopen(t, 1, OpenFlags.RDONLY))
    read = peer.rpc(m.Tread(t, 1, 0, 4096))
    assert bytes(read.data) == b"hello, 9p\n" and isinstance(read.data, memoryview)
    peer.rpc(m.Tclunk(t, 1))
    assert peer.rpc(m.Twalk(t, 0, 2, ("missing",)), expect="error").ecode == 2  # ENOENT

    peer.rpc(m.Twalk(t, 0, 3, ()))  # clone the root
    peer.rpc(m.Tlcreate(t, 3, "new", OpenFlags.RDWR | OpenFlags.CREATE, 0o644, 0))
    assert peer.rpc(m.Twrite(t, 3, 0, memoryview(b"abc" * 1000))).count == 3000
    peer.rpc(m.Tfsync(t, 3, 0))
    peer.rpc(m.Tlock(t, 3, 1, 0, 0, 0, 4242, "ninep-test"))
    peer.rpc(m.Tgetlock(t, 3, 1, 0, 0, 4243, "ninep-test"))
    peer.rpc(m.Tsetattr(t, 3, 0x8, 0, 0, 0, 10, 0, 0, 0, 0))  # truncate to 10
    assert peer.rpc(m.Tgetattr(t, 3, 0x3FFF)).size == 10
    peer.rpc(m.Tclunk(t, 3))

    peer.rpc(m.Tmkdir(t, 0, "dir", 0o755, 0))
    peer.rpc(m.Tsymlink(t, 0, "link", "hello", 0))
    peer.rpc(m.Twalk(t, 0, 4, ("link",)))
    assert peer.rpc(m.Treadlink(t, 4)).target == "hello"
    peer.rpc(m.Tclunk(t, 4))
    peer.rpc(m.Tmknod(t, 0, "fifo", 0o10644, 0, 0, 0))
    peer.rpc(m.Twalk(t, 0, 5, ("hello",)))
    peer.rpc(m.Tlink(t, 0, 5, "hardlink"))
    # This diod answers renameat/unlinkat with EOPNOTSUPP and rename here with EIO; only
    # the codec matters, and either answer must decode and round-trip.
    peer.rpc(m.Trenameat(t, 0, "hardlink", 0, "renamed"), expect="either")
    peer.rpc(m.Twalk(t, 0, 8, ("hardlink",)))
    peer.rpc(m.Trename(t, 8, 0, "renamed"), expect="either")
    peer.rpc(m.Tunlinkat(t, 0, "dir", 0x200), expect="either")  # AT_REMOVEDIR
    peer.rpc(m.Tremove(t, 8))  # the hard link; Tremove clunks fid 8 as well
    peer.rpc(m.Tstatfs(t, 0))
    peer.rpc(m.Tflush(t + 1, 999))

    peer.rpc(m.Twalk(t, 0, 6, ()))
    peer.rpc(m.Tlopen(t, 6, OpenFlags.DIRECTORY))
    listing = peer.rpc(m.Treaddir(t, 6, 0, 8192))
    names = {entry.name for entry in codec.unpack_dirents(listing.data)}
    assert codec.unpack_dirents(listing.data) == codec.unpack_dirents_interpreted(listing.data)
    assert {"hello", "new", "link", "fifo"} <= names
    peer.rpc(m.Tclunk(t, 6))
    # xattrs may be unsupported by the filesystem under /tmp: either answer must decode
    peer.rpc(m.Txattrwalk(t, 5, 7, "user.ninep"), expect="either")
    peer.rpc(m.Txattrcreate(t, 5, "user.ninep", 0, 0), expect="either")

    seen = {MessageType(frame[4]).name for frame in peer.replies}
    assert seen >= {
        "Rversion", "Rattach", "Rwalk", "Rgetattr", "Rsetattr", "Rlopen", "Rlcreate", "Rread",
        "Rwrite", "Rclunk", "Rremove", "Rlerror", "Rfsync", "Rlock", "Rgetlock", "Rmkdir",
        "Rsymlink", "Rreadlink", "Rmknod", "Rlink", "Rstatfs", "Rflush", "Rreaddir"}
