"""Migrations keep an existing database's data: a database at the schema of the last release (the migrations listed in
``RELEASED``) with rows in it migrates to today's schema and every row is still there, and the models need no
migration that is not written yet.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.executor import MigrationExecutor
from django.utils import timezone

from chargers.models import MessageLog, Station
from chargers.ocpp_j import payload_digest
from fleet.models import Fleet, Membership, Organisation, Role, StationOwnership, Vehicle
from markets.defaults import ensure_defaults
from markets.models import RegulationSignal

# The leaf migration of each app as released before the issue-11 layout (main at 66577cf): databases in the field
# are at these. Add a release's leaves here when a release ships new ones.
RELEASED = [
    ("chargers", "0001_initial"),
    ("fleet", "0003_vehicle_degradation_params"),
    ("markets", "0004_reserve_deployment"),
    ("vpp", "0001_initial"),
]
AT = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def _migrate(targets: list[tuple[str, str]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.migrate(targets)
    executor.loader.build_graph()  # the executor's graph is stale after a migration
    return executor


def _seed_released_schema(executor: MigrationExecutor) -> None:
    """Rows in the released schema, written with the historical models (the code of that day)."""
    apps = executor.loader.project_state(RELEASED).apps
    station = apps.get_model("chargers", "Station").objects.create(station_id="cs-old-1", ocpp_version="2.1")
    apps.get_model("chargers", "MessageLog").objects.create(
        station=station, direction="in", message_type=2, message_id="m-1", action="Heartbeat", payload={"a": "é"},
        response={}, created_at=timezone.now(),
    )  # fmt: skip
    org = apps.get_model("fleet", "Organisation").objects.create(name="Old Depot Ltd", slug="old-depot")
    manager = apps.get_model("auth", "User").objects.create(username="old-manager")
    org.members.add(manager)
    fleet = apps.get_model("fleet", "Fleet").objects.create(organisation=org, name="Vans", mobility_floor_pct=25)
    apps.get_model("fleet", "Vehicle").objects.create(
        fleet=fleet,
        name="VAN-1",
        model="eVan",
        usable_capacity_wh=60_000,
        ac_max_charge_w=11_000,
        vin="VIN00000000000001",
    )
    # The data migration's defaults, in case an earlier test flushed them (as the released code seeded them).
    ensure_defaults(*(apps.get_model("markets", name) for name in ("MarketOperator", "DepotSite", "Product")))
    product = apps.get_model("markets", "Product").objects.get(operator__code="pjm", code="reg-d")
    apps.get_model("markets", "RegulationSignal").objects.create(
        product=product, portfolio="default", at=AT, value=Decimal("-0.25"), source="api", belief_time=AT
    )
    assert station.pk


@pytest.mark.django_db(transaction=True)
def test_a_released_database_with_data_migrates_to_today_without_loss() -> None:
    # Given a database at the released schema, with a station, an organisation, a fleet, a vehicle and a signal value
    executor = _migrate(RELEASED)
    _seed_released_schema(executor)

    # When it is migrated to today's schema
    _migrate(executor.loader.graph.leaf_nodes())

    # Then every row is still there, read through today's models
    assert Station.objects.get(station_id="cs-old-1").ocpp_version == "2.1"
    # And (chargers 0003) a recent incoming CALL has its payload's digest, so its retransmit is still recognised
    assert MessageLog.objects.get(message_id="m-1").payload_sha256 == payload_digest({"a": "é"})
    assert Fleet.objects.get(name="Vans").mobility_floor_pct == 25
    assert Vehicle.objects.get(vin="VIN00000000000001").usable_capacity_wh == 60_000
    assert RegulationSignal.objects.get(at=AT).value == Decimal("-0.25000")
    # And tenancy (fleet 0004): the old member is a fleet manager of their organisation, and the station that had no
    # owner belongs to the default organisation, where an operator can move it from
    membership = Membership.objects.get(user__username="old-manager")
    assert (membership.organisation.slug, membership.role) == ("old-depot", Role.FLEET_MANAGER)
    ownership = StationOwnership.objects.get(station__station_id="cs-old-1")
    assert ownership.organisation.slug == Organisation.DEFAULT_SLUG


@pytest.mark.django_db
def test_the_models_need_no_migration_that_is_not_written() -> None:
    # makemigrations --check exits non-zero when a model change has no migration.
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)
