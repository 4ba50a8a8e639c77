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

from .config import ConfigError, ServerConfig, load_config, parse_size, parse_squash
from .fs.backend import Credentials, Filesystem
from .server import DEFAULT_LISTEN, Export, Limits, Server
from .server.listeners import ListenError, systemd_activated
from .server.workers import Supervisor, WorkerStart

log = logging.getLogger("ninepd")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ninepd", description="9P2000.L file server")
    p.add_argument("--export", metavar="PATH", help="host directory to serve (the default export)")
    p.add_argument("--listen", metavar="URL", action="append", default=[],
                   help=f"tcp://HOST:PORT, unix:///PATH, vsock://CID:PORT, fd://R,W, systemd:// "
                        f"(repeatable; default {DEFAULT_LISTEN})")
    p.add_argument("--read-only", action="store_true",
                   help="refuse every change to --export or --synthetic (EROFS)")
    p.add_argument("--squash", metavar="UID:GID", help="every attach to --export acts as UID:GID")
    p.add_argument("--statfs-passthru", action="store_true",
                   help="statfs of --export reports the host filesystem's type, not 9P's")
    p.add_argument("--identity-inline", action="store_true",
                   help="switch to a guest user's identity on the event loop, not in a worker "
                        "thread (~3x cheaper metadata operations; a slow one stalls every client)")
    p.add_argument("--no-listing-cache", dest="listing_cache", action="store_false",
                   help="never reuse a directory listing (for host filesystems that do not "
                        "update a directory's ctime when its entries change)")
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
                        "host exports only; locks hold across them)")
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
                 listing_cache: bool = True) -> Export:
    from .fs.host import HostFilesystem

    fs = HostFilesystem(path, read_only=read_only, squash=squash, pass_statfs=statfs_passthru,
                        identity_inline=identity_inline, listing_cache=listing_cache)
    return Export(fs, squash=Credentials(squash[0], squash[1]) if squash else None,
                  read_only=read_only)


def build_exports(args: argparse.Namespace, config: ServerConfig | None) -> dict[str, Export]:
    """--export / --synthetic become the default export; config exports follow."""
    squash = parse_squash(args.squash) if args.squash else None
    exports: dict[str, Export] = {}
    if args.synthetic:
        fs = load_synthetic(args.synthetic)
        # The server refuses changes for any backend, so --read-only covers trees too.
        exports[""] = Export(fs, squash=Credentials(*squash) if squash else None,
                             read_only=args.read_only)
    if args.export:
        name = "" if "" not in exports else args.export
        exports[name] = _host_export(args.export, args.read_only, squash,
                                     statfs_passthru=args.statfs_passthru,
                                     identity_inline=args.identity_inline,
                                     listing_cache=args.listing_cache)
    for item in config.exports if config else ():
        if item.name in exports:
            raise ValueError(f"export {item.name!r} is defined twice")
        exports[item.name] = _host_export(item.path, item.read_only, item.squash,
                                          statfs_passthru=item.statfs_passthru,
                                          identity_inline=item.identity_inline,
                                          listing_cache=item.listing_cache)
    if not exports:
        raise ValueError("nothing to serve: give --export, --synthetic or --config")
    return exports


def build_limits(args: argparse.Namespace, config: ServerConfig | None) -> Limits:
    msize = parse_size(args.msize) if args.msize else (config.msize if config else None)
    return Limits(max_msize=msize or Limits().max_msize,
                  max_fids=(config.max_fids if config and config.max_fids else 65536),
                  max_in_flight=(config.max_in_flight if config and config.max_in_flight else 256))


def build_server(args: argparse.Namespace, config: ServerConfig | None) -> Server:
    """The Server that serves these settings in this process (``--workers`` runs it in
    each worker: the supervisor hands this function and the settings over)."""
    return Server(build_exports(args, config), limits=build_limits(args, config),
                  trace=args.trace, grace_period=args.grace)


async def _run(server, urls: list[str]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_on_signals, signals, server, nursery.cancel_scope)
            await server.run(urls)
            nursery.cancel_scope.cancel()  # served and shut down: stop watching signals


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
        workers = (args.workers if args.workers is not None
                   else config.workers if config and config.workers else 1)
        if workers < 1:
            raise ValueError("--workers must be at least 1")
        if workers > 1 and args.synthetic:
            raise ValueError("--workers > 1 serves host exports only: a synthetic tree "
                             "lives in one process")
        # With workers too: a bad export or size is reported here, once, with status 2.
        server = build_server(args, config)
    except ConfigError as exc:
        print(f"ninepd: {exc}", file=sys.stderr)
        return 2
    except (ValueError, OSError, ImportError, AttributeError) as exc:
        print(f"ninepd: {exc}", file=sys.stderr)
        return 2
    urls = args.listen or (config.listen if config and config.listen else [])
    if not urls:
        urls = ["systemd://"] if systemd_activated() else [DEFAULT_LISTEN]
    if workers > 1:
        trio.run(_close_exports, server)  # the workers serve; each builds its own
        server = Supervisor(WorkerStart(build_server, (args, config), args.log_level.upper()),
                            workers, grace_period=args.grace)
    try:
        trio.run(_run, server, urls)
    except BaseExceptionGroup as group:
        listen_errors, others = group.split(ListenError)
        if others is not None or listen_errors is None:
            raise
        for exc in _leaves(listen_errors):
            print(f"ninepd: {exc}", file=sys.stderr)
        return 1
    log.info("stopped")
    return 0


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
