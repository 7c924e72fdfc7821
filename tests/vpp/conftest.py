"""Fixtures for the VPP tests: the live CSMS (a Daphne subprocess) is shared with the chargers tests."""

from tests.chargers.conftest import live_csms  # noqa: F401 - re-exported fixture
