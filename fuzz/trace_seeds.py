"""Seeds from what the Linux kernel really sends: ninepd --trace logs one line per
message (``unix:... <- Twalk tag=1 fid=0 newfid=1 wnames=('etc',)``, ninep/server/trace.py);
the T-messages are rebuilt from those lines and written as session seeds (windows of a
connection's requests, each after its Tversion and Tattach) and codec seeds (one frame
per message shape). Payloads are logged abbreviated (``<N bytes b'head'...>``) and come
back as the head padded to N bytes.

    python -m fuzz.trace_seeds capture   # boot the busybox VM once with --trace, keep the
                                         # trace in fuzz/traces/busybox-tcp.log
    python -m fuzz.trace_seeds LOG...    # seeds from existing ninepd --trace logs
"""

from __future__ import annotations

import ast
import os
import re
import sys
from dataclasses import fields

from fuzz.seed import _write
from ninep.protocol import messages as m
from ninep.protocol.codec import encode_bytes

_LINE = re.compile(r"^.*?(\S+) <- (T\w+)((?: \w+=.*)?)$")
_FIELD = re.compile(r" (\w+)=")
_PAYLOAD = re.compile(r"^<(\d+) bytes (b'.*'|b\".*\")(\.\.\.)?>$")
TRACE_KEPT = os.path.join(os.path.dirname(__file__), "traces", "busybox-tcp.log")
WINDOW = 60  # requests per session seed (the session harness serves up to 64)

# What the guest does while traced: the file operations of the VM tests, busybox only.
SCRIPT = r"""
cd / && mkdir -p /tracetest && cd /tracetest
echo "hello 9p" > file.txt; cat file.txt; echo more >> file.txt; wc -l < file.txt
mv file.txt renamed.txt; ln renamed.txt hard.txt; stat -c %h renamed.txt; rm hard.txt
ln -s renamed.txt sym.txt; readlink sym.txt; head -n 1 sym.txt
chmod 640 renamed.txt; chown 1000:1000 renamed.txt; truncate -s 5 renamed.txt
touch -d '1960-01-01 00:00:00' renamed.txt; touch -d '2038-01-19 03:14:08' sym.txt
mkdir -p sub/deeper; rmdir sub/deeper; mkfifo pipe; mknod null c 1 3 2>/dev/null
dd if=/dev/urandom of=big bs=65536 count=4 2>/dev/null; md5sum big; ls -la /tracetest /etc
df / ; find /tracetest -type f | xargs cat > /dev/null; rm -r /tracetest; sync
"""


def _value(text: str):
    payload = _PAYLOAD.match(text)
    if payload:
        head = ast.literal_eval(payload.group(2))
        return head.ljust(int(payload.group(1)), b"\0")
    return ast.literal_eval(text)


def parse_line(line: str) -> tuple[str, m.Message] | None:
    """(connection, T-message) from one --trace line, or None for any other line."""
    match = _LINE.match(line.rstrip("\n"))
    if not match or not hasattr(m, match.group(2)):
        return None
    cls = getattr(m, match.group(2))
    rest = match.group(3)
    names = _FIELD.findall(rest)
    values = _FIELD.split(rest)[2::2]
    try:
        given = {name: _value(value) for name, value in zip(names, values)}
        return match.group(1), cls(*(given[f.name] for f in fields(cls)))
    except (ValueError, SyntaxError, KeyError, TypeError):
        return None


def seeds_from(lines) -> tuple[list[bytes], list[bytes]]:
    """(session seeds, codec seeds) from trace lines."""
    streams: dict[str, list[m.Message]] = {}
    for line in lines:
        parsed = parse_line(line)
        if parsed:
            streams.setdefault(parsed[0], []).append(parsed[1])
    sessions, shapes = [], {}
    for requests in streams.values():
        head = [r for r in requests[:4] if isinstance(r, (m.Tversion, m.Tattach))]
        body = requests[len(head):]
        for start in range(0, max(len(body), 1), WINDOW):
            sessions.append(b"".join(encode_bytes(r) for r in head + body[start:start + WINDOW]))
        for request in requests:
            key = (type(request).__name__, len(encode_bytes(request)) // 64)
            shapes.setdefault(key, encode_bytes(request)[4:])  # the codec harness adds the size
    return sessions, list(shapes.values())


def write_seeds(lines) -> tuple[int, int]:
    sessions, frames = seeds_from(lines)
    for data in sessions:
        _write("session", data)
    for data in frames:
        _write("codec", data)
    return len(sessions), len(frames)


def capture() -> list[str]:
    """Boot the busybox root over tcp with ninepd --trace; the server log's lines."""
    import tempfile
    from pathlib import Path

    import trio

    from ninep.vm.testing import boot_script, fresh_busybox_rootfs

    with tempfile.TemporaryDirectory(prefix="ninep-trace-") as tmp:
        root = fresh_busybox_rootfs(Path(tmp) / "root")
        result = trio.run(lambda: boot_script(root, SCRIPT, transport="tcp", server="ninepd",
                                              server_args=("--trace",), timeout=600))
        print(result.console[-2000:], file=sys.stderr)
        return result.server_log.splitlines()


def main() -> None:
    if sys.argv[1:] == ["capture"]:
        lines = [line for line in capture() if "ninep.trace" in line or " <- " in line]
        with open(TRACE_KEPT, "w") as f:  # kept, so the seeds can be remade without a VM
            f.writelines(line + "\n" for line in lines)
    else:
        lines = [line for path in sys.argv[1:] for line in open(path, errors="replace")]
    sessions, frames = write_seeds(lines)
    print(f"{len(lines)} trace lines -> {sessions} session seeds, {frames} codec seeds")


if __name__ == "__main__":
    main()
