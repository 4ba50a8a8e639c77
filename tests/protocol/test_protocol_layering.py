"""The layers import only downward.

* ninep.protocol is pure: no trio, no sockets, no os calls;
* the server core (rules, session, dispatch, locks) loads no trio, socket or pwd;
* ninep.fs never imports ninep.server; nothing imports the CLI;
* no module imports one that imports it back (directly or round a longer loop).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ninep.protocol

PROTOCOL_DIR = Path(ninep.protocol.__file__).parent
FORBIDDEN_IMPORTS = {"trio", "socket", "subprocess", "os", "threading", "asyncio", "select",
                     "selectors", "shutil", "pathlib"}
ALLOWED: set = set()
NINEP_DIR = PROTOCOL_DIR.parent


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


# --- the server core, fs, the CLI, loops ----------------------------------------------

SERVER_CORE = ["ninep.server.rules", "ninep.server.session", "ninep.server.dispatch",
               "ninep.server.lockrequests", "ninep.server.locks"]


@pytest.mark.parametrize("module", SERVER_CORE)
def test_the_server_core_loads_no_trio_socket_or_pwd(module):
    code = (f"import sys, {module}; bad = {{'trio', 'socket', 'pwd'}} & set(sys.modules); "
            "assert not bad, bad")
    result = run_python(code)
    assert result.returncode == 0, result.stderr


def module_name(path: Path) -> str:
    parts = list(path.relative_to(NINEP_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {module_name(p): p for p in NINEP_DIR.rglob("*.py")}


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of import nodes under ``if TYPE_CHECKING:`` (types only, never run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped |= {id(inner) for inner in ast.walk(node)}
    return skipped


def imports_of(module: str) -> set[str]:
    """The ninep modules ``module`` imports, at the top or inside functions."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skipped = _type_checking_only(tree)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            for alias in node.names:
                candidate = f"{target}.{alias.name}"
                found.add(candidate if candidate in MODULES else target)
    return {name for name in found if name in MODULES and name != module}


GRAPH = {module: imports_of(module) for module in MODULES}


def test_fs_never_imports_the_server():
    offenders = [(module, dep) for module, deps in GRAPH.items() if module.startswith("ninep.fs")
                 for dep in deps if dep.startswith("ninep.server")]
    assert offenders == []


def test_nothing_imports_the_cli():
    offenders = [module for module, deps in GRAPH.items() if "ninep.cli" in deps]
    assert offenders == []


def import_loops() -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for dep in GRAPH[node]:
            if dep not in index:
                visit(dep)
                low[node] = min(low[node], low[dep])
            elif dep in stack:
                low[node] = min(low[node], index[dep])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for module in GRAPH:
        if module not in index:
            visit(module)
    return sorted(loops)


def test_no_import_loops():
    """Imports inside functions count (GRAPH has them): an import moved into a
    function to dodge a loop at load time is still a loop between the layers."""
    assert import_loops() == []


def test_the_graph_sees_imports_inside_functions():
    # ninep/__init__.py imports the server inside ``serve`` (to keep ``import ninep`` light).
    assert "ninep.server" in GRAPH["ninep"]


def test_the_loop_finder_finds_a_loop():
    GRAPH["ninep.protocol.constants"].add("ninep.protocol.codec")  # codec imports constants
    try:
        assert any({"ninep.protocol.codec", "ninep.protocol.constants"} <= set(loop)
                   for loop in import_loops())
    finally:
        GRAPH["ninep.protocol.constants"].discard("ninep.protocol.codec")
