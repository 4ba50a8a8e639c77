"""Build the ninep initramfs: the static guest init plus the kernel modules it loads.

Pure-Python newc cpio writer (deterministic: entries sorted, fixed inode numbers,
mtime 0, owner root), module dependency resolution from modules.dep, and a cache
of compiled inits and finished images under $XDG_CACHE_HOME/ninep.
"""

from __future__ import annotations

import gzip
import hashlib
import lzma
import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ninep.vm.progress import note

# Package data (shipped in the wheel): the one copy of the init source.
GUEST_INIT_SOURCE = Path(__file__).resolve().parent / "guest-init" / "ninep-init.c"
INIT_CFLAGS = ["-static", "-Os", "-Wall", "-ffunction-sections", "-fdata-sections",
               "-Wl,--gc-sections", "-s"]

#: What a 9P root needs on a Debian-style modular kernel, for every transport.
DEFAULT_MODULES = (
    "virtio_pci", "9pnet_fd", "9pnet_virtio", "9p", "virtio_console", "virtio_net",
    "vmw_vsock_virtio_transport", "overlay",
)
#: What an ext4 root on a virtio disk needs (the benchmark's baseline).
BLOCK_MODULES = ("virtio_blk", "crc32c_generic", "ext4")
VIRTIOFS_MODULES = ("virtiofs",)  # with fuse, from modules.dep

MODULE_LIST_PATH = "lib/modules/load.order"
RUN_SCRIPT_PATH = "ninep.run"


class BuildError(Exception):
    """The initramfs cannot be built here; the message says what is missing."""


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    path = Path(base) / "ninep"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ---- cpio (newc) ---------------------------------------------------------------

S_IFDIR, S_IFREG, S_IFLNK, S_IFCHR = 0o040000, 0o100000, 0o120000, 0o020000


@dataclass(frozen=True)
class CpioEntry:
    """One archive member; `data` is the file body or the symlink target."""

    path: str
    mode: int
    data: bytes = b""
    rdev: tuple[int, int] = (0, 0)


def _newc_record(ino: int, entry: CpioEntry | None) -> bytes:
    name = (entry.path if entry else "TRAILER!!!").encode() + b"\0"
    mode = entry.mode if entry else 0
    data = entry.data if entry else b""
    rmajor, rminor = entry.rdev if entry else (0, 0)
    nlink = 2 if mode & 0o170000 == S_IFDIR else 1
    fields = (ino, mode, 0, 0, nlink if entry else 1, 0, len(data), 0, 0, rmajor, rminor,
              len(name), 0)
    header = b"070701" + b"".join(b"%08X" % value for value in fields)
    head = header + name
    head += b"\0" * (-len(head) % 4)
    return head + data + b"\0" * (-len(data) % 4)


def write_cpio(entries: list[CpioEntry]) -> bytes:
    """A newc archive of `entries` plus every missing parent directory, sorted by path."""
    by_path: dict[str, CpioEntry] = {}
    for entry in entries:
        path = entry.path.strip("/")
        by_path[path] = CpioEntry(path, entry.mode, entry.data, entry.rdev)
        parent = os.path.dirname(path)
        while parent and parent not in by_path:
            by_path[parent] = CpioEntry(parent, S_IFDIR | 0o755)
            parent = os.path.dirname(parent)
    records = [_newc_record(ino, by_path[path]) for ino, path in enumerate(sorted(by_path), 1)]
    records.append(_newc_record(0, None))
    return b"".join(records)


def read_cpio(archive: bytes) -> list[CpioEntry]:
    """Parse a newc archive (the tests' check of write_cpio; also handles concatenations)."""
    entries, offset = [], 0
    while offset + 110 <= len(archive):
        if archive[offset:offset + 6] != b"070701":
            if archive[offset:offset + 1] == b"\0":  # padding between concatenated archives
                offset += 1
                continue
            raise ValueError(f"bad cpio magic at offset {offset}")
        fields = [int(archive[offset + 6 + 8 * i: offset + 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, rmajor, rminor, namesize = (fields[1], fields[6], fields[9],
                                                    fields[10], fields[11])
        name_start = offset + 110
        name = archive[name_start:name_start + namesize - 1].decode()
        data_start = name_start + namesize + (-(110 + namesize) % 4)
        data = archive[data_start:data_start + filesize]
        offset = data_start + filesize + (-filesize % 4)
        if name != "TRAILER!!!":
            entries.append(CpioEntry(name, mode, data, (rmajor, rminor)))
    return entries


# ---- guest init ----------------------------------------------------------------

def _compiler() -> list[str]:
    if shutil.which("musl-gcc"):
        return ["musl-gcc"]
    if shutil.which("gcc"):
        return ["gcc"]  # glibc static works too, only larger
    raise BuildError("no C compiler: install musl-tools (musl-gcc) or gcc")


def compile_static(source: Path) -> Path:
    """Compile one C file into a static binary, once per source text and compiler."""
    if not source.is_file():
        raise BuildError(f"C source not found: {source}")
    compiler = _compiler()
    text = source.read_bytes()
    key = hashlib.sha256(text + " ".join(compiler + INIT_CFLAGS).encode()).hexdigest()[:16]
    binary = cache_dir() / f"{source.stem}-{key}"
    if binary.exists():
        return binary
    partial = binary.with_suffix(f".tmp{os.getpid()}")
    note(f"compiling {source.name} (once; cached in {cache_dir()})")
    result = subprocess.run([*compiler, *INIT_CFLAGS, "-o", str(partial), str(source)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise BuildError(f"compiling {source} failed:\n{result.stderr}")
    partial.replace(binary)
    return binary


def build_guest_init(source: Path = GUEST_INIT_SOURCE) -> Path:
    """The guest init binary (cached by source hash)."""
    return compile_static(source)


# ---- kernel modules --------------------------------------------------------------

def _module_name(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base.replace("-", "_")


@dataclass
class ModuleTree:
    """modules.dep / modules.builtin / modules.alias / modules.softdep of one kernel."""

    root: Path
    deps: dict[str, list[str]] = field(default_factory=dict)   # name -> dependency names
    paths: dict[str, str] = field(default_factory=dict)        # name -> relative path
    builtin: set[str] = field(default_factory=set)
    aliases: dict[str, list[str]] = field(default_factory=dict)
    softdeps: dict[str, list[str]] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path) -> ModuleTree:
        dep_file = root / "modules.dep"
        if not dep_file.is_file():
            raise BuildError(f"{dep_file} not found (wrong --kernel-release / --modules-dir?)")
        tree = cls(root)
        for line in dep_file.read_text().splitlines():
            target, _, deps = line.partition(":")
            name = _module_name(target)
            tree.paths[name] = target
            tree.deps[name] = [_module_name(dep) for dep in deps.split()]
        if (root / "modules.builtin").is_file():
            tree.builtin = {_module_name(p) for p in (root / "modules.builtin").read_text().split()}
        if (root / "modules.alias").is_file():
            for line in (root / "modules.alias").read_text().splitlines():
                words = line.split()
                if len(words) == 3 and words[0] == "alias":
                    tree.aliases.setdefault(words[1], []).append(words[2].replace("-", "_"))
        if (root / "modules.softdep").is_file():
            for line in (root / "modules.softdep").read_text().splitlines():
                words = line.split()
                if len(words) >= 4 and words[0] == "softdep" and words[2] == "pre:":
                    tree.softdeps[words[1].replace("-", "_")] = words[3:]
        return tree

    def _resolve_name(self, name: str) -> str | None:
        name = name.replace("-", "_")
        if name in self.paths or name in self.builtin:
            return name
        for candidate in self.aliases.get(name, []) + self.aliases.get(name.replace("_", "-"), []):
            if candidate in self.paths or candidate in self.builtin:
                return candidate
        return None

    def load_order(self, wanted: list[str] | tuple[str, ...]) -> list[str]:
        """Module names to load, dependencies first; built-in ones left out."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str, required: bool) -> None:
            resolved = self._resolve_name(name)
            if resolved is None:
                if required:
                    raise BuildError(f"module {name} is neither in modules.dep nor built in "
                                     f"({self.root})")
                return
            if resolved in seen:
                return
            seen.add(resolved)
            if resolved in self.builtin:
                return
            for soft in self.softdeps.get(resolved, []):
                visit(soft, required=False)
            for dep in self.deps.get(resolved, []):
                visit(dep, required=True)
            order.append(resolved)

        for name in wanted:
            visit(name, required=True)
        return order

    def module_bytes(self, name: str) -> bytes:
        path = self.root / self.paths[name]
        data = path.read_bytes()
        if path.name.endswith(".xz"):
            return lzma.decompress(data)
        if path.name.endswith(".gz"):
            return gzip.decompress(data)
        if path.name.endswith(".zst"):
            if not shutil.which("zstd"):
                raise BuildError(f"{path} is zstd-compressed: install zstd")
            return subprocess.run(["zstd", "-dcq", str(path)], check=True,
                                  capture_output=True).stdout
        return data


# ---- the image -------------------------------------------------------------------

def modules_dir_for(release: str) -> Path:
    return Path("/lib/modules") / release


def initramfs_entries(init_binary: Path, tree: ModuleTree | None,
                      modules: list[str] | tuple[str, ...]) -> list[CpioEntry]:
    entries = [
        CpioEntry("init", S_IFREG | 0o755, init_binary.read_bytes()),
        CpioEntry("dev/console", S_IFCHR | 0o600, rdev=(5, 1)),
        CpioEntry("dev", S_IFDIR | 0o755), CpioEntry("proc", S_IFDIR | 0o755),
        CpioEntry("sys", S_IFDIR | 0o755), CpioEntry("newroot", S_IFDIR | 0o755),
    ]
    if tree is not None:
        order = tree.load_order(modules)
        listing = []
        for name in order:
            guest_path = f"lib/modules/{name}.ko"
            entries.append(CpioEntry(guest_path, S_IFREG | 0o644, tree.module_bytes(name)))
            listing.append("/" + guest_path)
        entries.append(CpioEntry(MODULE_LIST_PATH, S_IFREG | 0o644,
                                 ("\n".join(listing) + "\n").encode()))
    return entries


def build_initramfs(modules_dir: Path | None, output: Path | None = None, *,
                    modules: tuple[str, ...] = DEFAULT_MODULES) -> Path:
    """Write (or reuse from the cache) the initramfs; return its path.

    `modules_dir=None` means a kernel with 9P built in: the image holds only the init.
    """
    init_binary = build_guest_init()
    tree = ModuleTree.load(modules_dir) if modules_dir is not None else None
    key_source = [init_binary.name, str(modules_dir), *modules]
    if tree is not None:
        for name in tree.load_order(modules):
            stat = (tree.root / tree.paths[name]).stat()
            key_source.append(f"{name}:{stat.st_size}:{stat.st_mtime_ns}")
    key = hashlib.sha256("\n".join(key_source).encode()).hexdigest()[:16]
    cached = cache_dir() / f"initramfs-{key}.cpio"
    if not cached.exists():
        note(f"building the initramfs ({len(tree.load_order(modules)) if tree else 'no'} "
             f"modules from {modules_dir or 'nowhere'}; cached in {cache_dir()})")
        partial = cached.with_suffix(f".tmp{os.getpid()}")
        partial.write_bytes(write_cpio(initramfs_entries(init_binary, tree, modules)))
        partial.replace(cached)
    if output is None:
        return cached
    shutil.copyfile(cached, output)
    return output


def run_script_archive(script: str) -> bytes:
    """A second cpio, appended to the image, that tells the init to run `script`."""
    return write_cpio([CpioEntry(RUN_SCRIPT_PATH, S_IFREG | 0o644, script.encode())])
