"""A whole session: the fuzzer's bytes are what a client sends (a stream of 9P frames),
served by the real Session and Dispatcher over the RAM backend and a host export in a
temporary directory, in-process and without sockets. After every request:
- the reply carries the request's tag and encodes and decodes to itself (well-formed);
- the books are consistent: every fid in the table is open in its Fid, no more than
  Limits.max_fids are held;
- nothing outside the export changed (no host path escapes it).
Memory stays bounded: the session is thrown away after each input."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile

import trio

from ninep.fs.host import HostFilesystem
from ninep.fs.identity import credentials_for
from ninep.protocol import messages as m
from ninep.protocol.codec import FrameReader, decode, encode_bytes, pack_dirents
from ninep.protocol.errors import ProtocolError
from ninep.server.connection import LockManager
from ninep.server.dispatch import Dispatcher
from ninep.server.session import Export, Limits, Session

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "server"))
from srv_memfs import MemFilesystem  # noqa: E402  (the test suite's RAM backend)

LIMITS = Limits(max_msize=65536, max_fids=64)
MAX_REQUESTS = 64  # per input: deep enough for a session, short enough to stay fast
_SCRATCH = tempfile.mkdtemp(prefix="ninep-fuzz-")
atexit.register(shutil.rmtree, _SCRATCH, True)  # every pytest run imports this module
_EXPORT = os.path.join(_SCRATCH, "export")
_OUTSIDE = os.path.join(_SCRATCH, "outside")


def _fresh_tree() -> None:
    shutil.rmtree(_EXPORT, ignore_errors=True)
    os.makedirs(os.path.join(_EXPORT, "d"))
    with open(os.path.join(_EXPORT, "d", "f"), "wb") as f:
        f.write(b"inside\n")
    os.symlink("../outside", os.path.join(_EXPORT, "out"))  # a host symlink out: never followed
    os.makedirs(_OUTSIDE, exist_ok=True)


def _outside_state() -> list:
    return sorted((entry.name, entry.stat(follow_symlinks=False).st_mtime_ns)
                  for entry in os.scandir(_OUTSIDE))


def _check_reply(request: m.Message, reply: m.Message) -> None:
    assert reply.tag == request.tag, (request, reply)
    assert decode(encode_bytes(reply)) == reply, reply


def _check_books(session: Session) -> None:
    assert len(session.fids) <= LIMITS.max_fids, len(session.fids)
    for number, fid in session.fids.items():
        assert fid.number == number, (number, fid)


async def _serve(data: bytes, filesystem) -> None:
    session = Session({"": Export(filesystem)}, LIMITS, connection_id=1)
    dispatcher = Dispatcher(session, LockManager(), pack_dirents, credentials_for)
    frames = FrameReader(LIMITS.max_msize)
    frames.feed(data)
    try:
        for count, frame in enumerate(frames):
            if count >= MAX_REQUESTS:
                break
            try:
                msg = decode(frame)
            except ProtocolError:
                continue
            if isinstance(msg, m.Tversion):  # the connection's part of Tversion
                for fid in session.clear():
                    await dispatcher.close_fid(fid)
                msize, version = session.negotiate(msg.msize, msg.version)
                reply = m.Rversion(msg.tag, msize, version)
            elif isinstance(msg, m.Tflush):
                reply = m.Rflush(msg.tag)
            else:
                reply = await dispatcher.handle(msg)
            _check_reply(msg, reply)
            _check_books(session)
    except ProtocolError:  # the framing broke: the connection would hang up here
        pass
    for fid in session.clear():
        await dispatcher.close_fid(fid)


async def _both(data: bytes) -> None:
    await _serve(data, MemFilesystem())
    _fresh_tree()
    before = _outside_state()
    host = HostFilesystem(_EXPORT)
    try:
        await _serve(data, host)
    finally:
        await host.aclose()
    assert _outside_state() == before, "a request changed the host outside the export"


def one_input(data: bytes) -> None:
    trio.run(_both, data)


def main() -> None:
    from fuzz.driver import run
    run("session", one_input)


if __name__ == "__main__":
    main()
