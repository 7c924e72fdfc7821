"""REST routes of regulation reports (mounted under /api/ through ``markets/api_urls.py``).

The intake (``regulation/signal``, ``regulation/reserve``) is the orchestrator's: ``vpp/api_urls.py``.
"""

from __future__ import annotations

from django.urls import path

from markets.regulation import api

urlpatterns = [
    path("regulation/scores", api.ScoreListView.as_view(), name="regulation-scores"),
    path("regulation/settlements", api.SettlementListView.as_view(), name="regulation-settlements"),
    path("regulation/settlement-lines", api.LineListView.as_view(), name="regulation-lines"),
    path("regulation/settlement-lines.csv", api.LineCsvView.as_view(), name="regulation-lines-csv"),
    path("regulation/reconciliation", api.ReconciliationView.as_view(), name="regulation-reconciliation"),
]
