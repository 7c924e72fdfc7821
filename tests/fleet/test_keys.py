"""API keys (issue 12): DRF authentication by hashed key, issuing and revoking (service, ``manage.py token``, the
account page), and the station call endpoint's key check."""

from __future__ import annotations

import io
import re
from datetime import timedelta

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.models import ApiKey, Membership, Role
from fleet.services.accounts import api_key_issue
from fleet.services.errors import FleetError
from tests.fleet.factories import FleetFactory, OrganisationFactory, UserFactory, api_key_for

pytestmark = pytest.mark.django_db
URL = "/api/fleet/vehicles/"


def fleet_manager():
    """A fleet manager of an organisation of their own: the vehicles list answers them 200."""
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=OrganisationFactory.create(), role=Role.FLEET_MANAGER)
    return user


def key_client(header: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    return client


# --- authentication ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Api-Key", "Bearer"])
def test_a_valid_key_authenticates_as_its_user(scheme: str) -> None:
    # Given a fleet manager's read key
    raw = api_key_for(fleet_manager(), "read")
    # When it calls the API with the key, then it is let in
    assert key_client(f"{scheme} {raw}").get(URL).status_code == 200


@pytest.mark.parametrize("change", ["revoked", "expired", "inactive user"])
def test_a_revoked_or_expired_key_or_an_inactive_users_key_is_401(change: str) -> None:
    # Given a key that worked
    user = fleet_manager()
    raw = api_key_for(user, "read")
    client = key_client(f"Api-Key {raw}")
    assert client.get(URL).status_code == 200
    # When it is revoked, expires, or its user is deactivated
    if change == "revoked":
        ApiKey.objects.filter(user=user).update(revoked=True)
    elif change == "expired":
        ApiKey.objects.filter(user=user).update(expiry_date=timezone.now() - timedelta(seconds=1))
    else:
        user.is_active = False
        user.save()
    # Then the API answers 401 with the Api-Key challenge
    response = client.get(URL)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Api-Key"


@pytest.mark.parametrize(
    "header", ["Api-Key nonsense", "Api-Key abcdefgh.wrong-secret", "Api-Key ", "Bearer", "Token 0123456789abcdef"]
)
def test_an_unknown_key_a_wrong_secret_or_a_plaintext_token_is_401(header: str) -> None:
    # Given a real key whose prefix a forger knows
    raw = api_key_for(UserFactory.create(), "read")
    header = header.replace("abcdefgh", raw.partition(".")[0])
    # Then anything but the exact key is refused (DRF's old Token scheme included: no class reads it any more)
    assert key_client(header).get(URL).status_code == 401


def test_the_raw_key_is_not_stored_only_its_hash() -> None:
    # Given a freshly issued key
    raw = api_key_for(UserFactory.create(), "read")
    prefix, _, secret = raw.partition(".")
    # Then no column of its row holds the key or its secret part; the prefix alone is in clear
    row = ApiKey.objects.values_list("id", "prefix", "hashed_key").get(prefix=prefix)
    assert all(raw not in str(v) and secret not in str(v) for v in row)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT * FROM {ApiKey._meta.db_table}")
        dumped = repr(cursor.fetchall())
    assert secret not in dumped


# --- issuing -------------------------------------------------------------------------------------------------------


def test_issuing_checks_scopes_expiry_and_membership() -> None:
    user, other_org = UserFactory.create(), OrganisationFactory.create()
    later = timezone.now() + timedelta(days=1)
    with pytest.raises(FleetError, match="scopes"):
        api_key_issue(user=user, scopes=["admin"], expires_at=later, name="x")
    with pytest.raises(FleetError, match="future"):
        api_key_issue(user=user, scopes=["read"], expires_at=timezone.now(), name="x")
    with pytest.raises(FleetError, match="366 days"):
        api_key_issue(user=user, scopes=["read"], expires_at=timezone.now() + timedelta(days=400), name="x")
    with pytest.raises(FleetError, match="not a member"):
        api_key_issue(user=user, scopes=["read"], expires_at=later, organisation=other_org, name="x")
    Membership.objects.create(user=user, organisation=other_org, role=Role.UTILITY)
    key, _ = api_key_issue(user=user, scopes=["read"], expires_at=later, organisation=other_org, name="x")
    assert key.organisation == other_org


def test_token_add_prints_the_key_once_and_stores_it_hashed() -> None:
    # Given a fleet manager
    user = UserFactory.create(username="grid-op")
    Membership.objects.create(user=user, organisation=OrganisationFactory.create(), role=Role.FLEET_MANAGER)
    out, err = io.StringIO(), io.StringIO()
    # When an operator issues a key from the command line
    call_command("token", "add", "grid-op", "--scopes", "read,signal", "--expires", "30d", stdout=out, stderr=err)
    raw = out.getvalue().strip()
    # Then stdout is the key alone, it works, and the row holds its hash only
    assert raw.count(".") == 1
    assert key_client(f"Api-Key {raw}").get(URL).status_code == 200
    key = ApiKey.objects.get(user=user)
    assert (sorted(key.scopes), key.prefix) == (["read", "signal"], raw.partition(".")[0])
    assert raw.partition(".")[2] not in key.hashed_key
    # And listing shows the prefix but never the key
    listing = io.StringIO()
    call_command("token", "list", "grid-op", stdout=listing)
    assert key.prefix in listing.getvalue()
    assert raw not in listing.getvalue()
    # And revoking by prefix stops it
    call_command("token", "revoke", key.prefix, stdout=io.StringIO())
    assert key_client(f"Api-Key {raw}").get(URL).status_code == 401


def test_token_add_refuses_an_unknown_scope_or_a_missing_expiry_unit() -> None:
    UserFactory.create(username="grid-op")
    with pytest.raises(CommandError, match="scopes"):
        call_command("token", "add", "grid-op", "--scopes", "everything", "--expires", "1d", stdout=io.StringIO())
    with pytest.raises(CommandError, match="expires"):
        call_command("token", "add", "grid-op", "--scopes", "read", "--expires", "soon", stdout=io.StringIO())
    assert not ApiKey.objects.exists()


# --- the account page -----------------------------------------------------------------------------------------------


def test_the_account_page_lists_only_ones_own_keys_and_issues_one_shown_once() -> None:
    # Given two users with a key each
    alice, bob = UserFactory.create(username="alice"), UserFactory.create(username="bob")
    api_key_for(alice, "read", name="alice-key")
    api_key_for(bob, "read", name="bob-key")
    browser = Client(enforce_csrf_checks=False)
    browser.force_login(alice)
    # When alice opens the page, then she sees her key and not bob's
    page = browser.get("/account/api-keys/").content.decode()
    assert "alice-key" in page
    assert "bob-key" not in page
    # When she issues a key, then it is shown once, not cached, and stored hashed
    issued = browser.post("/account/api-keys/", {"name": "new", "scopes": ["signal"], "expires_in_days": 7})
    assert issued.status_code == 200
    assert issued["Cache-Control"] == "no-store"
    new = ApiKey.objects.get(user=alice, name="new")
    found = re.search(r'<code id="new-key">([^<]+)</code>', issued.content.decode())
    assert found is not None
    raw = found.group(1)
    assert ApiKey.objects.get_from_key(raw) == new
    assert raw not in browser.get("/account/api-keys/").content.decode()


def test_a_user_revokes_only_their_own_keys_and_only_by_post() -> None:
    # Given alice signed in, her key and bob's
    alice, bob = UserFactory.create(username="alice"), UserFactory.create(username="bob")
    api_key_for(alice, "read")
    api_key_for(bob, "read")
    mine, theirs = ApiKey.objects.get(user=alice), ApiKey.objects.get(user=bob)
    browser = Client()
    browser.force_login(alice)
    # When she tries bob's prefix, then 404 and his key lives on
    assert browser.post(f"/account/api-keys/{theirs.prefix}/revoke").status_code == 404
    # And a GET revokes nothing
    assert browser.get(f"/account/api-keys/{mine.prefix}/revoke").status_code == 405
    # When she revokes her own, then it is revoked
    assert browser.post(f"/account/api-keys/{mine.prefix}/revoke").status_code == 302
    mine.refresh_from_db()
    theirs.refresh_from_db()
    assert (mine.revoked, theirs.revoked) == (True, False)


def test_the_revoke_button_needs_the_csrf_token() -> None:
    alice = UserFactory.create(username="alice")
    api_key_for(alice, "read")
    key = ApiKey.objects.get(user=alice)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(alice)
    assert browser.post(f"/account/api-keys/{key.prefix}/revoke").status_code == 403
    key.refresh_from_db()
    assert not key.revoked


# --- the station call endpoint (chargers.api reads the key through DRF's configured classes) ------------------------


def test_the_station_call_endpoint_wants_a_staff_key_with_scope_command() -> None:
    staff = UserFactory.create(username="ops", is_staff=True)
    read_only, command = api_key_for(staff, "read", name="r"), api_key_for(staff, "command", name="c")
    url = "/api/stations/x/call"
    # A key without scope command: 403; a bad key: 401; a good one passes auth and finds no station "x" (404)
    assert (
        Client().post(url, {}, "application/json", headers={"Authorization": f"Api-Key {read_only}"}).status_code == 403
    )
    assert Client().post(url, {}, "application/json", headers={"Authorization": "Api-Key x.y"}).status_code == 401
    assert (
        Client().post(url, {}, "application/json", headers={"Authorization": f"Api-Key {command}"}).status_code == 404
    )


def test_a_key_of_an_organisation_may_name_only_that_organisations_fleet_as_its_portfolio() -> None:
    # Given a utility of two organisations
    first, second = OrganisationFactory.create(), OrganisationFactory.create()
    user = UserFactory.create()
    for org in (first, second):
        Membership.objects.create(user=user, organisation=org, role=Role.UTILITY)
    other_fleet = FleetFactory.create(organisation=second)
    # When a key of the first organisation names the second's fleet, then it is refused
    with pytest.raises(FleetError, match="is not a fleet of"):
        api_key_issue(
            user=user,
            scopes=["signal"],
            expires_at=timezone.now() + timedelta(days=1),
            organisation=first,
            portfolio=f"fleet-{other_fleet.pk}",
            name="vendor",
        )
