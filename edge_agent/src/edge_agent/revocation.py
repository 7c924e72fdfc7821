"""Revocation of signing certificates: a CRL signed by the signing certificate's issuer, fetched and cached.

The CSMS publishes its sub-CA's CRL at ``/pki/crl`` (DER, RFC 5280; the sub-CA issues firmware-signing certificates).
Before a signed package (firmware, configuration bundle) is installed, the agent fetches the CRL from
``[firmware] crl_url`` (default: the CSMS's base URL + ``/pki/crl``) and keeps the newest CRL whose signature
verifies with the issuer's key in a cache file per issuer. The issuer is the certificate the signing certificate's
chain was just verified through up to the trust anchor (``edge_agent.signing``), so a CRL is believed only as far as
that anchor is. Then:

- a signing certificate the CRL lists is refused (``CertificateRevoked``);
- with no fresh CRL of that issuer (none fetched or cached, or the newest past its nextUpdate + ``crl_grace_s``),
  the package is refused too, for a reason of its own (``RevocationUnknown``): an agent that cannot learn of a
  revocation must not act as if there was none;
- a CRL that does not verify with the issuer's key (someone else's, tampered, or not a CRL) is ignored; one older
  than the cached one does not replace it, and a certificate listed on either the cached or the fetched CRL is
  revoked: a CRL from before a revocation, replayed, cannot undo it.

Only the signing certificate is checked: an intermediate's revocation would need its own issuer's CRL, which the
CSMS does not publish (its root CA signs nothing but the sub-CA). No Django: the agent is a separate program.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import ssl
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from edge_agent.signing import CertificateRejected

MAX_CRL_BYTES = 4 * 1024 * 1024
CRL_PATH = "/pki/crl"


class CertificateRevoked(CertificateRejected):
    """The signing certificate is on its issuer's CRL."""


class RevocationUnknown(Exception):
    """No fresh CRL of the signing certificate's issuer could be had: whether it is revoked is unknown."""


@dataclass(frozen=True)
class CrlSettings:
    url: str = ""  # where the issuer's CRL is fetched (http/https); empty: nowhere, only the cache is used
    cache_dir: str = ""  # where the newest good CRL of each issuer is kept; empty: not kept
    grace_s: float = 86_400.0  # a CRL is still fresh this long after its nextUpdate (a CSMS briefly unreachable)
    ca_file: str = ""  # CA bundle an https URL's server must chain to; empty: the system trust store
    timeout_s: float = 10.0


def default_crl_url(csms_url: str) -> str:
    """The CSMS's own CRL for its OCPP URL: ws(s)://host[:port][/prefix]/ocpp -> http(s)://host[:port][/prefix]/pki/crl."""
    parts = urllib.parse.urlsplit(csms_url)
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, "")
    if not scheme or not parts.netloc:
        return ""
    path = parts.path.rstrip("/")
    prefix = path[: path.rfind("/ocpp")] if "/ocpp" in path else ""
    return urllib.parse.urlunsplit((scheme, parts.netloc, prefix + CRL_PATH, "", ""))


def crl_fetch(url: str, *, ca_file: str = "", timeout_s: float = 10.0, max_bytes: int = MAX_CRL_BYTES) -> bytes:
    """GET the CRL at ``url`` (blocking: run it in a thread); ``OSError`` when it cannot be had."""
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("http", "https"):
        raise OSError(f"only http(s) CRL locations are supported: {url[:80]}")
    context = ssl.create_default_context(cafile=ca_file or None) if scheme == "https" else None
    with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:  # noqa: S310 - scheme checked
        body = bytes(response.read(max_bytes + 1))
    if len(body) > max_bytes:
        raise OSError(f"CRL at {url[:80]} larger than {max_bytes} bytes")
    return body


def crl_parse(data: bytes) -> x509.CertificateRevocationList | None:
    """A CRL from DER (as /pki/crl serves it) or PEM; None when ``data`` is neither."""
    for load in (x509.load_der_x509_crl, x509.load_pem_x509_crl):
        try:
            return load(data)
        except ValueError:
            continue
    return None


def crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    """True when ``issuer`` issued ``crl``: its name, and a signature that verifies with its key."""
    if crl.issuer != issuer.subject:
        return False
    try:
        return bool(crl.is_signature_valid(issuer.public_key()))  # type: ignore[arg-type]
    except (TypeError, ValueError):  # a key type that cannot sign CRLs
        return False


def _cache_path(cache_dir: str, issuer: x509.Certificate) -> Path:
    key = issuer.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(issuer.subject.public_bytes() + key).hexdigest()[:32]
    return Path(cache_dir) / f"crl-{digest}.der"


def _cache_write(path: Path, der: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(der)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _issuer_name(issuer: x509.Certificate) -> str:
    try:
        return issuer.subject.rfc4514_string()
    except ValueError:
        return "the issuer"


def revocation_check(
    cert: x509.Certificate,
    issuer: x509.Certificate,
    settings: CrlSettings,
    *,
    now: datetime,
    fetch: Callable[..., bytes] = crl_fetch,
) -> None:
    """Raise ``CertificateRevoked`` when ``issuer``'s newest good CRL lists ``cert``, ``RevocationUnknown`` when there
    is no fresh one; return when ``cert`` is not revoked. Fetches (blocking) and updates the cache."""
    name = _issuer_name(issuer)
    candidates: list[x509.CertificateRevocationList] = []
    problems: list[str] = []
    cache = _cache_path(settings.cache_dir, issuer) if settings.cache_dir else None
    cached: x509.CertificateRevocationList | None = None
    if cache is not None and cache.is_file():
        with contextlib.suppress(OSError):
            cached = crl_parse(cache.read_bytes())
        if cached is not None and crl_signed_by(cached, issuer):
            candidates.append(cached)
        else:
            cached = None
    if settings.url:
        try:
            data = fetch(settings.url, ca_file=settings.ca_file, timeout_s=settings.timeout_s)
        except (OSError, ValueError) as exc:
            problems.append(f"cannot fetch {settings.url}: {exc}")
        else:
            fetched = crl_parse(data)
            if fetched is None:
                problems.append(f"{settings.url} did not answer a CRL")
            elif not crl_signed_by(fetched, issuer):
                problems.append(f"the CRL from {settings.url} is not signed by {name}: ignored")
            else:
                candidates.append(fetched)
                if cache is not None and (cached is None or fetched.last_update_utc >= cached.last_update_utc):
                    with contextlib.suppress(OSError):  # a full disk must not stop the check itself
                        _cache_write(cache, fetched.public_bytes(serialization.Encoding.DER))
    else:
        problems.append("no CRL location configured ([firmware] crl_url)")
    if not candidates:
        raise RevocationUnknown(f"no CRL of {name}: {'; '.join(problems)}")
    crl = max(candidates, key=lambda each: each.last_update_utc)
    next_update = crl.next_update_utc
    if next_update is None or now > next_update + timedelta(seconds=settings.grace_s):
        until = next_update.isoformat() if next_update is not None else "no nextUpdate"
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise RevocationUnknown(f"the newest CRL of {name} is stale (next update {until}){detail}")
    # Listed on any CRL the issuer signed (the cached one and the one just fetched may carry the same second as
    # thisUpdate): revocation is final, and a replayed CRL from before it must not hide it.
    entry = next(
        (e for each in candidates if (e := each.get_revoked_certificate_by_serial_number(cert.serial_number))), None
    )
    if entry is not None:
        raise CertificateRevoked(
            f"signing certificate {cert.serial_number:x} revoked {entry.revocation_date_utc.isoformat()} "
            f"(CRL of {name})"
        )
