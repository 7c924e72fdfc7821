"""The demand charge avoided over one billing period (pure; no Django).

Per demand interval: metered demand (the site meter's mean import), the fleet's discharge at the site over the same
interval (its charge points' export energy / interval), and the counterfactual without the fleet = metered +
discharge. Per charge of the tariff: the billed peak of each series, its amount rounded to the cent, and
avoided = counterfactual amount - metered amount, so the lines add up to the totals exactly.

Only the fleet's discharge is added back: the cars' charging happened with or without the service (it is in both
series), so the avoided charge credits what the batteries gave the site and nothing else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from markets.peak.tariff import BilledPeak, TariffSpec, billed_peaks


@dataclass(frozen=True, slots=True)
class IntervalDemand:
    start: datetime
    metered_w: int  # mean net import, W
    fleet_discharge_w: int  # mean discharge of the fleet's charge points at the site, W (>= 0)

    @property
    def counterfactual_w(self) -> int:
        return self.metered_w + max(self.fleet_discharge_w, 0)


@dataclass(frozen=True, slots=True)
class ChargeLine:
    metered: BilledPeak
    counterfactual: BilledPeak

    @property
    def avoided(self) -> Decimal:
        return self.counterfactual.amount - self.metered.amount


@dataclass(frozen=True, slots=True)
class PeakPeriodSettlement:
    lines: list[ChargeLine]

    @property
    def metered_charge(self) -> Decimal:
        return sum((line.metered.amount for line in self.lines), Decimal(0))

    @property
    def counterfactual_charge(self) -> Decimal:
        return sum((line.counterfactual.amount for line in self.lines), Decimal(0))

    @property
    def avoided(self) -> Decimal:
        return sum((line.avoided for line in self.lines), Decimal(0))


def settle_peak_period(*, tariff: TariffSpec, intervals: Sequence[IntervalDemand]) -> PeakPeriodSettlement:
    metered = billed_peaks(tariff, {i.start: i.metered_w for i in intervals})
    counterfactual = billed_peaks(tariff, {i.start: i.counterfactual_w for i in intervals})
    return PeakPeriodSettlement([ChargeLine(m, c) for m, c in zip(metered, counterfactual, strict=True)])
