"""Bound what one client can make the server write to its log.

A client that sends 50,000 malformed requests must not write 50,000 lines: that fills a
host's disk or journal at line rate. Each connection keeps one ``LogLimiter``; every cause
(a short key such as "malformed request") may log ``burst`` lines verbatim per window, the
rest are counted, and the first line after the window says how many were dropped.
Pure: the caller passes the clock, so the tables in the tests need no sleeping."""

from __future__ import annotations

from dataclasses import dataclass, field

WINDOW_SECONDS = 60.0
BURST = 3  # lines per cause per window that are written as they are


@dataclass
class _Cause:
    window_start: float
    written: int = 0
    dropped: int = 0


@dataclass
class LogLimiter:
    """``admit(cause, now)`` says whether to write this line; ``summary`` what was dropped."""

    window: float = WINDOW_SECONDS
    burst: int = BURST
    _causes: dict[str, _Cause] = field(default_factory=dict)

    def admit(self, cause: str, now: float) -> tuple[bool, int]:
        """(write this line?, how many lines of this cause were dropped before it).

        The dropped count is non-zero only once per window, on the first line written
        after the window in which they were dropped: that line carries the summary."""
        state = self._causes.get(cause)
        if state is None:
            state = self._causes[cause] = _Cause(now)
        dropped = 0
        if now - state.window_start >= self.window:
            dropped, state.window_start, state.written, state.dropped = state.dropped, now, 0, 0
        if state.written < self.burst:
            state.written += 1
            return True, dropped
        state.dropped += 1
        return False, 0

    def pending(self) -> dict[str, int]:
        """Lines dropped and not yet summarised, per cause (for the connection's last words)."""
        return {cause: s.dropped for cause, s in self._causes.items() if s.dropped}
