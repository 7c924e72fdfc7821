"""Price and site-load beliefs: the PJM synchronized-reserve report and the generic price CSV, the hour-of-day
forecast from price history, and a depot's site-meter load. Imports are all-or-nothing and idempotent."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import TextIO
from zoneinfo import ZoneInfo

from django.db import transaction
from django.utils import timezone

from markets.models import PricePoint, Product, SiteLoadPoint, Source
from markets.services.bids import CsvImportError, MarketError


@dataclass(frozen=True, slots=True)
class ImportResult:
    read: int
    created: int
    skipped_existing: int


def prices_import_pjm_sr(
    *,
    product: Product,
    stream: TextIO,
    source_ref: str,
    subzone: str | None = None,
    belief_time: datetime | None = None,
) -> ImportResult:
    """Import a PJM "Synchronized Reserve Summary" report (two title lines, a header, one row per hour and
    subzone; ``GMT Hour Ending`` as ``MM/DD/YYYY HH``; ``SRMCP ($/MWh)``) as cleared prices.

    Belief time: the report creation timestamp on line 2 (EPT) unless given. All-or-nothing: a bad row stops the
    import with its line number. Re-importing the same file creates nothing new.
    """
    lines = stream.read().splitlines()
    if len(lines) < 4 or "Synchronized Reserve" not in lines[0]:
        raise CsvImportError("not a PJM synchronized reserve summary (first line should name it)")
    if belief_time is None:
        belief_time = _pjm_report_time(lines[1])
    reader = csv.DictReader(lines[2:])
    needed = {"GMT Hour Ending", "SRMCP ($/MWh)", "Subzone"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    points = []
    for n, row in enumerate(reader, start=4):
        if not row.get("GMT Hour Ending") or row.get("Subzone") is None:
            if row.get("EPT Hour Ending", "").startswith("End of Report"):
                break
            raise CsvImportError(f"line {n}: missing hour or subzone")
        if subzone is not None and row["Subzone"] != subzone:
            continue
        try:
            hour_ending = datetime.strptime(row["GMT Hour Ending"].strip(), "%m/%d/%Y %H").replace(tzinfo=UTC)
            price = Decimal(row["SRMCP ($/MWh)"].strip())
        except (ValueError, InvalidOperation) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        points.append(
            PricePoint(
                product=product,
                location=row["Subzone"].strip(),
                interval_start=hour_ending - timedelta(hours=1),
                interval_minutes=60,
                price=price,
                kind=PricePoint.Kind.CLEARED,
                source=Source.CSV,
                source_ref=source_ref,
                belief_time=belief_time,
            )
        )
    return _store_prices(points)


def _pjm_report_time(line: str) -> datetime:
    try:
        stamp = next(cell for cell in next(csv.reader([line])) if "/" in cell and ":" in cell).strip()
        local = datetime.strptime(stamp, "%m/%d/%Y %I:%M:%S %p")
    except (StopIteration, ValueError):
        raise CsvImportError("line 2: no report creation timestamp; pass --belief-time") from None
    return local.replace(tzinfo=ZoneInfo("America/New_York")).astimezone(UTC)


def prices_import_csv(
    *, product: Product, stream: TextIO, source_ref: str, kind: str, belief_time: datetime | None = None
) -> ImportResult:
    """Import the generic price format: header ``interval_start,interval_minutes,price[,location][,belief_time]``;
    ISO-8601 times with an offset; ``price`` in the operator's unit. ``belief_time`` per row, else the argument,
    else now. All-or-nothing, idempotent."""
    reader = csv.DictReader(stream)
    needed = {"interval_start", "interval_minutes", "price"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    default_belief = belief_time or timezone.now()
    points = []
    for n, row in enumerate(reader, start=2):
        try:
            start = _aware(row["interval_start"])
            minutes = int(row["interval_minutes"])
            price = Decimal(row["price"])
            belief = _aware(row["belief_time"]) if row.get("belief_time") else default_belief
        except (ValueError, InvalidOperation, TypeError) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        if minutes <= 0:
            raise CsvImportError(f"line {n}: interval_minutes must be > 0")
        points.append(
            PricePoint(
                product=product,
                location=(row.get("location") or "").strip(),
                interval_start=start,
                interval_minutes=minutes,
                price=price,
                kind=kind,
                source=Source.CSV,
                source_ref=source_ref,
                belief_time=belief,
            )
        )
    return _store_prices(points)


def _aware(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset")
    return value.astimezone(UTC)


def _store_prices(points: Sequence[PricePoint]) -> ImportResult:
    with transaction.atomic():
        before = PricePoint.objects.count()
        PricePoint.objects.bulk_create(points, ignore_conflicts=True, batch_size=1000)
        created = PricePoint.objects.count() - before
    return ImportResult(read=len(points), created=created, skipped_existing=len(points) - created)


def price_forecast_from_history(
    *, product: Product, day_start: datetime, lookback_days: int = 28, location: str | None = None
) -> int:
    """Forecast ``product``'s prices for the 24 h from ``day_start``: per hour of day, the mean of the cleared
    prices over the ``lookback_days`` before the latest history known now (a "same hour, recent days" profile).
    Stored as new forecast beliefs (source ``forecast``, known now). Returns the number of intervals forecast."""
    cleared = PricePoint.objects.filter(product=product, kind=PricePoint.Kind.CLEARED)
    if location is not None:
        cleared = cleared.filter(location=location)
    last = cleared.order_by("-interval_start").values_list("interval_start", flat=True).first()
    if last is None:
        raise MarketError(f"no cleared prices for {product} to forecast from")
    by_hour: dict[int, list[Decimal]] = {}
    for start, price in cleared.filter(interval_start__gt=last - timedelta(days=lookback_days)).values_list(
        "interval_start", "price"
    ):
        by_hour.setdefault(start.hour, []).append(price)
    now = timezone.now()
    minutes = product.operator.interval_minutes
    points = []
    for k in range(24 * 60 // minutes):
        start = day_start + timedelta(minutes=minutes * k)
        history = by_hour.get(start.hour)
        if not history:
            continue
        points.append(
            PricePoint(
                product=product,
                location=location or "",
                interval_start=start,
                interval_minutes=minutes,
                price=(sum(history, Decimal(0)) / len(history)).quantize(Decimal("0.0001")),
                kind=PricePoint.Kind.FORECAST,
                source=Source.FORECAST,
                source_ref=f"hour-of-day mean of {lookback_days} days to {last:%Y-%m-%d}",
                belief_time=now,
            )
        )
    return _store_prices(points).created


def site_load_record(*, site_id: int, points: Sequence[tuple[datetime, int, int]], source: str, source_ref: str) -> int:
    """Store site-meter load beliefs ``(interval_start, minutes, load_w)`` known now."""
    now = timezone.now()
    rows = [
        SiteLoadPoint(
            site_id=site_id,
            interval_start=s,
            interval_minutes=m,
            load_w=w,
            source=source,
            source_ref=source_ref,
            belief_time=now,
        )
        for s, m, w in points
    ]
    SiteLoadPoint.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def site_load_import_csv(*, site_id: int, stream: TextIO, source_ref: str) -> int:
    """Import a depot's site-meter load (peak shaving plans against it): header
    ``interval_start,interval_minutes,load_w``, ISO-8601 times with an offset, load in W without the fleet.
    All-or-nothing: a bad line refuses the file, naming the line."""
    reader = csv.DictReader(stream)
    needed = {"interval_start", "interval_minutes", "load_w"}
    if not needed <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {sorted(needed)}")
    points = []
    for n, row in enumerate(reader, start=2):
        try:
            point = (_aware(row["interval_start"]), int(row["interval_minutes"]), int(row["load_w"]))
        except (ValueError, TypeError) as exc:
            raise CsvImportError(f"line {n}: {exc}") from None
        if point[1] <= 0:
            raise CsvImportError(f"line {n}: interval_minutes must be > 0")
        points.append(point)
    return site_load_record(site_id=site_id, points=points, source=Source.CSV, source_ref=source_ref)
