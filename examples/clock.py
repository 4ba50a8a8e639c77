"""A clock and an event feed for ``cat`` in a guest; Ctrl-C there cancels the read.

    python examples/clock.py --listen tcp://127.0.0.1:5640
    # in the guest (cache=none: these files have no size, like procfs):
    mount -t 9p -o trans=tcp,port=5640,cache=none 10.0.2.2 /mnt/clock
    cat /mnt/clock/time        # a line a second until Ctrl-C (the kernel sends Tflush)
    cat /mnt/clock/events &    # every line written to ctl, plus a "tick" each minute
    echo hello > /mnt/clock/ctl
    cat /mnt/clock/now         # one line: the time when opened

``time`` pulls: each read sleeps until the next whole interval, so nothing runs while
nobody reads. ``events`` pushes: a Feed fans every published line out to every open.
"""

from __future__ import annotations

import argparse
import time

import trio

import ninep
from ninep.fs.synthetic import ControlFile, Directory, Feed, GeneratedFile, StreamFile


def stamp() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def make_clock(interval: float = 1.0) -> tuple[Directory, Feed]:
    events = Feed(backlog=1024, history=10)

    async def next_tick() -> str:
        await trio.sleep(interval - time.time() % interval)  # wake on the boundary
        return f"{stamp()}\n"

    def post(data: bytes) -> None:
        events.publish(data if data.endswith(b"\n") else data + b"\n")

    tree = Directory({
        "time": StreamFile(next_tick),
        "now": GeneratedFile(lambda: f"{stamp()}\n"),
        "events": StreamFile(events),
        "ctl": ControlFile(on_write=post, mode=0o222),
    })
    return tree, events


async def tick_events(events: Feed, every: float) -> None:
    """Publish a "tick" every ``every`` seconds (runs beside the server)."""
    count = 0
    while True:
        await trio.sleep(every)
        count += 1
        events.publish(f"tick {count} {stamp()}\n")


async def main(listen: str, tick_every: float = 60.0) -> None:
    tree, events = make_clock()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(tick_events, events, tick_every)
        await nursery.start(ninep.serve, tree, listen)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="tcp://127.0.0.1:5640")
    parser.add_argument("--tick-every", type=float, default=60.0, help="seconds between event ticks")
    arguments = parser.parse_args()
    try:
        trio.run(main, arguments.listen, arguments.tick_every)
    except* KeyboardInterrupt:  # Ctrl-C on the server: stop quietly
        pass
