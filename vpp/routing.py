from channels.security.websocket import AllowedHostsOriginValidator
from django.urls import path

from vpp.dashboard.consumers import DashboardConsumer
from vpp.intake.consumers import RegulationSignalConsumer

websocket_urlpatterns = [
    # A browser's socket signed in by its session cookie: only pages of this site may open it (no cross-site reading
    # of the feed with a visitor's cookie). ws/regulation is for API clients, which send a key, not cookies.
    path("ws/dashboard", AllowedHostsOriginValidator(DashboardConsumer.as_asgi())),
    path("ws/regulation", RegulationSignalConsumer.as_asgi()),
]
