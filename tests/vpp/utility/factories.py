"""Factories for utility programs (tests/vpp/utility)."""

from __future__ import annotations

import factory

from markets.models import Product
from tests.fleet.factories import FleetFactory
from tests.markets.regulation.data import regulation_product
from vpp.utility.models import Protocol, UtilityProgram


def reg_d() -> Product:
    """PJM RegD, seeded by the markets migrations (re-seeded after a transactional test's flush)."""
    return regulation_product()


class UtilityProgramFactory(factory.django.DjangoModelFactory[UtilityProgram]):
    class Meta:
        model = UtilityProgram

    organisation = factory.LazyAttribute(lambda o: o.fleet.organisation)
    name = factory.Sequence(lambda n: f"DR program {n}")
    protocol = Protocol.OPENADR_2B
    endpoint = "http://127.0.0.1:8080/OpenADR2/Simple/2.0b"
    client_name = factory.Sequence(lambda n: f"ven-{n}")
    portfolio = factory.LazyAttribute(lambda o: f"fleet-{o.fleet.pk}")
    product = factory.LazyFunction(reg_d)

    class Params:
        fleet = factory.SubFactory(FleetFactory)
