"""HTML pages of the markets app, mounted at / by ``vpp/urls.py``: the bidding pages here, regulation's in
``markets/regulation/pages.py``."""

from __future__ import annotations

from django.urls import include, path

from markets import views

urlpatterns = [
    path("markets/", views.markets_index, name="markets-index"),
    path("markets/bidding/", views.bidding_legacy, name="markets-bidding"),
    path("markets/bids/<int:bid_id>/edit/", views.bid_edit, name="markets-bid-edit"),
    path("markets/bids/action/", views.bids_action, name="markets-bids-action"),
    path("markets/<slug:operator>/<str:day>/", views.bidding_day_page, name="markets-day"),
    path("markets/<slug:operator>/<str:day>/bids.csv", views.bidding_day_csv, name="markets-day-csv"),
    path("markets/<slug:operator>/<str:day>/propose/", views.proposal_prepare_view, name="markets-day-propose"),
    path("", include("markets.regulation.pages")),
]
