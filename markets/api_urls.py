"""REST routes of the markets app, mounted under /api/ by ``vpp/urls.py``. Each area keeps its own module."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("markets.regulation.api_urls")),
    path("", include("markets.bidding_api_urls")),
]
