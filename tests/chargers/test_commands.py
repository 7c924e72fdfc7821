"""Provisioning commands and the admin pages."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.test import Client
from django.utils import timezone

from chargers.models import IdToken, Station, Transaction, TransactionEvent
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db


def test_station_add_provisions_many_stations_with_hashed_passwords():
    call_command("station", "add", "fleet-1", "fleet-2", "fleet-3", "--password", "a-very-long-secret-01")
    stations = Station.objects.filter(station_id__startswith="fleet-")
    assert stations.count() == 3
    for station in stations:
        assert "a-very-long-secret-01" not in station.password_hash
        assert station.check_password("a-very-long-secret-01")
        assert not station.check_password("a-very-long-secret-02")


def test_station_add_keeps_existing_passwords_unless_update():
    call_command("station", "add", "s-1", "--password", "first-password-00001")
    call_command("station", "add", "s-1", "--password", "second-password-0002")
    assert Station.objects.get(station_id="s-1").check_password("first-password-00001")
    call_command("station", "add", "s-1", "--password", "second-password-0002", "--update")
    assert Station.objects.get(station_id="s-1").check_password("second-password-0002")


def test_station_add_refuses_a_password_ocpp_does_not_allow():
    with pytest.raises(CommandError, match="16-40"):
        call_command("station", "add", "s-2", "--password", "short")
    assert not Station.objects.filter(station_id="s-2").exists()


def test_idtoken_add_with_group():
    call_command("idtoken", "add", "TAG-1", "--type", "ISO14443", "--status", "Accepted", "--group", "FLEET-A")
    token = IdToken.objects.get(id_token="TAG-1")
    assert token.group is not None
    assert (token.status, token.group.id_token, token.group.type) == ("Accepted", "FLEET-A", "ISO14443")


def test_station_call_without_a_server_says_so(settings, monkeypatch):
    settings.REDIS_URL = None
    StationFactory.create(station_id="s-3")
    monkeypatch.setenv("VPP_API_KEY", "abcdefgh.some-key")
    with pytest.raises(CommandError, match="cannot reach the server"):
        call_command("station", "call", "s-3", "Reset", '{"type": "Immediate"}', "--server", "http://127.0.0.1:9")


def test_station_call_without_an_api_key_says_how_to_get_one(settings, monkeypatch):
    settings.REDIS_URL = None
    monkeypatch.delenv("VPP_API_KEY", raising=False)
    with pytest.raises(CommandError, match=r"VPP_API_KEY.*token add"):
        call_command("station", "call", "s-3", "Reset", '{"type": "Immediate"}', "--server", "http://127.0.0.1:9")


def test_admin_lists_and_searches_stations_and_messages(admin_client):
    StationFactory.create(station_id="needle-7")
    for url in ["/admin/chargers/station/?q=needle", "/admin/chargers/messagelog/?q=x", "/admin/chargers/metervalue/"]:
        response = admin_client.get(url)
        assert response.status_code == 200
    assert b"needle-7" in admin_client.get("/admin/chargers/station/?q=needle").content


def test_the_call_endpoint_requires_a_staff_user(client, django_user_model):
    assert client.post("/api/stations/x/call", {}, content_type="application/json").status_code == 401
    user = django_user_model.objects.create_user("plain", password="p" * 20)
    client.force_login(user)
    assert client.post("/api/stations/x/call", {}, content_type="application/json").status_code in (403,)


def test_the_call_endpoint_refuses_a_session_post_without_the_csrf_token(django_user_model):
    # Given a staff user signed in through the browser session (a client that enforces CSRF like a real browser)
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(django_user_model.objects.create_user("ops-csrf", password="p" * 20, is_staff=True))
    # When it posts without the CSRF token, then the call is refused before the body is read
    refused = browser.post("/api/stations/x/call", {}, content_type="application/json")
    assert (refused.status_code, refused.json()) == (403, {"error": "CSRF check failed"})
    # And with the cookie's token the request passes the check and is judged on its body
    browser.get("/admin/")  # its logout form sets the csrftoken cookie
    token = browser.cookies["csrftoken"].value
    judged = browser.post("/api/stations/x/call", {}, content_type="application/json", headers={"X-CSRFToken": token})
    assert judged.status_code == 400


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
