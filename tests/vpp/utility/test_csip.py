"""The IEEE 2030.5 / CSIP client against ``sep_server``, a server stub written from the 2030.5 schema (every body
either side sends validated against the 2030.5-2018 + CSIP-AUS XSDs: :attr:`SepServer.invalid` must stay empty),
over TLS with client certificates on a real socket: discovery through the EndDevice list, the portfolio's site
registered and its DER status, capability and settings, the MirrorUsagePoint under the certificate's LFDI, DER
controls dispatched (or stored and refused with the reason) and answered with Responses, a cancelled control
withdrawn, metered telemetry."""

from __future__ import annotations

import asyncio
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
from django.utils import timezone

from chargers.models import Station
from fleet.models import DeparturePlan, PlanSource, SocEstimate, SocSource
from markets.regulation.models import ReserveDeployment
from tests.fleet.factories import FleetFactory, PlugSessionFactory
from tests.live import free_port
from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.sep_server import SepServer, server_context, sfdi_of
from tests.vpp.utility.test_openadr2 import _metered_fleet, _wait_for
from vpp.dispatch import dispatcher as dispatcher_module
from vpp.dispatch.reserve import reserve_runs_stop
from vpp.models import PowerCap
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
    # A discharge rating (setMaxW) of 10 kW though no car is plugged in here: opModFixedW 5,000 (50.00 %) asks for
    # 5 kW of export, which a fleet metered at 0 W is deployed for
    monkeypatch.setattr(Csip, "discharge_rating_w", lambda self: 10_000)
    root = _issue(tmp_path, "utility-ca", None, ca=True)
    _issue(tmp_path, "server", root, ip="127.0.0.1")
    client, _ = _issue(tmp_path, "aggregator", root)
    server = SepServer()
    server.seed_device(client.fingerprint(hashes.SHA256()).hex()[:40], programs=[1])  # the aggregator's own
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
    assert server.invalid == []  # nothing either side sent broke the schema


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


async def test_a_fixed_w_control_is_deployed_before_its_start(sep: tuple[SepServer, Pki]) -> None:
    # Given a fleet with no connected station (its metered power counts as 0 W)
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        # When the server publishes opModFixedW = 50 % of the 10 kW rating (export 5 kW) for 6 s starting in 4 s
        server.add_control("C0" * 16, start, 6, opModFixedW=5_000)

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
        assert (event.kind, event.limit_w) == ("opModFixedW", -5_000)


async def test_an_export_limit_caps_the_portfolios_discharge_from_its_lead_to_its_end(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given a 3 kW export limit starting in 3 s for 4 s
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=1.0)):
        server.add_control("E1" * 16, start, 4, opModExpLimW=3_000)

        def completed() -> bool:
            return any(r["subject"] == "E1" * 16 and r["status"] == 3 for r in server.responses)

        # Then it is dispatched (answered started, completed) as a stored cap, not as a deployment
        await _until(completed)
    cap = await PowerCap.objects.aget(portfolio=program.portfolio)
    assert (cap.export_w, cap.import_w, cap.start, cap.end) == (3_000, None, start - timedelta(seconds=1),
                                                                start + timedelta(seconds=4))  # fmt: skip
    assert not await ReserveDeployment.objects.filter(portfolio=program.portfolio).aexists()
    event = await UtilityEvent.objects.aget(program=program, event_ref="E1" * 16)
    assert (event.status, event.kind, event.limit_w) == (EventStatus.COMPLETED, "opModExpLimW", 3_000)


async def test_an_import_limit_below_the_cars_departure_need_says_the_need_wins(sep: tuple[SepServer, Pki]) -> None:
    # Given two cars plugged in (52.2 of 58 kWh) that must be full in 20 minutes: each must charge its 11 kW now
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    await sync_to_async(_two_cars_plugged_in)(program, leaving_in=timedelta(minutes=20))
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    async with _client(program, pki, EventRuns(lead_s=1.0)):
        # When the server limits the import to 1 kW for 10 minutes
        server.add_control("D5" * 16, start, 600, opModImpLimW=1_000)

        def noted() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref="D5" * 16,
                                               status_reason__contains="departure need").exists()  # fmt: skip

        await _wait_for(noted)
    # Then the event says the departure need (2 x 11 kW) wins over the limit, and the cap is stored all the same
    event = await UtilityEvent.objects.aget(program=program, event_ref="D5" * 16)
    assert event.status_reason == (
        "departure need 22000 W: the fleet draws at least 22000 W, above the import limit 1000 W: the cars that must "
        "charge to leave on time charge (departure need wins)"
    )
    assert await PowerCap.objects.filter(portfolio=program.portfolio, import_w=1_000).aexists()


async def test_a_control_cancelled_under_way_is_withdrawn(sep: tuple[SepServer, Pki]) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        server.add_control("D2" * 16, start, 60, opModFixedW=5_000)

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


def _lfdi(pki: Pki) -> str:
    return x509.load_der_x509_certificate(pki.client_der).fingerprint(hashes.SHA256()).hex()[:40].upper()


def _two_cars_plugged_in(program: UtilityProgram, leaving_in: timedelta | None = None) -> None:
    """Two cars of the program's fleet on connected OCPP 2.1 stations: 11 kW each way, 58 kWh, 52.2 kWh stored
    (``leaving_in``: each to be full then)."""
    fleet = FleetFactory._meta.model.objects.get(pk=int(program.portfolio.removeprefix("fleet-")))
    now = timezone.now()
    for n in (1, 2):
        station = Station.objects.create(station_id=f"csip-{program.pk}-{n}", ocpp_version="2.1", channel_name="x")
        session = PlugSessionFactory.create(vehicle__fleet=fleet, station_id=station.station_id, evse_id=1,
                                            started_at=now - timedelta(hours=2))  # fmt: skip
        SocEstimate.objects.create(
            vehicle=session.vehicle, soc_wh=52_200, source=SocSource.SEED, valid_at=now, known_at=now
        )
        if leaving_in is not None:
            DeparturePlan.objects.create(vehicle=session.vehicle, source=PlanSource.FLEET_MANAGER, session=session,
                                         departure_at=now + leaving_in, target_soc_pct=100, known_at=now)  # fmt: skip


async def _until(check: Any) -> None:
    for _ in range(200):
        if check():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("timed out")


async def test_it_registers_its_site_and_reaches_the_programs_through_its_end_devices(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given a CSIP server listing only the aggregator's own EndDevice, program 1 assigned to it
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    server.add_control("B1" * 16, start, 600, opModFixedW=5_000)
    async with _client(program, pki, EventRuns()):
        # When the client starts: it registers the portfolio's site as an EndDevice (EV | EVSE), sFDI checked
        assert len(server.devices) == 2
        site = server.devices[1]
        assert (site.category, site.programs) == ("030000", [1])
        assert site.lfdi != _lfdi(pki)

        # Then it reads the control through EndDevice -> FunctionSetAssignments -> DERProgram -> DERControl
        def stored() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref="B1" * 16).exists()

        await _wait_for(stored)
    assert {"/edev", "/edev/1/fsa", "/edev/2/fsa", "/edev/1/fsa/1/derp", "/edev/2/fsa/1/derp", "/derp/1/derc"} <= set(
        server.gets
    )
    assert "/derp" not in server.gets  # no DeviceCapability-level program list in CSIP
    # And a second client of the same portfolio registers nothing more: the site is found by its LFDI
    async with _client(program, pki, EventRuns()):
        assert len(server.devices) == 2


async def test_the_sites_der_status_capability_and_settings_are_those_of_the_plugged_in_cars(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given two cars plugged in: 11 kW each way, 58 kWh each, 52.2 kWh stored each
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    await sync_to_async(_two_cars_plugged_in)(program)
    async with _client(program, pki, EventRuns()):
        await _until(lambda: len(server.der.get((2, "DERStatus"), [])) >= 2)
    # Then the site's DER (device 2) has: capability 22 kW each way, 116 kWh (11,600 x 10^1 Wh) ...
    capability = server.der[(2, "DERCapability")][0]
    assert capability["rtgMaxChargeRateW"] == {"multiplier": "0", "value": "22000"}
    assert capability["rtgMaxDischargeRateW"] == {"multiplier": "0", "value": "22000"}
    assert capability["rtgMaxWh"] == {"multiplier": "1", "value": "11600"}
    # ... settings: setMaxW the discharge power now, 22 kW ...
    assert server.der[(2, "DERSettings")][0]["setMaxW"] == {"multiplier": "0", "value": "22000"}
    # ... status: 104.4 / 116 kWh = 90.00 %, connected and available; sent again each period, the others once
    status = server.der[(2, "DERStatus")][-1]
    assert (status["stateOfChargeStatus"]["value"], status["storConnectStatus"]["value"]) == ("9000", "03")
    assert len(server.der[(2, "DERCapability")]) == len(server.der[(2, "DERSettings")]) == 1
    stored = [r async for r in UtilityReport.objects.filter(program=program, kind=ReportKind.STATUS)]
    assert {r.values["resource"] for r in stored} == {"DERStatus", "DERCapability", "DERSettings"}
    assert all(r.accepted for r in stored if r.sent_at is not None)


async def test_a_control_is_answered_received_started_completed_for_each_end_device(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given program 1 assigned to the aggregator's EndDevice and to the site it registers
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=1.0)):
        site = server.devices[1].lfdi
        # When a 3 s fixed W control asks for responses (responseRequired 03) and runs to its end
        server.add_control("A7" * 16, start, 3, opModFixedW=5_000)

        def completed() -> bool:
            return sum(r["status"] == 3 for r in server.responses) >= 2

        await _until(completed)
    # Then each EndDevice the program is assigned to got 1 received, 2 started, 3 completed, in order, once each
    for device in (_lfdi(pki), site):
        assert [r["status"] for r in server.responses if r["endDeviceLFDI"] == device] == [1, 2, 3]
    assert {r["subject"] for r in server.responses} == {"A7" * 16}
    stored = [r async for r in UtilityReport.objects.filter(program=program, kind=ReportKind.EVENT)]
    assert len(stored) == 6
    assert all(r.accepted for r in stored)


async def test_refused_expired_and_cancelled_controls_are_answered_with_their_codes(
    sep: tuple[SepServer, Pki],
) -> None:
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    now = datetime.now(UTC).replace(microsecond=0)
    # Given a control of a mode not dispatched here (opModTargetW), one already over, one cancelled before its start,
    # and one that asks for no response
    server.add_control("F1" * 16, now + timedelta(minutes=5), 600, opModTargetW=3_000)
    server.add_control("F2" * 16, now - timedelta(minutes=20), 600, opModFixedW=5_000)
    server.add_control("F3" * 16, now + timedelta(minutes=5), 600, opModFixedW=5_000)
    server.cancel("F3" * 16, now)
    server.add_control("F4" * 16, now + timedelta(minutes=5), 600, response_required="00", opModTargetW=1_000)
    async with _client(program, pki, EventRuns()):
        await _until(lambda: len({r["subject"] for r in server.responses}) >= 3)
        await asyncio.sleep(1.5)  # another poll: nothing is sent twice
    # Then: not applicable (252), expired (254), cancelled (6), each after its receipt, and nothing for F4
    site = server.devices[1].lfdi
    by_subject = {s: [r["status"] for r in server.responses if r["subject"] == s and r["endDeviceLFDI"] == site]
                  for s in ("F1" * 16, "F2" * 16, "F3" * 16, "F4" * 16)}  # fmt: skip
    assert by_subject == {"F1" * 16: [1, 252], "F2" * 16: [1, 254], "F3" * 16: [1, 6], "F4" * 16: []}


async def test_a_control_the_server_marks_active_is_not_deployed_again(sep: tuple[SepServer, Pki]) -> None:
    # Given a fixed W control deployed 2 s ahead of its start
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        server.add_control("A1" * 16, start, 30, opModFixedW=5_000)

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        # When the server's EventStatus turns active (its dateTime changes) and the client polls again
        server.set_status("A1" * 16, 1, datetime.now(UTC))
        await asyncio.sleep(2.5)
    # Then the one deployment runs on to the control's end (not withdrawn, no second one), one event version stored
    reserves = [r async for r in ReserveDeployment.objects.filter(portfolio=program.portfolio)]
    assert [(r.start, r.end) for r in reserves] == [(start - timedelta(seconds=2), start + timedelta(seconds=30))]
    assert await UtilityEvent.objects.filter(program=program, event_ref="A1" * 16).acount() == 1


async def test_an_older_copy_of_a_control_neither_cancels_nor_replaces_the_newer_one(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given a control deployed 2 s ahead of its start
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    end = start + timedelta(seconds=60)
    async with _client(program, pki, EventRuns(lead_s=2.0)):
        control = server.add_control("A9" * 16, start, 60, opModFixedW=5_000)

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, end=end).exists()

        await _wait_for(deployed)
        # When the server then serves an older copy of it (creationTime 10 min earlier), cancelled: a replay
        control["created"] -= 600
        server.cancel("A9" * 16, datetime.now(UTC))

        def stored() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref="A9" * 16).count() == 2

        await _wait_for(stored, 10)
        await asyncio.sleep(1.5)  # another poll or two
    # Then the newer version's deployment runs on to its end, and the older copy is stored refused with the reason
    assert await sync_to_async(deployed)()
    rows = [e async for e in UtilityEvent.objects.filter(program=program).order_by("modification")]
    assert [e.status for e in rows] == [EventStatus.REFUSED, EventStatus.ACTIVE]
    assert rows[0].status_reason.startswith("older than the version stored")


async def test_a_plain_2030_5_server_assigning_programs_on_its_device_capability_is_followed(
    sep: tuple[SepServer, Pki],
) -> None:
    # Given a server with no EndDevice list: its DeviceCapability links the DER programs itself
    server, pki = sep
    server.csip = False
    program = await sync_to_async(_program)(server.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)
    server.add_control("C5" * 16, start, 600, opModFixedW=5_000)
    async with _client(program, pki, EventRuns()):
        # Then the control is read from /derp and answered for the aggregator itself
        await _until(lambda: any(r["subject"] == "C5" * 16 for r in server.responses))
    assert {(r["endDeviceLFDI"], r["status"]) for r in server.responses} == {(_lfdi(pki), 1)}
    assert len(server.devices) == 1  # nothing registered


async def test_the_server_refuses_a_body_the_schema_does_not_allow(sep: tuple[SepServer, Pki]) -> None:
    # Given a running client's TLS session with the server
    server, pki = sep
    program = await sync_to_async(_program)(server.url)
    async with _client(program, pki, EventRuns()) as client:
        # When an EndDevice without its required changedTime is posted
        body = f'<EndDevice xmlns="urn:ieee:std:2030.5:ns"><sFDI>{sfdi_of("AB" * 20)}</sFDI></EndDevice>'
        answer = await client.http.post(server.url.replace("/dcap", "/edev"), content=body,
                                         headers={"Content-Type": "application/sep+xml"})  # fmt: skip
    # Then it is refused with the schema's reason, and noted (the fixture would fail the test on it)
    assert answer.status_code == 400
    assert "changedTime" in answer.text
    assert len(server.invalid) == 1
    server.invalid.clear()
