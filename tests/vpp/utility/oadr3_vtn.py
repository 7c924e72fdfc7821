"""A small OpenADR 3 VTN for the tests, written from the OpenADR 3.0.1 OpenAPI document (no reference VTN is
published on PyPI or npm): the operations a VEN uses -- ``POST /auth/token`` (form-encoded client credentials,
``clientCredentialResponse``), ``GET /programs``, ``GET /events?programID=``, ``GET|POST /vens`` (``venName``
filter, 409 on a duplicate), ``GET|POST /vens/{venID}/resources``, ``GET|POST /reports`` -- with the document's
required fields checked (400 ``problem`` otherwise), ``skip``/``limit`` paging (limit <= 50), bearer tokens (403
``problem`` without a valid one, as the document lists no 401) and VTN-provisioned ``id`` / ``createdDateTime`` /
``modificationDateTime`` / ``objectType``. A real aiohttp server on a real socket.
"""

from __future__ import annotations

import itertools
import re
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

OBJECT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
REQUIRED = {
    "VEN": ("venName",),
    "RESOURCE": ("resourceName",),
    "REPORT": ("programID", "eventID", "clientName", "resources"),
}


def _problem(status: int, detail: str) -> web.Response:
    return web.json_response({"type": "about:blank", "status": status, "detail": detail}, status=status)


@dataclass
class Vtn3:
    clients: dict[str, str]  # client_id -> client_secret
    url: str = ""
    programs: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    vens: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    token_requests: list[dict[str, str]] = field(default_factory=list)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> client_id
    events_failing: int = 0  # the status GET /events answers with while set (a VTN in trouble), 0: normal
    polls: list[str] = field(default_factory=list)  # the client id of each GET /events, in order
    #: What the next POSTs of a report named ``vpp-event-*`` meet, in order: "refuse" (500, nothing stored) or
    #: "lose" (stored, but answered 500: the VEN cannot tell it arrived)
    event_report_faults: list[str] = field(default_factory=list)
    report_posts: list[str] = field(default_factory=list)  # the reportName of each POST /reports, in order
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    def stamp(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
        obj = {**obj, "objectType": kind, "modificationDateTime": now}
        obj.setdefault("id", f"{kind.lower()}-{next(self._ids)}")
        obj.setdefault("createdDateTime", now)
        return obj

    def add_program(self, name: str, **fields: Any) -> str:
        program = self.stamp("PROGRAM", {"programName": name, **fields})
        self.programs.append(program)
        return str(program["id"])

    def add_event(self, program_id: str, intervals: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
        event = self.stamp("EVENT", {"programID": program_id, "intervals": intervals, **fields})
        self.events.append(event)
        return event

    def revoke_tokens(self) -> None:
        self.tokens.clear()

    def delete_event(self, event_id: str) -> None:
        self.events = [e for e in self.events if e["id"] != event_id]

    # --- the app --------------------------------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.router.add_post("/auth/token", self.token)
        app.router.add_get("/programs", self._lister(lambda r: self.programs))
        app.router.add_get("/events", self.events_search)
        app.router.add_get("/vens", self._lister(self._vens_of))
        app.router.add_post("/vens", self.ven_create)
        app.router.add_get("/vens/{venID}/resources", self._lister(self._resources_of))
        app.router.add_post("/vens/{venID}/resources", self.resource_create)
        app.router.add_get("/reports", self._lister(self._reports_of))
        app.router.add_post("/reports", self.report_create)
        return app

    @web.middleware
    async def _auth(self, request: web.Request, handler: Any) -> web.StreamResponse:
        if request.path != "/auth/token":
            header = request.headers.get("Authorization", "")
            if not header.startswith("Bearer ") or header[7:] not in self.tokens:
                return _problem(403, "a valid bearer token is required")
        response: web.StreamResponse = await handler(request)
        return response

    async def token(self, request: web.Request) -> web.Response:
        if request.content_type != "application/x-www-form-urlencoded":
            return web.json_response({"error": "invalid_request"}, status=400)
        form = {k: str(v) for k, v in (await request.post()).items()}
        self.token_requests.append(form)
        if form.get("grant_type") != "client_credentials":
            return web.json_response({"error": "unsupported_grant_type"}, status=400)
        if self.clients.get(form.get("client_id", "")) != form.get("client_secret") or not form.get("client_secret"):
            return web.json_response({"error": "invalid_client"}, status=400)
        token = secrets.token_urlsafe(16)
        self.tokens[token] = form["client_id"]
        return web.json_response({"access_token": token, "token_type": "Bearer", "expires_in": 3600})

    def _lister(self, source: Any) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                skip = int(request.query.get("skip", 0))
                limit = int(request.query.get("limit", 50))
            except ValueError:
                return _problem(400, "skip and limit are integers")
            if skip < 0 or not 0 <= limit <= 50:
                return _problem(400, "skip >= 0, 0 <= limit <= 50")
            return web.json_response(list(source(request))[skip : skip + limit])

        return handler

    async def events_search(self, request: web.Request) -> web.Response:
        self.polls.append(self.tokens.get(request.headers.get("Authorization", "")[7:], ""))
        if self.events_failing:
            return _problem(self.events_failing, "the VTN is in trouble")
        response: web.Response = await self._lister(self._events_of)(request)
        return response

    def _events_of(self, request: web.Request) -> list[dict[str, Any]]:
        program = request.query.get("programID")
        return [e for e in self.events if program is None or e["programID"] == program]

    def _vens_of(self, request: web.Request) -> list[dict[str, Any]]:
        name = request.query.get("venName")
        return [v for v in self.vens if name is None or v["venName"] == name]

    def _resources_of(self, request: web.Request) -> list[dict[str, Any]]:
        return [r for r in self.resources if r["venID"] == request.match_info["venID"]]

    def _reports_of(self, request: web.Request) -> list[dict[str, Any]]:
        """``programID``, ``eventID`` and ``clientName`` filters, as the document's ``searchAllReports``."""
        query = request.query
        return [
            r for r in self.reports
            if all(name not in query or r.get(name) == query[name] for name in ("programID", "eventID", "clientName"))
        ]  # fmt: skip

    async def _body(self, request: web.Request, kind: str) -> dict[str, Any] | web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _problem(400, "not JSON")
        if not isinstance(body, dict):
            return _problem(400, f"a {kind.lower()} object")
        missing = [name for name in REQUIRED[kind] if body.get(name) in (None, "", [])]
        if missing:
            return _problem(400, f"{kind.lower()}: missing {', '.join(missing)}")
        return body

    async def ven_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, "VEN")
        if isinstance(body, web.Response):
            return body
        if any(v["venName"] == body["venName"] for v in self.vens):
            return _problem(409, "a ven with this venName exists")
        ven = self.stamp("VEN", {k: v for k, v in body.items() if k != "id"})
        self.vens.append(ven)
        return web.json_response(ven, status=201)

    async def resource_create(self, request: web.Request) -> web.Response:
        ven_id = request.match_info["venID"]
        if not any(v["id"] == ven_id for v in self.vens):
            return _problem(404, "no such ven")
        body = await self._body(request, "RESOURCE")
        if isinstance(body, web.Response):
            return body
        if any(r["venID"] == ven_id and r["resourceName"] == body["resourceName"] for r in self.resources):
            return _problem(409, "a resource with this resourceName exists")
        resource = self.stamp("RESOURCE", {**{k: v for k, v in body.items() if k != "id"}, "venID": ven_id})
        self.resources.append(resource)
        return web.json_response(resource, status=201)

    async def report_create(self, request: web.Request) -> web.Response:
        body = await self._body(request, "REPORT")
        if isinstance(body, web.Response):
            return body
        for resource in body["resources"]:
            if not resource.get("resourceName") or not isinstance(resource.get("intervals"), list):
                return _problem(400, "report resource: resourceName and intervals are required")
            for interval in resource["intervals"]:
                if not isinstance(interval.get("id"), int) or not isinstance(interval.get("payloads"), list):
                    return _problem(400, "interval: id (integer) and payloads are required")
                if any("type" not in p or not isinstance(p.get("values"), list) for p in interval["payloads"]):
                    return _problem(400, "valuesMap: type and values are required")
        if not OBJECT_ID.match(str(body["eventID"])) or not OBJECT_ID.match(str(body["programID"])):
            return _problem(400, "programID and eventID are objectIDs")
        self.report_posts.append(str(body.get("reportName")))
        fault = self.event_report_faults.pop(0) if str(body.get("reportName")).startswith("vpp-event-") and \
            self.event_report_faults else ""  # fmt: skip
        if fault == "refuse":
            return _problem(500, "the VTN is in trouble")
        report = self.stamp("REPORT", {k: v for k, v in body.items() if k != "id"})
        self.reports.append(report)
        if fault == "lose":
            return _problem(500, "stored, but the answer is lost")
        return web.json_response(report, status=201)
