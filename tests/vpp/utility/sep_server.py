"""A small IEEE 2030.5 server STUB for the tests, written from the standard's schema (``sep.xsd`` element names,
order and types; ``opModImpLimW`` / ``opModExpLimW`` in the CSIP-AUS extension namespace) -- not a conformant
utility server: DeviceCapability (``/dcap``), one DERProgram with its DERControlList, and the MirrorUsagePoint list
(``POST /mup`` -> 201 + Location, ``POST /mup/<n>`` readings). Served over TLS with client certificates required
(the client's LFDI, from its certificate, must match the MirrorUsagePoint's ``deviceLFDI``); bodies
``application/sep+xml``. A real aiohttp server on a real socket.
"""

from __future__ import annotations

import hashlib
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from lxml import etree

NS = "urn:ieee:std:2030.5:ns"
CSIPAUS = "https://csipaus.org/ns"
CONTENT = "application/sep+xml"


def _peer_lfdi(request: web.Request) -> str:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest()[:40].upper() if der else ""


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


@dataclass
class SepServer:
    url: str = ""
    controls: list[dict[str, Any]] = field(default_factory=list)
    mirrors: list[dict[str, Any]] = field(default_factory=list)  # posted MirrorUsagePoints (parsed)
    readings: list[dict[str, Any]] = field(default_factory=list)  # posted MirrorMeterReadings (parsed)
    clients: list[str] = field(default_factory=list)  # LFDIs that connected

    def add_control(self, mrid: str, start: datetime, duration_s: int, **modes: Any) -> dict[str, Any]:
        control = {"mRID": mrid, "start": int(start.timestamp()), "duration": duration_s, "status": 0,
                   "version": int(start.timestamp()) - 60, "modes": modes}  # fmt: skip
        self.controls.append(control)
        return control

    def cancel(self, mrid: str, at: datetime) -> None:
        for control in self.controls:
            if control["mRID"] == mrid:
                control["status"], control["version"] = 2, int(at.timestamp())

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._who])
        app.router.add_get("/dcap", self.dcap)
        app.router.add_get("/derp", self.programs)
        app.router.add_get("/derp/1/derc", self.der_controls)
        app.router.add_post("/mup", self.mup_create)
        app.router.add_post("/mup/{n}", self.mup_reading)
        return app

    @web.middleware
    async def _who(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.clients.append(_peer_lfdi(request))
        response: web.StreamResponse = await handler(request)
        return response

    def _xml(self, element: Any, status: int = 200) -> web.Response:
        return web.Response(body=etree.tostring(element), status=status, content_type=CONTENT)

    async def dcap(self, request: web.Request) -> web.Response:
        dcap = etree.Element(_q("DeviceCapability"), nsmap={None: NS}, href="/dcap")
        etree.SubElement(dcap, _q("DERProgramListLink"), href="/derp", all="1")
        etree.SubElement(dcap, _q("MirrorUsagePointListLink"), href="/mup", all=str(len(self.mirrors)))
        return self._xml(dcap)

    async def programs(self, request: web.Request) -> web.Response:
        listed = etree.Element(_q("DERProgramList"), nsmap={None: NS}, href="/derp", all="1", results="1")
        program = etree.SubElement(listed, _q("DERProgram"), href="/derp/1")
        etree.SubElement(program, _q("DERControlListLink"), href="/derp/1/derc", all=str(len(self.controls)))
        etree.SubElement(program, _q("mRID")).text = "A1" * 16
        etree.SubElement(program, _q("description")).text = "fleet DER program"
        etree.SubElement(program, _q("primacy")).text = "1"
        return self._xml(listed)

    async def der_controls(self, request: web.Request) -> web.Response:
        listed = etree.Element(_q("DERControlList"), nsmap={None: NS, "csipaus": CSIPAUS}, href="/derp/1/derc",
                               all=str(len(self.controls)), results=str(len(self.controls)))  # fmt: skip
        for control in self.controls:
            listed.append(self._control(control))
        return self._xml(listed)

    def _control(self, control: dict[str, Any]) -> Any:
        element = etree.Element(_q("DERControl"))
        etree.SubElement(element, _q("mRID")).text = control["mRID"]
        etree.SubElement(element, _q("description")).text = "test control"
        etree.SubElement(element, _q("creationTime")).text = str(control["version"])
        status = etree.SubElement(element, _q("EventStatus"))
        etree.SubElement(status, _q("currentStatus")).text = str(control["status"])
        etree.SubElement(status, _q("dateTime")).text = str(control["version"])
        etree.SubElement(status, _q("potentiallySuperseded")).text = "false"
        interval = etree.SubElement(element, _q("interval"))
        etree.SubElement(interval, _q("duration")).text = str(control["duration"])
        etree.SubElement(interval, _q("start")).text = str(control["start"])
        base = etree.SubElement(element, _q("DERControlBase"))
        for name, value in control["modes"].items():
            if name == "opModConnect":
                etree.SubElement(base, _q(name)).text = "true" if value else "false"
            elif name == "opModFixedW":  # SignedPerCent
                etree.SubElement(base, _q(name)).text = str(value)
            else:  # ActivePower (value W as multiplier 3 and kW when whole kW: the multiplier is exercised)
                mode = etree.SubElement(base, f"{{{CSIPAUS}}}{name}" if name.startswith("opModImp") or
                                        name.startswith("opModExp") else _q(name))  # fmt: skip
                multiplier, number = (3, value // 1000) if value % 1000 == 0 else (0, value)
                etree.SubElement(mode, _q("multiplier")).text = str(multiplier)
                etree.SubElement(mode, _q("value")).text = str(number)
        return element

    def _parse(self, body: bytes, root: str) -> Any:
        element = etree.fromstring(body, etree.XMLParser(resolve_entities=False, no_network=True))
        if element.tag != _q(root):
            raise web.HTTPBadRequest(text=f"expected {root}")
        return element

    async def mup_create(self, request: web.Request) -> web.Response:
        if request.content_type != CONTENT:
            return web.Response(status=415)
        mup = self._parse(await request.read(), "MirrorUsagePoint")
        fields = {c.tag.split("}")[1]: (c.text or "").strip() for c in mup if len(c) == 0}
        for required in ("mRID", "roleFlags", "serviceCategoryKind", "status", "deviceLFDI"):
            if not fields.get(required):
                return web.Response(status=400, text=f"MirrorUsagePoint: {required} is required")
        if fields["deviceLFDI"] != _peer_lfdi(request):
            return web.Response(status=403, text="deviceLFDI is not the client certificate's LFDI")
        reading = mup.find(_q("MirrorMeterReading"))
        kind = reading.find(_q("ReadingType")) if reading is not None else None
        fields["uom"] = kind.findtext(_q("uom")) if kind is not None else ""
        self.mirrors.append(fields)
        return web.Response(status=201, headers={"Location": f"/mup/{len(self.mirrors)}"})

    async def mup_reading(self, request: web.Request) -> web.Response:
        if request.content_type != CONTENT or not 1 <= int(request.match_info["n"]) <= len(self.mirrors):
            return web.Response(status=404)
        element = self._parse(await request.read(), "MirrorMeterReading")
        reading = element.find(_q("Reading"))
        if reading is None or reading.findtext(_q("value")) is None:
            return web.Response(status=400, text="MirrorMeterReading: Reading/value is required")
        period = reading.find(_q("timePeriod"))
        self.readings.append({
            "mRID": element.findtext(_q("mRID")),
            "value": int(reading.findtext(_q("value")) or 0),
            "duration": int(period.findtext(_q("duration")) or 0) if period is not None else None,
        })  # fmt: skip
        return web.Response(status=201)


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(client_ca)
    context.verify_mode = ssl.CERT_REQUIRED
    return context
