"""What the fleet did, from stored meter values: the numbers reports send to utilities.

Power is integer W, energy integer (Wh; W·s for periods of seconds), + = import (charging), as the meters report
it; a reading holds at most ``POWER_MAX_AGE_S`` (the settlement's rule), retransmitted readings count once
(``markets.regulation.selectors.charge_point_power``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np

from markets.regulation.metering import cumulative_energy_wh
from markets.regulation.selectors import charge_point_power, portfolio_stations

POWER_MAX_AGE_S = 60.0
ONE_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class Metered:
    """Mean net power over ``[start, end)`` of a portfolio's charge points, and what it was computed from.

    Energy is integer: watt-seconds (J) as integrated, exact enough for a report period of a second, and whole Wh
    as the basis states it."""

    start: datetime
    end: datetime
    import_ws: int
    export_ws: int
    readings: int
    charge_points: int
    digest: str  # SHA-256 of the meter value ids used (an auditor recomputes it)

    @property
    def import_wh(self) -> int:
        return round(self.import_ws / 3600)

    @property
    def export_wh(self) -> int:
        return round(self.export_ws / 3600)

    @property
    def mean_power_w(self) -> int:
        seconds = (self.end - self.start).total_seconds()
        return round((self.import_ws - self.export_ws) / seconds) if seconds > 0 else 0

    def basis(self) -> dict[str, object]:
        return {
            "import_wh": self.import_wh,
            "export_wh": self.export_wh,
            "import_ws": self.import_ws,
            "export_ws": self.export_ws,
            "readings": self.readings,
            "charge_points": self.charge_points,
            "meter_values_sha256": self.digest,
        }


def portfolio_metered(*, portfolio: str, start: datetime, end: datetime) -> Metered:
    """Energy in and out of the portfolio's charge points over ``[start, end)``, integrated from power readings
    (the reading in force at ``start`` looked back for), to the watt-second."""
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
    return Metered(start, end, round(imported * 3600), round(exported * 3600), readings, len(series), digest)


def portfolio_power_at(*, portfolio: str, at: datetime) -> tuple[int, int]:
    """The portfolio's metered power (W, + import) in force at ``at``, and the readings it came from: each charge
    point's newest deduplicated reading at or before ``at``, no older than ``POWER_MAX_AGE_S`` (else it counts 0),
    over the charge points :func:`portfolio_metered` reads. A report's baseline: what the fleet drew before
    dispatch moved it (the reserve rule: output at the event start)."""
    moment = at.timestamp()
    stations = portfolio_stations(portfolio=portfolio, start=at, end=at + ONE_MICROSECOND)
    total, readings = 0.0, 0
    for s in charge_point_power(start=at, end=at + ONE_MICROSECOND, stations=stations):
        before = np.flatnonzero(s.times_s <= moment)
        if before.size and moment - s.times_s[before[-1]] <= POWER_MAX_AGE_S:
            total += float(s.values[before[-1]])
            readings += 1
    return round(total), readings
