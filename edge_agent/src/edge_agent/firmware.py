"""Secure firmware update (OCPP 2.0.1 L01; the same in 2.1): check, download, verify, then install.

UpdateFirmware is answered at once: ``InvalidCertificate`` (and a SecurityEventNotification
``InvalidFirmwareSigningCertificate``) when the signing certificate does not chain to the firmware-signing trust
anchor, ``Rejected`` without a signature or a trust anchor, ``AcceptedCanceled`` when it replaces an update in
progress, else ``Accepted``. Then, in the background, FirmwareStatusNotifications follow the update:
Downloading -> Downloaded -> SignatureVerified -> Installing -> Installed (with a SecurityEventNotification
``FirmwareUpdated``). A package whose signature does not verify is reported ``InvalidSignature`` with a
SecurityEventNotification ``InvalidFirmwareSignature`` and is NOT installed; a download that fails after all retries
is ``DownloadFailed``. Before installing, the signing certificate's revocation is checked against its issuer's CRL
(``edge_agent.revocation``, fetched from ``[firmware] crl_url``): a revoked one is ``InvalidSignature`` with a
SecurityEventNotification ``InvalidFirmwareSigningCertificate``; when no fresh CRL can be had the package is not
installed either, reported ``InstallVerificationFailed`` with a SecurityEventNotification
``FirmwareRevocationStatusUnknown`` (not knowing is not the same as not revoked).

"Installing" in this agent records the new firmware (version = the package's file name, and its SHA-256) in the
agent's state and device model (``ChargingStation.FirmwareVersion``, reported in BootNotification); a real gateway
would hand the verified file to its updater here. Nothing unverified ever reaches that point.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import urllib.parse
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import PurePosixPath
from typing import Any

from edge_agent import sessionlog as slog
from edge_agent.clock import Clock, iso
from edge_agent.revocation import CertificateRevoked, CrlSettings, RevocationUnknown, revocation_check
from edge_agent.signing import (
    CertificateRejected,
    NoTrustAnchor,
    SignatureRejected,
    check_signing_certificate,
    load_trust_anchors,
    verify_package,
)

LOG = logging.getLogger("edge_agent.firmware")
MAX_PACKAGE_BYTES = 64 * 1024 * 1024
DOWNLOAD_TIMEOUT_S = 60.0
VERSION_KEY, SHA256_KEY = "firmware:version", "firmware:sha256"
REVOCATION_UNKNOWN = "FirmwareRevocationStatusUnknown"  # security event: no fresh CRL, nothing installed


class DownloadError(Exception):
    pass


def fetch(url: str, *, max_bytes: int = MAX_PACKAGE_BYTES, timeout_s: float = DOWNLOAD_TIMEOUT_S) -> bytes:
    """GET an http(s) URL into memory, at most ``max_bytes`` (blocking: run it in a thread)."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise DownloadError(f"only http(s) locations are supported: {url[:80]}")
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310 - scheme checked above
            body = bytes(response.read(max_bytes + 1))
    except OSError as exc:  # URLError, HTTPError, timeouts, resets
        raise DownloadError(str(exc)) from exc
    if len(body) > max_bytes:
        raise DownloadError(f"package larger than {max_bytes} bytes")
    return body


def version_of(location: str) -> str:
    """The firmware version recorded for a package: its file name (UpdateFirmware carries no version field)."""
    name = PurePosixPath(urllib.parse.urlsplit(location).path).name
    return name[:50] or "unknown"


@dataclass(frozen=True)
class FirmwareRequest:
    request_id: int
    location: str
    retrieve_at: datetime | None
    install_at: datetime | None
    signature: str
    signing_certificate: str
    retries: int = 0
    retry_interval_s: float = 30.0


@dataclass(frozen=True)
class Decision:
    status: str  # UpdateFirmwareStatusEnum
    reason: str = ""  # statusInfo.reasonCode
    info: str = ""


class FirmwareUpdater:
    """One station's firmware updates. ``emit(action, payload)`` queues a station-initiated message."""

    def __init__(
        self,
        station_id: str,
        *,
        clock: Clock,
        trust_anchor: str,
        emit: Callable[[str, dict[str, Any]], None],
        kv_get: Callable[[str], str | None],
        kv_set: Callable[[str, str], None],
        on_installed: Callable[[str], None] = lambda version: None,
        download: Callable[[str], bytes] = fetch,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        crl: CrlSettings | None = None,
    ) -> None:
        self.station_id = station_id
        self.clock = clock
        self.trust_anchor = trust_anchor
        self.crl = crl or CrlSettings()  # no CRL location: every package is refused as revocation unknown
        self._emit = emit
        self._kv_get, self._kv_set = kv_get, kv_set
        self._on_installed = on_installed
        self._download = download
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None
        self._pending: tuple[FirmwareRequest, Decision] | None = None
        self._security_pending: tuple[str, str] | None = None

    @property
    def installed_version(self) -> str | None:
        return self._kv_get(VERSION_KEY) or None

    @property
    def busy(self) -> bool:
        return self._task is not None and not self._task.done()

    # -- the request ---------------------------------------------------------------------------------------------
    def decide(self, request: FirmwareRequest) -> Decision:
        """The UpdateFirmware answer; ``proceed()`` (after the answer went out) acts on it."""
        self._pending, self._security_pending = None, None
        if not request.signature or not request.signing_certificate:
            # Unsigned firmware is never installed: the signature is what makes an update trustworthy.
            return self._refuse(
                request, Decision("Rejected", "NoSignature", "signature and signingCertificate required")
            )
        try:
            anchors = load_trust_anchors(self.trust_anchor)
        except NoTrustAnchor as exc:
            slog.log_event(self.station_id, "firmware_refused", level=logging.ERROR, reason=str(exc))
            return self._refuse(request, Decision("Rejected", "NoTrustAnchor", str(exc)))
        try:
            check_signing_certificate(request.signing_certificate, anchors, now=self.clock.wall())
        except CertificateRejected as exc:
            self._security_pending = ("InvalidFirmwareSigningCertificate", str(exc))
            return self._refuse(request, Decision("InvalidCertificate", "InvalidCertificate", str(exc)))
        decision = Decision("AcceptedCanceled" if self.busy else "Accepted")
        self._pending = (request, decision)
        return decision

    def _refuse(self, request: FirmwareRequest, decision: Decision) -> Decision:
        slog.log_event(
            self.station_id,
            "firmware_refused",
            level=logging.WARNING,
            request_id=request.request_id,
            status=decision.status,
            reason=decision.info,
        )
        return decision

    def proceed(self) -> None:
        """After the answer: report a refused certificate, or (re)start the update in the background."""
        if self._security_pending is not None:
            kind, info = self._security_pending
            self._security_pending = None
            self._security_event(kind, info)
        if self._pending is None:
            return
        request, _ = self._pending
        self._pending = None
        if self._task is not None and not self._task.done():
            self._task.cancel()  # the new request replaces it (L01.FR.24: AcceptedCanceled)
        self._task = asyncio.ensure_future(self._run(request))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    # -- the update ----------------------------------------------------------------------------------------------
    async def _run(self, request: FirmwareRequest) -> None:
        try:
            await self._update(request)
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug here must not take the agent down: report it and stay on the old firmware
            LOG.exception("firmware update %s failed", request.request_id)
            self._status(request, "InstallationFailed")

    async def _wait_until(self, at: datetime) -> None:
        delay = (at - self.clock.wall()).total_seconds()
        if delay > 0:
            await self._sleep(delay)

    async def _update(self, request: FirmwareRequest) -> None:
        if request.retrieve_at is not None and request.retrieve_at > self.clock.wall():
            self._status(request, "DownloadScheduled")
            await self._wait_until(request.retrieve_at)
        package = await self._fetch(request)
        if package is None:
            return
        self._status(request, "Downloaded")
        try:
            # Checked again: time has passed, and the anchor file may have changed since the request was accepted.
            cert, issuer = verify_package(
                package,
                signature_b64=request.signature,
                certificate_pem=request.signing_certificate,
                anchors=load_trust_anchors(self.trust_anchor),
                now=self.clock.wall(),
            )
        except (SignatureRejected, CertificateRejected, NoTrustAnchor) as exc:
            slog.log_event(
                self.station_id,
                "firmware_invalid_signature",
                level=logging.ERROR,
                request_id=request.request_id,
                reason=str(exc),
            )
            self._status(request, "InvalidSignature")
            self._security_event("InvalidFirmwareSignature", f"request {request.request_id}: {exc}")
            return
        try:
            await asyncio.to_thread(revocation_check, cert, issuer, self.crl, now=self.clock.wall())
        except CertificateRevoked as exc:
            self._refused_install(request, "firmware_signer_revoked", str(exc))
            self._status(request, "InvalidSignature")
            self._security_event("InvalidFirmwareSigningCertificate", f"request {request.request_id}: {exc}")
            return
        except RevocationUnknown as exc:
            self._refused_install(request, "firmware_revocation_unknown", str(exc))
            self._status(request, "InstallVerificationFailed")
            self._security_event(REVOCATION_UNKNOWN, f"request {request.request_id}: {exc}")
            return
        self._status(request, "SignatureVerified")
        if request.install_at is not None and request.install_at > self.clock.wall():
            self._status(request, "InstallScheduled")
            await self._wait_until(request.install_at)
        self._status(request, "Installing")
        version, digest = version_of(request.location), hashlib.sha256(package).hexdigest()
        self._kv_set(VERSION_KEY, version)
        self._kv_set(SHA256_KEY, digest)
        self._on_installed(version)
        slog.log_event(
            self.station_id, "firmware_installed", request_id=request.request_id, version=version, sha256=digest
        )
        self._status(request, "Installed")
        self._security_event("FirmwareUpdated", f"{version} sha256={digest}")

    def _refused_install(self, request: FirmwareRequest, event: str, reason: str) -> None:
        slog.log_event(self.station_id, event, level=logging.ERROR, request_id=request.request_id, reason=reason)

    async def _fetch(self, request: FirmwareRequest) -> bytes | None:
        attempts = 1 + max(0, request.retries)
        for attempt in range(1, attempts + 1):
            self._status(request, "Downloading")
            try:
                return await asyncio.to_thread(self._download, request.location)
            except DownloadError as exc:
                slog.log_event(
                    self.station_id,
                    "firmware_download_failed",
                    level=logging.WARNING,
                    request_id=request.request_id,
                    attempt=attempt,
                    reason=str(exc),
                )
            if attempt < attempts:
                await self._sleep(request.retry_interval_s)
        self._status(request, "DownloadFailed")
        return None

    # -- messages ------------------------------------------------------------------------------------------------
    def _status(self, request: FirmwareRequest, status: str) -> None:
        self._emit("FirmwareStatusNotification", {"status": status, "request_id": request.request_id})

    def _security_event(self, kind: str, info: str) -> None:
        self._emit(
            "SecurityEventNotification", {"type": kind, "timestamp": iso(self.clock.wall()), "tech_info": info[:255]}
        )
