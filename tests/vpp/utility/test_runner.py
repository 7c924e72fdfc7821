"""The runner (``vpp.utility.runner.programs_run``) takes program changes without a restart: a changed program's
client is restarted with the new configuration, a disabled one stopped and its events' dispatch withdrawn, a
re-enabled one started again. Against the OpenADR 3 test VTN (``oadr3_vtn``) on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.db import OperationalError

from markets.regulation.models import ReserveDeployment
from tests.vpp.utility.conftest import SECRET
from tests.vpp.utility.oadr3_vtn import Vtn3
from tests.vpp.utility.test_openadr2 import _wait_for
from tests.vpp.utility.test_openadr3 import _program, _ven, _z
from vpp.dispatch import reserve as reserve_module
from vpp.dispatch.reserve import ReserveRun, reserve_runs
from vpp.models import PowerCap
from vpp.utility import runner as runner_module
from vpp.utility.dispatch import EventRuns
from vpp.utility.models import EventStatus, UtilityEvent, UtilityProgram
from vpp.utility.runner import programs_run
from vpp.utility.services import utility_program_update

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]


@pytest.fixture
def runner_settings(settings: Any) -> None:
    settings.UTILITY_RELOAD_S = 0.5
    settings.UTILITY_RETRY_S = 1.0
    settings.UTILITY_ALLOW_HTTP = True  # the test VTN serves plain HTTP on 127.0.0.1


@contextlib.asynccontextmanager
async def _running() -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.get_running_loop().create_task(programs_run())
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _update(program: UtilityProgram, **fields: Any) -> None:
    utility_program_update(program=UtilityProgram.objects.get(pk=program.pk), user=None, **fields)


async def test_a_changed_program_restarts_and_a_disabled_one_stops_and_withdraws_its_event(
    oadr3_vtn: Vtn3, runner_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    vtn = oadr3_vtn
    # Given a running program with a setpoint under way (60 s, deployed 2 s ahead of its start)
    vtn.clients["acme-ven-2"] = SECRET
    program = await sync_to_async(_program)(vtn.url)
    secret_env = f"UTILITY_ORG{program.organisation_id}_SECRET"
    monkeypatch.setenv(secret_env, SECRET)
    await sync_to_async(_update)(program, secret_env=secret_env)
    async with _running():
        await _wait_for(lambda: vtn.vens, 20)
        start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=2)
        end = start + timedelta(seconds=60)
        event = vtn.add_event(vtn.programs[0]["id"], [
            {"id": 0, "payloads": [{"type": "DISPATCH_SETPOINT", "values": [-5.0]}]},
        ], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

        def deployed() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, end=end).exists()

        await _wait_for(deployed)
        # When its report period changes (nothing its events dispatch): the client restarts (a new token) and the
        # event's deployment goes on
        tokens = len(vtn.token_requests)
        await sync_to_async(_update)(program, report_s=2)
        await _wait_for(lambda: len(vtn.token_requests) > tokens, 10)
        assert await sync_to_async(deployed)()
        # When the program is disabled
        await sync_to_async(_update)(program, enabled=False)

        # Then the deployment in force ends now and the event is opted out with the reason
        def withdrawn() -> bool:
            return ReserveDeployment.objects.filter(portfolio=program.portfolio, end__lt=end).exists()

        await _wait_for(withdrawn, 10)
        row = await UtilityEvent.objects.aget(program=program, event_ref=event["id"])
        assert (row.status, row.status_reason) == (EventStatus.OPTED_OUT, "withdrawn: the program was disabled")
        # And its client polls no more
        await asyncio.sleep(1.0)
        polls = len(vtn.polls)
        await asyncio.sleep(2.5)
        assert len(vtn.polls) == polls
        # When it is enabled again under another client name
        await sync_to_async(_update)(program, enabled=True, client_name="acme-ven-2")
        # Then a client runs with the new configuration: registered under that name, polling with its token
        await _wait_for(lambda: [v["venName"] for v in vtn.vens] == ["acme-ven", "acme-ven-2"], 10)
        await _wait_for(lambda: vtn.polls[-1:] == ["acme-ven-2"], 10)


async def _in_force_when_the_runner_went_down(vtn: Vtn3) -> tuple[UtilityProgram, datetime]:
    """A program whose event put a reserve deployment and an export cap in force, its client then stopped (a
    shutdown ends neither: another runner takes the runs over). The event's end."""
    program = await sync_to_async(_program)(vtn.url)
    program.secret_env = f"UTILITY_ORG{program.organisation_id}_SECRET"  # valid for the services (its value unread)
    await UtilityProgram.objects.filter(pk=program.pk).aupdate(secret_env=program.secret_env)
    start = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
    async with _ven(program, EventRuns(lead_s=2.0)):
        vtn.add_event(vtn.programs[0]["id"], [{"id": 0, "payloads": [
            {"type": "DISPATCH_SETPOINT", "values": [-5.0]}, {"type": "EXPORT_CAPACITY_LIMIT", "values": [9.0]},
        ]}], intervalPeriod={"start": _z(start), "duration": "PT60S"})  # fmt: skip

        def in_force() -> bool:
            mine = {"portfolio": program.portfolio, "end": start + timedelta(seconds=60)}
            return ReserveDeployment.objects.filter(**mine).exists() and PowerCap.objects.filter(**mine).exists()

        await _wait_for(in_force)
    assert await sync_to_async(in_force)()
    return program, start + timedelta(seconds=60)


def _ended(program: UtilityProgram, end: datetime) -> bool:
    deployments = ReserveDeployment.objects.filter(portfolio=program.portfolio)
    caps = PowerCap.objects.filter(portfolio=program.portfolio)
    return (
        deployments.exists()
        and not deployments.filter(end=end).exists()
        and not caps.filter(end=end).exists()
        and all(row.end < end for row in deployments)
    )


async def test_a_program_disabled_while_no_runner_runs_has_its_deployment_and_cap_ended_at_runner_start(
    oadr3_vtn: Vtn3, runner_settings: None
) -> None:
    # Given a deployment and a cap in force and no runner, when the program is disabled behind the services' back
    program, end = await _in_force_when_the_runner_went_down(oadr3_vtn)
    await UtilityProgram.objects.filter(pk=program.pk).aupdate(enabled=False)
    assert not await sync_to_async(_ended)(program, end)
    # Then a runner starting ends both now
    async with _running():
        await _wait_for(lambda: _ended(program, end), 10)


async def test_disabling_a_program_ends_its_deployment_and_cap_even_with_no_runner(
    oadr3_vtn: Vtn3, runner_settings: None
) -> None:
    # Given a deployment and a cap in force and no runner
    program, end = await _in_force_when_the_runner_went_down(oadr3_vtn)
    # When the program is disabled
    await sync_to_async(_update)(program, enabled=False)
    # Then both end now, and its events are opted out
    assert await sync_to_async(_ended)(program, end)
    assert {e.status async for e in UtilityEvent.objects.filter(program=program)} == {EventStatus.OPTED_OUT}


def _run_of(program: UtilityProgram) -> ReserveRun:
    return next(run for run in reserve_runs() if run.event.portfolio == program.portfolio)


async def test_disabling_a_program_stops_its_reserve_run_in_this_process_within_seconds(
    oadr3_vtn: Vtn3, runner_settings: None, settings: Any
) -> None:
    # Given a reserve run of the program's event live in this process, no client owning it any more (a process
    # that took it over, or whose client stopped), its next send 60 s away
    settings.RESERVE_RESEND_S = 60.0
    program, _ = await _in_force_when_the_runner_went_down(oadr3_vtn)
    run = await sync_to_async(_run_of)(program)
    await _wait_for(lambda: run.results, 10)
    assert not run.released
    # When the program is disabled through the service (no runner up to withdraw anything)
    await sync_to_async(_update)(program, enabled=False)
    # Then the run sees its deployment ended and releases its setpoints within a few seconds
    await _wait_for(lambda: run.released, 5)


async def test_with_the_runner_up_disabling_stops_the_reserve_run_of_its_event_at_once(
    oadr3_vtn: Vtn3, runner_settings: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given the runner taking the program's event up again, its reserve run live here (its next send 60 s away)
    settings.RESERVE_RESEND_S = 60.0
    program, _ = await _in_force_when_the_runner_went_down(oadr3_vtn)
    monkeypatch.setenv(program.secret_env, SECRET)
    run = await sync_to_async(_run_of)(program)
    async with _running():
        await _wait_for(lambda: len(oadr3_vtn.polls) >= 2, 20)
        await _wait_for(lambda: run.results, 10)
        # When the program is disabled
        await sync_to_async(_update)(program, enabled=False)
        # Then its run releases its setpoints within the runner's reload (0.5 s) and a little
        await _wait_for(lambda: run.released, 2.5)


async def test_with_the_runner_up_a_run_no_client_owns_is_woken_when_its_program_is_disabled(
    oadr3_vtn: Vtn3, runner_settings: None, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a reserve run of the program's event live here that no client owns (the program's client cannot start:
    # its secret is not set), its next send and its next end check 60 s away
    settings.RESERVE_RESEND_S = 60.0
    monkeypatch.setattr(reserve_module, "END_CHECK_S", 60.0)
    program, _ = await _in_force_when_the_runner_went_down(oadr3_vtn)
    run = await sync_to_async(_run_of)(program)
    async with _running():
        await _wait_for(lambda: run.results, 10)
        await asyncio.sleep(1.0)  # the runner tried the client and failed
        # When the program is disabled through the service (its deployment ended in the database)
        await sync_to_async(_update)(program, enabled=False)
        # Then the runner wakes the run at its next reload and the run releases its setpoints
        await _wait_for(lambda: run.released, 2.5)


async def test_a_database_blip_while_reloading_does_not_end_the_runner(
    oadr3_vtn: Vtn3, runner_settings: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given an enabled program and a database that fails the runner's first two reloads
    program = await sync_to_async(_program)(oadr3_vtn.url)
    secret_env = f"UTILITY_ORG{program.organisation_id}_SECRET"
    monkeypatch.setenv(secret_env, SECRET)
    await sync_to_async(_update)(program, secret_env=secret_env)
    real, calls = runner_module.programs_to_run, []

    def flaky(**kwargs: Any) -> list[UtilityProgram]:
        calls.append(kwargs)
        if len(calls) <= 2:
            raise OperationalError("server closed the connection unexpectedly")
        return real(**kwargs)

    monkeypatch.setattr(runner_module, "programs_to_run", flaky)
    # Then the runner goes on and, once the database answers, starts the program's client
    async with _running() as task:
        await _wait_for(lambda: oadr3_vtn.vens, 20)
        assert not task.done()
    assert len(calls) > 2
