"""Fleet services: SoC beliefs, departure plans, session matching and the telemetry-driven refresh."""

from __future__ import annotations

from datetime import time, timedelta

import pytest
from django.test import override_settings

from fleet import selectors
from fleet.models import Fleet, PlanSource, SocSource, VehicleState, WeeklyDeparture
from fleet.services import errors, vehicles
from fleet.tasks import refresh_vehicle_state
from tests.fleet.factories import T0, FleetFactory, PlugSessionFactory, VehicleFactory

pytestmark = pytest.mark.django_db


def test_a_metered_estimate_advances_the_last_report_with_efficiencies() -> None:
    # given a report of 29 kWh with the meter at 1,000 Wh imported and 0 exported
    vehicle = VehicleFactory.create()
    vehicles.soc_report(vehicle=vehicle, soc_wh=29_000, valid_at=T0, import_register_wh=1_000, export_register_wh=0)
    # when 2 kWh more were imported and 900 Wh exported
    belief = vehicles.soc_advance(
        vehicle=vehicle, import_register_wh=3_000, export_register_wh=900, valid_at=T0 + timedelta(minutes=30)
    )
    # then the estimate is 29,000 + 2,000 * 0.9 - 900 / 0.9 = 29,800 Wh, derived from the report
    assert belief is not None
    assert belief.soc_wh == 29_800
    assert belief.source == SocSource.METERED
    assert belief.basis is not None
    assert belief.basis.soc_wh == 29_000


def test_a_fresh_report_resets_the_chain() -> None:
    vehicle = VehicleFactory.create()
    vehicles.soc_report(vehicle=vehicle, soc_wh=20_000, valid_at=T0, import_register_wh=0, export_register_wh=0)
    vehicles.soc_advance(
        vehicle=vehicle, import_register_wh=5_000, export_register_wh=0, valid_at=T0 + timedelta(minutes=10)
    )
    vehicles.soc_report(
        vehicle=vehicle,
        soc_wh=30_000,
        valid_at=T0 + timedelta(minutes=20),
        import_register_wh=6_000,
        export_register_wh=0,
    )
    later = vehicles.soc_advance(
        vehicle=vehicle, import_register_wh=7_000, export_register_wh=0, valid_at=T0 + timedelta(minutes=30)
    )
    assert later is not None
    assert later.soc_wh == 30_900
    latest = selectors.latest_soc(vehicle.id)
    assert latest is not None
    assert latest.id == later.id


def test_advancing_is_idempotent_and_refuses_a_meter_going_backwards() -> None:
    vehicle = VehicleFactory.create()
    vehicles.soc_report(vehicle=vehicle, soc_wh=20_000, valid_at=T0, import_register_wh=5_000, export_register_wh=0)
    at = T0 + timedelta(minutes=5)
    first = vehicles.soc_advance(vehicle=vehicle, import_register_wh=6_000, export_register_wh=0, valid_at=at)
    again = vehicles.soc_advance(vehicle=vehicle, import_register_wh=6_000, export_register_wh=0, valid_at=at)
    assert first is not None
    assert again is not None
    assert first.id == again.id
    assert vehicles.soc_advance(vehicle=vehicle, import_register_wh=100, export_register_wh=0, valid_at=at) is None


def test_it_refuses_an_impossible_soc() -> None:
    vehicle = VehicleFactory.create()
    with pytest.raises(errors.FleetError, match="outside"):
        vehicles.soc_report(vehicle=vehicle, soc_wh=90_000, valid_at=T0)


def test_the_floor_defaults_from_settings_and_is_overridable_per_fleet_and_vehicle() -> None:
    with override_settings(FLEET_DEFAULT_MOBILITY_FLOOR_PCT=25):
        fleet = FleetFactory.create()
    assert fleet.mobility_floor_pct == 25
    vehicle = VehicleFactory.create(fleet=fleet)
    assert vehicle.floor_wh == 14_500
    vehicle.mobility_floor_pct = 40
    assert vehicle.floor_wh == 23_200
    assert Fleet._meta.get_field("mobility_floor_pct").default() == 20


def test_a_session_is_matched_by_evccid_before_the_token() -> None:
    by_token = VehicleFactory.create(id_token="CARD1")
    by_evccid = VehicleFactory.create(evccid="0A1B2C3D4E5F")
    match = vehicles.vehicle_match(id_token="CARD1", evccid="0A1B2C3D4E5F")
    assert match == (by_evccid, "evccid")
    assert vehicles.vehicle_match(id_token="CARD1") == (by_token, "id_token")
    assert vehicles.vehicle_match(id_token="UNKNOWN") is None


def test_opening_a_session_closes_the_previous_one_and_is_idempotent() -> None:
    vehicle = VehicleFactory.create()
    first = vehicles.session_open(
        vehicle=vehicle, station_id="s1", evse_id=1, transaction_id="a", matched_by="id_token", started_at=T0
    )
    again = vehicles.session_open(
        vehicle=vehicle, station_id="s1", evse_id=1, transaction_id="a", matched_by="id_token", started_at=T0
    )
    second = vehicles.session_open(
        vehicle=vehicle, station_id="s2", evse_id=1, transaction_id="b", matched_by="id_token", started_at=T0
    )
    first.refresh_from_db()
    assert again.id == first.id
    assert first.ended_at == T0
    assert selectors.open_session(vehicle.id) == second
    assert vehicles.session_close(station_id="s2", transaction_id="b", ended_at=T0 + timedelta(hours=1)) == 1
    assert vehicles.session_close(station_id="s2", transaction_id="b", ended_at=T0 + timedelta(hours=1)) == 0


def test_the_newest_explicit_plan_wins_over_the_weekly_schedule() -> None:
    session = PlugSessionFactory.create()
    vehicle = session.vehicle
    WeeklyDeparture.objects.create(vehicle=vehicle, weekday=0, departure_time=time(17, 0), target_soc_pct=70)
    vehicles.soc_report(vehicle=vehicle, soc_wh=20_000, valid_at=T0)
    # with only the schedule: Monday 17:00 UTC, 70 %
    snap = selectors.vehicle_snapshot(vehicle, at=T0)
    assert snap is not None
    assert snap.departure == T0.replace(hour=17)
    assert snap.target_wh == 40_600
    # when the station reports a departure (ISO 15118) and then the fleet manager overrides it
    vehicles.departure_plan_set(
        vehicle=vehicle,
        departure_at=T0 + timedelta(hours=3),
        target_soc_pct=80,
        source=PlanSource.STATION,
        known_at=T0 + timedelta(minutes=1),
    )
    vehicles.departure_plan_set(
        vehicle=vehicle,
        departure_at=T0 + timedelta(hours=5),
        target_soc_pct=90,
        source=PlanSource.FLEET_MANAGER,
        known_at=T0 + timedelta(minutes=2),
    )
    snap = selectors.vehicle_snapshot(vehicle, at=T0 + timedelta(minutes=3))
    assert snap is not None
    assert snap.departure == T0 + timedelta(hours=5)
    assert snap.target_wh == 52_200


def test_the_weekly_schedule_wraps_to_next_week() -> None:
    row = WeeklyDeparture(weekday=0, departure_time=time(5, 0), target_soc_pct=80)
    resolved = selectors.next_weekly_departure([row], tz_name="Europe/Berlin", at=T0)
    assert resolved is not None
    # Monday 05:00 Berlin (03:00 UTC) has passed at 06:00 UTC: next Monday
    assert resolved.departure_at == T0.replace(hour=3) + timedelta(days=7)


def test_plugged_in_snapshots_apply_session_limits_and_skip_unknown_soc() -> None:
    session = PlugSessionFactory.create(ev_max_discharge_w=7_000)
    PlugSessionFactory.create()  # plugged in, SoC never reported: not offered
    vehicles.soc_report(vehicle=session.vehicle, soc_wh=30_000, valid_at=T0)
    snaps = selectors.plugged_in_snapshots(at=T0 + timedelta(minutes=1))
    assert len(snaps) == 1
    snap = snaps[0]
    assert (snap.vehicle_id, snap.soc_wh, snap.floor_wh) == (session.vehicle.id, 30_000, 11_600)
    assert (snap.max_charge_w, snap.max_discharge_w) == (11_000, 7_000)
    assert (snap.station_id, snap.evse_id) == ("depot-1", 1)


def test_telemetry_refreshes_the_state_once_per_request(django_capture_on_commit_callbacks) -> None:
    session = PlugSessionFactory.create()
    vehicle = session.vehicle
    # when a report is stored, the refresh runs after commit
    with django_capture_on_commit_callbacks(execute=True):
        vehicles.soc_report(vehicle=vehicle, soc_wh=29_000, valid_at=T0)
    state = VehicleState.objects.get(vehicle=vehicle)
    # then the state carries the belief and a flexibility envelope
    assert state.dirty is False
    assert state.soc_wh == 29_000
    assert state.plugged_in is True
    assert state.up_w > 0
    assert state.down_w >= 0
    assert len(state.flexibility["up_w"]) == 96
    # and a redelivered task finds nothing to do
    assert refresh_vehicle_state(vehicle.id) is False


def test_cycles_today_come_from_the_rainflow_count_of_todays_beliefs() -> None:
    vehicle = VehicleFactory.create(usable_capacity_wh=50_000)
    for minutes, soc in ((0, 10_000), (60, 40_000), (120, 10_000)):
        vehicles.soc_report(
            vehicle=vehicle, soc_wh=soc, valid_at=T0 + timedelta(minutes=minutes), source=SocSource.FLEET_MANAGER
        )
    vehicles.vehicle_state_refresh(vehicle_id=vehicle.id, now=T0 + timedelta(hours=3))
    vehicle.refresh_from_db()
    # one swing of depth 0.6 = two half cycles: 0.6 ** 1.1
    assert vehicle.cycles_today == pytest.approx(0.6**1.1)
    assert vehicle.equivalent_full_cycles == pytest.approx(0.6**1.1)
    # refreshing again does not count the same cycles twice
    vehicles.vehicle_state_refresh(vehicle_id=vehicle.id, now=T0 + timedelta(hours=3))
    vehicle.refresh_from_db()
    assert vehicle.equivalent_full_cycles == pytest.approx(0.6**1.1)


def test_a_snapshot_carries_the_vehicles_own_degradation_cost() -> None:
    from decimal import Decimal

    session = PlugSessionFactory.create(
        vehicle=VehicleFactory.create(pack_cost_per_kwh=Decimal("120"), cycle_life=4000, rated_dod=Decimal("0.8"))
    )
    vehicles.soc_report(vehicle=session.vehicle, soc_wh=30_000, valid_at=T0)
    snap = selectors.vehicle_snapshot(session.vehicle, at=T0)
    assert snap is not None
    # the cycle-ageing cost of a 10 % cycle around its SoC (30,000 / 58,000 = 0.5172), per kWh through the pack:
    # its rated throughput cost 120 / (2 x 4000 x 0.8) = 0.01875 $/kWh, x the depth stress per unit depth relative to
    # the rated 80 % (33,559.69 / 320,739.44 / 0.1) / (1 / 0.8) = 0.837072, x the SoC stress exp(1.04 x 0.017241)
    # = 1.018095 -> 0.015979 $/kWh (it was the throughput model's 0.01875)
    assert snap.degradation_cost_per_kwh == pytest.approx(0.015979, abs=1e-6)
    assert snap.degradation.cycle_life == 4000


def test_a_burst_of_telemetry_enqueues_one_refresh(django_capture_on_commit_callbacks) -> None:
    vehicle = PlugSessionFactory.create().vehicle
    # when three readings are stored in one go
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        for minute in range(3):
            vehicles.soc_report(vehicle=vehicle, soc_wh=30_000 + minute, valid_at=T0 + timedelta(minutes=minute))
    # then one refresh is enqueued, and the pending state is visible
    assert len(callbacks) == 1
    assert VehicleState.objects.get(vehicle=vehicle).dirty is True
    # once the refresh ran, the next reading enqueues again
    assert refresh_vehicle_state(vehicle.id) is True
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        vehicles.soc_report(vehicle=vehicle, soc_wh=31_000, valid_at=T0 + timedelta(minutes=5))
    assert len(callbacks) == 1


def test_telemetry_refreshes_the_state_within_its_period_and_an_unplug_at_once(monkeypatch, settings) -> None:
    # Given a plugged-in car, the refreshes it enqueues recorded with their delay
    settings.FLEET_TELEMETRY_REFRESH_S = 30.0
    session = PlugSessionFactory.create()
    queued: list[float | None] = []
    monkeypatch.setattr(
        vehicles.jobs, "task_enqueue_on_commit", lambda *, name, args=(), countdown=None: queued.append(countdown)
    )
    # When a SoC report arrives, then more telemetry while that refresh is pending
    vehicles.soc_report(vehicle=session.vehicle, soc_wh=30_000, valid_at=T0)
    vehicles.soc_report(vehicle=session.vehicle, soc_wh=30_500, valid_at=T0 + timedelta(minutes=1))
    # Then one refresh is queued, for the telemetry period
    assert queued == [30.0]
    # And when the car leaves while it is pending, a refresh 2 s later is queued too (the page shows it gone now)
    vehicles.session_close(station_id=session.station_id, transaction_id=session.transaction_id, ended_at=T0)
    assert queued == [30.0, vehicles.REFRESH_DEBOUNCE_S]
