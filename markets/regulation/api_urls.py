"""REST routes of regulation (mounted under /api/ through ``markets/api_urls.py``)."""

from __future__ import annotations

from django.urls import path

from markets.regulation import api as api

urlpatterns = [
    path("regulation/signal", api.SignalIntakeView.as_view(), name="regulation-signal"),
    path("regulation/reserve", api.ReserveDeploymentView.as_view(), name="regulation-reserve"),
    path("regulation/scores", api.ScoreListView.as_view(), name="regulation-scores"),
    path("regulation/settlements", api.SettlementListView.as_view(), name="regulation-settlements"),
    path("regulation/settlement-lines", api.LineListView.as_view(), name="regulation-lines"),
    path("regulation/settlement-lines.csv", api.LineCsvView.as_view(), name="regulation-lines-csv"),
    path("regulation/reconciliation", api.ReconciliationView.as_view(), name="regulation-reconciliation"),
]
