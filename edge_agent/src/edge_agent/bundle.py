"""Signed configuration bundles: ``edge-agent apply-config`` installs an agent TOML only when it is signed.

OCPP has no message for "replace the agent's configuration file", so the bundle goes through the agent's own CLI
(run by the gateway's management tooling) and is checked exactly as firmware is (``edge_agent.signing``): signing
certificate chained to the configured firmware-signing trust anchor, signature over the bundle's bytes, and the
signing certificate not on its issuer's CRL (``edge_agent.revocation``; no fresh CRL: refused too). A valid bundle
must also be a valid agent configuration; it then replaces the target file atomically, and the agent uses it from
its next start. A refused bundle leaves the target untouched.
"""

from __future__ import annotations

import os
import tempfile
from datetime import datetime
from pathlib import Path

from edge_agent.config import load_config
from edge_agent.revocation import CrlSettings, revocation_check
from edge_agent.signing import load_trust_anchors, verify_package


def apply_config_bundle(
    *,
    bundle: bytes,
    signature_b64: str,
    certificate_pem: str,
    trust_anchor: str,
    target: Path,
    now: datetime,
    crl: CrlSettings,
) -> None:
    """Verify, check revocation, validate, then atomically replace ``target``. Raises the signing or revocation
    module's errors, or ConfigError."""
    cert, issuer = verify_package(
        bundle,
        signature_b64=signature_b64.strip(),
        certificate_pem=certificate_pem,
        anchors=load_trust_anchors(trust_anchor),
        now=now,
    )
    revocation_check(cert, issuer, crl, now=now)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(bundle)
            out.flush()
            os.fsync(out.fileno())
        load_config(tmp, env={})  # a signed but broken configuration must not replace a working one
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
