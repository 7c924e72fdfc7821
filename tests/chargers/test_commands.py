"""The idtoken command and the admin pages (``station`` is fleet's: tests/fleet/test_station_command.py)."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.utils import timezone

from chargers.models import IdToken, StationCommand, StationEvent, Transaction, TransactionEvent
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db


def test_idtoken_add_with_group():
    call_command("idtoken", "add", "TAG-1", "--type", "ISO14443", "--status", "Accepted", "--group", "FLEET-A")
    token = IdToken.objects.get(id_token="TAG-1")
    assert token.group is not None
    assert (token.status, token.group.id_token, token.group.type) == ("Accepted", "FLEET-A", "ISO14443")


def test_admin_lists_and_searches_stations_and_messages(admin_client):
    StationFactory.create(station_id="needle-7")
    pages = ["/admin/chargers/station/?q=needle", "/admin/chargers/messagelog/?q=x", "/admin/chargers/metervalue/"]
    for url in [*pages, "/admin/chargers/stationcommand/?q=needle"]:
        response = admin_client.get(url)
        assert response.status_code == 200
    assert b"needle-7" in admin_client.get("/admin/chargers/station/?q=needle").content


def test_admin_change_pages_show_a_station_and_a_transaction_with_its_events(admin_client):
    station = StationFactory.create(station_id="edit-me")
    tx = Transaction.objects.create(station=station, transaction_id="tx-admin-1")
    TransactionEvent.objects.create(
        transaction=tx,
        seq_no=0,
        event_type="Started",
        trigger_reason="CablePluggedIn",
        timestamp=timezone.now(),
        received_at=timezone.now(),
        payload={},
    )
    page = admin_client.get(f"/admin/chargers/station/{station.pk}/change/")
    assert page.status_code == 200
    assert b'name="new_password"' in page.content
    page = admin_client.get(f"/admin/chargers/transaction/{tx.pk}/change/")
    assert page.status_code == 200
    assert b"CablePluggedIn" in page.content


def test_the_audit_trail_is_read_only_in_the_admin(admin_client):
    # Given a command in the audit trail
    station = StationFactory.create(station_id="audited-1")
    row = StationCommand.objects.create(
        station=station, station_ident="audited-1", actor_label="ops", action="Reset", outcome="answered",
        requested_at=timezone.now(),
    )  # fmt: skip
    # Then even a superuser can read it but not add, change or delete rows
    page = admin_client.get(f"/admin/chargers/stationcommand/{row.pk}/change/")
    assert page.status_code == 200
    assert b"audited-1" in page.content
    assert admin_client.get("/admin/chargers/stationcommand/add/").status_code == 403
    assert admin_client.post(f"/admin/chargers/stationcommand/{row.pk}/delete/", {"post": "yes"}).status_code == 403
    assert StationCommand.objects.filter(pk=row.pk).exists()


def test_admin_accepts_pending_stations_and_records_who_did(admin_client, admin_user):
    # Given a Pending station (offline) and an Accepted one
    pending = StationFactory.create(boot_status="Pending")
    accepted = StationFactory.create()
    # When an operator runs the admin action on both
    response = admin_client.post(
        "/admin/chargers/station/",
        {"action": "accept", "index": 0, "_selected_action": [pending.pk, accepted.pk]},
        follow=True,
    )
    # Then the Pending one is Accepted (at its next boot: it is offline), recorded under the operator
    assert response.status_code == 200
    assert f"{pending.station_id.capitalize()}: Pending -&gt; Accepted (offline" in response.content.decode()
    pending.refresh_from_db()
    assert pending.boot_status == "Accepted"
    event = StationEvent.objects.get(station=pending, kind="Registration")
    assert event.data["actor"] == f"admin:{admin_user.username}"
    assert not StationEvent.objects.filter(station=accepted).exists()
