"""The IEEE 2030.5 / CSIP client against ``sep_server``, a server stub written from the 2030.5 schema, over TLS
with client certificates on a real socket: discovery, the MirrorUsagePoint under the certificate's LFDI, DER
controls dispatched (or stored and refused with the reason), a cancelled control withdrawn, metered telemetry."""

from __future__ import annotations

import contextlib
import ipaddress
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from markets.regulation.models import ReserveDeployment
from tests.live import free_port
from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.sep_server import SepServer, server_context
from tests.vpp.utility.test_openadr2 import _metered_fleet, _wait_for
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch.reserve import reserve_runs_stop
from vpp.utility.csip import Csip
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, Protocol, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.runner import program_start
from vpp.utility.selectors import Credentials

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@dataclass
class Pki:
    ca: Path
    client_cert: Path
    client_key: Path
    client_der: bytes


def _issue(tmp: Path, name: str, issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
           *, ca: bool = False, ip: str = "") -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ip:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), False)
    cert = builder.sign(issuer[1] if issuer else key, hashes.SHA256())
    (tmp / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (tmp / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key


@pytest.fixture
async def sep(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[SepServer, Pki]]:
    monkeypatch.setattr(dispatcher_module, "_dispatchers", {})
    root = _issue(tmp_path, "utility-ca", None, ca=True)
    _issue(tmp_path, "server", root, ip="127.0.0.1")
    client, _ = _issue(tmp_path, "aggregator", root)
    server = SepServer()
    runner = web.AppRunner(server.app())
    await runner.setup()
    port = free_port()
    context = server_context(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key"), str(tmp_path / "utility-ca.pem")
    )
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    server.url = f"https://127.0.0.1:{port}/dcap"
    pki = Pki(tmp_path / "utility-ca.pem", tmp_path / "aggregator.pem", tmp_path / "aggregator.key",
              client.public_bytes(serialization.Encoding.DER))  # fmt: skip
    yield server, pki
    await runner.cleanup()
    await reserve_runs_stop()


def _program(url: str) -> UtilityProgram:
    program = UtilityProgramFactory.create(protocol=Protocol.IEEE_2030_5, endpoint=url, poll_s=1, report_s=1)
    return UtilityProgram.objects.select_related("product__operator", "organisation").get(pk=program.pk)


@contextlib.asynccontextmanager
async def _client(program: UtilityProgram, pki: Pki, runs: EventRuns) -> AsyncIterator[Csip]:
    client = Csip(program, runs=runs, credentials=Credentials(pki.client_cert, pki.client_key, pki.ca, None))
    assert await client.start()
    try:
        yield client
    finally:
        await runs.stop()
        await client.stop()


async def test_it_mirrors_the_portfolio_under_its_certificates_lfdi(sep: tuple[SepServer, Pki]) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    async with _client(program, pki, EventRuns()):
        # The LFDI: SHA-256 of the client certificate (DER), its first 160 bits (2030.5 §6.3.4)
        expected = x509.load_der_x509_certificate(pki.client_der).fingerprint(hashes.SHA256()).hex()[:40].upper()
        assert server.clients[0] == expected
        assert [(m["deviceLFDI"], m["roleFlags"], m["uom"]) for m in server.mirrors] == [(expected, "49", "38")]
        await program.arefresh_from_db()
        assert program.registration_ref == expected
        assert program.healthy


async def test_it_refuses_to_start_without_a_certificate_the_server_trusts(
    sep: tuple[SepServer, Pki], tmp_path: Path
) -> None:
    server, pki = sep
    stranger = _issue(tmp_path, "stranger-ca", None, ca=True)
    _issue(tmp_path, "stranger", stranger)
    program = await sync_to_async(_program)(server.url)
    credentials = Credentials(tmp_path / "stranger.pem", tmp_path / "stranger.key", pki.ca, None)
    assert not await Csip(program, runs=EventRuns(), credentials=credentials).start()
    await program.arefresh_from_db()
    assert program.last_error.startswith("2030.5: ")
    assert server.mirrors == []


async def test_an_import_limit_control_is_deployed_before_its_start(sep: tuple[SepServer, Pki]) -> None:
    # Given a fleet with no connected station (its metered power counts as 0 W)
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        # When the server publishes opModImpLimW = -5 kW (export at least 5 kW) for 6 s starting in 4 s
        server.add_control("C0" * 16, start, 6, opModImpLimW=-5_000)

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        # Then 2 s ahead the portfolio gets a 5,000 W reserve deployment until the control's end
        await _wait_for(deployed)
        reserve = await ReserveDeployment.objects.aget(portfolio=program.portfolio)
        assert (reserve.power_w, reserve.start, reserve.end) == (
            5_000,
            start - timedelta(seconds=2),
            start + timedelta(seconds=6),
        )
        event = await UtilityEvent.objects.aget(program=program, event_ref="C0" * 16)
        assert (event.kind, event.limit_w) == ("opModImpLimW", -5_000)


async def test_an_export_limit_is_stored_and_refused_with_the_reason(sep: tuple[SepServer, Pki]) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    async with _client(program, pki, EventRuns()):
        server.add_control("E1" * 16, datetime.now(UTC) + timedelta(minutes=5), 600, opModExpLimW=3_000)

        def stored() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref="E1" * 16).exists()

        await _wait_for(stored)
    event = await UtilityEvent.objects.aget(program=program, event_ref="E1" * 16)
    assert (event.status, event.status_reason) == (
        EventStatus.REFUSED,
        "opModExpLimW caps discharge; the dispatch services only add it",
    )


async def test_a_control_cancelled_under_way_is_withdrawn(sep: tuple[SepServer, Pki]) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        server.add_control("D2" * 16, start, 60, opModImpLimW=-5_000)

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        server.cancel("D2" * 16, datetime.now(UTC))

        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(
                portfolio=program.portfolio, end__lt=start + timedelta(seconds=60)
            ).exists()

        await _wait_for(withdrawn)
    statuses = {e.status async for e in UtilityEvent.objects.filter(program=program, event_ref="D2" * 16)}
    assert statuses == {EventStatus.CANCELLED}


async def test_telemetry_readings_are_the_metered_net_power(sep: tuple[SepServer, Pki]) -> None:
    # Given the fleet's meters: +7,400 W on one charge point, -2,000 W on another, in force
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    await sync_to_async(_metered_fleet)(program)
    async with _client(program, pki, EventRuns()):

        def read() -> bool:
            return len(server.readings) >= 2

        await _wait_for(read)
    # Then each MirrorMeterReading's value is 7,400 - 2,000 = 5,400 W over a 1 s period, stored and accepted
    assert {(r["value"], r["duration"]) for r in server.readings} == {(5_400, 1)}
    stored = [r async for r in UtilityReport.objects.filter(program=program, kind=ReportKind.TELEMETRY)]
    assert all(r.values == {"power_w": 5_400} for r in stored)
    assert any(r.accepted for r in stored)


async def test_a_program_whose_certificate_is_unusable_does_not_start_and_says_why(
    tmp_path: Path, settings: Any
) -> None:
    # Given a 2030.5 program whose certificate file holds no certificate (its key file is as bad)
    settings.UTILITY_CREDENTIALS_DIR = tmp_path
    program = await sync_to_async(UtilityProgramFactory.create)(
        protocol=Protocol.IEEE_2030_5, endpoint="https://127.0.0.1:9/dcap", cert_file="agg.pem", key_file="agg.key"
    )
    slug = await sync_to_async(lambda: program.organisation.slug)()
    (tmp_path / slug).mkdir()
    (tmp_path / slug / "agg.pem").write_text("not a certificate\n")
    (tmp_path / slug / "agg.key").write_text("not a key\n")
    program = await UtilityProgram.objects.select_related("product").aget(pk=program.pk)
    # When the runner starts it: no client, and the status page says why (the runner goes on with the others)
    assert await program_start(program, EventRuns()) is None
    await program.arefresh_from_db()
    assert program.last_error.startswith("cannot start: ")
