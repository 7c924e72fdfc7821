"""TLS for the CSMS connection (OCPP security profiles 2 and 3): the CA bundle the server certificate must chain to,
and, for profile 3, this station's client certificate and key.

The key may be encrypted (PKCS#8, as ``manage.py pki station-cert`` writes it): its passphrase comes from the file
named by ``$EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE`` (its first line) or from ``$EDGE_AGENT_TLS_KEY_PASSPHRASE``, never
from the command line. Without one an encrypted key is refused with a clear error; OpenSSL is never left to prompt.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping

KEY_PASSPHRASE_ENV = "EDGE_AGENT_TLS_KEY_PASSPHRASE"  # noqa: S105 - the variable's name, not a secret


class TlsKeyError(ValueError):
    """The client certificate or key cannot be loaded (an encrypted key without its passphrase, a wrong one)."""


def key_passphrase_from_env(env: Mapping[str, str]) -> str:
    """The client key's passphrase: the first line of ``$EDGE_AGENT_TLS_KEY_PASSPHRASE_FILE``, else
    ``$EDGE_AGENT_TLS_KEY_PASSPHRASE``; "" when neither is set (an unencrypted key). Raises OSError."""
    path = env.get(KEY_PASSPHRASE_ENV + "_FILE", "")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    return env.get(KEY_PASSPHRASE_ENV, "")


def client_context(
    *, ca_file: str = "", cert_file: str = "", key_file: str = "", key_passphrase: str = ""
) -> ssl.SSLContext:
    """A verifying client context: TLS 1.2 or newer, the server's name checked against its certificate.

    ``ca_file`` empty: the system's trust store (a CSMS with a public certificate). ``cert_file``/``key_file``:
    the station's certificate chain (PEM, leaf first) and key, presented when the server asks (profile 3);
    ``key_passphrase`` opens an encrypted key. Raises TlsKeyError when they cannot be loaded.
    """
    context = ssl.create_default_context(cafile=ca_file or None)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert_file:
        secret = key_passphrase.encode()
        try:  # a callable, even for no passphrase: OpenSSL's own fallback would prompt on the terminal
            context.load_cert_chain(cert_file, key_file or None, password=lambda: secret)
        except ssl.SSLError as exc:
            hint = "wrong passphrase" if secret else f"encrypted? set {KEY_PASSPHRASE_ENV}_FILE"
            raise TlsKeyError(
                f"cannot load the client certificate {cert_file} and key {key_file} ({hint}): {exc}"
            ) from exc
    return context
