"""Write the seed corpora: the golden frames (codec, session) and config examples.

Run once from the repository root (`python -m fuzz.seed`); the files are committed."""

from __future__ import annotations

import hashlib
import os
import struct
import sys

from fuzz.driver import corpus_dir
from ninep.protocol import messages as m
from ninep.protocol.codec import encode_bytes


def _write(name: str, data: bytes) -> None:
    os.makedirs(corpus_dir(name), exist_ok=True)
    path = os.path.join(corpus_dir(name), "seed-" + hashlib.sha1(data).hexdigest()[:16])
    with open(path, "wb") as f:
        f.write(data)


def golden_frames() -> list[bytes]:
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests", "protocol"))
    from test_protocol_golden import GOLDEN, wire  # the golden table is the seed
    return [wire(hex_text) for _, hex_text in GOLDEN]


# A session in frames: what a kernel mount then `ls; cat; echo > f; mkdir; rm` sends.
SESSION = [
    m.Tversion(0xFFFF, 65536, "9P2000.L"),
    m.Tattach(1, 0, 0xFFFFFFFF, "root", "", 0),
    m.Tgetattr(2, 0, 0x3FFF),
    m.Twalk(3, 0, 1, ("d",)), m.Tlopen(4, 1, 0o200000), m.Treaddir(5, 1, 0, 8192),
    m.Twalk(6, 0, 2, ("d", "f")), m.Tlopen(7, 2, 0), m.Tread(8, 2, 0, 4096),
    m.Twalk(9, 1, 3, ()), m.Tlcreate(10, 3, "new", 0o1101, 0o644, 0),
    m.Twrite(11, 3, 0, b"hello"), m.Tfsync(12, 3, 0), m.Tclunk(13, 3),
    m.Tmkdir(14, 1, "sub", 0o755, 0), m.Tsymlink(15, 1, "ln", "../x", 0),
    m.Tmknod(16, 1, "fifo", 0o10644, 0, 0, 0),
    m.Tsetattr(17, 2, 0x8, 0, 0, 0, 3, 0, 0, 0, 0),
    m.Tlock(18, 2, 1, 0, 0, 10, 1, "c"), m.Tgetlock(19, 2, 1, 0, 10, 1, "c"),
    m.Txattrwalk(20, 2, 4, ""), m.Tstatfs(21, 0), m.Treadlink(22, 0),
    m.Trenameat(23, 1, "new", 1, "renamed"), m.Tunlinkat(24, 1, "renamed", 0),
    m.Tclunk(25, 2), m.Tclunk(26, 1), m.Tremove(27, 0),
]

CONFIGS = [
    b"listen:\n  - tcp://127.0.0.1:5640\n  - unix:///run/ninep.sock\nmsize: 1M\nworkers: 2\n"
    b"exports:\n  root:\n    path: /srv/guest-root\n    read_only: false\n    squash: null\n"
    b"  share:\n    path: /srv/share\n    read_only: true\n    squash: '1000:1000'\n",
    b"exports: {a: {path: /a, listing_cache: false}}\nmax_fids: 10\nmax_in_flight: 4\n",
    b"tcp://[::1]:5640", b"tcp://127.0.0.1:0", b"unix:///run/x.sock", b"vsock://3:5640",
]


class VsockGuestScript:
    """A well-behaved guest as a fuzz/vsock.py script: rings of 16, packets in memory."""

    def __init__(self) -> None:
        from fuzz import vsock
        self.v = vsock
        self.out = bytearray([4, 4])  # both rings of 16
        self.avail = {vsock.TX_QUEUE: 0, vsock.RX_QUEUE: 0}  # chains posted
        self.desc = {vsock.TX_QUEUE: 0, vsock.RX_QUEUE: 0}   # descriptors used
        self.slot = 0

    def _write(self, offset: int, data: bytes) -> None:
        self.out += bytes([self.v.WRITE, len(data) + 2]) + struct.pack("<H", offset) + data

    def _post(self, queue: int, chain: list[tuple[int, int, int]]) -> None:
        desc, avail, _ = self.v.RINGS[queue]
        first, idx = self.desc[queue], self.avail[queue]
        for i, (addr, length, flags) in enumerate(chain):
            last = i == len(chain) - 1
            self._write(desc + 16 * ((first + i) % 16),
                        struct.pack("<QIHH", addr, length, flags | (0 if last else 1),
                                    0 if last else (first + i + 1) % 16))
        self._write(avail + 4 + 2 * (idx % 16), struct.pack("<H", first % 16))
        self.desc[queue] = first + len(chain)
        self.avail[queue] = idx + 1
        self._write(avail + 2, struct.pack("<H", self.avail[queue] & 0xFFFF))

    def _buffer(self, data: bytes) -> int:
        """A guest physical address in region 1 holding data (16 slots of 128 bytes)."""
        offset = 128 * (self.slot % 16)
        self.slot += 1
        self._write(self.v.REGION_SIZE + offset, data)
        return self.v.REGIONS[1][0] + offset

    def send(self, op: int, payload: bytes = b"", *, flags: int = 0, split: bool = False,
             port: int = 1000, buf_alloc: int = 65536, fwd_cnt: int = 0) -> "VsockGuestScript":
        from ninep.vhost.vsock import HEADER
        header = HEADER.pack(3, 2, port, self.v.PORT, len(payload), 1, op, flags, buf_alloc, fwd_cnt)
        if split:
            self._post(self.v.TX_QUEUE, [(self._buffer(header), len(header), 0),
                                         (self._buffer(payload), len(payload), 0)])
        else:
            self._post(self.v.TX_QUEUE, [(self._buffer(header + payload), len(header) + len(payload), 0)])
        self.out += bytes([self.v.KICK_TX, 0])
        return self

    def receive_buffers(self, count: int) -> "VsockGuestScript":
        for i in range(count):  # writable buffers of 128 bytes after the rings in region 0
            self._post(self.v.RX_QUEUE, [(self.v.REGIONS[0][0] + 896 + 128 * (i % 8), 128, 2)])
        self.out += bytes([self.v.KICK_RX, 0])
        return self

    def app(self, op: int, data: bytes = b"\0") -> "VsockGuestScript":
        self.out += bytes([op, len(data)]) + data
        return self


def vsock_seeds() -> list[bytes]:
    from ninep.vhost.vsock import (OP_CREDIT_REQUEST, OP_CREDIT_UPDATE, OP_REQUEST, OP_RST,
                                   OP_RW, OP_SHUTDOWN)
    from fuzz.vsock import APP_CLOSE, APP_READ, APP_RESET, APP_WRITE
    G = VsockGuestScript
    return [bytes(x.out) for x in (
        G().receive_buffers(4).send(OP_REQUEST).send(OP_RW, b"hello 9p").app(APP_READ, b"\0\4")
           .app(APP_WRITE, b"\0reply").send(OP_CREDIT_REQUEST).send(OP_SHUTDOWN, flags=3),
        G().send(OP_REQUEST).send(OP_RW, b"x" * 40, split=True).app(APP_WRITE, b"\0" + b"y" * 40)
           .send(OP_CREDIT_UPDATE).receive_buffers(8).app(APP_CLOSE).send(OP_RST),
        G().receive_buffers(2).send(OP_REQUEST, port=7).send(OP_REQUEST, port=8)
           .send(OP_REQUEST, port=8).app(APP_RESET).send(OP_RW, b"late", port=7, buf_alloc=0),
        G().send(OP_REQUEST).send(OP_CREDIT_REQUEST).send(OP_CREDIT_REQUEST)
           .send(OP_CREDIT_REQUEST).send(OP_RST, port=99).send(9).receive_buffers(3),
    )]


def main() -> None:
    for frame in golden_frames():
        _write("codec", frame[4:])  # the harness writes the size field itself
    _write("session", b"".join(encode_bytes(x) for x in SESSION))
    for i in range(1, len(SESSION)):
        _write("session", b"".join(encode_bytes(x) for x in SESSION[:2] + SESSION[i:i + 1]))
    for text in CONFIGS:
        _write("config", text)
    for script in vsock_seeds():
        _write("vsock", script)


if __name__ == "__main__":
    main()
