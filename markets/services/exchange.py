"""CSV exchange with real markets: the bids to submit out (:func:`bids_export_csv`), the awards back in
(:func:`awards_import_csv`), in the formats the README documents."""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import TextIO

from django.db import transaction

from markets.models import Award, Bid, MarketOperator
from markets.services.bids import ActorLike, CsvImportError, MarketError
from markets.services.clearing import award_record

S = Bid.Status


BID_EXPORT_COLUMNS = [
    "bid_ref",
    "operator",
    "product",
    "portfolio",
    "interval_start_utc",
    "interval_end_utc",
    "quantity_mw",
    "price",
    "price_unit",
    "currency",
]
AWARD_IMPORT_COLUMNS = ["bid_ref", "awarded_mw", "clearing_price"]


def bids_export_csv(*, operator: MarketOperator, start: datetime, end: datetime, statuses: Sequence[str]) -> str:
    """Bids of ``operator`` in [start, end) with one of ``statuses`` in the documented export format (README)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(BID_EXPORT_COLUMNS)
    bids = Bid.objects.filter(
        product__operator=operator, interval_start__gte=start, interval_start__lt=end, status__in=statuses
    ).select_related("product")
    for bid in bids.order_by("interval_start", "product__code"):
        writer.writerow(
            [
                bid.external_ref,
                operator.code,
                bid.product.code,
                bid.portfolio,
                bid.interval_start.isoformat(),
                bid.interval_end.isoformat(),
                f"{Decimal(bid.quantity_w) / 1_000_000:f}",
                f"{bid.price:f}",
                operator.price_unit,
                operator.currency,
            ]
        )
    return out.getvalue()


def awards_import_csv(*, stream: TextIO, source_ref: str, actor: ActorLike) -> int:
    """Import the market's awards: header ``bid_ref,awarded_mw,clearing_price``; every bid must be submitted.

    All-or-nothing: any bad row (unknown or not-submitted bid, award above the offer, bad number, duplicate row)
    rolls the whole file back and names its line. Returns the number of awards recorded.
    """
    reader = csv.DictReader(stream)
    if not set(AWARD_IMPORT_COLUMNS) <= set(reader.fieldnames or []):
        raise CsvImportError(f"header must contain {AWARD_IMPORT_COLUMNS}")
    seen: set[str] = set()
    with transaction.atomic():
        count = 0
        for n, row in enumerate(reader, start=2):
            ref = (row["bid_ref"] or "").strip()
            if ref in seen:
                raise CsvImportError(f"line {n}: bid {ref} appears twice")
            seen.add(ref)
            try:
                awarded_w = int((Decimal(row["awarded_mw"]) * 1_000_000).to_integral_value())
                price = Decimal(row["clearing_price"])
            except (InvalidOperation, TypeError) as exc:
                raise CsvImportError(f"line {n}: {exc!r}") from None
            bid = Bid.objects.filter(external_ref=ref).first()
            if bid is None:
                raise CsvImportError(f"line {n}: unknown bid {ref!r}")
            if bid.status != S.SUBMITTED:
                raise CsvImportError(f"line {n}: bid {ref} is {bid.status}, not submitted")
            try:
                award_record(
                    bid_id=bid.id,
                    awarded_w=awarded_w,
                    clearing_price=price,
                    source=Award.Source.CSV,
                    source_ref=source_ref,
                    actor=actor,
                )
            except MarketError as exc:
                raise CsvImportError(f"line {n}: {exc}") from None
            count += 1
    return count
