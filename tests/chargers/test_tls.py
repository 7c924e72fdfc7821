"""Security profiles 2 and 3 end to end: a live server (``vpp.serve --tls-port``) on real TLS sockets, stations as
``websockets`` clients with the standard library's ssl contexts, certificates from the built-in PKI (and, for the
refusals, from an unrelated CA built here with ``cryptography``)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import websockets.asyncio.client
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from django.conf import settings
from django.core.management import call_command
from django.test import override_settings
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from chargers.models import Station, StationEvent, StationEventKind
from chargers.pki import ca, issue, storage
from edge_agent.simulate import Fleet
from edge_agent.tls import key_passphrase_from_env
from tests.chargers.conftest import ROOT, basic_auth
from tests.chargers.factories import STATION_PASSWORD, StationFactory
from tests.live import free_port, wait_listening

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("close_db_threads")]
PASSPHRASE = "test-pki-passphrase-0123456789"


@dataclass
class TlsServer:
    port: int
    tls_port: int
    pki: Path
    process: subprocess.Popen[bytes]

    def ws(self, station_id: str) -> str:
        return f"ws://127.0.0.1:{self.port}/ocpp/{station_id}"

    def wss(self, station_id: str) -> str:
        return f"wss://localhost:{self.tls_port}/ocpp/{station_id}"


@pytest.fixture(scope="module")
def tls_csms(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsServer]:
    """A CA made here, and the server on it: plain port + TLS port, its server certificate issued at start."""
    pki = tmp_path_factory.mktemp("pki")
    override = override_settings(PKI_DIR=pki, PKI_PASSPHRASE=PASSPHRASE)
    override.enable()
    storage.signing_key_forget()
    ca.ca_init(organisation="Test CPO")
    port, tls_port = free_port(), free_port()
    env = {**os.environ, "PKI_DIR": str(pki), "PKI_PASSPHRASE": PASSPHRASE}
    db_name = str(settings.DATABASES["default"]["NAME"])
    command = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1", "--tls-port", str(tls_port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_listening(process, tls_port)
        yield TlsServer(port, tls_port, pki, process)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        override.disable()
        storage.signing_key_forget()


@pytest.fixture
async def close_db_threads() -> object:
    yield
    # The ORM ran in sync_to_async's thread: close its connection, or PostgreSQL cannot drop the test database.
    from django.db import connections

    await _sync(connections.close_all)


def client_context(server: TlsServer, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(server.pki / "ca-bundle.pem"))
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    return context


def pem_files(tmp_path: Path, name: str, cert_pem: bytes, key: ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    cert_file, key_file = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    cert_file.write_bytes(cert_pem)
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_file, key_file


def station_files(tmp_path: Path, cn: str, **validity: datetime) -> tuple[Path, Path]:
    issued = issue.station_certificate_issue(station_id=cn, **validity)  # type: ignore[arg-type]
    return pem_files(tmp_path, cn, issued.cert_pem(), issued.key)


def foreign_files(tmp_path: Path, cn: str, *, self_signed: bool) -> tuple[Path, Path]:
    """A client certificate for ``cn`` from outside our PKI: self-signed, or from another CA."""
    now = datetime.now(UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    signer_key = key if self_signed else ec.generate_private_key(ec.SECP256R1())
    issuer = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn if self_signed else "Other CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .sign(signer_key, hashes.SHA256())
    )
    return pem_files(tmp_path, f"foreign-{cn}", cert.public_bytes(serialization.Encoding.PEM), key)


async def connect_status(url: str, *, context: ssl.SSLContext | None = None, password: str | None = None) -> int:
    """101 when the OCPP handshake succeeds, else the HTTP status the server refused it with."""
    headers = basic_auth(url.rsplit("/", 1)[1], password) if password else {}
    try:
        async with websockets.asyncio.client.connect(
            url, ssl=context, subprotocols=[Subprotocol("ocpp2.1")], additional_headers=headers, open_timeout=10
        ) as ws:
            assert ws.subprotocol == "ocpp2.1"
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


def profile(n: int) -> str:
    return StationFactory.create(security_profile=n).station_id


PASSWORD = STATION_PASSWORD


async def test_it_admits_a_profile_3_station_with_its_own_certificate(tls_csms, tmp_path):
    # Given a profile-3 station and the certificate the PKI issued for it
    station_id = await _sync(profile, 3)
    cert, key = await _sync(station_files, tmp_path, station_id)
    # When it connects over TLS presenting the certificate, with no password
    status = await connect_status(tls_csms.wss(station_id), context=client_context(tls_csms, cert, key))
    # Then the OCPP handshake completes
    assert status == 101


@pytest.mark.parametrize("kind", ["wrong-cn", "expired", "revoked", "self-signed", "other-ca", "unregistered"])
async def test_it_refuses_a_profile_3_station_whose_certificate_is_not_its_valid_own(tls_csms, tmp_path, kind):
    # Given a profile-3 station and a certificate that is wrong in one way
    station_id = await _sync(profile, 3)
    cert, key = await _sync(_bad_certificate, tmp_path, station_id, kind)
    # When it connects over TLS with it (and the right password, which must not help)
    status = await connect_status(
        tls_csms.wss(station_id), context=client_context(tls_csms, cert, key), password=PASSWORD
    )
    # Then the handshake is refused, and the refusal is stored as a security event
    assert status == 403
    event = await _sync(_refusal_event, station_id)
    assert event["type"] == "HandshakeRefused"


def _bad_certificate(tmp_path: Path, station_id: str, kind: str) -> tuple[Path, Path]:
    now = datetime.now(UTC)
    if kind == "wrong-cn":
        return station_files(tmp_path, profile(3))  # another station's valid certificate
    if kind == "expired":
        ended = {"not_before": now - timedelta(days=10), "not_after": now - timedelta(days=1)}
        return station_files(tmp_path, station_id, **ended)
    if kind == "revoked":
        files = station_files(tmp_path, station_id)
        issue.certificate_revoke(station_id=station_id, reason="keyCompromise")
        return files
    if kind == "unregistered":  # signed by our sub-CA but absent from the register
        files = station_files(tmp_path, station_id)
        from chargers.models import PkiCertificate

        PkiCertificate.objects.filter(subject_cn=station_id).delete()
        return files
    return foreign_files(tmp_path, station_id, self_signed=kind == "self-signed")


def _refusal_event(station_id: str) -> dict:
    import time

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        event = StationEvent.objects.filter(
            station__station_id=station_id, kind=StationEventKind.SECURITY_EVENT
        ).first()
        if event is not None:
            return event.data
        time.sleep(0.05)
    raise AssertionError("no security event stored")


async def test_it_refuses_a_profile_3_station_downgrading_to_a_password(tls_csms, tmp_path):
    # Given a profile-3 station with a valid certificate and a valid password
    station_id = await _sync(profile, 3)
    await _sync(station_files, tmp_path, station_id)
    # When it connects with the password only: over TLS without a certificate, and over plain ws://
    over_tls = await connect_status(tls_csms.wss(station_id), context=client_context(tls_csms), password=PASSWORD)
    over_ws = await connect_status(tls_csms.ws(station_id), password=PASSWORD)
    # Then both are refused
    assert (over_tls, over_ws) == (403, 403)


async def test_a_profile_2_station_connects_over_tls_with_its_password_and_not_over_ws(tls_csms):
    # Given a profile-2 station
    station_id = await _sync(profile, 2)
    # When it connects over TLS with its password, over TLS with a wrong one, and over ws:// with its password
    over_tls = await connect_status(tls_csms.wss(station_id), context=client_context(tls_csms), password=PASSWORD)
    wrong = await connect_status(
        tls_csms.wss(station_id), context=client_context(tls_csms), password="wrong-password-0000000"
    )
    over_ws = await connect_status(tls_csms.ws(station_id), password=PASSWORD)
    # Then only the first is admitted
    assert (over_tls, wrong, over_ws) == (101, 401, 403)


async def test_a_profile_1_station_still_connects_over_plain_ws(tls_csms):
    station_id = await _sync(profile, 1)
    assert await connect_status(tls_csms.ws(station_id), password=PASSWORD) == 101


def test_it_refuses_tls_1_1_and_weak_suites_and_speaks_1_3(tls_csms):
    # Given clients limited to TLS 1.1, to a TLS 1.2 suite without forward secrecy, and to TLS 1.3
    def handshake(context: ssl.SSLContext) -> str:
        import socket

        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", tls_csms.tls_port)) as sock, context.wrap_socket(sock) as tls:
            return str(tls.version())

    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.set_ciphers("ALL:@SECLEVEL=0")
    with pytest.warns(DeprecationWarning, match="TLSv1_1"):
        old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    weak = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    weak.maximum_version = ssl.TLSVersion.TLSv1_2
    weak.set_ciphers("AES128-GCM-SHA256:AES128-SHA")
    modern = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    # When each connects / Then the server refuses the first two with its own alert and prefers TLS 1.3
    with pytest.raises(ssl.SSLError) as refused_old:
        handshake(old)
    assert refused_old.value.reason == "TLSV1_ALERT_PROTOCOL_VERSION"  # the server's alert, not the client's limit
    with pytest.raises(ssl.SSLError) as refused_weak:
        handshake(weak)
    assert refused_weak.value.reason == "SSLV3_ALERT_HANDSHAKE_FAILURE"
    assert handshake(modern) == "TLSv1.3"


async def _sync(fn, *args, **kwargs):
    from asgiref.sync import sync_to_async

    return await sync_to_async(fn)(*args, **kwargs)


async def test_the_edge_agent_connects_as_a_profile_3_station_with_its_certificate(tls_csms, tmp_path):
    # Given a profile-3 station whose certificate and key sit in the agent's certificate directory
    station_id = await _sync(lambda: StationFactory.create(station_id="edge-tls-1", security_profile=3).station_id)
    issued = await _sync(issue.station_certificate_issue, station_id=station_id)
    pem_files(tmp_path, station_id, issued.cert_pem(), issued.key)
    # When `edge-agent simulate --ca ... --cert-dir ...` connects over wss:// without a password
    # Then the CSMS admits it and it boots
    await _agent_boots(tls_csms, tmp_path, "edge-tls", station_id)


async def test_the_edge_agent_connects_with_the_encrypted_key_pki_station_cert_writes(tls_csms, tmp_path):
    # Given a profile-3 station whose certificate and key (encrypted) `pki station-cert` wrote into the agent's
    # certificate directory, and the key's passphrase in a file
    station_id = await _sync(lambda: StationFactory.create(station_id="edge-enc-1", security_profile=3).station_id)
    passphrase_file = tmp_path / "key-pass"
    passphrase_file.write_text("edge-key-passphrase-0123\n")
    out = {"out_cert": str(tmp_path / f"{station_id}.pem"), "out_key": str(tmp_path / f"{station_id}.key")}
    await _sync(call_command, "pki", "station-cert", station_id, **out, passphrase_file=str(passphrase_file),
                stdout=io.StringIO())  # fmt: skip
    assert (tmp_path / f"{station_id}.key").read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----")
    # When the agent connects with the passphrase from that file (EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE, as simulate
    # reads it) / Then the CSMS admits it and it boots
    passphrase = key_passphrase_from_env({"EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE": str(passphrase_file)})
    await _agent_boots(tls_csms, tmp_path, "edge-enc", station_id, key_passphrase=passphrase)


async def _agent_boots(
    tls_csms: TlsServer, cert_dir: Path, prefix: str, station_id: str, *, key_passphrase: str = ""
) -> None:
    """Run `edge-agent simulate`'s fleet of one (``<prefix>-1``) over wss:// until the station has booted."""
    fleet = Fleet(
        1, f"wss://localhost:{tls_csms.tls_port}/ocpp", prefix, "", var_dir=cert_dir / "agent",
        ca_file=str(tls_csms.pki / "ca-bundle.pem"), cert_dir=cert_dir, key_passphrase=key_passphrase,
    )  # fmt: skip
    task = asyncio.create_task(fleet.run(30))
    try:
        deadline = asyncio.get_running_loop().time() + 20
        while not await _sync(
            lambda: Station.objects.filter(station_id=station_id, last_boot_at__isnull=False).exists()
        ):
            assert asyncio.get_running_loop().time() < deadline, "the agent never booted over TLS"
            await asyncio.sleep(0.1)
    finally:
        fleet.stop()
        await asyncio.wait_for(task, 15)


@pytest.mark.skipif(not settings.REDIS_URL, reason="several workers share stations only through Redis")
async def test_two_workers_both_serve_the_tls_port(tls_csms):
    # Given the server started with two workers and a TLS port, on the same PKI
    port, tls_port = free_port(), free_port()
    env = {**os.environ, "PKI_DIR": str(tls_csms.pki), "PKI_PASSPHRASE": PASSPHRASE}
    db_name = str(settings.DATABASES["default"]["NAME"])
    argv = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1", "--workers", "2", "--tls-port", str(tls_port)]
    server = await asyncio.to_thread(subprocess.Popen, argv, cwd=ROOT, env=env)
    try:
        await asyncio.to_thread(wait_listening, server, tls_port)
        stations = [await _sync(profile, 2) for _ in range(16)]
        # When sixteen profile-2 stations connect over TLS at once and each sends a Heartbeat
        async with contextlib.AsyncExitStack() as stack:
            for station_id in stations:
                ws = await stack.enter_async_context(
                    websockets.asyncio.client.connect(
                        f"wss://localhost:{tls_port}/ocpp/{station_id}",
                        ssl=client_context(tls_csms),
                        subprotocols=[Subprotocol("ocpp2.1")],
                        additional_headers=basic_auth(station_id, PASSWORD),
                        open_timeout=30,  # a generous bound, not a speed claim: CI machines are shared and slow
                    )
                )
                await ws.send('[2, "hb", "Heartbeat", {}]')
                assert str(await asyncio.wait_for(ws.recv(), 30)).startswith("[3,")
            # Then both workers hold some of them
            names = await _sync(
                lambda: set(Station.objects.filter(station_id__in=stations).values_list("channel_name", flat=True))
            )
            assert len({name.split("!")[0] for name in names if name}) == 2
    finally:
        server.terminate()
        await asyncio.to_thread(server.wait, 20)
