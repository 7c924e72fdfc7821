"""Security profiles 2 and 3 with TLS terminated by HAProxy in front of Daphne: the real ``haproxy`` binary running
``deploy/haproxy.cfg`` before a live server (``vpp.serve``, plain port only), stations as ``websockets`` clients over
real TLS sockets. The same rules as with the embedded listener (tests/chargers/test_tls.py), and a station that
connects to Daphne directly cannot claim TLS, a certificate or an address by writing the proxy's headers itself, not
even from the proxy's own address without the secret the proxy adds. HTTP goes through the same proxy: the plain port
serves no pages, and the login lock-out sees each client's own address."""

from __future__ import annotations

import base64
import os
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import websockets.asyncio.client
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.test import override_settings
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from chargers.models import StationEvent, StationEventKind
from chargers.pki import ca, issue, storage
from chargers.proxy import scope_from_proxy
from tests.chargers.conftest import ROOT, LiveServer, basic_auth, start_server, stop_server, wait_until
from tests.chargers.test_tls import PASSWORD, _bad_certificate, _refusal_event, _sync, profile, station_files
from tests.live import free_port, wait_listening

PASSPHRASE = "test-pki-passphrase-0123456789"
HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin:/usr/local/sbin")
# A station connecting from an address of its own (all of 127/8 is this machine): the proxy forwards it, and a direct
# connection from it is not the trusted proxy (127.0.0.1).
STATION_ADDRESS = "127.0.0.9"
NO_HAPROXY = "haproxy is not installed (apt-get install haproxy; CI's .ci/run installs it)"
# The shared secret HAProxy adds to every request it forwards (VPP_PROXY_SECRET) and the CSMS expects from its proxy
# (OCPP_PROXY_SECRET): the proxy's address alone proves nothing, any local process has it too.
PROXY_SECRET = "proxy-secret-for-the-tests-0123456789abcdef"
PROXY_ADDRESS = "127.0.0.1"
LOGIN_FAILURE_LIMIT = 3


def live(test):
    """A live test through the proxy: skipped with the reason when haproxy is not installed."""
    for mark in (
        pytest.mark.skipif(
            HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy; CI installs it)"
        ),
        pytest.mark.usefixtures("close_db_threads"),
        pytest.mark.django_db(transaction=True),
        pytest.mark.live,
    ):
        test = mark(test)
    return test


@dataclass
class Proxied:
    csms: LiveServer
    tls_port: int
    plain_port: int
    pki: Path

    def wss(self, station_id: str) -> str:
        return f"wss://localhost:{self.tls_port}/ocpp/{station_id}"

    def ws(self, station_id: str) -> str:
        return f"ws://127.0.0.1:{self.plain_port}/ocpp/{station_id}"

    def direct(self, station_id: str) -> str:
        return f"{self.csms.ws_url}/{station_id}"

    def https(self, path: str) -> str:
        return f"https://localhost:{self.tls_port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.plain_port}{path}"

    def context(self, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.pki / "ca-bundle.pem"))
        if cert is not None:
            context.load_cert_chain(str(cert), str(key))
        return context


@pytest.fixture(scope="module")
def proxied(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxied]:
    """A CA made here; the CSMS trusting 127.0.0.1 as its proxy; HAProxy on deploy/haproxy.cfg in front of it."""
    if HAPROXY is None:
        pytest.skip(NO_HAPROXY)
    pki = tmp_path_factory.mktemp("pki")
    override = override_settings(PKI_DIR=pki, PKI_PASSPHRASE=PASSPHRASE)
    override.enable()
    storage.signing_key_forget()
    haproxy = None
    csms = None
    try:
        with django_db_blocker.unblock():  # type: ignore[attr-defined]
            ca.ca_init(organisation="Test CPO")
            cert_file, key_file = issue.server_credentials_ensure(hosts=["localhost"])
        bundle = pki / "haproxy.pem"  # HAProxy's crt: certificate, chain and key in one file
        bundle.write_bytes(Path(cert_file).read_bytes() + Path(key_file).read_bytes())
        csms = start_server(
            {
                "PKI_DIR": str(pki),
                "PKI_PASSPHRASE": PASSPHRASE,
                "OCPP_TRUSTED_PROXIES": f"{PROXY_ADDRESS}/32",
                "OCPP_PROXY_SECRET": PROXY_SECRET,
                "AXES_FAILURE_LIMIT": str(LOGIN_FAILURE_LIMIT),
            }
        )
        tls_port, plain_port = free_port(), free_port()
        env = {
            **os.environ,
            "VPP_PROXY_CERT": str(bundle),
            "VPP_PROXY_CLIENT_CA": str(pki / "ca-bundle.pem"),
            "VPP_PROXY_ADDR": "127.0.0.1",
            "VPP_PROXY_TLS_PORT": str(tls_port),
            "VPP_PROXY_PORT": str(plain_port),
            "VPP_BACKEND": f"127.0.0.1:{csms.port}",
            "VPP_PROXY_SECRET": PROXY_SECRET,
        }
        haproxy = subprocess.Popen([HAPROXY, "-db", "-f", str(ROOT / "deploy" / "haproxy.cfg")], env=env)
        wait_listening(haproxy, tls_port)
        wait_listening(haproxy, plain_port)
        yield Proxied(csms, tls_port, plain_port, pki)
    finally:
        if haproxy is not None:
            haproxy.terminate()
            haproxy.wait(timeout=10)
        if csms is not None:
            stop_server(csms)
        override.disable()
        storage.signing_key_forget()


@pytest.fixture
async def close_db_threads() -> object:
    yield
    from django.db import connections

    await _sync(connections.close_all)


async def connect_status(
    url: str,
    *,
    context: ssl.SSLContext | None = None,
    password: str | None = None,
    headers: dict[str, str] | None = None,
    source: str = STATION_ADDRESS,
) -> int:
    """101 when the OCPP handshake succeeds, else the HTTP status the server refused it with."""
    sent = {**(basic_auth(url.rsplit("/", 1)[1], password) if password else {}), **(headers or {})}
    try:
        async with websockets.asyncio.client.connect(
            url,
            ssl=context,
            subprotocols=[Subprotocol("ocpp2.1")],
            additional_headers=sent,
            open_timeout=10,
            local_addr=(source, 0),
        ) as ws:
            assert ws.subprotocol == "ocpp2.1"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def _auth_failure(station_id: str):
    """The stored record of a known station's failed handshake: a StationEvent naming the client address."""

    async def stored() -> StationEvent | None:
        rows = StationEvent.objects.filter(station__station_id=station_id, kind=StationEventKind.AUTH_FAILED)
        return await rows.afirst()

    return stored


def forged_headers(cert_file: Path) -> dict[str, str]:
    """What the proxy would say of a TLS connection presenting ``cert_file``'s certificate, verified."""
    der = x509.load_pem_x509_certificates(cert_file.read_bytes())[0].public_bytes(serialization.Encoding.DER)
    return {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-For": "198.51.100.7",
        "Client-Cert": f":{base64.b64encode(der).decode()}:",
        "X-Client-Cert-Verify": "0",
    }


@live
async def test_it_admits_a_profile_3_station_with_its_own_certificate_through_the_proxy(proxied, tmp_path):
    # Given a profile-3 station and the certificate the PKI issued for it
    station_id = await _sync(profile, 3)
    cert, key = await _sync(station_files, tmp_path, station_id)
    # When it connects to the proxy's TLS port presenting the certificate, with no password
    status = await connect_status(proxied.wss(station_id), context=proxied.context(cert, key))
    # Then the OCPP handshake completes
    assert status == 101


@live
@pytest.mark.parametrize("kind", ["wrong-cn", "expired", "revoked", "self-signed", "other-ca", "unregistered"])
async def test_it_refuses_through_the_proxy_a_certificate_that_is_not_the_stations_valid_own(proxied, tmp_path, kind):
    # Given a profile-3 station and a certificate that is wrong in one way
    station_id = await _sync(profile, 3)
    cert, key = await _sync(_bad_certificate, tmp_path, station_id, kind)
    # When it connects through the proxy with it (and the right password, which must not help)
    status = await connect_status(proxied.wss(station_id), context=proxied.context(cert, key), password=PASSWORD)
    # Then the CSMS refuses the handshake and stores the refusal, with the station's address, not the proxy's
    assert status == 403
    assert (await _sync(_refusal_event, station_id))["type"] == "HandshakeRefused"
    assert (await wait_until(_auth_failure(station_id))).data["address"] == STATION_ADDRESS


@live
async def test_a_profile_3_station_cannot_downgrade_through_the_proxy(proxied, tmp_path):
    # Given a profile-3 station with a valid certificate and a valid password
    station_id = await _sync(profile, 3)
    cert, _ = await _sync(station_files, tmp_path, station_id)
    # When it connects with the password only: over the proxy's TLS without a certificate (but with a certificate
    # header of its own making), and over the proxy's plain port
    over_tls = await connect_status(
        proxied.wss(station_id), context=proxied.context(), password=PASSWORD, headers=forged_headers(cert)
    )
    over_ws = await connect_status(proxied.ws(station_id), password=PASSWORD, headers=forged_headers(cert))
    # Then both are refused: the proxy replaced the headers with what it saw
    assert (over_tls, over_ws) == (403, 403)


@live
async def test_a_profile_2_station_needs_the_proxys_tls_and_its_password(proxied):
    # Given a profile-2 station
    station_id = await _sync(profile, 2)
    # When it connects through the proxy's TLS with its password, with a wrong one, and through the plain port
    over_tls = await connect_status(proxied.wss(station_id), context=proxied.context(), password=PASSWORD)
    wrong = await connect_status(proxied.wss(station_id), context=proxied.context(), password="wrong-password-0000")
    over_ws = await connect_status(proxied.ws(station_id), password=PASSWORD)
    # Then only the first is admitted
    assert (over_tls, wrong, over_ws) == (101, 401, 403)


@live
async def test_proxy_headers_from_a_direct_connection_are_ignored(proxied, tmp_path):
    # Given a profile-3 station's valid certificate (public: anyone may hold a copy) and a profile-2 station
    station_3 = await _sync(profile, 3)
    cert, _ = await _sync(station_files, tmp_path, station_3)
    station_2 = await _sync(profile, 2)
    # When a client connects to Daphne directly, not from the trusted proxy, writing the proxy's headers itself
    as_3 = await connect_status(proxied.direct(station_3), password=PASSWORD, headers=forged_headers(cert))
    as_2 = await connect_status(proxied.direct(station_2), password=PASSWORD, headers=forged_headers(cert))
    # Then neither is taken for TLS: both are refused as plain ws:// connections, from the address they came from
    assert (as_3, as_2) == (403, 403)
    assert (await wait_until(_auth_failure(station_2))).data["address"] == STATION_ADDRESS


@live
async def test_forged_proxy_headers_from_the_proxys_own_address_without_its_secret_are_refused(proxied, tmp_path):
    # Given a profile-3 station's valid certificate (public: anyone may hold a copy)
    station_id = await _sync(profile, 3)
    cert, _ = await _sync(station_files, tmp_path, station_id)
    # When a local process connects to Daphne directly from the trusted proxy's own address, writing the proxy's
    # headers itself: without the proxy's secret, and with a wrong one
    missing = await connect_status(
        proxied.direct(station_id), password=PASSWORD, headers=forged_headers(cert), source=PROXY_ADDRESS
    )
    wrong = await connect_status(
        proxied.direct(station_id),
        password=PASSWORD,
        headers={**forged_headers(cert), "X-Proxy-Secret": PROXY_SECRET[:-1] + "x"},
        source=PROXY_ADDRESS,
    )
    # Then neither is taken for TLS with that certificate: both are refused as the plain connections they are, and
    # the refusal names the address they really came from, not the one they wrote
    assert (missing, wrong) == (403, 403)
    assert (await wait_until(_auth_failure(station_id))).data["address"] == PROXY_ADDRESS


@live
async def test_the_plain_port_serves_stations_and_revocation_but_no_page(proxied):
    # Given the proxy's plain (unencrypted) port
    async with httpx.AsyncClient(timeout=10) as client:
        # When a browser asks it for the admin login, the dashboard or the API, and a relying party for the CRL
        pages = [(await client.get(proxied.http(path))).status_code for path in ("/admin/login/", "/", "/api/")]
        crl = await client.get(proxied.http("/pki/crl"))
        ocsp = await client.get(proxied.http("/pki/ocsp/MAA="))  # RFC 6960 A.1 GET (a malformed request)
    # Then no page is served in cleartext (a password typed there would cross the network readable); the CRL and
    # the OCSP responder, public and signed, are
    assert pages == [403, 403, 403]
    assert crl.status_code == 200
    assert crl.headers["content-type"] == "application/pkix-crl"
    assert ocsp.headers["content-type"] == "application/ocsp-response"


async def _login_status(proxied: Proxied, source: str, username: str) -> int:
    """A wrong-password admin login through the proxy's TLS port from ``source``: the HTTP status it is answered."""
    transport = httpx.AsyncHTTPTransport(local_address=source, verify=proxied.context())
    async with httpx.AsyncClient(transport=transport, timeout=10) as client:
        form = await client.get(proxied.https("/admin/login/"))
        token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', form.text)
        assert token is not None, form.text[:500]
        answer = await client.post(
            proxied.https("/admin/login/"),
            data={"username": username, "password": "wrong-password", "csrfmiddlewaretoken": token.group(1)},
            headers={"Origin": proxied.https("").rstrip("/")},
        )
    return answer.status_code


@live
async def test_the_login_lock_out_counts_each_client_behind_the_proxy_by_its_own_address(proxied):
    # Given one client that has used up the wrong-password limit for a username through the proxy
    first = [await _login_status(proxied, STATION_ADDRESS, "ops-lockout") for _ in range(LOGIN_FAILURE_LIMIT)]
    assert first[0] == 200
    locked = await _login_status(proxied, STATION_ADDRESS, "ops-lockout")
    # When another client, from another address, tries the same username through the same proxy
    other = await _login_status(proxied, "127.0.0.10", "ops-lockout")
    # Then the first is locked out and the second is not: the lock-out is keyed on each client's own address, not
    # on the proxy's (which would let one client lock everybody out)
    assert (locked, other) == (429, 200)


@live
async def test_trusting_a_proxy_without_its_secret_stops_the_csms_and_the_proxy_from_starting(proxied, tmp_path):
    # Given a trusted proxy address but no shared secret, on the CSMS's side and on the proxy's
    csms_env = {**os.environ, "VPP_VAR_DIR": str(tmp_path), "OCPP_TRUSTED_PROXIES": "127.0.0.1/32"}
    csms_env.pop("OCPP_PROXY_SECRET", None)
    csms_env.pop("OCPP_PROXY_SECRET_FILE", None)
    proxy_env = {
        **os.environ,
        "VPP_PROXY_CERT": str(proxied.pki / "haproxy.pem"),
        "VPP_PROXY_CLIENT_CA": str(proxied.pki / "ca-bundle.pem"),
    }
    proxy_env.pop("VPP_PROXY_SECRET", None)
    # When either is started (the CSMS's settings load; HAProxy checks its configuration)
    csms = await _sync(
        subprocess.run,
        [sys.executable, "manage.py", "check"],
        cwd=ROOT,
        env=csms_env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    proxy = await _sync(
        subprocess.run,
        [str(HAPROXY), "-c", "-f", str(ROOT / "deploy" / "haproxy.cfg")],
        env=proxy_env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Then both refuse, naming the missing secret
    assert csms.returncode != 0
    assert "OCPP_PROXY_SECRET" in csms.stderr
    assert proxy.returncode != 0
    assert "VPP_PROXY_SECRET" in proxy.stdout + proxy.stderr


def test_without_trusted_proxies_the_headers_are_stripped_unread(settings):
    # Given the default: no trusted proxy
    assert settings.OCPP_TRUSTED_PROXIES == []
    scope = {
        "type": "websocket",
        "client": ["127.0.0.1", 40000],
        "headers": [(b"x-forwarded-proto", b"https"), (b"client-cert", b":AAAA:"), (b"host", b"csms")],
    }
    # When a connection, even from this machine, carries the proxy's headers
    seen = scope_from_proxy(scope, settings.OCPP_TRUSTED_PROXIES, settings.OCPP_PROXY_SECRET)
    # Then the application sees neither the headers nor any TLS
    assert seen["headers"] == [(b"host", b"csms")]
    assert "tls" not in seen.get("extensions", {})
    assert seen["client"] == ["127.0.0.1", 40000]
