"""YAML export configs for ``ninepd --config FILE``.

    listen:                       # optional; --listen on the command line wins
      - tcp://127.0.0.1:5640
      - unix:///run/ninep.sock
    msize: 1M                     # optional; 4096 .. (default 1 MiB)
    workers: 2                    # optional; processes serving connections (default 1)
    poll_us: 300                  # optional; how long a lone connection may poll for its
                                  #   next request, in µs (0: never; docs/performance.md)
    max_locks: 32768              # optional per-connection limits: any of the names in
    max_xattr_bytes: 1M           #   server.session.LIMIT_NAMES (docs/server.md)
    exports:                      # aname -> export; the first one is the default
      root:                       #   (what aname "" or "/" selects)
        path: /srv/guest-root
        read_only: false
        identity: passthrough     # passthrough | mapped | per-user | squash; default:
                                  #   passthrough as root, mapped otherwise
        mapped_owner: "0:0"       # mapped: the owner of files without user.virtfs.*
        squash: null              # or "UID:GID": every attach acts as that identity
        statfs_passthru: false    # true: statfs reports the host filesystem's f_type
        identity_inline: false    # true: switch to the guest's identity on the event
                                  #   loop (faster; a slow syscall stalls every client)
        listing_cache: true       # false: never reuse a directory listing (for host
                                  #   filesystems that do not move a directory's ctime)
      share:
        path: /srv/share
        read_only: true
      vms:                        # copy-on-write: a read-only base, an upper per guest
        base: /srv/debian.tar.zst #   a directory or a .tar[.gz|.xz|.zst]
        upper: /srv/vms/{aname}   #   aname "vms/web1" -> /srv/vms/web1 (docs/cow.md)
        throwaway: false          #   true: a temporary upper per guest, gone at unmount

Errors name the file, the line and the key: the document is *composed* (yaml's node
tree keeps each node's position) rather than loaded, and checked node by node.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from .fs.hostmodel import MODELS
from .protocol.constants import MIN_MSIZE
from .server.session import LIMIT_NAMES

_TOP_KEYS = {"listen", "msize", "exports", "workers", "poll_us", *LIMIT_NAMES}
_EXPORT_KEYS = {"path", "read_only", "squash", "statfs_passthru", "identity_inline",
                "listing_cache", "identity", "mapped_owner", "base", "upper", "throwaway"}
_EXPORT_FLAGS = ("read_only", "statfs_passthru", "identity_inline", "listing_cache",
                 "throwaway")


class ConfigError(Exception):
    """A bad config; the message is ``FILE:LINE: key: problem``."""


@dataclass
class ExportConfig:
    name: str
    path: str | None = None
    base: str | None = None  # copy-on-write: base and upper instead of path
    upper: str | None = None
    throwaway: bool = False
    read_only: bool = False
    squash: tuple[int, int] | None = None
    statfs_passthru: bool = False
    identity_inline: bool = False
    listing_cache: bool = True
    where: str = ""               # "FILE:LINE" of path, for errors found when it is opened
    identity: str | None = None  # None: the default for who runs the server
    mapped_owner: tuple[int, int] = (0, 0)


@dataclass
class ServerConfig:
    exports: list[ExportConfig] = field(default_factory=list)
    listen: list[str] = field(default_factory=list)
    listen_where: list[str] = field(default_factory=list)  # "FILE:LINE" of each listen URL
    msize: int | None = None
    limits: dict[str, int] = field(default_factory=dict)  # LIMIT_NAMES -> value
    workers: int | None = None
    poll_us: int | None = None


def parse_squash(text: str, what: str = "squash") -> tuple[int, int]:
    """"UID:GID" -> (uid, gid); ValueError says what is wrong."""
    uid, sep, gid = str(text).partition(":")
    if not sep or not uid.isdigit() or not gid.isdigit():
        raise ValueError(f"{what} must be UID:GID (numbers), not {text!r}")
    return int(uid), int(gid)


IDENTITY_MODELS = MODELS


def parse_identity(text: str) -> str:
    if text not in IDENTITY_MODELS:
        raise ValueError(f"identity must be one of {', '.join(IDENTITY_MODELS)}, not {text!r}")
    return text


def parse_size(text: str | int) -> int:
    """"65536", "64K", "1M" -> bytes."""
    if isinstance(text, int):
        return text
    s = str(text).strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(s[-1:], 1)
    digits = s[:-1] if scale != 1 else s
    if not digits.isdigit():
        raise ValueError(f"not a size: {text!r}")
    return int(digits) * scale


class _Checker:
    def __init__(self, filename: str) -> None:
        self.filename = filename

    def where(self, node: yaml.Node | None) -> str:
        return f"{self.filename}:{node.start_mark.line + 1 if node is not None else 1}"

    def fail(self, node: yaml.Node | None, key: str, problem: str) -> ConfigError:
        return ConfigError(f"{self.where(node)}: {key}: {problem}")

    def mapping(self, node: yaml.Node, key: str) -> list[tuple[yaml.ScalarNode, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, key, "expected a mapping")
        for k, _ in node.value:
            if not isinstance(k, yaml.ScalarNode):
                raise self.fail(k, key, "keys must be plain names")
        return node.value

    def scalar(self, node: yaml.Node, key: str) -> object:
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, key, "expected a single value")
        # Construct the node itself: re-serializing it and loading the text fails (a
        # YAML parser error, not a ConfigError) for an empty value such as "max_fids:".
        try:
            return yaml.constructor.SafeConstructor().construct_object(node)
        except yaml.YAMLError as exc:  # a tag such as "!x" that the safe loader refuses
            raise self.fail(node, key, f"not a plain value: {getattr(exc, 'problem', exc)}") from None

    def string(self, node: yaml.Node, key: str) -> str:
        value = self.scalar(node, key)
        if not isinstance(value, str) or not value:
            raise self.fail(node, key, "expected a non-empty string")
        return value

    def boolean(self, node: yaml.Node, key: str) -> bool:
        value = self.scalar(node, key)
        if not isinstance(value, bool):
            raise self.fail(node, key, "expected true or false")
        return value

    def count(self, node: yaml.Node, key: str, minimum: int = 1) -> int:
        try:
            value = parse_size(self.scalar(node, key))
        except ValueError as exc:
            raise self.fail(node, key, str(exc)) from None
        if value < minimum:
            raise self.fail(node, key, f"must be at least {minimum}")
        return value


def parse_config(text: str, filename: str = "<config>") -> ServerConfig:
    check = _Checker(filename)
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else 1
        raise ConfigError(f"{filename}:{line}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if root is None:
        raise ConfigError(f"{filename}:1: exports: the file is empty")
    config = ServerConfig()
    seen: set[str] = set()
    for key_node, value in check.mapping(root, "(top level)"):
        key = key_node.value
        if key not in _TOP_KEYS:
            raise check.fail(key_node, key, f"unknown key (expected one of {', '.join(sorted(_TOP_KEYS))})")
        seen.add(key)
        if key == "listen":
            items = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for item in items:
                url = check.string(item, key)
                if "://" not in url:
                    raise check.fail(item, key, f"{url!r} is not a URL (tcp://, unix://, vsock://, fd://, systemd://)")
                config.listen.append(url)
                config.listen_where.append(check.where(item))
        elif key == "msize":
            config.msize = check.count(value, key, MIN_MSIZE)
        elif key in LIMIT_NAMES:
            config.limits[key] = check.count(value, key)
        elif key == "workers":
            config.workers = check.count(value, key, 1)
        elif key == "poll_us":
            config.poll_us = check.count(value, key, 0)
        elif key == "exports":
            config.exports = _exports(check, value)
    if "exports" not in seen or not config.exports:
        raise check.fail(root, "exports", "at least one export is required")
    return config


def _exports(check: _Checker, node: yaml.Node) -> list[ExportConfig]:
    out: list[ExportConfig] = []
    for name_node, body in check.mapping(node, "exports"):
        name = str(name_node.value)
        where = f"exports.{name}"
        settings: dict[str, object] = {}
        for key_node, value in check.mapping(body, where):
            key = key_node.value
            full = f"{where}.{key}"
            if key not in _EXPORT_KEYS:
                raise check.fail(key_node, full, f"unknown key (expected one of {', '.join(sorted(_EXPORT_KEYS))})")
            if key in ("path", "base", "upper"):
                settings[key] = check.string(value, full)
                settings.setdefault("where", check.where(value))
            elif key in _EXPORT_FLAGS:
                settings[key] = check.boolean(value, full)
            elif key in ("squash", "mapped_owner"):
                # The node's own text: YAML 1.1 would read "1:30" as the number 90.
                if check.scalar(value, full) is not None:
                    try:
                        settings[key] = parse_squash(value.value, key)
                    except ValueError as exc:
                        raise check.fail(value, full, str(exc)) from None
            elif key == "identity":
                try:
                    settings["identity"] = parse_identity(check.string(value, full))
                except ValueError as exc:
                    raise check.fail(value, full, str(exc)) from None
        if "base" in settings:
            if "path" in settings:
                raise check.fail(name_node, f"{where}.path", "give path, or base (copy-on-write), not both")
            if "upper" not in settings and not settings.get("throwaway"):
                raise check.fail(name_node, f"{where}.upper", "missing (or throwaway: true)")
        elif "path" not in settings:
            raise check.fail(name_node, f"{where}.path", "missing (the directory to export)")
        elif "upper" in settings or "throwaway" in settings:
            raise check.fail(name_node, f"{where}.base", "upper and throwaway need a base")
        out.append(ExportConfig(name=name, **settings))
    return out


def load_config(path: str) -> ServerConfig:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    return parse_config(text, path)
