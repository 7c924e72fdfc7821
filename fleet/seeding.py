"""Demo fleet from real distributions (``fleet/data/ev-sessions``, see its README): sampling, then one write service.

Sampling is pure and seeded (same ``seed`` => same fleet). The write is idempotent: running it again on a seeded
fleet adds nothing.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path

import numpy as np
from django.contrib.auth import get_user_model
from django.db import transaction

from fleet.models import (
    Fleet,
    Membership,
    Organisation,
    PlanSource,
    PlugSession,
    Role,
    SocSource,
    Vehicle,
    WeeklyDeparture,
)
from fleet.services import vehicles as vehicle_services

DATA_DIR = Path(__file__).resolve().parent / "data" / "ev-sessions"
PROFILES = ("private", "public", "workplace")
DEMO_TARGET_PCT = 80
DEMO_MIN_CONNECTION_H = 2.0


@dataclass(frozen=True, slots=True)
class ModelSpec:
    name: str
    registrations: int
    capacity_wh: int
    ac_charge_w: int
    ac_discharge_w: int
    dc_charge_w: int
    dc_discharge_w: int
    efficiency: float


@dataclass(frozen=True, slots=True)
class Distributions:
    arrival_pct: dict[str, np.ndarray]  # 96 weights per profile
    connection_h: dict[str, np.ndarray]  # value at percentage 0..100
    energy_kwh: dict[str, np.ndarray]
    models: tuple[ModelSpec, ...]


def _columns(path: Path) -> dict[str, np.ndarray]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {p: np.array([float(r[p]) for r in rows]) for p in PROFILES}


@lru_cache(maxsize=1)
def load_distributions(data_dir: Path = DATA_DIR) -> Distributions:
    specs = json.loads((data_dir / "ev_specs_v2g_enabled2024.json").read_text())
    models = tuple(
        ModelSpec(
            name=name,
            registrations=int(s["number_of_registrations"]),
            capacity_wh=round(s["battery_capacity"] * 1000),
            ac_charge_w=round(s["max_ac_charge_power"] * 1000),
            ac_discharge_w=round(s["max_ac_discharge_power"] * 1000),
            dc_charge_w=round(s["max_dc_charge_power"] * 1000),
            dc_discharge_w=round(s["max_dc_discharge_power"] * 1000),
            efficiency=max(s["3ph_ch_efficiency"]) / 100.0,
        )
        for name, s in specs.items()
    )
    return Distributions(
        arrival_pct=_columns(data_dir / "distribution-of-arrival.csv"),
        connection_h=_columns(data_dir / "distribution-of-connection-time.csv"),
        energy_kwh=_columns(data_dir / "distribution-of-energy-demand.csv"),
        models=models,
    )


@dataclass(frozen=True, slots=True)
class DemoVehicle:
    model: ModelSpec
    arrival_s: int  # seconds after midnight
    connection_s: int
    energy_wh: int  # energy demand of the session


def sample_fleet(count: int, *, profile: str = "private", seed: int = 7) -> list[DemoVehicle]:
    """``count`` vehicles: model by registrations, arrival, connection time and energy demand by the data."""
    if profile not in PROFILES:
        raise ValueError(f"profile must be one of {PROFILES}")
    dist = load_distributions()
    rng = np.random.default_rng(seed)
    weights = np.array([m.registrations for m in dist.models], dtype=np.float64)
    model_idx = rng.choice(len(dist.models), size=count, p=weights / weights.sum())
    arrival = dist.arrival_pct[profile]
    slot = rng.choice(arrival.size, size=count, p=arrival / arrival.sum())
    arrival_s = slot * 900 + rng.integers(0, 900, size=count)
    pct = np.arange(101, dtype=np.float64)
    connection_h = np.interp(rng.uniform(0, 100, size=count), pct, dist.connection_h[profile])
    energy_kwh = np.interp(rng.uniform(0, 100, size=count), pct, dist.energy_kwh[profile])
    out = []
    for i in range(count):
        spec = dist.models[int(model_idx[i])]
        hours = float(np.clip(connection_h[i], DEMO_MIN_CONNECTION_H, 24.0))
        # a session cannot ask for more than the pack holds between the floor and the target
        energy = min(float(energy_kwh[i]) * 1000, spec.capacity_wh * 0.6)
        out.append(DemoVehicle(spec, int(arrival_s[i]), int(hours * 3600), int(energy)))
    return out


@dataclass(frozen=True, slots=True)
class SeedResult:
    organisation: Organisation
    fleet: Fleet
    created: int
    plugged_in: int


@dataclass(frozen=True, slots=True)
class DemoOrganisation:
    """One of the demo's tenants: its organisation, its fleet's name and the prefix of its vehicles' identities."""

    slug: str
    name: str
    prefix: str  # vehicle names, VINs and id tokens start with it (unique across organisations)


DEMO = DemoOrganisation(slug="demo", name="Demo Fleet Operator", prefix="DEMO")
# The second tenant shows the scoping: its manager sees its stations and cars, not the first one's.
HARBOUR = DemoOrganisation(slug="harbour", name="Harbour Logistics", prefix="HARB")


def demo_organisation(tenant: DemoOrganisation = DEMO) -> Organisation:
    """A demo tenant's organisation, created on first use: it owns its demo stations and fleet."""
    org, _ = Organisation.objects.get_or_create(slug=tenant.slug, defaults={"name": tenant.name})
    return org


def demo_fleet_seed(
    *,
    now: datetime,
    vehicles: int = 40,
    stations: list[str] | None = None,
    profile: str = "private",
    seed: int = 7,
    member_usernames: list[str] | None = None,
    tenant: DemoOrganisation = DEMO,
) -> SeedResult:
    """Seed the tenant's organisation (default "Demo Fleet Operator"), fleet "Depot" and ``vehicles`` cars
    (idempotent).

    Each car's last session is placed on the most recent occurrence of its sampled arrival time; cars whose session
    spans ``now`` are plugged in (one per given station, EVSE 1), with the SoC they would have after charging on
    arrival, a fleet-manager departure plan and a weekday schedule at the same time of day.
    """
    with transaction.atomic():
        org = demo_organisation(tenant)
        for user in get_user_model().objects.filter(username__in=member_usernames or []):
            Membership.objects.get_or_create(user=user, organisation=org, defaults={"role": Role.FLEET_MANAGER})
        fleet, _ = Fleet.objects.get_or_create(organisation=org, name="Depot", defaults={"default_node": "depot-node"})
        existing = set(fleet.vehicles.values_list("name", flat=True))
        free_stations = [s for s in (stations or []) if not _station_busy(s)]
        created = plugged = 0
        for n, demo in enumerate(sample_fleet(vehicles, profile=profile, seed=seed), start=1):
            name = f"{tenant.prefix}-{n:03d}"
            if name in existing:
                continue
            vehicle = _create_vehicle(fleet, name, n, demo, prefix=tenant.prefix)
            created += 1
            arrival, departure = _last_session(now, demo)
            for weekday in range(5):
                WeeklyDeparture.objects.create(
                    vehicle=vehicle,
                    weekday=weekday,
                    departure_time=departure.time().replace(second=0, microsecond=0),
                    target_soc_pct=DEMO_TARGET_PCT,
                )
            target_wh = vehicle.usable_capacity_wh * DEMO_TARGET_PCT // 100
            arrival_soc = max(target_wh - demo.energy_wh, vehicle.floor_wh // 2)
            plugged_now = arrival <= now < departure and (stations is None or bool(free_stations))
            if not plugged_now:
                vehicle_services.soc_report(
                    vehicle=vehicle,
                    soc_wh=target_wh,
                    valid_at=departure - timedelta(days=1),
                    source=SocSource.SEED,
                    known_at=now,
                )
                continue
            charged = vehicle.ac_max_charge_w * vehicle.charge_efficiency * (now - arrival).total_seconds() / 3600
            soc_now = int(min(arrival_soc + charged, max(arrival_soc, target_wh)))
            station_id = free_stations.pop(0) if stations is not None else f"seed-evse-{n}"
            session = vehicle_services.session_open(
                vehicle=vehicle,
                station_id=station_id,
                evse_id=1,
                transaction_id=f"seed-{name}",
                matched_by="seed",
                started_at=arrival,
            )
            vehicle_services.soc_report(
                vehicle=vehicle, soc_wh=soc_now, valid_at=now, source=SocSource.SEED, known_at=now
            )
            vehicle_services.departure_plan_set(
                vehicle=vehicle,
                departure_at=departure,
                target_soc_pct=DEMO_TARGET_PCT,
                source=PlanSource.FLEET_MANAGER,
                known_at=arrival,
                session=session,
            )
            plugged += 1
    return SeedResult(organisation=org, fleet=fleet, created=created, plugged_in=plugged)


def _station_busy(station_id: str) -> bool:
    return PlugSession.objects.filter(station_id=station_id, ended_at__isnull=True).exists()


def _create_vehicle(fleet: Fleet, name: str, n: int, demo: DemoVehicle, *, prefix: str) -> Vehicle:
    spec = demo.model
    return Vehicle.objects.create(
        fleet=fleet,
        name=name,
        vin=f"{prefix}{n:013d}",
        id_token=f"{prefix}-TOKEN-{n:04d}",
        model=spec.name,
        usable_capacity_wh=spec.capacity_wh,
        ac_max_charge_w=spec.ac_charge_w,
        ac_max_discharge_w=spec.ac_discharge_w,
        dc_max_charge_w=spec.dc_charge_w,
        dc_max_discharge_w=spec.dc_discharge_w,
        charge_efficiency=spec.efficiency,
        discharge_efficiency=spec.efficiency,
        state_of_health=round(1.0 - (n % 7) * 0.02, 2),
        pack_temperature_c=20.0 + (n % 5) * 3,
    )


def _last_session(now: datetime, demo: DemoVehicle) -> tuple[datetime, datetime]:
    """The most recent arrival at the sampled time of day (UTC) at or before ``now``, and its departure."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    arrival = midnight + timedelta(seconds=demo.arrival_s)
    if arrival > now:
        arrival -= timedelta(days=1)
    return arrival, arrival + timedelta(seconds=demo.connection_s)
