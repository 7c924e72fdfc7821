"""Fixtures for the VPP tests: the live CSMS (a Daphne subprocess) is shared with the chargers tests."""

from __future__ import annotations

import pytest

from chargers import fanout
from tests.chargers.conftest import live_csms  # noqa: F401 - re-exported fixture
from tests.vpp.stand_ins import AnsweringStation


@pytest.fixture
def stations(monkeypatch):
    """Register stand-in stations in this process's fan-out registry; unregistered after the test.

    This process is not a server: it does not join the csms.nodes group (a listener left on a closed test loop
    would hold the Redis layer's receive lock).
    """
    monkeypatch.setattr(fanout.NodeListener, "ensure_started", classmethod(lambda cls: None))
    registered: dict[str, AnsweringStation] = {}

    def register(station_id: str, station: AnsweringStation) -> None:
        registered[station_id] = station
        fanout.LOCAL.register(station_id, station)

    yield register
    for sid, station in registered.items():
        fanout.LOCAL.unregister(sid, station)
