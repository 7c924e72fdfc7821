from django.urls import path

from markets import views

urlpatterns = [
    path("markets/bidding/", views.bidding_day, name="markets-bidding"),
    path("markets/bids/<int:bid_id>/edit/", views.bid_edit, name="markets-bid-edit"),
    path("markets/bids/action/", views.bids_action, name="markets-bids-action"),
]
