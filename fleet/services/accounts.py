"""Organisations, their people and their API keys: operators script them (``manage.py org``, ``user``,
``token``) and users issue and revoke their own keys (``/account/api-keys/``)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any, cast

from django.contrib.auth.models import User
from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from django.utils.text import slugify

from fleet import selectors
from fleet.models import (
    ApiKey,
    ApiScope,
    Membership,
    Organisation,
    Role,
)
from fleet.services.errors import FleetError

# --- Organisations and their people ---------------------------------------------------------------------------------

OPERATOR = "operator"  # not a membership role: operators are Django staff and see every organisation


def organisation_add(*, slug: str, name: str) -> tuple[Organisation, bool]:
    """Create organisation ``slug`` (or rename it if it exists); returns it and whether it was created."""
    if not slug or slug != slugify(slug):
        raise FleetError(f"organisation slug must be a lowercase slug, got {slug!r}")
    organisation, created = Organisation.objects.update_or_create(slug=slug, defaults={"name": name or slug})
    return organisation, created


@transaction.atomic
def user_add(*, username: str, password: str, role: str, organisation_slug: str | None = None) -> tuple[User, bool]:
    """Create (or update) a user with one role: ``operator`` (Django staff: every organisation, the admin) or a
    membership role (``Role``) in organisation ``organisation_slug``. The password is validated by Django's
    validators and stored hashed; members are never staff (the admin is for operators)."""
    if role != OPERATOR and role not in Role.values:
        raise FleetError(f"role must be one of {', '.join([*Role.values, OPERATOR])}, got {role!r}")
    organisation = None
    if role != OPERATOR:
        if not organisation_slug:
            raise FleetError(f"a {role} belongs to an organisation: give --org")
        organisation = Organisation.objects.filter(slug=organisation_slug).first()
        if organisation is None:
            raise FleetError(f"no organisation {organisation_slug!r} (create it with: manage.py org add)")
    user, created = User.objects.get_or_create(username=username)
    try:
        validate_password(password, user)
    except ValidationError as exc:
        raise FleetError(" ".join(exc.messages)) from None
    user.set_password(password)
    user.is_staff = user.is_superuser = role == OPERATOR
    user.save()
    if organisation is not None:
        Membership.objects.update_or_create(user=user, organisation=organisation, defaults={"role": role})
    return user, created


# --- API keys -------------------------------------------------------------------------------------------------------

API_KEY_MAX_LIFETIME = timedelta(days=366)


@transaction.atomic
def api_key_issue(
    *,
    user: Any,
    scopes: Iterable[str],
    expires_at: datetime,
    organisation: Organisation | None = None,
    portfolio: str = "",
    name: str,
) -> tuple[ApiKey, str]:
    """A new API key for ``user`` and its raw value, which is shown once and never stored (only its hash is).

    Scopes must be :class:`ApiScope` values (at least one); the expiry is required, in the future and at most
    :data:`API_KEY_MAX_LIFETIME` ahead; the organisation, when given, must be one the user is a member of (any for an
    operator); a portfolio restricts a ``signal`` key to that portfolio's signal and reserve events.
    """
    scope_list = sorted(set(scopes))
    unknown = [s for s in scope_list if s not in ApiScope.values]
    if not scope_list or unknown:
        raise FleetError(f"scopes must be some of {', '.join(ApiScope.values)}; got {', '.join(unknown) or 'none'}")
    now = timezone.now()
    if expires_at <= now:
        raise FleetError("the expiry must be in the future")
    if expires_at > now + API_KEY_MAX_LIFETIME:
        raise FleetError(f"the expiry may be at most {API_KEY_MAX_LIFETIME.days} days ahead")
    if not user.is_active:
        raise FleetError(f"user {user.get_username()!r} is not active")
    if organisation is not None and not selectors.organisations_for(user).filter(pk=organisation.pk).exists():
        raise FleetError(f"user {user.get_username()!r} is not a member of {organisation.slug!r}")
    portfolio = portfolio.strip()
    if portfolio and organisation is not None:
        limit = selectors.key_portfolios_of(organisation_id=organisation.pk, portfolio=portfolio)
        if not limit:
            raise FleetError(f"portfolio {portfolio!r} is not a fleet of {organisation.slug!r}")
    name = name.strip() or f"{user.get_username()} {now:%Y-%m-%d}"
    if len(name) > 50 or len(portfolio) > 64:
        raise FleetError("the name may have at most 50 characters, the portfolio 64")
    key, raw = ApiKey.objects.create_key(
        user=user,
        scopes=scope_list,
        expiry_date=expires_at,
        organisation=organisation,
        portfolio=portfolio,
        name=name,
    )
    return cast(ApiKey, key), raw


def api_key_revoke(*, key: ApiKey) -> ApiKey:
    """Revoke a key (for good: the library refuses to un-revoke). Idempotent. Every edge refuses it at once, the
    regulation WebSocket's verification cache within its TTL."""
    if not key.revoked:
        key.revoked = True
        key.save(update_fields=["revoked"])
    return key
