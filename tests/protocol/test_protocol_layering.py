"""ninep.protocol is pure: no trio, no sockets, no os calls (constants.py's flag table aside)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import ninep.protocol

PROTOCOL_DIR = Path(ninep.protocol.__file__).parent
FORBIDDEN_IMPORTS = {"trio", "socket", "subprocess", "os", "threading", "asyncio", "select",
                     "selectors", "shutil", "pathlib"}
# constants.py needs os.O_* to translate open flags for the host; nothing else may.
ALLOWED = {("constants.py", "os")}


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)


def test_importing_the_codec_does_not_import_trio():
    result = run_python("import ninep.protocol.codec, sys; assert 'trio' not in sys.modules")
    assert result.returncode == 0, result.stderr


def test_no_protocol_module_imports_io_machinery():
    offenders = []
    for path in sorted(PROTOCOL_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name.split(".")[0] for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [(node.module or "").split(".")[0]]
            else:
                continue
            offenders += [(path.name, name) for name in names
                          if name in FORBIDDEN_IMPORTS and (path.name, name) not in ALLOWED]
    assert offenders == []


AUDIT_PROBE = r"""
import json, sys
events = []
sys.addaudithook(lambda event, args: events.append((event, repr(args)[:200])))
import ninep.protocol.codec as codec
from ninep.protocol import messages as m
at_import = list(events)
events.clear()
frames = [codec.encode_bytes(msg) for msg in (
    m.Twalk(1, 2, 3, ("a", "b")), m.Rread(1, b"data"), m.Rgetattr(1, 0, m.Qid(0, 0, 0), *range(18)))]
reader = codec.FrameReader(8192)
reader.feed(b"".join(frames))
for frame in reader:
    codec.decode(frame)
    codec.decode_interpreted(frame)
codec.unpack_dirents(codec.pack_dirents([m.Dirent(m.Qid(0, 0, 0), 1, 8, "x")], 100)[0])
print(json.dumps({"import": at_import, "use": events}))
"""

# What importing Python modules legitimately does; anything else (sockets, processes,
# writes, file-system changes) would be the protocol layer touching the outside world.
IMPORT_MACHINERY = {"import", "open", "os.listdir", "os.scandir", "compile", "exec",
                    "marshal.loads", "object.__getattr__", "object.__setattr__", "builtins.id",
                    "sys._getframe", "os.stat", "code.__new__", "object.__delattr__",
                    "sys.settrace", "sys._current_frames"}


def test_no_os_calls_at_import_and_none_at_all_while_coding():
    result = run_python(AUDIT_PROBE)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    unexpected = [(event, args) for event, args in report["import"]
                  if event not in IMPORT_MACHINERY]
    assert unexpected == []
    writes = [args for event, args in report["import"]
              if event == "open" and any(mode in args for mode in ("'w'", "'a'", "'x'", "+"))]
    assert writes == []
    assert report["use"] == []
