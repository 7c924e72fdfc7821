"""Raising a station to security profile 3 revokes the certificates it got from CSRs sent over plain ws:// (where
anyone on the path could read its password and ask in its name); those asked for over TLS and those an operator
issued stay valid. Whichever way the profile is raised: ``station add --update --profile 3`` or the admin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import call_command
from django.test import Client, override_settings
from django.utils import timezone

from chargers.models import CertificateSigning, PkiCertificate, Station, StationEvent, StationEventKind
from chargers.pki import ca, issue, storage
from tests.chargers.factories import STATION_PASSWORD, StationFactory
from tests.fleet.factories import OrganisationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    with override_settings(PKI_DIR=tmp_path / "pki", PKI_PASSPHRASE="transport-test-passphrase-0123"):
        storage.signing_key_forget()
        ca.ca_init(organisation="Test CPO")
        yield tmp_path / "pki"
    storage.signing_key_forget()


def requested(station: Station, *, over_tls: bool) -> str:
    """A certificate the station asked for with SignCertificate, over TLS or not, as the CSMS recorded it."""
    key = ec.generate_private_key(ec.SECP256R1())
    cert = issue.station_certificate_sign(station_id=station.station_id, public_key=key.public_key())
    record = issue.station_certificate_record(cert=cert, station=station)
    CertificateSigning.objects.create(
        station=station, received_at=timezone.now(), csr="-", status=CertificateSigning.Status.DELIVERED,
        certificate=record, over_tls=over_tls,
    )  # fmt: skip
    return record.serial


def raise_by_command(station: Station, tmp_path: Path) -> None:
    OrganisationFactory.create(slug="depot-co")
    password_file = tmp_path / "pw"
    password_file.write_text(STATION_PASSWORD + "\n")
    call_command(
        "station", "add", station.station_id, "--org", "depot-co", "--password-file", str(password_file),
        "--update", "--profile", "3",
    )  # fmt: skip


def raise_in_admin(station: Station, admin_client: Client) -> None:
    url = f"/admin/chargers/station/{station.pk}/change/"
    page = admin_client.get(url)
    data: dict[str, Any] = {k: v for k, v in page.context["adminform"].form.initial.items() if v is not None}
    for inline in page.context["inline_admin_formsets"]:
        management = inline.formset.management_form
        data.update({f"{inline.formset.prefix}-{k}": v for k, v in management.initial.items()})
    data["security_profile"] = 3
    response = admin_client.post(url, data)
    assert response.status_code == 302, response.content[:2000]


@pytest.mark.parametrize("how", ["command", "admin"])
def test_raising_a_station_to_profile_3_revokes_certificates_requested_over_plain_ws(
    pki: Path, tmp_path: Path, admin_client: Client, how: str
) -> None:
    # Given a profile-2 station with a certificate it asked for over ws:// (before it was profile 2), one it asked
    # for over TLS, and one an operator issued for it
    station = StationFactory.create(security_profile=2)
    over_ws, over_tls = requested(station, over_tls=False), requested(station, over_tls=True)
    operator = format(issue.station_certificate_issue(station_id=station.station_id).cert.serial_number, "x")
    # When it is raised to profile 3
    if how == "command":
        raise_by_command(station, tmp_path)
    else:
        raise_in_admin(station, admin_client)
    # Then only the certificate requested over ws:// is revoked, and that is stored as a security event
    assert Station.objects.get(pk=station.pk).security_profile == 3
    revoked = set(PkiCertificate.objects.filter(revoked_at__isnull=False).values_list("serial", flat=True))
    valid = set(PkiCertificate.objects.filter(revoked_at__isnull=True).values_list("serial", flat=True))
    assert (revoked, valid) == ({over_ws}, {over_tls, operator})
    event = StationEvent.objects.get(station=station, kind=StationEventKind.CERTIFICATE_REVOKED)
    assert event.data["serials"] == [over_ws]
    assert event.data["actor"] == ("security profile raised to 3" if how == "command" else "admin:admin")
