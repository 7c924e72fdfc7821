"""CA keys in a PKCS#11 token: a fresh SoftHSM2 token per test session, the PKI on it, and every signature checked
with cryptography against the certificates (the token never shows the keys; the tests read it with python-pkcs11
directly, not through our store).

Skipped when SoftHSM2 is not installed (Debian package ``softhsm2``; ``.ci/run`` installs it, so CI runs these).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from django.core.management import CommandError, call_command
from django.test import Client, override_settings
from pkcs11 import Attribute, ObjectClass
from pkcs11.util.ec import encode_ec_public_key

from chargers.pki import ca, hsm, issue, storage
from chargers.pki.storage import PkiError
from tests.chargers.factories import StationFactory

pytestmark = pytest.mark.django_db

MODULE_CANDIDATES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
MODULE = next((path for path in MODULE_CANDIDATES if Path(path).is_file()), None)
LABEL = "vpp-test-ca"
PIN = "123456"
SO_PIN = "87654321"


def station_cert(station_id: str, tmp_path: Path) -> None:
    """``pki station-cert`` for a station added first, its key under a passphrase from a file: c.pem and k.pem."""
    StationFactory.create(station_id=station_id)
    passphrase = tmp_path / "key-passphrase"
    passphrase.write_text("station-key-passphrase-01\n")
    call_command(
        "pki", "station-cert", station_id, out_cert=str(tmp_path / "c.pem"), out_key=str(tmp_path / "k.pem"),
        passphrase_file=str(passphrase),
    )  # fmt: skip


@dataclass(frozen=True)
class SoftHsm:
    module: str
    label: str
    pin: str
    tokens: Path  # the token directory SoftHSM2 keeps the token in


@pytest.fixture(scope="session")
def softhsm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SoftHsm]:
    """A fresh token in a directory of its own, before this process loads SoftHSM2 (it reads the config once)."""
    if MODULE is None or shutil.which("softhsm2-util") is None:
        pytest.skip("SoftHSM2 is not installed (apt-get install softhsm2; .ci/run installs it)")
    base = tmp_path_factory.mktemp("softhsm")
    tokens = base / "tokens"
    tokens.mkdir()
    config = base / "softhsm2.conf"
    config.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SOFTHSM2_CONF", str(config))
        subprocess.run(
            ["softhsm2-util", "--init-token", "--free", "--label", LABEL, "--pin", PIN, "--so-pin", SO_PIN],
            check=True,
            capture_output=True,
        )
        yield SoftHsm(MODULE, LABEL, PIN, tokens)
        storage.signing_key_forget()


def hsm_settings(token: SoftHsm, directory: Path, **overrides: object) -> override_settings:
    values: dict[str, object] = {
        "PKI_DIR": directory / "pki",
        "VAR_DIR": directory,
        "PKI_PASSPHRASE": None,
        "PKI_PASSPHRASE_FILE": None,
        "PKI_PKCS11_MODULE": token.module,
        "PKI_PKCS11_TOKEN_LABEL": token.label,
        "PKI_PKCS11_PIN": token.pin,
        "PKI_PKCS11_PIN_FILE": None,
        "PKI_PKCS11_TIMEOUT_S": 10.0,
    }
    return override_settings(**{**values, **overrides})


@pytest.fixture
def hsm_pki(softhsm: SoftHsm, tmp_path: Path) -> Iterator[Path]:
    """A CA made in the token (replacing the previous test's keys there); its certificates under tmp_path/pki."""
    with hsm_settings(softhsm, tmp_path):
        storage.signing_key_forget()
        call_command("pki", "init", organisation="Test CPO", force=True)
        yield tmp_path / "pki"
        storage.signing_key_forget()


def chain(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def token_session(token: SoftHsm) -> pkcs11.Session:
    """Our own session on the token, as any PKCS#11 client would open one (ours logged out first: one login each)."""
    storage.signing_key_forget()
    return pkcs11.lib(token.module).get_token(token_label=token.label).open(user_pin=token.pin)


def test_init_generates_both_ca_keys_in_the_token_and_writes_no_key_anywhere(
    softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path
) -> None:
    # Given a CA made with the token as key store (fixture)
    root, sub = chain(hsm_pki / "v2g-root-ca.pem")[0], chain(hsm_pki / "cpo-sub-ca.pem")[0]
    # Then the root signed itself and the sub-CA, with the keys whose public halves are in the token
    root.verify_directly_issued_by(root)
    sub.verify_directly_issued_by(root)
    with token_session(softhsm) as session:
        for name, cert in ((ca.ROOT, root), (ca.SUB_CA, sub)):
            public: Any = session.get_key(object_class=ObjectClass.PUBLIC_KEY, label=name)
            token_public = serialization.load_der_public_key(encode_ec_public_key(public))
            assert token_public == cert.public_key()
    # And no private key (nor a passphrase to protect one) was written to disk
    written = sorted(path.name for path in tmp_path.rglob("*") if path.is_file())
    assert written == ["ca-bundle.pem", "cpo-sub-ca.pem", "v2g-root-ca.pem"]


def test_the_token_keys_cannot_be_read_out(softhsm: SoftHsm, hsm_pki: Path) -> None:
    # When the CA's private key in the token is asked for its value, as any PKCS#11 client could ask
    with token_session(softhsm) as session:
        key = session.get_key(object_class=ObjectClass.PRIVATE_KEY, label=ca.SUB_CA)
        # Then the token refuses: the key is sensitive, was never extractable, and can sign but not derive
        with pytest.raises(pkcs11.exceptions.AttributeSensitive):
            key[Attribute.VALUE]
        assert key[Attribute.SENSITIVE] is True
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.NEVER_EXTRACTABLE] is True
        assert key[Attribute.SIGN] is True
        assert key[Attribute.DERIVE] is False
    # And the key object our store hands to cryptography refuses to serialise itself
    with pytest.raises(PkiError, match="cannot be read"):
        storage.signing_key(ca.SUB_CA).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )


def test_a_station_certificate_signed_in_the_token_chains_to_the_root(hsm_pki: Path, tmp_path: Path) -> None:
    # When a station certificate is issued through the command
    station_cert("cs-9", tmp_path)
    # Then leaf -> sub-CA -> root verifies
    leaf, sub = chain(tmp_path / "c.pem")
    root = chain(hsm_pki / "v2g-root-ca.pem")[0]
    leaf.verify_directly_issued_by(sub)
    sub.verify_directly_issued_by(root)


def test_the_crl_signed_in_the_token_verifies_and_lists_the_revocation(hsm_pki: Path, tmp_path: Path) -> None:
    # Given a revoked station certificate
    station_cert("cs-3", tmp_path)
    call_command("pki", "revoke", "cs-3", reason="keyCompromise")
    # When the CRL is fetched
    crl = x509.load_der_x509_crl(Client().get("/pki/crl").content)
    # Then its signature verifies with the sub-CA's certificate and it lists the serial
    sub = chain(hsm_pki / "cpo-sub-ca.pem")[0]
    sub_key = sub.public_key()
    assert isinstance(sub_key, ec.EllipticCurvePublicKey)
    assert crl.is_signature_valid(sub_key)
    assert [r.serial_number for r in crl] == [chain(tmp_path / "c.pem")[0].serial_number]


def test_an_ocsp_response_signed_in_the_token_verifies(hsm_pki: Path) -> None:
    # Given a station certificate and an OCSP answer about it, built with cryptography's builder
    leaf = issue.station_certificate_issue(station_id="cs-5").cert
    sub = ca.sub_ca()
    now = datetime.now(UTC)
    builder = ocsp.OCSPResponseBuilder().add_response(
        cert=leaf, issuer=sub.cert, algorithm=hashes.SHA256(), cert_status=ocsp.OCSPCertStatus.GOOD,
        this_update=now, next_update=now + timedelta(hours=1), revocation_time=None, revocation_reason=None,
    )  # fmt: skip
    # When the sub-CA signs it (in the token) and it travels as DER
    response = ocsp.load_der_ocsp_response(sub.ocsp_sign(builder).public_bytes(serialization.Encoding.DER))
    # Then the signature over the response data verifies with the sub-CA's public key (RFC 6960 4.2.1)
    public = sub.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert response.signature_hash_algorithm is not None
    public.verify(response.signature, response.tbs_response_bytes, ec.ECDSA(response.signature_hash_algorithm))
    assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
    assert response.serial_number == leaf.serial_number


def test_the_tls_server_credentials_are_issued_from_the_token_ca(hsm_pki: Path) -> None:
    # When the embedded default's TLS certificate is ensured (the CA exists in the token)
    cert_file, key_file = issue.server_credentials_ensure(hosts=["localhost"])
    # Then the server certificate chains to the token's CA and matches the key file Daphne will load
    server, sub = chain(Path(cert_file))
    server.verify_directly_issued_by(sub)
    sub.verify_directly_issued_by(chain(hsm_pki / "v2g-root-ca.pem")[0])
    server_key = serialization.load_pem_private_key(Path(key_file).read_bytes(), password=None)
    assert server_key.public_key() == server.public_key()
    # And still no CA key on disk: only the server's own key (which Daphne must read unattended)
    assert sorted(path.name for path in hsm_pki.glob("*.key.pem")) == ["server.key.pem"]


def test_signing_from_many_threads_at_once_gives_valid_signatures(hsm_pki: Path) -> None:
    # Given one CA whose single token session many request threads share
    sub = ca.sub_ca()
    public = sub.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    now = datetime.now(UTC)

    def crl(index: int) -> x509.CertificateRevocationList:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(sub.cert.subject)
            .last_update(now)
            .next_update(now + timedelta(hours=index + 1))
        )
        return sub.crl_sign(builder)

    # When 8 threads sign 40 CRLs concurrently
    with ThreadPoolExecutor(max_workers=8) as pool:
        crls = list(pool.map(crl, range(40)))
    # Then every one verifies
    assert all(each.is_signature_valid(public) for each in crls)


def test_pki_status_says_the_keys_are_in_the_token(
    softhsm: SoftHsm, hsm_pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call_command("pki", "status")
    out = capsys.readouterr().out
    assert f"key store: PKCS#11 token {softhsm.label!r} ({softhsm.module})" in out
    assert "v2g-root-ca: key matches the certificate" in out
    assert "cpo-sub-ca: key matches the certificate" in out


def test_a_wrong_pin_is_a_clear_error_and_nothing_falls_back_to_files(
    softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given the token configured with a wrong PIN
    with hsm_settings(softhsm, tmp_path, PKI_PKCS11_PIN="000000"), caplog.at_level(logging.ERROR, "chargers.pki"):
        # When a station certificate is asked for
        with pytest.raises(CommandError, match="refused the PIN"):
            station_cert("cs-1", tmp_path)
        # And pki init is tried
        with pytest.raises(CommandError, match="refused the PIN"):
            call_command("pki", "init", force=True)
    # Then the error was logged, nothing was issued, and no key file or passphrase appeared as a fallback
    assert any("refused the PIN" in record.getMessage() for record in caplog.records)
    assert not (tmp_path / "c.pem").exists()
    assert not list(tmp_path.rglob("*.key.pem"))
    assert not (tmp_path / storage.PASSPHRASE_FILE_NAME).exists()


def test_the_pin_comes_from_a_file(softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path) -> None:
    pin_file = tmp_path / "pin"
    pin_file.write_text(softhsm.pin + "\n")
    storage.signing_key_forget()
    with hsm_settings(softhsm, tmp_path, PKI_PKCS11_PIN=None, PKI_PKCS11_PIN_FILE=str(pin_file)):
        assert issue.station_certificate_issue(station_id="cs-2").cert.serial_number


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"PKI_PKCS11_MODULE": "/nonexistent/libpkcs11.so"}, "PKI_PKCS11_MODULE /nonexistent/libpkcs11.so does not"),
        ({"PKI_PKCS11_TOKEN_LABEL": "no-such-token"}, "no PKCS#11 token labelled 'no-such-token'"),
        ({"PKI_PKCS11_PIN": None}, "set PKI_PKCS11_PIN_FILE"),
        ({"PKI_PKCS11_PIN": None, "PKI_PKCS11_PIN_FILE": "/nonexistent/pin"}, "cannot read PKI_PKCS11_PIN_FILE"),
    ],
)
def test_a_misconfigured_token_is_a_clear_error(
    softhsm: SoftHsm, tmp_path: Path, overrides: dict[str, object], message: str, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        hsm_settings(softhsm, tmp_path, **overrides),
        caplog.at_level(logging.ERROR, "chargers.pki"),
        pytest.raises(CommandError, match=message),
    ):
        call_command("pki", "status")
    assert any(message in record.getMessage() for record in caplog.records)


def test_signing_fails_clearly_while_the_token_is_gone_and_works_again_when_it_is_back(
    softhsm: SoftHsm, hsm_pki: Path
) -> None:
    # Given a working token (one certificate issued, so a session is open)
    issue.station_certificate_issue(station_id="cs-6")
    away = softhsm.tokens.with_name("tokens-away")
    # When the token disappears (its storage moved away, as a pulled USB token or a lost network HSM)
    softhsm.tokens.rename(away)
    try:
        # Then issuing fails with a PkiError naming the token, as long as it stays away
        for _ in range(2):
            with pytest.raises(PkiError, match=f"cannot reach PKCS#11 token '{softhsm.label}'"):
                issue.station_certificate_issue(station_id="cs-7")
    finally:
        away.rename(softhsm.tokens)
    # And once it is back, the same process signs again (a new session, no restart)
    leaf = issue.station_certificate_issue(station_id="cs-8").cert
    leaf.verify_directly_issued_by(ca.sub_ca().cert)


def test_a_token_that_does_not_answer_in_time_fails_the_signing_and_then_recovers(
    softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path
) -> None:
    # Given a token whose one PKCS#11 thread is busy (a hung call: held here until released)
    release = threading.Event()
    with hsm_settings(softhsm, tmp_path, PKI_PKCS11_TIMEOUT_S=0.2):
        blocker = threading.Thread(target=lambda: hsm._WORKER.run(release.wait, timeout=30))
        blocker.start()
        try:
            # When a certificate is to be signed
            with pytest.raises(PkiError, match=r"did not answer within 0\.2 s"):
                issue.station_certificate_issue(station_id="cs-10")
        finally:
            release.set()
            blocker.join()
        # Then, once the token answers again, signing works
        leaf = issue.station_certificate_issue(station_id="cs-11").cert
    leaf.verify_directly_issued_by(ca.sub_ca().cert)


def _hang_the_token_thread(release: threading.Event) -> None:
    """A call that sits on the token's one thread until ``release`` (a token that stopped answering mid-call), whose
    caller gives up after 0.2 s as any signing caller would after PKI_PKCS11_TIMEOUT_S."""
    with pytest.raises(TimeoutError):
        hsm._WORKER.run(release.wait, timeout=0.2)


def _abandoned_calls_returned() -> None:
    """Wait (bounded) until the threads of released calls have ended, so the next test starts with none hung."""
    for _ in range(200):
        if hsm._WORKER.hung_calls() == 0:
            return
        threading.Event().wait(0.05)
    raise AssertionError("abandoned PKCS#11 calls did not return after their release")


def test_a_token_call_that_hangs_is_abandoned_and_signing_goes_on_without_waiting_for_it(
    softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path
) -> None:
    # Given a call that hangs on the token's thread past its caller's patience, and is still hanging
    release = threading.Event()
    with hsm_settings(softhsm, tmp_path, PKI_PKCS11_TIMEOUT_S=5.0):
        try:
            _hang_the_token_thread(release)
            # When a certificate is issued meanwhile
            leaf = issue.station_certificate_issue(station_id="cs-12").cert
        finally:
            release.set()
            _abandoned_calls_returned()
        # Then it is signed (on a fresh thread, with the library re-initialised), not queued behind the hung call
        leaf.verify_directly_issued_by(ca.sub_ca().cert)
        # And once the hung call returns, its thread ends and signing goes on as before
        issue.station_certificate_issue(station_id="cs-13").cert.verify_directly_issued_by(ca.sub_ca().cert)


def test_while_hung_token_calls_are_outstanding_signing_fails_at_once_and_recovers_when_they_return(
    softhsm: SoftHsm, hsm_pki: Path, tmp_path: Path
) -> None:
    # Given a token that hung twice (the second time on the fresh thread started after the first): a dead token
    releases = [threading.Event(), threading.Event()]
    with hsm_settings(softhsm, tmp_path, PKI_PKCS11_TIMEOUT_S=5.0):
        try:
            for release in releases:
                _hang_the_token_thread(release)
            # When a certificate is to be issued while both calls are still outstanding
            # Then it fails at once with a PkiError saying so: no new thread, no wait for a timeout behind them
            with pytest.raises(PkiError, match=r"is not answering .*failing at once"):
                issue.station_certificate_issue(station_id="cs-14")
        finally:
            for release in releases:
                release.set()
            _abandoned_calls_returned()
        # And once they have returned, signing works again (no restart)
        leaf = issue.station_certificate_issue(station_id="cs-15").cert
    leaf.verify_directly_issued_by(ca.sub_ca().cert)


def test_a_forked_worker_process_signs_with_the_token(hsm_pki: Path) -> None:
    # Given a parent that has used the token (its session and library state do not survive a fork)
    sub = ca.sub_ca()
    now = datetime.now(UTC)
    builder = x509.CertificateRevocationListBuilder().issuer_name(sub.cert.subject).last_update(now).next_update(now)
    sub.crl_sign(builder)
    read_end, write_end = os.pipe()
    # When a forked child (a prefork server or task worker) signs a CRL
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            der = sub.crl_sign(builder).public_bytes(serialization.Encoding.DER)
            os.write(write_end, der)
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        der = pipe.read()
    os.waitpid(pid, 0)
    # Then the child's CRL verifies, and the parent still signs too
    public = sub.cert.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert x509.load_der_x509_crl(der).is_signature_valid(public)
    assert sub.crl_sign(builder).is_signature_valid(public)
