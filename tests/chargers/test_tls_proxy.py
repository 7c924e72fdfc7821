"""Security profiles 2 and 3 with TLS terminated by HAProxy in front of Daphne: the real ``haproxy`` binary running
``deploy/haproxy.cfg`` before a live server (``vpp.serve``, plain port only), stations as ``websockets`` clients over
real TLS sockets. The same rules as with the embedded listener (tests/chargers/test_tls.py), and a station that
connects to Daphne directly cannot claim TLS, a certificate or an address by writing the proxy's headers itself."""

from __future__ import annotations

import base64
import os
import shutil
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

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
        csms = start_server({"PKI_DIR": str(pki), "PKI_PASSPHRASE": PASSPHRASE, "OCPP_TRUSTED_PROXIES": "127.0.0.1/32"})
        tls_port, plain_port = free_port(), free_port()
        env = {
            **os.environ,
            "VPP_PROXY_CERT": str(bundle),
            "VPP_PROXY_CLIENT_CA": str(pki / "ca-bundle.pem"),
            "VPP_PROXY_ADDR": "127.0.0.1",
            "VPP_PROXY_TLS_PORT": str(tls_port),
            "VPP_PROXY_PORT": str(plain_port),
            "VPP_BACKEND": f"127.0.0.1:{csms.port}",
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


def test_without_trusted_proxies_the_headers_are_stripped_unread(settings):
    # Given the default: no trusted proxy
    assert settings.OCPP_TRUSTED_PROXIES == []
    scope = {
        "type": "websocket",
        "client": ["127.0.0.1", 40000],
        "headers": [(b"x-forwarded-proto", b"https"), (b"client-cert", b":AAAA:"), (b"host", b"csms")],
    }
    # When a connection, even from this machine, carries the proxy's headers
    seen = scope_from_proxy(scope, settings.OCPP_TRUSTED_PROXIES)
    # Then the application sees neither the headers nor any TLS
    assert seen["headers"] == [(b"host", b"csms")]
    assert "tls" not in seen.get("extensions", {})
    assert seen["client"] == ["127.0.0.1", 40000]
