"""Bids and awards read with an API key: only the portfolios of the key's organisation (and its portfolio)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from fleet.models import Membership, Role
from tests.fleet.factories import FleetFactory, UserFactory, api_key_for
from tests.markets.conftest import BidFactory
from tests.markets.regulation.data import regulation_product

pytestmark = pytest.mark.django_db


def test_a_read_key_of_one_organisation_lists_only_its_organisations_bids() -> None:
    # Given a bidding admin of two organisations with a bid each, and a read key limited to the first
    regulation_product()
    first, second = FleetFactory.create(), FleetFactory.create()
    user = UserFactory.create()
    for fleet in (first, second):
        Membership.objects.create(user=user, organisation=fleet.organisation, role=Role.BIDDING_ADMIN)
    mine = BidFactory.create(portfolio=f"fleet-{first.pk}")
    BidFactory.create(portfolio=f"fleet-{second.pk}")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {api_key_for(user, 'read', organisation=first.organisation)}")
    # When the key lists the bids, then it sees the first organisation's only
    response = client.get("/api/markets/bids/")
    assert response.status_code == 200
    rows = response.json()["results"] if isinstance(response.json(), dict) else response.json()
    assert [row["id"] for row in rows] == [mine.pk]
