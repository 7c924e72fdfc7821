"""The OpenADR 2.0b VEN against openleadr's own VTN (``OpenADRServer``), started by the test on a real socket.

Registration, an event opted in and dispatched (a reserve deployment of the portfolio, which runs by itself), a
cancelled event's deployment withdrawn, an event opted out, and EiReport telemetry matching the meters.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web
from asgiref.sync import sync_to_async
from django.db import OperationalError
from openleadr import OpenADRServer
from openleadr.service import VTNService, handler

from chargers.models import MeterValue
from fleet.models import PlugSession
from markets.regulation.models import ReserveDeployment
from tests.chargers.factories import StationFactory
from tests.fleet.factories import FleetFactory, VehicleFactory
from tests.live import free_port
from tests.vpp.utility.factories import UtilityProgramFactory
from vpp.dispatch.reserve import reserve_runs
from vpp.utility import openadr2
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.openadr2 import Ven2b
from vpp.utility.selectors import Credentials
from vpp.utility.services import utility_program_update

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
NO_CREDENTIALS = Credentials(None, None, None, None)
VEN_ID, REGISTRATION_ID = "ven-acme-1", "reg-acme-1"


@dataclass
class Vtn:
    server: OpenADRServer
    url: str
    opts: asyncio.Queue[tuple[str, str]] = field(default_factory=asyncio.Queue)
    reports: list[tuple[datetime, float]] = field(default_factory=list)
    refusing: int = 0  # the next oadrUpdateReports the VTN fails (HTTP 500, nothing kept)
    opts_created: list[dict[str, Any]] = field(default_factory=list)  # oadrCreateOpt messages received
    responses: list[tuple[datetime, float]] = field(default_factory=list)  # the after-the-event report's values
    refusing_responses: int = 0  # the next after-the-event reports the VTN fails (HTTP 500, nothing kept)

    def event(self, signal_name: str, signal_type: str, start: datetime, seconds: int, payload: float) -> str:
        async def answered(ven_id: str, event_id: str, opt_type: str) -> None:
            await self.opts.put((event_id, opt_type))

        return str(
            self.server.add_event(
                ven_id=VEN_ID,
                signal_name=signal_name,
                signal_type=signal_type,
                intervals=[{"dtstart": start, "duration": timedelta(seconds=seconds), "signal_payload": payload}],
                callback=answered,
            )
        )


class _OptService(VTNService):
    """EiOpt, which openleadr's VTN does not serve (its OptService is a stub, not routed): records each
    oadrCreateOpt and answers oadrResponse 200 (openleadr has no oadrCreatedOpt template)."""

    __service_name__ = "EiOpt"

    def __init__(self, vtn_id: str, received: list[dict[str, Any]]) -> None:
        super().__init__(vtn_id)
        self.received = received

    @handler("oadrCreateOpt")
    async def create_opt(self, payload: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        self.received.append(payload)
        return "oadrResponse", {}


@pytest.fixture
async def vtn() -> AsyncIterator[Vtn]:
    port = free_port()
    server = OpenADRServer(
        vtn_id="TEST_VTN",
        http_port=port,
        requested_poll_freq=timedelta(seconds=1),
        show_fingerprint=False,
        verify_message_signatures=False,
    )
    found = Vtn(server, f"http://127.0.0.1:{port}/OpenADR2/Simple/2.0b")

    def register(payload: dict[str, Any]) -> tuple[str, str]:
        return VEN_ID, REGISTRATION_ID

    async def on_update_report(data: list[tuple[datetime, float]]) -> None:
        if found.refusing > 0:
            found.refusing -= 1
            raise RuntimeError("the VTN is in trouble")
        found.reports.extend(data)

    def on_register_report(
        ven_id: str, resource_id: str, measurement: str, unit: str, scale: str, min_sampling_interval: Any,
        max_sampling_interval: Any,
    ) -> tuple[Any, timedelta]:  # fmt: skip
        if resource_id.endswith("/event-response"):
            return on_response, timedelta(seconds=1)
        return on_update_report, timedelta(seconds=1)

    async def on_response(data: list[tuple[datetime, float]]) -> None:
        if found.refusing_responses > 0:
            found.refusing_responses -= 1
            raise RuntimeError("the VTN is in trouble")
        found.responses.extend(data)

    server.add_handler("on_create_party_registration", register)
    server.add_handler("on_register_report", on_register_report)
    opts = _OptService("TEST_VTN", found.opts_created)
    server.app.add_routes([web.post("/OpenADR2/Simple/2.0b/EiOpt", opts.handler)])
    await server.run_async()
    yield found
    await server.stop()


def _program(url: str) -> UtilityProgram:
    fleet = FleetFactory.create()
    program = UtilityProgramFactory.create(fleet=fleet, endpoint=url, report_s=1, poll_s=1)
    return UtilityProgram.objects.select_related("product__operator", "organisation").get(pk=program.pk)


@contextlib.asynccontextmanager
async def _ven(program: UtilityProgram, runs: EventRuns) -> AsyncIterator[Ven2b]:
    ven = Ven2b(program, runs=runs, credentials=NO_CREDENTIALS)
    assert await ven.start()
    try:
        yield ven
    finally:
        await runs.stop()
        await ven.stop()


async def _wait_for(condition: Any, within: float = 30.0) -> None:
    for _ in range(int(within * 10)):
        if await sync_to_async(condition)():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"not met within {within} s: {condition.__doc__ or condition}")


async def test_it_registers_and_the_status_shows_the_vtns_ids(vtn: Vtn) -> None:
    program = await sync_to_async(_program)(vtn.url)
    async with _ven(program, EventRuns()):
        await program.arefresh_from_db()
        assert program.registration_ref == f"{VEN_ID}/{REGISTRATION_ID}"
        assert program.last_contact_at is not None
        assert program.healthy


async def test_it_opts_in_to_a_load_dispatch_and_dispatches_it_before_its_start(vtn: Vtn, no_dispatchers: None) -> None:
    # Given a VEN registered for fleet-N (a regulation product's program), events readied 2 s ahead
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=6)
    async with _ven(program, EventRuns(lead_s=2.0)):
        # When the VTN calls a 20 kW load reduction (delta -20 kW) for 8 s starting in 6 s
        event_id = vtn.event("LOAD_DISPATCH", "delta", start, 8, -20.0)
        # Then the VEN opts in
        assert await asyncio.wait_for(vtn.opts.get(), 20) == (event_id, "optIn")
        # And the event is stored with its source, as the aggregator will act on it
        event = await UtilityEvent.objects.aget(program=program, event_ref=event_id)
        assert (event.kind, event.power_w, event.start, event.end) == (
            "LOAD_DISPATCH:delta",
            20_000,
            start,
            start + timedelta(seconds=8),
        )
        assert event.source == vtn.url
        assert event.payload["event_descriptor"]["event_id"] == event_id
        assert event.opt == "optIn"

        # And 2 s before the start the portfolio gets a reserve deployment of 20 kW until the end, an offset (no
        # product: not a deployment of a reserve award), whose own run is dispatching it in this process
        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        reserve = await ReserveDeployment.objects.aget(portfolio=program.portfolio)
        assert (reserve.power_w, reserve.product_id) == (20_000, None)
        assert reserve.start == start - timedelta(seconds=2)
        assert reserve.end == start + timedelta(seconds=8)
        assert reserve.pk in {run.event.pk for run in reserve_runs()}
        await event.arefresh_from_db()
        assert event.status == EventStatus.ACTIVE
        assert event.first_dispatch_at is not None
        assert event.first_dispatch_at < start

        # And once the event is over it is completed
        def completed() -> bool:
            return UtilityEvent.objects.filter(pk=event.pk, status=EventStatus.COMPLETED).exists()

        await _wait_for(completed, within=20)


async def test_a_cancelled_event_under_way_withdraws_its_deployment(vtn: Vtn, no_dispatchers: None) -> None:
    # Given an opted-in 20 kW event of 60 s whose deployment is in force
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _ven(program, EventRuns(lead_s=2.0)):
        event_id = vtn.event("LOAD_DISPATCH", "delta", start, 60, -20.0)
        assert await asyncio.wait_for(vtn.opts.get(), 20) == (event_id, "optIn")

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        # When the VTN cancels it
        vtn.server.cancel_event(VEN_ID, event_id)
        cancelled_at = datetime.now(UTC)

        # Then the deployment ends now (not at the event's end) and its run stops
        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(
                portfolio=program.portfolio, end__lt=start + timedelta(seconds=60)
            ).exists()

        await _wait_for(withdrawn)
        reserve = await ReserveDeployment.objects.aget(portfolio=program.portfolio)
        assert cancelled_at - timedelta(seconds=1) <= reserve.end <= cancelled_at + timedelta(seconds=10)

        def run_stopped() -> bool:
            """the run cleared its setpoints and stopped (it was woken when the end moved)"""
            return reserve.pk not in {run.event.pk for run in reserve_runs()}

        await _wait_for(run_stopped, within=10.0)
        statuses = {e.modification: e.status async for e in UtilityEvent.objects.filter(event_ref=event_id)}
        assert statuses == {0: EventStatus.CANCELLED, 1: EventStatus.CANCELLED}  # the cancellation is version 1


async def test_disabling_the_program_opts_out_at_the_vtn_of_the_events_it_had_opted_in_to(
    vtn: Vtn, no_dispatchers: None, settings: Any
) -> None:
    settings.UTILITY_ALLOW_HTTP = True  # openleadr's VTN serves plain HTTP on 127.0.0.1
    # Given a VEN that opted in to a 20 kW event starting in a minute
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=1)
    ven = Ven2b(program, runs=(runs := EventRuns(lead_s=2.0)), credentials=NO_CREDENTIALS)
    assert await ven.start()
    event_id = vtn.event("LOAD_DISPATCH", "delta", start, 60, -20.0)
    assert await asyncio.wait_for(vtn.opts.get(), 20) == (event_id, "optIn")
    # When the client is stopped while the program is still enabled (a restart): nothing is opted out
    await runs.stop()
    await ven.stop()
    assert vtn.opts_created == []
    # When it runs again and an operator disables the program (the service the API and admin write through),
    # then the runner stops its client
    ven = Ven2b(program, runs=(runs := EventRuns(lead_s=2.0)), credentials=NO_CREDENTIALS)
    assert await ven.start()
    await sync_to_async(utility_program_update)(program=program, user=None, enabled=False)
    await runs.stop()
    await ven.stop()
    # Then the VTN got one oadrCreateOpt: optOut of that event, not participating, for this VEN
    assert [(o["opt_type"], o["opt_reason"], o["event_id"], o["ven_id"]) for o in vtn.opts_created] == [
        ("optOut", "notParticipating", event_id, VEN_ID)
    ]
    # And it is stored, answered
    told = await UtilityReport.objects.aget(program=program, kind=ReportKind.EVENT)
    assert (told.values["opt"], told.values["event_ref"], told.accepted) == ("optOut", event_id, True)


async def test_it_opts_out_of_a_price_event_and_keeps_it_with_the_reason(vtn: Vtn) -> None:
    program = await sync_to_async(_program)(vtn.url)
    async with _ven(program, EventRuns()):
        start = datetime.now(UTC) + timedelta(minutes=5)
        event_id = vtn.event("ELECTRICITY_PRICE", "price", start, 600, 0.35)
        assert await asyncio.wait_for(vtn.opts.get(), 20) == (event_id, "optOut")
        event = await UtilityEvent.objects.aget(program=program, event_ref=event_id)
        assert event.status == EventStatus.REFUSED
        assert event.status_reason == "no dispatchable signal (ELECTRICITY_PRICE)"
        assert not await ReserveDeployment.objects.filter(portfolio=program.portfolio).aexists()


def _metered_fleet(program: UtilityProgram) -> None:
    """Two charge points of the program's fleet: one importing 7,400 W, one exporting 2,000 W, read 30 s ago."""
    fleet_id = int(program.portfolio.removeprefix("fleet-"))
    fleet = FleetFactory._meta.model.objects.get(pk=fleet_id)
    read_at = datetime.now(UTC) - timedelta(seconds=30)
    for measurand, watts in (("Power.Active.Import", 7_400), ("Power.Active.Export", 2_000)):
        station = StationFactory.create()
        vehicle = VehicleFactory.create(fleet=fleet)
        PlugSession.objects.create(
            vehicle=vehicle, station_id=station.station_id, evse_id=1, started_at=read_at - timedelta(hours=1)
        )
        MeterValue.objects.create(
            station=station, evse_id=1, timestamp=read_at, received_at=read_at, measurand=measurand,
            value=watts, unit="W", source="MeterValues",
        )  # fmt: skip


async def test_the_vtn_receives_telemetry_that_matches_the_meters(vtn: Vtn) -> None:
    # Given the fleet's meters: +7,400 W on one charge point, -2,000 W (export) on another, still in force
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    async with _ven(program, EventRuns()):
        # When the VTN has asked for TELEMETRY_USAGE every second and a few values came in
        for _ in range(150):
            if len(vtn.reports) >= 2:
                break
            await asyncio.sleep(0.1)
    # Then each value is the net metered power, 7,400 - 2,000 = 5,400 W
    assert len(vtn.reports) >= 2
    assert {value for _, value in vtn.reports} == {5_400.0}
    # And each is stored with the meter readings it came from, acknowledged by the VTN
    stored = [r async for r in UtilityReport.objects.filter(program=program, kind=ReportKind.TELEMETRY)]
    assert stored
    assert all(r.values == {"power_w": 5_400} and r.basis["readings"] == 2 for r in stored)
    assert any(r.accepted for r in stored)


async def test_a_report_the_vtn_did_not_acknowledge_stays_pending_and_is_sent_again(vtn: Vtn) -> None:
    # Given a VTN that fails the first two oadrUpdateReports (HTTP 500: nothing kept)
    vtn.refusing = 2
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    async with _ven(program, EventRuns()):
        # When the VEN reports every second for a while
        for _ in range(200):
            if len(vtn.reports) >= 5:
                break
            await asyncio.sleep(0.1)
    rows = [r async for r in UtilityReport.objects.filter(program=program, kind=ReportKind.TELEMETRY).order_by("id")]
    received = {at.replace(microsecond=0) for at, _ in vtn.reports}
    # Then the values of the failed sends were sent again: the first ones reached the VTN, and are accepted
    assert rows[0].period_end.replace(microsecond=0) in received
    assert rows[0].accepted is True
    # And a value is accepted only if the VTN has it; the others are still pending (never refused); (a value the
    # VTN got just as the client stopped may not have been acknowledged yet: pending too)
    for row in rows:
        delivered = row.period_end.replace(microsecond=0) in received
        assert row.accepted in ((True, None) if delivered else (None,)), (row.period_end, row.accepted, row.error)
    assert sum(row.accepted is True for row in rows) >= len(received) - 1
    assert len(vtn.reports) == len({at for at, _ in vtn.reports})  # none twice


async def test_after_an_event_one_report_gives_each_intervals_metered_power_once(
    vtn: Vtn, no_dispatchers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(openadr2, "RESPONSE_SETTLE_S", 1.0)
    # Given the fleet's meters at 5,400 W net, and a VTN that fails the first after-the-event report it gets
    vtn.refusing_responses = 1
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _ven(program, EventRuns(lead_s=1.0)):
        # When a 3 s event is opted in to, runs and ends
        event_id = vtn.event("LOAD_DISPATCH", "delta", start, 3, -20.0)
        assert await asyncio.wait_for(vtn.opts.get(), 20) == (event_id, "optIn")
        for _ in range(300):
            if vtn.responses:
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(3)  # a few more report periods
    # Then the VTN has one report of the event: its interval's start and metered mean power, once (the failed
    # send retried, nothing sent twice)
    assert vtn.refusing_responses == 0
    assert vtn.responses == [(start, 5_400.0)]
    stored = await UtilityReport.objects.aget(program=program, kind=ReportKind.EVENT)
    assert (stored.values["demand_w"], stored.accepted, stored.event_id is not None) == ([5_400], True, True)


async def test_a_malformed_event_is_opted_out_with_the_reason_and_the_next_one_of_the_message_is_taken(
    no_dispatchers: None,
) -> None:
    # Given a program (its VEN not started: openleadr hands each event of a message to on_event in turn, and one
    # raising opts out of every event of the message)
    program = await sync_to_async(_program)("http://127.0.0.1:9/OpenADR2/Simple/2.0b")
    ven = Ven2b(program, runs=(runs := EventRuns(lead_s=0.0)), credentials=NO_CREDENTIALS)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(minutes=5)

    def event(ref: str, dtstart: datetime, payload: Any) -> dict[str, Any]:
        return {
            "event_descriptor": {"event_id": ref, "modification_number": 0, "event_status": "far"},
            "active_period": {"dtstart": dtstart, "duration": timedelta(minutes=15)},
            "event_signals": [{"signal_name": "LOAD_DISPATCH", "signal_type": "delta",
                               "intervals": [{"duration": timedelta(minutes=15), "signal_payload": payload}]}],
        }  # fmt: skip

    try:
        # When a message carries a NaN, an Infinity, a string, a start past year 9999, then a good event
        answers = [
            await ven.on_event(event("bad-nan", start, float("nan"))),
            await ven.on_event(event("bad-inf", start, float("inf"))),
            await ven.on_event(event("bad-text", start, "abc")),
            await ven.on_event(event("bad-year", datetime(9999, 12, 31, 23, 50, tzinfo=UTC), -5.0)),
            await ven.on_event(event("good", start, -5.0)),
        ]
    finally:
        await runs.stop()
    # Then the bad ones are opted out and stored refused with the reason, the good one opted in
    assert answers == ["optOut"] * 4 + ["optIn"]
    async for row in UtilityEvent.objects.filter(program=program, event_ref__startswith="bad-"):
        assert row.status == EventStatus.REFUSED, row.event_ref
        assert row.status_reason.startswith("malformed event: "), row.status_reason
    good = await UtilityEvent.objects.aget(program=program, event_ref="good")
    assert good.status == EventStatus.SCHEDULED
    assert await UtilityEvent.objects.filter(program=program).acount() == 5


async def test_a_database_error_while_a_report_is_marked_neither_stops_the_sender_nor_sends_it_twice(
    vtn: Vtn, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the database failing the first time an acknowledged report is marked delivered (a blip)
    real, failures = Ven2b.reports_delivered, [1]

    def blip(self: Ven2b, *args: Any, **kwargs: Any) -> Any:
        if failures:
            failures.pop()
            raise OperationalError("the database is away")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Ven2b, "reports_delivered", blip)
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    async with _ven(program, EventRuns()):
        # When the VEN reports every second for a while
        for _ in range(300):
            if len(vtn.reports) >= 6:
                break
            await asyncio.sleep(0.1)
    # Then the sender carried on after the blip, nothing reached the VTN twice, and the first report is accepted
    assert not failures
    assert len(vtn.reports) >= 6
    assert len(vtn.reports) == len({at for at, _ in vtn.reports})
    first = await UtilityReport.objects.filter(program=program, kind=ReportKind.TELEMETRY).order_by("id").afirst()
    assert first is not None
    assert first.accepted is True
