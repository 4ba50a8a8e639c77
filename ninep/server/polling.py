"""How long a lone connection's reader polls for the next request before it sleeps.

Pure (no clock, no socket): the reader measures, this decides. The model is KVM's
halt-polling (``halt_poll_ns``): sleeping and being woken costs each round trip two
context switches and, in a VM, an IPI and a halt exit -- on the 2-core machines this
was measured on, ~20 µs of each ping-pong request's ~70 µs. A client that sends its
next request within microseconds of our reply (a VM root under KVM, a benchmark, a
`find` or `git status` in the guest) is better served by a reader that keeps polling
the socket for a short while. A client that thinks for longer (a guest under TCG,
~360 µs between requests; an idle one) must cost no polling at all.

So the window adapts to what the client does, as KVM's does:

* the request came while polling: the window was right, keep it;
* it came after the window but within ``max_window``: polling longer would have
  caught it, so the window grows (doubles, from ``start``);
* it came later than ``max_window``, or not at all: polling is waste for this
  client, so the window shrinks (halves, to 0 below ``start``).

Polling therefore burns at most about the client's own think time per request, and
only while that time is short. ``ninepd --poll-us 0`` (YAML ``poll_us: 0``) turns it off.
"""

from __future__ import annotations

#: Defaults, in seconds. ``MAX_WINDOW`` bounds what one request may cost in polling.
START_WINDOW = 0.000_010
MAX_WINDOW = 0.000_300


class PollWindow:
    """The current polling window of one connection's reader, in seconds."""

    __slots__ = ("window", "start", "max_window", "grown", "shrunk")

    def __init__(self, max_window: float = MAX_WINDOW, start: float = START_WINDOW) -> None:
        self.max_window = max_window
        self.start = min(start, max_window)
        self.window = 0.0
        self.grown = 0  # how often it grew and shrank: for tests and the trace
        self.shrunk = 0

    def polled(self) -> None:
        """The request came while polling."""

    def slept(self, waited: float | None) -> None:
        """The request came after the window, ``waited`` seconds after the reply was
        sent (None: it did not come within the sleep either)."""
        if waited is not None and waited <= self.max_window:
            if self.window < self.max_window:
                self.window = min(self.max_window, max(self.window * 2, self.start))
                self.grown += 1
        elif self.window:
            self.window = self.window / 2 if self.window / 2 >= self.start else 0.0
            self.shrunk += 1
