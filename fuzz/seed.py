"""Write the seed corpora: the golden frames (codec, session) and config examples.

Run once from the repository root (`python -m fuzz.seed`); the files are committed."""

from __future__ import annotations

import hashlib
import os
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


def main() -> None:
    for frame in golden_frames():
        _write("codec", frame[4:])  # the harness writes the size field itself
    _write("session", b"".join(encode_bytes(x) for x in SESSION))
    for i in range(1, len(SESSION)):
        _write("session", b"".join(encode_bytes(x) for x in SESSION[:2] + SESSION[i:i + 1]))
    for text in CONFIGS:
        _write("config", text)


if __name__ == "__main__":
    main()
