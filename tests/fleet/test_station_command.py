"""``manage.py station``: add stations for an organisation (password from a file or the environment), move them
(assign), command one (call)."""

from __future__ import annotations

from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from chargers.models import Station, StationCommand, StationEvent
from fleet.models import ApiKey, Organisation, StationOwnership
from tests.chargers.factories import StationFactory
from tests.fleet.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


def _password_file(tmp_path: Path, password: str) -> str:
    path = tmp_path / "pw"
    path.write_text(password + "\n")
    path.chmod(0o600)
    return str(path)


def _owner(station_id: str) -> str:
    return StationOwnership.objects.get(station__station_id=station_id).organisation.slug


def test_station_add_provisions_many_stations_for_an_organisation_from_a_password_file(tmp_path):
    # Given an organisation and a password file
    OrganisationFactory.create(slug="depot-co")
    password_file = _password_file(tmp_path, "a-very-long-secret-01")
    # When three stations are added for it
    call_command(
        "station", "add", "fleet-1", "fleet-2", "fleet-3", "--org", "depot-co", "--password-file", password_file
    )
    # Then they exist, owned by it, with the file's password hashed (the newline is not part of it)
    stations = Station.objects.filter(station_id__startswith="fleet-")
    assert stations.count() == 3
    for station in stations:
        assert "a-very-long-secret-01" not in station.password_hash
        assert station.check_password("a-very-long-secret-01")
        assert not station.check_password("a-very-long-secret-02")
        assert _owner(station.station_id) == "depot-co"


def test_station_add_reads_the_password_from_the_environment_and_keeps_it_unless_update(monkeypatch):
    OrganisationFactory.create(slug="depot-co")
    monkeypatch.setenv("STATION_PASSWORD", "first-password-00001")
    call_command("station", "add", "s-1", "--org", "depot-co")
    monkeypatch.setenv("STATION_PASSWORD", "second-password-0002")
    call_command("station", "add", "s-1", "--org", "depot-co")
    assert Station.objects.get(station_id="s-1").check_password("first-password-00001")
    call_command("station", "add", "s-1", "--org", "depot-co", "--update", "--boot-status", "Pending")
    station = Station.objects.get(station_id="s-1")
    assert station.check_password("second-password-0002")
    assert station.boot_status == "Pending"


def test_station_add_takes_no_password_on_the_command_line_and_needs_one(tmp_path, monkeypatch):
    OrganisationFactory.create(slug="depot-co")
    monkeypatch.delenv("STATION_PASSWORD", raising=False)
    with pytest.raises(CommandError):
        call_command("station", "add", "s-2", "--org", "depot-co", "--password", "a-very-long-secret-01")
    with pytest.raises(CommandError, match="no password"):
        call_command("station", "add", "s-2", "--org", "depot-co")
    with pytest.raises(CommandError, match="16-40"):
        call_command("station", "add", "s-2", "--org", "depot-co", "--password-file", _password_file(tmp_path, "short"))
    assert not Station.objects.filter(station_id="s-2").exists()


def test_station_add_needs_an_existing_organisation_unless_told_to_create_it(tmp_path):
    password_file = _password_file(tmp_path, "a-very-long-secret-01")
    with pytest.raises(CommandError, match="no organisation 'bench'"):
        call_command("station", "add", "b-1", "--org", "bench", "--password-file", password_file)
    assert not Station.objects.filter(station_id="b-1").exists()
    call_command("station", "add", "b-1", "--org", "bench", "--create-org", "--password-file", password_file)
    assert _owner("b-1") == "bench"


def test_station_add_leaves_a_station_another_organisation_owns_where_it_is(tmp_path, capsys):
    # Given a station owned by one organisation
    OrganisationFactory.create(slug="first")
    OrganisationFactory.create(slug="second")
    password_file = _password_file(tmp_path, "a-very-long-secret-01")
    call_command("station", "add", "s-3", "--org", "first", "--password-file", password_file)
    # When it is added again for another, then it stays with the first and the command says so
    call_command("station", "add", "s-3", "--org", "second", "--password-file", password_file)
    assert _owner("s-3") == "first"
    assert "station assign" in capsys.readouterr().err


def test_station_assign_moves_stations_and_refuses_unknown_ones_changing_nothing():
    # Given two stations of one organisation
    first, second = OrganisationFactory.create(slug="first"), OrganisationFactory.create(slug="second")
    for station_id in ("m-1", "m-2"):
        StationOwnership.objects.create(station=StationFactory.create(station_id=station_id), organisation=first)
    # When the operator names an unknown station among them, then nothing moves
    with pytest.raises(CommandError, match="no such station: m-9"):
        call_command("station", "assign", "m-1", "m-9", "--org", "second")
    assert _owner("m-1") == "first"
    # And when all are known they move (an unowned station gets its first owner)
    StationFactory.create(station_id="m-3")
    call_command("station", "assign", "m-1", "m-2", "m-3", "--org", "second")
    assert [_owner(s) for s in ("m-1", "m-2", "m-3")] == ["second"] * 3
    assert Organisation.objects.get(pk=second.pk).station_ownerships.count() == 3


def test_station_call_without_a_server_says_so_and_revokes_its_one_call_key(settings, django_user_model, monkeypatch):
    # Given no Redis (the call goes through the server), no $VPP_API_KEY, and a superuser
    settings.REDIS_URL = None
    monkeypatch.delenv("VPP_API_KEY", raising=False)
    StationFactory.create(station_id="s-4")
    root = django_user_model.objects.create_superuser("root", password="x" * 20)
    # When the server cannot be reached
    with pytest.raises(CommandError, match="cannot reach the server"):
        call_command("station", "call", "s-4", "Reset", '{"type": "Immediate"}', "--server", "http://127.0.0.1:9")
    # Then the key issued for that one call is revoked (and expires within minutes anyway)
    key = ApiKey.objects.get(user=root)
    assert key.revoked
    assert key.scopes == ["command"]


def test_station_call_through_the_server_needs_a_staff_user_or_a_key(settings, monkeypatch):
    settings.REDIS_URL = None
    monkeypatch.delenv("VPP_API_KEY", raising=False)
    StationFactory.create(station_id="s-5")
    with pytest.raises(CommandError, match="no active superuser"):
        call_command("station", "call", "s-5", "Reset", '{"type": "Immediate"}', "--server", "http://127.0.0.1:9")


@pytest.mark.django_db(transaction=True)  # the service writes its audit row through database_sync_to_async
def test_station_call_in_process_is_audited_as_the_command_line_and_its_os_user(settings, layer, monkeypatch, capsys):
    # Given a shared channel layer (the command calls in process) and a connected station
    settings.REDIS_URL = "redis://configured"
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    StationFactory.create(station_id="s-5", ocpp_version="2.1", channel_name="socket.s-5")
    # When the operator resets it from the command line
    call_command("station", "call", "s-5", "Reset", '{"type": "Immediate"}')
    # Then the station's answer is printed and the call is in the audit trail under "cli:alice"
    assert '"status": "Accepted"' in capsys.readouterr().out
    assert [m["action"] for _, m in layer.sent] == ["Reset"]
    row = StationCommand.objects.get()
    assert (row.actor_label, row.user_id, row.action, row.outcome) == ("cli:alice", None, "Reset", "answered")


@pytest.mark.django_db(transaction=True)  # the boot trigger's audit row is written through database_sync_to_async
def test_station_accept_accepts_a_pending_station_and_asks_an_online_one_to_boot(settings, layer, monkeypatch, capsys):
    # Given a shared channel layer, a Pending station online and one offline
    settings.REDIS_URL = "redis://configured"
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    StationFactory.create(station_id="p-1", boot_status="Pending", online=True, channel_name="socket.p-1")
    StationFactory.create(station_id="p-2", boot_status="Pending")
    # When the operator accepts both
    call_command("station", "accept", "p-1")
    call_command("station", "accept", "p-2")
    # Then both are Accepted, recorded under the operator, and only the online one was asked to boot (audited)
    out = capsys.readouterr().out
    assert "p-1: Pending -> Accepted (booting again now)" in out
    assert "p-2: Pending -> Accepted (offline: accepted at its next boot)" in out
    assert set(Station.objects.values_list("boot_status", flat=True)) == {"Accepted"}
    assert [(m["action"], m["payload"]) for _, m in layer.sent] == [
        ("TriggerMessage", {"requestedMessage": "BootNotification"})
    ]
    row = StationCommand.objects.get()
    assert (row.station_ident, row.actor_label, row.action, row.outcome) == (
        "p-1",
        "cli:alice",
        "TriggerMessage",
        "answered",
    )
    summaries = set(StationEvent.objects.filter(kind="Registration").values_list("summary", flat=True))
    assert summaries == {"Pending -> Accepted by cli:alice"}


def test_station_accept_refuses_an_unknown_station():
    with pytest.raises(CommandError, match="no station"):
        call_command("station", "accept", "nobody")


def _password_answer(status: str) -> dict:
    result = {
        "attributeStatus": status,
        "component": {"name": "SecurityCtrlr"},
        "variable": {"name": "BasicAuthPassword"},
    }
    return {"setVariableResult": [result]}


@pytest.mark.django_db(transaction=True)  # station_call writes through database_sync_to_async
def test_station_rotate_password_sends_each_station_its_own_and_keeps_only_its_hash(settings, layer, capsys):
    # Given two connected stations that accept a new password
    settings.REDIS_URL = "redis://configured"
    layer.answer = _password_answer("Accepted")
    for sid in ("r-1", "r-2"):
        StationFactory.create(station_id=sid, ocpp_version="2.1", channel_name=f"socket.{sid}")
    # When the operator rotates their passwords
    call_command("station", "rotate-password", "r-1", "r-2")
    # Then each got a distinct random password by SetVariables SecurityCtrlr.BasicAuthPassword
    sent = {m["payload"]["setVariableData"][0]["attributeValue"] for _, m in layer.sent}
    assert len(sent) == 2
    assert all(len(p) >= 16 for p in sent)
    assert "r-1: Accepted" in capsys.readouterr().out
    # And each station keeps the new password's hash as pending beside its current one
    for (_, message), sid in zip(layer.sent, ("r-1", "r-2"), strict=True):
        station = Station.objects.get(station_id=sid)
        assert station.check_pending_password(message["payload"]["setVariableData"][0]["attributeValue"])
        assert station.check_password("test-station-pass-0123")
    # And the password is nowhere in the audit trail, and the rotation is a station event
    audit = [str(p) for p in StationCommand.objects.values_list("payload", flat=True)]
    assert len(audit) == 2
    assert not any(p in row for p in sent for row in audit)
    assert StationEvent.objects.filter(kind="PasswordRotated").count() == 2


@pytest.mark.django_db(transaction=True)
def test_station_rotate_password_refused_by_the_station_keeps_the_old_one_only(settings, layer):
    # Given a station that refuses the new password
    settings.REDIS_URL = "redis://configured"
    layer.answer = _password_answer("Rejected")
    StationFactory.create(station_id="r-3", ocpp_version="2.1", channel_name="socket.r-3")
    # When its password is rotated, then the command says it kept it, and no pending password remains
    with pytest.raises(CommandError, match="kept their password: r-3"):
        call_command("station", "rotate-password", "r-3")
    station = Station.objects.get(station_id="r-3")
    assert station.password_pending_hash == ""
    assert station.check_password("test-station-pass-0123")
    assert "Rejected" in StationEvent.objects.get(kind="PasswordRotated").summary


def test_station_add_generates_a_distinct_password_per_station_into_a_private_file(tmp_path, monkeypatch):
    # Given no password anywhere
    monkeypatch.delenv("STATION_PASSWORD", raising=False)
    OrganisationFactory.create(slug="depot-co")
    out = tmp_path / "passwords.tsv"
    # When three stations are added with --passwords-out
    call_command("station", "add", "g-1", "g-2", "g-3", "--org", "depot-co", "--passwords-out", str(out))
    # Then the file is the owner's only, one line per station, each password distinct and the station's own
    assert out.stat().st_mode & 0o777 == 0o600
    lines = dict(line.split("\t") for line in out.read_text().splitlines())
    assert sorted(lines) == ["g-1", "g-2", "g-3"]
    assert len(set(lines.values())) == 3
    for sid, password in lines.items():
        assert Station.objects.get(station_id=sid).check_password(password)
    assert not Station.objects.get(station_id="g-1").check_password(lines["g-2"])


def test_station_add_passwords_out_refuses_to_overwrite_or_to_mix_with_a_given_password(tmp_path, monkeypatch):
    OrganisationFactory.create(slug="depot-co")
    existing = tmp_path / "passwords.tsv"
    existing.write_text("kept\n")
    monkeypatch.delenv("STATION_PASSWORD", raising=False)
    with pytest.raises(CommandError, match="cannot create the passwords file"):
        call_command("station", "add", "h-1", "--org", "depot-co", "--passwords-out", str(existing))
    assert existing.read_text() == "kept\n"
    assert not Station.objects.filter(station_id="h-1").exists()
    monkeypatch.setenv("STATION_PASSWORD", "a-very-long-secret-01")
    with pytest.raises(CommandError, match="generates the passwords"):
        call_command("station", "add", "h-1", "--org", "depot-co", "--passwords-out", str(tmp_path / "new.tsv"))
