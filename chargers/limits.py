"""In-memory limits of one server process (issue 14): a token bucket per station connection, and counters of
failures per key (station id, client address) that refuse further attempts for the rest of a window.

Per process on purpose: they protect this process's CPU and database connections from a flood at once, with no
query or Redis round trip per frame or handshake; a fleet of N processes admits at most N times the limit.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBucket:
    """``rate`` tokens a second, at most ``burst`` saved; each frame takes one."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, *, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.tokens = float(burst)
        self.stamp = now

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class FailureCounter:
    """Failures per key within a fixed window that starts at a key's first failure.

    At most ``max_keys`` keys are kept (the least recently failed dropped first), so made-up station ids or
    addresses cannot grow it without bound.
    """

    def __init__(self, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_keys = max_keys
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, int]] = OrderedDict()  # key -> (window start, failures)

    def count(self, key: str, *, window_s: float) -> int:
        """Failures of ``key`` in its current window (0 once the window has passed)."""
        entry = self._entries.get(key)
        if entry is None or self.clock() - entry[0] >= window_s:
            return 0
        return entry[1]

    def seconds_left(self, key: str, *, window_s: float) -> float:
        """Seconds until ``key``'s current window ends and its failures are forgotten (0 without a window)."""
        entry = self._entries.get(key)
        if entry is None:
            return 0.0
        return max(0.0, window_s - (self.clock() - entry[0]))

    def failed(self, key: str, *, window_s: float) -> int:
        """Count one failure of ``key``; returns its failures in the current window, this one included."""
        now = self.clock()
        entry = self._entries.get(key)
        if entry is None or now - entry[0] >= window_s:
            entry = (now, 0)
        entry = (entry[0], entry[1] + 1)
        self._entries[key] = entry
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_keys:
            self._entries.popitem(last=False)
        return entry[1]

    def forget(self, key: str) -> None:
        self._entries.pop(key, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
