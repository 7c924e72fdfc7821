"""Reads of utility programs: who sees which program, and a program's credentials (files and environment).

Tenancy: operators see every program; members of an organisation see its programs: bidding admins (who enrol the
organisation's portfolios in programs, as they bid them in markets) may change them, fleet managers read them
(their cars are dispatched). A utility's own users are the other side of these connections: they see none.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.db.models import Q, QuerySet

from fleet.models import Organisation, Role
from fleet.selectors import is_operator, organisations_for
from markets.regulation.models import ReserveDeployment
from vpp.utility.models import Protocol, ReportKind, UtilityEvent, UtilityProgram, UtilityReport

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


def event_latest(program: UtilityProgram, event_ref: str) -> UtilityEvent | None:
    """The newest stored version of a utility's event."""
    return program.events.filter(event_ref=event_ref[:120]).order_by("-modification").first()


def event_newer(program: UtilityProgram, event_ref: str, modification: int) -> UtilityEvent | None:
    """The newest stored version of the event if it is newer than ``modification`` (then a version of that number
    is a delayed or replayed message, never applied over it)."""
    latest = event_latest(program, event_ref)
    return latest if latest is not None and latest.modification > modification else None


def event_baseline_at(*, program: UtilityProgram, event_id: int) -> datetime | None:
    """When the event's baseline was measured: the start of its first deployment, whichever version made it (each
    version keeps its first deployment's ref, ``dispatch_ref``); None before the first."""
    event_ref = UtilityEvent.objects.filter(pk=event_id).values_list("event_ref", flat=True).first()
    refs = UtilityEvent.objects.filter(program=program, event_ref=event_ref).exclude(dispatch_ref="")
    first = ReserveDeployment.objects.filter(
        portfolio=program.portfolio, event_id__in=refs.values_list("dispatch_ref", flat=True)
    ).order_by("start")
    return first.values_list("start", flat=True).first()


def program_refs(program_id: int, field: str) -> Q:
    """The refs a program's events put in force (``<protocol>:<pk>:``, as :func:`vpp.utility.dispatch.reserve_ref`
    makes them) in ``field`` (``event_id`` of a reserve deployment, ``source_ref`` of a power cap)."""
    found = Q()
    for protocol in Protocol.values:
        found |= Q(**{f"{field}__startswith": f"{protocol}:{program_id}:"})
    return found


def program_deployment_ids(*, program_id: int, among: list[int]) -> list[int]:
    """Which of the reserve deployments ``among`` (ids) a program's events made."""
    rows = ReserveDeployment.objects.filter(program_refs(program_id, "event_id"), pk__in=among)
    return list(rows.values_list("pk", flat=True))


def responses_of(program: UtilityProgram, event_ref: str) -> dict[tuple[int, str], UtilityReport]:
    """The 2030.5 Responses stored for an event (any version), by (status, endDeviceLFDI): an accepted one wins."""
    found: dict[tuple[int, str], UtilityReport] = {}
    rows = program.reports.filter(kind=ReportKind.EVENT, event__event_ref=event_ref[:120]).order_by("id")
    for row in rows:
        key = (int(row.values.get("status", 0)), str(row.values.get("endDeviceLFDI", "")))
        if key not in found or (row.accepted and not found[key].accepted):
            found[key] = row
    return found


class CredentialError(ValueError):
    """A program's credential is not where its configuration says (the connection reports it as its error)."""


# Each organisation's credentials are its own: files in its own directory, secrets in variables of its own prefix.
# A tenant cannot make the aggregator present another organisation's (or the aggregator's own) keys or secrets to
# a server the tenant names. The answers never depend on whether a file exists or a variable is set: nothing is
# learnt about the server's files from a refusal.
CREDENTIAL_NAME = "a file name inside the organisation's credentials directory (no '..', not absolute)"


ENDPOINT_RULE = "an https URL (plain http only where the operator sets UTILITY_ALLOW_HTTP, for tests)"


def endpoint_allowed(url: str) -> bool:
    """``https://...``; ``http://...`` only with ``UTILITY_ALLOW_HTTP`` (a credential or secret would go in clear)."""
    return url.startswith("https://") or (settings.UTILITY_ALLOW_HTTP and url.startswith("http://"))


def credentials_dir(organisation: Organisation) -> Path:
    """``UTILITY_CREDENTIALS_DIR/<organisation slug>``: where its programs' certificates and keys are."""
    return Path(settings.UTILITY_CREDENTIALS_DIR) / organisation.slug


def secret_env_prefix(organisation: Organisation) -> str:
    """``UTILITY_ORG<id>_``: the organisation's secrets' environment variables start with it (by id: a slug may hold
    characters an environment variable cannot, and two slugs could map to the same name)."""
    return f"UTILITY_ORG{organisation.pk}_"


def secret_env_allowed(name: str, organisation: Organisation) -> bool:
    return (
        bool(SECRET_ENV.match(name))
        and name.startswith(secret_env_prefix(organisation))
        and len(name) > len(secret_env_prefix(organisation))
    )


def credential_path(name: str, organisation: Organisation) -> Path:
    """``name`` (relative to the organisation's credentials directory) resolved inside that directory; raises
    :class:`CredentialError` (always the same message) for a name leading outside it: ``..``, an absolute path, a
    link out of the directory."""
    parts = Path(name).parts
    if not name or "\\" in name or "\x00" in name or Path(name).is_absolute() or ".." in parts:
        raise CredentialError(CREDENTIAL_NAME)
    base = credentials_dir(organisation).resolve()
    path = (base / name).resolve()
    if not path.is_relative_to(base) or path == base:
        raise CredentialError(CREDENTIAL_NAME)
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
    organisation = program.organisation
    files: dict[str, Path | None] = {}
    for field in ("cert_file", "key_file", "ca_file"):
        name = getattr(program, field)
        if not name:
            files[field] = None
            continue
        try:
            path = credential_path(name, organisation)
        except CredentialError as exc:
            raise CredentialError(f"{field} {name!r}: {exc}") from None
        if not path.is_file():
            raise CredentialError(f"{field} {name!r}: no such file in the organisation's credentials directory")
        files[field] = path
    secret = None
    if program.secret_env:
        if not secret_env_allowed(program.secret_env, organisation):
            prefix = secret_env_prefix(organisation)
            raise CredentialError(f"secret_env {program.secret_env!r}: must be an environment variable {prefix}*")
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
