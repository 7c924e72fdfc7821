"""What the fleet did, from stored meter values: the numbers reports send to utilities.

Power is integer W, + = import (charging), as the meters report it; a reading holds at most ``POWER_MAX_AGE_S``
(the settlement's rule), retransmitted readings count once (``markets.regulation.selectors.charge_point_power``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from markets.regulation.metering import cumulative_energy_wh
from markets.regulation.selectors import charge_point_power, portfolio_stations

POWER_MAX_AGE_S = 60.0


@dataclass(frozen=True, slots=True)
class Metered:
    """Mean net power over ``[start, end)`` of a portfolio's charge points, and what it was computed from."""

    start: datetime
    end: datetime
    import_wh: float
    export_wh: float
    readings: int
    charge_points: int
    digest: str  # SHA-256 of the meter value ids used (an auditor recomputes it)

    @property
    def mean_power_w(self) -> int:
        seconds = (self.end - self.start).total_seconds()
        return round((self.import_wh - self.export_wh) * 3600.0 / seconds) if seconds > 0 else 0

    def basis(self) -> dict[str, object]:
        return {
            "import_wh": round(self.import_wh, 3),
            "export_wh": round(self.export_wh, 3),
            "readings": self.readings,
            "charge_points": self.charge_points,
            "meter_values_sha256": self.digest,
        }


def portfolio_metered(*, portfolio: str, start: datetime, end: datetime) -> Metered:
    """Energy in and out of the portfolio's charge points over ``[start, end)``, integrated from power readings
    (the reading in force at ``start`` looked back for). Not rounded to whole Wh: a report's period may be seconds."""
    stations = portfolio_stations(portfolio=portfolio, start=start, end=end)
    series = charge_point_power(start=start, end=end, stations=stations)
    edges = np.array([start.timestamp(), end.timestamp()])
    imported = exported = 0.0
    readings = 0
    ids: list[int] = []
    for s in series:
        if s.times_s.size == 0:
            continue
        inn, out = cumulative_energy_wh(s.times_s, s.values, edges, max_hold_s=POWER_MAX_AGE_S)
        imported += float(inn[1] - inn[0])
        exported += float(out[1] - out[0])
        readings += len(s.meter_ids)
        ids.extend(s.meter_ids)
    digest = hashlib.sha256(",".join(map(str, sorted(ids))).encode()).hexdigest()
    return Metered(start, end, imported, exported, readings, len(series), digest)
