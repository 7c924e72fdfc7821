"""Operator commands for organisations and users: roles, one organisation per membership, passwords never on argv."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.core.management.base import CommandError

from fleet.models import Membership, Organisation, Role

pytestmark = pytest.mark.django_db

PASSWORD = "a-long-enough-pass-phrase-42"


@pytest.fixture
def password_file(tmp_path: Path) -> Path:
    path = tmp_path / "password"
    path.write_text(PASSWORD + "\n")
    return path


def test_it_adds_an_organisation_and_a_fleet_manager_in_it(password_file: Path) -> None:
    # When an operator scripts a new customer
    call_command("org", "add", "acme", "--name", "ACME Logistics")
    call_command(
        "user", "add", "alice", "--org", "acme", "--role", "fleet-manager", "--password-file", str(password_file)
    )

    # Then alice is ACME's fleet manager, not Django staff, and her password is stored hashed
    alice = User.objects.get(username="alice")
    assert (alice.is_staff, alice.check_password(PASSWORD), PASSWORD not in alice.password) == (False, True, True)
    membership = Membership.objects.get(user=alice)
    assert (membership.organisation.name, membership.role) == ("ACME Logistics", Role.FLEET_MANAGER)


def test_an_operator_is_staff_and_belongs_to_no_organisation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VPP_USER_PASSWORD", PASSWORD)
    call_command("user", "add", "olga", "--role", "operator")
    olga = User.objects.get(username="olga")
    assert olga.is_staff
    assert not Membership.objects.filter(user=olga).exists()


def test_it_refuses_a_member_without_an_organisation_or_a_password(password_file: Path) -> None:
    with pytest.raises(CommandError, match="--org"):
        call_command("user", "add", "bob", "--role", "utility", "--password-file", str(password_file))
    with pytest.raises(CommandError, match="no organisation 'nope'"):
        call_command("user", "add", "bob", "--org", "nope", "--role", "utility", "--password-file", str(password_file))
    Organisation.objects.create(slug="acme", name="ACME")
    with pytest.raises(CommandError, match="VPP_USER_PASSWORD"):
        call_command("user", "add", "bob", "--org", "acme", "--role", "utility")
    assert not User.objects.filter(username="bob").exists()


def test_it_refuses_a_weak_password(tmp_path: Path) -> None:
    Organisation.objects.create(slug="acme", name="ACME")
    weak = tmp_path / "weak"
    weak.write_text("password1234\n")
    with pytest.raises(CommandError):
        call_command("user", "add", "carl", "--org", "acme", "--role", "bidding-admin", "--password-file", str(weak))
    assert not User.objects.filter(username="carl").exists()


def test_the_user_command_takes_no_password_argument() -> None:
    # The password never travels on the command line.
    with pytest.raises(CommandError):
        call_command("user", "add", "dan", "--role", "operator", "--password", PASSWORD)


def test_it_refuses_a_short_password_through_djangos_validators(tmp_path: Path) -> None:
    Organisation.objects.create(slug="acme", name="ACME")
    short = tmp_path / "short"
    short.write_text("x7Kq9!mZ\n")
    with pytest.raises(CommandError, match="too short"):
        call_command("user", "add", "eve", "--org", "acme", "--role", "utility", "--password-file", str(short))
    assert not User.objects.filter(username="eve").exists()
