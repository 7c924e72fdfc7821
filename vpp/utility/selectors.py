"""Reads of utility programs: who sees which program, and a program's credentials (files and environment).

Tenancy: operators see every program; members of an organisation see its programs: bidding admins (who enrol the
organisation's portfolios in programs, as they bid them in markets) may change them, fleet managers read them
(their cars are dispatched). A utility's own users are the other side of these connections: they see none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import QuerySet

from fleet.models import Role
from fleet.selectors import is_operator, organisations_for
from vpp.utility.models import UtilityEvent, UtilityProgram, UtilityReport

READ_ROLES = (Role.BIDDING_ADMIN, Role.FLEET_MANAGER)
WRITE_ROLES = (Role.BIDDING_ADMIN,)
SECRET_ENV = re.compile(r"^UTILITY_[A-Z0-9_]{1,55}$")


def programs_for(user: AbstractBaseUser | AnonymousUser, *, write: bool = False) -> QuerySet[UtilityProgram]:
    """The programs ``user`` may read (``write``: may change)."""
    organisations = organisations_for(user, roles=WRITE_ROLES if write else READ_ROLES)
    return UtilityProgram.objects.filter(organisation__in=organisations).select_related(
        "organisation", "product__operator"
    )


def may_see_programs(user: AbstractBaseUser | AnonymousUser) -> bool:
    return is_operator(user) or organisations_for(user, roles=READ_ROLES).exists()


def events_of(program: UtilityProgram) -> QuerySet[UtilityEvent]:
    return program.events.all()


def reports_of(program: UtilityProgram) -> QuerySet[UtilityReport]:
    return program.reports.select_related("event")


class CredentialError(ValueError):
    """A program's credential is not where its configuration says (the connection reports it as its error)."""


def credential_path(name: str) -> Path:
    """``name`` (a file name relative to ``UTILITY_CREDENTIALS_DIR``) resolved inside that directory; raises
    :class:`CredentialError` for a name leading outside it (``..``, an absolute path, a link out)."""
    base = Path(settings.UTILITY_CREDENTIALS_DIR).resolve()
    path = (base / name).resolve()
    if Path(name).is_absolute() or not path.is_relative_to(base):
        raise CredentialError(f"{name!r} is not a file under UTILITY_CREDENTIALS_DIR ({base})")
    return path


@dataclass(frozen=True)
class Credentials:
    """What a client presents: files (paths checked to exist) and a secret read from the environment."""

    cert_file: Path | None
    key_file: Path | None
    ca_file: Path | None
    secret: str | None

    def __repr__(self) -> str:  # never print the secret
        secret = "***" if self.secret else None
        return f"Credentials(cert={self.cert_file}, key={self.key_file}, ca={self.ca_file}, secret={secret})"


def program_credentials(program: UtilityProgram) -> Credentials:
    """The program's credentials, read now (a rotated certificate is picked up at the next connection)."""
    files: dict[str, Path | None] = {}
    for field in ("cert_file", "key_file", "ca_file"):
        name = getattr(program, field)
        if not name:
            files[field] = None
            continue
        path = credential_path(name)
        if not path.is_file():
            raise CredentialError(f"{field} {name!r}: no such file under UTILITY_CREDENTIALS_DIR")
        files[field] = path
    secret = None
    if program.secret_env:
        if not SECRET_ENV.match(program.secret_env):
            raise CredentialError(f"secret_env {program.secret_env!r}: must be an environment variable UTILITY_*")
        secret = os.environ.get(program.secret_env)
        if not secret:
            raise CredentialError(f"environment variable {program.secret_env} is not set")
    return Credentials(files["cert_file"], files["key_file"], files["ca_file"], secret)


def programs_to_run(
    *, protocols: list[str] | None = None, ids: list[int] | None = None, disabled: bool = False
) -> list[UtilityProgram]:
    """The enabled programs (``disabled``: the disabled ones too), read afresh."""
    rows = UtilityProgram.objects.select_related("product__operator", "organisation")
    if not disabled:
        rows = rows.filter(enabled=True)
    if protocols:
        rows = rows.filter(protocol__in=protocols)
    if ids:
        rows = rows.filter(pk__in=ids)
    return list(rows)
