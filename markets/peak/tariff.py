"""A demand-charge tariff as plain data, and what it bills (pure; no Django).

Each billing period (a month starting on ``billing_day`` at 00:00 in the tariff's time zone) every charge bills
``price_per_kw`` x the highest demand among the period's demand intervals that start inside its time-of-use window.
A demand interval's demand is the mean net import over it (W), export counting as 0. Money is ``Decimal``: the
peak enters exactly in kW (W / 1000), the amount is rounded once, to the cent, half to even.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from zoneinfo import ZoneInfo

CENT = Decimal("0.01")


def cents(amount: Decimal) -> Decimal:
    return amount.quantize(CENT, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class ChargeSpec:
    charge_id: int
    name: str
    price_per_kw: Decimal
    weekdays: str = "0123456"  # local weekdays, Monday = 0
    window_start: time | None = None  # None with window_end None: every interval
    window_end: time | None = None

    def applies(self, local_start: datetime) -> bool:
        """Whether the demand interval starting at ``local_start`` (tariff time zone) is billed by this charge."""
        if str(local_start.weekday()) not in self.weekdays:
            return False
        if self.window_start is None or self.window_end is None:
            return True
        return self.window_start <= local_start.time() < self.window_end

    def amount(self, peak_w: int) -> Decimal:
        """Exact amount for a billed peak of ``peak_w`` W (not rounded)."""
        return self.price_per_kw * Decimal(max(peak_w, 0)) / Decimal(1000)


@dataclass(frozen=True, slots=True)
class TariffSpec:
    timezone: str
    interval_minutes: int
    billing_day: int
    charges: tuple[ChargeSpec, ...]
    currency: str = "USD"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def interval(self) -> timedelta:
        return timedelta(minutes=self.interval_minutes)

    def billing_period(self, at: datetime) -> tuple[datetime, datetime]:
        """The billing period containing ``at``, as UTC ``[start, end)``."""
        local = at.astimezone(self.zone)
        year, month = local.year, local.month
        if local.day < self.billing_day:
            year, month = (year - 1, 12) if month == 1 else (year, month - 1)
        start = datetime(year, month, self.billing_day, tzinfo=self.zone)
        ny, nm = (year + 1, 1) if month == 12 else (year, month + 1)
        end = datetime(ny, nm, self.billing_day, tzinfo=self.zone)
        return start.astimezone(UTC), end.astimezone(UTC)

    def intervals(self, start: datetime, end: datetime) -> list[datetime]:
        """Demand interval starts (UTC) in ``[start, end)``, aligned to the interval from ``start``."""
        out, t = [], start
        while t < end:
            out.append(t)
            t += self.interval
        return out

    def max_charge_price_at(self, at: datetime) -> Decimal:
        """Sum of the prices of the charges billing the interval starting at ``at`` (what a kW there costs at most)."""
        local = at.astimezone(self.zone)
        return sum((c.price_per_kw for c in self.charges if c.applies(local)), Decimal(0))


@dataclass(frozen=True, slots=True)
class BilledPeak:
    charge: ChargeSpec
    peak_w: int
    at: datetime | None  # start of the (first) interval that set it; None if no interval of the window

    @property
    def exact(self) -> Decimal:
        return self.charge.amount(self.peak_w)

    @property
    def amount(self) -> Decimal:
        return cents(self.exact)


def billed_peaks(tariff: TariffSpec, demand_w: Mapping[datetime, int]) -> list[BilledPeak]:
    """Per charge, the highest demand (W, >= 0) among the intervals in its window; the earliest wins a tie."""
    out = []
    for charge in tariff.charges:
        best: tuple[int, datetime | None] = (0, None)
        for start in sorted(demand_w):
            if not charge.applies(start.astimezone(tariff.zone)):
                continue
            w = max(int(demand_w[start]), 0)
            if best[1] is None or w > best[0]:
                best = (w, start)
        out.append(BilledPeak(charge, best[0], best[1]))
    return out


def peak_so_far(tariff: TariffSpec, demand_w: Iterable[tuple[datetime, int]], *, at: datetime) -> int:
    """The highest demand of the billing period containing ``at`` before it, in any charge's window: shaving below
    it avoids nothing this period (the bill already holds it)."""
    start, _ = tariff.billing_period(at)
    best = 0
    for t, w in demand_w:
        if start <= t < at and any(c.applies(t.astimezone(tariff.zone)) for c in tariff.charges):
            best = max(best, int(w))
    return best
