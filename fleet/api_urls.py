"""REST routes of the fleet app, mounted under /api/."""

from __future__ import annotations

from django.urls import URLPattern, URLResolver, path
from rest_framework.routers import DefaultRouter

from fleet.api import FleetViewSet, FlexibilityViewSet, VehicleViewSet
from fleet.station_api import StationCommandList, StationCommandsOfStation, station_call_view

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("fleet/fleets", FleetViewSet, basename="fleet-fleet")
router.register("fleet/vehicles", VehicleViewSet, basename="fleet-vehicle")
router.register("fleet/flexibility", FlexibilityViewSet, basename="fleet-flexibility")

urlpatterns: list[URLPattern | URLResolver] = [
    *router.urls,
    path("stations/<str:station_id>/call", station_call_view, name="station-call"),
    path("stations/<str:station_id>/commands", StationCommandsOfStation.as_view(), name="station-commands"),
    path("station-commands/", StationCommandList.as_view(), name="station-command-list"),
]
