"""factory_boy factories for the fleet app; call ``XFactory.create()`` so type checkers see the model."""

from __future__ import annotations

from datetime import UTC, datetime

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import User

from fleet.models import Fleet, Organisation, PlugSession, Vehicle

T0 = datetime(2025, 6, 2, 6, 0, tzinfo=UTC)  # a Monday


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = get_user_model()

    username = factory.Sequence(lambda n: f"manager{n}")
    # Hashed at create time: a password set after saving would not match the session's auth hash on later requests.
    password = factory.django.Password("s3cret-pass")


class OrganisationFactory(factory.django.DjangoModelFactory[Organisation]):
    class Meta:
        model = Organisation

    name = factory.Sequence(lambda n: f"Operator {n}")
    slug = factory.Sequence(lambda n: f"operator-{n}")


class FleetFactory(factory.django.DjangoModelFactory[Fleet]):
    class Meta:
        model = Fleet

    organisation = factory.SubFactory(OrganisationFactory)
    name = factory.Sequence(lambda n: f"Depot {n}")


class VehicleFactory(factory.django.DjangoModelFactory[Vehicle]):
    class Meta:
        model = Vehicle

    fleet = factory.SubFactory(FleetFactory)
    name = factory.Sequence(lambda n: f"EV-{n:03d}")
    vin = factory.Sequence(lambda n: f"WVWZZZE1ZPP{n:06d}")
    id_token = factory.Sequence(lambda n: f"TOKEN{n:04d}")
    model = "Volkswagen ID.3"
    usable_capacity_wh = 58_000
    ac_max_charge_w = 11_000
    ac_max_discharge_w = 11_000
    dc_max_charge_w = 120_000
    dc_max_discharge_w = 11_000
    charge_efficiency = 0.9
    discharge_efficiency = 0.9


class PlugSessionFactory(factory.django.DjangoModelFactory[PlugSession]):
    class Meta:
        model = PlugSession

    vehicle = factory.SubFactory(VehicleFactory)
    station_id = "depot-1"
    evse_id = 1
    transaction_id = factory.Sequence(lambda n: f"tx-{n}")
    matched_by = "id_token"
    started_at = T0


def api_key_for(user: User, *scopes: str, portfolio: str = "", days: int = 30, **fields: object) -> str:
    """A raw API key (issued through the service, hashed at rest) of ``user`` with ``scopes`` (default: signal)."""
    from datetime import timedelta

    from django.utils import timezone

    from fleet.services.accounts import api_key_issue

    _key, raw = api_key_issue(
        user=user,
        scopes=scopes or ("signal",),
        expires_at=timezone.now() + timedelta(days=days),
        portfolio=portfolio,
        name=str(fields.pop("name", "test key")),
        **fields,  # type: ignore[arg-type]
    )
    return raw
