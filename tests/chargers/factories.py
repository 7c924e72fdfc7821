"""factory_boy factories for the chargers app; call ``XFactory.create()`` so type checkers see the model."""

from __future__ import annotations

import factory

from chargers.models import IdToken, Station
from chargers.passwords import password_hash

STATION_PASSWORD = "test-station-pass-0123"  # 22 characters, a valid OCPP BasicAuthPassword


class StationFactory(factory.django.DjangoModelFactory[Station]):
    class Meta:
        model = Station

    station_id = factory.Sequence(lambda n: f"cs-{n:04d}")
    password_hash = factory.LazyFunction(lambda: password_hash(STATION_PASSWORD))


class IdTokenFactory(factory.django.DjangoModelFactory[IdToken]):
    class Meta:
        model = IdToken

    id_token = factory.Sequence(lambda n: f"TOKEN{n:06d}")
    type = "ISO14443"
    status = "Accepted"
