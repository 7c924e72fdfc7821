"""IEEE 2030.5 / CSIP aggregator client: DER programs' controls -> dispatch, the portfolio's site and telemetry.

The XML is read and written by :mod:`vpp.utility.sep` (``lxml``, element names, order and types of the 2030.5
schema and its CSIP-AUS extension; the tests validate it against the XSDs). ``ieee-2030-5`` (PyPI 2023.0.0.2) was
evaluated: it models HAN metering only (UsagePoint, MeterReading), has no DER function set, and its package imports
a top-level ``rtypes`` it does not ship; ``gridappsd-2030-5`` conflicts with our cryptography pin.

* **TLS**: the program's ``cert_file`` / ``key_file`` are the client certificate (2030.5 identifies a client by
  it: the LFDI, the first 160 bits of the SHA-256 of its DER, is the program's ``registration_ref``), ``ca_file``
  the server's CA.
* **Discovery** (CSIP): ``GET`` the program's ``endpoint`` (the server's DeviceCapability, e.g.
  ``https://host/dcap``): its ``EndDeviceListLink`` (the EndDevices the server lets this aggregator manage),
  ``MirrorUsagePointListLink``, and a ``DERProgramListLink`` where the server assigns programs to every client.
* **The site**: the portfolio is one aggregated DER (its cars are dispatched together), registered as an
  ``EndDevice`` (``POST`` to the EndDeviceList, LFDI :func:`vpp.utility.sep.site_lfdi`, category EV | EVSE) unless
  listed already. Every ``report_s`` its DER's ``DERStatus`` is ``PUT`` (and ``DERCapability`` / ``DERSettings``
  when the plugged-in cars changed them), from the plugged-in cars: ratings, ``setMaxW`` = their discharge power
  now, state of charge, connected.
* **Controls**: every ``poll_s`` each listed EndDevice's ``FunctionSetAssignmentsListLink`` -> each FSA's
  ``DERProgramListLink`` -> each DERProgram's ``DERControlList`` (a program assigned to several EndDevices read
  once) -> :func:`vpp.utility.signals.csip_plan` (``setMaxW``: the plugged-in cars' discharge rating now) ->
  :func:`vpp.utility.dispatch.utility_event_accept` -> :class:`vpp.utility.dispatch.EventRuns`. A control whose
  EventStatus turns cancelled or superseded is withdrawn. A control's version is its ``creationTime`` (2030.5
  controls do not change; a server's EventStatus moving to active is not a new version).
* **Responses**: to a control's ``replyTo``, as its ``responseRequired`` asks, one ``DERControlResponse`` per
  status and EndDevice it was assigned to: 1 received; then 2 started, 3 completed, 6 cancelled, 7 superseded, or
  the refusal (252 not applicable, 253 invalid, 254 expired, 4 opt-out where the program is disabled). Each is
  stored first (:class:`UtilityReport` ``event``) and re-sent until the server accepts it, never twice.
* **Telemetry**: a MirrorUsagePoint (``roleFlags`` isMirror|isDER|isSubmeter, the LFDI as ``deviceLFDI``) posted
  once, then every ``report_s`` a ``MirrorMeterReading`` of the portfolio's metered mean power over the period
  (uom 38 = W, dataQualifier 2 = average, + import), stored first as a :class:`UtilityReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
from channels.db import database_sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.db import DataError
from django.utils import timezone

from vpp.dispatch.selectors import dispatch_state_load
from vpp.utility import sep
from vpp.utility.dispatch import DISABLED_REASON, EventRuns, utility_event_accept
from vpp.utility.metering import portfolio_metered
from vpp.utility.models import EventStatus, ReportKind, UtilityEvent, UtilityProgram
from vpp.utility.selectors import Credentials, event_latest, event_newer, responses_of
from vpp.utility.services import (
    EXPIRED_REASON,
    connection_contact,
    connection_error,
    utility_event_cancel,
    utility_report_answered,
    utility_report_record,
)
from vpp.utility.signals import INVALID_CONTROL, MALFORMED, MALFORMED_REASON, DerControl, csip_plan, malformed_plan
from vpp.utility.tls import tls_context

LOG = logging.getLogger(__name__)
# The refused hrefs remembered so each is logged once; past this many the memory starts again (and logs again).
REFUSED_LOGGED_MAX = 1000
CONTENT = "application/sep+xml"
TIMEOUT_S = 10.0
CANCELLED = (2, 3, 4)
der_control = sep.der_control  # the parser, where the tests and callers found it


class CsipError(RuntimeError):
    """The server refused a request or sent what the schema does not allow."""


#: A malformed object from the server, or one the database cannot store: refused on its own.
STORE_ERRORS: tuple[type[BaseException], ...] = (*MALFORMED, DataError)
#: What ends one step of the client (the status page shows it; the next tick tries again).
STEP_ERRORS: tuple[type[BaseException], ...] = (CsipError, sep.SepError, httpx.HTTPError, *MALFORMED)
READ_ERRORS: tuple[type[BaseException], ...] = (sep.SepError, *MALFORMED)


def lfdi(cert_pem: bytes) -> str:
    """2030.5 §6.3.4: the Long-form Device Identifier, the SHA-256 of the certificate's DER cut to 160 bits."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:40].upper()


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port of ``url`` (the scheme's default port when none is given)."""
    try:
        parts = urlsplit(url)
        port = parts.port or {"https": 443, "http": 80}.get(parts.scheme.lower())
    except ValueError:  # a port out of range or not a number
        return ("", "", None)
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


def why(exc: BaseException) -> str:
    """An exception as the status page shows it (httpx's transport errors often have an empty message)."""
    text = str(exc)
    plain = isinstance(exc, CsipError | sep.SepError)
    return f"{type(exc).__name__}: {text}" if text and not plain else text or type(exc).__name__


def unreadable_control(element: Any) -> DerControl:
    """What can be read of a malformed DERControl: its mRID, version and where to answer (a refusal is stored)."""

    def number(text: str, base: int = 10) -> int:
        try:
            return int(text or "0", base)
        except ValueError:
            return 0

    return DerControl(
        mrid=sep.text(element, "mRID")[:120],
        version=number(sep.text(element, "creationTime")),
        start=timezone.now(),
        duration_s=1,
        status=0,
        modes={},
        reply_to=str(element.get("replyTo") or ""),
        response_required=number(str(element.get("responseRequired") or ""), 16),
    )


def response_codes(event: UtilityEvent, control: DerControl) -> list[int]:
    """The Response statuses an event's stored state calls for, in order (2030.5-2018 Table 27)."""
    codes = [sep.RECEIVED]
    started = [sep.STARTED] if event.first_dispatch_at is not None else []
    if event.status == EventStatus.REFUSED:
        reason = event.status_reason
        refusal = {INVALID_CONTROL: sep.INVALID, EXPIRED_REASON: sep.EXPIRED, DISABLED_REASON: sep.OPT_OUT}
        invalid = reason.startswith(f"{MALFORMED_REASON} ")
        codes += [*started, sep.INVALID if invalid else refusal.get(reason, sep.NOT_APPLICABLE)]
    elif event.status == EventStatus.OPTED_OUT:
        codes += [*started, sep.OPT_OUT]
    elif event.status == EventStatus.CANCELLED:
        codes += [*started, sep.SUPERSEDED if control.status == 4 else sep.CANCELLED]
    elif event.status == EventStatus.ACTIVE:
        codes += started
    elif event.status == EventStatus.COMPLETED:
        codes += [*started, sep.COMPLETED]
    return codes


class Csip:
    """One program's 2030.5 client (module docstring)."""

    def __init__(
        self,
        program: UtilityProgram,
        *,
        runs: EventRuns,
        credentials: Credentials,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if credentials.cert_file is None or credentials.key_file is None:
            raise CsipError("2030.5 needs a client certificate (cert_file and key_file)")
        self.program = program
        self.runs = runs
        self.lfdi = lfdi(credentials.cert_file.read_bytes())
        self.site_lfdi = sep.site_lfdi(self.lfdi, program.portfolio)
        self.http = httpx.AsyncClient(
            timeout=TIMEOUT_S,
            verify=tls_context(credentials),
            transport=transport,
            headers={"Accept": CONTENT},
        )
        self.edev_href = ""
        self.programs_href = ""
        self.mup_list_href = ""
        self.mup_href = ""
        self.der_links: dict[str, str] = {}  # DERCapability / DERSettings / DERStatus -> the site DER's link
        self._der_sent: tuple[int, ...] | None = None  # the ratings last PUT in DERCapability and DERSettings
        self.reading_mrid = hashlib.sha256(f"{self.lfdi}:{program.pk}:power".encode()).hexdigest()[:32].upper()
        self._tasks: list[asyncio.Task[None]] = []
        self._refused: set[str] = set()  # hrefs off the configured server, logged once each

    def _url(self, href: str) -> str:
        """``href`` resolved against the endpoint; refused (logged, :class:`CsipError`) unless it stays on the
        configured server (scheme, host and port): the client's certificate and what it reports go nowhere else,
        whatever a server (or someone able to change its content) lists."""
        url = urljoin(self.program.endpoint, href)
        if _origin(url) != _origin(self.program.endpoint):
            if href not in self._refused:  # once per href: a server listing it at every poll does not flood the log
                if len(self._refused) >= REFUSED_LOGGED_MAX:  # a server inventing new hrefs cannot grow it forever
                    self._refused.clear()
                self._refused.add(href)
                LOG.warning("utility program %s: refused %r: not on the configured server %s", self.program.pk,
                            href[:200], self.program.endpoint)  # fmt: skip
            raise CsipError(f"refused a link off the configured server: {href[:200]}")
        return url

    async def _get(self, href: str, root: str) -> Any:
        response = await self.http.get(self._url(href))
        if response.status_code != 200:
            raise CsipError(f"GET {href}: {response.status_code}")
        return sep.parse(response.content, root)

    async def _send(self, method: str, href: str, element: Any) -> httpx.Response:
        response = await self.http.request(
            method, self._url(href), content=sep.to_bytes(element), headers={"Content-Type": CONTENT}
        )
        if response.status_code not in (200, 201, 204):
            raise CsipError(f"{method} {href}: {response.status_code} {response.text[:200]}")
        return response

    async def _list(self, href: str, root: str, item: str) -> list[Any]:
        return sep.children(await self._get(f"{href}?l=255", root), item)

    async def start(self) -> bool:
        try:
            dcap = await self._get(self.program.endpoint, "DeviceCapability")
            self.edev_href = sep.href(dcap, "EndDeviceListLink") or ""
            self.programs_href = sep.href(dcap, "DERProgramListLink") or ""
            self.mup_list_href = sep.href(dcap, "MirrorUsagePointListLink") or ""
            if not self.edev_href and not self.programs_href:
                raise CsipError("the DeviceCapability has neither an EndDeviceListLink nor a DERProgramListLink")
            if self.edev_href:
                await self._site()
            if self.mup_list_href:
                await self._mirror_create()
        except (CsipError, sep.SepError, httpx.HTTPError, ValueError) as exc:
            await database_sync_to_async(connection_error)(program_id=self.program.pk, error=f"2030.5: {why(exc)}")
            await self.http.aclose()
            return False
        await database_sync_to_async(connection_contact)(program_id=self.program.pk, registration_ref=self.lfdi)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(self.program.poll_s, self.poll), name=f"csip-{self.program.pk}")]
        if self.mup_href or self.der_links:
            task = loop.create_task(self._every(self.program.report_s, self.report), name=f"csip-mup-{self.program.pk}")
            self._tasks.append(task)
        return True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.http.aclose()

    async def _every(self, period_s: float, step: Callable[[], Any]) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except STEP_ERRORS as exc:
                await database_sync_to_async(connection_error)(program_id=self.program.pk, error=f"2030.5: {why(exc)}")
            except Exception:  # a bug must not end the client; the next tick tries again
                LOG.exception("utility program %s: 2030.5 step failed", self.program.pk)
            await asyncio.sleep(period_s)

    # --- the site -------------------------------------------------------------------------------------------------

    async def _site(self) -> None:
        """The portfolio's EndDevice (registered when not listed) and its DER's status, capability, settings links."""
        devices = await self._list(self.edev_href, "EndDeviceList", "EndDevice")
        site = next((d for d in devices if sep.text(d, "lFDI").upper() == self.site_lfdi), None)
        if site is None:
            response = await self._send("POST", self.edev_href, sep.end_device(self.site_lfdi, changed=timezone.now()))
            location = response.headers.get("Location")
            if not location:
                raise CsipError("the site's EndDevice was not given a Location")
            site = await self._get(location, "EndDevice")
            LOG.info("utility program %s: site %s registered at %s", self.program.pk, self.site_lfdi, location)
        der_list = sep.href(site, "DERListLink")
        ders = await self._list(der_list, "DERList", "DER") if der_list else []
        if not ders:
            LOG.warning("utility program %s: the site's EndDevice has no DER: status not reported", self.program.pk)
            return
        for resource in ("DERCapability", "DERSettings", "DERStatus"):
            link = sep.href(ders[0], f"{resource}Link")
            if link:
                self.der_links[resource] = link

    # --- controls -------------------------------------------------------------------------------------------------

    async def _program_lists(self) -> dict[str, set[str]]:
        """Each DERProgramList href -> the LFDIs of the EndDevices it is assigned to."""
        lists: dict[str, set[str]] = {}
        if self.programs_href:
            lists.setdefault(self.programs_href, set()).add(self.lfdi)
        if self.edev_href:
            for device in await self._list(self.edev_href, "EndDeviceList", "EndDevice"):
                fsa_href = sep.href(device, "FunctionSetAssignmentsListLink")
                if not fsa_href:
                    continue
                device_lfdi = sep.text(device, "lFDI").upper() or self.lfdi
                for fsa in await self._list(fsa_href, "FunctionSetAssignmentsList", "FunctionSetAssignments"):
                    href = sep.href(fsa, "DERProgramListLink")
                    if href:
                        lists.setdefault(href, set()).add(device_lfdi)
        return lists

    async def poll(self) -> None:
        programs: dict[str, tuple[Any, set[str]]] = {}
        for list_href, lfdis in (await self._program_lists()).items():
            for der_program in await self._list(list_href, "DERProgramList", "DERProgram"):
                key = der_program.get("href") or sep.text(der_program, "mRID")
                programs.setdefault(key, (der_program, set()))[1].update(lfdis)
        controls: dict[str, tuple[DerControl, set[str]]] = {}
        malformed: dict[str, BaseException] = {}  # mRID -> why its control cannot be read
        for der_program, lfdis in programs.values():
            href = sep.href(der_program, "DERControlListLink")
            for element in await self._list(href, "DERControlList", "DERControl") if href else []:
                try:
                    control = sep.der_control(element)
                except READ_ERRORS as exc:  # refused on its own (253 invalid), the others go on
                    control = unreadable_control(element)
                    if not control.mrid:
                        LOG.warning("utility program %s: a DERControl without an mRID: %s", self.program.pk, exc)
                        continue
                    malformed[control.mrid] = exc
                controls.setdefault(control.mrid, (control, set()))[1].update(lfdis)
        await database_sync_to_async(connection_contact)(program_id=self.program.pk)
        set_max_w = await database_sync_to_async(self.discharge_rating_w)() if controls else 0
        failed: list[str] = []
        for control, lfdis in controls.values():
            try:
                if control.mrid in malformed:
                    await self._refuse(control, malformed[control.mrid])
                else:
                    await self._control(control, set_max_w)
            except STORE_ERRORS as exc:  # e.g. a value beyond the columns
                await self._refuse(control, exc)
            failed += await self._respond(control, sorted(lfdis))
        if failed:
            raise CsipError(f"{len(failed)} response(s) not accepted, first: {failed[0]}")

    async def _control(self, control: DerControl, set_max_w: int) -> None:
        plan = csip_plan(control, set_max_w=set_max_w)
        stale = await database_sync_to_async(event_newer)(self.program, plan.event_ref, plan.modification)
        if control.status in CANCELLED and stale is None:  # an older copy's cancellation never ends the newer one
            self.runs.cancel(program_id=self.program.pk, event_ref=plan.event_ref)
            await database_sync_to_async(utility_event_cancel)(
                program=self.program, event_ref=plan.event_ref, reason=f"EventStatus {control.status}"
            )
            if await database_sync_to_async(event_latest)(self.program, plan.event_ref) is not None:
                return
        payload = {"mRID": control.mrid, "start": control.start.isoformat(), "duration_s": control.duration_s,
                   "status": control.status, "modes": control.modes, "set_max_w": set_max_w}  # fmt: skip
        accepted = await database_sync_to_async(utility_event_accept)(program=self.program, plan=plan, payload=payload)
        self.runs.take(program=self.program, accepted=accepted, plan=plan)

    async def _refuse(self, control: DerControl, exc: BaseException) -> None:
        """Store a control that cannot be read or stored as refused, with the reason (answered 253 invalid)."""
        plan = malformed_plan(control.mrid, max(control.version - 1_577_836_800, 0), exc, what="control")
        payload = {"mRID": control.mrid, "error": plan.refusal}
        await database_sync_to_async(utility_event_accept)(program=self.program, plan=plan, payload=payload)

    async def _respond(self, control: DerControl, lfdis: list[str]) -> list[str]:
        """Post the Responses the control's stored state calls for and the server has not accepted yet; the errors."""
        if not control.reply_to or not control.response_required:
            return []
        due = await database_sync_to_async(self._responses_due)(control, lfdis)
        errors = []
        for row_id, status, device_lfdi in due:
            element = sep.control_response(subject=control.mrid, status=status, lfdi=device_lfdi, at=timezone.now())
            try:
                await self._send("POST", control.reply_to, element)
            except (CsipError, httpx.HTTPError) as exc:
                await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=False, error=why(exc))
                errors.append(why(exc))
                break  # the next ones after this one, in order, at the next poll
            await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=True)
        return errors

    def _responses_due(self, control: DerControl, lfdis: list[str]) -> list[tuple[int, int, str]]:
        event = event_latest(self.program, control.mrid)
        if event is None:
            return []
        sent = responses_of(self.program, control.mrid)
        due = []
        for status in response_codes(event, control):
            if not sep.response_wanted(control, status):
                continue
            for device_lfdi in lfdis:
                row = sent.get((status, device_lfdi))
                if row is not None and row.accepted:
                    continue
                if row is None:
                    row = utility_report_record(
                        program=self.program, kind=ReportKind.EVENT, event=event, period_start=event.start,
                        period_end=event.end, values={"subject": control.mrid, "status": status,
                                                      "endDeviceLFDI": device_lfdi, "replyTo": control.reply_to},
                        basis={"event_status": event.status, "reason": event.status_reason},
                    )  # fmt: skip
                due.append((row.pk, status, device_lfdi))
        return due

    def discharge_rating_w(self) -> int:
        """``setMaxW`` of the portfolio now: the plugged-in cars' (derated) discharge power, W."""
        return self.der_now(None).max_discharge_w

    def der_now(self, power_w: int | None) -> sep.Der:
        """The portfolio as one DER now, from the plugged-in cars (``power_w``: its metered mean, if known)."""
        now = timezone.now().timestamp()
        fleet = dispatch_state_load(product_id=self.program.product_id, portfolio=self.program.portfolio, now=now).fleet
        return sep.Der(
            cars=len(fleet),
            rated_charge_w=int(fleet.rated_charge_w.sum()),
            rated_discharge_w=int(fleet.rated_discharge_w.sum()),
            max_charge_w=int(fleet.max_charge_w.sum()),
            max_discharge_w=int(fleet.max_discharge_w.sum()),
            capacity_wh=int(fleet.capacity_wh.sum()),
            soc_wh=int(fleet.soc_wh.sum()),
            power_w=power_w,
        )

    # --- telemetry and DER status ---------------------------------------------------------------------------------

    async def _mirror_create(self) -> None:
        mup = sep.mirror_usage_point(
            mrid=hashlib.sha256(f"{self.lfdi}:{self.program.pk}".encode()).hexdigest()[:32].upper(),
            description=f"{self.program.portfolio} (aggregated EV fleet)",
            lfdi=self.lfdi,
            reading_mrid=self.reading_mrid,
        )
        response = await self._send("POST", self.mup_list_href, mup)
        location = response.headers.get("Location")
        if not location:
            raise CsipError("the MirrorUsagePoint was not given a Location")
        self.mup_href = location

    async def report(self) -> None:
        end = timezone.now().replace(microsecond=0)
        start = end - timedelta(seconds=self.program.report_s)
        power: int | None = None
        if self.mup_href:
            row_id, power = await database_sync_to_async(self._telemetry_record)(start, end)
            await self._sent(row_id, "POST", self.mup_href, sep.mirror_reading(self.reading_mrid, start, end, power))
        if self.der_links:
            await self._der_report(power, end)

    async def _sent(self, row_id: int, method: str, href: str, element: Any) -> None:
        """Send a stored report and store the server's answer."""
        try:
            await self._send(method, href, element)
        except (CsipError, httpx.HTTPError) as exc:
            await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=False, error=why(exc))
            raise
        await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=True)

    async def _der_report(self, power_w: int | None, at: datetime) -> None:
        """``PUT`` the site DER's status; its capability and settings too when the plugged-in cars changed them."""
        der = await database_sync_to_async(self.der_now)(power_w)
        ratings = (der.cars, der.rated_charge_w, der.rated_discharge_w, der.max_charge_w, der.max_discharge_w,
                   der.capacity_wh)  # fmt: skip
        resources = [("DERStatus", sep.der_status(der, at=at))]
        if ratings != self._der_sent:
            resources.append(("DERCapability", sep.der_capability(der)))
            resources.append(("DERSettings", sep.der_settings(der, updated=at)))
        for resource, element in resources:
            href = self.der_links.get(resource)
            if href is None:
                continue
            values = {"resource": resource, "xml": sep.to_bytes(element).decode()}
            row = await database_sync_to_async(utility_report_record)(
                program=self.program, kind=ReportKind.STATUS, period_start=at, period_end=at, values=values
            )
            await self._sent(row.pk, "PUT", href, element)
        self._der_sent = ratings

    def _telemetry_record(self, start: datetime, end: datetime) -> tuple[int, int]:
        metered = portfolio_metered(portfolio=self.program.portfolio, start=start, end=end)
        row = utility_report_record(
            program=self.program, kind=ReportKind.TELEMETRY, period_start=start, period_end=end,
            values={"power_w": metered.mean_power_w}, basis=metered.basis(),
        )  # fmt: skip
        return row.pk, metered.mean_power_w
