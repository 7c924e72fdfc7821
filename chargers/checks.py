"""Deployment checks of the CSMS's own (``manage.py check --deploy``), registered in ``chargers.apps``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from django.apps import AppConfig
from django.conf import settings
from django.core import checks


def _inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve())


@checks.register(checks.Tags.security, deploy=True)
def pki_passphrase_check(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """chargers.W001: the CA keys are encrypted files whose passphrase sits beside them (or would be generated there).

    Whoever can read ``var/`` (a backup, a copied disk, another service's bug) then holds both the encrypted keys and
    what decrypts them. Fine for ``make run``; not for production. PKCS#11 keys and a passphrase from the environment
    or from a file outside ``VPP_VAR_DIR`` and ``PKI_DIR`` are not reported."""
    if settings.PKI_PKCS11_MODULE or settings.PKI_PASSPHRASE:
        return []
    hint = (
        "Put the passphrase in a file outside VPP_VAR_DIR (0600, e.g. a systemd credential) and set "
        "PKI_PASSPHRASE_FILE to it, or keep the CA keys in an HSM (PKI_PKCS11_MODULE)."
    )
    if not settings.PKI_PASSPHRASE_FILE:
        message = "The PKI passphrase is not configured: one is generated into VPP_VAR_DIR, next to the CA keys."
        return [checks.Warning(message, hint=hint, id="chargers.W001")]
    path = Path(settings.PKI_PASSPHRASE_FILE)
    for directory, name in ((Path(settings.VAR_DIR), "VPP_VAR_DIR"), (Path(settings.PKI_DIR), "PKI_DIR")):
        if _inside(path, directory):
            message = f"PKI_PASSPHRASE_FILE {path} is inside {name} ({directory}), next to the CA keys."
            return [checks.Warning(message, hint=hint, id="chargers.W001")]
    return []
