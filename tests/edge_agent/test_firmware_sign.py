"""``manage.py firmware signing-cert`` and ``firmware sign`` produce what UpdateFirmware carries, and the edge agent,
trusting the built-in PKI's CA bundle, installs a package so signed and refuses it once tampered with, or once the
signing certificate is revoked (the CSMS's CRL, ``/pki/crl``, fetched from a live server)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from django.core.management import CommandError, call_command
from django.test import override_settings
from ocpp.v21 import call as c21

from chargers import ocpp_j
from chargers.pki import ca, issue, storage
from edge_agent.app import station_params
from edge_agent.config import load_config
from edge_agent.revocation import CrlSettings
from tests.chargers.conftest import LiveServer, start_server, stop_server
from tests.edge_agent.csms import RecordingCsms
from tests.edge_agent.firmware_kit import PackageServer, make_crl

pytestmark = [pytest.mark.timeout(60), pytest.mark.django_db(transaction=True)]

PACKAGE = b"\x7fELF edge-agent firmware 3.0.0 " + bytes(range(256)) * 16
KEY_PASSPHRASE = "firmware-key-passphrase-0123"
PKI_PASSPHRASE = "test-pki-passphrase-0123456789"


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    """The built-in PKI (root + CPO sub-CA) in a directory of this test's own."""
    directory = tmp_path / "pki"
    with override_settings(PKI_DIR=directory, PKI_PASSPHRASE=PKI_PASSPHRASE):
        storage.signing_key_forget()
        ca.ca_init(organisation="Test CPO")
        yield directory
    storage.signing_key_forget()


@pytest.fixture(autouse=True)
async def close_db_threads() -> Any:
    yield
    # sync_to_async ran the ORM on its worker thread: close that thread's connection, or PostgreSQL cannot drop the
    # test database at the end of the session ("being accessed by other users").
    from django.db import connections

    await sync_to_async(connections.close_all)()


@pytest.fixture
def pki_csms(pki: Path) -> Iterator[LiveServer]:
    """The real CSMS (Daphne, ``vpp.serve``) on this test's PKI: its ``/pki/crl`` is the sub-CA's CRL."""
    server = start_server({"PKI_DIR": str(pki), "PKI_PASSPHRASE": PKI_PASSPHRASE})
    yield server
    stop_server(server)


def _agent_firmware(tmp_path: Path, csms: RecordingCsms, anchor: Path, **env: str) -> dict[str, Any]:
    """The firmware settings an agent takes from its configuration (``edge_agent.config``, as ``edge-agent run``)."""
    cfg = load_config(
        None,
        env={
            "EDGE_AGENT_STATION_ID": "edge-1",
            "EDGE_AGENT_CSMS_URL": csms.url,
            "EDGE_AGENT_VAR_DIR": str(tmp_path / "agent"),
            "EDGE_AGENT_FIRMWARE_TRUST_ANCHOR": str(anchor),
            **env,
        },
    )
    return {name: value for name, value in vars(station_params(cfg)).items() if name.startswith("firmware_")}


@pytest.fixture
def repo() -> Iterator[PackageServer]:
    server = PackageServer().start()
    yield server
    server.stop()


@pytest.fixture
def signer(pki: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """A firmware-signing key and certificate issued by the command, the passphrase in the environment."""
    monkeypatch.setenv("FIRMWARE_SIGNING_PASSPHRASE", KEY_PASSPHRASE)
    cert, key = tmp_path / "fw-signer.pem", tmp_path / "fw-signer.key"
    call_command("firmware", "signing-cert", "--out-cert", str(cert), "--out-key", str(key), "--cn", "FW 2026")
    return cert, key


def _sign(path: Path, cert: Path, key: Path, location: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    capsys.readouterr()
    call_command(
        "firmware", "sign", str(path), "--key-file", str(key), "--cert-file", str(cert), "--location", location
    )
    return json.loads(capsys.readouterr().out)


def _signed_now(path: Path, cert: Path, key: Path, location: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """UpdateFirmware's firmware object for ``path`` signed by the command, to be retrieved at once."""
    return {**_sign(path, cert, key, location, capsys), "retrieveDateTime": "2026-01-01T00:00:00Z"}


async def _update(csms: RecordingCsms, request_id: int, firmware: dict[str, Any]) -> Any:
    return await csms.call("edge-1", c21.UpdateFirmware(request_id=request_id, firmware=firmware))


def _events(csms: RecordingCsms, request_id: int) -> tuple[list[str], list[str]]:
    statuses = [p["status"] for p in csms.of("FirmwareStatusNotification") if p["request_id"] == request_id]
    return statuses, [p["type"] for p in csms.of("SecurityEventNotification")]


def test_the_signing_key_is_written_encrypted_and_never_taken_from_argv(signer, tmp_path, monkeypatch):
    # Given the key the command wrote
    _, key = signer
    # Then it does not load without the passphrase, and loads with it
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(key.read_bytes(), password=None)
    serialization.load_pem_private_key(key.read_bytes(), password=KEY_PASSPHRASE.encode())
    assert key.stat().st_mode & 0o077 == 0
    # And without a passphrase in a file or the environment, no key is issued (there is no argv option for one)
    monkeypatch.delenv("FIRMWARE_SIGNING_PASSPHRASE")
    with pytest.raises(CommandError, match="FIRMWARE_SIGNING_PASSPHRASE"):
        call_command("firmware", "signing-cert", "--out-cert", str(tmp_path / "c"), "--out-key", str(tmp_path / "k"))


def test_it_refuses_to_sign_with_a_certificate_that_is_not_the_keys(signer, pki, tmp_path, capsys):
    # Given the signing key and a certificate of another key (the sub-CA's, from the same PKI)
    _, key = signer
    package = tmp_path / "fw.bin"
    package.write_bytes(PACKAGE)
    # When the operator signs with the mismatched pair / Then nothing is signed
    with pytest.raises(CommandError, match="not the signing key's"):
        _sign(package, pki / "ca-bundle.pem", key, "", capsys)


async def test_the_agent_installs_a_package_signed_by_the_command_and_refuses_it_tampered(
    signer, pki, repo, csms: RecordingCsms, make_agent: Any, tmp_path: Path, capsys
):
    # Given an agent trusting the PKI's CA bundle, and a package signed with the command
    cert, key = signer
    package = tmp_path / "edge-agent-3.0.0.bin"
    package.write_bytes(PACKAGE)
    signed = _sign(package, cert, key, repo.url("/fw/edge-agent-3.0.0.bin"), capsys)
    firmware = {**signed, "retrieveDateTime": "2026-01-01T00:00:00Z"}
    ocpp_j.check(ocpp_j.request_validator("2.0.1", "UpdateFirmware"), {"requestId": 1, "firmware": firmware})
    # The sub-CA's CRL as the CSMS's /pki/crl builds it (fetched from a live CSMS in the tests below). Built here, not
    # through issue.crl_der(): that process-wide cache may still hold an earlier test's CRL, signed by another sub-CA.
    repo.files["/pki/crl"] = await sync_to_async(issue.crl_build)(now=datetime.now(UTC))
    crl = CrlSettings(url=repo.url("/pki/crl"), cache_dir=str(tmp_path / "crl"))
    agent = await make_agent(csms, firmware_trust_anchor=str(pki / "ca-bundle.pem"), firmware_crl=crl)
    await csms.wait_for(lambda: "edge-1" in csms.connections and agent.station.link.connected)
    repo.files["/fw/edge-agent-3.0.0.bin"] = PACKAGE
    repo.files["/fw/tampered.bin"] = PACKAGE[:-1] + b"\x00"
    # When the CSMS sends it as signed / Then the agent verifies and installs it
    assert (await _update(csms, 1, firmware)).status == "Accepted"
    await csms.wait_for(lambda: "Installed" in _events(csms, 1)[0])
    assert "SignatureVerified" in _events(csms, 1)[0]
    assert agent.station.firmware.installed_version == "edge-agent-3.0.0.bin"
    # When the same signature comes with a package altered by one byte / Then it is refused, not installed
    tampered = {**firmware, "location": repo.url("/fw/tampered.bin")}
    assert (await _update(csms, 2, tampered)).status == "Accepted"
    await csms.wait_for(lambda: "InvalidFirmwareSignature" in _events(csms, 2)[1])
    assert _events(csms, 2)[0] == ["Downloading", "Downloaded", "InvalidSignature"]
    assert agent.station.firmware.installed_version == "edge-agent-3.0.0.bin"


def test_a_firmware_signing_certificate_is_registered_and_can_be_revoked(signer, pki):
    from cryptography import x509

    from chargers.models import CertificateUse, PkiCertificate
    from chargers.pki import issue

    # Given a firmware-signing certificate issued by the command
    cert = x509.load_pem_x509_certificate(signer[0].read_bytes())
    serial = issue.serial_hex(cert.serial_number)
    # Then the register knows it as a firmware signer
    row = PkiCertificate.objects.get(serial=serial)
    assert (row.use, row.subject_cn) == (CertificateUse.FIRMWARE, "FW 2026")
    # And when it is revoked, the CRL lists it
    assert issue.certificate_revoke(serial=serial, reason="keyCompromise") == 1
    crl = x509.load_der_x509_crl(issue.crl_der())
    assert crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


async def test_the_agent_refuses_a_package_signed_by_a_certificate_revoked_on_the_csmss_crl(
    signer, pki, pki_csms, repo, csms: RecordingCsms, make_agent: Any, tmp_path: Path, capsys
):
    # Given an agent trusting the PKI's CA bundle and checking revocation on the CSMS's /pki/crl, and a firmware
    # signing certificate it has installed a package with
    cert, key = signer
    crl_url = f"{pki_csms.http_url}/pki/crl"  # what the default derives from the CSMS's URL (test_revocation)
    agent = await make_agent(
        csms, **_agent_firmware(tmp_path, csms, pki / "ca-bundle.pem", EDGE_AGENT_FIRMWARE_CRL_URL=crl_url)
    )
    await csms.wait_for(lambda: "edge-1" in csms.connections and agent.station.link.connected)
    for version in ("3.0.0", "3.0.1"):
        (tmp_path / f"edge-agent-{version}.bin").write_bytes(PACKAGE + version.encode())
        repo.files[f"/fw/edge-agent-{version}.bin"] = PACKAGE + version.encode()
    first = _signed_now(tmp_path / "edge-agent-3.0.0.bin", cert, key, repo.url("/fw/edge-agent-3.0.0.bin"), capsys)
    assert (await _update(csms, 1, first)).status == "Accepted"
    await csms.wait_for(lambda: "Installed" in _events(csms, 1)[0])
    # When the operator revokes the signing certificate (its key leaked), and a package signed with it is sent
    serial = issue.serial_hex(x509.load_pem_x509_certificate(cert.read_bytes()).serial_number)
    assert await sync_to_async(issue.certificate_revoke)(serial=serial, reason="keyCompromise") == 1
    second = _signed_now(tmp_path / "edge-agent-3.0.1.bin", cert, key, repo.url("/fw/edge-agent-3.0.1.bin"), capsys)
    assert (await _update(csms, 2, second)).status == "Accepted"
    # Then the agent refuses to install it, reports it with a security event, and keeps the firmware it had
    await csms.wait_for(lambda: "InvalidFirmwareSigningCertificate" in _events(csms, 2)[1])
    assert _events(csms, 2)[0] == ["Downloading", "Downloaded", "InvalidSignature"]
    assert agent.station.firmware.installed_version == "edge-agent-3.0.0.bin"


async def test_the_agent_ignores_a_crl_not_signed_by_the_issuer_and_installs_nothing_without_one(
    signer, pki, repo, csms: RecordingCsms, make_agent: Any, tmp_path: Path, capsys
):
    # Given an agent trusting the PKI's CA bundle, whose CRL location serves a CRL in the sub-CA's name signed by
    # someone else's key (listing nothing), and no other CRL
    cert, key = signer
    forged = make_crl(ca.sub_ca().cert.subject, ec.generate_private_key(ec.SECP256R1()))
    repo.files["/pki/crl"] = forged
    agent = await make_agent(
        csms,
        **_agent_firmware(tmp_path, csms, pki / "ca-bundle.pem", EDGE_AGENT_FIRMWARE_CRL_URL=repo.url("/pki/crl")),
    )
    await csms.wait_for(lambda: "edge-1" in csms.connections and agent.station.link.connected)
    package = tmp_path / "edge-agent-3.0.0.bin"
    package.write_bytes(PACKAGE)
    repo.files["/fw/edge-agent-3.0.0.bin"] = PACKAGE
    # When a correctly signed package is sent
    signed = _signed_now(package, cert, key, repo.url("/fw/edge-agent-3.0.0.bin"), capsys)
    assert (await _update(csms, 1, signed)).status == "Accepted"
    # Then it is not installed: the revocation status is unknown, reported as such (its own status and event)
    await csms.wait_for(lambda: "FirmwareRevocationStatusUnknown" in _events(csms, 1)[1])
    assert _events(csms, 1)[0] == ["Downloading", "Downloaded", "InstallVerificationFailed"]
    assert agent.station.firmware.installed_version is None
