"""The dashboard's reads and commands: projected SoC, discharge now stopped at the floor, the trip target, the power
history and its CSV, and fleet power without offline stations."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone

from chargers import ocpp_j
from chargers.models import MeterValue, StationCommand
from fleet.models import DeparturePlan, Membership, Role, StationOwnership, VehicleCommand
from fleet.numerics.departure import departure_outlook
from fleet.numerics.snapshot import VehicleSnapshot
from fleet.services.commands import trip_target_set
from fleet.services.errors import FleetError
from fleet.services.vehicles import departure_plan_set, soc_report
from tests.chargers.factories import StationFactory
from tests.fleet.factories import OrganisationFactory, PlugSessionFactory, UserFactory
from vpp.dashboard import services
from vpp.dashboard.selectors import dashboard_overview
from vpp.dashboard.selectors_history import power_history, power_history_csv
from vpp.dashboard.services import DischargeRefused, discharge_now

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _snapshot(soc_pct: float, *, hours_to_departure: float | None, target_pct: int = 80) -> VehicleSnapshot:
    return VehicleSnapshot(
        vehicle_id=1,
        capacity_wh=58_000,
        soc_wh=round(580 * soc_pct),
        floor_wh=11_600,
        max_charge_w=11_000,
        max_discharge_w=11_000,
        charge_efficiency=0.9,
        departure=NOW + timedelta(hours=hours_to_departure) if hours_to_departure is not None else None,
        target_wh=580 * target_pct,
    )


# --- projected SoC at departure (pure) ------------------------------------------------------------------------------


def test_a_car_that_cannot_reach_its_target_by_departure_is_at_risk() -> None:
    # Given a 58 kWh car at 30 % leaving in 2 h on an 11 kW charger at 90 % efficiency (+19.8 kWh at best)
    outlook = departure_outlook(_snapshot(30, hours_to_departure=2), now=NOW)
    # Then at best it leaves at 30 % + 34.1 % = 64.1 %, short of its 80 % target by 9.2 kWh
    assert outlook.projected_pct == pytest.approx(64.1, abs=0.1)
    assert outlook.at_risk
    assert outlook.shortfall_wh == pytest.approx(9_200, abs=100)


def test_a_car_with_time_enough_is_projected_full_at_most_and_not_at_risk() -> None:
    outlook = departure_outlook(_snapshot(30, hours_to_departure=6), now=NOW)
    assert outlook.projected_pct == 100.0  # capped at the pack's capacity
    assert not outlook.at_risk


def test_an_unplugged_car_is_projected_at_its_soc_now() -> None:
    outlook = departure_outlook(_snapshot(50, hours_to_departure=6), now=NOW, plugged_in=False)
    assert outlook.projected_pct == 50.0
    assert outlook.at_risk  # 50 % < 80 % and it cannot charge


# --- a plugged-in car on an OCPP 2.1 station, its organisation's fleet manager --------------------------------------


def _plugged(soc_pct: float, **station: Any):
    now = timezone.now()
    session = PlugSessionFactory.create(started_at=now - timedelta(hours=1))
    vehicle = session.vehicle
    fields = {"online": True, "channel_name": "test.station!abc", "ocpp_version": "2.1", **station}
    station_row = StationFactory.create(station_id=session.station_id, **fields)
    StationOwnership.objects.create(station=station_row, organisation=vehicle.fleet.organisation)
    soc_report(vehicle=vehicle, soc_wh=round(vehicle.usable_capacity_wh * soc_pct / 100), valid_at=now)
    manager = UserFactory.create()
    Membership.objects.create(user=manager, organisation=vehicle.fleet.organisation, role=Role.FLEET_MANAGER)
    return vehicle, station_row, manager


@pytest.mark.django_db
def test_discharge_now_that_would_cross_the_floor_is_refused_with_the_reason_and_nothing_is_sent(monkeypatch) -> None:
    # Given a 58 kWh car at 25 % (floor 20 %: 2.9 kWh above it) on a connected OCPP 2.1 station
    vehicle, _, manager = _plugged(25)
    sent: list[dict[str, Any]] = []

    def station_accepting(**call: Any) -> dict[str, Any]:
        sent.append(call)
        return {"status": "Accepted"}

    monkeypatch.setattr(services, "station_call", station_accepting)
    # When its manager asks for 11 kW for 30 minutes (5.5 kWh at the grid, 6.1 kWh out of the pack)
    with pytest.raises(DischargeRefused) as refused:
        discharge_now(vehicle=vehicle, power_kw=11, minutes=30, actor_user_id=manager.pk, actor_label="m")
    # Then it is refused, saying why and how long it could discharge at that power
    assert "would cross the mobility floor" in refused.value.reason
    assert "at most 14 min at this power" in refused.value.reason
    assert not refused.value.sent
    # And nothing went to the station, and the refusal is audited with its reason
    assert sent == []
    assert StationCommand.objects.count() == 0
    command = VehicleCommand.objects.get(vehicle=vehicle)
    assert (command.action, command.outcome, command.user_id) == ("discharge_now", "refused", manager.pk)
    assert "mobility floor" in command.reason


@pytest.mark.django_db
def test_discharge_now_within_the_floor_sends_an_ocpp_setpoint_that_ends_by_itself(monkeypatch) -> None:
    # Given a car at 60 % on a connected OCPP 2.1 station that accepts profiles
    vehicle, station, manager = _plugged(60)
    sent: list[dict[str, Any]] = []

    def station_accepting(**call: Any) -> dict[str, Any]:
        # the request must be a valid OCPP 2.1 SetChargingProfileRequest (the library's schema)
        ocpp_j.check(ocpp_j.request_validator("2.1", call["action"]), call["payload"])
        sent.append(call)
        return {"status": "Accepted"}

    monkeypatch.setattr(services, "station_call", station_accepting)
    now = timezone.now()
    # When its manager asks for 7 kW for 20 minutes
    started = discharge_now(vehicle=vehicle, power_kw=7, minutes=20, actor_user_id=manager.pk, actor_label="m", now=now)
    # Then the station got one CentralSetpoint of -7 kW valid for 20 minutes, under the manager's name
    [call] = sent
    assert (call["station_id"], call["action"], call["actor_user_id"]) == (
        station.station_id,
        "SetChargingProfile",
        manager.pk,
    )
    profile = call["payload"]["chargingProfile"]
    period = profile["chargingSchedule"][0]["chargingSchedulePeriod"][0]
    assert period["operationMode"] == "CentralSetpoint"
    assert period["setpoint"] == -7000.0
    valid_to = datetime.fromisoformat(profile["validTo"].replace("Z", "+00:00"))
    assert abs(valid_to - (now + timedelta(minutes=20))) < timedelta(seconds=1)
    assert started.power_w == 7000
    assert VehicleCommand.objects.get(vehicle=vehicle).outcome == "done"


@pytest.mark.django_db
def test_discharge_now_is_refused_when_the_station_cannot_discharge() -> None:
    vehicle, _, manager = _plugged(60, ocpp_version="2.0.1")
    with pytest.raises(DischargeRefused, match="cannot discharge"):
        discharge_now(vehicle=vehicle, power_kw=5, minutes=10, actor_user_id=manager.pk, actor_label="m")


@pytest.mark.django_db
def test_the_discharge_page_answers_a_refusal_with_the_reason_and_another_organisations_car_is_404() -> None:
    vehicle, _, manager = _plugged(22)
    client = Client()
    client.force_login(manager)
    url = f"/dashboard/vehicles/{vehicle.pk}/discharge"
    response = client.post(url, {"power_kw": 11, "minutes": 60}, content_type="application/json")
    assert response.status_code == 409
    assert response["Content-Type"] == "application/problem+json"
    assert "mobility floor" in response.json()["detail"]
    outsider = UserFactory.create()
    Membership.objects.create(user=outsider, organisation=OrganisationFactory.create(), role=Role.FLEET_MANAGER)
    client.force_login(outsider)
    assert client.post(url, {"power_kw": 1, "minutes": 1}, content_type="application/json").status_code == 404
    assert VehicleCommand.objects.filter(vehicle=vehicle).count() == 1  # the outsider's request never reached it


# --- the one-off trip target ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_trip_target_applies_to_the_next_departure_only_and_is_audited() -> None:
    # Given a plugged-in car leaving in 5 h for 80 %
    vehicle, _, manager = _plugged(50)
    now = timezone.now()
    departure = (now + timedelta(hours=5)).replace(microsecond=0)
    departure_plan_set(vehicle=vehicle, departure_at=departure, target_soc_pct=80, source="fleet_manager", known_at=now)
    # When the manager sets 95 % for the next trip
    plan = trip_target_set(vehicle=vehicle, target_soc_pct=95, actor_user_id=manager.pk, actor_label="m")
    # Then the plan is for that same departure, at 95 %, and the request is audited
    assert (plan.departure_at, plan.target_soc_pct) == (departure, 95)
    assert DeparturePlan.objects.filter(vehicle=vehicle).count() == 2
    audit = VehicleCommand.objects.get(vehicle=vehicle)
    assert (audit.action, audit.outcome, audit.request["target_soc_pct"]) == ("trip_target", "done", 95)


@pytest.mark.django_db
def test_a_trip_target_without_a_known_departure_is_refused_and_recorded() -> None:
    vehicle, _, manager = _plugged(50)
    with pytest.raises(FleetError, match="no next departure"):
        trip_target_set(vehicle=vehicle, target_soc_pct=90, actor_user_id=manager.pk, actor_label="m")
    assert VehicleCommand.objects.get(vehicle=vehicle).outcome == "refused"


# --- fleet power and its history ------------------------------------------------------------------------------------


def _reading(station, at: datetime, measurand: str, value: int, source: str = "MeterValues") -> None:
    MeterValue.objects.create(
        station=station, timestamp=at, received_at=at, measurand=measurand, value=value, unit="W", source=source
    )


@pytest.mark.django_db
def test_an_offline_stations_last_reading_is_not_counted_in_fleet_power() -> None:
    # Given two stations of the manager's organisation: one online charging 3 kW, one offline whose last reading was
    # a 7 kW discharge
    vehicle, online, manager = _plugged(50)
    offline = StationFactory.create(online=False)
    StationOwnership.objects.create(station=offline, organisation=vehicle.fleet.organisation)
    now = timezone.now()
    _reading(online, now, "Power.Active.Import", 3_000)
    _reading(offline, now - timedelta(minutes=5), "Power.Active.Export", 7_000)
    # When the overview is read
    overview = dashboard_overview(user=manager, at=now)
    # Then fleet power is the online station's alone (the offline one still lists its last reading)
    assert overview.fleet_power_w == 3_000
    assert {s["station_id"]: s["power_w"] for s in overview.stations}[offline.station_id] == -7_000


@pytest.mark.django_db
def test_the_history_csv_is_the_plotted_series() -> None:
    # Given readings of two stations over the last hours, one of them simulated history
    vehicle, station, manager = _plugged(50)
    other = StationFactory.create(online=True)
    StationOwnership.objects.create(station=other, organisation=vehicle.fleet.organisation)
    end = datetime(2026, 11, 30, 12, 2, tzinfo=UTC)
    for minute in range(0, 120, 1):
        at = end - timedelta(minutes=minute)
        _reading(station, at, "Power.Active.Import", 1_000 + 10 * minute)
        _reading(other, at, "Power.Active.Export", 2_000)
    _reading(station, end - timedelta(hours=5), "Power.Active.Import", 4_000, source="simulated")
    # When the day's history is read and written as CSV
    history = power_history(user=manager, span="day", end=end)
    text = power_history_csv(history)
    # Then every CSV row is a plotted point (bucket start, value, measured or simulated) and vice versa
    plotted = {
        (t.isoformat(), f"{v:.3f}", "yes" if sim else "no")
        for sim, series in ((False, history.measured_kw), (True, history.simulated_kw))
        for t, v in zip(history.times, series, strict=True)
        if v is not None
    }
    rows = {(r["bucket_start_utc"], r["fleet_power_kw"], r["simulated"]) for r in csv.DictReader(io.StringIO(text))}
    assert rows == plotted
    assert len(rows) == 26  # the 25 five-minute buckets from 10:00 to 12:00, and the simulated one
    # And a bucket's value is the sum of the stations' mean net power (kW)
    assert ("2026-11-30T11:55:00+00:00", "-0.950", "no") in rows  # station 1: 1,050 W mean; station 2: -2,000 W
    assert any(r[2] == "yes" and r[1] == "4.000" for r in rows)


@pytest.mark.django_db
def test_the_history_page_and_its_csv_carry_the_same_numbers() -> None:
    _vehicle, station, manager = _plugged(50)
    now = timezone.now()
    for minute in range(30):
        _reading(station, now - timedelta(minutes=minute), "Power.Active.Import", 5_000)
    client = Client()
    client.force_login(manager)
    plotted = client.get("/dashboard/history.json?span=week").json()
    text = client.get("/dashboard/history.csv?span=week").content.decode()
    values = [v for v in plotted["measured_kw"] if v is not None]
    assert values
    assert all(v == 5.0 for v in values)
    assert [float(r["fleet_power_kw"]) for r in csv.DictReader(io.StringIO(text))] == values
    assert client.get("/dashboard/history.json?span=year").status_code == 400


@pytest.mark.django_db
def test_revenue_counts_the_simulated_part_apart() -> None:
    from tests.test_permissions import _tenant

    # Given a settled hour of a manager's car (a settlement line of 1.00 net) flagged simulated
    vehicle, _, manager = _plugged(50)
    _, _, _, settlement = _tenant(vehicle.fleet.organisation, "R", None)
    settlement.simulated = True
    settlement.save(update_fields=["simulated"])
    # When the overview is read now
    overview = dashboard_overview(user=manager, at=timezone.now())
    revenue = overview.revenue
    # Then this month shows it, and says it is simulated
    assert (revenue["month"]["net"], revenue["month"]["simulated"]) == (Decimal("1.00"), Decimal("1.00"))
    assert revenue["month"]["net_text"] == "$1.00"
    assert [r["simulated"] for r in revenue["by_vehicle"]] == [True]


@pytest.mark.django_db
def test_revenue_sets_each_products_money_side_by_side() -> None:
    from markets.models import DepotSite
    from markets.peak.models import DemandTariff, PeakSettlement
    from tests.test_permissions import _tenant

    # Given a manager's settled regulation hour ($1.00 net, simulated) and their depot's billing period that starts
    # today with $25.00 of demand charge avoided
    vehicle, _, manager = _plugged(50)
    organisation = vehicle.fleet.organisation
    _, _, _, settlement = _tenant(organisation, "P", None)
    settlement.simulated = True
    settlement.save(update_fields=["simulated"])
    site = DepotSite.objects.get(organisation=organisation)
    now = timezone.now()
    day = now.replace(hour=0, minute=0, second=0, microsecond=0)
    tariff = DemandTariff.objects.create(site=site, name="demand", valid_from=day.date())
    PeakSettlement.objects.create(
        site=site, tariff=tariff, period_start=day, period_end=day + timedelta(days=30), currency="USD",
        metered_charge=Decimal("100.00"), counterfactual_charge=Decimal("125.00"), avoided=Decimal("25.00"),
        intervals=[], intervals_expected=0, intervals_metered=0, site_readings=0, site_digest="", fleet_readings=0,
        fleet_digest="", computed_at=now,
    )  # fmt: skip
    # When the overview is read now
    revenue = dashboard_overview(user=manager, at=now).revenue
    # Then every product is listed side by side: regulation $1.00 (simulated), no reserve, peak shaving $25.00
    month = {r["product"]: (r["month_text"], r["simulated_text"]) for r in revenue["by_product"]}
    assert month == {
        "regulation": ("$1.00", "$1.00"),
        "synchronized reserve": ("$0.00", "$0.00"),
        "peak shaving": ("$25.00", "$0.00"),
    }
    assert [r["today_text"] for r in revenue["by_product"] if r["product"] == "peak shaving"] == ["$25.00"]
    # And the month's total counts all of them
    assert revenue["month"]["net_text"] == "$26.00"
