"""OpenADR 2.0b VEN (``openleadr``): one client per program, registering the portfolio with the utility's VTN.

* Registration, polling and the XML (schema validation, signatures when the program has a certificate and key) are
  openleadr's; this module adds what the aggregator does with it. The VTN's ids (venID, registrationID) are kept
  on the program (``registration_ref``) and shown on its status page.
* ``on_event`` / ``on_update_event``: the event -> :func:`vpp.utility.signals.openadr2_plan` ->
  :func:`vpp.utility.dispatch.utility_event_accept` (stored with its source, answered optIn only when it will be
  dispatched) -> :class:`vpp.utility.dispatch.EventRuns` (setpoints on time).
* EiReport: a ``TELEMETRY_USAGE`` report of the portfolio's metered mean power (W, + import) over each sampling
  period (:func:`vpp.utility.metering.portfolio_metered`), each value stored as a :class:`UtilityReport` with the
  meter values it came from (its interval's ``dtstart`` is the period's end, the row's ``period_end``), marked
  accepted only when the VTN acknowledged the oadrUpdateReport carrying it (``oadrUpdatedReport``, response 200).
  One not acknowledged stays pending and is sent again (with the values queued meanwhile) until it is
  (:meth:`_Client._report_queue_worker`, replacing openleadr's, which drops a report whose send failed).
* After an event: a second report offered at registration (``vpp-<pk>-response``) carries, once a completed event
  is over, each of its intervals' metered mean power (:meth:`Ven2b.responses`), once per event.
* A disabled program's client opts out at the VTN (``oadrCreateOpt``) of the events it had opted in to, before it
  stops (:meth:`Ven2b.opt_out_disabled`).
* Every request's outcome is the program's connection status (``connection_contact`` / ``connection_error``).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from datetime import datetime, timedelta
from typing import Any

from channels.db import database_sync_to_async
from django.db import DataError
from django.db.models import Q
from django.utils import timezone
from openleadr import OpenADRClient, objects, utils

from vpp.utility.dispatch import OPT_OUT, EventRuns, utility_event_accept
from vpp.utility.metering import portfolio_metered
from vpp.utility.models import EventStatus, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.selectors import Credentials
from vpp.utility.services import (
    DISABLED_WITHDRAWN,
    connection_contact,
    connection_error,
    utility_report_answered,
    utility_report_pending,
    utility_report_record,
)
from vpp.utility.signals import MALFORMED, EventPlan, finite, malformed_plan, openadr2_plan

LOG = logging.getLogger(__name__)
#: The after-the-event report waits this long after the end: meter values arrive late.
RESPONSE_SETTLE_S = 10.0
#: Values held for one report while the VTN does not acknowledge it; older ones are given up (stored as refused).
MAX_HELD_VALUES = 3600


#: A malformed object from the server, or one the database cannot store: refused on its own.
STORE_ERRORS: tuple[type[BaseException], ...] = (*MALFORMED, DataError)


def jsonable(value: Any) -> Any:
    """openleadr's parsed message (datetimes, timedeltas, enums) as JSON for the audit record."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, enum.Enum):
        return value.value
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _malformed(event: Any, exc: BaseException) -> EventPlan:
    descriptor = event.get("event_descriptor") if isinstance(event, dict) else None
    descriptor = descriptor if isinstance(descriptor, dict) else {}
    try:
        modification = int(descriptor.get("modification_number") or 0)
    except MALFORMED:
        modification = 0
    return malformed_plan(str(descriptor.get("event_id") or ""), modification, exc)


class _Client(OpenADRClient):
    """openleadr's client, telling the program's status the outcome of every request it makes."""

    ven: Ven2b
    last_opt: Any = None  # the VTN's answer to the last oadrCreateOpt

    async def _perform_request(self, service: str, message: Any) -> Any:
        result = await super()._perform_request(service, message)
        if service == "EiOpt":
            self.last_opt = result
        answered = bool(result and result[0])
        if answered:
            await database_sync_to_async(connection_contact)(program_id=self.ven.program.pk)
        else:
            await database_sync_to_async(connection_error)(
                program_id=self.ven.program.pk, error=f"no valid answer from the VTN to {service} ({self.vtn_url})"
            )
        return result

    async def _report_queue_worker(self) -> None:
        """Send each report the VTN asked for; it counts as delivered only once the VTN acknowledged it. One that
        is not is held and sent again every ``report_s`` (at most 60 s), with the values queued for the same
        request meanwhile, until it is: the stored values stay pending until then. An error of ours (the database
        away) holds the report too: this task never ends before the client does."""
        held: Any = None
        while True:
            report = None
            try:
                report = held if held is not None else await self.pending_reports.get()
                held = await self._report_send(report)
            except asyncio.CancelledError:
                return
            except Exception:
                LOG.exception("utility program %s: report sender error; the report is held and sent again",
                              self.ven.program.pk)  # fmt: skip
                held = report
            if held is not None:
                await asyncio.sleep(min(max(float(self.ven.program.report_s), 1.0), 60.0))

    async def _report_send(self, report: Any) -> Any:
        """Send ``report`` once; None when it is delivered (or empty), else the report to hold."""
        await self._merge_queued(report)
        stamps = [interval.dtstart for interval in report.intervals or []]
        if not stamps:
            return None
        try:
            message = self._create_message(
                "oadrUpdateReport", ven_id=self.ven_id, request_id=utils.generate_id(), reports=[report]
            )
            result = await self._perform_request("EiReport", message)
        except Exception as exc:  # a bug or a transport error: the values stay pending
            LOG.exception("utility program %s: report not sent", self.ven.program.pk)
            result, why = None, f"not sent: {exc}"
        else:
            why = "the VTN did not acknowledge the oadrUpdateReport"
        if _acknowledged(result):
            # Acknowledged: recorded as delivered even through a database blip (sent again, it would be doubled).
            await _until_stored(self.ven.reports_delivered, report.report_specifier_id, stamps=stamps)
            if "cancel_report" in result[1]:
                await self.cancel_report(result[1]["cancel_report"])
            return None
        await database_sync_to_async(self.ven.reports_pending)(report.report_specifier_id, stamps=stamps, error=why)
        return report

    async def _merge_queued(self, report: Any) -> None:
        """Add to ``report`` the values queued for the same request (a held report catching up); at most
        ``MAX_HELD_VALUES``, the oldest beyond given up."""
        others = []
        while not self.pending_reports.empty():
            queued = self.pending_reports.get_nowait()
            if queued.report_request_id == report.report_request_id:
                report.intervals = [*(report.intervals or []), *(queued.intervals or [])]
            else:
                others.append(queued)
        for queued in others:
            self.pending_reports.put_nowait(queued)
        intervals = report.intervals or []
        if len(intervals) > MAX_HELD_VALUES:
            dropped = [interval.dtstart for interval in intervals[:-MAX_HELD_VALUES]]
            report.intervals = intervals[-MAX_HELD_VALUES:]
            LOG.warning("utility program %s: %s report value(s) given up (the VTN has not acknowledged them)",
                        self.ven.program.pk, len(dropped))  # fmt: skip
            await database_sync_to_async(self.ven.reports_given_up)(report.report_specifier_id, stamps=dropped)
        if report.intervals:
            report.dtstart = min(interval.dtstart for interval in report.intervals)


async def _until_stored(write: Any, *args: Any, **kwargs: Any) -> None:
    """Run the database ``write`` until it succeeds (1 s doubling to 30 s between tries, each failure logged)."""
    delay = 1.0
    while True:
        try:
            await database_sync_to_async(write)(*args, **kwargs)
            return
        except Exception:
            LOG.warning("utility report state not stored; retried in %.0f s", delay, exc_info=True)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


def _answered_ok(result: Any) -> bool:
    """An answer (oadrCreatedOpt, or openleadr's plain oadrResponse) with response code 200."""
    if not result or not result[0]:
        return False
    response = result[1].get("response") or {}
    return str(response.get("response_code")) == "200"


def _acknowledged(result: Any) -> bool:
    """An oadrUpdatedReport with response code 200."""
    if not result or result[0] != "oadrUpdatedReport":
        return False
    response = result[1].get("response") or {}
    return str(response.get("response_code")) == "200"


class Ven2b:
    """The program's VEN; :meth:`start` registers and starts polling, :meth:`stop` ends it."""

    def __init__(self, program: UtilityProgram, *, runs: EventRuns, credentials: Credentials) -> None:
        self.program = program
        self.runs = runs
        signed = credentials.cert_file is not None and credentials.key_file is not None
        self.client = _Client(
            ven_name=program.client_name,
            vtn_url=program.endpoint,
            cert=str(credentials.cert_file) if signed else None,
            key=str(credentials.key_file) if signed else None,
            passphrase=credentials.secret if signed else None,
            ca_file=str(credentials.ca_file) if credentials.ca_file else None,
            disable_signature=not signed,
            show_fingerprint=False,
        )
        self.client.ven = self
        self.client.add_handler("on_event", self.on_event)
        self.client.add_handler("on_update_event", self.on_event)
        self.client.add_report(
            callback=self.telemetry,
            resource_id=program.portfolio,
            measurement="power_real",
            unit="W",
            scale="none",
            sampling_rate=timedelta(seconds=program.report_s),
            report_duration=timedelta(hours=1),
            report_specifier_id=f"vpp-{program.pk}-telemetry",
            r_id=f"vpp-{program.pk}-power",
        )
        # The after-the-event report: each completed event's intervals with their metered mean power, once (2.0b
        # lets a VEN send only reports the VTN requested: this one is offered at registration like the telemetry)
        self.client.add_report(
            callback=self.responses,
            resource_id=f"{program.portfolio}/event-response",
            measurement="power_real",
            unit="W",
            scale="none",
            sampling_rate=timedelta(seconds=program.report_s),
            report_duration=timedelta(hours=1),
            report_specifier_id=f"vpp-{program.pk}-response",
            r_id=f"vpp-{program.pk}-response",
        )
        self._responding: dict[int, int] = {}  # event -> its response row, sent or being sent by this process
        # an interval start sent -> the response rows carrying it (two events may share an interval start)
        self._response_stamps: dict[datetime, set[int]] = {}

    async def start(self) -> bool:
        """Register with the VTN and start polling; False (and the status says why) when registration failed."""
        await self.client.run()
        if not self.client.registration_id:
            await database_sync_to_async(connection_error)(
                program_id=self.program.pk, error="the VTN gave no registration (oadrCreatePartyRegistration)"
            )
            return False
        ref = f"{self.client.ven_id}/{self.client.registration_id}"
        await database_sync_to_async(connection_contact)(program_id=self.program.pk, registration_ref=ref)
        LOG.info("utility program %s: registered with %s as %s", self.program.pk, self.program.endpoint, ref)
        return True

    async def stop(self) -> None:
        """Stop polling; when the program was disabled, first tell the VTN we opt out of the events we had opted in
        to and that are not over (it should not count on us for them)."""
        try:
            await self.opt_out_disabled()
        except Exception:  # the client stops all the same; the log has why
            LOG.exception("utility program %s: opt-outs on disable not sent", self.program.pk)
        await self.client.stop()

    def _opted_in_to_withdraw(self) -> list[UtilityEvent]:
        """The program is disabled: its events we had opted in to (scheduled, active, or opted out by the disable)
        and that are not over, not yet opted out at the VTN."""
        if UtilityProgram.objects.filter(pk=self.program.pk, enabled=True).exists():
            return []
        told = UtilityReport.objects.filter(
            program=self.program, kind=ReportKind.EVENT, values__opt="optOut", event__isnull=False
        )
        events = UtilityEvent.objects.filter(program=self.program, end__gt=timezone.now()).filter(
            Q(status__in=[EventStatus.SCHEDULED, EventStatus.ACTIVE])
            | Q(status=EventStatus.OPTED_OUT, status_reason=DISABLED_WITHDRAWN)
        )
        return list(events.exclude(pk__in=told.values("event_id")).order_by("start"))

    async def opt_out_disabled(self) -> None:
        """oadrCreateOpt (optOut, notParticipating) for each event :meth:`_opted_in_to_withdraw` finds, each stored
        first (a report of kind ``event``) and marked accepted when the VTN answered it with success."""
        if not self.client.ven_id:
            return
        for event in await database_sync_to_async(self._opted_in_to_withdraw)():
            row = await database_sync_to_async(utility_report_record)(
                program=self.program, kind=ReportKind.EVENT, period_start=event.start, period_end=event.end,
                values={"opt": "optOut", "event_ref": event.event_ref, "modification": event.modification},
                basis={"reason": DISABLED_WITHDRAWN}, event=event,
            )  # fmt: skip
            self.client.last_opt = None
            await self.client.create_opt(
                opt_type="optOut", opt_reason="notParticipating", targets=[objects.Target(ven_id=self.client.ven_id)],
                event_id=event.event_ref, modification_number=event.modification,
            )  # fmt: skip
            accepted = _answered_ok(self.client.last_opt)
            await database_sync_to_async(utility_report_answered)(
                report_id=row.pk, accepted=accepted, error="" if accepted else "the VTN did not accept the opt-out"
            )
            LOG.info("utility program %s: opted out of event %s at the VTN (%s)", self.program.pk, event.event_ref,
                     "accepted" if accepted else "not accepted")  # fmt: skip

    async def on_event(self, event: dict[str, Any]) -> str:
        """One event (openleadr calls this for each event of a message: a malformed one is stored refused with the
        reason and answered optOut, the others go on)."""
        payload = finite(jsonable(event))
        try:
            plan = openadr2_plan(event, level_step_w=self.program.level_step_w)
        except MALFORMED as exc:
            plan = _malformed(event, exc)
        if not plan.event_ref:
            LOG.warning("utility program %s: an event without an event_id: %s", self.program.pk, plan.refusal)
            return OPT_OUT
        try:
            accepted = await database_sync_to_async(utility_event_accept)(
                program=self.program, plan=plan, payload=payload
            )
        except STORE_ERRORS as exc:  # e.g. a value beyond the columns: stored refused instead
            plan = _malformed(event, exc)
            accepted = await database_sync_to_async(utility_event_accept)(
                program=self.program, plan=plan, payload=payload
            )
        if plan.cancelled and not accepted.stale:
            self.runs.cancel(program_id=self.program.pk, event_ref=plan.event_ref)
        else:
            self.runs.take(program=self.program, accepted=accepted, plan=plan)
        return accepted.opt

    async def telemetry(self) -> list[tuple[datetime, float]]:
        """The portfolio's mean metered power over the last sampling period (W, + import), at the period's end."""
        end, value = await database_sync_to_async(self._telemetry_record)()
        return [(end, float(value))]

    def _telemetry_record(self) -> tuple[datetime, int]:
        end = timezone.now()
        start = end - timedelta(seconds=self.program.report_s)
        metered = portfolio_metered(portfolio=self.program.portfolio, start=start, end=end)
        utility_report_record(
            program=self.program,
            kind=ReportKind.TELEMETRY,
            period_start=start,
            period_end=end,
            values={"power_w": metered.mean_power_w},
            basis=metered.basis(),
        )
        return end, metered.mean_power_w

    async def responses(self) -> list[tuple[datetime, float]]:
        """The after-the-event values due: for each completed event over (``RESPONSE_SETTLE_S`` ago, for late meter
        values) with no accepted response, each interval's start and metered mean power (W, + import). Each event
        once: stored first, then held by the report queue until the VTN acknowledges it."""
        return await database_sync_to_async(self._responses_record)()

    def _responses_record(self) -> list[tuple[datetime, float]]:
        now = timezone.now()
        answered = UtilityReport.objects.filter(
            program=self.program, kind=ReportKind.EVENT, accepted=True, event__isnull=False, values__has_key="demand_w"
        )
        events = (
            UtilityEvent.objects.filter(
                program=self.program, status=EventStatus.COMPLETED, end__lte=now - timedelta(seconds=RESPONSE_SETTLE_S),
                end__gte=now - timedelta(days=1),
            )
            .exclude(pk__in=answered.values("event_id"))
            .exclude(pk__in=list(self._responding))
            .order_by("start")
        )  # fmt: skip
        values: list[tuple[datetime, float]] = []
        for event in events:
            try:
                plan = openadr2_plan(_event_of(event.payload), level_step_w=self.program.level_step_w)
            except MALFORMED:
                continue
            starts, demand, readings = [], [], 0
            for interval in plan.intervals:
                metered = portfolio_metered(portfolio=self.program.portfolio, start=interval.start, end=interval.end)
                starts.append(interval.start)
                demand.append(metered.mean_power_w)
                readings += metered.readings
            row = utility_report_record(
                program=self.program, kind=ReportKind.EVENT, period_start=event.start, period_end=event.end,
                values={"demand_w": demand, "interval_starts": [t.isoformat() for t in starts]},
                basis={"readings": readings}, event=event,
            )  # fmt: skip
            self._responding[event.pk] = row.pk
            for at, watts in zip(starts, demand, strict=True):
                self._response_stamps.setdefault(at, set()).add(row.pk)
                values.append((at, float(watts)))
        return values

    def _rows(self, specifier: str, stamps: list[datetime]) -> list[int]:
        if specifier.endswith("-response"):
            return sorted({pk for at in stamps for pk in self._response_stamps.get(at, ())})
        rows = UtilityReport.objects.filter(program=self.program, kind=ReportKind.TELEMETRY, period_end__in=stamps)
        return list(rows.values_list("pk", flat=True))

    def reports_delivered(self, specifier: str, *, stamps: list[datetime]) -> None:
        """The VTN acknowledged the values at ``stamps`` (a telemetry period's end, an event interval's start):
        accepted."""
        rows = self._rows(specifier, stamps)
        for pk in rows:
            utility_report_answered(report_id=pk, accepted=True)
        if specifier.endswith("-response"):  # delivered: no longer this process's to track (the database says so)
            for at in stamps:
                self._response_stamps.pop(at, None)
            self._responding = {event: row for event, row in self._responding.items() if row not in rows}

    def reports_pending(self, specifier: str, *, stamps: list[datetime], error: str) -> None:
        utility_report_pending(report_ids=self._rows(specifier, stamps), error=error)

    def reports_given_up(self, specifier: str, *, stamps: list[datetime]) -> None:
        rows = self._rows(specifier, stamps)
        for pk in rows:
            utility_report_answered(report_id=pk, accepted=False, error="given up: not acknowledged in time")
        self._responding = {event: row for event, row in self._responding.items() if row not in rows}


def _event_of(payload: Any) -> Any:
    """The stored event (JSON, :func:`jsonable`) as openleadr hands it to ``on_event``: its dates and durations
    (stored as seconds) parsed again."""
    if isinstance(payload, dict):
        return {
            k: timedelta(seconds=v) if k == "duration" and isinstance(v, int | float) else _event_of(v)
            for k, v in payload.items()
        }
    if isinstance(payload, list):
        return [_event_of(v) for v in payload]
    if isinstance(payload, str) and len(payload) >= 19 and payload[4:5] == "-" and payload[10:11] == "T":
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(payload)
    return payload
