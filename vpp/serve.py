"""Serve the project's ASGI app with Daphne: ``python -m vpp.serve PORT [DB_NAME [VERBOSITY]]``.

Used by ``regulation replay`` and the live-server tests. The same settings as ``make run``; ``DB_NAME`` overrides
the database name only (a test database, when run under pytest); ``VERBOSITY`` is Daphne's ``-v`` (default 0,
1 adds the access log).
"""

from __future__ import annotations

import os
import sys

#: How every Daphne of this project runs (``make run``, the live tests, replays and benchmarks). Charger WebSockets
#: live for months, so no 24-h cut-off; a 60-s handshake timeout lets a reconnect wave of thousands of chargers
#: queue instead of being refused at 5 s and all retrying at once.
DAPHNE_OPTIONS = ("--websocket_timeout", "-1", "--websocket_connect_timeout", "60")


def main() -> None:
    port = sys.argv[1]
    verbosity = sys.argv[3] if len(sys.argv) > 3 else "0"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "vpp.settings")
    from django.conf import settings

    if len(sys.argv) > 2 and sys.argv[2]:
        settings.DATABASES["default"]["NAME"] = sys.argv[2]
    import django

    django.setup()
    from daphne.cli import CommandLineInterface

    CommandLineInterface().run(
        ["-b", "127.0.0.1", "-p", port, *DAPHNE_OPTIONS, "-v", verbosity, "vpp.asgi:application"]
    )


if __name__ == "__main__":
    main()
