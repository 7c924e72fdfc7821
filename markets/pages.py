"""HTML pages of the markets app, mounted at / by ``vpp/urls.py``. Each area keeps its own module."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("markets.regulation.pages")),
    path("", include("markets.bidding_pages")),
]
