"""Every API error as RFC 9457 problem details (the format: :mod:`fleet.problems`).

* :func:`api_exception_handler` -- DRF's ``EXCEPTION_HANDLER``: every exception a DRF view raises (authentication,
  permissions, validation, 404, 405, throttling, parse errors) answered as ``application/problem+json``, with DRF's
  headers kept (``WWW-Authenticate``, ``Retry-After``, ``Allow``).
* :func:`bad_request` / :func:`permission_denied` / :func:`page_not_found` / :func:`server_error` -- Django's error
  views (``handler400`` ... in ``vpp.urls``), and :func:`csrf_failure` (``CSRF_FAILURE_VIEW``): a problem document
  for ``/api/`` paths, Django's own page everywhere else (people read those).
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views import defaults
from django.views.csrf import csrf_failure as django_csrf_failure
from rest_framework import exceptions
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import exception_handler

from fleet.problems import PROBLEM_CONTENT_TYPE, Problem, errors_summary, field_errors, problem_body, problem_response

API_PREFIX = "/api/"


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, headers, Http404 -> NotFound), its body rewritten as a problem document."""
    response = exception_handler(exc, context)
    if response is None:  # not an API exception: Django's 500 (server_error below) answers
        return None
    request = context.get("request")
    instance = request.path if request is not None else ""
    data: Any = response.data  # DRF's body: {"detail": ErrorDetail} (Django's Http404 and PermissionDenied too)
    extra: dict[str, Any] = dict(exc.extra) if isinstance(exc, Problem) else {}
    if isinstance(exc, exceptions.ValidationError):
        errors = field_errors(data)
        extra["errors"] = errors
        text, code = errors_summary(errors), "invalid"
    elif isinstance(data, dict) and "detail" in data:
        text, code = str(data["detail"]), str(getattr(data["detail"], "code", "") or "")
    else:
        text, code = str(data), ""
    response.data = problem_body(status=response.status_code, detail=text, code=code, instance=instance, **extra)
    response.content_type = PROBLEM_CONTENT_TYPE
    if request is not None:  # a problem is JSON whatever the client negotiated (not the browsable API's HTML)
        request.accepted_renderer = JSONRenderer()
        request.accepted_media_type = PROBLEM_CONTENT_TYPE
    return response


def _is_api(request: HttpRequest) -> bool:
    return request.path.startswith(API_PREFIX)


def bad_request(request: HttpRequest, exception: Exception, *args: Any, **kwargs: Any) -> HttpResponse:
    if _is_api(request):
        return problem_response(status=400, detail="bad request", code="bad_request", instance=request.path)
    return defaults.bad_request(request, exception)


def permission_denied(request: HttpRequest, exception: Exception, *args: Any, **kwargs: Any) -> HttpResponse:
    if _is_api(request):
        detail = str(exception) or "you may not do this"
        return problem_response(status=403, detail=detail, code="permission_denied", instance=request.path)
    return defaults.permission_denied(request, exception)


def page_not_found(request: HttpRequest, exception: Exception, *args: Any, **kwargs: Any) -> HttpResponse:
    if _is_api(request):
        detail = f"no API endpoint or object at {request.path}"
        return problem_response(status=404, detail=detail, code="not_found", instance=request.path)
    return defaults.page_not_found(request, exception)


def server_error(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
    if _is_api(request):
        detail = "the server failed to answer; the error is logged"
        return problem_response(status=500, detail=detail, code="server_error", instance=request.path)
    return defaults.server_error(request)


def csrf_failure(request: HttpRequest, reason: str = "") -> HttpResponse:
    if _is_api(request):
        detail = f"CSRF check failed: {reason}" if reason else "CSRF check failed"
        return problem_response(status=403, detail=detail, code="csrf_failed", instance=request.path)
    return django_csrf_failure(request, reason=reason)
