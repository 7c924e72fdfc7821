"""Fleet test fixtures: Celery tasks run in-process even when REDIS_URL points at a real broker; a fake station."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from chargers.services import station_call
from vpp.celery import app

ANSWER = {"status": "Accepted"}


@pytest.fixture(autouse=True)
def celery_eager() -> Iterator[None]:
    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


class FakeStationLayer:
    """The channel layer as the server process holding the stations' sockets uses it: every ``ocpp.call`` sent
    reaches "the station" (``sent``) and is answered ``ANSWER``."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self._replies: dict[str, dict[str, Any]] = {}
        self.answer: dict[str, Any] = ANSWER  # what "the station" answers every call with

    async def new_channel(self) -> str:
        return f"reply!{len(self.sent)}"

    async def send(self, channel: str, message: dict[str, Any]) -> None:
        self.sent.append((channel, message))
        self._replies[message["reply_to"]] = {"status": "result", "payload": self.answer}

    async def receive(self, channel: str) -> dict[str, Any]:
        return self._replies.pop(channel)


@pytest.fixture
def layer(monkeypatch: pytest.MonkeyPatch) -> FakeStationLayer:
    """Stations answer every call ``station_call`` sends, wherever it comes from (API, command line)."""
    fake = FakeStationLayer()
    monkeypatch.setattr(station_call, "get_channel_layer", lambda: fake)
    return fake
