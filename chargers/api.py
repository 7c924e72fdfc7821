"""REST edge of the CSMS: ``POST /api/stations/<station_id>/call`` runs ``station_call`` inside the server.

It is async on purpose: a call waits up to its timeout for the station, and a sync view would hold Django's one
thread-sensitive worker (which the OCPP consumers also use) for that long. Staff only; API key (scope ``command``)
or session auth.
"""

from __future__ import annotations

import json
from typing import Any

from asgiref.sync import sync_to_async
from django.http import HttpRequest, HttpResponse, HttpResponseBase, JsonResponse
from django.middleware.csrf import CsrfViewMiddleware
from django.views.decorators.csrf import csrf_exempt
from rest_framework.authentication import SessionAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request
from rest_framework.settings import api_settings

from chargers.services.station_call import (
    CallErrorResponse,
    CallPayloadInvalid,
    CallTimeout,
    StationOffline,
    StationUnknown,
    station_call_async,
)

MAX_TIMEOUT_S = 120.0


@csrf_exempt  # CSRF is enforced below for session auth only, as DRF does; key clients have no cookie to ride
async def station_call_view(request: HttpRequest, station_id: str) -> JsonResponse:
    if request.method != "POST":
        return JsonResponse({"error": "use POST"}, status=405)
    _user, denied = await _staff_user(request)
    if denied is not None:
        return denied
    try:
        action, payload, timeout = _parse_body(request.body)
    except ValueError as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    try:
        result = await station_call_async(station_id=station_id, action=action, payload=payload, timeout=timeout)
    except StationUnknown as exc:
        return JsonResponse({"error": str(exc)}, status=404)
    except CallPayloadInvalid as exc:
        return JsonResponse({"error": str(exc)}, status=400)
    except StationOffline as exc:
        return JsonResponse({"error": str(exc)}, status=409)
    except CallTimeout as exc:
        return JsonResponse({"error": str(exc)}, status=504)
    except CallErrorResponse as exc:
        body = {"error": str(exc), "code": exc.code, "description": exc.description, "details": exc.details}
        return JsonResponse(body, status=502)
    return JsonResponse({"station_id": station_id, "action": action, "payload": result})


def _parse_body(raw: bytes) -> tuple[str, dict[str, Any], float | None]:
    try:
        body = json.loads(raw or b"{}")
    except ValueError as exc:
        raise ValueError("body is not JSON") from exc
    if not isinstance(body, dict):
        raise ValueError("body must be a JSON object")
    action, payload, timeout = body.get("action"), body.get("payload", {}), body.get("timeout")
    if not isinstance(action, str) or not action:
        raise ValueError("'action' (string) is required")
    if not isinstance(payload, dict):
        raise ValueError("'payload' must be a JSON object")
    if timeout is not None and (not isinstance(timeout, int | float) or not 0 < timeout <= MAX_TIMEOUT_S):
        raise ValueError(f"'timeout' must be a number of seconds in (0, {MAX_TIMEOUT_S:g}]")
    return action, payload, timeout


async def _staff_user(request: HttpRequest) -> tuple[Any, JsonResponse | None]:
    claimed, user, auth = await sync_to_async(_header_credentials)(request)
    if claimed:
        if auth is not None and hasattr(auth, "allows") and not auth.allows("command"):
            return None, JsonResponse({"error": "this API key lacks scope 'command'"}, status=403)
    else:
        user = await request.auser()
        if user.is_authenticated:
            rejected = await sync_to_async(_csrf_rejection)(request)
            if rejected is not None:
                return None, JsonResponse({"error": "CSRF check failed"}, status=403)
    if user is None or not user.is_authenticated or not user.is_active:
        return None, JsonResponse({"error": "authentication required"}, status=401)
    if not user.is_staff:
        return None, JsonResponse({"error": "staff only"}, status=403)
    return user, None


def _header_credentials(request: HttpRequest) -> tuple[bool, Any, Any]:
    """(claimed, user, auth) of the ``Authorization`` header as the project's DRF authentication classes judge it
    (``REST_FRAMEWORK`` settings: the API key class lives in a higher layer, which the CSMS must not import). Claimed
    but refused: (True, None, None); no class recognises the header (or none is sent): (False, None, None)."""
    drf_request = Request(request)
    for authentication in api_settings.DEFAULT_AUTHENTICATION_CLASSES:
        if issubclass(authentication, SessionAuthentication):
            continue  # the session is judged by the caller, with its CSRF check
        try:
            found = authentication().authenticate(drf_request)
        except AuthenticationFailed:
            return True, None, None
        if found is not None:
            return True, found[0], found[1]
    return False, None, None


def _csrf_rejection(request: HttpRequest) -> HttpResponseBase | None:
    """Django's CSRF verdict for a session-authenticated request, as DRF runs it: the middleware with no view."""

    def no_view(_request: HttpRequest) -> HttpResponse:  # only process_view runs; it never calls the view
        raise AssertionError("not called")

    return CsrfViewMiddleware(no_view).process_view(request, no_view, (), {})
