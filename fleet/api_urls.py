"""REST routes of the fleet app, mounted under /api/."""

from __future__ import annotations

from rest_framework.routers import DefaultRouter

from fleet.api import FleetViewSet, FlexibilityViewSet, VehicleViewSet

router = DefaultRouter(trailing_slash=True)
router.include_root_view = False
router.register("fleet/fleets", FleetViewSet, basename="fleet-fleet")
router.register("fleet/vehicles", VehicleViewSet, basename="fleet-vehicle")
router.register("fleet/flexibility", FlexibilityViewSet, basename="fleet-flexibility")

urlpatterns = router.urls
