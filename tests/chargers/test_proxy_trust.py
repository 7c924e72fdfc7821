"""The trusted-proxy middleware (``chargers.proxy``) without a proxy: which connections' proxy headers are believed
(the proxy's address AND its secret), HTTP as well as WebSockets, and a client certificate header that cannot be read.
The same with the real HAProxy in front: tests/chargers/test_tls_proxy.py."""

from __future__ import annotations

import base64

import pytest
from channels.testing import HttpCommunicator
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from chargers.pki import ca, storage
from chargers.proxy import forwarded_tls, scope_from_proxy
from tests.chargers.test_tls_proxy import PASSPHRASE, PROXY_ADDRESS, PROXY_SECRET


@pytest.fixture
async def close_db_threads() -> object:
    yield
    import gc

    from asgiref.sync import sync_to_async
    from django.db import connections

    await sync_to_async(connections.close_all)()
    # Django ran each request's ORM calls on a thread of its own (ThreadSensitiveContext), now gone; with
    # CONN_MAX_AGE its connection was kept. Collected, it closes: PostgreSQL cannot drop a test database in use.
    gc.collect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("close_db_threads")
async def test_an_http_client_reaching_daphne_directly_cannot_claim_https(settings):
    # Given the CSMS behind a proxy it trusts, taking the proxy's word on HTTPS (SECURE_PROXY_SSL_HEADER, as a
    # production deployment sets it), and a login form's CSRF cookie and token
    from vpp.asgi import application

    settings.OCPP_TRUSTED_PROXIES = [f"{PROXY_ADDRESS}/32"]
    settings.OCPP_PROXY_SECRET = PROXY_SECRET
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    csrf = "a" * 32
    body = f"username=ops&password=wrong-password&csrfmiddlewaretoken={csrf}".encode()

    async def login(client: tuple[str, int], extra: list[tuple[bytes, bytes]]) -> int:
        communicator = HttpCommunicator(
            application,
            "POST",
            "/admin/login/",
            body=body,
            headers=[
                (b"host", b"localhost"),
                (b"content-type", b"application/x-www-form-urlencoded"),
                (b"cookie", f"csrftoken={csrf}".encode()),
                (b"x-forwarded-proto", b"https"),
                *extra,
            ],
        )
        communicator.scope["client"] = client
        return int((await communicator.get_response(timeout=10))["status"])

    # When a client connects directly, saying it came over HTTPS (so that no Referer is checked), and the proxy
    # forwards the same for an HTTPS client
    direct = await login(("198.51.100.7", 40000), [])
    proxied = await login((PROXY_ADDRESS, 40000), [(b"x-proxy-secret", PROXY_SECRET.encode())])
    # Then the direct client is plain HTTP (its header was dropped: the form is answered), while the proxy's HTTPS
    # client is held to HTTPS's stricter CSRF rule (no Referer: refused)
    assert (direct, proxied) == (200, 403)


@pytest.mark.django_db
def test_in_production_the_crl_and_ocsp_answer_over_plain_http_and_pages_still_redirect(settings, tmp_path):
    # Given production's redirect of plain HTTP to HTTPS, and a PKI
    from django.test import Client

    settings.SECURE_SSL_REDIRECT = True
    settings.PKI_DIR, settings.PKI_PASSPHRASE = tmp_path / "pki", PASSPHRASE
    storage.signing_key_forget()
    ca.ca_init(organisation="Test CPO")
    browser = Client()
    # When a relying party fetches the CRL and asks the OCSP responder over http (as RFC 5280 / 6960 distribute
    # them, and as the proxy's plain port forwards them), and a browser asks for the admin login
    crl, ocsp = browser.get("/pki/crl"), browser.get("/pki/ocsp/MAA=")
    login = browser.get("/admin/login/")
    storage.signing_key_forget()
    # Then the CRL and the OCSP answer come back as such (signed: HTTPS adds nothing), while the page redirects
    assert (crl.status_code, crl["Content-Type"]) == (200, "application/pkix-crl")
    assert ocsp.status_code != 301
    assert login.status_code == 301


def test_a_trusted_address_without_the_secret_is_not_believed(settings):
    # Given a trusted proxy address with a secret configured
    scope = {
        "type": "websocket",
        "client": [PROXY_ADDRESS, 40000],
        "headers": [(b"x-forwarded-proto", b"https"), (b"x-forwarded-for", b"198.51.100.7"), (b"host", b"csms")],
    }
    trusted = [f"{PROXY_ADDRESS}/32"]
    # When the headers come from that address with no secret, a wrong one, the right one, and with no secret
    # configured at all
    seen = {
        "none": scope_from_proxy(scope, trusted, PROXY_SECRET),
        "wrong": scope_from_proxy(
            {**scope, "headers": [*scope["headers"], (b"x-proxy-secret", b"not-the-secret")]}, trusted, PROXY_SECRET
        ),
        "right": scope_from_proxy(
            {**scope, "headers": [*scope["headers"], (b"x-proxy-secret", PROXY_SECRET.encode())]}, trusted, PROXY_SECRET
        ),
        "unset": scope_from_proxy({**scope, "headers": [*scope["headers"], (b"x-proxy-secret", b"")]}, trusted, ""),
    }
    # Then only the right secret makes them believed; every time, the headers (the secret too) are gone
    assert {name: s["client"][0] for name, s in seen.items()} == {
        "none": PROXY_ADDRESS,
        "wrong": PROXY_ADDRESS,
        "right": "198.51.100.7",
        "unset": PROXY_ADDRESS,
    }
    assert {name: s.get("scheme") for name, s in seen.items()}["right"] == "wss"
    assert all(s["headers"] == [(b"host", b"csms")] for s in seen.values())


def _unparsable_certificate_header() -> bytes:
    """RFC 9440 Client-Cert of a certificate whose DER loads but whose subject is not valid (a UTF8String holding a
    byte that is not UTF-8, X.690 8.23.10): reading the name fails."""
    from datetime import UTC, datetime, timedelta

    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cs-1")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    der = cert.public_bytes(serialization.Encoding.DER).replace(b"\x0c\x04cs-1", b"\x0c\x04c\xff-1")
    return b":" + base64.b64encode(der) + b":"


@pytest.mark.parametrize("verify", [b"20", b"0"])
def test_a_certificate_header_whose_name_cannot_be_read_is_a_refusal_not_an_error(verify):
    # Given the proxy forwarding a certificate whose subject cannot be parsed, failed (20) or passed verification
    headers = {
        b"x-forwarded-proto": b"https",
        b"client-cert": _unparsable_certificate_header(),
        b"x-client-cert-verify": verify,
    }
    # When the connection's TLS is read from the headers
    tls = forwarded_tls(headers)
    # Then no exception escapes (it would be a 500, not counted against the failure limits): the certificate is
    # refused with a reason, and its name is not read at all when the proxy already said it failed
    assert tls is not None
    assert tls["client_cert_name"] is None
    assert tls["client_cert_error"]
    assert tls["client_cert_chain"]
