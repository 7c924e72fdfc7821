"""Utility program configuration: validation, audit, tenancy, credentials, the status page."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.models import ApiScope, Membership, Role
from tests.fleet.factories import FleetFactory, UserFactory
from tests.vpp.utility.factories import UtilityProgramFactory
from vpp.utility.models import UtilityProgram
from vpp.utility.selectors import CredentialError, program_credentials
from vpp.utility.services import connection_contact, connection_error

pytestmark = pytest.mark.django_db


def _member(fleet: Any, role: str = Role.BIDDING_ADMIN) -> Any:
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=fleet.organisation, role=role)
    return user


def _api(user: Any) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def _body(fleet: Any, **extra: Any) -> dict[str, Any]:
    return {
        "organisation": fleet.organisation.slug,
        "name": "SCE CBP",
        "protocol": "openadr2b",
        "endpoint": "https://vtn.example.com/OpenADR2/Simple/2.0b",
        "client_name": "acme-ven",
        "portfolio": f"fleet-{fleet.pk}",
        "product": "pjm:reg-d",
        **extra,
    }


def test_a_bidding_admin_enrols_a_fleet_and_the_change_is_audited() -> None:
    # Given a bidding admin of the fleet's organisation
    fleet = FleetFactory.create()
    admin = _member(fleet)
    # When they enrol the fleet in a program, then disable it
    created = _api(admin).post("/api/utility/programs/", _body(fleet), format="json")
    assert created.status_code == 201, created.json()
    pk = created.json()["id"]
    changed = _api(admin).patch(f"/api/utility/programs/{pk}/", {"enabled": False}, format="json")
    # Then both are stored with who did them and what changed
    assert changed.status_code == 200
    detail = _api(admin).get(f"/api/utility/programs/{pk}/").json()
    assert [(c["action"], c["actor_label"]) for c in detail["changes"]] == [
        ("created", admin.username),
        ("disabled", admin.username),
    ]
    assert detail["changes"][1]["changes"] == {"enabled": ["True", "False"]}
    assert detail["product"] == "pjm:reg-d"
    assert detail["healthy"] is False  # never connected


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        ({"cert_file": "../../etc/vpp/pki/ca.key"}, "cert_file"),
        ({"key_file": "/var/lib/vpp/secret_key"}, "key_file"),
        ({"secret_env": "SECRET_KEY"}, "secret_env"),
        ({"secret_env": "hunter2-the-token-itself"}, "secret_env"),
        ({"product": "pjm:nope"}, "product"),
        ({"endpoint": "ftp://vtn.example.com/"}, "endpoint"),
        ({"protocol": "ieee2030_5"}, "cert_file"),
        ({"protocol": "openadr3"}, "secret_env"),
        ({"protocol": "openadr3", "secret_env": "UTILITY_ACME_SECRET"}, "program_ref"),
    ],
)
def test_it_refuses_credentials_outside_their_place_and_bad_fields(extra: dict[str, str], field: str) -> None:
    fleet = FleetFactory.create()
    response = _api(_member(fleet)).post("/api/utility/programs/", _body(fleet, **extra), format="json")
    assert response.status_code == 400
    assert response["Content-Type"] == "application/problem+json"
    assert f"#/{field}" in [e["pointer"] for e in response.json()["errors"]]
    assert not UtilityProgram.objects.exists()


def test_a_program_may_deploy_a_reserve_product() -> None:
    # Given PJM synchronized reserve (seeded by the markets migrations), when a program names it
    fleet = FleetFactory.create()
    body = _body(fleet, product="pjm:sync-reserve")
    response = _api(_member(fleet)).post("/api/utility/programs/", body, format="json")
    # Then it is taken: its events deploy that product
    assert response.status_code == 201, response.json()
    assert UtilityProgram.objects.get().product.code == "sync-reserve"


def test_it_refuses_another_organisations_portfolio() -> None:
    fleet, elsewhere = FleetFactory.create(), FleetFactory.create()
    body = _body(fleet, portfolio=f"fleet-{elsewhere.pk}")
    response = _api(_member(fleet)).post("/api/utility/programs/", body, format="json")
    assert response.status_code == 400
    assert "#/portfolio" in [e["pointer"] for e in response.json()["errors"]]


def test_it_refuses_enrolling_an_organisation_one_is_not_bidding_admin_of() -> None:
    fleet, elsewhere = FleetFactory.create(), FleetFactory.create()
    _member(elsewhere)  # a bidding admin somewhere
    manager = _member(fleet, Role.FLEET_MANAGER)
    assert _api(manager).post("/api/utility/programs/", _body(fleet), format="json").status_code == 403
    stranger = _member(elsewhere)
    assert _api(stranger).post("/api/utility/programs/", _body(fleet), format="json").status_code == 403


def test_keys_read_programs_and_never_write_them() -> None:
    program = UtilityProgramFactory.create()
    admin = _member_of(program)
    from fleet.models import ApiKey

    key, _ = ApiKey.objects.create_key(name="k", user=admin, scopes=[ApiScope.READ])
    client = APIClient()
    client.force_authenticate(admin, token=key)
    assert client.get(f"/api/utility/programs/{program.pk}/").status_code == 200
    assert client.patch(f"/api/utility/programs/{program.pk}/", {"enabled": False}, format="json").status_code == 403


def _member_of(program: UtilityProgram, role: str = Role.BIDDING_ADMIN) -> Any:
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=program.organisation, role=role)
    return user


def test_credentials_are_read_from_files_and_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    # Given a credentials directory with a certificate and a secret in a UTILITY_ variable
    (tmp_path / "ven.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv("UTILITY_ACME_TOKEN", "t0ken")
    with override_settings(UTILITY_CREDENTIALS_DIR=tmp_path):
        program = UtilityProgramFactory.create(cert_file="ven.pem", secret_env="UTILITY_ACME_TOKEN")
        # When the client reads them
        found = program_credentials(program)
        # Then the path is inside the directory and the secret came from the environment, never shown
        assert found.cert_file == tmp_path / "ven.pem"
        assert found.secret == "t0ken"
        assert "t0ken" not in repr(found)
        # And a missing variable or file is an error the connection reports
        monkeypatch.delenv("UTILITY_ACME_TOKEN")
        with pytest.raises(CredentialError, match="UTILITY_ACME_TOKEN is not set"):
            program_credentials(program)
        program.cert_file = "gone.pem"
        with pytest.raises(CredentialError, match=r"gone\.pem"):
            program_credentials(program)


def test_the_status_page_shows_last_contact_event_and_error() -> None:
    # Given a program whose server answered once and then failed
    program = UtilityProgramFactory.create(name="CPP summer")
    earlier = timezone.now() - timedelta(minutes=5)
    connection_contact(program_id=program.pk, registration_ref="reg-42", at=earlier)
    connection_error(program_id=program.pk, error="VTN answered 503 Service Unavailable")
    manager = _member_of(program, Role.FLEET_MANAGER)
    client = Client()
    client.force_login(manager)
    # When a fleet manager of the organisation opens it
    page = client.get(f"/utility/{program.pk}/").content.decode()
    listing = client.get("/utility/").content.decode()
    # Then the error and the contact are there, and the list says the connection is failing
    assert "VTN answered 503 Service Unavailable" in page
    assert "reg-42" in page
    assert "CPP summer" in listing
    assert "failing" in listing
    program.refresh_from_db()
    assert program.errors_in_a_row == 1
    assert not program.healthy


def test_an_operator_adds_a_program_in_the_admin_with_the_same_rules_and_audit() -> None:
    fleet = FleetFactory.create()
    operator = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    form = {
        "organisation": fleet.organisation.pk,
        "name": "PG&E ELRP",
        "protocol": "openadr3",
        "endpoint": "https://vtn.example.com/openadr3/3.0.1",
        "client_name": "acme",
        "program_ref": "ELRP",
        "portfolio": f"fleet-{fleet.pk}",
        "product": _reg_d_pk(),
        "key_file": "../secret_key",
        "level_step_w": 0,
        "poll_s": 10,
        "report_s": 60,
        "enabled": "on",
        "changes-TOTAL_FORMS": 0,
        "changes-INITIAL_FORMS": 0,
    }
    refused = client.post("/admin/vpp/utilityprogram/add/", form)
    assert refused.status_code == 200  # the form again, with the error
    assert "UTILITY_CREDENTIALS_DIR" in refused.content.decode()
    assert not UtilityProgram.objects.exists()
    form["key_file"] = "acme/ven.key"
    assert client.post("/admin/vpp/utilityprogram/add/", form).status_code == 302
    program = UtilityProgram.objects.get()
    assert [(c.action, c.actor_label) for c in program.changes.all()] == [("created", operator.username)]


def _reg_d_pk() -> int:
    from tests.vpp.utility.factories import reg_d

    return reg_d().pk
