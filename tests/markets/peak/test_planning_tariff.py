"""Daily bid proposals plan a depot's peak shaving with its demand-charge tariff and load forecast where it has
them (``markets.planning``), and with the site's configured threshold and charge where it does not."""

from __future__ import annotations

import math
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import pytest

from markets.models import BidProposal, DepotSite, Product, SiteLoadPoint, Source
from markets.peak.models import DemandCharge, DemandTariff, MeterSource, SiteMeterReading
from markets.planning import build_problem

pytestmark = pytest.mark.django_db
DAY = datetime(2025, 7, 15, 4, 0, tzinfo=UTC)  # Tuesday 15 July 2025 00:00 EDT


def _depot_product() -> Product:
    return Product.objects.select_related("site", "operator").get(operator__code="depot", code="peak-shaving")


def _site(product: Product) -> DepotSite:
    assert product.site is not None
    return product.site


def _spec(product: Product):
    proposal = BidProposal.objects.create(
        operator=product.operator, horizon_start=DAY, horizon_end=DAY + timedelta(days=1), gate_closure=DAY
    )
    problem, _ = build_problem(proposal=proposal, now=DAY)
    return next(s for s in problem.products if s.code == product.code), problem


def _forecast(product: Product, kw_at_step) -> None:
    SiteLoadPoint.objects.bulk_create(
        SiteLoadPoint(site=_site(product), interval_start=DAY + timedelta(minutes=15 * t), interval_minutes=15,
                      load_w=kw_at_step(t), source=Source.FORECAST, belief_time=DAY - timedelta(hours=1))
        for t in range(96)
    )  # fmt: skip


def test_a_site_with_a_tariff_is_planned_with_its_forecast_its_billed_peak_and_its_prices():
    # Given the demo depot with a tariff: $12.00/kW facility, $9.50/kW weekdays 12:00-20:00 local
    product = _depot_product()
    tariff = DemandTariff.objects.create(site=_site(product), name="GS-3", valid_from=date(2025, 1, 1))
    DemandCharge.objects.create(tariff=tariff, name="facility", price_per_kw=Decimal("12.00"))
    DemandCharge.objects.create(tariff=tariff, name="on-peak", price_per_kw=Decimal("9.50"), weekdays="01234",
                                window_start=time(12), window_end=time(20))  # fmt: skip
    # and a forecast of 100 kW + 1 kW per step, and 150 kW metered on 8 July (this billing period, before the day)
    _forecast(product, lambda t: 100_000 + 1_000 * t)
    metered_at = datetime(2025, 7, 8, 18, tzinfo=UTC)
    SiteMeterReading.objects.create(site=_site(product), start=metered_at, interval_s=900, import_w=150_000,
                                    source=MeterSource.CSV, belief_time=metered_at + timedelta(days=1))  # fmt: skip
    # When the day's proposal problem is built
    spec, problem = _spec(product)
    # Then the load is the forecast at every step (the facility charge bills all hours), the threshold is the
    # month's billed peak so far, and a kW costs the sum of both charges ($21.50) at most
    assert problem.step_s == 900
    assert list(spec.site_load_w) == [100_000.0 + 1_000 * t for t in range(96)]
    assert spec.site_threshold_w == 150_000.0
    assert spec.demand_charge_usd_per_w == pytest.approx(0.0215)


def test_steps_no_charge_bills_count_for_nothing_and_missing_ones_as_the_worst():
    # Given an on-peak-only tariff (weekdays 12:00-20:00 EDT = 16:00-24:00 UTC: steps 48..79) and a forecast
    # that stops at step 60
    product = _depot_product()
    tariff = DemandTariff.objects.create(site=_site(product), name="TOU", valid_from=date(2025, 1, 1))
    DemandCharge.objects.create(tariff=tariff, name="on-peak", price_per_kw=Decimal("9.50"), weekdays="01234",
                                window_start=time(12), window_end=time(20))  # fmt: skip
    _forecast(product, lambda t: 80_000 + 500 * t)
    SiteLoadPoint.objects.filter(site=_site(product), interval_start__gte=DAY + timedelta(minutes=15 * 60)).delete()
    spec, _ = _spec(product)
    # Then outside the window the load is -inf (shaving there is worth nothing); inside, the forecast, and where it
    # is missing the worst forecast step (80 kW + 59 x 0.5 kW = 109.5 kW); nothing billed yet: threshold 0
    assert all(math.isinf(spec.site_load_w[t]) for t in [*range(48), *range(80, 96)])
    assert spec.site_load_w[48:60] == [80_000.0 + 500 * t for t in range(48, 60)]
    assert spec.site_load_w[60:80] == [109_500.0] * 20
    assert (spec.site_threshold_w, spec.demand_charge_usd_per_w) == (0.0, pytest.approx(0.0095))


def test_a_site_without_a_tariff_keeps_its_configured_threshold_and_charge():
    product = _depot_product()
    site = _site(product)
    _forecast(product, lambda t: 90_000)
    spec, _ = _spec(product)
    assert spec.site_load_w[0] == 90_000.0
    assert spec.site_threshold_w == float(site.threshold_w)
    assert spec.demand_charge_usd_per_w == pytest.approx(float(site.demand_charge) / 1000)
