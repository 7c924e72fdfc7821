"""The OCPP consumer must not pay Channels' per-message database clean-up hop (a thread round trip per frame)."""

from __future__ import annotations

from typing import Any

import pytest

from chargers.consumers import OcppConsumer


async def test_a_frame_reaches_its_handler_without_a_sync_thread_hop(monkeypatch):
    # Given Channels' per-message connection clean-up, instrumented
    hops: list[int] = []

    async def clean_up() -> None:
        hops.append(1)

    monkeypatch.setattr("channels.consumer.aclose_old_connections", clean_up)
    consumer = OcppConsumer()
    seen: list[dict[str, Any]] = []

    async def on_receive(message: dict[str, Any]) -> None:
        seen.append(message)

    consumer.websocket_receive = on_receive  # type: ignore[method-assign]
    # When a frame is dispatched
    await consumer.dispatch({"type": "websocket.receive", "text": '[2,"1","Heartbeat",{}]'})
    # Then the handler got it and no clean-up hop happened
    assert seen == [{"type": "websocket.receive", "text": '[2,"1","Heartbeat",{}]'}]
    assert hops == []


async def test_a_message_without_a_handler_is_refused():
    with pytest.raises(ValueError, match="No handler"):
        await OcppConsumer().dispatch({"type": "no.such.thing"})
