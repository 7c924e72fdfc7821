"""Station commands over REST: ``POST /api/stations/<station_id>/call`` and the audit trail that records them.

The call view is async on purpose: a call waits up to its timeout for the station, and a sync view would hold
Django's one thread-sensitive worker (which the OCPP consumers also use) for that long. Authentication,
permissions and throttling are DRF's, run by ``_CallGate`` before the wait (session, token or API key; CSRF for
sessions), together with the ownership rules of ``fleet.commands``.

Statuses: 200 the station's answer; 400 invalid body or payload (nothing sent); 401/403 unauthenticated; 403 an
API key without the ``command`` scope, or a refused command (audited); 404 no such station *for this caller*
(existence is not leaked); 409 offline; 502 CALLERROR; 504 timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponseBase, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, serializers
from rest_framework.exceptions import NotFound, PermissionDenied
from rest_framework.permissions import IsAuthenticated
from rest_framework.request import Request
from rest_framework.views import APIView

from chargers.models import StationCommand
from chargers.services.station_call import (
    CallErrorResponse,
    CallPayloadInvalid,
    CallTimeout,
    StationOffline,
    StationUnknown,
    station_call_async,
)
from chargers.services.station_commands import station_command_record
from fleet.commands import command_refusal, command_stations
from fleet.models import ApiKey, ApiScope
from fleet.problems import ProblemSerializer, problem_response
from fleet.selectors import is_operator, key_allows

MAX_TIMEOUT_S = 120.0


class StationCallSerializer(serializers.Serializer):
    action = serializers.CharField(max_length=64, help_text="a CSMS-initiated OCPP action, e.g. SetChargingProfile")
    payload = serializers.DictField(required=False, default=dict, help_text="the request, per the action's schema")
    timeout = serializers.FloatField(required=False, min_value=0.001, max_value=MAX_TIMEOUT_S, help_text="seconds")
    client = serializers.CharField(
        required=False,
        allow_blank=True,
        max_length=64,
        default="",
        help_text="the tool calling, recorded next to the user",
    )


@dataclass(frozen=True, slots=True)
class _Approved:
    user_id: int
    actor_label: str
    action: str
    payload: dict[str, Any]
    timeout: float | None


class _CallGate(APIView):
    """DRF's request handling up to the view body (authentication, IsAuthenticated, throttles, parsing), then the
    ownership rules. Runs synchronously (database reads); never waits for a station."""

    permission_classes = [IsAuthenticated]

    def run(self, request: HttpRequest, station_id: str) -> _Approved | HttpResponseBase:
        self.args, self.kwargs = (), {"station_id": station_id}
        drf_request = self.initialize_request(request, station_id=station_id)
        self.request = drf_request
        self.headers = self.default_response_headers
        try:
            self.initial(drf_request, station_id=station_id)
            return self._approve(drf_request, station_id)
        except Exception as exc:  # DRF's own handler shapes every error, as APIView.dispatch does
            response = self.handle_exception(exc)
        response = self.finalize_response(drf_request, response)
        response.render()
        return response

    def _approve(self, request: Request, station_id: str) -> _Approved | HttpResponseBase:
        user, auth = request.user, request.auth
        if not key_allows(auth, ApiScope.COMMAND):
            raise PermissionDenied("this API key lacks the 'command' scope")
        station = command_stations(user, auth).filter(station_id=station_id).first()
        if station is None:  # before the body: an unknown station is 404 whatever was sent
            raise NotFound(f"no station {station_id!r}")
        body = StationCallSerializer(data=request.data)
        body.is_valid(raise_exception=True)
        data = body.validated_data
        label = actor_label(user, auth, client=data["client"])
        refusal = command_refusal(user=user, station=station, action=data["action"])
        if refusal is not None:
            station_command_record(
                station_ident=station_id,
                action=data["action"],
                payload=data["payload"],
                outcome=StationCommand.Outcome.REFUSED,
                actor_user_id=user.pk,
                actor_label=label,
                requested_at=timezone.now(),
                error=refusal,
            )
            return problem_response(
                status=403,
                detail=refusal,
                code="command_refused",
                instance=request.path,
                action=data["action"],
                station_id=station_id,
            )
        return _Approved(user.pk, label, data["action"], data["payload"], data.get("timeout"))


@csrf_exempt  # DRF's SessionAuthentication enforces CSRF in the gate, for session auth only
async def station_call_view(request: HttpRequest, station_id: str) -> HttpResponseBase:
    if request.method != "POST":
        return problem_response(
            status=405, detail="use POST", code="method_not_allowed", instance=request.path, headers={"Allow": "POST"}
        )
    approved = await sync_to_async(_CallGate().run)(request, station_id)
    if isinstance(approved, HttpResponseBase):
        return approved
    try:
        result = await station_call_async(
            station_id=station_id,
            action=approved.action,
            payload=approved.payload,
            actor_user_id=approved.user_id,
            actor_label=approved.actor_label,
            timeout=approved.timeout,
        )
    except StationUnknown as exc:  # deleted since the gate saw it
        return problem_response(status=404, detail=str(exc), code="not_found", instance=request.path)
    except CallPayloadInvalid as exc:
        return problem_response(status=400, detail=str(exc), code="payload_invalid", instance=request.path)
    except StationOffline as exc:
        return problem_response(status=409, detail=str(exc), code="station_offline", instance=request.path)
    except CallTimeout as exc:
        return problem_response(status=504, detail=str(exc), code="station_timeout", instance=request.path)
    except CallErrorResponse as exc:
        return problem_response(
            status=502,
            detail=str(exc),
            code="call_error",
            instance=request.path,
            ocpp_error_code=exc.code,
            ocpp_error_description=exc.description,
            ocpp_error_details=exc.details,
        )
    return JsonResponse({"station_id": station_id, "action": approved.action, "payload": result})


class StationCallAnswerSerializer(serializers.Serializer):
    station_id = serializers.CharField()
    action = serializers.CharField()
    payload = serializers.DictField(help_text="the station's CALLRESULT payload")


def _problem(description: str) -> OpenApiResponse:
    return OpenApiResponse(ProblemSerializer, description=description)


class StationCallSchema(APIView):
    """The OpenAPI description of :func:`station_call_view` (an async function view, which drf-spectacular cannot
    inspect): attached to the view as ``cls``, the schema generator reads it; requests never reach it."""

    permission_classes = [IsAuthenticated]

    @extend_schema(
        operation_id="station_call",
        summary="Send an OCPP call to a station and wait for its answer",
        description=__doc__,
        request=StationCallSerializer,
        responses={
            200: StationCallAnswerSerializer,
            400: _problem("invalid body or payload (nothing sent)"),
            401: _problem("not authenticated"),
            403: _problem("an API key without scope 'command', or a refused command (audited)"),
            404: _problem("no such station for this caller"),
            409: _problem("the station is offline"),
            502: _problem("the station answered CALLERROR (ocpp_error_* members)"),
            504: _problem("the station did not answer in time"),
        },
    )
    def post(self, request: Request, station_id: str) -> HttpResponseBase:
        raise NotImplementedError("served by station_call_view")


station_call_view.cls = StationCallSchema  # type: ignore[attr-defined]
station_call_view.initkwargs = {}  # type: ignore[attr-defined]


def actor_label(user: Any, auth: object, *, client: str = "") -> str:
    """Who, for the audit trail: the username, the API key's prefix when one was used, the client tool if named."""
    label = str(user.get_username())
    if isinstance(auth, ApiKey):
        label += f" (API key {auth.prefix})"
    if client:
        label += f" via {client}"
    return label


# --- The audit trail -------------------------------------------------------------------------------------------------


class StationCommandSerializer(serializers.ModelSerializer):
    station_id = serializers.CharField(source="station_ident", read_only=True)
    user = serializers.CharField(source="user.username", read_only=True, default=None)

    class Meta:
        model = StationCommand
        fields = [
            "id",
            "station_id",
            "user",
            "actor_label",
            "action",
            "payload",
            "outcome",
            "answer",
            "error",
            "requested_at",
            "answered_at",
        ]


class _AuditList(generics.ListAPIView[StationCommand]):
    serializer_class = StationCommandSerializer

    def _commands(self) -> Any:
        if not key_allows(self.request.auth, ApiScope.READ):
            raise PermissionDenied("this API key lacks the 'read' scope")
        return StationCommand.objects.select_related("user").order_by("-requested_at", "-id")


class StationCommandList(_AuditList):
    """Every command sent (or refused) to the caller's stations, newest first: an operator's all, a member's
    their organisations' stations. Filter with ``?station=<id>`` or ``?outcome=``."""

    def get_queryset(self) -> Any:
        user, auth = self.request.user, self.request.auth
        commands = self._commands()
        if not is_operator(user) or (isinstance(auth, ApiKey) and auth.organisation_id is not None):
            commands = commands.filter(station__in=command_stations(user, auth))
        station = self.request.query_params.get("station")
        if station:
            commands = commands.filter(station_ident=station)
        outcome = self.request.query_params.get("outcome")
        if outcome:
            commands = commands.filter(outcome=outcome)
        return commands


class StationCommandsOfStation(_AuditList):
    """The commands of one station, newest first; 404 when the caller cannot see the station."""

    def get_queryset(self) -> Any:
        station_id = self.kwargs["station_id"]
        commands = self._commands()
        station = command_stations(self.request.user, self.request.auth).filter(station_id=station_id).first()
        if station is None:
            raise NotFound(f"no station {station_id!r}")
        return commands.filter(station=station)
