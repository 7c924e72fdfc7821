"""Price imports (the real PJM report, the generic CSV) and a depot's site-load import."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from markets.defaults import ensure_defaults
from markets.models import DepotSite, MarketOperator, PricePoint, Product, SiteLoadPoint
from markets.selectors import latest_site_load
from markets.services.bids import CsvImportError
from markets.services.prices import prices_import_csv, prices_import_pjm_sr

PJM_FILE = Path(__file__).resolve().parents[3] / "markets" / "data" / "pjm-synchronized-reserve-2017-07.csv"


def test_it_imports_the_real_pjm_file_once(db) -> None:
    product = Product.objects.get(operator__code="pjm", code="sync-reserve")
    with PJM_FILE.open() as fh:
        first = prices_import_pjm_sr(product=product, stream=fh, source_ref=PJM_FILE.name)
    with PJM_FILE.open() as fh:
        again = prices_import_pjm_sr(product=product, stream=fh, source_ref=PJM_FILE.name)
    assert (first.created, again.created) == (1488, 0)
    p = PricePoint.objects.get(location="Non PJM Mid Atlantic Dominion (MAD)", interval_start="2017-07-01T14:00Z")
    assert p.price == Decimal("3.59")
    assert p.belief_time.isoformat() == "2017-12-07T14:59:17+00:00"


def test_a_bad_price_row_rejects_the_whole_file_with_its_line(db) -> None:
    product = Product.objects.get(operator__code="pjm", code="reg-d")
    text = "interval_start,interval_minutes,price\n2026-07-01T00:00Z,60,5\n2026-07-01T01:00,60,5\n"
    with pytest.raises(CsvImportError, match="line 3"):
        prices_import_csv(product=product, stream=io.StringIO(text), source_ref="t", kind="forecast")
    assert not PricePoint.objects.exists()


def test_a_depot_site_load_file_is_imported_for_peak_shaving_and_a_bad_line_refuses_it(db: None, tmp_path) -> None:
    ensure_defaults(MarketOperator, DepotSite, Product)
    site = DepotSite.objects.get(code="depot-1")
    good = tmp_path / "load.csv"
    good.write_text(
        "interval_start,interval_minutes,load_w\n2025-07-01T14:00:00Z,60,42000\n2025-07-01T15:00:00Z,60,0\n"
    )
    call_command("markets", "import-site-load", str(good), "--site", "depot-1")
    start = datetime(2025, 7, 1, 14, tzinfo=UTC)
    loads = latest_site_load(site=site, start=start, end=start + timedelta(hours=2), known_at=timezone.now())
    assert loads == {start: 42000, start + timedelta(hours=1): 0}
    bad = tmp_path / "bad.csv"
    bad.write_text("interval_start,interval_minutes,load_w\n2025-07-01T16:00:00,60,1\n")  # no UTC offset
    with pytest.raises(CommandError, match="line 2"):
        call_command("markets", "import-site-load", str(bad), "--site", "depot-1")
    assert SiteLoadPoint.objects.count() == 2
