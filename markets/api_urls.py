"""REST routes of the markets app, mounted under /api/ by ``vpp/urls.py``: bids and awards here, regulation's
read endpoints in ``markets/regulation/api_urls.py``."""

from __future__ import annotations

from django.urls import include, path
from rest_framework.routers import DefaultRouter

from markets.api import AwardViewSet, BidViewSet
from markets.peak.api import SiteIntervalDataView

router = DefaultRouter()
router.register("markets/bids", BidViewSet, basename="markets-bid")
router.register("markets/awards", AwardViewSet, basename="markets-award")

urlpatterns = [
    *router.urls,
    path("", include("markets.regulation.api_urls")),
    path("peak/sites/<slug:site>/interval-data", SiteIntervalDataView.as_view(), name="peak-site-interval-data"),
]
