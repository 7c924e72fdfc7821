"""Site load forecasts from history (pure; no Django). Pluggable: anything with ``name`` and ``forecast``.

The history is the site's load *without the fleet* (metered import minus the fleet's net power at the site) per
interval start; the optimiser adds the fleet's own operating point on top.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


class LoadForecaster(Protocol):
    @property
    def name(self) -> str: ...

    def forecast(self, history: Mapping[datetime, float], starts: Sequence[datetime]) -> list[float | None]:
        """One value per interval start (W), or None where history says nothing."""
        ...


@dataclass(frozen=True, slots=True)
class SameTimeOfWeek:
    """Mean of the same weekday and time of day over the last ``weeks`` weeks that have data; where none has, the
    same time of day over the last ``days`` days (a young meter's first week). Depot load follows the working week
    (shifts, loading bays, refrigeration), so the weekday profile is what an energy manager would check first."""

    weeks: int = 4
    days: int = 7

    @property
    def name(self) -> str:
        return f"same-time-of-week mean of {self.weeks} weeks (else same time of day, {self.days} days)"

    def forecast(self, history: Mapping[datetime, float], starts: Sequence[datetime]) -> list[float | None]:
        out: list[float | None] = []
        for t in starts:
            weekly = [
                history[t - timedelta(weeks=k)] for k in range(1, self.weeks + 1) if t - timedelta(weeks=k) in history
            ]
            if not weekly:
                weekly = [
                    history[t - timedelta(days=k)] for k in range(1, self.days + 1) if t - timedelta(days=k) in history
                ]
            out.append(sum(weekly) / len(weekly) if weekly else None)
        return out
