"""OCSP without a server: the client's acceptance rules (RFC 6960 3.2) against answers cryptography builds for a
third party's CA, our responder's signing budget, the AIA in what we issue, and the Plug & Charge relays whose
provider is not configured or down."""

from __future__ import annotations

import asyncio
import base64
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID
from django.db import DatabaseError, connections
from django.test import Client, override_settings

from chargers import writer
from chargers.handlers import plug_and_charge
from chargers.jobs import StationRef
from chargers.pki import ca, issue, ocsp, ocsp_client, storage
from chargers.pki.errors import PkiError
from chargers.pki.ocsp import CertId, OcspDataError
from chargers.pki.ocsp_client import Status
from tests.chargers.mo_pki import Authority, certificate, mo_chain, mo_sub_ca, ocsp_request_data, pem
from tests.live import free_port

STATION = StationRef(pk=1, station_id="cs-ocsp", version="2.0.1")


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    with override_settings(PKI_DIR=tmp_path / "pki", PKI_PASSPHRASE="ocsp-unit-test"):
        storage.signing_key_forget()
        ca.ca_init()
        yield tmp_path / "pki"
    storage.signing_key_forget()


def _answer(
    issuer: Authority,
    cert: x509.Certificate,
    *,
    signer: Authority | None = None,
    certs: list[x509.Certificate] | None = None,
    this_update: datetime | None = None,
    next_update: datetime | None = None,
) -> bytes:
    """A responder's answer that ``cert`` is good, built and signed with cryptography (by ``signer``, default the
    issuer)."""
    now = datetime.now(UTC)
    signer = signer or issuer
    builder = x509_ocsp.OCSPResponseBuilder().add_response(
        cert, issuer.cert, hashes.SHA256(), x509_ocsp.OCSPCertStatus.GOOD,
        this_update or now, next_update or now + timedelta(hours=1), None, None,
    )  # fmt: skip
    builder = builder.responder_id(x509_ocsp.OCSPResponderEncoding.HASH, signer.cert)
    return (
        builder.certificates(certs or [issuer.cert])
        .sign(signer.key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )


def _cert_id(cert: x509.Certificate, issuer: x509.Certificate) -> CertId:
    return CertId.from_ocpp(ocsp_request_data(cert, issuer, ""))


def test_it_reads_ocpp_hash_data_as_cryptography_computes_it() -> None:
    # Given a contract certificate and OCPP's OCSPRequestData for it (hashes from cryptography's request builder)
    mo = mo_sub_ca()
    contract = certificate("DEMOA1", issuer=mo).cert
    # When it is read / Then it names that certificate of that issuer
    cert_id = _cert_id(contract, mo.cert)
    assert cert_id.serial == contract.serial_number
    assert cert_id.issued_by(mo.cert)
    assert not cert_id.issued_by(contract)


@pytest.mark.parametrize(
    ("field", "value"),
    [("issuerNameHash", "abc"), ("issuerKeyHash", "00" * 31), ("serialNumber", "xyz"), ("hashAlgorithm", "MD5")],
)
def test_it_refuses_hash_data_that_names_no_certificate(field: str, value: str) -> None:
    mo = mo_sub_ca()
    data = ocsp_request_data(certificate("DEMOA1", issuer=mo).cert, mo.cert, "") | {field: value}
    with pytest.raises(OcspDataError):
        CertId.from_ocpp(data)


def test_it_accepts_a_good_answer_signed_by_an_issuer_that_chains_to_a_trusted_root() -> None:
    # Given an MO root trusted here, and its sub-CA's good answer about a contract (the answer carries the sub-CA)
    root, mo = mo_chain()
    contract = certificate("DEMOA1", issuer=mo).cert
    # When it is checked against the root
    verdict = ocsp_client.response_check(_answer(mo, contract), _cert_id(contract, mo.cert), anchors=[root.cert])
    # Then it is good, until its nextUpdate
    assert verdict.status == Status.GOOD
    assert verdict.next_update is not None


def test_it_refuses_a_good_answer_whose_issuer_chains_to_no_trusted_root() -> None:
    # Given a trusted MO root, and issuers it never vouched for, each signing a good answer about its own contract
    # and carrying its own certificate: a self-signed rogue CA, a sub-CA of another root, a certificate claiming to
    # be the trusted root's sub-CA but signed by the rogue, and one the root issued that is not a CA
    root, _ = mo_chain()
    rogue = certificate("Rogue MO CA", ca=True)
    _, foreign_sub = mo_chain()
    forged = certificate("MO Sub-CA", issuer=rogue, ca=True)
    not_a_ca = certificate("MO Sub-CA", issuer=root, ca=False)
    for issuer in (rogue, foreign_sub, not_a_ca):
        contract = certificate("DEMOA1", issuer=issuer).cert
        # When each answer is checked against the trusted root
        verdict = ocsp_client.response_check(
            _answer(issuer, contract), _cert_id(contract, issuer.cert), anchors=[root.cert]
        )
        # Then none is good: the issuer is not trusted, whatever the answer says
        assert verdict.status == Status.UNTRUSTED, issuer.cert.subject
    # And an answer carrying a chain whose link to the root is forged is refused alike
    contract = certificate("DEMOA1", issuer=forged).cert
    der = _answer(forged, contract, certs=[forged.cert, root.cert])
    assert (
        ocsp_client.response_check(der, _cert_id(contract, forged.cert), anchors=[root.cert]).status == Status.UNTRUSTED
    )


def test_it_refuses_a_delegate_without_ocsp_signing_or_from_another_issuer() -> None:
    # Given a responder certificate the issuer gave no id-kp-OCSPSigning, and one another CA issued with it
    mo, other = mo_sub_ca(), mo_sub_ca()
    contract = certificate("DEMOA1", issuer=mo).cert
    no_eku = certificate("signer", issuer=mo, eku=[ExtendedKeyUsageOID.CLIENT_AUTH])
    foreign = certificate("signer", issuer=other, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    authorised = certificate("signer", issuer=mo, eku=[ExtendedKeyUsageOID.OCSP_SIGNING])
    cert_id = _cert_id(contract, mo.cert)
    # When their answers are checked / Then only the authorised delegate's is accepted
    for delegate, expected in ((no_eku, Status.SIGNATURE), (foreign, Status.SIGNATURE), (authorised, Status.GOOD)):
        der = _answer(mo, contract, signer=delegate, certs=[delegate.cert, mo.cert])
        assert ocsp_client.response_check(der, cert_id, anchors=[mo.cert]).status == expected


def test_an_issuer_known_here_need_not_be_in_the_answer(tmp_path: Path) -> None:
    # Given an answer signed by the MO sub-CA that does not carry the sub-CA's certificate
    mo = mo_sub_ca()
    contract = certificate("DEMOA1", issuer=mo).cert
    stranger = certificate("someone")
    der = _answer(mo, contract, certs=[stranger.cert])
    cert_id = _cert_id(contract, mo.cert)
    # When checked without, then with, the sub-CA in PKI_CONTRACT_CA_FILE
    unknown = ocsp_client.response_check(der, cert_id, anchors=ocsp_client.known_issuers())
    bundle = tmp_path / "mo.pem"
    bundle.write_bytes(mo.cert.public_bytes(serialization.Encoding.PEM))
    with override_settings(PKI_CONTRACT_CA_FILE=str(bundle)):
        known = ocsp_client.response_check(der, cert_id, anchors=ocsp_client.known_issuers())
    # Then it cannot be trusted until the issuer is known
    assert unknown.status == Status.UNTRUSTED
    assert known.status == Status.GOOD


def test_an_unreadable_contract_ca_file_is_logged_and_trusts_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given PKI_CONTRACT_CA_FILE naming a file that holds no PEM certificate, then one that does not exist
    garbage = tmp_path / "mo.pem"
    garbage.write_text("not a certificate")
    for path in (garbage, tmp_path / "missing.pem"):
        # When the trust anchors are read
        with (
            override_settings(PKI_CONTRACT_CA_FILE=str(path), PKI_DIR=tmp_path / "no-pki"),
            caplog.at_level(logging.ERROR, logger="chargers.pki"),
        ):
            anchors = ocsp_client.known_issuers()
        # Then none is trusted, and the operator is told which file and why
        assert anchors == []
        assert str(path) in caplog.text


def test_it_refuses_stale_and_future_answers_and_answers_about_another_certificate() -> None:
    mo = mo_sub_ca()
    contract, other = certificate("DEMOA1", issuer=mo).cert, certificate("DEMOA2", issuer=mo).cert
    now = datetime.now(UTC)
    stale = _answer(mo, contract, this_update=now - timedelta(days=2), next_update=now - timedelta(days=1))
    future = _answer(mo, contract, this_update=now + timedelta(hours=1), next_update=now + timedelta(hours=2))
    cert_id, anchors = _cert_id(contract, mo.cert), [mo.cert]
    assert ocsp_client.response_check(stale, cert_id, anchors=anchors).status == Status.UNAVAILABLE
    assert ocsp_client.response_check(future, cert_id, anchors=anchors).status == Status.UNAVAILABLE
    assert ocsp_client.response_check(_answer(mo, other), cert_id, anchors=anchors).status == Status.UNAVAILABLE
    unauthorized = b"\x30\x03\x0a\x01\x06"
    assert ocsp_client.response_check(unauthorized, cert_id, anchors=anchors).status == Status.UNAVAILABLE


def _our_request(cert: x509.Certificate, nonce: bytes | None = None) -> bytes:
    """An OCSPRequest about one of our certificates, built by cryptography (with a nonce, when given)."""
    builder = x509_ocsp.OCSPRequestBuilder().add_certificate(cert, ca.sub_ca().cert, hashes.SHA256())
    if nonce is not None:
        builder = builder.add_extension(x509.OCSPNonce(nonce), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _status(der: bytes) -> x509_ocsp.OCSPResponseStatus:
    return x509_ocsp.load_der_ocsp_response(der).response_status


OK, LATER = x509_ocsp.OCSPResponseStatus.SUCCESSFUL, x509_ocsp.OCSPResponseStatus.TRY_LATER


@pytest.fixture
def budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh responder cache and budgets for the test (each test sets the sizes it needs)."""
    monkeypatch.setattr(ocsp, "_RESPONSES", ocsp._Responses())


@pytest.mark.django_db
def test_our_responder_says_try_later_beyond_its_signing_budget(pki: Path, budget: None) -> None:
    # Given a public signing budget of two signatures
    ocsp._RESPONSES._public = ocsp._Bucket(rate=0.0, burst=2.0)
    issued = [issue.station_certificate_issue(station_id=f"cs-{n}").cert for n in range(3)]
    requests = [_our_request(cert) for cert in issued]
    # When three different certificates are asked about, then the first again
    answers = [ocsp.responder_answer(r, client="192.0.2.1") for r in [*requests, requests[0]]]
    # Then two are signed, the third is tryLater (no signature), and the first is served from the cache
    assert [_status(a) for a in answers] == [OK, OK, LATER, OK]


@pytest.mark.django_db
def test_one_client_spending_its_signing_budget_leaves_other_clients_theirs(
    pki: Path, budget: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given two signatures per client address, and one of our certificates
    monkeypatch.setattr(ocsp, "CLIENT_SIGNS_PER_S", 0.0)
    monkeypatch.setattr(ocsp, "CLIENT_SIGN_BURST", 2.0)
    request = _our_request(issue.station_certificate_issue(station_id="cs-budget").cert, nonce=b"first")
    # When one address asks three times with a nonce (each a fresh signature), then another address once
    greedy = [ocsp.responder_answer(request, client="192.0.2.1") for _ in range(3)]
    other = ocsp.responder_answer(request, client="198.51.100.7")
    # Then the greedy address gets tryLater the third time, and the other still gets its signed answer with nonce
    assert [_status(a) for a in greedy] == [OK, OK, LATER]
    answer = x509_ocsp.load_der_ocsp_response(other)
    assert answer.response_status == OK
    assert answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce == b"first"


@pytest.mark.django_db
def test_a_serial_we_never_issued_is_unauthorized_and_costs_no_signature(
    pki: Path, budget: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a certificate named as if our sub-CA had issued it, but absent from the register, and a signing count
    sub_ca = ca.sub_ca()
    never = certificate("never", issuer=Authority(sub_ca.cert, ec.generate_private_key(ec.SECP256R1()))).cert
    signed: list[object] = []
    real_sign = ca.Ca.ocsp_sign

    def counted(self: ca.Ca, builder: x509_ocsp.OCSPResponseBuilder) -> x509_ocsp.OCSPResponse:
        signed.append(builder)
        return real_sign(self, builder)

    monkeypatch.setattr(ca.Ca, "ocsp_sign", counted)
    # When it is asked about, many times, with and without nonces
    answers = [ocsp.responder_answer(_our_request(never, nonce), client="192.0.2.1") for nonce in (None, b"n") * 30]
    # Then every answer is an unsigned unauthorized (RFC 5019 2.2.3), never tryLater, and nothing was signed
    assert {_status(a) for a in answers} == {x509_ocsp.OCSPResponseStatus.UNAUTHORIZED}
    assert signed == []


@pytest.mark.django_db
def test_a_signing_or_register_failure_is_an_internal_error_answer_not_a_server_error(
    pki: Path, budget: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Given one of our certificates, and a key store that fails to sign
    request = _our_request(issue.station_certificate_issue(station_id="cs-fail").cert)

    def refuse(self: ca.Ca, builder: object) -> None:
        raise PkiError("the token is not present")

    monkeypatch.setattr(ca.Ca, "ocsp_sign", refuse)
    client = Client()
    # When a relying party posts its request
    with caplog.at_level(logging.ERROR, logger="chargers.pki"):
        response = client.post("/pki/ocsp", data=request, content_type="application/ocsp-request")
    # Then it gets an OCSP internalError (HTTP 200, RFC 6960 2.3), and the operator a log line saying why
    assert response.status_code == 200
    assert _status(response.content) == x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR
    assert "the token is not present" in caplog.text

    # And a register that cannot be read answers the same way
    def unreadable(serial: int) -> None:
        raise DatabaseError("the register is away")

    monkeypatch.setattr(ocsp, "_register_status", unreadable)
    with caplog.at_level(logging.ERROR, logger="chargers.pki"):
        response = client.post("/pki/ocsp", data=request, content_type="application/ocsp-request")
    assert _status(response.content) == x509_ocsp.OCSPResponseStatus.INTERNAL_ERROR
    assert "the register is away" in caplog.text


@pytest.fixture
async def batchers_closed() -> AsyncIterator[None]:
    """The batcher threads our own look-ups run on (``writer_for_loop``) close their database connections after the
    test, before the test database goes."""
    yield
    loop = asyncio.get_running_loop()
    for batch_fn in (ocsp.register_statuses, ocsp.responder_answers):
        batcher = writer._writers.pop((id(loop), batch_fn), None)
        if batcher is not None:
            await loop.run_in_executor(batcher._executor, connections.close_all)
            batcher._executor.shutdown()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("batchers_closed")
async def test_our_own_lookups_neither_spend_nor_wait_for_the_public_budget(pki: Path, budget: None) -> None:
    # Given one of our certificates, and a public signing budget of one signature
    issued = await sync_to_async(issue.station_certificate_issue)(station_id="cs-internal")
    cert_id = CertId.for_certificate(issued.cert, ca.sub_ca().cert)
    ocsp._RESPONSES._public = ocsp._Bucket(rate=0.0, burst=1.0)
    # When a station's Authorize and GetCertificateChainStatus ask about it, over and over
    for _ in range(5):
        authorized = await plug_and_charge.authorize_prefetch(STATION, {"iso15118CertificateHashData": [
            ocsp_request_data(issued.cert, ca.sub_ca().cert, "")]})  # fmt: skip
        assert authorized == {"certificateStatus": "Accepted", "reasons": []}
    # Then a relying party still gets its signature from the public budget
    nonce_request = _our_request(issued.cert, nonce=b"public")
    assert _status(await sync_to_async(ocsp.responder_answer)(nonce_request, client="192.0.2.1")) == OK
    # And once the public budget is spent, the station's lookups still succeed, GetCertificateStatus's signed relay too
    assert _status(await sync_to_async(ocsp.responder_answer)(nonce_request, client="192.0.2.1")) == LATER
    authorized = await plug_and_charge.authorize_prefetch(STATION, {"iso15118CertificateHashData": [
        ocsp_request_data(issued.cert, ca.sub_ca().cert, "")]})  # fmt: skip
    assert authorized is not None
    assert authorized["certificateStatus"] == "Accepted"
    relayed = await plug_and_charge.certificate_status_prefetch(
        STATION, {"ocspRequestData": ocsp_request_data(issued.cert, ca.sub_ca().cert, "")}
    )
    assert relayed["status"] == "Accepted"
    answer = x509_ocsp.load_der_ocsp_response(base64.b64decode(relayed["ocspResult"]))
    assert answer.certificate_status == x509_ocsp.OCSPCertStatus.GOOD
    assert cert_id.serial == answer.serial_number


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("batchers_closed")
async def test_a_register_failure_in_our_own_lookup_is_reported_with_its_message(
    pki: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given one of our certificates, and a register that cannot be read
    issued = await sync_to_async(issue.station_certificate_issue)(station_id="cs-unreadable")

    def unreadable(serial: int) -> None:
        raise DatabaseError("relation chargers_pkicertificate is locked")

    monkeypatch.setattr(ocsp, "_register_status", unreadable)
    # When a station authorizes with it
    data = ocsp_request_data(issued.cert, ca.sub_ca().cert, "")
    answer = await plug_and_charge.authorize_prefetch(STATION, {"iso15118CertificateHashData": [data]})
    # Then it is refused as unvalidated, and the reason names what failed, not only its type
    assert answer is not None
    assert answer["certificateStatus"] == "CertChainError"
    assert any("relation chargers_pkicertificate is locked" in reason for reason in answer["reasons"])


@pytest.mark.django_db
def test_issued_certificates_name_our_responder_when_a_public_url_is_set(pki: Path) -> None:
    with override_settings(PKI_OCSP_URL="https://csms.example.com/"):
        named = issue.station_certificate_issue(station_id="cs-aia").cert
    unnamed = issue.station_certificate_issue(station_id="cs-no-aia").cert
    access = named.extensions.get_extension_for_class(x509.AuthorityInformationAccess).value
    assert [(d.access_method, d.access_location.value) for d in access] == [
        (AuthorityInformationAccessOID.OCSP, "https://csms.example.com/pki/ocsp")
    ]
    with pytest.raises(x509.ExtensionNotFound):
        unnamed.extensions.get_extension_for_class(x509.AuthorityInformationAccess)


EV_REQUEST = {"iso15118SchemaVersion": "urn:iso:15118:2:2013:MsgDef", "action": "Install", "exiRequest": "gJgC"}


async def test_ev_certificate_requests_fail_with_a_reason_without_a_provider() -> None:
    with override_settings(PKI_CONTRACT_PROVIDER_URL=None):
        answer = await plug_and_charge.ev_certificate_prefetch(STATION, EV_REQUEST)
    assert answer["status"] == "Failed"
    assert answer["exiResponse"] == ""
    assert answer["statusInfo"]["reasonCode"] == "NotEnabled"


async def test_ev_certificate_requests_fail_with_a_reason_when_the_provider_is_down() -> None:
    with override_settings(PKI_CONTRACT_PROVIDER_URL=f"http://127.0.0.1:{free_port()}/"):
        answer = await plug_and_charge.ev_certificate_prefetch(STATION, EV_REQUEST)
    assert answer["status"] == "Failed"
    assert answer["statusInfo"]["reasonCode"] == "NoResponse"


@pytest.fixture
def mo_trusted(tmp_path: Path) -> Iterator[tuple[Authority, Authority]]:
    """An MO root (trusted through PKI_CONTRACT_CA_FILE) and its sub-CA."""
    root, sub = mo_chain()
    bundle = tmp_path / "mo-root.pem"
    bundle.write_text(pem(root.cert))
    with override_settings(PKI_CONTRACT_CA_FILE=str(bundle), PKI_DIR=tmp_path / "no-pki"):
        yield root, sub


def test_a_pem_chain_is_checked_up_to_a_trusted_root(mo_trusted: tuple[Authority, Authority]) -> None:
    # Given contract chains: sound, expired, from an untrusted MO, with a gap, without an OCSP responder, garbage
    root, sub = mo_trusted
    _, stranger_sub = mo_chain()
    url = "http://127.0.0.1:9/ocsp"
    sound = certificate("DEMOA1", issuer=sub, ocsp_url=url).cert
    expired = certificate("DEMOA2", issuer=sub, ocsp_url=url, valid_for=timedelta(minutes=-1)).cert
    untrusted = certificate("DEMOA3", issuer=stranger_sub, ocsp_url=url).cert
    silent = certificate("DEMOA4", issuer=sub).cert
    now = datetime.now(UTC)
    # When each is validated centrally
    questions, refusal = plug_and_charge.central_chain(pem(sound, sub.cert), now)
    # Then the sound one yields one OCSP question per certificate, at the responder each names (the sub-CA has none)
    assert refusal == "CertChainError"  # the sub-CA names no responder: its revocation cannot be checked
    sub_with_aia = certificate("MO Sub-CA", issuer=root, ca=True, ocsp_url=url, key=sub.key).cert
    questions, refusal = plug_and_charge.central_chain(pem(sound, sub_with_aia, root.cert), now)
    assert refusal == ""
    assert [(q.serial, u, i) for q, u, i in questions] == [
        (sound.serial_number, url, sub_with_aia),
        (sub_with_aia.serial_number, url, root.cert),
    ]
    assert questions[0][0].issued_by(sub.cert)
    assert questions[1][0].issued_by(root.cert)
    # And the others are refused with the status that says why
    assert plug_and_charge.central_chain(pem(expired, sub_with_aia), now)[1] == "CertificateExpired"
    assert plug_and_charge.central_chain(pem(untrusted, stranger_sub.cert), now)[1] == "CertChainError"
    assert plug_and_charge.central_chain(pem(sound), now)[1] == "CertChainError"  # leaf straight to the root: a gap
    assert plug_and_charge.central_chain(pem(silent, sub_with_aia), now)[1] == "CertChainError"
    assert plug_and_charge.central_chain("not PEM", now)[1] == "NoCertificateAvailable"
