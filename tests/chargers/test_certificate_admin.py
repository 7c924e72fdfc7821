"""Operators see each station's installed certificates and certificate requests in the admin, read-only."""

from __future__ import annotations

import pytest
from django.utils import timezone

from chargers.models import CertificateSigning, InstalledCertificate
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db


def test_the_admin_shows_installed_certificates_and_requests_without_letting_them_be_edited(admin_client) -> None:
    # Given a station with an installed certificate it reported and a refused certificate request
    station = StationFactory.create()
    installed = InstalledCertificate.objects.create(
        station=station, certificate_type="CSMSRootCertificate", hash_algorithm="SHA256",
        issuer_name_hash="ab" * 32, issuer_key_hash="cd" * 32, serial_number="5eed", reported_at=timezone.now(),
    )  # fmt: skip
    signing = CertificateSigning.objects.create(
        station=station, received_at=timezone.now(), status=CertificateSigning.Status.REFUSED,
        reason_code="InvalidCSR", reason="subject CN 'x' is not the station id",
    )  # fmt: skip
    # When an operator opens the station, the lists and the rows
    station_page = admin_client.get(f"/admin/chargers/station/{station.pk}/change/")
    installed_list = admin_client.get("/admin/chargers/installedcertificate/")
    signing_list = admin_client.get("/admin/chargers/certificatesigning/")
    # Then the certificate and the refusal are shown
    assert station_page.status_code == 200
    assert b"5eed" in station_page.content
    assert b"5eed" in installed_list.content
    assert b"InvalidCSR" in signing_list.content
    # and nothing can be added or changed
    assert admin_client.get("/admin/chargers/installedcertificate/add/").status_code == 403
    assert admin_client.get("/admin/chargers/certificatesigning/add/").status_code == 403
    change = admin_client.post(f"/admin/chargers/installedcertificate/{installed.pk}/change/", {"serial_number": "1"})
    assert change.status_code == 403
    installed.refresh_from_db()
    assert installed.serial_number == "5eed"
    assert admin_client.get(f"/admin/chargers/certificatesigning/{signing.pk}/change/").status_code == 200
