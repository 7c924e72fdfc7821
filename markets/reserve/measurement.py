"""Synchronized reserve event performance from metered fleet power. Pure numpy, no Django.

PJM (Manual 11, synchronized reserve events): a Tier 2 resource must reach its assigned MW within 10 minutes of
the event start and hold it until the event ends. Its response is measured against its output at the event start.
Here, on the 10-s rows the regulation scoring uses (power in force at each row, ``markets.regulation.scoring``):

* baseline = fleet power (W, + charging) in force at the event start (row 0);
* response at 10 minutes = baseline - fleet power at start + 600 s (for an event shorter than 10 minutes: at its
  last row, the event asked for nothing longer);
* sustained = mean of (baseline - fleet power) over the rows from 10 minutes to the end (events over 10 minutes);
* credited = min(response at 10 minutes, sustained, assigned), never below 0; shortfall = assigned - credited.

The minimum of the two is what "reached within 10 minutes *and held*" means in numbers: a fleet that reaches the
MW late, or drops it before the end, is credited the lower figure.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

ROW_S = 10.0
RESPONSE_S = 600.0  # PJM: full response within 10 minutes


@dataclass(frozen=True, slots=True)
class EventResponse:
    assigned_w: int
    baseline_w: int
    response_10min_w: int
    sustained_w: int | None  # None: the event ended at or before 10 minutes

    @property
    def credited_w(self) -> int:
        held = self.response_10min_w if self.sustained_w is None else min(self.response_10min_w, self.sustained_w)
        return max(0, min(held, self.assigned_w))

    @property
    def shortfall_w(self) -> int:
        return self.assigned_w - self.credited_w


def event_rows(duration_s: float) -> int:
    """10-s rows inside the event, the start row included (row k is at k x 10 s; the last is before the end)."""
    return max(int(np.ceil(duration_s / ROW_S)), 1)


def event_response(
    power_w: ArrayLike, *, duration_s: float, assigned_w: int, baseline_w: float | None = None
) -> EventResponse:
    """Measure an event from the fleet power on its 10-s rows (row 0 = the start; see the module docstring).

    ``power_w`` must hold at least :func:`event_rows` rows. ``baseline_w``: the power the response is measured
    against when it is not row 0's (a later part of one utility event keeps the event's first baseline: its own
    start already carries the fleet's response).
    """
    power = np.asarray(power_w, dtype=float)
    rows = event_rows(duration_s)
    if power.ndim != 1 or power.size < rows:
        raise ValueError(f"an event of {duration_s:g} s needs {rows} rows of fleet power, got {power.size}")
    baseline = float(power[0]) if baseline_w is None else float(baseline_w)
    response = baseline - power[:rows]
    at_10 = int(RESPONSE_S // ROW_S)
    if duration_s <= RESPONSE_S:
        return EventResponse(assigned_w, round(baseline), round(float(response[rows - 1])), None)
    sustained = round(float(response[at_10:].mean()))
    return EventResponse(assigned_w, round(baseline), round(float(response[at_10])), sustained)
