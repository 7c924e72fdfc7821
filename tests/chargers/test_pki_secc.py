"""``pki secc-cert``: the charger's ISO 15118-20 TLS server certificate towards the car, from the CPO sub-CA.

Expected values come from ISO 15118-20's PKI (an SECC certificate chains through the CPO sub-CA to the V2G root,
which is the car's trust anchor; serverAuth; ECDSA P-256) and from a real TLS 1.3 handshake with Python's ssl, not
from the issuing code.
"""

from __future__ import annotations

import socket
import ssl
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.core.management import CommandError, call_command
from django.test import override_settings

from chargers.handshake import Admitted, authenticate_many
from chargers.models import CertificateUse, PkiCertificate, SecurityProfile, StationEvent, StationEventKind
from chargers.pki import storage
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db
KEY_PASSPHRASE = "secc-key-passphrase-01"


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PKI_STATION_KEY_PASSPHRASE", KEY_PASSPHRASE)
    directory = tmp_path / "pki"
    with override_settings(PKI_DIR=directory, PKI_PASSPHRASE=None, PKI_PASSPHRASE_FILE=None, VAR_DIR=tmp_path):
        storage.signing_key_forget()
        call_command("pki", "init", organisation="Test CPO")
        yield directory
    storage.signing_key_forget()


def secc_cert(tmp_path: Path, station_id: str, *, command: str = "secc-cert") -> tuple[Path, Path]:
    cert, key = tmp_path / f"{station_id}-{command}.pem", tmp_path / f"{station_id}-{command}.key"
    call_command("pki", command, station_id, out_cert=str(cert), out_key=str(key))
    return cert, key


def test_an_secc_certificate_is_a_cpo_server_certificate_under_the_v2g_root(pki: Path, tmp_path: Path) -> None:
    # given a station
    StationFactory.create(station_id="cs-15118")
    # when its SECC certificate is issued
    cert, _key = secc_cert(tmp_path, "cs-15118")
    # then the chain is leaf + CPO sub-CA, the root signed the sub-CA, the leaf is serverAuth, P-256, DC=CPO
    leaf, sub = x509.load_pem_x509_certificates(cert.read_bytes())
    root = x509.load_pem_x509_certificate((pki / "v2g-root-ca.pem").read_bytes())
    leaf.verify_directly_issued_by(sub)
    sub.verify_directly_issued_by(root)
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cs-15118"
    assert leaf.subject.get_attributes_for_oid(NameOID.DOMAIN_COMPONENT)[0].value == "CPO"
    public_key = leaf.public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    assert public_key.curve.name == "secp256r1"
    # and it is in the register (so `pki revoke` reaches it) and stored as a security event
    row = PkiCertificate.objects.get(serial=format(leaf.serial_number, "x"))
    assert (row.use, row.subject_cn) == (CertificateUse.SECC, "cs-15118")
    assert StationEvent.objects.filter(kind=StationEventKind.CERTIFICATE_ISSUED, station__station_id="cs-15118")


def _tls13_handshake(server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext) -> dict[str, Any]:
    here, there = socket.socketpair()
    seen: dict[str, Any] = {}

    def serve() -> None:
        try:
            with server_ctx.wrap_socket(there, server_side=True) as tls:
                seen["server_version"] = tls.version()
        except (ssl.SSLError, OSError) as exc:  # the car hung up on us: the client side says why
            seen["server_error"] = exc

    thread = threading.Thread(target=serve)
    thread.start()
    try:
        with client_ctx.wrap_socket(here) as tls:
            seen["version"] = tls.version()
            seen["peer"] = tls.getpeercert()
    finally:
        thread.join(10)
    return seen


def test_a_car_trusting_only_the_v2g_root_accepts_the_chargers_chain_over_tls_1_3(pki: Path, tmp_path: Path) -> None:
    # given the charger's SECC chain and key, and a car that trusts the V2G root and nothing else
    StationFactory.create(station_id="cs-15118")
    cert, key = secc_cert(tmp_path, "cs-15118")
    charger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    charger.minimum_version = ssl.TLSVersion.TLSv1_3
    charger.load_cert_chain(cert, key, password=KEY_PASSPHRASE)
    car = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    car.check_hostname = False  # ISO 15118: the car checks the chain, there is no host name
    car.load_verify_locations(pki / "v2g-root-ca.pem")
    # when they shake hands, then it is TLS 1.3 and the car verified the charger as CN=cs-15118
    seen = _tls13_handshake(charger, car)
    assert seen["version"] == "TLSv1.3"
    assert ((("commonName", "cs-15118"),) in seen["peer"]["subject"]) is True


def test_a_car_refuses_a_station_client_certificate_as_the_chargers(pki: Path, tmp_path: Path) -> None:
    # given a charger that shows its OCPP client certificate (clientAuth) instead of an SECC one
    StationFactory.create(station_id="cs-15118")
    cert, key = secc_cert(tmp_path, "cs-15118", command="station-cert")
    charger = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    charger.load_cert_chain(cert, key, password=KEY_PASSPHRASE)
    car = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    car.check_hostname = False
    car.load_verify_locations(pki / "v2g-root-ca.pem")
    # then the car's handshake fails: the certificate is not for a TLS server
    with pytest.raises(ssl.SSLError):
        _tls13_handshake(charger, car)


def test_an_secc_certificate_does_not_open_the_stations_ocpp_socket(pki: Path, tmp_path: Path) -> None:
    # given a profile-3 station with an SECC certificate and a station certificate, both CN = its id
    StationFactory.create(station_id="cs-15118", security_profile=SecurityProfile.TLS_CLIENT_CERT)
    secc, _ = secc_cert(tmp_path, "cs-15118")
    client, _ = secc_cert(tmp_path, "cs-15118", command="station-cert")

    def tls(chain: Path) -> dict[str, Any]:
        leaf = chain.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
        return {"client_cert_chain": [leaf], "client_cert_name": None, "client_cert_error": None,
                "tls_version": 0x0304}  # fmt: skip

    # when each is presented at the OCPP handshake
    by_secc, by_station = authenticate_many([("cs-15118", None, tls(secc)), ("cs-15118", None, tls(client))])
    # then only the station certificate is admitted
    assert not isinstance(by_secc, Admitted)
    assert isinstance(by_station, Admitted)


def test_secc_cert_refuses_an_id_no_station_has(pki: Path, tmp_path: Path) -> None:
    with pytest.raises(CommandError, match="no station"):
        secc_cert(tmp_path, "cs-nobody")
