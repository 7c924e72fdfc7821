"""Status pages of the utility connections: per program, last contact, last event, last report and errors.

Scoped like the API (``vpp.utility.selectors.programs_for``): a program of another organisation is 404.
"""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render

from vpp.utility.selectors import programs_for

PAGE_ROWS = 50


@login_required
def programs_page(request: HttpRequest) -> HttpResponse:
    return render(request, "vpp/utility_programs.html", {"programs": programs_for(request.user).order_by("name")})


@login_required
def program_page(request: HttpRequest, pk: int) -> HttpResponse:
    program = get_object_or_404(programs_for(request.user), pk=pk)
    context = {
        "program": program,
        "events": program.events.all()[:PAGE_ROWS],
        "reports": program.reports.select_related("event")[:PAGE_ROWS],
        "changes": program.changes.order_by("-at")[:PAGE_ROWS],
    }
    return render(request, "vpp/utility_program.html", context)
