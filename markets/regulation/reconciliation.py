"""Reconciliation: settled energy against the meters' own energy registers, per charge point (within 0.1 %)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
from django.db.models import QuerySet

from markets.regulation.metering import Reconciliation
from markets.regulation.models import (
    SettlementLine,
)
from markets.regulation.selectors import (
    POWER_MAX_AGE_S,
    MeterSeries,
    charge_point_registers,
)
from markets.regulation.services import utc_instant


@dataclass(frozen=True)
class ReconciliationRow:
    station_pk: int
    station_id: str
    evse_id: int
    settled_import_wh: int
    settled_export_wh: int
    import_check: Reconciliation
    export_check: Reconciliation

    @property
    def agrees(self) -> bool:
        return self.import_check.agrees and self.export_check.agrees


def _register_delta(series: MeterSeries, start: datetime, end: datetime) -> tuple[int, int] | None:
    """Register deltas over ``[start, end)``, interpolated linearly at both ends from the bracketing readings."""
    t = series.times_s
    if t.size < 2 or t[0] > start.timestamp() or t[-1] < end.timestamp():
        return None
    at = np.array([start.timestamp(), end.timestamp()])
    imp = np.interp(at, t, series.values)
    exp = np.interp(at, t, series.second)
    return round(imp[1] - imp[0]), round(exp[1] - exp[0])


def reconciliation_report(
    *, start: datetime, end: datetime, lines: QuerySet[SettlementLine] | None = None
) -> list[ReconciliationRow]:
    """Per charge point: energy settled in the periods settled within ``[start, end)`` against its meter
    registers' deltas over those same periods.

    Settled energy is what the settlement lines hold (integrated from power readings); the registers are the
    meter's own energy counters, interpolated linearly at each settled period's start and end. Each period counts
    once per charge point, however many awards it was settled under. Each direction agrees within 0.1 % (or 1 Wh).
    A period whose register readings do not bracket it counts a register delta of 0, so it shows as disagreeing.
    ``lines``: the settlement lines to check (default every one: the market-wide report; the pages pass the user's,
    :func:`markets.regulation.selectors.settlement_lines_for`, so an organisation sees its own charge points only).
    """
    start, end = utc_instant(start, "start"), utc_instant(end, "end")
    lines = (SettlementLine.objects.all() if lines is None else lines).filter(
        settlement__period_start__gte=start, settlement__period_end__lte=end
    )
    settled: dict[tuple[int, int], list[int]] = {}
    periods: dict[tuple[int, int], set[tuple[datetime, datetime]]] = {}
    names: dict[tuple[int, int], str] = {}
    for station_pk, station_id, evse_id, imp, exp, p_start, p_end in lines.values_list(
        "station_id",
        "station__station_id",
        "evse_id",
        "import_wh",
        "export_wh",
        "settlement__period_start",
        "settlement__period_end",
    ):
        cp = (station_pk, evse_id)
        totals = settled.setdefault(cp, [0, 0])
        totals[0] += imp
        totals[1] += exp
        periods.setdefault(cp, set()).add((p_start, p_end))
        names[cp] = station_id
    margin = timedelta(seconds=POWER_MAX_AGE_S)
    registers = charge_point_registers(start=start - margin, end=end + margin, stations={cp[0] for cp in settled})
    rows = []
    for cp, (imp, exp) in sorted(settled.items()):
        reg_imp = reg_exp = 0
        series = registers.get(cp)
        for p_start, p_end in sorted(periods[cp]):
            delta = _register_delta(series, p_start, p_end) if series is not None else None
            if delta is not None:
                reg_imp, reg_exp = reg_imp + delta[0], reg_exp + delta[1]
        rows.append(
            ReconciliationRow(
                station_pk=cp[0],
                station_id=names[cp],
                evse_id=cp[1],
                settled_import_wh=imp,
                settled_export_wh=exp,
                import_check=Reconciliation(imp, reg_imp),
                export_check=Reconciliation(exp, reg_exp),
            )
        )
    return rows
