"""Utility program configuration: validation, audit, tenancy, credentials, the status page."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from django.db.models import ProtectedError
from django.test import Client, override_settings
from django.utils import timezone
from rest_framework.test import APIClient

from fleet.models import ApiScope, Membership, Role
from fleet.services.accounts import api_key_issue
from tests.fleet.factories import FleetFactory, UserFactory
from tests.vpp.utility.factories import UtilityProgramFactory
from vpp.utility.models import UtilityProgram, UtilityProgramChange
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
        ({"secret_env": "UTILITY_ACME_KEY"}, "secret_env"),  # not the organisation's prefix
        ({"secret_env": "{prefix}"}, "secret_env"),  # the prefix alone
        ({"endpoint": "ftp://vtn.example.com/"}, "endpoint"),
        ({"endpoint": "http://vtn.example.com/OpenADR2/Simple/2.0b"}, "endpoint"),  # the secret would go in clear
        ({"protocol": "ieee2030_5"}, "cert_file"),
        ({"protocol": "openadr3"}, "secret_env"),
        ({"protocol": "openadr3", "secret_env": "{prefix}SECRET"}, "program_ref"),
    ],
)
def test_it_refuses_credentials_outside_their_place_and_bad_fields(extra: dict[str, str], field: str) -> None:
    fleet = FleetFactory.create()
    prefix = f"UTILITY_ORG{fleet.organisation.pk}_"
    extra = {k: v.replace("{prefix}", prefix) for k, v in extra.items()}
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


def _two_organisations_and_a_key_of_the_first() -> tuple[UtilityProgram, UtilityProgram, APIClient, Any]:
    """A bidding admin of two organisations, a program in each, and the admin's read key narrowed to the first."""
    mine, theirs = UtilityProgramFactory.create(), UtilityProgramFactory.create()
    admin = _member_of(mine)
    Membership.objects.create(user=admin, organisation=theirs.organisation, role=Role.BIDDING_ADMIN)
    _, raw = api_key_issue(
        user=admin,
        scopes=[ApiScope.READ],
        expires_at=timezone.now() + timedelta(days=1),
        organisation=mine.organisation,
        name="org A only",
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Api-Key {raw}")
    return mine, theirs, client, admin


def test_a_key_narrowed_to_one_organisation_lists_and_reads_that_organisations_programs_only() -> None:
    # Given a bidding admin of organisations A and B, with a key narrowed to A
    mine, theirs, key, admin = _two_organisations_and_a_key_of_the_first()
    # When the key lists the programs and reads each one, with its status, events and reports
    listed = [p["id"] for p in key.get("/api/utility/programs/").json()["results"]]
    # Then A's program is there and B's is not found, as if it were another tenant's
    assert listed == [mine.pk]
    for suffix in ("", "events/", "reports/"):
        assert key.get(f"/api/utility/programs/{mine.pk}/{suffix}").status_code == 200, suffix
        assert key.get(f"/api/utility/programs/{theirs.pk}/{suffix}").status_code == 404, suffix
    assert key.get(f"/api/utility/programs/{mine.pk}/").json()["healthy"] is False  # the status is A's to see
    # while the same person signed in (not limited by a key) sees both
    assert len(_api(admin).get("/api/utility/programs/").json()["results"]) == 2


def test_a_key_narrowed_to_one_organisation_neither_creates_nor_changes_a_program_of_the_other() -> None:
    # Given a bidding admin of organisations A and B, with a key narrowed to A
    _, theirs, key, _ = _two_organisations_and_a_key_of_the_first()
    fleet_b = FleetFactory.create(organisation=theirs.organisation)
    # When the key tries to enrol B's fleet and to change B's program
    created = key.post("/api/utility/programs/", _body(fleet_b), format="json")
    changed = key.patch(f"/api/utility/programs/{theirs.pk}/", {"enabled": False}, format="json")
    # Then both are refused and nothing changed (keys never write programs: a change is a person's)
    assert (created.status_code, changed.status_code) == (403, 403)
    assert UtilityProgram.objects.count() == 2
    theirs.refresh_from_db()
    assert theirs.enabled


def _member_of(program: UtilityProgram, role: str = Role.BIDDING_ADMIN) -> Any:
    user = UserFactory.create()
    Membership.objects.create(user=user, organisation=program.organisation, role=role)
    return user


def test_credentials_are_read_from_files_and_the_environment(tmp_path: Path, monkeypatch: Any) -> None:
    # Given the organisation's credentials directory with a certificate, and a secret in a variable of its prefix
    program = UtilityProgramFactory.create()
    slug, prefix = program.organisation.slug, f"UTILITY_ORG{program.organisation.pk}_"
    (tmp_path / slug).mkdir()
    (tmp_path / slug / "ven.pem").write_text("-----BEGIN CERTIFICATE-----\n")
    monkeypatch.setenv(f"{prefix}TOKEN", "t0ken")
    with override_settings(UTILITY_CREDENTIALS_DIR=tmp_path):
        program.cert_file, program.secret_env = "ven.pem", f"{prefix}TOKEN"
        # When the client reads them
        found = program_credentials(program)
        # Then the path is inside the organisation's directory and the secret came from the environment, never shown
        assert found.cert_file == tmp_path / slug / "ven.pem"
        assert found.secret == "t0ken"
        assert "t0ken" not in repr(found)
        # And a missing variable or file is an error the connection reports
        monkeypatch.delenv(f"{prefix}TOKEN")
        with pytest.raises(CredentialError, match=f"{prefix}TOKEN is not set"):
            program_credentials(program)
        program.cert_file = "gone.pem"
        with pytest.raises(CredentialError, match=r"gone\.pem"):
            program_credentials(program)


def _org_dirs(tmp_path: Path, *fleets: Any) -> None:
    for fleet in fleets:
        (tmp_path / fleet.organisation.slug).mkdir()


def test_another_organisations_files_are_refused_alike_whether_they_exist_or_not(tmp_path: Path) -> None:
    # Given two organisations' credential directories, the other's holding a key
    mine, theirs = FleetFactory.create(), FleetFactory.create()
    _org_dirs(tmp_path, mine, theirs)
    (tmp_path / theirs.organisation.slug / "ven.key").write_text("their key\n")
    (tmp_path / "aggregator.key").write_text("the aggregator's own key\n")
    # and a link in mine pointing into theirs
    (tmp_path / mine.organisation.slug / "link.key").symlink_to(tmp_path / theirs.organisation.slug / "ven.key")
    admin = _member(mine)
    with override_settings(UTILITY_CREDENTIALS_DIR=tmp_path):
        answers = {}
        for name in (f"../{theirs.organisation.slug}/ven.key", f"../{theirs.organisation.slug}/nothing.key",
                     "../aggregator.key", "../nothing.key", "link.key", str(tmp_path / "aggregator.key")):  # fmt: skip
            # When my bidding admin names it
            response = _api(admin).post("/api/utility/programs/", _body(mine, key_file=name), format="json")
            assert response.status_code == 400, name
            answers[name] = [e["detail"] for e in response.json()["errors"]]
        # Then every name is refused with the same words: whether a file exists there is not told
        assert len({str(a) for a in answers.values()}) == 1, answers
        assert str(tmp_path) not in str(list(answers.values()))  # nor where the directory is
        # And a file of my own directory is taken (it need not exist yet: the operator may install it later)
        ok = _api(admin).post("/api/utility/programs/", _body(mine, key_file="sub/ven.key"), format="json")
        assert ok.status_code == 201, ok.json()
        assert (ok.json()["credentials_dir"], ok.json()["secret_env_prefix"]) == (
            f"{mine.organisation.slug}/",
            f"UTILITY_ORG{mine.organisation.pk}_",
        )


def test_a_link_out_of_the_organisations_directory_is_refused_when_the_client_starts(tmp_path: Path) -> None:
    # Given a program naming a file that an operator later made a link to another organisation's key
    program = UtilityProgramFactory.create(key_file="ven.key")
    theirs = FleetFactory.create()
    (tmp_path / program.organisation.slug).mkdir()
    _org_dirs(tmp_path, theirs)
    (tmp_path / theirs.organisation.slug / "ven.key").write_text("their key\n")
    (tmp_path / program.organisation.slug / "ven.key").symlink_to(tmp_path / theirs.organisation.slug / "ven.key")
    # When its credentials are read, then they are refused
    with override_settings(UTILITY_CREDENTIALS_DIR=tmp_path), pytest.raises(CredentialError, match="key_file"):
        program_credentials(program)


def test_another_organisations_secret_variable_is_refused(monkeypatch: Any) -> None:
    mine, theirs = FleetFactory.create(), FleetFactory.create()
    monkeypatch.setenv(f"UTILITY_ORG{theirs.organisation.pk}_SECRET", "theirs")
    body = _body(mine, secret_env=f"UTILITY_ORG{theirs.organisation.pk}_SECRET")
    response = _api(_member(mine)).post("/api/utility/programs/", body, format="json")
    assert response.status_code == 400
    (error,) = response.json()["errors"]
    assert error["pointer"] == "#/secret_env"
    assert f"UTILITY_ORG{mine.organisation.pk}_" in error["detail"]
    # The same name unset answers the same
    monkeypatch.delenv(f"UTILITY_ORG{theirs.organisation.pk}_SECRET")
    again = _api(_member(mine)).post("/api/utility/programs/", body, format="json")
    assert again.json()["errors"] == response.json()["errors"]


def test_plain_http_is_taken_only_where_the_operator_allows_it() -> None:
    fleet = FleetFactory.create()
    body = _body(fleet, endpoint="http://127.0.0.1:8080/OpenADR2/Simple/2.0b")
    assert _api(_member(fleet)).post("/api/utility/programs/", body, format="json").status_code == 400
    with override_settings(UTILITY_ALLOW_HTTP=True):
        assert _api(_member(fleet)).post("/api/utility/programs/", body, format="json").status_code == 201


@pytest.mark.django_db(transaction=True)
async def test_the_runner_does_not_start_a_stored_http_program() -> None:
    # Given a program stored with a plain http endpoint (before the rule, or while the operator allowed it)
    from asgiref.sync import sync_to_async

    from vpp.utility.dispatch import EventRuns
    from vpp.utility.runner import program_start

    program = await sync_to_async(UtilityProgramFactory.create)(endpoint="http://127.0.0.1:9/OpenADR2/Simple/2.0b")
    program = await UtilityProgram.objects.select_related("organisation", "product").aget(pk=program.pk)
    # When the runner starts it, it does not, and says why
    assert await program_start(program, EventRuns()) is None
    await program.arefresh_from_db()
    assert program.last_error.startswith("endpoint: an https URL")


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
    assert "credentials directory" in refused.content.decode()
    assert not UtilityProgram.objects.exists()
    form["key_file"] = "acme/ven.key"
    assert client.post("/admin/vpp/utilityprogram/add/", form).status_code == 302
    program = UtilityProgram.objects.get()
    assert [(c.action, c.actor_label) for c in program.changes.all()] == [("created", operator.username)]


def _reg_d_pk() -> int:
    from tests.vpp.utility.factories import reg_d

    return reg_d().pk


def test_a_program_is_never_deleted_with_its_audit_trail() -> None:
    # Given a program created through the services (its creation audited)
    fleet = FleetFactory.create()
    admin = _member(fleet)
    pk = _api(admin).post("/api/utility/programs/", _body(fleet), format="json").json()["id"]
    operator = UserFactory.create(is_staff=True, is_superuser=True)
    client = Client()
    client.force_login(operator)
    # When an operator tries to delete it in the admin, then it is refused (disable it instead)
    assert client.get(f"/admin/vpp/utilityprogram/{pk}/delete/").status_code == 403
    response = client.post(
        "/admin/vpp/utilityprogram/", {"action": "delete_selected", "_selected_action": [pk], "post": "yes"}
    )
    assert response.status_code in (200, 302)
    # And deleting the row anyway (a shell, a script) is refused by the database model: the trail stays
    with pytest.raises(ProtectedError):
        UtilityProgram.objects.get(pk=pk).delete()
    assert UtilityProgram.objects.filter(pk=pk).exists()
    assert UtilityProgramChange.objects.filter(program_id=pk, action="created").exists()
