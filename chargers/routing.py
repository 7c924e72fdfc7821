"""WebSocket routes: the OCPP-J endpoint ``ws://HOST:PORT/ocpp/<station_id>``.

A device route: stations authenticate in the consumer (HTTP Basic), no Django session or user (``vpp.asgi``).
"""

from __future__ import annotations

from django.urls import re_path

from chargers import daphne_denial
from chargers.consumers import OcppConsumer

# Lets the consumer refuse a handshake with 401 (not Daphne's fixed 403); see chargers.daphne_denial.
daphne_denial.install()

device_websocket_urlpatterns = [
    re_path(r"^ocpp/(?P<station_id>[^/]{1,48})/?$", OcppConsumer.as_asgi()),
]
