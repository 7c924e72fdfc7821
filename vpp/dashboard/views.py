"""Fleet dashboard pages: thin views over ``vpp.dashboard.selectors.dashboard_overview``."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render

from vpp.dashboard.selectors import dashboard_overview


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    overview = dashboard_overview(user=request.user, at=datetime.now(UTC))
    return render(request, "vpp/dashboard.html", {"overview": overview, "overview_data": asdict(overview)})


@staff_member_required
def dashboard_json(request: HttpRequest) -> JsonResponse:
    overview = dashboard_overview(user=request.user, at=datetime.now(UTC))
    return JsonResponse(asdict(overview))
