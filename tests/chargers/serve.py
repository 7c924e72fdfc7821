"""Run the real ASGI app under Daphne against the test database: ``python -m tests.chargers.serve PORT DB_NAME``.

Used by the live-server fixture: a separate process, real sockets, the same settings as production except the
database name, which pytest-django switched to the test database in the parent.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    port, db_name = sys.argv[1], sys.argv[2]
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
    from django.conf import settings

    settings.DATABASES["default"]["NAME"] = db_name
    import django

    django.setup()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", "127.0.0.1", "-p", port, "--websocket_timeout", "-1", "-v", "1", "vpp.asgi:application"]
    )


if __name__ == "__main__":
    main()
