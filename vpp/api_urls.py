"""REST routes of the vpp app (mounted under /api/ by ``vpp/urls.py``): the regulation intake and the utility programs.

Paths and names are those the intake had under ``markets``; the read endpoints of ``/api/regulation/`` stay in
``markets/regulation/api_urls.py``.
"""

from __future__ import annotations

from django.urls import path

from vpp.intake import api
from vpp.utility import api as utility_api

urlpatterns = [
    path("regulation/signal", api.SignalIntakeView.as_view(), name="regulation-signal"),
    path("regulation/reserve", api.ReserveDeploymentView.as_view(), name="regulation-reserve"),
    path("utility/programs/", utility_api.ProgramList.as_view(), name="utility-programs"),
    path("utility/programs/<int:pk>/", utility_api.ProgramDetail.as_view(), name="utility-program"),
    path("utility/programs/<int:pk>/events/", utility_api.ProgramEvents.as_view(), name="utility-program-events"),
    path("utility/programs/<int:pk>/reports/", utility_api.ProgramReports.as_view(), name="utility-program-reports"),
]
