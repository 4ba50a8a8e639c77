"""``ninepd``: serve host directories (or a synthetic tree) over 9P2000.L.

    ninepd --export /srv/root --listen tcp://127.0.0.1:5640 --listen unix:///run/9p.sock
    ninepd --config exports/guest-root.yaml
    ninepd --synthetic mypkg.tree:ROOT --listen fd://0,1
    ninepd --export /srv/root --workers 2     # one process per core (host exports)

SIGINT/SIGTERM stop accepting, give requests in flight ``--grace`` seconds, exit 0.
Exit status 2: bad arguments or config; 1: could not listen or serve.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys

import trio

from .config import (
    IDENTITY_MODELS, ConfigError, ServerConfig, load_config, parse_size, parse_squash)
from .fs.backend import Credentials, Filesystem
from .server import DEFAULT_LISTEN, Export, Limits, Server
from .server.listeners import ListenError, check_url, systemd_activated
from .server.polling import MAX_WINDOW as MAX_POLL_WINDOW
from .server.server import use_fd_limit
from .server.session import LIMIT_NAMES
from .server.workers import Supervisor, WorkerStart

log = logging.getLogger("ninepd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ninepd", description="9P2000.L file server")
    p.add_argument("--export", metavar="PATH", help="host directory to serve (the default export)")
    p.add_argument("--listen", metavar="URL", action="append", default=[],
                   help=f"tcp://HOST:PORT, unix:///ABS/PATH or unix://REL/PATH (from the current "
                        f"directory, which must exist), vsock://CID:PORT, fd://R,W, systemd:// "
                        f"(repeatable; default {DEFAULT_LISTEN})")
    p.add_argument("--read-only", action="store_true",
                   help="refuse every change to --export or --synthetic (EROFS)")
    p.add_argument("--squash", metavar="UID:GID", help="every attach to --export acts as UID:GID")
    p.add_argument("--identity", choices=IDENTITY_MODELS,
                   help="how --export keeps the guest's owners and modes: passthrough (root: "
                        "on the host inodes), mapped (no root: in user.virtfs.* xattrs, as "
                        "QEMU mapped-xattr), per-user (root: act as each attaching host "
                        "user), squash (with --squash); with --upper, how the upper keeps them. "
                        "Default: passthrough as root, else mapped")
    p.add_argument("--mapped-owner", metavar="UID:GID",
                   help="mapped: the owner shown for files without user.virtfs.* (default 0:0)")
    p.add_argument("--statfs-passthru", action="store_true",
                   help="statfs of --export reports the host filesystem's type, not 9P's")
    p.add_argument("--identity-inline", action="store_true",
                   help="per-user: switch to a guest user's identity on the event loop, not "
                        "a worker thread (~3x cheaper metadata operations; a slow one stalls "
                        "every client)")
    p.add_argument("--no-listing-cache", dest="listing_cache", action="store_false",
                   help="never reuse a directory listing (for host filesystems that do not "
                        "update a directory's ctime when its entries change)")
    p.add_argument("--upper", metavar="DIR",
                   help="serve --export copy-on-write: --export (a directory or a .tar[.gz|.xz|"
                        ".zst]) is the read-only base, guests' changes go to DIR ({aname} in DIR: "
                        "one upper per aname; see docs/cow.md)")
    p.add_argument("--throwaway-upper", action="store_true",
                   help="like --upper, with a temporary upper per guest, deleted at unmount")
    p.add_argument("--config", metavar="FILE", help="YAML export config (see exports/)")
    p.add_argument("--msize", metavar="N", help="largest msize offered (default 1M, at least 4096)")
    p.add_argument("--log-level", default="info",
                   choices=["debug", "info", "warning", "error"], help="default info")
    p.add_argument("--trace", action="store_true", help="log every message in and out")
    p.add_argument("--synthetic", metavar="MODULE:ATTRIBUTE",
                   help="serve a Filesystem or synthetic tree object instead of a directory")
    p.add_argument("--grace", type=float, default=10.0, metavar="SECONDS",
                   help="how long requests in flight may take at shutdown (default 10)")
    p.add_argument("--workers", type=int, metavar="N",
                   help="processes serving connections, each on its own core (default 1; "
                        "host exports, plain or copy-on-write; locks hold across them)")
    p.add_argument("--poll-us", type=int, metavar="N",
                   help="how long a lone connection (a VM's root) may poll for its next request "
                        "before it sleeps, at most; adapts to the client (default 300; 0: never)")
    p.add_argument("--limit", metavar="NAME=N", action="append", default=[],
                   help=f"a per-connection limit ({', '.join(LIMIT_NAMES)}; "
                        f"sizes as 1M; repeatable; overrides --config)")
    return p


def load_synthetic(spec: str) -> Filesystem:
    """Import MODULE and fetch ATTRIBUTE (dots allowed) as a Filesystem or a tree.

    The current directory goes first on sys.path, as ``python -m`` would put it: a
    console script starts with only its own bin directory there, so ``ninepd
    --synthetic mytree:ROOT`` could not otherwise import ./mytree.py."""
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"--synthetic wants MODULE:ATTRIBUTE, not {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    obj = importlib.import_module(module_name)
    for part in attribute.split("."):
        obj = getattr(obj, part)
    if isinstance(obj, Filesystem):
        return obj
    try:
        from .fs.synthetic import as_filesystem
    except ImportError:
        raise ValueError(f"{spec} is not a Filesystem (and ninep.fs.synthetic is missing)") from None
    return as_filesystem(obj)


def _host_export(path: str, read_only: bool, squash: tuple[int, int] | None, *,
                 statfs_passthru: bool = False, identity_inline: bool = False,
                 listing_cache: bool = True, identity: str | None = None,
                 mapped_owner: tuple[int, int] = (0, 0)) -> Export:
    from .fs.host import HostFilesystem

    fs = HostFilesystem(path, read_only=read_only, squash=squash, pass_statfs=statfs_passthru,
                        identity_inline=identity_inline, listing_cache=listing_cache,
                        identity=identity, mapped_owner=mapped_owner)
    return Export(fs, squash=Credentials(squash[0], squash[1]) if squash else None,
                  read_only=read_only)


def _cow_export(base: str, upper: str | None, throwaway: bool,
                squash: tuple[int, int] | None, identity: str | None) -> Export:
    from .fs.cow import CowFilesystem

    return Export(CowFilesystem(base, upper, throwaway=throwaway, identity=identity),
                  squash=Credentials(*squash) if squash else None)


def build_exports(args: argparse.Namespace, config: ServerConfig | None) -> dict[str, Export]:
    """--export / --synthetic become the default export; config exports follow."""
    squash = parse_squash(args.squash) if args.squash else None
    exports: dict[str, Export] = {}
    if args.synthetic:
        fs = load_synthetic(args.synthetic)
        # The server refuses changes for any backend, so --read-only covers trees too.
        exports[""] = Export(fs, squash=Credentials(*squash) if squash else None,
                             read_only=args.read_only)
    if args.export and (args.upper or args.throwaway_upper):
        name = "" if "" not in exports else args.export
        exports[name] = _cow_export(args.export, args.upper, args.throwaway_upper, squash,
                                     args.identity)
    elif args.export:
        name = "" if "" not in exports else args.export
        try:
            exports[name] = _host_export(args.export, args.read_only, squash,
                                         statfs_passthru=args.statfs_passthru,
                                         identity_inline=args.identity_inline,
                                         listing_cache=args.listing_cache,
                                         identity=args.identity,
                                         mapped_owner=parse_squash(args.mapped_owner, "--mapped-owner")
                                         if args.mapped_owner else (0, 0))
        except OSError as exc:
            raise ValueError(f"--export {args.export}: {exc.strerror or exc}") from None
    for item in config.exports if config else ():
        if item.name in exports:
            raise ValueError(f"export {item.name!r} is defined twice")
        if item.base is not None:
            exports[item.name] = _cow_export(item.base, item.upper, item.throwaway, item.squash,
                                          item.identity)
            continue
        try:
            exports[item.name] = _host_export(item.path, item.read_only, item.squash,
                                              statfs_passthru=item.statfs_passthru,
                                              identity_inline=item.identity_inline,
                                              listing_cache=item.listing_cache,
                                              identity=item.identity,
                                              mapped_owner=item.mapped_owner)
        except OSError as exc:  # the path is checked where it is opened: say which line
            raise ConfigError(f"{item.where}: exports.{item.name}.path: {item.path}: "
                              f"{exc.strerror or exc}") from None
    if not exports:
        raise ValueError("nothing to serve: give --export, --synthetic or --config")
    return exports


def build_limits(args: argparse.Namespace, config: ServerConfig | None) -> Limits:
    msize = parse_size(args.msize) if args.msize else (config.msize if config else None)
    return Limits(max_msize=msize or Limits().max_msize,
                  **{**(config.limits if config else {}), **parse_limits(args.limit)})


def build_server(args: argparse.Namespace, config: ServerConfig | None) -> Server:
    """The Server that serves these settings in this process (``--workers`` runs it in
    each worker: the supervisor hands this function and the settings over)."""
    poll_us = args.poll_us if args.poll_us is not None else (config.poll_us if config else None)
    if poll_us is not None and poll_us < 0:
        raise ValueError(f"--poll-us must be 0 or more, not {poll_us}")
    return Server(build_exports(args, config), limits=build_limits(args, config),
                  trace=args.trace, grace_period=args.grace,
                  poll_window=MAX_POLL_WINDOW if poll_us is None else poll_us / 1e6)


async def _run(server, urls: list[str], exports: dict[str, Export] | None = None) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, server, nursery.cancel_scope)
            async with trio.open_nursery() as serving:
                await serving.start(server.run, urls)
                _log_identities(exports or {})  # once serving: errors stay one line
            nursery.cancel_scope.cancel()  # served and shut down: stop watching signals


def _log_identities(exports: dict[str, Export]) -> None:
    for name, export in exports.items():
        identity = getattr(export.filesystem, "identity", None)
        if identity:
            log.info("export %s: identity %s", name or "(default)", identity)


async def _on_signals(signals, server, everything: trio.CancelScope) -> None:
    async for signum in signals:
        name = signal.Signals(signum).name
        if server.shutting_down:
            log.warning("second %s: stopping now", name)
            everything.cancel()
            return
        log.info("%s: shutting down (grace %gs)", name, server.grace_period)
        server.shutdown()


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s ninepd %(levelname)s %(message)s")
    if args.trace:
        logging.getLogger("ninep.trace").setLevel(logging.INFO)
    try:
        config = load_config(args.config) if args.config else None
    except ConfigError as exc:
        print(f"ninepd: {exc}", file=sys.stderr)
        return 2
    urls = args.listen or (config.listen if config and config.listen else [])
    if not urls:
        urls = ["systemd://"] if systemd_activated() else [DEFAULT_LISTEN]
    # Where each URL came from, for errors: a config's FILE:LINE, else the command line.
    origin = dict(zip(config.listen, config.listen_where)) if config and not args.listen else {}
    try:
        for url in urls:  # before the event loop: fd:// must not find trio's own fds
            check_url(url)
    except ListenError as exc:
        print(_listen_error(exc, origin), file=sys.stderr)
        return 2
    try:
        workers = (args.workers if args.workers is not None
                   else config.workers if config and config.workers else 1)
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        # With workers too: a bad export or size is reported here, once, with status 2.
        server = build_server(args, config)
        if workers > 1 and args.synthetic:
            raise ValueError("--workers > 1 serves host exports only, plain or copy-on-write: "
                             "a synthetic tree lives in one process")
    except ConfigError as exc:
        print(f"ninepd: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, AttributeError, TypeError) as exc:
        print(f"ninepd: {exc}", file=sys.stderr)
        return 2
    exports = server.exports
    if workers > 1:
        trio.run(_close_exports, server)  # the workers serve; each builds its own
        server = Supervisor(WorkerStart(build_server, (args, config), args.log_level.upper()),
                            workers, grace_period=args.grace)
    use_fd_limit()
    try:
        trio.run(_run, server, urls, exports)
    except BaseExceptionGroup as group:
        listen_errors, others = group.split(ListenError)
        if others is not None or listen_errors is None:
            raise
        for exc in _leaves(listen_errors):
            print(_listen_error(exc, origin), file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


def _listen_error(exc: ListenError, origin: dict[str, str]) -> str:
    where = origin.get(getattr(exc, "url", None) or "")
    return f"ninepd: {where}: listen: {exc}" if where else f"ninepd: {exc}"


def parse_limits(items: list[str]) -> dict[str, int]:
    """--limit NAME=N, ... -> {NAME: N}; ValueError names what is wrong."""
    limits: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or name not in LIMIT_NAMES:
            raise ValueError(f"--limit wants NAME=N with NAME one of {', '.join(LIMIT_NAMES)}, "
                             f"not {item!r}")
        limits[name] = parse_size(value)
    return limits


async def _close_exports(server: Server) -> None:
    for export in server.exports.values():
        await export.filesystem.aclose()


def _leaves(group: BaseExceptionGroup):
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def main_entry() -> None:
    sys.exit(main(sys.argv[1:]))


if __name__ == "__main__":
    # Run as ninep.cli, not __main__: workers get build_server pickled by reference,
    # and a fresh interpreter finds it only under its module's real name.
    importlib.import_module("ninep.cli").main_entry()
