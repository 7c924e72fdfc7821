"""HTML pages of the markets app, mounted at / by ``vpp/urls.py``: the bidding pages here, regulation's in
``markets/regulation/pages.py``."""

from __future__ import annotations

from django.urls import include, path

from markets import views

urlpatterns = [
    path("markets/bidding/", views.bidding_day, name="markets-bidding"),
    path("markets/bids/<int:bid_id>/edit/", views.bid_edit, name="markets-bid-edit"),
    path("markets/bids/action/", views.bids_action, name="markets-bids-action"),
    path("", include("markets.regulation.pages")),
]
