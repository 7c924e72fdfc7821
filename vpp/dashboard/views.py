"""Fleet dashboard pages: thin views over the dashboard selectors (which show a member only their organisations'
stations, vehicles, revenue and alerts; an operator all of them) and the two commands a fleet manager gives from it.

Reads: any signed-in user, scoped. Commands (trip target, discharge now): fleet managers of the vehicle's
organisation and operators; another organisation's vehicle is a 404 (its existence does not leak), a member of the
organisation without the fleet-manager role gets 403. Answers are JSON (the page calls them with ``fetch``), errors
``application/problem+json``; a plain form post (no script) is redirected back to the dashboard with a message.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_POST

from fleet.models import Role, Vehicle
from fleet.selectors import vehicles_for
from fleet.services.commands import trip_target_set
from fleet.services.errors import FleetError
from vpp.dashboard.selectors import dashboard_overview
from vpp.dashboard.selectors_history import SPANS, power_history, power_history_csv, recent_power
from vpp.dashboard.selectors_regulation import regulation_now
from vpp.dashboard.services import MAX_MINUTES, DischargeRefused, discharge_now

PROBLEM = "application/problem+json"


def _now() -> datetime:
    return datetime.now(UTC)


@login_required
@require_GET
def dashboard(request: HttpRequest) -> HttpResponse:
    now = _now()
    overview = dashboard_overview(user=request.user, at=now)
    context = {
        "overview": overview,
        "overview_data": asdict(overview),
        "recent_power": recent_power(user=request.user, end=now),
        "spans": list(SPANS),
        "max_minutes": MAX_MINUTES,
    }
    return render(request, "vpp/dashboard.html", context)


@login_required
@require_GET
def dashboard_json(request: HttpRequest) -> JsonResponse:
    overview = dashboard_overview(user=request.user, at=_now())
    return JsonResponse(asdict(overview))


def _span(request: HttpRequest) -> str | HttpResponse:
    span = request.GET.get("span", "day")
    if span not in SPANS:
        return _problem(400, "unknown span", f"span must be one of {', '.join(SPANS)}")
    return span


@login_required
@require_GET
def history_json(request: HttpRequest) -> HttpResponse:
    span = _span(request)
    if isinstance(span, HttpResponse):
        return span
    return JsonResponse(power_history(user=request.user, span=span, end=_now()).as_dict())


@login_required
@require_GET
def history_csv(request: HttpRequest) -> HttpResponse:
    span = _span(request)
    if isinstance(span, HttpResponse):
        return span
    history = power_history(user=request.user, span=span, end=_now())
    response = HttpResponse(power_history_csv(history), content_type="text/csv")
    response["Content-Disposition"] = f'attachment; filename="fleet-power-{span}-{history.end:%Y%m%dT%H%MZ}.csv"'
    return response


@login_required
@require_GET
def regulation_json(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"portfolios": regulation_now(user=request.user, at=_now())})


# --- commands ------------------------------------------------------------------------------------------------------


class TripTargetForm(forms.Form):
    target_soc_pct = forms.IntegerField(min_value=0, max_value=100)


class DischargeForm(forms.Form):
    power_kw = forms.FloatField(min_value=0.1, max_value=1000)
    minutes = forms.FloatField(min_value=1, max_value=MAX_MINUTES)


def _problem(status: int, title: str, detail: str, **extra: Any) -> JsonResponse:
    return JsonResponse(
        {"title": title, "status": status, "detail": detail, **extra}, status=status, content_type=PROBLEM
    )


def _managed_vehicle(request: HttpRequest, vehicle_id: int) -> Vehicle | JsonResponse:
    """The vehicle if the user manages it; 404 if they cannot see it, 403 if they see it without the role."""
    vehicle = vehicles_for(request.user, roles=[Role.FLEET_MANAGER]).filter(pk=vehicle_id).first()
    if vehicle is not None:
        return vehicle
    if vehicles_for(request.user).filter(pk=vehicle_id).exists():
        return _problem(403, "not allowed", "only the organisation's fleet managers command its vehicles")
    return _problem(404, "not found", f"no vehicle {vehicle_id}")


def _body(request: HttpRequest) -> tuple[dict[str, Any], bool]:
    if request.content_type == "application/json":
        try:
            data = json.loads(request.body or b"{}")
        except ValueError:
            data = None
        return (data if isinstance(data, dict) else {}), True
    return request.POST.dict(), False


def _answer(
    request: HttpRequest, is_json: bool, body: dict[str, Any], *, error: JsonResponse | None = None
) -> HttpResponse:
    if is_json or (error is not None and error.status_code in (403, 404)):  # who may: the status says it, always
        return error if error is not None else JsonResponse(body)
    if error is not None:
        messages.error(request, json.loads(error.content)["detail"])
    else:
        messages.success(request, body.get("message", "done"))
    return redirect("dashboard")


def _label(request: HttpRequest) -> str:
    return request.user.get_username()


@login_required
@require_POST
def trip_target(request: HttpRequest, vehicle_id: int) -> HttpResponse:
    vehicle = _managed_vehicle(request, vehicle_id)
    data, is_json = _body(request)
    if isinstance(vehicle, JsonResponse):
        return _answer(request, is_json, {}, error=vehicle)
    form = TripTargetForm(data)
    if not form.is_valid():
        return _answer(request, is_json, {}, error=_problem(400, "invalid request", form.errors.as_text()))
    try:
        plan = trip_target_set(
            vehicle=vehicle,
            target_soc_pct=form.cleaned_data["target_soc_pct"],
            actor_user_id=request.user.pk,
            actor_label=_label(request),
        )
    except FleetError as exc:
        return _answer(request, is_json, {}, error=_problem(409, "refused", str(exc)))
    body = {
        "vehicle_id": vehicle.pk,
        "departure_at": plan.departure_at.isoformat(),
        "target_soc_pct": plan.target_soc_pct,
        "message": f"{vehicle.name}: {plan.target_soc_pct} % for the departure at {plan.departure_at:%a %H:%M} UTC",
    }
    return _answer(request, is_json, body)


@login_required
@require_POST
def discharge(request: HttpRequest, vehicle_id: int) -> HttpResponse:
    vehicle = _managed_vehicle(request, vehicle_id)
    data, is_json = _body(request)
    if isinstance(vehicle, JsonResponse):
        return _answer(request, is_json, {}, error=vehicle)
    form = DischargeForm(data)
    if not form.is_valid():
        return _answer(request, is_json, {}, error=_problem(400, "invalid request", form.errors.as_text()))
    try:
        started = discharge_now(
            vehicle=vehicle,
            power_kw=form.cleaned_data["power_kw"],
            minutes=form.cleaned_data["minutes"],
            actor_user_id=request.user.pk,
            actor_label=_label(request),
        )
    except DischargeRefused as exc:
        status = 502 if exc.sent else 409
        return _answer(request, is_json, {}, error=_problem(status, "refused", exc.reason, sent=exc.sent))
    body = {
        "vehicle_id": vehicle.pk,
        "station_id": started.station_id,
        "power_kw": started.power_w / 1000,
        "until": started.until.isoformat(),
        "message": f"{vehicle.name} discharging {started.power_w / 1000:g} kW until {started.until:%H:%M} UTC",
    }
    return _answer(request, is_json, body)
