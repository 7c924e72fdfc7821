"""Access hardening (issue 12): login lockout (django-axes), Content Security Policy (django-csp), and the
production switch that makes ``manage.py check --deploy`` clean."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.fleet.factories import UserFactory

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.django_db
def test_five_wrong_passwords_lock_the_username_out_even_with_the_right_one_next() -> None:
    # Given a staff user who can sign in to the admin
    UserFactory.create(username="ops", password="right-password-123", is_staff=True)
    browser = Client()
    # When someone tries five wrong passwords for it from one IP
    for _ in range(5):
        response = browser.post("/admin/login/", {"username": "ops", "password": "wrong", "next": "/admin/"})
        assert response.status_code in (200, 429)
    # Then even the right password is refused (429) for the cool-off
    locked = browser.post("/admin/login/", {"username": "ops", "password": "right-password-123", "next": "/admin/"})
    assert locked.status_code == 429
    assert "_auth_user_id" not in browser.session


@pytest.mark.django_db
def test_a_right_password_before_the_limit_signs_in() -> None:
    UserFactory.create(username="ops", password="right-password-123", is_staff=True)
    browser = Client()
    browser.post("/admin/login/", {"username": "ops", "password": "wrong", "next": "/admin/"})
    signed_in = browser.post("/admin/login/", {"username": "ops", "password": "right-password-123", "next": "/admin/"})
    assert signed_in.status_code == 302


@pytest.mark.django_db
def test_pages_carry_a_csp_that_allows_only_this_origin_and_the_pages_nonce() -> None:
    # Given a signed-in user on a page with an inline script (the regulation reports embed their chart that way)
    browser = Client()
    browser.force_login(UserFactory.create(is_staff=True))
    response = browser.get("/account/api-keys/")
    policy = response["Content-Security-Policy"]
    # Then scripts come from this origin only: no CDN, no unsafe-inline, no eval
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";") if d.strip())
    assert directives["default-src"] == "'self'"
    assert directives["script-src"].startswith("'self'")
    assert "unsafe-inline" not in directives["script-src"]
    assert "unsafe-eval" not in directives["script-src"]
    assert "http" not in directives["script-src"]
    assert directives["frame-ancestors"] == "'none'"


def test_no_template_hands_json_to_a_page_with_safe() -> None:
    # JSON goes through json_script: |safe would let a "</script>" in the data end the script
    offenders = [
        str(p)
        for folder in ("templates", "markets/templates", "fleet", "vpp", "chargers")
        for p in (ROOT / folder).rglob("*.html")
        if re.search(r"\|\s*safe\b", p.read_text())
    ]
    assert offenders == []


@pytest.mark.django_db
def test_inline_scripts_carry_the_nonce_of_the_policy() -> None:
    # Given the bidding page (an inline script drawing its chart from json_script data)
    browser = Client()
    browser.force_login(UserFactory.create(is_staff=True, is_superuser=True))
    response = browser.get("/markets/bidding/?operator=pjm", follow=True)
    assert response.status_code == 200
    html = response.content.decode()
    nonce = re.search(r"'nonce-([^']+)'", response["Content-Security-Policy"])
    # Then every inline script has the nonce the header names
    scripts = re.findall(r"<script(?![^>]*\bsrc=)([^>]*)>", html)
    inline = [attrs for attrs in scripts if "application/json" not in attrs]  # json_script data is not run
    assert inline
    assert nonce is not None
    assert all(f'nonce="{nonce.group(1)}"' in attrs for attrs in inline)


def _check_deploy(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("SECURE_", "DEBUG", "VPP_ENV"))}
    environ.update({"VPP_VAR_DIR": str(tmp_path), "DJANGO_SETTINGS_MODULE": "vpp.settings", **env})
    return subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_check_deploy_is_clean_in_production_mode(tmp_path: Path) -> None:
    # Given the production switch (and the PKI passphrase in a file outside var/, as chargers.W001 asks), when
    # Django's deployment checks run, then they find nothing
    passphrase = tmp_path / "secrets" / "pki-passphrase"
    passphrase.parent.mkdir()
    passphrase.write_text("a-pki-passphrase-kept-apart-from-var-0123")
    result = _check_deploy(tmp_path / "var", VPP_ENV="production", PKI_PASSPHRASE_FILE=str(passphrase))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_check_deploy_warns_in_the_default_development_mode(tmp_path: Path) -> None:
    # Given no switch (make run: plain http on 127.0.0.1), then the same checks do warn (the test above can fail)
    result = _check_deploy(tmp_path)
    assert result.returncode != 0
    assert "security.W012" in result.stdout + result.stderr
