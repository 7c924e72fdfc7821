"""The fleet subscribes to the CSMS's committed telemetry when the apps load (the CSMS imports nothing of it)."""

from __future__ import annotations

from chargers.telemetry import telemetry_receivers
from fleet.telemetry import on_telemetry_committed


def test_the_fleet_receives_committed_telemetry_once_the_apps_are_loaded() -> None:
    assert on_telemetry_committed in telemetry_receivers()
