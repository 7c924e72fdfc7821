"""Plug & Charge and the OCSP responder over real sockets: a live CSMS (``vpp.serve``) with its own PKI, a
third party's OCSP responder and contract-certificate provider (tests/chargers/mo_pki.py, cryptography only), and
stations speaking OCPP 2.0.1 / 2.1 over WebSockets."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ocpp.messages
import pytest
from asgiref.sync import sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from django.test import override_settings

from chargers.pki import ca, issue, storage
from tests.chargers.conftest import LiveServer, raw_station, start_server, stop_server
from tests.chargers.factories import IdTokenFactory, StationFactory
from tests.chargers.mo_pki import Authority, ContractProvider, Responder, certificate, mo_chain, ocsp_request_data, pem
from tests.live import free_port

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True)]

PASSPHRASE = "pnc-test-passphrase"
EMAID = "DEMOA1234567890"


@dataclass
class World:
    csms: LiveServer
    log: Path
    pki_dir: Path  # the CSMS's PKI, shared with this test process
    mo: Authority
    responder: Responder
    provider: ContractProvider
    good: x509.Certificate
    revoked: x509.Certificate
    stranger: x509.Certificate  # issued by the MO sub-CA, unknown to its responder
    rogue: Responder  # a self-signed "MO" CA nobody here trusts, and its responder
    rogue_contract: x509.Certificate  # issued by the rogue CA, good according to the rogue's responder

    def ocsp_url(self) -> str:
        return f"{self.csms.http_url}/pki/ocsp"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, django_db_setup: None) -> Iterator[World]:
    pki_dir = tmp_path_factory.mktemp("pnc-pki")
    log = tmp_path_factory.mktemp("pnc-log") / "csms.log"
    mo_root = certificate("MO Root CA", ca=True)
    root_responder = Responder(mo_root).start()  # answers for the MO sub-CA itself (PEM chains name it)
    mo_root, mo = mo_chain(mo_root, ocsp_url=root_responder.url("ok"))
    root_responder.statuses[mo.cert.serial_number] = ocsp.OCSPCertStatus.GOOD
    (trust := tmp_path_factory.mktemp("pnc-mo") / "mo-root.pem").write_text(pem(mo_root.cert))
    good, revoked, stranger = (certificate(EMAID, issuer=mo).cert for _ in range(3))
    responder = Responder(mo, {good.serial_number: ocsp.OCSPCertStatus.GOOD,
                               revoked.serial_number: ocsp.OCSPCertStatus.REVOKED}).start()  # fmt: skip
    provider = ContractProvider(mo).start()
    rogue_ca = certificate("Rogue MO CA", ca=True)
    rogue_contract = certificate(EMAID, issuer=rogue_ca).cert
    rogue = Responder(rogue_ca, {rogue_contract.serial_number: ocsp.OCSPCertStatus.GOOD}).start()
    with override_settings(PKI_DIR=pki_dir, PKI_PASSPHRASE=PASSPHRASE):
        storage.signing_key_forget()
        ca.ca_init()
        env = {
            "PKI_DIR": str(pki_dir),
            "PKI_PASSPHRASE": PASSPHRASE,
            "PKI_OCSP_TIMEOUT_S": "2",
            "PKI_OUTBOUND_ALLOWED_NETWORKS": "127.0.0.0/8",  # the test's responders are on loopback
            "PKI_CONTRACT_PROVIDER_URL": provider.url,
            "PKI_CONTRACT_CA_FILE": str(trust),  # the MO root: the one anchor of contract certificates, however sent
        }
        csms = start_server(env, log_path=log)
        try:
            yield World(csms, log, pki_dir, mo, responder, provider, good, revoked, stranger, rogue, rogue_contract)
        finally:
            stop_server(csms)
            responder.stop()
            rogue.stop()
            root_responder.stop()
            provider.stop()
            storage.signing_key_forget()


async def _station() -> str:
    station = await sync_to_async(StationFactory.create)()
    return station.station_id


async def _authorize(world: World, hash_data: list[dict[str, str]], *, version: str = "2.0.1") -> dict:
    """Authorize a fresh eMAID the CSMS accepts, with ``hash_data``; returns the AuthorizeResponse payload."""
    token = await sync_to_async(IdTokenFactory.create)(type="eMAID")
    async with raw_station(world.csms, await _station(), version=version) as cs:
        request = {"idToken": {"idToken": token.id_token, "type": "eMAID"}, "iso15118CertificateHashData": hash_data}
        answer = await cs.rpc([2, "auth-1", "Authorize", request])
    assert answer[:2] == [3, "auth-1"], answer
    return _valid(version, "Authorize", answer[2])


async def _until(predicate, within: float = 10.0) -> None:
    for _ in range(int(within / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not met")


def _valid(version: str, action: str, payload: dict) -> dict:
    """``payload``, once the ocpp library's CALLRESULT schema for ``action`` accepts it."""
    ocpp.messages.get_validator(3, action, version).validate(payload)
    return payload


def _log(world: World) -> str:
    return world.log.read_text(errors="replace")


# --- Authorize with a contract certificate (C07) -------------------------------------------------------------------


async def test_a_good_contract_certificate_is_accepted(world: World) -> None:
    # Given a contract certificate its MO's responder calls good
    data = ocsp_request_data(world.good, world.mo.cert, world.responder.url("ok"))
    # When a station authorizes with its hash data
    answer = await _authorize(world, [data])
    # Then the CSMS asked the responder and accepts both certificate and eMAID
    assert answer == {"idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"}


async def test_a_contract_certificate_from_a_ca_nobody_trusts_is_refused(world: World) -> None:
    # Given a contract certificate a rogue CA issued, its responder (signing with the rogue's key, carrying the
    # rogue's certificate, or through a delegate the rogue authorised) calling it good
    for mode in ("ok", "delegated"):
        data = ocsp_request_data(world.rogue_contract, world.rogue.ca.cert, world.rogue.url(mode))
        # When a station authorizes with its hash data
        answer = await _authorize(world, [data])
        # Then the chain is refused (the rogue is neither the MO root in PKI_CONTRACT_CA_FILE nor issued by it)
        assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertChainError"}, mode


async def test_an_answer_signed_by_a_responder_the_issuer_authorised_is_accepted(world: World) -> None:
    # Given a responder that signs with an id-kp-OCSPSigning certificate the MO sub-CA issued
    data = ocsp_request_data(world.good, world.mo.cert, world.responder.url("delegated"))
    # When / Then
    assert (await _authorize(world, [data]))["certificateStatus"] == "Accepted"


async def test_a_revoked_contract_certificate_is_refused(world: World) -> None:
    # Given a contract certificate its MO's responder calls revoked
    data = ocsp_request_data(world.revoked, world.mo.cert, world.responder.url("ok"))
    # When a station authorizes with it
    answer = await _authorize(world, [data])
    # Then CertificateRevoked and the token Invalid (C07.FR.16)
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertificateRevoked"}


async def test_a_certificate_the_responder_does_not_know_is_refused(world: World) -> None:
    # Given a certificate the responder answers "unknown" for
    data = ocsp_request_data(world.stranger, world.mo.cert, world.responder.url("ok"))
    # When / Then: refused, fail closed
    answer = await _authorize(world, [data])
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertChainError"}


async def test_an_answer_signed_by_the_wrong_key_is_a_signature_error(world: World) -> None:
    # Given a responder signing with a key that only claims the MO sub-CA's name
    data = ocsp_request_data(world.good, world.mo.cert, world.responder.url("wrong-key"))
    # When / Then
    answer = await _authorize(world, [data])
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "SignatureError"}


async def test_a_responder_that_is_down_gets_the_fail_safe_answer_and_a_log_line(world: World) -> None:
    # Given a responder URL on a port nobody listens on
    data = ocsp_request_data(world.good, world.mo.cert, f"http://127.0.0.1:{free_port()}/ocsp")
    # When a station authorizes
    answer = await _authorize(world, [data])
    # Then it is refused as unvalidated (never Accepted) and the server says why
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertChainError"}
    assert "contract certificate CertChainError" in _log(world)
    assert "ConnectError" in _log(world)  # httpx: the connection was refused


async def test_a_slow_responder_holds_up_only_its_own_answer(world: World) -> None:
    # Given a responder that does not answer until released, and two stations
    data = ocsp_request_data(world.good, world.mo.cert, world.responder.url("slow"))
    world.responder.release.clear()
    authorize = asyncio.create_task(_authorize(world, [data]))
    try:
        await _until(lambda: "slow" in world.responder.asked)
        # When the other station sends a Heartbeat while the Authorize waits on the responder
        async with raw_station(world.csms, await _station()) as other:
            heartbeat = await other.rpc([2, "hb-1", "Heartbeat", {}])
        # Then the Heartbeat is answered while the Authorize is still waiting
        assert heartbeat[:2] == [3, "hb-1"]
        assert not authorize.done()
        # And the Authorize gets the fail-safe answer once the CSMS stops waiting (PKI_OCSP_TIMEOUT_S)
        answer = await asyncio.wait_for(authorize, 20)
    finally:
        world.responder.release.set()
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertChainError"}
    assert "no answer within 2 s" in _log(world)


async def test_an_unknown_emaid_with_a_good_certificate_is_contract_cancelled(world: World) -> None:
    # Given a good certificate but an eMAID the CSMS does not know
    data = ocsp_request_data(world.good, world.mo.cert, world.responder.url("ok"))
    async with raw_station(world.csms, await _station()) as cs:
        request = {"idToken": {"idToken": "NOT-A-CUSTOMER", "type": "eMAID"}, "iso15118CertificateHashData": [data]}
        answer = await cs.rpc([2, "auth-x", "Authorize", request])
    # Then ContractCancelled with the token's own status (C07.FR.13)
    assert answer[2] == {"idTokenInfo": {"status": "Unknown"}, "certificateStatus": "ContractCancelled"}


async def test_a_pem_chain_the_station_could_not_validate_is_validated_centrally(world: World) -> None:
    # Given contract certificates naming the MO's responder in their AIA, one good and one revoked, sent as PEM
    # chains (leaf, MO sub-CA) without hash data (C07.FR.06)
    good = certificate(EMAID, issuer=world.mo, ocsp_url=world.responder.url("ok")).cert
    revoked = certificate(EMAID, issuer=world.mo, ocsp_url=world.responder.url("ok")).cert
    world.responder.statuses[good.serial_number] = ocsp.OCSPCertStatus.GOOD
    world.responder.statuses[revoked.serial_number] = ocsp.OCSPCertStatus.REVOKED
    token = await sync_to_async(IdTokenFactory.create)(type="eMAID")
    answers = []
    async with raw_station(world.csms, await _station(), version="2.1") as cs:
        for n, contract in enumerate((good, revoked)):
            request = {
                "idToken": {"idToken": token.id_token, "type": "eMAID"},
                "certificate": pem(contract, world.mo.cert),
            }
            answers.append((await cs.rpc([2, f"pem-{n}", "Authorize", request]))[2])
    # Then the CSMS checks the chain up to the MO root it trusts and asks the responders: good accepted, revoked not
    assert answers[0] == {"idTokenInfo": {"status": "Accepted"}, "certificateStatus": "Accepted"}
    assert answers[1] == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertificateRevoked"}


async def test_our_own_certificate_is_refused_once_revoked(world: World) -> None:
    # Given a certificate our CPO sub-CA issued, named with our responder's URL
    issued = await sync_to_async(_issue)(world)
    data = ocsp_request_data(issued, _sub_ca(world), world.ocsp_url())
    # When a station authorizes with it
    assert (await _authorize(world, [data]))["certificateStatus"] == "Accepted"
    # And after it is revoked
    await sync_to_async(_revoke)(world, issued)
    answer = await _authorize(world, [data])
    # Then it is refused at once
    assert answer == {"idTokenInfo": {"status": "Invalid"}, "certificateStatus": "CertificateRevoked"}


# --- GetCertificateStatus (M06), Get15118EVCertificate (M01), GetCertificateChainStatus (M07) -----------------------


async def test_get_certificate_status_relays_the_responders_answer(world: World) -> None:
    data = ocsp_request_data(world.revoked, world.mo.cert, world.responder.url("ok"))
    async with raw_station(world.csms, await _station()) as cs:
        answer = await cs.rpc([2, "gcs-1", "GetCertificateStatus", {"ocspRequestData": data}])
        down = {**data, "responderURL": f"http://127.0.0.1:{free_port()}/"}
        failed = await cs.rpc([2, "gcs-2", "GetCertificateStatus", {"ocspRequestData": down}])
    # Then the DER OCSPResponse comes back, base64, signed by the MO sub-CA and saying revoked
    assert _valid("2.0.1", "GetCertificateStatus", answer[2])["status"] == "Accepted"
    response = ocsp.load_der_ocsp_response(base64.b64decode(answer[2]["ocspResult"]))
    assert response.certificate_status == ocsp.OCSPCertStatus.REVOKED
    assert response.serial_number == world.revoked.serial_number
    _signature_verify(world.mo.cert, response)
    # And a responder that is down is Failed
    assert _valid("2.0.1", "GetCertificateStatus", failed[2])["status"] == "Failed"


async def test_get_15118_ev_certificate_relays_the_exi_request_to_the_provider(world: World) -> None:
    exi = base64.b64encode(b"\x80\x98\x02 opaque EXI CertificateInstallationReq").decode()
    request = {"iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef", "action": "Install", "exiRequest": exi}
    async with raw_station(world.csms, station_id := await _station()) as cs:
        answer = await cs.rpc([2, "ev-1", "Get15118EVCertificate", request])
    # Then the provider got the request as sent, and its answer comes back untouched
    assert _valid("2.0.1", "Get15118EVCertificate", answer[2])["status"] == "Accepted"
    seen = world.provider.requests[-1]
    assert (seen["exiRequest"], seen["action"], seen["stationId"]) == (exi, "Install", station_id)
    payload = json.loads(base64.b64decode(answer[2]["exiResponse"]))
    contract = x509.load_pem_x509_certificate(payload["contract"].encode())
    contract.verify_directly_issued_by(world.mo.cert)
    assert payload["for"] == exi


async def test_get_certificate_chain_status_answers_from_the_responders(world: World) -> None:
    # Given one of our certificates and a good MO one, asked about over OCPP 2.1
    issued = await sync_to_async(_issue)(world)

    def hash_data(cert: x509.Certificate, issuer: x509.Certificate) -> dict[str, str]:
        data = ocsp_request_data(cert, issuer, "")
        del data["responderURL"]
        return data

    ours, theirs = hash_data(issued, _sub_ca(world)), hash_data(world.good, world.mo.cert)
    requests = [
        {"source": "OCSP", "urls": [world.ocsp_url()], "certificateHashData": ours},
        {"source": "OCSP", "urls": [world.responder.url("ok")], "certificateHashData": theirs},
        {"source": "CRL", "urls": ["http://127.0.0.1:1/crl"], "certificateHashData": theirs},
    ]
    async with raw_station(world.csms, await _station(), version="2.1") as cs:
        first = await cs.rpc([2, "chain-1", "GetCertificateChainStatus", {"certificateStatusRequests": requests}])
        await sync_to_async(_revoke)(world, issued)
        second = await cs.rpc([2, "chain-2", "GetCertificateChainStatus", {"certificateStatusRequests": requests}])
    # Then ours and the MO's are Good, the CRL source (no CRL client) Failed; ours is Revoked once revoked
    assert [s["status"] for s in _valid("2.1", "GetCertificateChainStatus", first[2])["certificateStatus"]] == [
        "Good",
        "Good",
        "Failed",
    ]
    assert [s["status"] for s in second[2]["certificateStatus"]] == ["Revoked", "Good", "Failed"]


async def test_get_certificate_chain_status_never_calls_a_rogue_cas_certificate_good(world: World) -> None:
    # Given a rogue CA's contract certificate, good according to the rogue's own responder
    data = ocsp_request_data(world.rogue_contract, world.rogue.ca.cert, "")
    del data["responderURL"]
    requests = [{"source": "OCSP", "urls": [world.rogue.url("ok")], "certificateHashData": data}]
    # When a station asks for its status (twice: a verdict kept from the first must not turn it good either)
    async with raw_station(world.csms, await _station(), version="2.1") as cs:
        answers = [
            await cs.rpc([2, f"rogue-{n}", "GetCertificateChainStatus", {"certificateStatusRequests": requests}])
            for n in range(2)
        ]
    # Then it is not Good
    for answer in answers:
        statuses = [s["status"] for s in _valid("2.1", "GetCertificateChainStatus", answer[2])["certificateStatus"]]
        assert statuses == ["Failed"]


# --- our responder, /pki/ocsp, as any relying party sees it ---------------------------------------------------------


def _post(world: World, body: bytes, content_type: str = "application/ocsp-request") -> ocsp.OCSPResponse:
    request = urllib.request.Request(world.ocsp_url(), data=body, headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=10) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/ocsp-response"
        return ocsp.load_der_ocsp_response(answer.read())


def _signature_verify(signer: x509.Certificate, response: ocsp.OCSPResponse) -> None:
    """Raises InvalidSignature unless ``signer``'s (EC) key signed ``response`` (cryptography's check, not ours)."""
    key, algorithm = signer.public_key(), response.signature_hash_algorithm
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert algorithm is not None
    key.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(algorithm))


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read()


def _ocsp_request(cert: x509.Certificate, issuer: x509.Certificate, nonce: bytes | None = None) -> bytes:
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


async def test_our_responder_answers_good_and_revoked_signed_and_a_serial_it_never_issued_unauthorized(
    world: World,
) -> None:
    # Given a certificate our sub-CA issued, one it revoked, and a serial it never issued
    issued, gone = await sync_to_async(_issue)(world), await sync_to_async(_issue)(world)
    await sync_to_async(_revoke)(world, gone)
    never = certificate("never", issuer=Authority(_sub_ca(world), ec.generate_private_key(ec.SECP256R1()))).cert
    sub_ca = _sub_ca(world)
    # When a relying party asks (POST, one with a nonce)
    nonce = os.urandom(16)
    good = await sync_to_async(_post)(world, _ocsp_request(issued, sub_ca, nonce))
    revoked = await sync_to_async(_post)(world, _ocsp_request(gone, sub_ca))
    unknown = await sync_to_async(_post)(world, _ocsp_request(never, sub_ca))
    # Then the register's certificates get successful answers, signed by the sub-CA, current, saying what it says
    for response, status in ((good, "GOOD"), (revoked, "REVOKED")):
        assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
        assert response.certificate_status == ocsp.OCSPCertStatus[status]
        _signature_verify(sub_ca, response)
        assert response.next_update_utc is not None
        assert response.this_update_utc < response.next_update_utc
    assert good.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == nonce
    assert revoked.revocation_time_utc is not None
    # And the serial it never issued an unsigned unauthorized (RFC 5019 2.2.3)
    assert unknown.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


async def test_our_responder_answers_a_get_and_refuses_malformed_and_foreign_requests(world: World) -> None:
    issued = await sync_to_async(_issue)(world)
    encoded = base64.b64encode(_ocsp_request(issued, _sub_ca(world))).decode()
    answer = await asyncio.to_thread(_get, f"{world.ocsp_url()}/{encoded}")
    assert ocsp.load_der_ocsp_response(answer).certificate_status == ocsp.OCSPCertStatus.GOOD
    malformed = [b"", b"not DER at all", _ocsp_request(issued, _sub_ca(world))[:-3]]
    for body in malformed:
        response = await sync_to_async(_post)(world, body)
        assert response.response_status == ocsp.OCSPResponseStatus.MALFORMED_REQUEST, body
    # A certificate of another issuer (the MO's) is not ours to answer for
    foreign = await sync_to_async(_post)(world, _ocsp_request(world.good, world.mo.cert))
    assert foreign.response_status == ocsp.OCSPResponseStatus.UNAUTHORIZED


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command (Debian package openssl)")
async def test_openssl_verifies_our_responders_answer(world: World, tmp_path: Path) -> None:
    # Given one of our certificates, and OpenSSL's OCSP client trusting our CA bundle
    issued = await sync_to_async(_issue)(world)
    leaf, issuer = tmp_path / "leaf.pem", tmp_path / "issuer.pem"
    leaf.write_bytes(issued.public_bytes(serialization.Encoding.PEM))
    issuer.write_bytes(_sub_ca(world).public_bytes(serialization.Encoding.PEM))
    bundle = _bundle(world)
    # When it asks our responder (SHA-1 CertID and a nonce, OpenSSL's defaults)
    command = ["openssl", "ocsp", "-issuer", str(issuer), "-cert", str(leaf), "-url", world.ocsp_url(),
               "-CAfile", str(bundle), "-timeout", "10"]  # fmt: skip
    out = await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True, timeout=30, check=False)
    # Then it verifies the answer and reads good
    assert "Response verify OK" in out.stdout + out.stderr, out.stdout + out.stderr
    assert f"{leaf}: good" in out.stdout


# --- helpers on the test process's side of the shared PKI -----------------------------------------------------------


def _sub_ca(world: World) -> x509.Certificate:
    return x509.load_pem_x509_certificate(_bundle(world).read_bytes())


def _bundle(world: World) -> Path:
    return world.pki_dir / f"{ca.BUNDLE}.pem"


def _issue(world: World) -> x509.Certificate:
    with override_settings(PKI_DIR=world.pki_dir, PKI_PASSPHRASE=PASSPHRASE):
        storage.signing_key_forget()
        try:
            return issue.station_certificate_issue(station_id=f"ev-{os.urandom(4).hex()}").cert
        finally:
            storage.signing_key_forget()


def _revoke(world: World, cert: x509.Certificate) -> None:
    assert issue.certificate_revoke(serial=format(cert.serial_number, "x"), reason="keyCompromise") == 1
