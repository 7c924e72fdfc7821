"""Project-wide fixtures. App-specific fixtures live in tests/<app>/conftest.py."""

from __future__ import annotations
