from django.urls import path

from vpp.dashboard import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("dashboard/overview.json", views.dashboard_json, name="dashboard-json"),
]
