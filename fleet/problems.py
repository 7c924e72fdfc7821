"""The API's one error format: RFC 9457 problem details (``application/problem+json``).

Every error an ``/api/`` URL answers has this body, whoever raised it (DRF's exception handler
``vpp.problems.api_exception_handler``, Django's 400/403/404/500 and CSRF views for ``/api/`` paths, the async
station-call view, the regulation intake)::

    {"type": "about:blank", "title": "Not Found", "status": 404, "detail": "no station 'x'",
     "instance": "/api/stations/x/call", "code": "not_found"}

``type`` is ``about:blank`` and ``title`` the HTTP status phrase (RFC 9457 section 4.2.1): what differs between two
errors of one status is said by ``detail`` (for people) and the extension member ``code`` (for programs: DRF's
error codes, or one of ours such as ``signal_refused``, ``command_refused``, ``station_offline``). A request refused
for its fields carries ``errors``: one ``{"detail", "pointer"}`` per message, the pointer a JSON Pointer into the
request body (RFC 6901; ``#`` alone for the body as a whole), as in RFC 9457's own example.

This module is the fleet layer's (the lowest with an API), so every app's edges can use it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from django.http import JsonResponse
from rest_framework import serializers
from rest_framework.exceptions import APIException

PROBLEM_CONTENT_TYPE = "application/problem+json"


def problem_body(*, status: int, detail: str, code: str = "", instance: str = "", **extra: Any) -> dict[str, Any]:
    """A problem document for ``status`` (its phrase as ``title``); ``extra`` become extension members."""
    try:
        title = HTTPStatus(status).phrase
    except ValueError:
        title = "Error"
    body: dict[str, Any] = {"type": "about:blank", "title": title, "status": status, "detail": detail}
    if instance:
        body["instance"] = instance
    if code:
        body["code"] = code
    body.update(extra)
    return body


def problem_response(
    *,
    status: int,
    detail: str,
    code: str = "",
    instance: str = "",
    headers: Mapping[str, str] | None = None,
    **extra: Any,
) -> JsonResponse:
    """A Django response carrying :func:`problem_body` (for views outside DRF)."""
    body = problem_body(status=status, detail=detail, code=code, instance=instance, **extra)
    response = JsonResponse(body, status=status, content_type=PROBLEM_CONTENT_TYPE)
    for name, value in (headers or {}).items():
        response[name] = value
    return response


def field_errors(errors: Any, pointer: str = "#") -> list[dict[str, str]]:
    """DRF's nested validation errors (dicts of lists of messages) as RFC 9457 ``errors``: detail + JSON Pointer."""
    found: list[dict[str, str]] = []
    if isinstance(errors, Mapping):
        for key, value in errors.items():
            if key in ("non_field_errors", "detail"):  # about the body as a whole
                found += field_errors(value, pointer)
            else:
                escaped = str(key).replace("~", "~0").replace("/", "~1")
                found += field_errors(value, f"{pointer}/{escaped}")
    elif isinstance(errors, Sequence) and not isinstance(errors, str):
        for index, value in enumerate(errors):
            nested = isinstance(value, Mapping) or (isinstance(value, Sequence) and not isinstance(value, str))
            found += field_errors(value, f"{pointer}/{index}" if nested else pointer)
    else:
        found.append({"detail": str(errors), "pointer": pointer})
    return found


def errors_summary(errors: list[dict[str, str]]) -> str:
    """One line for ``detail``: each message with the field it is about."""
    parts = []
    for error in errors:
        where = error["pointer"].removeprefix("#").removeprefix("/")
        parts.append(f"{where}: {error['detail']}" if where else error["detail"])
    return "; ".join(parts) or "invalid request"


class ProblemSerializer(serializers.Serializer):
    """The problem document, for the OpenAPI schema."""

    type = serializers.CharField(default="about:blank")
    title = serializers.CharField(help_text="the HTTP status phrase")
    status = serializers.IntegerField()
    detail = serializers.CharField(help_text="what went wrong, for people")
    instance = serializers.CharField(required=False, help_text="the request's path")
    code = serializers.CharField(required=False, help_text="what went wrong, for programs")
    errors = serializers.ListField(
        child=serializers.DictField(child=serializers.CharField()),
        required=False,
        help_text="for a refused body: one {detail, pointer} per message (pointer: RFC 6901, into the body)",
    )


class Problem(APIException):
    """An error of any status raised from a DRF view, with extension members (``extra``) for its document: the
    one way a view answers an error the DRF exception classes do not name (409, 422, 502 ...)."""

    def __init__(self, *, status: int, detail: str, code: str, **extra: Any) -> None:
        super().__init__(detail, code)
        self.status_code = status
        self.extra = extra
