"""Station certificates end to end (OCPP 2.0.1 A02/A03, M03-M05): a live server with the built-in PKI (``tls_csms``
from test_tls), stations as ``websockets`` clients writing OCPP-J frames, keys and CSRs made here with
``cryptography``. A station's CSR is answered, its certificate arrives after the answer and opens a profile-3
connection; abusive CSRs are refused and recorded; installed certificates are tracked through ``station certs``."""

# ruff: noqa: F811 - the fixtures imported from test_tls are redefined as the tests' parameters, as pytest wants

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import io
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import websockets.asyncio.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, rsa
from cryptography.x509.oid import NameOID
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.db import connections
from websockets.typing import Subprotocol

from chargers.models import (
    CertificateSigning,
    InstalledCertificate,
    PkiCertificate,
    Station,
    StationCommand,
    StationEvent,
    StationEventKind,
)
from tests.chargers.conftest import basic_auth, wait_until
from tests.chargers.factories import STATION_PASSWORD, StationFactory
from tests.chargers.test_tls import (  # noqa: F401 - the fixtures: a server with a PKI made for this module
    TlsServer,
    _sync,
    client_context,
    close_db_threads,
    connect_status,
    tls_csms,
)

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_db_threads")]

StationKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | dsa.DSAPrivateKey


def csr_pem(common_name: str, key: StationKey | None = None, *, ca_request: bool = False, org: str = "") -> str:
    key = key or ec.generate_private_key(ec.SECP256R1())
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if org:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, org))
    builder = x509.CertificateSigningRequestBuilder().subject_name(x509.Name(attributes))
    if ca_request:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM).decode()


def tampered(pem: str) -> str:
    """The same CSR with the last byte of its DER (inside the ECDSA signature's s) flipped: parses, fails to verify."""
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


class Socket:
    """A station speaking OCPP-J by hand: what it receives, in order, is what the test checks."""

    def __init__(self, ws: websockets.asyncio.client.ClientConnection) -> None:
        self.ws = ws
        self.counter = 0

    async def send(self, frame: list[Any]) -> None:
        await self.ws.send(json.dumps(frame))

    async def recv(self, within: float = 15.0) -> list[Any]:
        return list(json.loads(await asyncio.wait_for(self.ws.recv(), within)))

    async def sign(self, csr: str, **extra: Any) -> tuple[dict[str, Any], str]:
        """Send SignCertificate; answer any CertificateSigned that comes meanwhile (Accepted). Returns the
        SignCertificate answer and the message id."""
        self.counter += 1
        message_id = f"sign-{self.counter}"
        await self.send([2, message_id, "SignCertificate", {"csr": csr, **extra}])
        while True:
            frame = await self.recv()
            if frame[0] == 2:  # an earlier request's certificate
                await self.send([3, frame[1], {"status": "Accepted"}])
                continue
            assert frame[:2] == [3, message_id], frame
            return frame[2], message_id


@contextlib.asynccontextmanager
async def station(url: str, *, version: str = "2.0.1", context: ssl.SSLContext | None = None) -> AsyncIterator[Socket]:
    station_id = url.rsplit("/", 1)[1]
    async with websockets.asyncio.client.connect(
        url,
        ssl=context,
        subprotocols=[Subprotocol(f"ocpp{version}")],
        additional_headers=basic_auth(station_id, STATION_PASSWORD),
        open_timeout=10,
    ) as ws:
        yield Socket(ws)


def new_station(**fields: Any) -> str:
    return StationFactory.create(**fields).station_id


def over_tls(
    server: TlsServer, station_id: str, *, version: str = "2.0.1"
) -> contextlib.AbstractAsyncContextManager[Socket]:
    """A profile-2 station's connection over TLS with its password: where a SignCertificate may be accepted."""
    return station(server.wss(station_id), version=version, context=client_context(server))


async def test_a_station_gets_its_certificate_after_the_answer_and_connects_with_it_on_profile_3(
    tls_csms: TlsServer, tmp_path: Path
) -> None:
    # Given a profile-2 station connected over TLS with its password, and a P-256 key it made
    station_id = await _sync(new_station, security_profile=2)
    key = ec.generate_private_key(ec.SECP256R1())
    async with station(tls_csms.wss(station_id), context=client_context(tls_csms)) as socket:
        # When it sends a CSR for its own id
        request = {"csr": csr_pem(station_id, key), "certificateType": "ChargingStationCertificate"}
        await socket.send([2, "sign-1", "SignCertificate", request])
        # Then it is answered Accepted first, and only then receives CertificateSigned
        assert await socket.recv() == [3, "sign-1", {"status": "Accepted"}]
        call = await socket.recv()
        assert call[0] == 2
        assert call[2] == "CertificateSigned"
        payload = call[3]
        await socket.send([3, call[1], {"status": "Accepted"}])
    assert payload["certificateType"] == "ChargingStationCertificate"
    # and the chain is its key's certificate (CN = its id) then the sub-CA, which the root signed
    leaf, sub_ca = x509.load_pem_x509_certificates(payload["certificateChain"].encode())
    root = x509.load_pem_x509_certificates((tls_csms.pki / "ca-bundle.pem").read_bytes())[-1]
    assert leaf.public_key() == key.public_key()
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == station_id
    leaf.verify_directly_issued_by(sub_ca)
    sub_ca.verify_directly_issued_by(root)
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # and the delivery is recorded as accepted
    await wait_until(
        lambda: _sync(
            lambda: CertificateSigning.objects.filter(
                station__station_id=station_id, status=CertificateSigning.Status.DELIVERED
            ).exists()
        )
    )
    # When the station moves to profile 3 and connects with that certificate and no password
    await _sync(lambda: Station.objects.filter(station_id=station_id).update(security_profile=3))
    cert_file, key_file = tmp_path / "chain.pem", tmp_path / "key.pem"
    cert_file.write_text(payload["certificateChain"])
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    status = await connect_status(tls_csms.wss(station_id), context=client_context(tls_csms, cert_file, key_file))
    # Then the server admits it
    assert status == 101


async def test_a_station_refusing_its_certificate_is_a_security_event_and_the_certificate_is_revoked(
    tls_csms: TlsServer,
) -> None:
    # Given a station that asks for a certificate
    station_id = await _sync(new_station, security_profile=2)
    async with over_tls(tls_csms, station_id, version="2.1") as socket:
        answer, _ = await socket.sign(csr_pem(station_id), requestId=77)
        assert answer == {"status": "Accepted"}
        # When it answers the CertificateSigned (which names its 2.1 requestId) Rejected
        call = await socket.recv()
        assert call[2] == "CertificateSigned"
        assert call[3]["requestId"] == 77
        await socket.send([3, call[1], {"status": "Rejected", "statusInfo": {"reasonCode": "InvalidCertificate"}}])
        # Then a security event is stored and the certificate it refused is revoked
        event = await wait_until(
            lambda: _sync(
                lambda: StationEvent.objects.filter(
                    station__station_id=station_id, kind=StationEventKind.CERTIFICATE_REJECTED
                ).first()
            )
        )
    assert event.data["answer"]["status"] == "Rejected"
    revoked = await _sync(lambda: list(PkiCertificate.objects.filter(subject_cn=station_id).values("revoked_at")))
    assert len(revoked) == 1
    assert revoked[0]["revoked_at"] is not None


@pytest.mark.parametrize(("profile", "scheme"), [(1, "ws"), (1, "wss")])
async def test_it_refuses_a_csr_unless_it_comes_over_tls_from_profile_2_or_3_and_records_it(
    tls_csms: TlsServer, profile: int, scheme: str
) -> None:
    # Given a profile-1 station connected with its password over plain ws://, or over TLS (its password may have
    # crossed in clear on another connection)
    station_id = await _sync(new_station, security_profile=profile)
    connection = station(tls_csms.ws(station_id)) if scheme == "ws" else over_tls(tls_csms, station_id)
    async with connection as socket:
        # When it sends a valid CSR for its own id
        answer, _ = await socket.sign(csr_pem(station_id))
    # Then it is answered Rejected with a reason code, a security event is stored, nothing is issued, and the
    # request is kept with the transport it came over
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "InsecureConnection"
    assert [e["reasonCode"] for e in await _sync(_csr_events, station_id)] == ["InsecureConnection"]
    assert not await _sync(lambda: PkiCertificate.objects.filter(subject_cn=station_id).exists())
    request = await _sync(lambda: CertificateSigning.objects.get(station__station_id=station_id))
    assert (request.status, request.over_tls) == (CertificateSigning.Status.REFUSED, scheme == "wss")


def _abusive_csr(kind: str, station_id: str, other_id: str) -> str:
    if kind == "wrong-cn":
        return csr_pem("not-" + station_id)
    if kind == "another-station":
        return csr_pem(other_id)
    if kind == "bad-signature":
        return tampered(csr_pem(station_id))
    if kind == "rsa-1024":
        return csr_pem(station_id, rsa.generate_private_key(public_exponent=65537, key_size=1024))
    if kind == "dsa":
        return csr_pem(station_id, dsa.generate_private_key(key_size=2048))
    if kind == "p-192":
        return csr_pem(station_id, ec.generate_private_key(ec.SECP192R1()))
    if kind == "ca-true":
        return csr_pem(station_id, ca_request=True)
    if kind == "another-owner":
        return csr_pem(station_id, org="Someone Else Ltd")
    return "-----BEGIN CERTIFICATE REQUEST-----\nbm90IGEgQ1NS\n-----END CERTIFICATE REQUEST-----\n"  # garbage


@pytest.mark.parametrize(
    "kind",
    ["wrong-cn", "another-station", "bad-signature", "rsa-1024", "dsa", "p-192", "ca-true", "another-owner", "garbage"],
)
async def test_it_refuses_an_abusive_csr_and_stores_a_security_event(tls_csms: TlsServer, kind: str) -> None:
    # Given a station owned by an organisation, and another station
    station_id = await _sync(_owned_station, "Depot Co")
    other_id = await _sync(new_station)
    async with over_tls(tls_csms, station_id) as socket:
        # When it sends a CSR that is wrong in one way
        answer, _ = await socket.sign(_abusive_csr(kind, station_id, other_id))
    # Then it is answered Rejected with InvalidCSR, a security event is stored, and nothing is issued
    assert answer["status"] == "Rejected"
    assert answer["statusInfo"]["reasonCode"] == "InvalidCSR"
    events = await _sync(_csr_events, station_id)
    assert len(events) == 1
    assert events[0]["reasonCode"] == "InvalidCSR"
    if kind == "another-station":
        assert "another station" in events[0]["reason"]
        assert events[0]["claimed_cn"] == other_id
    assert not await _sync(lambda: PkiCertificate.objects.filter(subject_cn__in=[station_id, other_id]).exists())


def _owned_station(org_name: str) -> str:
    from fleet.models import Organisation, StationOwnership

    station = StationFactory.create(security_profile=2)
    organisation = Organisation.objects.create(name=org_name, slug=f"org-{station.pk}")
    StationOwnership.objects.create(station=station, organisation=organisation)
    return station.station_id


def _csr_events(station_id: str) -> list[dict[str, Any]]:
    rows = StationEvent.objects.filter(station__station_id=station_id, kind=StationEventKind.CSR_REFUSED)
    return [row.data for row in rows]


async def test_an_owned_station_gets_its_owner_as_o_and_an_rsa_2048_key_is_accepted(tls_csms: TlsServer) -> None:
    # Given a station owned by "Depot Co" with an RSA-2048 key, asking with O = its owner
    station_id = await _sync(_owned_station, "Depot Co")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with over_tls(tls_csms, station_id) as socket:
        answer, _ = await socket.sign(csr_pem(station_id, key, org="Depot Co"))
        call = await socket.recv()
        await socket.send([3, call[1], {"status": "Accepted"}])
    # Then the certificate names the owner and certifies the RSA key for signatures and key transport
    assert answer == {"status": "Accepted"}
    leaf = x509.load_pem_x509_certificates(call[3]["certificateChain"].encode())[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Depot Co"
    usage = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature
    assert usage.key_encipherment
    assert not usage.key_cert_sign


async def test_it_refuses_v2g_certificates_it_cannot_chain_to_a_root_cars_trust(tls_csms: TlsServer) -> None:
    station_id = await _sync(new_station, security_profile=2)
    async with over_tls(tls_csms, station_id) as socket:
        answer, _ = await socket.sign(csr_pem(station_id), certificateType="V2GCertificate")
    assert (answer["status"], answer["statusInfo"]["reasonCode"]) == ("Rejected", "UnsupportedRequest")


async def test_it_signs_at_most_the_daily_limit_then_refuses_and_records_that_once(tls_csms: TlsServer) -> None:
    # Given a station and the daily limit of certificate requests
    station_id = await _sync(new_station, security_profile=2)
    limit = settings.PKI_SIGN_PER_DAY
    async with over_tls(tls_csms, station_id) as socket:
        # When it sends valid CSRs up to the limit, and then two more
        answers = [(await socket.sign(csr_pem(station_id)))[0]["status"] for _ in range(limit)]
        over = [(await socket.sign(csr_pem(station_id)))[0] for _ in range(2)]
    # Then the first ones are accepted, the others refused as over the limit, and the refusal recorded once
    assert answers == ["Accepted"] * limit
    assert [a["statusInfo"]["reasonCode"] for a in over] == ["RateLimitExceeded"] * 2
    events = await _sync(_csr_events, station_id)
    assert [e["reasonCode"] for e in events] == ["RateLimitExceeded"]


# --- installed certificates through `station certs` ----------------------------------------------------------


def _certs_command(tls_csms: TlsServer, *args: str) -> str:
    """``station certs ...`` as an operator runs it (on a thread of its own: the test's loop plays the station)."""
    out = io.StringIO()
    try:
        users = get_user_model().objects
        user = users.filter(is_superuser=True).first() or users.create_superuser("certs-ops", password=None)
        server = f"http://127.0.0.1:{tls_csms.port}"
        call_command("station", "certs", *args, "--server", server, "--user", user.username, stdout=out)
    finally:
        connections.close_all()  # this thread's connection: PostgreSQL cannot drop a test database still in use
    return out.getvalue()


REPORTED: dict[str, Any] = {
    "status": "Accepted",
    "certificateHashDataChain": [
        {
            "certificateType": "V2GCertificateChain",
            "certificateHashData": {
                "hashAlgorithm": "SHA256",
                "issuerNameHash": "AB" * 32,
                "issuerKeyHash": "CD" * 32,
                "serialNumber": "1F2E",
            },
            "childCertificateHashData": [
                {
                    "hashAlgorithm": "SHA256",
                    "issuerNameHash": "01" * 32,
                    "issuerKeyHash": "02" * 32,
                    "serialNumber": "9",
                }
            ],
        },
        {
            "certificateType": "CSMSRootCertificate",
            "certificateHashData": {
                "hashAlgorithm": "SHA256",
                "issuerNameHash": "ef" * 32,
                "issuerKeyHash": "12" * 32,
                "serialNumber": "a1",
            },
        },
    ],
}


async def _answer_one(socket: Socket, action: str, answer: dict[str, Any]) -> dict[str, Any]:
    call = await socket.recv()
    assert call[0] == 2, call
    assert call[2] == action, call
    await socket.send([3, call[1], answer])
    return dict(call[3])


async def test_station_certs_refresh_stores_what_the_station_reports_and_delete_removes_one(
    tls_csms: TlsServer,
) -> None:
    station_id = await _sync(new_station)
    async with station(tls_csms.ws(station_id)) as socket:
        # When an operator runs `station certs refresh` and the station reports two certificates
        command = asyncio.create_task(asyncio.to_thread(_certs_command, tls_csms, "refresh", station_id))
        asked = await _answer_one(socket, "GetInstalledCertificateIds", REPORTED)
        output = await asyncio.wait_for(command, 20)
        # Then both are stored as reported, with the chain's child certificates
        assert asked == {}
        assert "2 certificate(s) stored" in output
        rows = await _sync(
            lambda: {r.certificate_type: r for r in InstalledCertificate.objects.filter(station__station_id=station_id)}
        )
        assert rows.keys() == {"V2GCertificateChain", "CSMSRootCertificate"}
        assert rows["V2GCertificateChain"].child_certificates[0]["serialNumber"] == "9"
        # When the operator deletes the root by its serial and the station accepts
        command = asyncio.create_task(asyncio.to_thread(_certs_command, tls_csms, "delete", station_id, "A1"))
        sent = await _answer_one(socket, "DeleteCertificate", {"status": "Accepted"})
        await asyncio.wait_for(command, 20)
    # Then the station was sent the hash data exactly as it reported it, and the row is gone
    assert sent == {"certificateHashData": REPORTED["certificateHashDataChain"][1]["certificateHashData"]}
    left = await _sync(
        lambda: list(
            InstalledCertificate.objects.filter(station__station_id=station_id).values_list(
                "certificate_type", flat=True
            )
        )
    )
    assert left == ["V2GCertificateChain"]
    # and both calls are in the audit trail
    audited = await _sync(
        lambda: list(StationCommand.objects.filter(station_ident=station_id).values_list("action", flat=True))
    )
    assert sorted(audited) == ["DeleteCertificate", "GetInstalledCertificateIds"]


async def test_station_certs_install_root_sends_our_root_and_records_it_as_installed(tls_csms: TlsServer) -> None:
    station_id = await _sync(new_station)
    async with station(tls_csms.ws(station_id)) as socket:
        # When the operator installs our root as the station's CSMS root and the station accepts
        command = asyncio.create_task(asyncio.to_thread(_certs_command, tls_csms, "install-root", station_id))
        sent = await _answer_one(socket, "InstallCertificate", {"status": "Accepted"})
        await asyncio.wait_for(command, 20)
    # Then it was sent the CA bundle's root
    root = x509.load_pem_x509_certificates((tls_csms.pki / "ca-bundle.pem").read_bytes())[-1]
    assert sent["certificateType"] == "CSMSRootCertificate"
    assert x509.load_pem_x509_certificate(sent["certificate"].encode()) == root
    # and it is recorded with the hash data OCPP defines (the issuer's DER name and public key bits, SHA-256)
    row = await _sync(lambda: InstalledCertificate.objects.get(station__station_id=station_id))
    point = root.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    assert row.certificate_type == "CSMSRootCertificate"
    assert row.issuer_name_hash == hashlib.sha256(root.subject.public_bytes()).hexdigest()
    assert row.issuer_key_hash == hashlib.sha256(point).hexdigest()
    assert row.serial_number == format(root.serial_number, "x")
