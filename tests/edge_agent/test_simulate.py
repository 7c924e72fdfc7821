"""The simulated fleet's status line: what a technician watches to see a CSMS falling behind."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from edge_agent.simulate import run_fleet


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_it_logs_the_fleet_status_with_the_messages_queued_while_the_csms_is_unreachable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given three agents whose CSMS does not listen (nothing can be sent)
    url = f"ws://127.0.0.1:{unused_port()}/ocpp"
    # When the fleet runs for a moment
    with caplog.at_level(logging.INFO, logger="edge_agent.session"):
        report = await run_fleet(3, url, "st", "pw", duration_s=1.5, tick_s=0.25, var_dir=tmp_path)
    # Then its status line says none is connected and counts the messages each agent holds (its transaction start)
    fields = [getattr(r, "fields", {}) for r in caplog.records]
    statuses = [f for f in fields if f.get("event") == "fleet_status"]
    assert statuses, "no fleet_status line"
    last = statuses[-1]
    assert last["connected"] == 0
    assert last["queued"] >= 3
    assert last["queued_max"] >= 1
    assert report.queued >= last["queued"]
