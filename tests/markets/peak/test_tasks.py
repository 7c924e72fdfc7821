"""The periodic peak-shaving tasks work site by site: one site's failure is logged and leaves the others done."""

from __future__ import annotations

import logging
from datetime import date
from decimal import Decimal
from types import SimpleNamespace

import pytest

from markets.models import DepotSite
from markets.peak import tasks
from markets.peak.models import DemandCharge, DemandTariff
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db


def _site_with_tariff(code: str) -> DepotSite:
    site = DepotSite.objects.create(code=code, name=code, threshold_w=100_000, demand_charge=Decimal("10"))
    site.stations.add(StationFactory.create(station_id=f"{code}-cs"))
    tariff = DemandTariff.objects.create(site=site, name="GS", valid_from=date(2020, 1, 1))
    DemandCharge.objects.create(tariff=tariff, name="facility", price_per_kw=Decimal("12.00"))
    return site


def test_one_sites_failure_leaves_the_other_sites_planned(monkeypatch, caplog):
    # Given two sites with tariffs and stations, where the first one's forecast query fails
    broken, healthy = _site_with_tariff("broken"), _site_with_tariff("healthy")

    def forecast(*, site_id: int, **_kw) -> int:
        if site_id == broken.pk:
            raise RuntimeError("a corrupt forecast row")
        return 96

    monkeypatch.setattr(tasks, "site_load_forecast_make", forecast)
    monkeypatch.setattr(tasks, "peak_plan_make", lambda *, site_id, **_kw: SimpleNamespace(pk=site_id * 10))
    # When the planning task runs
    with caplog.at_level(logging.ERROR, logger="markets.peak.tasks"):
        planned = tasks.peak_plans_refresh()
    # Then the healthy site is planned and the broken one is logged with its code
    assert planned == [healthy.pk * 10]
    assert any("broken" in r.getMessage() and r.exc_info for r in caplog.records)


def test_one_sites_failure_leaves_the_other_sites_settled(monkeypatch, caplog):
    # Given two sites with tariffs, where settling the first one fails
    broken, healthy = _site_with_tariff("broken"), _site_with_tariff("healthy")

    def settle(*, site_id: int, **_kw) -> SimpleNamespace:
        if site_id == broken.pk:
            raise RuntimeError("a failed query")
        return SimpleNamespace(pk=site_id * 10)

    monkeypatch.setattr(tasks, "peak_period_settle", settle)
    # When the settlement task runs
    with caplog.at_level(logging.ERROR, logger="markets.peak.tasks"):
        settled = tasks.peak_periods_settle()
    # Then the healthy site is settled and the broken one is logged
    assert settled == [healthy.pk * 10]
    assert any("broken" in r.getMessage() for r in caplog.records)
