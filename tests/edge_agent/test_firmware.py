"""Signed firmware updates (OCPP 2.0.1 L01) against the recording CSMS, packages served over real HTTP."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ocpp.v21 import call as c21

from edge_agent.revocation import CrlSettings
from tests.edge_agent.csms import RecordingCsms
from tests.edge_agent.firmware_kit import Ca, PackageServer, make_ca, make_signer, update_firmware

pytestmark = pytest.mark.timeout(60)

PACKAGE = b"\x7fELF edge-agent firmware 2.0.0 " + bytes(range(256)) * 64
HAPPY_PATH = ["Downloading", "Downloaded", "SignatureVerified", "Installing", "Installed"]


@pytest.fixture
def repo() -> Iterator[PackageServer]:
    server = PackageServer().start()
    yield server
    server.stop()


@pytest.fixture
def ca() -> Ca:
    return make_ca()


@pytest.fixture
def crl(ca: Ca, tmp_path: Path) -> Iterator[CrlSettings]:
    """Where the agent finds the CA's CRL (revoking nothing): a server of its own, so ``repo.requests`` are packages."""
    server = PackageServer(files={"/pki/crl": ca.crl()}).start()
    yield CrlSettings(url=server.url("/pki/crl"), cache_dir=str(tmp_path / "crl"))
    server.stop()


async def _connected(csms: RecordingCsms, make_agent: Any, anchor: str, crl: CrlSettings) -> Any:
    agent = await make_agent(csms, firmware_trust_anchor=anchor, firmware_crl=crl)
    await csms.wait_for(lambda: "edge-1" in csms.connections and agent.station.link.connected)
    return agent


async def _update(csms: RecordingCsms, request: dict[str, Any]) -> Any:
    return await csms.call("edge-1", c21.UpdateFirmware(request_id=request["requestId"], firmware=request["firmware"]))


def _statuses(csms: RecordingCsms, request_id: int) -> list[str]:
    return [p["status"] for p in csms.of("FirmwareStatusNotification") if p["request_id"] == request_id]


def _security(csms: RecordingCsms) -> list[str]:
    return [p["type"] for p in csms.of("SecurityEventNotification")]


@pytest.mark.parametrize("algorithm", ["ecdsa", "ed25519"])
async def test_it_installs_a_package_signed_under_its_trust_anchor(
    csms: RecordingCsms, make_agent: Any, repo: PackageServer, ca: Ca, tmp_path: Path, crl: CrlSettings, algorithm: str
) -> None:
    # given an agent trusting our firmware-signing CA, and a package signed by a certificate that CA issued
    agent = await _connected(csms, make_agent, ca.write(tmp_path / "fw-ca.pem"), crl)
    signer = make_signer(ca, algorithm=algorithm)
    repo.files["/fw/edge-agent-2.0.0.bin"] = PACKAGE
    # when the CSMS asks it to update
    request = update_firmware(
        7, repo.url("/fw/edge-agent-2.0.0.bin"), signature=signer.sign(PACKAGE), cert_pem=signer.cert_pem()
    )
    answer = await _update(csms, request)
    # then it accepts, downloads, verifies and installs, reporting each step with the 2.0.1 statuses
    assert answer.status == "Accepted"
    await csms.wait_for(lambda: "Installed" in _statuses(csms, 7))
    assert _statuses(csms, 7) == HAPPY_PATH
    assert repo.requests == ["/fw/edge-agent-2.0.0.bin"]
    await csms.wait_for(lambda: "FirmwareUpdated" in _security(csms))
    # and the new version is recorded in its state and device model
    assert agent.station.firmware.installed_version == "edge-agent-2.0.0.bin"
    assert agent.station.dm.get("ChargingStation", "FirmwareVersion") == "edge-agent-2.0.0.bin"
    assert agent.client.boot_payload("PowerUp")["charging_station"]["firmware_version"] == "edge-agent-2.0.0.bin"


@pytest.mark.parametrize("forgery", ["tampered package", "signed by another key"])
async def test_it_refuses_a_package_whose_signature_does_not_verify(
    csms: RecordingCsms, make_agent: Any, repo: PackageServer, ca: Ca, tmp_path: Path, crl: CrlSettings, forgery: str
) -> None:
    # given a trusted signing certificate
    agent = await _connected(csms, make_agent, ca.write(tmp_path / "fw-ca.pem"), crl)
    signer = make_signer(ca)
    if forgery == "tampered package":
        # ... and a package altered after it was signed (one byte)
        signature = signer.sign(PACKAGE)
        repo.files["/fw/evil.bin"] = PACKAGE[:-1] + b"\x00"
    else:
        # ... and a signature made with a key that is not the certificate's
        signature = make_signer(ca).sign(PACKAGE)
        repo.files["/fw/evil.bin"] = PACKAGE
    # when the CSMS sends the update
    answer = await _update(
        csms, update_firmware(8, repo.url("/fw/evil.bin"), signature=signature, cert_pem=signer.cert_pem())
    )
    # then it is downloaded, found invalid, reported as InvalidSignature plus the security event, and not installed
    assert answer.status == "Accepted"
    await csms.wait_for(lambda: "InvalidFirmwareSignature" in _security(csms))
    assert _statuses(csms, 8) == ["Downloading", "Downloaded", "InvalidSignature"]
    assert "FirmwareUpdated" not in _security(csms)
    assert agent.station.firmware.installed_version is None
    assert agent.station.dm.get("ChargingStation", "FirmwareVersion") == ""


@pytest.mark.parametrize("problem", ["issued by another CA", "expired", "not yet valid"])
async def test_it_refuses_an_untrusted_signing_certificate_before_downloading(
    csms: RecordingCsms, make_agent: Any, repo: PackageServer, ca: Ca, tmp_path: Path, crl: CrlSettings, problem: str
) -> None:
    # given an agent trusting our CA, and a package correctly signed with a certificate that is not acceptable
    agent = await _connected(csms, make_agent, ca.write(tmp_path / "fw-ca.pem"), crl)
    if problem == "issued by another CA":
        signer = make_signer(make_ca("Someone else's CA"))
    elif problem == "expired":
        signer = make_signer(ca, valid_days=(-30, -1))
    else:
        signer = make_signer(ca, valid_days=(1, 30))
    repo.files["/fw/pkg.bin"] = PACKAGE
    # when the CSMS sends the update
    answer = await _update(
        csms, update_firmware(9, repo.url("/fw/pkg.bin"), signature=signer.sign(PACKAGE), cert_pem=signer.cert_pem())
    )
    # then it answers InvalidCertificate (L01.FR.02), raises the security event, and never fetches the package
    assert answer.status == "InvalidCertificate"
    await csms.wait_for(lambda: "InvalidFirmwareSigningCertificate" in _security(csms))
    assert repo.requests == []
    assert _statuses(csms, 9) == []
    assert agent.station.firmware.installed_version is None


async def test_it_refuses_unsigned_firmware_and_firmware_without_a_trust_anchor(
    csms: RecordingCsms, make_agent: Any, repo: PackageServer, ca: Ca, tmp_path: Path, crl: CrlSettings
) -> None:
    # given an agent whose trust anchor file does not exist
    agent = await _connected(csms, make_agent, str(tmp_path / "missing-ca.pem"), crl)
    signer = make_signer(ca)
    repo.files["/fw/pkg.bin"] = PACKAGE
    signed = update_firmware(10, repo.url("/fw/pkg.bin"), signature=signer.sign(PACKAGE), cert_pem=signer.cert_pem())
    unsigned = update_firmware(11, repo.url("/fw/pkg.bin"), signature="", cert_pem="")
    del unsigned["firmware"]["signature"], unsigned["firmware"]["signingCertificate"]
    # when the CSMS sends a signed and an unsigned update, then both are rejected with a reason, nothing fetched
    first, second = await _update(csms, signed), await _update(csms, unsigned)
    assert (first.status, first.status_info["reason_code"]) == ("Rejected", "NoTrustAnchor")
    assert (second.status, second.status_info["reason_code"]) == ("Rejected", "NoSignature")
    assert repo.requests == []
    assert agent.station.firmware.installed_version is None


async def test_a_package_that_cannot_be_downloaded_is_reported_download_failed(
    csms: RecordingCsms, make_agent: Any, repo: PackageServer, ca: Ca, tmp_path: Path, crl: CrlSettings
) -> None:
    # given a trusted signer and a location that answers 404
    agent = await _connected(csms, make_agent, ca.write(tmp_path / "fw-ca.pem"), crl)
    signer = make_signer(ca)
    request = update_firmware(12, repo.url("/fw/gone.bin"), signature=signer.sign(PACKAGE), cert_pem=signer.cert_pem())
    # when the update is sent with one retry
    answer = await csms.call(
        "edge-1", c21.UpdateFirmware(request_id=12, firmware=request["firmware"], retries=1, retry_interval=0)
    )
    # then both attempts are reported and it ends in DownloadFailed, with the old firmware kept
    assert answer.status == "Accepted"
    await csms.wait_for(lambda: "DownloadFailed" in _statuses(csms, 12))
    assert _statuses(csms, 12) == ["Downloading", "Downloading", "DownloadFailed"]
    assert repo.requests == ["/fw/gone.bin", "/fw/gone.bin"]
    assert agent.station.firmware.installed_version is None
