"""Fleet dashboard pages: thin views over ``vpp.dashboard.selectors.dashboard_overview``, which shows a member
only their organisations' stations and vehicles (an operator all of them)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from vpp.dashboard.selectors import dashboard_overview


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    overview = dashboard_overview(user=request.user, at=datetime.now(UTC))
    return render(request, "vpp/dashboard.html", {"overview": overview, "overview_data": asdict(overview)})


@login_required
def dashboard_json(request: HttpRequest) -> JsonResponse:
    overview = dashboard_overview(user=request.user, at=datetime.now(UTC))
    return JsonResponse(asdict(overview))
