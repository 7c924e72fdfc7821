"""Issuing a SignCertificate's certificate (chargers.services.certificates): the request is claimed and committed
first, the certificate signed off Channels' shared sync thread and outside any transaction, then recorded; a slow
signer (an HSM that takes its time) holds up nobody else's database calls."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.db import connection, connections
from django.test import override_settings
from django.utils import timezone

from chargers.models import CertificateSigning, PkiCertificate, StationCommand
from chargers.pki import ca, storage
from chargers.services.certificates import certificate_signing_complete_async
from chargers.services.station_call import StationOffline, station_call_async
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    with override_settings(PKI_DIR=tmp_path / "pki", PKI_PASSPHRASE="delivery-test-passphrase-0123"):
        storage.signing_key_forget()
        ca.ca_init(organisation="Test CPO")
        yield tmp_path / "pki"
    storage.signing_key_forget()


@pytest.fixture
async def close_db_threads() -> object:
    yield
    await sync_to_async(connections.close_all)()  # PostgreSQL cannot drop a test database still in use


def accepted_request() -> tuple[int, str]:
    """An offline station's SignCertificate, accepted and not issued yet, with a CSR for its own id."""
    station = StationFactory.create(security_profile=2)
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station.station_id)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    signing = CertificateSigning.objects.create(
        station=station, received_at=timezone.now(), csr=csr, status=CertificateSigning.Status.ACCEPTED
    )
    return signing.pk, StationFactory.create().station_id


@pytest.mark.usefixtures("close_db_threads")
async def test_a_slow_signer_holds_up_no_other_database_call(pki: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given an accepted request, and a CA whose signature waits until the test releases it (a slow token)
    signing_id, other_station = await sync_to_async(accepted_request)()
    entered, release = threading.Event(), threading.Event()
    signed_in_transaction: list[bool] = []
    real_sign = ca.Ca.certificate_sign

    def slow_sign(self: ca.Ca, builder: x509.CertificateBuilder) -> x509.Certificate:
        signed_in_transaction.append(connection.in_atomic_block)  # this thread's connection, not opened
        entered.set()
        release.wait(30)
        return real_sign(self, builder)

    monkeypatch.setattr(ca.Ca, "certificate_sign", slow_sign)
    # When its delivery starts and, while the signer waits, an operator's command to another station is sent
    delivery = asyncio.ensure_future(certificate_signing_complete_async(signing_id=signing_id))
    try:
        assert await asyncio.to_thread(entered.wait, 10), "the signer was never called"
        call = station_call_async(
            station_id=other_station, action="Reset", payload={"type": "Immediate"}, actor_user_id=None,
            actor_label="cli:ops",
        )  # fmt: skip
        # Then that command's database reads and its audit row complete while the signer still waits
        with pytest.raises(StationOffline):
            await asyncio.wait_for(call, 10)
        audited = await sync_to_async(StationCommand.objects.filter(station_ident=other_station).count)()
        assert audited == 1
        assert not release.is_set()
        # and the request's claim was committed before the signing started, which holds no transaction
        claimed = await sync_to_async(CertificateSigning.objects.get)(pk=signing_id)
        assert (claimed.attempts, claimed.claimed_until is not None) == (1, True)
        assert signed_in_transaction == [False]
    finally:
        release.set()
    # and once signed, the certificate is recorded (the station being offline, it waits for the next attempt)
    await asyncio.wait_for(delivery, 10)
    signing = await sync_to_async(CertificateSigning.objects.select_related("certificate").get)(pk=signing_id)
    assert signing.status == CertificateSigning.Status.ISSUED
    assert signing.certificate is not None
    assert signing.claimed_until is None
    assert await sync_to_async(PkiCertificate.objects.count)() == 1
