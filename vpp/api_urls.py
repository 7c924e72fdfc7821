"""REST routes of the vpp app (mounted under /api/ by ``vpp/urls.py``): the regulation intake.

Paths and names are those the intake had under ``markets``; the read endpoints of ``/api/regulation/`` stay in
``markets/regulation/api_urls.py``.
"""

from __future__ import annotations

from django.urls import path

from vpp.intake import api

urlpatterns = [
    path("regulation/signal", api.SignalIntakeView.as_view(), name="regulation-signal"),
    path("regulation/reserve", api.ReserveDeploymentView.as_view(), name="regulation-reserve"),
]
