"""TLS for the CSMS connection (OCPP security profiles 2 and 3): the CA bundle the server certificate must chain to,
and, for profile 3, this station's client certificate and key."""

from __future__ import annotations

import ssl


def client_context(*, ca_file: str = "", cert_file: str = "", key_file: str = "") -> ssl.SSLContext:
    """A verifying client context: TLS 1.2 or newer, the server's name checked against its certificate.

    ``ca_file`` empty: the system's trust store (a CSMS with a public certificate). ``cert_file``/``key_file``:
    the station's certificate chain (PEM, leaf first) and key, presented when the server asks (profile 3).
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        context.load_cert_chain(cert_file, key_file or None)
    return context
