"""Regulation pages (mounted at / through ``markets/pages.py``)."""

from __future__ import annotations

from django.urls import path

from markets.regulation import views

urlpatterns = [
    path("regulation/", views.regulation_reports, name="regulation-reports"),
    path("regulation/settlements.csv", views.regulation_lines_csv, name="regulation-settlements-csv"),
    path("regulation/export/<slug:kind>.csv", views.regulation_report_csv, name="regulation-export"),
    path("regulation/settlements/<int:pk>/audit", views.settlement_audit, name="regulation-audit"),
    path(
        "regulation/settlements/<int:pk>/lines/<int:line_pk>/readings.csv",
        views.settlement_line_readings_csv,
        name="regulation-line-readings",
    ),
]
