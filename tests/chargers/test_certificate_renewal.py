"""Renewal before expiry and the delivery sweep, with stations connected in process (``station_socket``): the
periodic tasks' services run in this process and reach the sockets through ``station_call`` like the Celery
worker would."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from django.test import override_settings
from django.utils import timezone

from chargers.models import CertificateSigning, PkiCertificate, StationCommand
from chargers.pki import ca, issue, storage
from chargers.services.certificates import certificate_signings_sweep, station_certificates_renew
from tests.chargers.conftest import TLS, station_socket
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    with override_settings(PKI_DIR=tmp_path / "pki", PKI_PASSPHRASE="renewal-test-passphrase-0123"):
        storage.signing_key_forget()
        ca.ca_init(organisation="Test CPO")
        yield tmp_path / "pki"
    storage.signing_key_forget()


def station_with_certificate(days_left: int) -> str:
    station_id = StationFactory.create().station_id
    now = timezone.now()
    issue.station_certificate_issue(
        station_id=station_id, not_before=now - timedelta(days=300), not_after=now + timedelta(days=days_left)
    )
    return station_id


async def connected(station_id: str) -> WebsocketCommunicator:
    socket = station_socket(station_id)
    assert (await socket.connect(timeout=5))[0]
    return socket


async def answer_calls(socket: WebsocketCommunicator, answers: list[Any]) -> list[list[Any]]:
    """Receive one CSMS call per answer and answer it (a dict: CALLRESULT; a str: CALLERROR with that code)."""
    calls = []
    for answer in answers:
        call = json.loads(await socket.receive_from(timeout=10))
        calls.append(call)
        reply = [3, call[1], answer] if isinstance(answer, dict) else [4, call[1], answer, "", {}]
        await socket.send_to(text_data=json.dumps(reply))
    return calls


async def test_it_asks_a_station_whose_certificate_expires_soon_to_renew_once_a_day(pki: Path) -> None:
    # Given connected stations whose certificates expire in 10 and 200 days, and an offline one expiring in 5
    soon = await sync_to_async(station_with_certificate)(10)
    later = await sync_to_async(station_with_certificate)(200)
    await sync_to_async(station_with_certificate)(5)
    sockets = [await connected(soon), await connected(later)]
    # When the renewal task runs
    renewing = asyncio.ensure_future(sync_to_async(station_certificates_renew)())
    calls = await answer_calls(sockets[0], [{"status": "Accepted"}])
    asked = await asyncio.wait_for(renewing, 15)
    # Then only the station connected and near expiry is asked for a new CSR, as the standard names it, audited
    assert [a.station_id for a in asked] == [soon]
    assert calls[0][2:] == ["TriggerMessage", {"requestedMessage": "SignChargingStationCertificate"}]
    audited = await sync_to_async(
        lambda: list(StationCommand.objects.filter(action="TriggerMessage").values_list("station_ident", "actor_label"))
    )()
    assert audited == [(soon, "system:pki")]
    # When it runs again the same day / Then nobody is asked again
    assert await sync_to_async(station_certificates_renew)() == []
    for socket in sockets:
        await socket.disconnect()


async def test_a_certificate_not_delivered_is_delivered_by_the_sweep_and_issued_only_once(pki: Path) -> None:
    # Given a profile-2 station connected over TLS that sends a valid CSR and answers the first CertificateSigned
    # with a CALLERROR
    station_id = await sync_to_async(lambda: StationFactory.create(security_profile=2).station_id)()
    socket = station_socket(station_id, tls=TLS)
    assert (await socket.connect(timeout=5))[0]
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, station_id)]))
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
        .decode()
    )
    await socket.send_to(text_data=json.dumps([2, "s-1", "SignCertificate", {"csr": csr}]))
    assert json.loads(await socket.receive_from(timeout=10)) == [3, "s-1", {"status": "Accepted"}]
    first = await answer_calls(socket, ["InternalError"])
    signing = await _signing_when(station_id, lambda s: s.claimed_until is None and s.attempts == 1)
    assert signing.status == CertificateSigning.Status.ISSUED
    # When the sweep runs a minute later and the station accepts this time
    sweeping = asyncio.ensure_future(
        sync_to_async(certificate_signings_sweep)(now=timezone.now() + timedelta(minutes=1))
    )
    second = await answer_calls(socket, [{"status": "Accepted"}])
    assert await asyncio.wait_for(sweeping, 15) == 1
    # Then the same certificate was sent again, it was issued once, and the delivery is recorded
    assert second[0][2:] == first[0][2:]
    assert await sync_to_async(PkiCertificate.objects.filter(subject_cn=station_id).count)() == 1
    signing = await _signing_when(station_id, lambda s: s.status == CertificateSigning.Status.DELIVERED)
    assert signing.attempts == 2
    await socket.disconnect()


async def _signing_when(station_id: str, predicate: Any) -> CertificateSigning:
    for _ in range(200):
        row = await sync_to_async(CertificateSigning.objects.filter(station__station_id=station_id).first)()
        if row is not None and predicate(row):
            return row
        await asyncio.sleep(0.05)
    raise AssertionError("the request never reached the expected state")
