"""PJM's retroactive penalty for a synchronized reserve shortfall. Pure ``Decimal``, no Django.

PJM (Manual 28, "Synchronized Reserve Accounting"; Manual 11): a Tier 2 resource that does not deliver its
assigned reserve in an event is charged the shortfall MW x SRMCP for every hour it was cleared over a look-back:
the lesser of the average number of days between synchronized reserve events and the number of days since it last
fell short. (That is the "Tier 2 Retroactive Penalty Charge" of PJM's reserve summary,
``markets/data/pjm-synchronized-reserve-2017-07.csv``.) Here, for one event::

    penalty = sum over cleared hours h in [event start - look-back, event start]:
                  min(shortfall MW, cleared MW in h) x hours of h in the window x SRMCP(h)

The event's own hour is included (it was cleared and not delivered); the penalty never exceeds what those hours
were cleared for. Exact ``Decimal``; the caller rounds once, to the cent, half to even.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

W_PER_MW = Decimal(1_000_000)
SECONDS_PER_HOUR = Decimal(3600)


@dataclass(frozen=True, slots=True)
class ClearedInterval:
    """One award of reserve capacity: ``cleared_w`` over ``[start, end)`` at ``price`` ($/MW-h, the SRMCP)."""

    ref: int  # award id
    start: datetime
    end: datetime
    cleared_w: int
    price: Decimal


@dataclass(frozen=True, slots=True)
class PenaltyHour:
    ref: int
    start: datetime
    cleared_w: int
    penalised_w: int
    hours: Decimal
    price: Decimal
    amount: Decimal  # exact


def lookback(*, average_days_between_events: Decimal, since_last_shortfall: timedelta | None) -> timedelta:
    """The lesser of PJM's average time between events and the time since the resource last fell short."""
    average = timedelta(seconds=float(average_days_between_events * 86_400))
    return average if since_last_shortfall is None else min(average, since_last_shortfall)


def retroactive_penalty(
    *, shortfall_w: int, event_start: datetime, window: timedelta, cleared: Sequence[ClearedInterval]
) -> tuple[Decimal, list[PenaltyHour]]:
    """The exact penalty of a ``shortfall_w`` event and the cleared intervals it was charged on (module docstring)."""
    if shortfall_w < 0:
        raise ValueError("a shortfall is a magnitude (>= 0 W)")
    total, used = Decimal(0), []
    first = event_start - window
    left: dict[datetime, int] = {}  # shortfall not yet charged per interval start: two awards of one hour share it
    for interval in sorted(cleared, key=lambda c: (c.start, c.ref)):
        start, end = max(interval.start, first), interval.end
        if shortfall_w == 0 or interval.cleared_w <= 0 or end <= start or interval.start > event_start:
            continue
        hours = Decimal(int((end - start).total_seconds())) / SECONDS_PER_HOUR
        penalised = min(left.get(interval.start, shortfall_w), interval.cleared_w)
        left[interval.start] = left.get(interval.start, shortfall_w) - penalised
        if penalised <= 0:
            continue
        amount = Decimal(penalised) / W_PER_MW * hours * interval.price
        total += amount
        used.append(PenaltyHour(interval.ref, start, interval.cleared_w, penalised, hours, interval.price, amount))
    return total, used
