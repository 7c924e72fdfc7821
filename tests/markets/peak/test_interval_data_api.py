"""``POST /api/peak/sites/<code>/interval-data``: CSV, JSON and file bodies, problem documents naming the bad line or
pointer, organisation scoping (another organisation's site is 404), API key scope, and the audit trail."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from rest_framework.test import APIClient

from fleet.models import ApiKey, ApiScope, Membership, Role
from markets.models import DepotSite
from markets.peak.models import SiteDataUpload, SiteMeterReading
from tests.fleet.factories import OrganisationFactory, UserFactory

pytestmark = pytest.mark.django_db
PROBLEM = "application/problem+json"
CSV = (
    "interval_start,interval_minutes,import_kw\n"
    "2026-12-01T00:00:00-05:00,15,182.4\n"
    "2026-12-01T00:15:00-05:00,15,179.9\n"
)


@pytest.fixture
def world() -> dict[str, Any]:
    acme, other = OrganisationFactory.create(), OrganisationFactory.create()
    site = DepotSite.objects.create(
        code="acme-depot", name="ACME", organisation=acme, threshold_w=100_000, demand_charge=Decimal(0)
    )
    users = {}
    for name, org, role in (("alice", acme, Role.FLEET_MANAGER), ("grid", acme, Role.UTILITY),
                            ("bob", other, Role.FLEET_MANAGER)):  # fmt: skip
        users[name] = UserFactory.create(username=name)
        Membership.objects.create(user=users[name], organisation=org, role=role)
    users["olga"] = UserFactory.create(username="olga", is_staff=True)
    return {"site": site, "acme": acme, "other": other, **users}


def _as(user: Any, key: Any = None) -> APIClient:
    client = APIClient()
    if key is None:
        client.force_login(user)
    else:
        client.force_authenticate(user, token=key)
    return client


URL = "/api/peak/sites/acme-depot/interval-data"


def test_a_fleet_manager_uploads_csv_and_the_same_file_again_stores_nothing_new(world):
    alice = _as(world["alice"])
    # When the site's fleet manager posts the CSV body
    first = alice.generic("POST", URL, CSV, content_type="text/csv")
    # Then both intervals are stored, in W, named after the audited upload
    assert first.status_code == 201, first.content
    body = first.json()
    assert (body["readings"], body["created"], body["unchanged"], body["source"]) == (2, 2, 0, "csv")
    assert sorted(SiteMeterReading.objects.values_list("import_w", flat=True)) == [179_900, 182_400]
    upload = SiteDataUpload.objects.get(pk=body["upload"])
    assert (upload.user, upload.actor_label, upload.outcome) == (world["alice"], "alice", "accepted")
    assert set(SiteMeterReading.objects.values_list("source_ref", flat=True)) == {f"upload {upload.pk} by alice"}
    # When the same file comes again: 200, nothing new
    again = alice.generic("POST", URL, CSV, content_type="text/csv")
    assert again.status_code == 200
    assert (again.json()["created"], again.json()["unchanged"]) == (0, 2)
    assert SiteMeterReading.objects.count() == 2


def test_a_bad_csv_line_is_a_problem_naming_the_line_and_nothing_is_stored(world):
    bad = CSV + "2026-12-01T00:30:00,15,170\n"  # line 4: no UTC offset
    response = _as(world["alice"]).generic("POST", URL, bad, content_type="text/csv; charset=utf-8")
    assert response.status_code == 400
    assert response["Content-Type"] == PROBLEM
    problem = response.json()
    assert (problem["code"], problem["status"]) == ("invalid", 400)
    assert [e["line"] for e in problem["errors"]] == [4]
    assert "no UTC offset" in problem["errors"][0]["detail"]
    assert SiteMeterReading.objects.count() == 0
    assert SiteDataUpload.objects.get().outcome == "refused"


def test_a_bad_json_reading_is_a_problem_with_its_pointer(world):
    body = {"readings": [{"interval_start": "2026-12-01T05:00:00Z", "interval_minutes": 15, "import_w": 1.5}]}
    response = _as(world["alice"]).post(URL, body, format="json")
    assert response.status_code == 400
    assert [e["pointer"] for e in response.json()["errors"]] == ["#/readings/0"]


def test_a_json_file_is_taken_as_json_and_a_csv_body_as_csv(world):
    document = b'{"readings": [{"interval_start": "2026-12-01T05:00:00Z", "interval_minutes": 5, "import_w": 7}]}'
    upload = SimpleUploadedFile("dec.json", document, content_type="application/json")
    response = _as(world["alice"]).post(URL, {"file": upload}, format="multipart")
    assert response.status_code == 201, response.content
    assert response.json()["source"] == "json"
    reading = SiteMeterReading.objects.get()
    assert (reading.interval_s, reading.import_w, reading.source) == (300, 7, "json")
    assert SiteDataUpload.objects.get().filename == "dec.json"


def test_another_media_type_is_415_and_a_form_without_a_file_is_400(world):
    alice = _as(world["alice"])
    assert alice.generic("POST", URL, "x", content_type="application/xml").status_code == 415
    assert alice.post(URL, {"other": "x"}, format="multipart").status_code == 400


def test_another_organisations_site_is_404_and_a_utility_is_403(world):
    assert _as(world["bob"]).generic("POST", URL, CSV, content_type="text/csv").status_code == 404
    assert _as(world["grid"]).generic("POST", URL, CSV, content_type="text/csv").status_code == 403
    assert _as(world["alice"]).generic("POST", "/api/peak/sites/nowhere/interval-data", CSV,
                                       content_type="text/csv").status_code == 404  # fmt: skip
    assert SiteDataUpload.objects.count() == 0


def test_an_operator_uploads_to_any_site(world):
    assert _as(world["olga"]).generic("POST", URL, CSV, content_type="text/csv").status_code == 201


def test_a_key_needs_fleet_write_and_uploads_only_to_its_organisation(world):
    alice = world["alice"]
    reader, _ = ApiKey.objects.create_key(name="r", user=alice, scopes=[ApiScope.READ])
    elsewhere, _ = ApiKey.objects.create_key(
        name="e", user=alice, scopes=[ApiScope.FLEET_WRITE], organisation=world["other"]
    )
    writer, _ = ApiKey.objects.create_key(
        name="w", user=alice, scopes=[ApiScope.FLEET_WRITE], organisation=world["acme"]
    )
    assert _as(alice, reader).generic("POST", URL, CSV, content_type="text/csv").status_code == 403
    assert _as(alice, elsewhere).generic("POST", URL, CSV, content_type="text/csv").status_code == 404
    response = _as(alice, writer).generic("POST", URL, CSV, content_type="text/csv")
    assert response.status_code == 201
    assert SiteDataUpload.objects.get().actor_label == f"alice (API key {writer.prefix})"
