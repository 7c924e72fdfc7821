"""A utility event's runs (``vpp.utility.dispatch.EventRuns``) on the failure paths: a withdrawal that arrives while
the interval's records are being made still ends them; an import limit below 0 is held at 0; a new version of an
event under way keeps its baseline."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from markets.regulation.models import ReserveDeployment
from tests.vpp.utility.factories import UtilityProgramFactory
from tests.vpp.utility.test_openadr2 import _wait_for
from vpp.dispatch import reserve_intake
from vpp.dispatch.reserve import ReserveRun, reserve_runs
from vpp.models import PowerCap
from vpp.utility import dispatch as dispatch_module
from vpp.utility.dispatch import EventRuns, reserve_ref, utility_event_accept
from vpp.utility.models import EventStatus, Protocol, UtilityEvent, UtilityProgram
from vpp.utility.services import utility_event_record, utility_event_status
from vpp.utility.signals import EventPlan, Interval, openadr3_plan

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


def _program() -> UtilityProgram:
    program = UtilityProgramFactory.create(protocol=Protocol.OPENADR_3)
    return UtilityProgram.objects.select_related("product__operator", "organisation").get(pk=program.pk)


def _scheduled(program: UtilityProgram, plan: EventPlan) -> UtilityEvent:
    event, _ = utility_event_record(
        program=program, event_ref=plan.event_ref, modification=plan.modification, kind=plan.kind, start=plan.start,
        end=plan.end, power_w=plan.power_w, payload={},
    )  # fmt: skip
    utility_event_status(event_id=event.pk, status=EventStatus.SCHEDULED)
    event.refresh_from_db()
    return event


@pytest.mark.parametrize("slow", ["_caps_record", "_reserve_record", "_active"])
async def test_a_withdrawal_while_the_intervals_records_are_made_still_ends_them(
    no_dispatchers: None, monkeypatch: pytest.MonkeyPatch, slow: str
) -> None:
    # Given an event whose interval (5 kW of reduction under a 9 kW export cap) goes to dispatch now, one step of
    # making its records slowed down (a busy database): the withdrawal lands inside it
    program = await sync_to_async(_program)()
    now = datetime.now(UTC).replace(microsecond=0)
    end = now + timedelta(seconds=60)
    plan = EventPlan("ev-race", 1, "LOAD_DISPATCH", [Interval(now + timedelta(seconds=1), end, 5_000, None, 9_000)])
    event = await sync_to_async(_scheduled)(program, plan)
    real, entered = getattr(dispatch_module, slow), asyncio.Event()
    loop = asyncio.get_running_loop()

    def slowed(*args: Any) -> Any:
        result = real(*args)
        loop.call_soon_threadsafe(entered.set)
        time.sleep(1.0)
        return result

    monkeypatch.setattr(dispatch_module, slow, slowed)
    runs = EventRuns(lead_s=2.0)
    runs.schedule(program=program, event=event, plan=plan)
    await asyncio.wait_for(entered.wait(), 20)
    # When the utility withdraws the event right then
    assert runs.cancel(program_id=program.pk, event_ref="ev-race")

    # Then what was made (the cap, and the deployment once made) ends now: nothing is left discharging unowned
    def ended() -> bool:
        caps = PowerCap.objects.filter(portfolio=program.portfolio)
        deployments = ReserveDeployment.objects.filter(portfolio=program.portfolio)
        return (
            caps.exists()
            and not caps.filter(end=end).exists()
            and (slow == "_caps_record" or deployments.exists())
            and not deployments.filter(end=end).exists()
        )

    await _wait_for(ended, 10)
    await asyncio.sleep(1.5)  # a record still in flight when the task was cancelled would have landed by now
    assert await sync_to_async(ended)()


def test_an_import_limit_held_at_0_is_scheduled_with_the_note_as_its_reason() -> None:
    # Given a program and an OpenADR 3 import limit of -5 kW starting in an hour
    program = _program()
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
    event = {
        "id": "ev-neg", "modificationDateTime": "2026-07-01T17:00:00Z",
        "intervalPeriod": {"start": start.isoformat().replace("+00:00", "Z"), "duration": "PT15M"},
        "intervals": [{"id": 0, "payloads": [{"type": "IMPORT_CAPACITY_LIMIT", "values": [-5.0]}]}],
    }  # fmt: skip
    # When it is accepted
    accepted = utility_event_accept(program=program, plan=openadr3_plan(event), payload=event)
    # Then it is answered optIn and stored scheduled as a 0 W limit, its reason saying why
    row = accepted.event
    assert (accepted.opt, row.status, row.limit_w) == ("optIn", EventStatus.SCHEDULED, 0)
    assert row.status_reason == (
        "IMPORT_CAPACITY_LIMIT -5000 W below 0: held at 0 W (no import); an import limit never commands export"
    )


async def test_a_new_version_of_an_event_under_way_keeps_the_events_first_baseline(
    no_dispatchers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fleet metered at 10 kW until the event's response starts, 5 kW after (its own response to 5 kW asked)
    responds_at = _metered_10_then_5_kw(monkeypatch)
    program = await sync_to_async(_program)()
    now = datetime.now(UTC).replace(microsecond=0)
    span = (now + timedelta(seconds=3), now + timedelta(seconds=60))  # deployed from 2 s before its start
    first = EventPlan("ev-base", 1, "LOAD_DISPATCH", [Interval(*span, 5_000)])
    runs = EventRuns(lead_s=2.0)
    runs.schedule(program=program, event=await sync_to_async(_scheduled)(program, first), plan=first)
    run = await _run_of(program, reserve_ref(program, "ev-base", 1, 0))
    assert (run.baseline_w, run.results[0].setpoint_w) == (10_000, 5_000)
    responds_at[0] = run.event.start.timestamp() + 0.5
    await asyncio.sleep(1.5)  # the fleet responds
    # When the utility sends a new version of it, under way, asking for 6 kW
    second = EventPlan("ev-base", 2, "LOAD_DISPATCH", [Interval(*span, 6_000)])
    runs.schedule(program=program, event=await sync_to_async(_scheduled)(program, second), plan=second)
    run = await _run_of(program, reserve_ref(program, "ev-base", 2, 0))
    await runs.stop()
    # Then it is measured against the event's first baseline (10 kW), not the fleet under the response (5 kW): the
    # fleet is sent 10 - 6 = 4 kW, not 5 - 6 = -1 kW
    assert (run.baseline_w, run.results[0].setpoint_w) == (10_000, 4_000)
    assert run.event.baseline_at is not None
    assert run.event.baseline_at < run.event.start


async def test_a_later_interval_is_measured_against_the_events_first_baseline(
    no_dispatchers: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a fleet metered at 10 kW until the event's response starts, 5 kW after
    responds_at = _metered_10_then_5_kw(monkeypatch)
    program = await sync_to_async(_program)()
    now = datetime.now(UTC).replace(microsecond=0)
    # When an event asks for 5 kW for 3 s, then 2 kW (deployed 2 s ahead of each interval)
    second = now + timedelta(seconds=6)
    plan = EventPlan("ev-steps", 1, "LOAD_DISPATCH", [
        Interval(now + timedelta(seconds=3), second, 5_000), Interval(second, now + timedelta(seconds=60), 2_000),
    ])  # fmt: skip
    runs = EventRuns(lead_s=2.0)
    runs.schedule(program=program, event=await sync_to_async(_scheduled)(program, plan), plan=plan)
    run = await _run_of(program, reserve_ref(program, "ev-steps", 1, 0))
    responds_at[0] = run.event.start.timestamp() + 0.5
    run = await _run_of(program, reserve_ref(program, "ev-steps", 1, 1))
    await runs.stop()
    # Then the second interval's setpoint is 10 - 2 = 8 kW, not 5 - 2 = 3 kW (its response counted twice)
    assert (run.baseline_w, run.results[0].setpoint_w) == (10_000, 8_000)


def _metered_10_then_5_kw(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The fleet metered at 10 kW before ``responds_at[0]`` (an instant, s; set it once the response starts), 5 kW
    from then on; returns ``responds_at``."""
    responds_at = [float("inf")]

    def metered(_stations: list[str], at_s: float) -> int:
        return 10_000 if at_s < responds_at[0] else 5_000

    monkeypatch.setattr(reserve_intake, "fleet_power_at", metered)
    monkeypatch.setattr(dispatch_module, "fleet_power_at", metered)
    return responds_at


async def _run_of(program: UtilityProgram, ref: str) -> ReserveRun:
    def deployed() -> bool:
        return ReserveDeployment.objects.filter(portfolio=program.portfolio, event_id=ref).exists()

    await _wait_for(deployed, 10)
    pk = await ReserveDeployment.objects.filter(event_id=ref).values_list("pk", flat=True).aget()
    for _ in range(100):
        run = next((r for r in reserve_runs() if r.event.pk == pk), None)
        if run is not None and run.results:
            return run
        await asyncio.sleep(0.1)
    raise AssertionError(f"no run of {ref} sent anything")


async def test_an_interval_starting_after_its_program_was_disabled_puts_nothing_in_force(no_dispatchers: None) -> None:
    # Given a scheduled event whose interval (5 kW under a 9 kW export cap) goes to dispatch in 1 s, its run started
    program = await sync_to_async(_program)()
    now = datetime.now(UTC).replace(microsecond=0)
    plan = EventPlan("ev-late", 1, "LOAD_DISPATCH", [Interval(now + timedelta(seconds=3), now + timedelta(seconds=60),
                                                              5_000, None, 9_000)])  # fmt: skip
    event = await sync_to_async(_scheduled)(program, plan)
    runs = EventRuns(lead_s=2.0)
    runs.schedule(program=program, event=event, plan=plan)
    # When the program is disabled before the interval's dispatch time, and the runner has not withdrawn the run yet
    await sync_to_async(UtilityProgram.objects.filter(pk=program.pk).update)(enabled=False)
    await asyncio.sleep(2.5)
    # Then no cap and no deployment was put in force for it
    try:
        assert not await PowerCap.objects.filter(portfolio=program.portfolio).aexists()
        assert not await ReserveDeployment.objects.filter(portfolio=program.portfolio).aexists()
    finally:
        runs.cancel(program_id=program.pk, event_ref="ev-late")
