"""The lowest cap a fleet can hold a site to with the energy it has and can charge (``markets.peak.capacity``).

Hand-made figures: one car of 10 kWh at 5 kWh, floor 2 kWh, 10 kW both ways; four 1-hour steps of 10, 10, 30 and
30 kW, all billed. Lossless (efficiency 1) unless a test says otherwise.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from fleet.numerics.snapshot import VehicleSnapshot
from markets.peak.capacity import Pack, cap_plan, holdable_cap

START = datetime(2025, 7, 1, 4, tzinfo=UTC)
LOAD = [10_000, 10_000, 30_000, 30_000]


def _car(**kw) -> VehicleSnapshot:
    values = {"vehicle_id": 1, "capacity_wh": 10_000, "soc_wh": 5_000, "floor_wh": 2_000, "max_charge_w": 10_000,
              "max_discharge_w": 10_000, "charge_efficiency": 1.0, "discharge_efficiency": 1.0} | kw  # fmt: skip
    return VehicleSnapshot(**values)


def _plan(*cars: VehicleSnapshot, load=LOAD, billed=(True,) * 4, floor_cap_w=0.0):
    return cap_plan(load_w=load, billed=billed, step_s=3600, start_ts=START.timestamp(), vehicles=cars,
                    floor_cap_w=floor_cap_w)  # fmt: skip


def test_the_cap_counts_on_charging_the_car_first_and_the_schedule_charges_it_before_the_peak():
    # Given 3 kWh above the floor and 5 kWh of room: charged full before the peak, 8 kWh cover 2 h at (30 - C)
    # When planned
    plan = _plan(_car())
    # Then C = 30 - 8 / 2 = 26 kW (without charging it would be 30 - 3 / 2 = 28.5 kW), the 5 kWh go in the first hour
    # (import 15 kW, under the cap) and the car gives 4 kW in each peak hour
    assert plan.cap_w == 26_000
    assert plan.fleet_w == [5_000, 0, -4_000, -4_000]
    assert (round(plan.charge_wh), round(plan.discharge_wh)) == (5_000, 8_000)


def test_losses_raise_the_cap():
    # Given 80 % each way: 5 kWh of room takes 6.25 kWh from the grid; 3 + 5 = 8 kWh in the pack gives 6.4 kWh
    plan = _plan(_car(charge_efficiency=0.8, discharge_efficiency=0.8))
    # Then C = 30 - 6.4 / 2 = 26.8 kW
    assert plan.cap_w == 26_800
    assert plan.fleet_w == [6_250, 0, -3_200, -3_200]


def test_charging_never_makes_a_new_peak():
    # Given a cap low enough that charging is limited by it: the morning at 24 kW leaves 2 kW of room an hour
    plan = _plan(_car(), load=[24_000, 24_000, 30_000, 30_000])
    # Then 3 kWh + 2 h x (C - 24) = 2 x (30 - C) -> 4C = 105 -> C = 26.25 kW; the car charges 2.25 kW an hour
    assert plan.cap_w == 26_250
    assert plan.fleet_w == [2_250, 2_250, -3_750, -3_750]


def test_a_car_leaving_before_the_peak_gives_nothing_and_leaves_with_its_target():
    # Given the car leaves at the start of the peak and needs 9 kWh then
    car = _car(departure=START + timedelta(hours=2), target_wh=9_000)
    plan = _plan(car)
    # Then the cap is the peak itself and it charges the 4 kWh it needs, early
    assert plan.cap_w == 30_000
    assert plan.fleet_w == [4_000, 0, 0, 0]


def test_the_cap_is_never_below_the_billed_peak_so_far():
    plan = _plan(_car(), floor_cap_w=28_000)
    # Then holding 28 kW needs 4 kWh: 1 kWh charged, the rest of the energy stays in the pack
    assert plan.cap_w == 28_000
    assert plan.fleet_w == [1_000, 0, -2_000, -2_000]


def test_the_fleet_as_one_pack_holds_what_its_energy_allows():
    # Given 6 kWh above the minimum, 10 kW of discharge, two hours at 30 kW and no room to charge first
    pack = Pack(energy_wh=8_000, min_wh=2_000, max_wh=8_000, charge_w=10_000, discharge_w=10_000,
                charge_efficiency=1.0, discharge_efficiency=1.0)  # fmt: skip
    cap = holdable_cap(load_w=[30_000, 30_000], billed=[True, True], hours=[1.0, 1.0], pack=pack)
    # Then 2 x (30 - C) = 6 -> C = 27 kW (to the 10 W resolution, never under)
    assert 27_000 <= cap <= 27_010


def test_the_fleet_as_one_pack_is_limited_by_its_power():
    pack = Pack(energy_wh=50_000, min_wh=0, max_wh=50_000, charge_w=10_000, discharge_w=10_000)
    # a 1-hour 50 kW peak with 10 kW of discharge: 40 kW, however much energy there is
    assert holdable_cap(load_w=[50_000], billed=[True], hours=[1.0], pack=pack) == 40_000


def test_the_fleet_as_one_pack_charges_under_the_cap_before_it_is_needed():
    # Given the pack of the first tests: 3 kWh above the floor, 5 kWh of room, the morning at 10 kW
    pack = Pack(energy_wh=5_000, min_wh=2_000, max_wh=10_000, charge_w=10_000, discharge_w=10_000,
                charge_efficiency=1.0, discharge_efficiency=1.0)  # fmt: skip
    cap = holdable_cap(load_w=LOAD, billed=[True] * 4, hours=[1.0] * 4, pack=pack)
    # Then as per car: 26 kW
    assert 26_000 <= cap <= 26_010
