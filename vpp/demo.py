"""Demo credentials for `make run`: taken from the environment, else generated once and kept in var/.

Nothing secret lives in the code; a fresh checkout gets its own random passwords.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path

from django.conf import settings

from vpp.env import env_opt


@dataclass(frozen=True)
class DemoCredentials:
    admin_username: str
    admin_password: str
    station_password: str
    member_password: str  # the demo organisations' users (DEMO_MEMBERS)


# The demo's people besides the operator (admin): one login per role, in two organisations, to show the scoping.
DEMO_MEMBERS = (
    ("demo-manager", "fleet_manager", "demo"),
    ("demo-bidder", "bidding_admin", "demo"),
    ("harbour-manager", "fleet_manager", "harbour"),
)


def demo_credentials() -> DemoCredentials:
    path = Path(settings.VAR_DIR) / "demo-credentials.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    creds = DemoCredentials(
        admin_username=stored.get("admin_username", "admin"),
        admin_password=env_opt("DEMO_ADMIN_PASSWORD") or stored.get("admin_password") or secrets.token_urlsafe(12),
        # OCPP BasicAuthPassword: 16-40 characters.
        station_password=env_opt("DEMO_STATION_PASSWORD")
        or stored.get("station_password")
        or secrets.token_urlsafe(18),
        member_password=env_opt("DEMO_MEMBER_PASSWORD") or stored.get("member_password") or secrets.token_urlsafe(12),
    )
    if asdict(creds) != stored:
        path.write_text(json.dumps(asdict(creds), indent=2))
        path.chmod(0o600)
    return creds
