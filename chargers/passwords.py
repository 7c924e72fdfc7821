"""Station (machine) passwords: salted HMAC-SHA256, verified in microseconds with a constant-time compare.

Station passwords are OCPP BasicAuthPassword values: 16-40 random characters generated for a machine, not
human-chosen. A slow key-derivation function (Django's PBKDF2) buys nothing against such entropy and would make
1,000 stations reconnecting at once queue behind the CPU, so a single keyed hash with a per-station salt is used.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

ALGORITHM = "hmac-sha256"
MIN_LENGTH = 16
MAX_LENGTH = 40


class WeakStationPassword(ValueError):
    """The password is not a valid OCPP BasicAuthPassword (16-40 characters)."""


def password_hash(raw: str) -> str:
    """Encode ``raw`` as ``hmac-sha256$<salt>$<hexdigest>``."""
    if not MIN_LENGTH <= len(raw) <= MAX_LENGTH:
        raise WeakStationPassword(f"station passwords are {MIN_LENGTH}-{MAX_LENGTH} characters, got {len(raw)}")
    salt = secrets.token_hex(16)
    return f"{ALGORITHM}${salt}${_digest(salt, raw)}"


def password_verify(raw: str, encoded: str) -> bool:
    """True when ``raw`` matches ``encoded``; False for any malformed or empty stored value."""
    try:
        algorithm, salt, digest = encoded.split("$", 2)
    except ValueError:
        return False
    if algorithm != ALGORITHM:
        return False
    return hmac.compare_digest(_digest(salt, raw), digest)


def _digest(salt: str, raw: str) -> str:
    return hmac.new(salt.encode(), raw.encode(), hashlib.sha256).hexdigest()
