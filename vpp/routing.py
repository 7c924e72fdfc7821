from django.urls import path

from vpp.dashboard.consumers import DashboardConsumer
from vpp.intake.consumers import RegulationSignalConsumer

websocket_urlpatterns = [
    path("ws/dashboard", DashboardConsumer.as_asgi()),
    path("ws/regulation", RegulationSignalConsumer.as_asgi()),
]
