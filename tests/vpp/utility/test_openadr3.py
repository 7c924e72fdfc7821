"""The OpenADR 3 VEN against a VTN written from the OpenADR 3.0.1 OpenAPI document (``oadr3_vtn``), on a real
socket: client-credentials token, VEN and resources registered, events polled and dispatched as reserve
deployments (or stored and refused with the reason), a deleted event withdrawn, reports of metered demand and
available capacity, and the after-the-event report."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from markets.regulation.models import ReserveDeployment
from tests.vpp.utility.conftest import SECRET
from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.oadr3_vtn import Vtn3
from tests.vpp.utility.test_openadr2 import _metered_fleet, _wait_for
from vpp.dispatch.reserve import reserve_runs, reserve_runs_stop
from vpp.models import PowerCap
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, Protocol, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.openadr3 import Ven3
from vpp.utility.selectors import Credentials

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def _z(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


@pytest.fixture
def vtn(oadr3_vtn: Vtn3) -> Vtn3:
    return oadr3_vtn


def _program(url: str, **fields: Any) -> UtilityProgram:
    program = UtilityProgramFactory.create(
        protocol=Protocol.OPENADR_3, endpoint=url, client_name="acme-ven", program_ref="acme-cbp", poll_s=1,
        report_s=1, **fields,
    )  # fmt: skip
    return UtilityProgram.objects.select_related("product__operator", "organisation").get(pk=program.pk)


@contextlib.asynccontextmanager
async def _ven(program: UtilityProgram, runs: EventRuns, secret: str = SECRET) -> AsyncIterator[Ven3]:
    ven = Ven3(program, runs=runs, credentials=Credentials(None, None, None, secret))
    assert await ven.start()
    try:
        yield ven
    finally:
        await runs.stop()
        await ven.stop()


async def test_it_takes_a_token_and_registers_the_ven_and_the_portfolios_stations(vtn: Vtn3) -> None:
    # Given a fleet with two metered charge points (their stations are the portfolio's resources)
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    async with _ven(program, EventRuns()):
        # Then the VEN asked for a token with its client credentials
        assert vtn.token_requests[0] == {
            "grant_type": "client_credentials", "client_id": "acme-ven", "client_secret": SECRET,
        }  # fmt: skip
        # And it is registered under its name, with one resource per station, and the status shows the VEN's id
        assert [v["venName"] for v in vtn.vens] == ["acme-ven"]
        stations = await sync_to_async(lambda: sorted(s.station_id for s in _stations()))()
        assert sorted(r["resourceName"] for r in vtn.resources) == stations
        assert len(stations) == 2
        await program.arefresh_from_db()
        assert program.registration_ref == vtn.vens[0]["id"]
        assert program.healthy


def _stations() -> list[Any]:
    from chargers.models import Station

    return list(Station.objects.all())


async def test_it_refuses_to_start_with_a_wrong_secret_and_the_status_says_why(vtn: Vtn3) -> None:
    program = await sync_to_async(_program)(vtn.url)
    ven = Ven3(program, runs=EventRuns(), credentials=Credentials(None, None, None, "wrong"))
    assert not await ven.start()
    await program.arefresh_from_db()
    assert program.last_error == "OpenADR 3: token refused (400): invalid_client"
    assert vtn.vens == []


async def test_a_setpoint_becomes_a_reserve_deployment_down_to_it_before_its_start(vtn: Vtn3) -> None:
    # Given a VEN of a fleet with no connected station (metered power counts as 0 W)
    program = await sync_to_async(_program)(vtn.url)
    program_id = vtn.programs[0]["id"]
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
    async with _ven(program, EventRuns(lead_s=2.0)):
        # When the VTN publishes a setpoint of -5 kW (export 5 kW) for 6 s starting in 4 s
        event = vtn.add_event(program_id, [
            {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT6S"})  # fmt: skip

        # Then 2 s ahead the portfolio gets a 5,000 W reserve deployment (0 W now - (-5,000 W)) until the end
        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        reserve = await ReserveDeployment.objects.aget(portfolio=program.portfolio)
        assert (reserve.power_w, reserve.start, reserve.end) == (
            5_000,
            start - timedelta(seconds=2),
            start + timedelta(seconds=6),
        )
        stored = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
        assert (stored.kind, stored.limit_w, stored.protocol) == ("DISPATCH_SETPOINT", -5_000, Protocol.OPENADR_3)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("PRICE", "prices are not dispatched here (the fleet's schedule follows its own markets)"),
        ("SIMPLE", "the program sets no W per SIMPLE level"),
    ],
)
async def test_it_stores_and_refuses_what_it_does_not_dispatch_with_the_reason(
    vtn: Vtn3, payload: str, reason: str
) -> None:
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC) + timedelta(minutes=5)
    async with _ven(program, EventRuns()):
        event = vtn.add_event(vtn.programs[0]["id"], [{"id": 0, "payloads": [{"type": payload, "values": [0.3]}]}],
                              intervalPeriod={"start": _z(start), "duration": "PT15M"})  # fmt: skip

        def stored() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref=event["id"]).exists()

        await _wait_for(stored)
    row = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
    assert (row.status, row.status_reason) == (EventStatus.REFUSED, reason)
    assert not await ReserveDeployment.objects.filter(portfolio=program.portfolio).aexists()


async def test_an_export_limit_is_stored_as_a_cap_on_the_portfolio_and_a_deletion_ends_it(vtn: Vtn3) -> None:
    # Given an export limit of 2.5 kW (the event's units) for 60 s starting in 3 s
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _ven(program, EventRuns(lead_s=2.0)):
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "EXPORT_CAPACITY_LIMIT", "values": [2.5]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

        def capped() -> bool:
            return PowerCap.objects.filter(portfolio=program.portfolio).exists()

        # Then 2 s ahead the portfolio's net export is capped at 2,500 W until the event's end, nothing deployed
        await _wait_for(capped)
        cap = await PowerCap.objects.aget(portfolio=program.portfolio)
        assert (cap.export_w, cap.start, cap.end) == (
            2_500,
            start - timedelta(seconds=2),
            start + timedelta(seconds=60),
        )
        assert not await ReserveDeployment.objects.filter(portfolio=program.portfolio).aexists()
        # When the VTN deletes the event under way: the cap ends
        vtn.delete_event(event["id"])

        def ended() -> bool:
            return PowerCap.objects.filter(portfolio=program.portfolio, end__lt=start + timedelta(seconds=60)).exists()

        await _wait_for(ended)
    row = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
    assert (row.kind, row.limit_w, row.opt) == ("EXPORT_CAPACITY_LIMIT", 2_500, "optIn")


async def test_an_event_the_vtn_deletes_before_its_end_is_withdrawn(vtn: Vtn3) -> None:
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _ven(program, EventRuns(lead_s=2.0)):
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

        await _wait_for(deployed)
        vtn.delete_event(event["id"])

        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(
                portfolio=program.portfolio, end__lt=start + timedelta(seconds=60)
            ).exists()

        await _wait_for(withdrawn)
    row = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
    assert (row.status, row.status_reason) == (EventStatus.CANCELLED, "deleted by the VTN")


async def test_an_older_version_of_an_event_never_replaces_the_newer_one(vtn: Vtn3) -> None:
    # Given an event of 5 SIMPLE levels (5 kW) under way, deployed 2 s ahead of its start
    program = await sync_to_async(_program)(vtn.url, level_step_w=1_000)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    end = start + timedelta(seconds=60)
    async with _ven(program, EventRuns(lead_s=2.0)):
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "SIMPLE", "values": [5]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, power_w=5_000, end=end).exists()

        await _wait_for(deployed)
        # When the VTN then lists an older version of it (modified an hour before), asking for 2 levels: a replay
        event["modificationDateTime"] = _z(datetime.now(UTC) - timedelta(hours=1))
        event["intervals"] = [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [2]}]}]

        def stored() -> bool:
            return UtilityEvent.objects.filter(program=program, event_ref=event["id"]).count() == 2

        await _wait_for(stored, 10)
        await asyncio.sleep(1.5)  # another poll or two
    # Then the newer version's 5 kW deployment runs on to its end, nothing else is deployed, and the older version
    # is stored refused with the reason
    assert await sync_to_async(deployed)()
    assert await ReserveDeployment.objects.filter(portfolio=program.portfolio).acount() == 1
    rows = [e async for e in UtilityEvent.objects.filter(program=program).order_by("modification")]
    assert [(e.status, e.power_w) for e in rows] == [(EventStatus.REFUSED, 2_000), (EventStatus.ACTIVE, 5_000)]
    assert rows[0].status_reason.startswith("older than the version stored")


async def test_reports_carry_the_metered_demand_during_and_after_the_event(vtn: Vtn3) -> None:
    # Given the fleet's meters: +7,400 W on one charge point, -2,000 W on another, in force (read 30 s ago)
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    async with _ven(program, EventRuns(lead_s=1.0)):
        # When an event of 4 s runs (a limit the fleet cannot reach by itself: no connected station)
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT4S"})  # fmt: skip

        def response_reported() -> bool:
            return UtilityReport.objects.filter(program=program, kind=ReportKind.EVENT, accepted=True).exists()

        await _wait_for(response_reported, within=30)
    reports = [r for r in vtn.reports if r["eventID"] == event["id"]]
    telemetry = [r for r in reports if r["reportName"].endswith("-telemetry")]
    response = [r for r in reports if r["reportName"].startswith("vpp-event-")]
    # Then while it ran each telemetry report's DEMAND (and BASELINE: nothing moved) is the net metered power,
    # 7,400 - 2,000 W = 5.4 kW, with no capacity available (no plugged-in car on a connected station)
    assert telemetry
    for report in telemetry:
        payloads = {p["type"]: p["values"] for p in report["resources"][0]["intervals"][0]["payloads"]}
        assert payloads == {
            "DEMAND": [5.4], "BASELINE": [5.4], "UP_REGULATION_AVAILABLE": [0.0], "DOWN_REGULATION_AVAILABLE": [0.0],
        }  # fmt: skip
        assert report["clientName"] == "acme-ven"
    # And afterwards one report gives the event's interval with its metered mean demand and baseline, 5.4 kW
    assert len(response) == 1
    (interval,) = response[0]["resources"][0]["intervals"]
    assert interval["intervalPeriod"] == {"start": start.isoformat(), "duration": "PT4S"}
    assert interval["payloads"] == [{"type": "DEMAND", "values": [5.4]}, {"type": "BASELINE", "values": [5.4]}]


async def test_a_vtn_in_trouble_is_shown_and_the_ven_recovers_without_a_restart(vtn: Vtn3) -> None:
    # Given a running VEN
    program = await sync_to_async(_program)(vtn.url)
    async with _ven(program, EventRuns(lead_s=2.0)):
        # When the VTN answers 500 to every event search
        vtn.events_failing = 500

        def failing() -> bool:
            return UtilityProgram.objects.filter(pk=program.pk, errors_in_a_row__gte=2).exists()

        await _wait_for(failing)
        await program.arefresh_from_db()
        assert program.last_error == "OpenADR 3: GET /events: 500 the VTN is in trouble"
        assert not program.healthy
        # Then, once it answers again (and has forgotten every token), the VEN takes a new token and an event
        # published meanwhile is dispatched
        vtn.revoke_tokens()
        vtn.events_failing = 0
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=4)
        vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-2.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT6S"})  # fmt: skip

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, power_w=2_000).exists()

        await _wait_for(deployed)
        await program.arefresh_from_db()
        assert program.errors_in_a_row == 0
        assert len(vtn.token_requests) == 2


async def test_a_restarted_ven_resumes_the_dispatch_of_an_event_under_way(vtn: Vtn3) -> None:
    # Given an event under way, its deployment running in this process
    program = await sync_to_async(_program)(vtn.url)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    vtn.add_event(vtn.programs[0]["id"], [
        {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]},
    ], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

    def deployed() -> bool:
        return ReserveDeployment.objects.filter(portfolio=program.portfolio).exists()

    async with _ven(program, EventRuns(lead_s=2.0)):
        await _wait_for(deployed)
    # When the process stops (its reserve runs die with it) and its clients start again
    await reserve_runs_stop()
    reserve = await ReserveDeployment.objects.aget(portfolio=program.portfolio)
    assert reserve.pk not in {run.event.pk for run in reserve_runs()}
    async with _ven(program, EventRuns(lead_s=2.0)):

        def resumed() -> bool:
            return reserve.pk in {run.event.pk for run in reserve_runs()}

        # Then the stored deployment runs again (the same one: nothing stored twice, nothing asked anew)
        await _wait_for(resumed)
        assert [(r.pk, r.power_w) async for r in ReserveDeployment.objects.filter(portfolio=program.portfolio)] == [
            (reserve.pk, 5_000)
        ]
        status = await UtilityEvent.objects.filter(program=program).values_list("status", flat=True).aget()
        assert status == EventStatus.ACTIVE


async def test_a_malformed_event_is_refused_and_the_others_and_a_deletion_still_go_through(vtn: Vtn3) -> None:
    # Given an event under way, then the VTN lists poison events among a good one and deletes the first
    program = await sync_to_async(_program)(vtn.url, level_step_w=1_000)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    period = {"start": _z(start), "duration": "PT60S"}
    pid = vtn.programs[0]["id"]

    def limit(value: Any) -> list[dict[str, Any]]:
        return [{"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [value]}]}]

    async with _ven(program, EventRuns(lead_s=2.0)):
        first = vtn.add_event(pid, limit(-5.0), intervalPeriod=period)

        def deployed(ref: str) -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, event_id__contains=f":{ref}:").exists()

        await _wait_for(lambda: deployed(first["id"]))
        poison = [
            vtn.add_event(pid, limit("abc"), intervalPeriod=period),
            vtn.add_event(pid, limit(float("nan")), intervalPeriod=period),
            vtn.add_event(pid, limit(float("inf")), intervalPeriod=period),
            vtn.add_event(pid, [{"id": 0, "payloads": [{"type": "SIMPLE", "values": []}]}], intervalPeriod=period),
            vtn.add_event(pid, limit(-5.0), intervalPeriod={"start": "9999-12-31T23:00:00Z", "duration": "PT2H"}),
            vtn.add_event(pid, limit(-5.0), intervalPeriod={"start": _z(start), "duration": "P99999999999D"}),
            vtn.add_event(pid, limit(-5.0), intervalPeriod=period),
        ]
        poison[-1]["modificationDateTime"] = "not a dateTime"
        beyond = {  # out of bounds: refused with the reason, the rest of the poll applies
            vtn.add_event(pid, limit(2e6), intervalPeriod=period)["id"]: "interval 0 asks for more than 1000000000 W",
            vtn.add_event(pid, limit(-5.0), intervalPeriod={"start": _z(start), "duration": "PT5H"})["id"]: (
                "interval 0 lasts 5:00:00, more than 4:00:00"
            ),
        }
        good = vtn.add_event(pid, limit(-3.0), intervalPeriod=period)
        vtn.delete_event(first["id"])

        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(
                event_id__contains=f":{first['id']}:", end__lt=start + timedelta(seconds=60)
            ).exists()

        # Then the good one is dispatched and the deletion withdraws the first
        await _wait_for(lambda: deployed(good["id"]))
        await _wait_for(withdrawn)
    # And each poison event is stored refused with the reason
    for event in poison:
        row = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
        assert row.status == EventStatus.REFUSED, (event["id"], row.status_reason)
        assert row.status_reason.startswith("malformed event"), row.status_reason
    for ref, reason in beyond.items():
        row = await UtilityEvent.objects.aget(program=program, event_ref=ref)
        assert (row.status, row.status_reason, row.opt) == (EventStatus.REFUSED, reason, "optOut")
