"""The CA keys' passphrase is not kept next to the keys in production: ``VPP_ENV=production`` never generates one
into ``var/``, and ``manage.py check --deploy`` says when the file store's passphrase is missing or sits beside them.
The embedded default (development) still generates one, so ``make run`` needs no setup."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import checks
from django.test import override_settings

from chargers.pki import ca, storage
from chargers.pki.errors import PkiError

pytestmark = pytest.mark.django_db

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def var_dir(tmp_path: Path) -> Iterator[Path]:
    """A var/ of this test's own, with the PKI under it and no passphrase configured."""
    var = tmp_path / "var"
    var.mkdir()
    with override_settings(
        VAR_DIR=var, PKI_DIR=var / "pki", PKI_PASSPHRASE=None, PKI_PASSPHRASE_FILE=None, PKI_PKCS11_MODULE=None
    ):
        storage.signing_key_forget()
        yield var
    storage.signing_key_forget()


def test_production_refuses_to_generate_a_passphrase_next_to_the_keys(var_dir: Path) -> None:
    # Given production settings (no passphrase generated) and no passphrase configured
    # When the CA is created
    with override_settings(PKI_PASSPHRASE_GENERATE=False), pytest.raises(PkiError, match="PKI_PASSPHRASE_FILE"):
        ca.ca_init(organisation="Test CPO")
    # Then it is refused, naming what to set, and neither a passphrase nor a key was written
    assert not (var_dir / storage.PASSPHRASE_FILE_NAME).exists()
    assert list(var_dir.rglob("*.key.pem")) == []


def test_the_development_default_still_generates_an_owner_only_passphrase(var_dir: Path) -> None:
    # Given the embedded default, when the CA is created
    ca.ca_init(organisation="Test CPO")
    # Then a passphrase was generated into var/, readable by its owner only
    generated = var_dir / storage.PASSPHRASE_FILE_NAME
    assert generated.stat().st_mode & 0o077 == 0
    assert len(generated.read_text().strip()) >= 32


def _pki_warnings() -> list[str]:
    found = checks.run_checks(include_deployment_checks=True)
    return [m.id for m in found if m.id and m.id.startswith("chargers.")]


@pytest.mark.parametrize(
    ("where", "reported"),
    [
        ("none", True),  # generated into var/, beside the keys
        ("file in var", True),
        ("file in the pki dir", True),
        ("file elsewhere", False),
        ("environment", False),
        ("pkcs11", False),
    ],
)
def test_the_deployment_check_reports_a_passphrase_kept_beside_the_keys(
    var_dir: Path, tmp_path: Path, where: str, reported: bool
) -> None:
    # Given the passphrase configured in one way
    secrets_dir = tmp_path / "secrets"
    overrides: dict[str, str] = {
        "none": {},
        "file in var": {"PKI_PASSPHRASE_FILE": str(var_dir / "my-passphrase")},
        "file in the pki dir": {"PKI_PASSPHRASE_FILE": str(var_dir / "pki" / "passphrase")},
        "file elsewhere": {"PKI_PASSPHRASE_FILE": str(secrets_dir / "pki-passphrase")},
        "environment": {"PKI_PASSPHRASE": "a passphrase from the service manager"},
        "pkcs11": {"PKI_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so", "PKI_PKCS11_TOKEN_LABEL": "ca"},
    }[where]
    # When the deployment checks run
    with override_settings(**overrides):
        found = _pki_warnings()
    # Then the file store with its passphrase beside the keys (or none at all) is reported, nothing else
    assert found == (["chargers.W001"] if reported else [])


def test_manage_py_check_deploy_reports_it_in_production(tmp_path: Path) -> None:
    # Given production settings with no PKI passphrase configured
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DEBUG", "VPP_ENV", "PKI_"))}
    environ.update({"VPP_VAR_DIR": str(tmp_path), "VPP_ENV": "production"})
    # When the operator runs the deployment checks
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    # Then they report the passphrase
    assert "chargers.W001" in result.stdout + result.stderr
