"""The project's apps and the optional modules each may ship (``pages``, ``api_urls``, ``routing``, ``tasks``).

One place for the list of apps and for "import it if the app has one": URLs, WebSockets and the beat schedule are
all collected this way, so a new app or module is picked up everywhere alike.
"""

from __future__ import annotations

import importlib
from types import ModuleType

PROJECT_APPS = ("vpp", "chargers", "fleet", "markets")


def app_modules(suffix: str) -> list[ModuleType]:
    """``<app>.<suffix>`` for each project app that has it, in ``PROJECT_APPS`` order.

    Only the module itself being absent is skipped: an import error raised from inside it propagates.
    """
    found = []
    for label in PROJECT_APPS:
        name = f"{label}.{suffix}"
        try:
            found.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
    return found
