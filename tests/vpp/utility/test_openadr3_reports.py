"""What the OpenADR 3 VEN reports to the VTN (``oadr3_vtn``, real socket): each report's ``BASELINE`` (the
portfolio's metered power when dispatch began) next to its metered ``DEMAND``, the available up/down capacity of
the plugged-in cars, and the after-the-event report sent once, retried until the VTN has it, never twice."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from chargers.models import MeterValue, Station
from tests.vpp.utility.oadr3_vtn import Vtn3
from tests.vpp.utility.test_csip import _two_cars_plugged_in
from tests.vpp.utility.test_openadr2 import _metered_fleet, _wait_for
from tests.vpp.utility.test_openadr3 import _program, _ven, _z
from vpp.utility import openadr3
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.openadr3 import Ven3
from vpp.utility.selectors import Credentials
from vpp.utility.services import utility_event_record, utility_event_status

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def vtn(oadr3_vtn: Vtn3) -> Vtn3:
    return oadr3_vtn


@pytest.fixture(autouse=True)
def _settle_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openadr3, "RESPONSE_SETTLE_S", 1.0)


def _read(station_id: str, at: datetime, watts: int, measurand: str = "Power.Active.Import") -> None:
    station = Station.objects.get(station_id=station_id)
    MeterValue.objects.create(station=station, evse_id=1, timestamp=at, received_at=datetime.now(UTC),
                              measurand=measurand, value=watts, unit="W", source="MeterValues")  # fmt: skip


def _importing_station() -> str:
    return str(MeterValue.objects.get(measurand="Power.Active.Import").station.station_id)


def _payloads(interval: dict[str, Any]) -> dict[str, list[float]]:
    return {p["type"]: p["values"] for p in interval["payloads"]}


def _accepted_response(program: UtilityProgram) -> bool:
    return UtilityReport.objects.filter(program=program, kind=ReportKind.EVENT, accepted=True).exists()


async def test_reports_carry_the_baseline_measured_before_dispatch_next_to_the_metered_demand(vtn: Vtn3) -> None:
    # Given the fleet's meters: +7,400 W on one charge point, -2,000 W on another, read 30 s ago: 5.4 kW net
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    # And from the event's start the first reads 400 W (the fleet responded): -1.6 kW net over the event
    await sync_to_async(_read)(await sync_to_async(_importing_station)(), start, 400)
    async with _ven(program, EventRuns(lead_s=1.0)):
        # When an import limit of 4 s runs (dispatched 1 s ahead)
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT4S"})  # fmt: skip
        await _wait_for(lambda: _accepted_response(program), within=30)
    reports = [r for r in vtn.reports if r["eventID"] == event["id"]]
    # Then the after-the-event report the VTN stored has the interval's BASELINE, 5.4 kW (the meters in force when
    # dispatch began, 1 s before the start), next to its metered DEMAND, -1.6 kW
    (response,) = [r for r in reports if r["reportName"].startswith("vpp-event-")]
    assert [d["payloadType"] for d in response["payloadDescriptors"]] == ["DEMAND", "BASELINE"]
    (interval,) = response["resources"][0]["intervals"]
    assert _payloads(interval) == {"DEMAND": [-1.6], "BASELINE": [5.4]}
    # And every telemetry report while it ran carried the same baseline
    telemetry = [r for r in reports if r["reportName"].endswith("-telemetry")]
    assert telemetry
    assert {_payloads(r["resources"][0]["intervals"][0])["BASELINE"][0] for r in telemetry} == {5.4}
    # And the stored report has it in W
    stored = await UtilityReport.objects.aget(program=program, kind=ReportKind.EVENT)
    assert stored.values == {"demand_w": [-1_600], "baseline_w": [5_400]}


async def test_telemetry_reports_the_up_and_down_capacity_of_the_plugged_in_cars(vtn: Vtn3) -> None:
    # Given two cars plugged in on connected stations, each 11 kW each way at 90 % (far from empty or full), and
    # the first station metering +3,000 W (charging)
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_two_cars_plugged_in)(program)
    now = datetime.now(UTC)
    await sync_to_async(_read)(f"csip-{program.pk}-1", now - timedelta(seconds=5), 3_000)
    start = now.replace(microsecond=0) + timedelta(seconds=2)
    async with _ven(program, EventRuns(lead_s=1.0)):
        # When an event runs (an import limit of 100 kW: above the fleet, nothing to deploy)
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [100.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT4S"})  # fmt: skip

        def reported() -> bool:
            return any(r["reportName"].endswith("-telemetry") for r in vtn.reports)

        await _wait_for(reported)
    # Then each telemetry report gives what the cars can do from 3 kW of charging: up (less charging, then
    # discharge) 3 + 11 + 11 = 25 kW, down (more charging) 11 + 11 - 3 = 19 kW
    telemetry = [r for r in vtn.reports if r["eventID"] == event["id"] and r["reportName"].endswith("-telemetry")]
    assert telemetry
    for report in telemetry:
        payloads = _payloads(report["resources"][0]["intervals"][0])
        assert payloads["DEMAND"] == [3.0]
        assert (payloads["UP_REGULATION_AVAILABLE"], payloads["DOWN_REGULATION_AVAILABLE"]) == ([25.0], [19.0])


async def test_the_after_the_event_report_is_retried_and_never_sent_twice(vtn: Vtn3) -> None:
    # Given a VTN that refuses the first after-the-event report, then stores the second but its answer is lost
    vtn.event_report_faults = ["refuse", "lose"]
    program = await sync_to_async(_program)(vtn.url)
    await sync_to_async(_metered_fleet)(program)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
    async with _ven(program, EventRuns(lead_s=1.0)):
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT2S"})  # fmt: skip
        # When the event is over and the VEN has had a few more report periods
        await _wait_for(lambda: _accepted_response(program), within=30)
        posts = list(vtn.report_posts)
        await asyncio.sleep(3)
    # Then the report was sent twice (the refused one retried), the VTN holds it once, and no more was sent
    event_posts = [name for name in vtn.report_posts if name.startswith("vpp-event-")]
    assert len(event_posts) == 2
    assert len({*event_posts}) == 1  # one name for the event's report, whatever the attempt
    held = [r for r in vtn.reports if r["eventID"] == event["id"] and r["reportName"].startswith("vpp-event-")]
    assert len(held) == 1
    assert vtn.report_posts == posts
    # And the stored attempts say so: the refused one not accepted, the one the VTN has accepted
    rows = [(r.accepted, bool(r.error)) async for r in UtilityReport.objects.filter(kind=ReportKind.EVENT)
            .order_by("id")]  # fmt: skip
    assert rows == [(False, True), (True, False)]


async def test_an_after_the_event_report_the_vtn_keeps_refusing_never_holds_back_an_active_events_telemetry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a completed event whose report fails every time, and an event under way (the VEN not started: its
    # report step is called by hand)
    program = await sync_to_async(_program)("https://vtn.invalid/openadr3")
    now = datetime.now(UTC).replace(microsecond=0)

    def events() -> None:
        done, _ = utility_event_record(program=program, event_ref="done", modification=0, kind="LOAD_DISPATCH",
                                       start=now - timedelta(hours=2), end=now - timedelta(hours=1), power_w=1_000,
                                       payload={})  # fmt: skip
        active, _ = utility_event_record(program=program, event_ref="now", modification=0, kind="LOAD_DISPATCH",
                                         start=now - timedelta(minutes=1), end=now + timedelta(hours=1),
                                         power_w=1_000, payload={})  # fmt: skip
        utility_event_status(event_id=done.pk, status=EventStatus.COMPLETED)
        utility_event_status(event_id=active.pk, status=EventStatus.ACTIVE)

    await sync_to_async(events)()
    ven = Ven3(program, runs=EventRuns(), credentials=Credentials(None, None, None, "secret"))
    sent: list[str] = []

    async def refused(event: UtilityEvent) -> None:
        raise httpx.HTTPStatusError("400", request=httpx.Request("POST", "https://vtn.invalid"), response=None)  # type: ignore[arg-type]

    async def telemetry(event: UtilityEvent) -> None:
        sent.append(event.event_ref)

    monkeypatch.setattr(ven, "_response", refused)
    monkeypatch.setattr(ven, "_telemetry", telemetry)
    # When the VEN reports
    await ven.report()
    # Then the active event's telemetry went out all the same
    assert sent == ["now"]
