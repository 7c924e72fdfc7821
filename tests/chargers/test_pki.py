"""The built-in PKI: ``manage.py pki`` issues what it says, keeps CA keys encrypted, and the CRL lists revocations."""

from __future__ import annotations

import ipaddress
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.core.management import CommandError, call_command
from django.test import Client, override_settings

from chargers.models import PkiCertificate, StationEvent, StationEventKind
from chargers.pki import storage
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db
KEY_PASSPHRASE = "station-key-passphrase-01"


@pytest.fixture
def pki(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("PKI_STATION_KEY_PASSPHRASE", KEY_PASSPHRASE)  # what station-cert encrypts keys with
    directory = tmp_path / "pki"
    with override_settings(PKI_DIR=directory, PKI_PASSPHRASE=None, PKI_PASSPHRASE_FILE=None, VAR_DIR=tmp_path):
        storage.signing_key_forget()
        call_command("pki", "init", organisation="Test CPO")
        yield directory
    storage.signing_key_forget()


def load_chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def test_init_keeps_ca_keys_encrypted_under_a_generated_owner_only_passphrase(pki: Path) -> None:
    # Given an initialised PKI (fixture) / When its key files are read without and with the passphrase
    key_file = pki / "cpo-sub-ca.key.pem"
    passphrase_file = pki.parent / "pki_passphrase"
    # Then they do not open without it, do with it, and key and passphrase files are owner-only
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    serialization.load_pem_private_key(key_file.read_bytes(), password=passphrase_file.read_text().strip().encode())
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(passphrase_file.stat().st_mode) == 0o600


def test_init_refuses_to_replace_an_existing_ca(pki: Path) -> None:
    with pytest.raises(CommandError, match="already exists"):
        call_command("pki", "init")


def test_a_station_certificate_names_the_station_and_chains_to_the_root(pki: Path, tmp_path: Path) -> None:
    # When a station certificate is issued for a station
    StationFactory.create(station_id="cs-42")
    call_command(
        "pki", "station-cert", "cs-42", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"),
        organisation="Acme",
    )  # fmt: skip
    # Then it is CN=station id, O=owner, clientAuth, issued by the sub-CA the root signed, and recorded
    leaf, sub = load_chain(tmp_path / "c.pem")
    root = load_chain(pki / "v2g-root-ca.pem")[0]
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "cs-42"
    assert leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Acme"
    assert list(leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    leaf.verify_directly_issued_by(sub)
    sub.verify_directly_issued_by(root)
    assert stat.S_IMODE((tmp_path / "k.pem").stat().st_mode) == 0o600
    assert PkiCertificate.objects.get(serial=format(leaf.serial_number, "x")).subject_cn == "cs-42"


def test_a_server_certificate_carries_its_hosts_in_the_san(pki: Path, tmp_path: Path) -> None:
    call_command(
        "pki", "server-cert", "--host", "csms.example.org", "--host", "10.0.0.5",
        "--out-cert", str(tmp_path / "s.pem"), "--out-key", str(tmp_path / "s.key"),
    )  # fmt: skip
    san = load_chain(tmp_path / "s.pem")[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["csms.example.org"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.5")]


def test_the_crl_lists_a_revoked_serial_signed_by_the_sub_ca(pki: Path, tmp_path: Path) -> None:
    # Given two station certificates, one revoked by station id and one left alone
    for station_id in ("cs-1", "cs-2"):
        StationFactory.create(station_id=station_id)
        call_command(
            "pki", "station-cert", station_id, out_cert=str(tmp_path / f"{station_id}.pem"),
            out_key=str(tmp_path / f"{station_id}.key"),
        )  # fmt: skip
    client = Client()
    client.get("/pki/crl")  # a CRL built (and cached) before the revocation
    call_command("pki", "revoke", "cs-1", reason="keyCompromise")
    # When the CRL is fetched
    response = Client().get("/pki/crl")
    # Then it is DER, signed by the sub-CA, and lists exactly the revoked serial
    assert response.status_code == 200
    assert response["Content-Type"] == "application/pkix-crl"
    crl = x509.load_der_x509_crl(response.content)
    sub = load_chain(pki / "cpo-sub-ca.pem")[0]
    assert crl.is_signature_valid(sub.public_key())  # type: ignore[arg-type]  # an EC key: the CA's
    revoked, kept = (load_chain(tmp_path / f"{s}.pem")[0].serial_number for s in ("cs-1", "cs-2"))
    assert [r.serial_number for r in crl] == [revoked]
    assert crl.get_revoked_certificate_by_serial_number(kept) is None


def test_revoke_by_serial_and_of_nothing(pki: Path, tmp_path: Path) -> None:
    StationFactory.create(station_id="cs-7")
    call_command("pki", "station-cert", "cs-7", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"))
    serial = format(load_chain(tmp_path / "c.pem")[0].serial_number, "x")
    call_command("pki", "revoke", serial)
    assert PkiCertificate.objects.get(serial=serial).revoked_at is not None
    with pytest.raises(CommandError, match="no unrevoked certificate"):
        call_command("pki", "revoke", serial)


def test_status_says_the_keys_are_encrypted_files(pki: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Given the embedded default (no PKCS#11 module configured) / When the status is asked
    call_command("pki", "status")
    # Then it names the file store and finds each CA's key matching its certificate
    out = capsys.readouterr().out
    assert f"key store: encrypted files in {pki}" in out
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    assert lines["v2g-root-ca"].startswith("key matches the certificate; DC=V2G,O=Test CPO,CN=V2G Root CA, valid until")
    assert lines["cpo-sub-ca"].startswith("key matches the certificate; DC=V2G,O=Test CPO,CN=CPO Sub-CA, valid until")


def test_a_key_replaced_under_its_certificate_is_refused(pki: Path, tmp_path: Path) -> None:
    # Given the sub-CA's key replaced behind its certificate's back (a restored backup, a second init elsewhere)
    storage.key_store().key_generate("cpo-sub-ca", replace=True)
    StationFactory.create(station_id="cs-1")
    # When a certificate is to be signed / Then the CA refuses instead of signing what nobody could verify
    with pytest.raises(CommandError, match="does not match its certificate"):
        call_command("pki", "station-cert", "cs-1", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"))


# --- station keys and who issued or revoked what ----------------------------------------------------------------


def test_station_cert_writes_the_key_encrypted_under_a_passphrase_from_a_file_and_records_who_ran_it(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a station, and the key's passphrase in a file (the environment's is not the one used)
    StationFactory.create(station_id="cs-5")
    passphrase_file = tmp_path / "key-pass"
    passphrase_file.write_text("from-the-file-0123\n")
    monkeypatch.setattr("getpass.getuser", lambda: "alice")
    # When an operator issues its certificate and key
    call_command(
        "pki", "station-cert", "cs-5", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"),
        passphrase_file=str(passphrase_file),
    )  # fmt: skip
    # Then the key is encrypted PKCS#8 (RFC 5958), opens only with the file's passphrase and matches the certificate
    pem = (tmp_path / "k.pem").read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, password=None)
    with pytest.raises(ValueError, match="password"):
        serialization.load_pem_private_key(pem, password=KEY_PASSPHRASE.encode())
    key = serialization.load_pem_private_key(pem, password=b"from-the-file-0123")
    assert key.public_key() == load_chain(tmp_path / "c.pem")[0].public_key()
    # and the issue is logged and stored as a security event naming the OS user
    event = StationEvent.objects.get(station__station_id="cs-5", kind=StationEventKind.CERTIFICATE_ISSUED)
    assert event.data["actor"] == "cli:alice"
    assert any("cli:alice" in r.getMessage() and "cs-5" in r.getMessage() for r in caplog.records)


def test_station_cert_refuses_without_a_passphrase_and_takes_none_on_the_command_line(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a station and no passphrase in the environment
    StationFactory.create(station_id="cs-6")
    monkeypatch.delenv("PKI_STATION_KEY_PASSPHRASE")
    files = ["--out-cert", str(tmp_path / "c.pem"), "--out-key", str(tmp_path / "k.pem")]
    # When a certificate is asked for without one, or with one on the command line
    with pytest.raises(CommandError, match="written encrypted"):
        call_command("pki", "station-cert", "cs-6", *files)
    with pytest.raises(CommandError, match="unrecognized arguments"):
        call_command("pki", "station-cert", "cs-6", *files, "--passphrase", "on-the-command-line")
    # Then nothing is issued and no key is written
    assert not PkiCertificate.objects.exists()
    assert not (tmp_path / "k.pem").exists()


def test_station_cert_refuses_an_id_no_station_has(pki: Path, tmp_path: Path) -> None:
    # When a certificate is asked for an id nobody added / Then it is refused and nothing is issued or written
    with pytest.raises(CommandError, match="no station 'cs-nobody'"):
        call_command(
            "pki", "station-cert", "cs-nobody", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem")
        )
    assert not PkiCertificate.objects.exists()
    assert not (tmp_path / "c.pem").exists()


def test_revoke_is_stored_as_a_security_event_naming_the_os_user(
    pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a station's certificate
    StationFactory.create(station_id="cs-8")
    call_command("pki", "station-cert", "cs-8", out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"))
    monkeypatch.setattr("getpass.getuser", lambda: "bob")
    # When an operator revokes it
    call_command("pki", "revoke", "cs-8", reason="keyCompromise")
    # Then a security event names the OS user, the reason and the serial
    event = StationEvent.objects.get(station__station_id="cs-8", kind=StationEventKind.CERTIFICATE_REVOKED)
    serial = format(load_chain(tmp_path / "c.pem")[0].serial_number, "x")
    assert (event.data["actor"], event.data["reason"], event.data["serials"]) == ("cli:bob", "keyCompromise", [serial])
