"""IEEE 2030.5 / CSIP aggregator client: DER programs' controls -> dispatch, metered power -> a MirrorUsagePoint.

The XML is read and written here with ``lxml`` (entities and network off), element names and types from the 2030.5
schema (``sep.xsd``, namespace ``urn:ieee:std:2030.5:ns``; ``opModImpLimW`` / ``opModExpLimW`` from the CSIP-AUS
extension, any namespace accepted). ``ieee-2030-5`` (PyPI 2023.0.0.2) was evaluated: it models HAN metering only
(UsagePoint, MeterReading), has no DER function set, and its package imports a top-level ``rtypes`` it does not
ship; ``gridappsd-2030-5`` conflicts with our cryptography pin.

* **TLS**: the program's ``cert_file`` / ``key_file`` are the client certificate (2030.5 identifies a client by
  it: the LFDI, the first 160 bits of the SHA-256 of its DER, is the program's ``registration_ref``), ``ca_file``
  the server's CA.
* **Discovery**: ``GET`` the program's ``endpoint`` (the server's DeviceCapability, e.g. ``https://host/dcap``):
  its ``DERProgramListLink`` and ``MirrorUsagePointListLink``.
* **Controls**: every ``poll_s`` each DERProgram's ``DERControlList`` -> :func:`vpp.utility.signals.csip_plan`
  (``setMaxW``: the plugged-in cars' discharge rating now) -> :func:`vpp.utility.dispatch.utility_event_accept` ->
  :class:`vpp.utility.dispatch.EventRuns`. A control whose EventStatus turns cancelled or superseded is withdrawn.
* **Telemetry**: a MirrorUsagePoint (``roleFlags`` isMirror|isDER|isSubmeter, the LFDI as ``deviceLFDI``) posted
  once, then every ``report_s`` a ``MirrorMeterReading`` of the portfolio's metered mean power over the period
  (uom 38 = W, dataQualifier 2 = average, + import), stored first as a :class:`UtilityReport`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urljoin

import httpx
from channels.db import database_sync_to_async
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from django.utils import timezone
from lxml import etree

from vpp.dispatch.selectors import dispatch_state_load
from vpp.utility.dispatch import EventRuns, utility_event_accept
from vpp.utility.metering import portfolio_metered
from vpp.utility.models import ReportKind, UtilityProgram
from vpp.utility.selectors import Credentials
from vpp.utility.services import (
    connection_contact,
    connection_error,
    utility_event_cancel,
    utility_report_answered,
    utility_report_record,
)
from vpp.utility.signals import DerControl, csip_plan
from vpp.utility.tls import tls_context

LOG = logging.getLogger(__name__)
NS = "urn:ieee:std:2030.5:ns"
CONTENT = "application/sep+xml"
TIMEOUT_S = 10.0
PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)
CANCELLED = (2, 3, 4)


class CsipError(RuntimeError):
    """The server refused a request or sent what the schema does not allow."""


def lfdi(cert_pem: bytes) -> str:
    """2030.5 §6.3.4: the Long-form Device Identifier, the SHA-256 of the certificate's DER cut to 160 bits."""
    der = x509.load_pem_x509_certificate(cert_pem).public_bytes(Encoding.DER)
    return hashlib.sha256(der).hexdigest()[:40].upper()


def _local(element: Any) -> str:
    return str(etree.QName(element).localname)


def _child(element: Any, name: str) -> Any:
    return next((c for c in element if isinstance(c.tag, str) and _local(c) == name), None)


def _text(element: Any, name: str, default: str = "") -> str:
    found = _child(element, name)
    return (found.text or "").strip() if found is not None else default


def _href(element: Any, link: str) -> str | None:
    found = _child(element, link)
    return str(found.get("href")) if found is not None and found.get("href") else None


def parse(body: bytes, root: str) -> Any:
    try:
        element = etree.fromstring(body, PARSER)
    except etree.XMLSyntaxError as exc:
        raise CsipError(f"not XML: {exc}") from None
    if etree.QName(element).namespace != NS or _local(element) != root:
        raise CsipError(f"expected {root} in {NS}, got {element.tag}")
    return element


def der_control(element: Any) -> DerControl:
    """A ``DERControl`` element: mRID, EventStatus, interval, DERControlBase modes (W = value x 10^multiplier)."""
    status = _child(element, "EventStatus")
    interval = _child(element, "interval")
    base = _child(element, "DERControlBase")
    if interval is None or base is None:
        raise CsipError("a DERControl without interval or DERControlBase")
    modes: dict[str, int | bool] = {}
    for mode in base:
        if not isinstance(mode.tag, str):
            continue
        name = _local(mode)
        if name in ("opModConnect", "opModEnergize"):
            modes[name] = (mode.text or "").strip().lower() == "true"
        elif len(mode):  # ActivePower: multiplier, value
            modes[name] = int(_text(mode, "value", "0")) * 10 ** int(_text(mode, "multiplier", "0"))
        else:  # SignedPerCent / PerCent (hundredths of a percent)
            modes[name] = int((mode.text or "0").strip())
    version = _text(status, "dateTime") if status is not None else ""
    return DerControl(
        mrid=_text(element, "mRID"),
        version=int(version or _text(element, "creationTime", "0")),
        start=datetime.fromtimestamp(int(_text(interval, "start")), UTC),
        duration_s=int(_text(interval, "duration", "0")),
        status=int(_text(status, "currentStatus", "0")) if status is not None else 0,
        modes=modes,
    )


def _xml(tag: str, *children: Any, **text: object) -> Any:
    element = etree.Element(f"{{{NS}}}{tag}", nsmap={None: NS})
    for name, value in text.items():
        etree.SubElement(element, f"{{{NS}}}{name}").text = str(value)
    element.extend(children)
    return element


def _sub(tag: str, **text: object) -> Any:
    element = etree.Element(f"{{{NS}}}{tag}")
    for name, value in text.items():
        etree.SubElement(element, f"{{{NS}}}{name}").text = str(value)
    return element


def reading_type() -> Any:
    # accumulationBehaviour 12 indicating, commodity 1 electricity, dataQualifier 2 average, flowDirection 1
    # forward (+ import), kind 37 power, powerOfTenMultiplier 0, uom 38 W: the element order of sep.xsd.
    return _sub(
        "ReadingType", accumulationBehaviour=12, commodity=1, dataQualifier=2, flowDirection=1, kind=37,
        powerOfTenMultiplier=0, uom=38,
    )  # fmt: skip


def mirror_reading(mrid: str, start: datetime, end: datetime, power_w: int) -> Any:
    reading = _sub("Reading")
    period = _sub("timePeriod", duration=int((end - start).total_seconds()), start=int(start.timestamp()))
    reading.append(period)
    etree.SubElement(reading, f"{{{NS}}}value").text = str(power_w)
    element = _xml("MirrorMeterReading", mRID=mrid, description="portfolio net real power, W")
    element.append(reading)
    return element


def why(exc: BaseException) -> str:
    """An exception as the status page shows it (httpx's transport errors often have an empty message)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text and not isinstance(exc, CsipError) else text or type(exc).__name__


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
        self.http = httpx.AsyncClient(
            timeout=TIMEOUT_S,
            verify=tls_context(credentials),
            transport=transport,
            headers={"Accept": CONTENT},
        )
        self.programs_href = ""
        self.mup_list_href = ""
        self.mup_href = ""
        self.reading_mrid = hashlib.sha256(f"{self.lfdi}:{program.pk}:power".encode()).hexdigest()[:32].upper()
        self._tasks: list[asyncio.Task[None]] = []

    def _url(self, href: str) -> str:
        return urljoin(self.program.endpoint, href)

    async def _get(self, href: str, root: str) -> Any:
        response = await self.http.get(self._url(href))
        if response.status_code != 200:
            raise CsipError(f"GET {href}: {response.status_code}")
        return parse(response.content, root)

    async def _post(self, href: str, element: Any) -> httpx.Response:
        body = etree.tostring(element, xml_declaration=False, encoding="utf-8")
        response = await self.http.post(self._url(href), content=body, headers={"Content-Type": CONTENT})
        if response.status_code not in (200, 201, 204):
            raise CsipError(f"POST {href}: {response.status_code} {response.text[:200]}")
        return response

    async def start(self) -> bool:
        try:
            dcap = await self._get(self.program.endpoint, "DeviceCapability")
            self.programs_href = _href(dcap, "DERProgramListLink") or ""
            self.mup_list_href = _href(dcap, "MirrorUsagePointListLink") or ""
            if not self.programs_href:
                raise CsipError("the DeviceCapability has no DERProgramListLink")
            if self.mup_list_href:
                await self._mirror_create()
        except (CsipError, httpx.HTTPError, ValueError) as exc:
            await database_sync_to_async(connection_error)(program_id=self.program.pk, error=f"2030.5: {why(exc)}")
            await self.http.aclose()
            return False
        await database_sync_to_async(connection_contact)(program_id=self.program.pk, registration_ref=self.lfdi)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._every(self.program.poll_s, self.poll), name=f"csip-{self.program.pk}")]
        if self.mup_href:
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

    async def _every(self, period_s: float, step: Any) -> None:
        while True:
            try:
                await step()
            except asyncio.CancelledError:
                raise
            except (CsipError, httpx.HTTPError, ValueError, TypeError) as exc:
                await database_sync_to_async(connection_error)(program_id=self.program.pk, error=f"2030.5: {why(exc)}")
            except Exception:  # a bug must not end the client; the next tick tries again
                LOG.exception("utility program %s: 2030.5 step failed", self.program.pk)
            await asyncio.sleep(period_s)

    # --- controls -------------------------------------------------------------------------------------------------

    async def poll(self) -> None:
        programs = await self._get(f"{self.programs_href}?l=255", "DERProgramList")
        controls = []
        for der_program in programs:
            if not isinstance(der_program.tag, str) or _local(der_program) != "DERProgram":
                continue
            href = _href(der_program, "DERControlListLink")
            if href:
                listed = await self._get(f"{href}?l=255", "DERControlList")
                controls += [der_control(c) for c in listed if isinstance(c.tag, str) and _local(c) == "DERControl"]
        await database_sync_to_async(connection_contact)(program_id=self.program.pk)
        set_max_w = await database_sync_to_async(self.discharge_rating_w)() if controls else 0
        for control in controls:
            await self._control(control, set_max_w)

    async def _control(self, control: DerControl, set_max_w: int) -> None:
        plan = csip_plan(control, set_max_w=set_max_w)
        if control.status in CANCELLED:
            if self.runs.cancel(program_id=self.program.pk, event_ref=plan.event_ref):
                await database_sync_to_async(utility_event_cancel)(
                    program=self.program, event_ref=plan.event_ref, reason=f"EventStatus {control.status}"
                )
            return
        payload = {"mRID": control.mrid, "start": control.start.isoformat(), "duration_s": control.duration_s,
                   "status": control.status, "modes": control.modes, "set_max_w": set_max_w}  # fmt: skip
        accepted = await database_sync_to_async(utility_event_accept)(program=self.program, plan=plan, payload=payload)
        self.runs.take(program=self.program, accepted=accepted, plan=plan)

    def discharge_rating_w(self) -> int:
        """``setMaxW`` of the portfolio now: the plugged-in cars' (derated) discharge power, W."""
        now = timezone.now().timestamp()
        state = dispatch_state_load(product_id=self.program.product_id, portfolio=self.program.portfolio, now=now)
        return int(state.fleet.max_discharge_w.sum()) if len(state.fleet) else 0

    # --- telemetry ------------------------------------------------------------------------------------------------

    async def _mirror_create(self) -> None:
        mup = _xml(
            "MirrorUsagePoint",
            mRID=hashlib.sha256(f"{self.lfdi}:{self.program.pk}".encode()).hexdigest()[:32].upper(),
            description=f"{self.program.portfolio} (aggregated EV fleet)"[:32],
            roleFlags="49",  # isMirror | isDER | isSubmeter
            serviceCategoryKind=0,
            status=1,
            deviceLFDI=self.lfdi,
        )
        mup.append(_reading_type_only(self.reading_mrid))
        response = await self._post(self.mup_list_href, mup)
        location = response.headers.get("Location")
        if not location:
            raise CsipError("the MirrorUsagePoint was not given a Location")
        self.mup_href = location

    async def report(self) -> None:
        end = timezone.now().replace(microsecond=0)
        start = end - timedelta(seconds=self.program.report_s)
        row_id, power = await database_sync_to_async(self._telemetry_record)(start, end)
        try:
            await self._post(self.mup_href, mirror_reading(self.reading_mrid, start, end, power))
        except (CsipError, httpx.HTTPError) as exc:
            await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=False, error=str(exc))
            raise
        await database_sync_to_async(utility_report_answered)(report_id=row_id, accepted=True)

    def _telemetry_record(self, start: datetime, end: datetime) -> tuple[int, int]:
        metered = portfolio_metered(portfolio=self.program.portfolio, start=start, end=end)
        row = utility_report_record(
            program=self.program, kind=ReportKind.TELEMETRY, period_start=start, period_end=end,
            values={"power_w": metered.mean_power_w}, basis=metered.basis(),
        )  # fmt: skip
        return row.pk, metered.mean_power_w


def _reading_type_only(mrid: str) -> Any:
    """The MirrorUsagePoint's MirrorMeterReading as first posted: what it will carry (its ReadingType), no value."""
    element = _xml("MirrorMeterReading", mRID=mrid, description="portfolio net real power, W")
    element.append(reading_type())
    return element
