from __future__ import annotations

from django.urls import path

from chargers.api import station_call_view

urlpatterns = [
    path("stations/<str:station_id>/call", station_call_view, name="station-call"),
]
