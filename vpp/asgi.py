"""ASGI entry point: HTTP through Django, WebSockets through each app's routing module."""

from __future__ import annotations

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
# Static files (the dashboard's JS, plotly.js from the plotly package) are served by the app itself, the same way
# in every environment: one process to run, nothing production-only.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import URLPattern, URLResolver  # noqa: E402

from vpp.discovery import app_modules  # noqa: E402


def _websocket_patterns() -> list[URLPattern | URLResolver]:
    return [pattern for module in app_modules("routing") for pattern in module.websocket_urlpatterns]


# OCPP stations authenticate with HTTP Basic inside their own consumer; browser sockets use the Django session.
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(_websocket_patterns())),
    }
)
