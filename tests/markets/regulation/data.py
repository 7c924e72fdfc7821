"""Stored data for regulation tests: a regulation award, its signal, and meter values of stations following it.

Meter values are written the way the CSMS stores them (integer W / Wh rows per measurand), with energy registers
kept by an ideal meter integrating the reported power, so settlement and reconciliation have a known answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import factory
from django.contrib.auth.models import Permission, User
from rest_framework.test import APIClient

from chargers.models import MeterValue, Station
from markets.defaults import ensure_defaults
from markets.models import Award, Bid, DepotSite, MarketOperator, Product
from markets.regulation.models import RegulationSignal, SignalSource
from tests.chargers.factories import StationFactory

HOUR_START = datetime(2025, 7, 1, 14, 0, tzinfo=UTC)
SPAN_S = 3904  # the hour plus the scoring template's 5 min 10 s look-ahead, and a little more


def triangle(t: float) -> float:
    """Normalised triangle wave, period 200 s: -1 at t = 0, +1 at t = 100 s (2-s samples land on steps of 0.04)."""
    phase = (t % 200) / 100.0
    return -1.0 + 2.0 * phase if phase <= 1.0 else 3.0 - 2.0 * phase


def regulation_product() -> Product:
    """PJM RegD as the data migration seeds it (re-seeded if a transactional test flushed the tables)."""
    ensure_defaults(MarketOperator, DepotSite, Product)
    return Product.objects.get(operator__code="pjm", code="reg-d")


def award_for(
    product: Product, start: datetime, *, awarded_w: int, price: str, hours: int = 1, portfolio: str = "default"
) -> Award:
    end = start + timedelta(hours=hours)
    bid = Bid.objects.create(
        product=product,
        portfolio=portfolio,
        interval_start=start,
        interval_end=end,
        quantity_w=awarded_w,
        price=Decimal(price),
        status=Bid.Status.AWARDED,
        external_ref=f"bid-{product.code}-{start:%Y%m%d%H}",
    )
    return Award.objects.create(
        bid=bid,
        product=product,
        portfolio=portfolio,
        interval_start=start,
        interval_end=end,
        awarded_w=awarded_w,
        clearing_price=Decimal(price),
        source=Award.Source.SIMULATED,
        received_at=start - timedelta(hours=12),
    )


def store_signal(
    product: Product,
    start: datetime,
    fn: Callable[[float], float] = triangle,
    span_s: int = SPAN_S,
    portfolio: str = "default",
) -> None:
    now = datetime.now(UTC)
    RegulationSignal.objects.bulk_create(
        RegulationSignal(
            product=product,
            portfolio=portfolio,
            at=start + timedelta(seconds=t),
            value=Decimal(f"{fn(t):.5f}"),
            source=SignalSource.SIMULATED,
            belief_time=now,
        )
        for t in range(0, span_s, 2)
    )


def stations(n: int) -> list[Station]:
    return list(StationFactory.create_batch(n, station_id=factory.Sequence(lambda k: f"reg-{k:03d}")))


def store_following(
    chargers: Sequence[Station],
    start: datetime,
    *,
    capacity_w: int,
    fn: Callable[[float], float] = triangle,
    lag_s: int = 0,
    scale: float = 1.0,
    span_s: int = SPAN_S,
    evse_id: int = 1,
) -> list[MeterValue]:
    """Each station discharges ``fn(t - lag) x capacity / n x scale`` (positive signal = regulation up), reporting
    power and energy registers every 2 s; returns the rows stored."""
    share = capacity_w / len(chargers)
    rows: list[MeterValue] = []
    received = start + timedelta(seconds=span_s + 5)
    for station in chargers:
        imported = exported = 0.0
        for t in range(0, span_s, 2):
            at = start + timedelta(seconds=t)
            power = -round(fn(t - lag_s) * share * scale)  # W, + charging
            values = {
                "Power.Active.Import": (max(power, 0), "W"),
                "Power.Active.Export": (max(-power, 0), "W"),
                "Energy.Active.Import.Register": (round(imported), "Wh"),
                "Energy.Active.Export.Register": (round(exported), "Wh"),
            }
            rows.extend(
                MeterValue(
                    station=station,
                    evse_id=evse_id,
                    timestamp=at,
                    received_at=received,
                    measurand=measurand,
                    value=value,
                    unit=unit,
                    source="MeterValues",
                )
                for measurand, (value, unit) in values.items()
            )
            imported += max(power, 0) * 2 / 3600
            exported += max(-power, 0) * 2 / 3600
    return MeterValue.objects.bulk_create(rows, batch_size=5000)


def user_with(username: str, *perms: str, staff: bool = False) -> User:
    user = User.objects.create_user(username, password="a-long-test-password", is_staff=staff)
    for perm in perms:
        app, codename = perm.split(".")
        user.user_permissions.add(Permission.objects.get(content_type__app_label=app, codename=codename))
    return User.objects.get(pk=user.pk)  # fresh: permission cache empty


def client_for(user: User) -> APIClient:
    client = APIClient()
    client.force_authenticate(user)
    return client
