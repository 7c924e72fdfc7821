"""Regulation keeps each car's share of an awarded reserve: its floor raised by the energy a full deployment draws,
its discharge limit lowered by the share, so an event arriving mid-regulation can be delivered.

Hand-computed fleet (sustain 30 min, discharge efficiency 0.9, 11 kW charging each):

* car A: 10 kW discharge, 30 kWh in the pack, floor 12 kWh -> can deliver min(10 kW, 18 kWh x 0.9 / 0.5 h) = 10 kW
* car B: 7 kW discharge, 13 kWh, floor 12 kWh -> min(7 kW, 1 kWh x 0.9 / 0.5 h) = 1.8 kW
* car C: on an OCPP 2.0.1 station (no discharge) -> 0

5.9 kW of reserve held is 50 % of the 11.8 kW they can deliver: A holds 5 kW, B 0.9 kW, C nothing.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from django.utils import timezone

from chargers.models import Station
from fleet.models import SocEstimate, SocSource
from fleet.numerics.arrays import FleetArrays, power_bounds
from fleet.numerics.snapshot import VehicleSnapshot
from markets.models import Product
from markets.regulation.services import reserve_deployment_record
from tests.fleet.factories import PlugSessionFactory
from tests.markets.regulation.data import regulation_product
from tests.vpp.stand_ins import award_now
from vpp.dispatch.selectors import dispatch_state_load
from vpp.dispatch.values import basepoint_choose, reserve_room

SUSTAIN_H = 0.5


def _car(vid: int, discharge_w: int, soc_wh: int) -> VehicleSnapshot:
    return VehicleSnapshot(
        vehicle_id=vid, capacity_wh=60_000, soc_wh=soc_wh, floor_wh=12_000, max_charge_w=11_000,
        max_discharge_w=discharge_w, charge_efficiency=0.9, discharge_efficiency=0.9, station_id=f"rr-{vid}", evse_id=1,
    )  # fmt: skip


def _fleet() -> FleetArrays:
    return FleetArrays.from_snapshots([_car(1, 10_000, 30_000), _car(2, 7_000, 13_000), _car(3, 0, 30_000)])


def test_each_car_holds_its_share_of_the_reserve_above_a_raised_floor():
    # Given the hand-computed fleet and 5.9 kW of reserve awarded, no event
    fleet = _fleet()
    # When regulation's view of it is made
    held, share = reserve_room(fleet, held_w=5_900, sustain_h=SUSTAIN_H, now=0.0)
    # Then A holds 5 kW, B 0.9 kW, C nothing
    assert share.tolist() == pytest.approx([5_000, 900, 0])
    # And each floor rises by share x 0.5 h / 0.9: A 2,777.78 Wh, B 500 Wh
    assert held.floor_wh.tolist() == pytest.approx([14_777.777_8, 12_500, 12_000])
    # And each discharge limit drops by its share
    assert held.max_discharge_w.tolist() == pytest.approx([5_000, 6_100, 0])
    # And the fleet it came from is unchanged
    assert fleet.floor_wh.tolist() == [12_000, 12_000, 12_000]


def test_the_basepoint_rises_so_full_regulation_up_still_leaves_the_reserve():
    # Given 20 kW of regulation and the hand-computed fleet, with and without 5.9 kW of reserve held
    bare = power_bounds(_fleet(), now=0.0, duration_s=60)
    held, share = reserve_room(_fleet(), held_w=5_900, sustain_h=SUSTAIN_H, now=0.0)
    room = power_bounds(held, now=0.0, duration_s=60)
    # When the basepoint is chosen (preferred 0 W)
    without = basepoint_choose(
        min_w=int(bare.lo.sum()), max_w=int(bare.hi.sum()), capacity_w=20_000, preferred_w=0, current_w=None
    )
    with_reserve = basepoint_choose(
        min_w=int(room.lo.sum()), max_w=int(room.hi.sum()), capacity_w=20_000, preferred_w=0, current_w=None
    )
    # Then without reserve: lowest -17 kW, basepoint -17 + 20 = 3 kW; with it: lowest -(5 + 6.1) = -11.1 kW, 8.9 kW
    assert (int(bare.lo.sum()), without) == (-17_000, 3_000)
    assert (int(room.lo.sum()), with_reserve) == (-11_100, 8_900)
    # And at full regulation up (each car at its regulation lower bound) a deployment still fits every car's limit
    deployed = room.lo - share
    assert deployed.tolist() == pytest.approx([-10_000, -7_000, 0])
    assert np.all(deployed >= -_fleet().max_discharge_w)


def test_more_reserve_than_the_fleet_can_deliver_keeps_all_it_can_and_no_more():
    held, share = reserve_room(_fleet(), held_w=50_000, sustain_h=SUSTAIN_H, now=0.0)
    assert share.tolist() == pytest.approx([10_000, 1_800, 0])
    # B's floor reaches its state of charge (13 kWh): it keeps 1 kWh for 1.8 kW x 0.5 h / 0.9
    assert held.floor_wh.tolist() == pytest.approx([12_000 + 10_000 * 0.5 / 0.9, 13_000, 12_000])
    assert held.max_discharge_w.tolist() == pytest.approx([0, 5_200, 0])


def test_no_reserve_leaves_the_fleet_as_it_is():
    fleet = _fleet()
    held, share = reserve_room(fleet, held_w=0, sustain_h=SUSTAIN_H, now=0.0)
    assert held is fleet
    assert share.tolist() == [0, 0, 0]


def test_a_car_keeps_its_departure_need_out_of_its_reserve_share():
    # Given car A (30 kWh, floor 12 kWh, 11 kW x 0.9 charging) leaving in 1.5 h for 40 kWh: after a full 30-min
    # deployment it charges 1 h, 9.9 kWh, so it must keep 40 - 9.9 = 30.1 kWh: above its 30 kWh, nothing to give
    now = 1_000_000.0
    leaving = VehicleSnapshot(
        vehicle_id=1, capacity_wh=60_000, soc_wh=30_000, floor_wh=12_000, max_charge_w=11_000, max_discharge_w=10_000,
        charge_efficiency=0.9, discharge_efficiency=0.9, station_id="rr-1", evse_id=1,
        departure=datetime.fromtimestamp(now + 5_400, UTC), target_wh=40_000,
    )  # fmt: skip
    # and car A' the same but leaving in 3 h: it keeps 40 - 2.5 h x 9.9 kW = 15.25 kWh and can give
    # min(10 kW, 14.75 kWh x 0.9 / 0.5 h) = 10 kW
    later = replace(leaving, vehicle_id=2, station_id="rr-2", departure=datetime.fromtimestamp(now + 10_800, UTC))
    # and car A'' leaving in 20 min, before a deployment starting now would end
    soon = replace(leaving, vehicle_id=3, station_id="rr-3", departure=datetime.fromtimestamp(now + 1_200, UTC))
    fleet = FleetArrays.from_snapshots([leaving, later, soon])
    # When 6 kW of reserve is held
    held, share = reserve_room(fleet, held_w=6_000, sustain_h=SUSTAIN_H, now=now)
    # Then only A' holds it, above its departure need: floor 15.25 kWh + 6 kW x 0.5 h / 0.9
    assert share.tolist() == pytest.approx([0, 6_000, 0])
    assert held.floor_wh.tolist() == pytest.approx([12_000, 15_250 + 6_000 * 0.5 / 0.9, 12_000])


def _two_cars_plugged_in() -> None:
    now = timezone.now()
    for sid in ("rr-1", "rr-2"):
        Station.objects.create(station_id=sid, ocpp_version="2.1", channel_name="x")
        session = PlugSessionFactory.create(station_id=sid, evse_id=1, started_at=now - timedelta(hours=2))
        SocEstimate.objects.create(
            vehicle=session.vehicle, soc_wh=52_200, source=SocSource.SEED, valid_at=now, known_at=now
        )  # 90 % of 58 kWh: far above any floor


@pytest.mark.django_db
def test_the_dispatch_state_keeps_the_awarded_reserve_less_what_an_event_deploys():
    # Given two cars (11 kW discharge, efficiency 0.9) plugged in and 20 kW of PJM synchronized reserve (30 min)
    regulation_product()
    _two_cars_plugged_in()
    reserve = Product.objects.get(operator__code="pjm", code="sync-reserve")
    now = timezone.now().timestamp()
    bare = dispatch_state_load(product_id=reserve.pk, portfolio="default", now=now)
    award_now(reserve, "default", 20_000)
    # When the dispatcher loads its state with no event in force
    held = dispatch_state_load(product_id=reserve.pk, portfolio="default", now=now)
    # Then each car keeps 10 kW: floor + 10 kW x 0.5 h / 0.9 = + 5,555.6 Wh, discharge 11 kW - 10 kW = 1 kW
    assert held.reserve_held_w == 20_000
    assert (held.fleet.floor_wh - bare.fleet.floor_wh).tolist() == pytest.approx([5_555.556] * 2)
    assert held.fleet.max_discharge_w.tolist() == [1_000, 1_000]
    # When an event deploys 15 kW of it: only 5 kW stays held, 2.5 kW a car (floor + 1,388.9 Wh, 8.5 kW discharge)
    at = timezone.now()
    reserve_deployment_record(
        portfolio="default", event_id="rr-1", power_w=15_000, start=at - timedelta(minutes=1),
        end=at + timedelta(minutes=10), source="utility_api",
    )  # fmt: skip
    during = dispatch_state_load(product_id=reserve.pk, portfolio="default", now=at.timestamp())
    assert (during.reserve_w, during.reserve_held_w) == (15_000, 5_000)
    assert (during.fleet.floor_wh - bare.fleet.floor_wh).tolist() == pytest.approx([1_388.889] * 2)
    assert during.fleet.max_discharge_w.tolist() == [8_500, 8_500]
