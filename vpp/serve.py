"""Serve the project's ASGI app with Daphne: ``python -m vpp.serve PORT [DB_NAME]`` (used by ``regulation replay``).

The same settings as ``make run``; ``DB_NAME`` overrides the database name only (a test database, when the
replay runs under pytest).
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    port = sys.argv[1]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
    from django.conf import settings

    if len(sys.argv) > 2 and sys.argv[2]:
        settings.DATABASES["default"]["NAME"] = sys.argv[2]
    import django

    django.setup()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", "127.0.0.1", "-p", port, "--websocket_timeout", "-1", "-v", "0", "vpp.asgi:application"]
    )


if __name__ == "__main__":
    main()
