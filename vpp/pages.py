from django.urls import path

from vpp.dashboard import views
from vpp.utility import views as utility_views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/overview.json", views.dashboard_json, name="dashboard-json"),
    path("dashboard/history.json", views.history_json, name="dashboard-history-json"),
    path("dashboard/history.csv", views.history_csv, name="dashboard-history-csv"),
    path("dashboard/regulation.json", views.regulation_json, name="dashboard-regulation-json"),
    path("dashboard/vehicles/<int:vehicle_id>/trip-target", views.trip_target, name="dashboard-trip-target"),
    path("dashboard/vehicles/<int:vehicle_id>/discharge", views.discharge, name="dashboard-discharge"),
    path("utility/", utility_views.programs_page, name="utility-programs-page"),
    path("utility/<int:pk>/", utility_views.program_page, name="utility-program-page"),
]
