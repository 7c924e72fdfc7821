"""CSV exchange with real markets: award import (all-or-nothing), bid export (the documented format)."""

from __future__ import annotations

import io

import pytest

from markets.models import Award, Bid
from markets.services.bids import CsvImportError, bid_transition
from markets.services.exchange import BID_EXPORT_COLUMNS, awards_import_csv, bids_export_csv

S = Bid.Status


def test_awards_import_is_all_or_nothing(bid_factory) -> None:
    a, b = bid_factory(), bid_factory()
    for bid in (a, b):
        bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
        bid_transition(bid_id=bid.id, to_status=S.SUBMITTED, actor=None)
    bad = f"bid_ref,awarded_mw,clearing_price\n{a.external_ref},0.5,12\n{b.external_ref},0.9,12\n"
    with pytest.raises(CsvImportError, match="line 3"):
        awards_import_csv(stream=io.StringIO(bad), source_ref="f", actor=None)
    assert not Award.objects.exists()
    good = f"bid_ref,awarded_mw,clearing_price\n{a.external_ref},0.5,12\n{b.external_ref},0,12\n"
    assert awards_import_csv(stream=io.StringIO(good), source_ref="f", actor=None) == 2
    assert Bid.objects.get(pk=a.id).status == S.AWARDED
    assert Bid.objects.get(pk=b.id).status == S.REJECTED


def test_bids_export_in_the_documented_format(bid_factory) -> None:
    bid = bid_factory()
    bid_transition(bid_id=bid.id, to_status=S.APPROVED, actor=None)
    text = bids_export_csv(
        operator=bid.product.operator, start=bid.interval_start, end=bid.interval_end, statuses=[S.APPROVED]
    )
    header, row = text.strip().splitlines()
    assert header == ",".join(BID_EXPORT_COLUMNS)
    assert row.split(",")[6:8] == ["0.5", "10.0000"]
