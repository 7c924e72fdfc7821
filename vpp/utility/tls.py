"""The TLS context a protocol client connects with (``httpx``), from the program's credentials."""

from __future__ import annotations

import ssl

from vpp.utility.selectors import Credentials


def tls_context(credentials: Credentials) -> ssl.SSLContext:
    """The server checked against ``ca_file`` (the system's CAs without one), our certificate presented when set."""
    context = ssl.create_default_context(cafile=str(credentials.ca_file) if credentials.ca_file else None)
    if credentials.cert_file is not None and credentials.key_file is not None:
        context.load_cert_chain(str(credentials.cert_file), str(credentials.key_file), credentials.secret)
    return context
