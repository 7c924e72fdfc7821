"""A profile-3 connection lasts no longer than its client certificate: revoked (``pki revoke``, a station's Rejected
CertificateSigned, a profile raise) or expired while connected, the socket is closed with a 4xxx code, the reason
logged and a security event stored (chargers.certificate_sessions).

Live: a server process on real TLS sockets, the revocation made from this test process as an operator would. With
Redis the notice must travel through the channel layer (the server's register check is set too slow to pass for
it); without Redis nothing else can reach that process, and its register check (every 0.5 s here) closes the
socket. In process: the revocation reaches the consumer in this process directly, whatever the channel layer.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import ssl
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import websockets.asyncio.client
from asgiref.sync import sync_to_async
from cryptography import x509
from django.conf import settings
from django.core.management import call_command
from django.db import connections
from django.test import override_settings
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

from chargers.consumers import CLOSE_CERTIFICATE_EXPIRED, CLOSE_CERTIFICATE_REVOKED
from chargers.models import Station, StationEvent, StationEventKind
from chargers.pki import ca, issue, storage
from tests.chargers.conftest import ROOT, station_socket, wait_until
from tests.chargers.factories import StationFactory
from tests.live import free_port, wait_listening

pytestmark = [pytest.mark.django_db(transaction=True)]
PASSPHRASE = "close-test-pki-passphrase-0123"
CHECK_S = "60" if settings.REDIS_URL else "0.5"  # see the module's docstring


@pytest.fixture(scope="module")
def pki_server(
    django_db_setup: None, django_db_blocker: object, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Path, int]]:
    """A CA made here, and a server with a TLS port on it: (PKI directory, TLS port)."""
    pki = tmp_path_factory.mktemp("pki")
    override = override_settings(PKI_DIR=pki, PKI_PASSPHRASE=PASSPHRASE)
    override.enable()
    storage.signing_key_forget()
    ca.ca_init(organisation="Test CPO")
    port, tls_port = free_port(), free_port()
    env = {**os.environ, "PKI_DIR": str(pki), "PKI_PASSPHRASE": PASSPHRASE, "OCPP_OWNERSHIP_CHECK_S": CHECK_S}
    db_name = str(settings.DATABASES["default"]["NAME"])
    command = [sys.executable, "-m", "vpp.serve", str(port), db_name, "1", "--tls-port", str(tls_port)]
    process = subprocess.Popen(command, cwd=ROOT, env=env)
    try:
        wait_listening(process, tls_port)
        yield pki, tls_port
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
    await sync_to_async(connections.close_all)()  # PostgreSQL cannot drop a test database still in use


def profile_3_station(tmp_path: Path, *, lifetime: timedelta = timedelta(days=30)) -> tuple[str, Path, Path]:
    """A profile-3 station and the files of the certificate (valid from an hour ago for ``lifetime``) and key."""
    station_id = StationFactory.create(security_profile=3).station_id
    now = datetime.now(UTC)
    issued = issue.station_certificate_issue(
        station_id=station_id, not_before=now - timedelta(hours=1), not_after=now + lifetime
    )
    cert, key = tmp_path / f"{station_id}.pem", tmp_path / f"{station_id}.key"
    cert.write_bytes(issued.cert_pem())
    key.write_bytes(issued.key_pem())
    return station_id, cert, key


def tls_context(pki: Path, cert: Path, key: Path) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca-bundle.pem"))
    context.load_cert_chain(str(cert), str(key))
    return context


async def connect(
    tls_port: int, station_id: str, context: ssl.SSLContext
) -> websockets.asyncio.client.ClientConnection:
    ws = await websockets.asyncio.client.connect(
        f"wss://localhost:{tls_port}/ocpp/{station_id}", ssl=context, subprotocols=[Subprotocol("ocpp2.1")],
        open_timeout=10,
    )  # fmt: skip
    await ws.send('[2, "hb-1", "Heartbeat", {}]')  # the connection is up and serving
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))[:2] == [3, "hb-1"]
    return ws


async def close_code(ws: websockets.asyncio.client.ClientConnection, within: float = 20.0) -> int | None:
    """The code the server closed ``ws`` with (waiting at most ``within`` seconds for it to do so)."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), within)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def closing_event(station_id: str, kind: str) -> dict[str, object] | None:
    event = StationEvent.objects.filter(
        station__station_id=station_id, kind=kind, data__type="ConnectionClosed"
    ).first()
    return event.data if event else None


def revoke_as_operator(target: str) -> None:
    try:
        call_command("pki", "revoke", target, "--reason", "keyCompromise", stdout=io.StringIO())
    finally:
        connections.close_all()  # this thread's connection


@pytest.mark.live
@pytest.mark.usefixtures("close_db_threads")
async def test_revoking_a_connected_stations_certificate_closes_its_connection(pki_server, tmp_path):
    # Given a profile-3 station connected over TLS with its certificate
    pki, tls_port = pki_server
    station_id, cert, key = await sync_to_async(profile_3_station)(tmp_path)
    ws = await connect(tls_port, station_id, tls_context(pki, cert, key))
    # When an operator revokes its certificates (`pki revoke <station id>`, in this process, not the server's)
    await asyncio.to_thread(revoke_as_operator, station_id)
    # Then the server closes the connection with 4003, and stores a security event naming the certificate
    assert await close_code(ws) == CLOSE_CERTIFICATE_REVOKED
    event = await wait_until(lambda: sync_to_async(closing_event)(station_id, StationEventKind.CERTIFICATE_REVOKED))
    assert event["code"] == CLOSE_CERTIFICATE_REVOKED
    assert event["reason"] == "keyCompromise"
    # and the station cannot come back with it
    with pytest.raises(websockets.exceptions.InvalidStatus):
        await connect(tls_port, station_id, tls_context(pki, cert, key))


@pytest.mark.live
@pytest.mark.usefixtures("close_db_threads")
async def test_a_certificate_expiring_while_connected_closes_the_connection_at_its_not_after(pki_server, tmp_path):
    # Given a profile-3 station connected with a certificate that expires a few seconds from now
    pki, tls_port = pki_server
    station_id, cert, key = await sync_to_async(profile_3_station)(tmp_path, lifetime=timedelta(seconds=6))
    ws = await connect(tls_port, station_id, tls_context(pki, cert, key))
    # When its notAfter passes / Then the server closes the connection with 4004 and stores a security event
    assert await close_code(ws) == CLOSE_CERTIFICATE_EXPIRED
    event = await wait_until(lambda: sync_to_async(closing_event)(station_id, StationEventKind.CERTIFICATE_EXPIRED))
    assert event["code"] == CLOSE_CERTIFICATE_EXPIRED


def in_process_station(tmp_path: Path) -> tuple[str, str, str]:
    """A profile-3 station, its certificate (PEM) and serial, from a PKI made for the test."""
    station_id, cert, _ = profile_3_station(tmp_path)
    leaf = cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    return station_id, leaf, format(x509.load_pem_x509_certificate(leaf.encode()).serial_number, "x")


@pytest.fixture
def pki(tmp_path: Path) -> Iterator[Path]:
    with override_settings(PKI_DIR=tmp_path / "pki", PKI_PASSPHRASE=PASSPHRASE):
        storage.signing_key_forget()
        ca.ca_init(organisation="Test CPO")
        yield tmp_path / "pki"
    storage.signing_key_forget()


@pytest.mark.usefixtures("close_db_threads", "batchers_closed")
async def test_a_revocation_in_the_process_holding_the_socket_closes_it_without_the_channel_layer(pki, tmp_path):
    # Given a profile-3 station connected to a consumer in this process with its (verified) certificate
    station_id, leaf, serial = await sync_to_async(in_process_station)(tmp_path)
    tls = {"client_cert_chain": [leaf], "client_cert_name": None, "client_cert_error": None, "tls_version": 0x0304}
    socket = station_socket(station_id, tls=tls)
    assert (await socket.connect(timeout=5))[0]
    # When the certificate is revoked in this process (a station's Rejected CertificateSigned does it so)
    await sync_to_async(issue.certificate_revoke)(serial=serial, reason="rejected by the station")
    # Then the consumer closes the socket with 4003 at once, and stores a security event
    assert await socket.receive_output(timeout=5) == {"type": "websocket.close", "code": CLOSE_CERTIFICATE_REVOKED}
    event = await wait_until(lambda: sync_to_async(closing_event)(station_id, StationEventKind.CERTIFICATE_REVOKED))
    assert event["serial"] == serial
    await socket.disconnect()
    # (the disconnection stored before the test's batcher threads are closed)
    await wait_until(lambda: sync_to_async(lambda: not Station.objects.exclude(channel_name="").exists())())
