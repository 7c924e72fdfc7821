"""The hook committed telemetry leaves the CSMS through: receivers registered by the apps above, then the live feed."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from chargers import telemetry
from chargers.telemetry import (
    TELEMETRY_GROUP,
    TelemetryUpdate,
    telemetry_committed,
    telemetry_receiver_register,
    telemetry_receivers,
)

UPDATE = TelemetryUpdate("cs-1", "meter", datetime(2026, 1, 15, 10, 0, tzinfo=UTC), evse_id=1, values={"SoC": 55})


@pytest.fixture
def no_receivers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Start from no registered receivers (the apps' own are restored afterwards)."""
    monkeypatch.setattr(telemetry, "_receivers", [])


def test_a_registered_receiver_gets_the_committed_updates(no_receivers: None) -> None:
    # given a receiver registered (twice: an app's ready() may run again)
    seen: list[list[TelemetryUpdate]] = []
    telemetry_receiver_register(seen.append)
    telemetry_receiver_register(seen.append)
    # when telemetry is committed
    telemetry_committed(updates=[UPDATE])
    # then the receiver got it, once
    assert seen == [[UPDATE]]
    assert telemetry_receivers() == (seen.append,)


async def test_a_failing_receiver_is_logged_and_neither_stops_the_others_nor_the_feed(
    no_receivers: None, caplog: pytest.LogCaptureFixture
) -> None:
    # given a receiver that raises, registered before one that works, and a live-feed subscriber
    def broken(updates: list[TelemetryUpdate]) -> None:
        raise RuntimeError("receiver bug")

    seen: list[list[TelemetryUpdate]] = []
    telemetry_receiver_register(broken)
    telemetry_receiver_register(seen.append)
    layer = get_channel_layer()
    assert layer is not None
    channel = await layer.new_channel()
    await layer.group_add(TELEMETRY_GROUP, channel)
    # when telemetry is committed (off the writer thread, as the heartbeat sweep does)
    with caplog.at_level(logging.ERROR, logger="chargers.telemetry"):
        await sync_to_async(telemetry_committed)(updates=[UPDATE])
    # then the failure is logged, the next receiver still ran and the feed was still published
    assert "receiver bug" in caplog.text
    assert seen == [[UPDATE]]
    message = await layer.receive(channel)
    assert message["type"] == "telemetry.update"
    assert message["updates"][0]["station_id"] == "cs-1"
    await layer.group_discard(TELEMETRY_GROUP, channel)
