"""OpenADR 3.0 VEN: a thin asyncio client on ``httpx``, written from the OpenADR 3.0.1 OpenAPI document.

(The PyPI clients were evaluated: ``openadr3-client`` needs Python >= 3.12; ``openadr3`` 0.5.0 is a synchronous
CRUD wrapper returning raw responses and brings pendulum and openapi-core for no protocol logic we need.)

* **Token** (``POST {base}/auth/token``, form-encoded client credentials, RFC 6749): client id = the program's
  ``client_name``, secret = the ``secret_env`` variable (or the first line of ``key_file``); fetched again before it
  expires (``expires_in``) and once on a 401/403.
* **Registration**: the program named ``program_ref`` (``GET /programs``), the VEN named ``client_name`` (found by
  ``GET /vens?venName=`` or created, ``POST /vens``) and one resource per station of the portfolio
  (``POST /vens/{venID}/resources``); the VTN's VEN id is the program's ``registration_ref``.
* **Events**: ``GET /events?programID=`` every ``poll_s`` -> :func:`vpp.utility.signals.openadr3_plan` ->
  :func:`vpp.utility.dispatch.utility_event_accept` (stored with its source and version) ->
  :class:`vpp.utility.dispatch.EventRuns`. An event the VTN no longer lists before its end was withdrawn: cancelled.
* **Reports** (``POST /reports``, resource ``AGGREGATED_REPORT``): while an event is dispatched, every
  ``report_s`` the portfolio's ``DEMAND`` (metered mean, kW) over the last period, the interval's ``BASELINE``
  (metered power when its dispatch began, :meth:`Ven3.baseline`) and its ``UP_REGULATION_AVAILABLE`` /
  ``DOWN_REGULATION_AVAILABLE`` (kW, from the plugged-in cars' bounds); once it is over (and
  ``RESPONSE_SETTLE_S`` more, for late meter values), one report ``vpp-event-<id>`` with each interval's metered
  ``DEMAND`` and ``BASELINE``, retried until accepted and looked up on the VTN before a retry (never twice). Each
  is stored (:class:`UtilityReport`) before it is sent and marked accepted on a 2xx.
* Every request's outcome is the program's connection status; a failed poll or report is retried at the next tick.

Why one module: one VEN's conversation with its VTN (token, registration, events, reports) shares the client's
session and state; split, each part would reach into the others' private state.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from channels.db import database_sync_to_async
from django.db import DataError
from django.utils import timezone

from chargers.models import Station
from fleet.numerics.arrays import power_bounds
from markets.regulation.models import ReserveDeployment
from markets.regulation.selectors import portfolio_stations
from vpp.dispatch.selectors import dispatch_state_load, fleet_power_at
from vpp.utility.dispatch import EventRuns, reserve_ref, utility_event_accept
from vpp.utility.metering import portfolio_metered, portfolio_power_at
from vpp.utility.models import EventStatus, ReportKind, UtilityEvent, UtilityProgram, UtilityReport
from vpp.utility.selectors import Credentials
from vpp.utility.services import (
    connection_contact,
    connection_error,
    utility_event_cancel,
    utility_report_answered,
    utility_report_record,
)
from vpp.utility.signals import (
    MALFORMED,
    EventPlan,
    Interval,
    finite,
    iso_duration_text,
    malformed_plan,
    openadr3_modification,
    openadr3_plan,
)
from vpp.utility.tls import tls_context

LOG = logging.getLogger(__name__)
PAGE = 50  # the document's maximum ``limit``
#: At most this many pages of one search (1,000 objects): a VTN that answers full pages forever, or the same page
#: again (its ``skip`` ignored), must not keep the client looping and growing its list.
MAX_PAGES = 20
TIMEOUT_S = 10.0
AGGREGATED = "AGGREGATED_REPORT"
#: The after-the-event report waits this long after the end: meter values arrive late (an agent's outbox catching
#: up), and a report made before they are stored would understate the response.
RESPONSE_SETTLE_S = 10.0


def _malformed(event: dict[str, Any], exc: BaseException) -> EventPlan:
    try:
        modification = openadr3_modification(event)
    except MALFORMED:
        modification = 0
    return malformed_plan(str(event.get("id") or ""), modification, exc)


class Oadr3Error(RuntimeError):
    """The VTN refused a request or answered outside the document; the message has its problem detail."""


#: A malformed object from the server, or one the database cannot store: refused on its own.
STORE_ERRORS: tuple[type[BaseException], ...] = (*MALFORMED, DataError)
#: What ends one step of the client (the status page shows it; the next tick tries again).
STEP_ERRORS: tuple[type[BaseException], ...] = (Oadr3Error, httpx.HTTPError, *MALFORMED)


@dataclass(frozen=True, slots=True)
class Capacity:
    demand_w: int
    up_w: int  # more discharge / less charging available now (W)
    down_w: int  # more charging available now (W)


def kw(watts: float) -> float:
    return round(watts / 1000.0, 3)


def _problem(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("title") or body.get("error_description") or body.get("error"))
    return str(body)[:200]


def why(exc: BaseException) -> str:
    """An exception as the status page shows it (httpx's transport errors often have an empty message)."""
    text = str(exc)
    return text if isinstance(exc, Oadr3Error) else f"{type(exc).__name__}: {text}".rstrip(": ")


class Ven3:
    """One program's OpenADR 3 VEN (module docstring)."""

    def __init__(
        self,
        program: UtilityProgram,
        *,
        runs: EventRuns,
        credentials: Credentials,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.program = program
        self.runs = runs
        self.base = program.endpoint.rstrip("/")
        # The secret: the environment variable, else (no client certificate) the key file's first line.
        self.secret = credentials.secret or (None if credentials.cert_file else _first_line(credentials.key_file))
        self.http = httpx.AsyncClient(timeout=TIMEOUT_S, verify=tls_context(credentials), transport=transport)
        self._token: str | None = None
        self._token_until = 0.0
        self.program_id = ""
        self.program_object: dict[str, Any] = {}
        self.ven_id = ""
        self._listed: dict[str, datetime] = {}  # event id -> its end, as last listed by the VTN
        self._tasks: list[asyncio.Task[None]] = []

    # --- HTTP ---------------------------------------------------------------------------------------------------

    async def _fetch_token(self) -> None:
        if not self.secret:
            raise Oadr3Error("no client secret (secret_env or key_file)")
        response = await self.http.post(
            f"{self.base}/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": self.program.client_name,
                "client_secret": self.secret,
            },
        )
        if response.status_code != 200:
            raise Oadr3Error(f"token refused ({response.status_code}): {_problem(response)}")
        body = response.json()
        self._token = str(body["access_token"])
        # Renewed a little before it expires; no expires_in: kept until a 401 says otherwise.
        self._token_until = time.monotonic() + max(float(body.get("expires_in") or 1e9) - 30.0, 1.0)

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One request with the bearer token (renewed when due, and once on a 401); the JSON answer."""
        for attempt in range(2):
            if self._token is None or time.monotonic() >= self._token_until:
                await self._fetch_token()
            response = await self.http.request(
                method, f"{self.base}{path}", headers={"Authorization": f"Bearer {self._token}"}, **kwargs
            )
            if response.status_code in (401, 403) and attempt == 0:  # the document lists 403 for a bad token
                self._token = None
                continue
            if response.status_code >= 300:
                raise Oadr3Error(f"{method} {path}: {response.status_code} {_problem(response)}")
            return response.json() if response.content else None
        raise AssertionError("unreachable")

    async def _search(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return (await self._pages(path, **params))[0]

    async def _pages(self, path: str, **params: Any) -> tuple[list[dict[str, Any]], bool]:
        """Every object of a search, page by page, and whether the listing is complete: at most ``MAX_PAGES``
        pages, and it stops at a page with nothing new (a VTN ignoring ``skip``); either is logged. An object seen
        again (same ``id``) is kept once."""
        found: list[dict[str, Any]] = []
        seen: set[str] = set()
        for number in range(MAX_PAGES):
            page = await self.request("GET", path, params={**params, "skip": number * PAGE, "limit": PAGE})
            if not isinstance(page, list):
                raise Oadr3Error(f"GET {path}: not a list")
            new = 0
            for item in page:
                ref = str(item.get("id")) if isinstance(item, dict) and item.get("id") is not None else None
                if ref is not None and ref in seen:
                    continue
                if ref is not None:
                    seen.add(ref)
                found.append(item)
                new += 1
            if len(page) < PAGE:
                return found, True
            if new == 0:
                LOG.warning("utility program %s: GET %s: page %s repeats what was listed; %s object(s) kept",
                            self.program.pk, path, number + 1, len(found))  # fmt: skip
                return found, False
        LOG.warning("utility program %s: GET %s: still full pages after %s; the first %s object(s) kept",
                    self.program.pk, path, MAX_PAGES, len(found))  # fmt: skip
        return found, False

    # --- life cycle -----------------------------------------------------------------------------------------------

    async def start(self) -> bool:
        try:
            await self.register()
        except (Oadr3Error, httpx.HTTPError, KeyError, ValueError) as exc:
            await database_sync_to_async(connection_error)(program_id=self.program.pk, error=f"OpenADR 3: {why(exc)}")
            await self.http.aclose()
            return False
        await database_sync_to_async(connection_contact)(program_id=self.program.pk, registration_ref=self.ven_id)
        loop = asyncio.get_running_loop()
        self._tasks = [
            loop.create_task(self._every(self.program.poll_s, self.poll), name=f"oadr3-poll-{self.program.pk}"),
            loop.create_task(self._every(self.program.report_s, self.report), name=f"oadr3-report-{self.program.pk}"),
        ]
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    async def _every(self, period_s: float, step: Any) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except STEP_ERRORS as exc:
                await database_sync_to_async(connection_error)(
                    program_id=self.program.pk, error=f"OpenADR 3: {why(exc)}"
                )
            except Exception:  # a bug must not end the client; the log has it, the next tick tries again
                LOG.exception("utility program %s: OpenADR 3 step failed", self.program.pk)
            await asyncio.sleep(period_s)

    async def register(self) -> None:
        programs = await self._search("/programs")
        chosen = next((p for p in programs if p.get("programName") == self.program.program_ref), None)
        if chosen is None:
            raise Oadr3Error(f"the VTN has no program named {self.program.program_ref!r}")
        self.program_id, self.program_object = str(chosen["id"]), chosen
        name = self.program.client_name
        vens = [v for v in await self._search("/vens", venName=name) if v.get("venName") == name]
        ven = vens[0] if vens else await self.request("POST", "/vens", json={"objectType": "VEN", "venName": name})
        self.ven_id = str(ven["id"])
        have = {r.get("resourceName") for r in await self._search(f"/vens/{self.ven_id}/resources")}
        for resource in await database_sync_to_async(self._resource_names)():
            if resource not in have:
                await self.request(
                    "POST",
                    f"/vens/{self.ven_id}/resources",
                    json={"objectType": "RESOURCE", "resourceName": resource, "venID": self.ven_id},
                )

    def _resource_names(self) -> list[str]:
        """The portfolio's stations (those its vehicles plugged into over the last day), by station id."""
        now = timezone.now()
        ids = portfolio_stations(portfolio=self.program.portfolio, start=now - timedelta(days=1), end=now)
        stations = Station.objects.all() if ids is None else Station.objects.filter(pk__in=ids)
        return sorted(stations.values_list("station_id", flat=True))[:1000]

    # --- events ---------------------------------------------------------------------------------------------------

    async def poll(self) -> None:
        events, complete = await self._pages("/events", programID=self.program_id)
        await database_sync_to_async(connection_contact)(program_id=self.program.pk)
        listed: dict[str, datetime] = {}
        for event in events:  # each on its own: one malformed event must not keep the others (or withdrawals) out
            if not isinstance(event, dict):
                continue
            payload = finite(event)
            try:
                plan = openadr3_plan(event, program=self.program_object, level_step_w=self.program.level_step_w)
            except MALFORMED as exc:
                plan = _malformed(event, exc)
            if not plan.event_ref:
                continue
            listed[plan.event_ref] = plan.end
            try:
                accepted = await database_sync_to_async(utility_event_accept)(
                    program=self.program, plan=plan, payload=payload
                )
            except STORE_ERRORS as exc:  # e.g. a value beyond the columns: stored refused instead
                plan = _malformed(event, exc)
                listed[plan.event_ref] = plan.end
                accepted = await database_sync_to_async(utility_event_accept)(
                    program=self.program, plan=plan, payload=payload
                )
            self.runs.take(program=self.program, accepted=accepted, plan=plan)
        now = timezone.now()
        if not complete:  # a listing cut short says nothing about what it left out: nothing withdrawn for it
            # Ended events can no longer be withdrawn: forgotten, so a VTN that keeps listing partially and
            # varying what it lists does not grow this map without bound.
            self._listed = {ref: end for ref, end in {**self._listed, **listed}.items() if end > now}
            return
        for ref, end in self._listed.items():
            if ref not in listed and end > now:  # deleted by the VTN before its end: withdrawn
                self.runs.cancel(program_id=self.program.pk, event_ref=ref)
                await database_sync_to_async(utility_event_cancel)(
                    program=self.program, event_ref=ref, reason="deleted by the VTN"
                )
        self._listed = listed

    # --- reports --------------------------------------------------------------------------------------------------

    async def report(self) -> None:
        """The active events' telemetry first, then the after-the-event reports still due. One event's failure
        (a report the VTN keeps refusing) is logged and never holds the others back: each is retried next time."""
        events = await database_sync_to_async(self._events_to_report)()
        for event in sorted(events, key=lambda e: e.status != EventStatus.ACTIVE):
            try:
                if event.status == EventStatus.ACTIVE:
                    await self._telemetry(event)
                elif event.end <= timezone.now() - timedelta(seconds=RESPONSE_SETTLE_S):
                    await self._response(event)
            except asyncio.CancelledError:
                raise
            except Exception:
                LOG.warning("utility program %s: report of event %s failed; retried at the next report",
                            self.program.pk, event.event_ref, exc_info=True)  # fmt: skip

    def _events_to_report(self) -> list[UtilityEvent]:
        """Events being dispatched, and completed ones whose response report is not yet accepted (last day)."""
        since = timezone.now() - timedelta(days=1)
        # One subquery: ``exclude(reports__kind=..., reports__accepted=...)`` across the relation would drop an
        # event with any accepted report (a telemetry one) next to a failed response: never retried.
        answered = UtilityReport.objects.filter(
            program=self.program, kind=ReportKind.EVENT, accepted=True, event__isnull=False
        )
        events = UtilityEvent.objects.filter(
            program=self.program, status__in=[EventStatus.ACTIVE, EventStatus.COMPLETED], end__gte=since
        ).exclude(pk__in=answered.values("event_id"))
        return list(events.order_by("start"))

    def _plan(self, event: UtilityEvent) -> EventPlan:
        return openadr3_plan(event.payload, program=self.program_object, level_step_w=self.program.level_step_w)

    def baseline(self, plan: EventPlan, index: int, interval: Interval) -> tuple[int, datetime]:
        """The interval's baseline (W, + import) and its instant: the portfolio's metered power in force when its
        dispatch began -- its reserve deployment's start, else ``lead_s`` before the interval (when setpoints would
        have gone out) -- read from the same charge points as the report's ``DEMAND``."""
        ref = reserve_ref(self.program, plan.event_ref, plan.modification, index)
        deployed = ReserveDeployment.objects.filter(portfolio=self.program.portfolio, event_id=ref)
        # The event's first baseline where the deployment has one (a later interval or version: as dispatched and
        # settled), else its start.
        first = deployed.values_list("baseline_at", "start").first()
        at = (first[0] or first[1]) if first else interval.start - timedelta(seconds=self.runs.lead_s)
        power_w, _ = portfolio_power_at(portfolio=self.program.portfolio, at=at)
        return power_w, at

    async def _telemetry(self, event: UtilityEvent) -> None:
        end = timezone.now().replace(microsecond=0)
        start = end - timedelta(seconds=self.program.report_s)
        row_id, body = await database_sync_to_async(self._telemetry_record)(event, start, end)
        await self._send(row_id, body)

    def _telemetry_record(self, event: UtilityEvent, start: datetime, end: datetime) -> tuple[int, dict[str, Any]]:
        metered = portfolio_metered(portfolio=self.program.portfolio, start=start, end=end)
        capacity = self.capacity(end)
        plan = self._plan(event)
        index = max([i for i, interval in enumerate(plan.intervals) if interval.start <= end] or [0])
        baseline_w, baseline_at = self.baseline(plan, index, plan.intervals[index])
        values = {"demand_w": metered.mean_power_w, "baseline_w": baseline_w, "up_w": capacity.up_w,
                  "down_w": capacity.down_w}  # fmt: skip
        basis = {**metered.basis(), "baseline_at": baseline_at.isoformat(), "interval": index}
        row = utility_report_record(
            program=self.program, kind=ReportKind.CAPACITY, period_start=start, period_end=end, values=values,
            basis=basis, event=event,
        )  # fmt: skip
        payloads = [
            {"type": "DEMAND", "values": [kw(metered.mean_power_w)]},
            {"type": "BASELINE", "values": [kw(baseline_w)]},
            {"type": "UP_REGULATION_AVAILABLE", "values": [kw(capacity.up_w)]},
            {"type": "DOWN_REGULATION_AVAILABLE", "values": [kw(capacity.down_w)]},
        ]
        resource = {
            "resourceName": AGGREGATED,
            "intervalPeriod": {"start": start.isoformat(), "duration": iso_duration_text(end - start)},
            "intervals": [{"id": 0, "payloads": payloads}],
        }
        return row.pk, self._report_body(
            event,
            f"vpp-{row.pk}-telemetry",
            [resource],
            ("DEMAND", "BASELINE", "UP_REGULATION_AVAILABLE", "DOWN_REGULATION_AVAILABLE"),
        )

    async def _response(self, event: UtilityEvent) -> None:
        """The after-the-event report: once per event under one name. Retried at each tick until the VTN accepts
        it; an earlier attempt whose answer was lost (the VTN may have stored it) is looked up first, so the VTN
        never gets it twice."""
        name = f"vpp-event-{event.pk}"
        tried = await database_sync_to_async(self._response_tried)(event)
        if tried is not None:
            stored = await self._search("/reports", programID=self.program_id, eventID=event.event_ref,
                                        clientName=self.program.client_name)  # fmt: skip
            if any(r.get("reportName") == name for r in stored if isinstance(r, dict)):
                LOG.info("utility program %s: the VTN has report %s already", self.program.pk, name)
                await database_sync_to_async(utility_report_answered)(report_id=tried, accepted=True)
                return
        row_id, body = await database_sync_to_async(self._response_record)(event, name)
        await self._send(row_id, body)

    def _response_tried(self, event: UtilityEvent) -> int | None:
        """The latest attempt at the event's response report, if one was made."""
        rows = UtilityReport.objects.filter(program=self.program, event=event, kind=ReportKind.EVENT)
        return rows.order_by("-id").values_list("pk", flat=True).first()

    def _response_record(self, event: UtilityEvent, name: str) -> tuple[int, dict[str, Any]]:
        """Each interval's metered mean demand (what the fleet did) and its baseline, from the event's intervals as
        the VTN sent them: one report covering the whole event."""
        plan = self._plan(event)
        intervals, values, baselines, readings = [], [], [], 0
        for index, interval in enumerate(plan.intervals):
            metered = portfolio_metered(portfolio=self.program.portfolio, start=interval.start, end=interval.end)
            baseline_w, _ = self.baseline(plan, index, interval)
            readings += metered.readings
            values.append(metered.mean_power_w)
            baselines.append(baseline_w)
            intervals.append(
                {
                    "id": index,
                    "intervalPeriod": {
                        "start": interval.start.isoformat(),
                        "duration": iso_duration_text(interval.end - interval.start),
                    },
                    "payloads": [
                        {"type": "DEMAND", "values": [kw(metered.mean_power_w)]},
                        {"type": "BASELINE", "values": [kw(baseline_w)]},
                    ],
                }
            )
        row = utility_report_record(
            program=self.program, kind=ReportKind.EVENT, period_start=event.start, period_end=event.end,
            values={"demand_w": values, "baseline_w": baselines}, basis={"readings": readings, "report_name": name},
            event=event,
        )  # fmt: skip
        resource = {"resourceName": AGGREGATED, "intervals": intervals}
        return row.pk, self._report_body(event, name, [resource], ("DEMAND", "BASELINE"))

    def _report_body(
        self, event: UtilityEvent, name: str, resources: list[dict[str, Any]], types: tuple[str, ...]
    ) -> dict[str, Any]:
        return {
            "objectType": "REPORT",
            "programID": self.program_id,
            "eventID": event.event_ref,
            "clientName": self.program.client_name,
            "reportName": name,
            "payloadDescriptors": [
                {"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": t, "readingType": "MEAN", "units": "KW"}
                for t in types
            ],
            "resources": resources,
        }

    async def _send(self, row_id: int, body: dict[str, Any]) -> bool:
        try:
            await self.request("POST", "/reports", json=body)
        except (Oadr3Error, httpx.HTTPError) as exc:
            await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=False, error=str(exc))
            raise
        await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=True)
        return True

    def capacity(self, at: datetime) -> Capacity:
        """The portfolio's metered power now and how far the plugged-in cars can move it for ``report_s``."""
        now = at.timestamp()
        state = dispatch_state_load(product_id=self.program.product_id, portfolio=self.program.portfolio, now=now)
        demand = fleet_power_at([route.station_id for route in state.routes], now)
        if len(state.fleet) == 0:
            return Capacity(demand, 0, 0)
        bounds = power_bounds(state.fleet, now=now, duration_s=float(self.program.report_s))
        low, high = int(bounds.lo.sum()), int(bounds.hi.sum())
        return Capacity(demand, max(demand - low, 0), max(high - demand, 0))


def _first_line(path: Any) -> str | None:
    if path is None:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.readline().strip() or None
