"""ASGI entry point: HTTP through Django, WebSockets through each app's routing module."""

from __future__ import annotations

import importlib
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


def _websocket_patterns() -> list[URLPattern | URLResolver]:
    patterns: list[URLPattern | URLResolver] = []
    for label in ("chargers", "fleet", "markets", "vpp"):
        try:
            module = importlib.import_module(f"{label}.routing")
        except ModuleNotFoundError as exc:
            if exc.name != f"{label}.routing":
                raise
            continue
        patterns.extend(module.websocket_urlpatterns)
    return patterns


# OCPP stations authenticate with HTTP Basic inside their own consumer; browser sockets use the Django session.
application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": AuthMiddlewareStack(URLRouter(_websocket_patterns())),
    }
)
