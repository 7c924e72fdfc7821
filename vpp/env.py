"""Typed environment helpers that fail loudly on a bad value.

Every setting the project reads from the environment goes through one of these, so a typo such as
``DEBUG=ture`` stops the process at start-up with a clear message instead of silently meaning ``False``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import TypeVar


class ImproperlyConfiguredEnv(RuntimeError):
    """An environment variable holds a value its setting cannot take."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def env_str(name: str, default: str) -> str:
    return os.environ.get(name, default)


def env_opt(name: str) -> str | None:
    """A string, or None when the variable is unset or empty."""
    value = os.environ.get(name, "").strip()
    return value or None


def env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not a boolean (use one of 1/0, true/false, yes/no, on/off)")


def env_int(name: str, default: int, *, minimum: int | None = None, maximum: int | None = None) -> int:
    return _env_number(name, default, int, "an integer", minimum=minimum, maximum=maximum)


def env_float(name: str, default: float, *, minimum: float | None = None) -> float:
    return _env_number(name, default, float, "a number", minimum=minimum)


def env_decimal(name: str, default: Decimal) -> Decimal:
    return _env_number(name, default, Decimal, "a decimal number")


_Number = TypeVar("_Number", int, float, Decimal)


def _env_number(
    name: str,
    default: _Number,
    parse: Callable[[str], _Number],
    what: str,
    *,
    minimum: _Number | None = None,
    maximum: _Number | None = None,
) -> _Number:
    """``parse`` of the stripped value, ``default`` when unset or blank; a bad value or one out of range raises."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        value = parse(raw.strip())
    except (ValueError, InvalidOperation) as exc:
        raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not {what}") from exc
    if minimum is not None and value < minimum:
        raise ImproperlyConfiguredEnv(f"{name}={value} is below its minimum {minimum}")
    if maximum is not None and value > maximum:
        raise ImproperlyConfiguredEnv(f"{name}={value} is above its maximum {maximum}")
    return value


def env_choice(name: str, default: str, *, choices: tuple[str, ...]) -> str:
    """One of ``choices`` (case-insensitive, stripped), ``default`` when unset or blank; anything else raises."""
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value not in choices:
        raise ImproperlyConfiguredEnv(f"{name}={raw!r} is not one of {', '.join(choices)}")
    return value


def env_list(name: str, default: list[str]) -> list[str]:
    raw = os.environ.get(name)
    if raw is None:
        return default
    return [item.strip() for item in raw.split(",") if item.strip()]


def env_url(name: str, *, schemes: tuple[str, ...]) -> str | None:
    """A URL whose scheme is one of ``schemes``, or None when unset."""
    value = env_opt(name)
    if value is None:
        return None
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    if scheme not in schemes:
        raise ImproperlyConfiguredEnv(f"{name}={value!r}: scheme must be one of {', '.join(schemes)}")
    return value
