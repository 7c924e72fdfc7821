from __future__ import annotations

from django.urls import path

from vpp.api import regulation_signal_view

urlpatterns = [
    path("regulation/signal", regulation_signal_view, name="regulation-signal"),
]
