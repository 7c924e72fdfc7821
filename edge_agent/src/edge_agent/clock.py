"""Clocks. Every timed decision (trips, fail-safe, ramps) reads one of these, so tests can drive time by hand."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never goes backwards."""
        ...

    def wall(self) -> datetime:
        """Current UTC time (for OCPP timestamps)."""
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        return time.monotonic()

    def wall(self) -> datetime:
        return datetime.now(UTC)


class SimClock:
    """A clock that only moves when told to. ``wall()`` follows ``monotonic()`` from a fixed UTC origin."""

    def __init__(self, start: datetime | None = None, t0: float = 0.0) -> None:
        self._t = t0
        self._t0 = t0
        self._start = start or datetime(2025, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._t

    def wall(self) -> datetime:
        return self._start + timedelta(seconds=self._t - self._t0)

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("a clock never goes backwards")
        self._t += seconds
        return self._t


def iso(ts: datetime) -> str:
    """OCPP date-time: UTC with millisecond precision and a Z suffix."""
    return ts.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
