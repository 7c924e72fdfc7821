"""Closed-loop tracking over real sockets: edge agents whose chargers deliver 90 % of what they are told, the real
CSMS and dispatcher, the signal through ``ws/regulation``; the fleet's metered response must reach the requested
regulation once the dispatcher has measured the cars.

The agents are the edge agent's own simulated fleet (``edge_agent.simulate.Fleet``: real OCPP over real WebSockets,
in a thread of this process), with the simulator's charger swapped for one whose inverter delivers 90 % of its
command, as a charger with a calibration error or a loss the station does not see would.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import edge_agent.simulate
from edge_agent.hardware.sim import SimulatedHardware
from markets.regulation.signals import SignalTrace
from tests.chargers.conftest import LiveServer, start_server, stop_server
from vpp.replay import harness, results

pytestmark = [pytest.mark.live, pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

AGENTS = 6
DELIVERED = 0.9  # the share of its command each charger delivers
SIGNAL_S = 90  # 45 values, one every 2 s
LEARN_S = 30  # the first updates, while the gains are learnt, are not judged


class ShortCharger(SimulatedHardware):
    """The edge simulator's charger whose inverter delivers 90 % of the power it is commanded."""

    def apply_now(self, power_w: float, energize: bool) -> None:
        super().apply_now(DELIVERED * power_w, energize)


class AgentsThread:
    """``edge_agent.simulate.Fleet`` on its own event loop in a thread, stopped from the test's thread."""

    def __init__(self, fleet: edge_agent.simulate.Fleet) -> None:
        self.fleet = fleet
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="edge-agents", daemon=True)

    def _run(self) -> None:
        self.loop.run_until_complete(self.fleet.run())

    def __enter__(self) -> AgentsThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.fleet.stop)
        self.thread.join(timeout=30)


@pytest.fixture
def csms() -> Iterator[LiveServer]:
    server = start_server()
    yield server
    stop_server(server)


def _wait(predicate: Any, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {within:.0f} s")
        time.sleep(0.5)


def _signal() -> SignalTrace:
    """A RegD-like signal: a slow swing plus faster moves, every 2 s."""
    offsets = np.arange(0, SIGNAL_S + 1, 2, dtype=np.int64)
    values = 0.7 * np.sin(offsets / 14.0) + 0.2 * np.sin(offsets / 3.1)
    return SignalTrace(name="closed-loop test", offsets_s=offsets, values=np.round(values, 5))


def test_agents_delivering_90_percent_track_the_requested_regulation_after_a_few_updates(
    csms: LiveServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Given six edge agents on real sockets whose chargers deliver 90 % of their command
    monkeypatch.setattr(edge_agent.simulate, "SimulatedHardware", ShortCharger)
    password = harness.env_password()
    ids = harness.stations_provision(count=AGENTS, prefix="loop", password=password)
    fleet = edge_agent.simulate.Fleet(AGENTS, csms.ws_url, "loop", password, tick_s=0.1, var_dir=tmp_path, seed=5)
    with AgentsThread(fleet):
        _wait(lambda: len(harness.stations_ready(ids)) == AGENTS, 60, "agents ready")
        ready = harness.stations_ready(ids)
        portfolio = f"fleet-{harness.fleet_register(ready, name='closed loop').pk}"
        product = harness.product_default()
        capacity = harness.capacity_offer_w(product=product, portfolio=portfolio, share=0.5)
        t0 = time.time() + 1.0
        harness.award_create(product=product, portfolio=portfolio, capacity_w=capacity,
                             start=datetime.now(UTC) - timedelta(minutes=1),
                             end=datetime.now(UTC) + timedelta(minutes=10))  # fmt: skip
        # When the operator's signal is followed for 90 s through ws/regulation
        trace = _signal()
        follow = harness.signal_follow(ws_base=csms.ws_url.removesuffix("/ocpp"), token=harness.utility_token(),
                                       product="pjm:reg-d", portfolio=portfolio, trace=trace, t0=t0, speed=1.0,
                                       limit_s=SIGNAL_S)  # fmt: skip
        answers = asyncio.run(follow)
        times = t0 + trace.offsets_s.astype(float)
        last = datetime.fromtimestamp(float(times[-1]) + 2.0, UTC)
        harness.meter_values_await(station_ids=ids, since=last, timeout_s=30)
    assert all(a.get("ok") and a.get("dispatched") for a in answers), answers[:3]
    rows = results.replay_rows(product=product, portfolio=portfolio, station_ids=ids, times_s=times,
                               signal=trace.values, sample_at_s=1.0)  # fmt: skip
    requested = rows.signal * rows.capacity_w
    delivered = rows.basepoint_w - rows.fleet_power_w
    judged = trace.offsets_s >= LEARN_S
    # Then, after the first updates, the fleet delivers what is requested: the fitted amplitude is within 3 % of
    # it (open loop, 90 % chargers would deliver 90 %), and 19 values in 20 miss by less than 5 % of the capacity.
    # (Not every one: each row is read 1 s after its signal, and on a loaded CI machine a command that took longer
    # than that shows the previous one in its row, 18 % off once in CI; that is the transport's delay, not tracking.)
    amplitude = float(delivered[judged] @ requested[judged] / (requested[judged] @ requested[judged]))
    misses = np.abs(delivered[judged] - requested[judged]) / rows.capacity_w
    typical = float(np.quantile(misses, 0.95))
    assert 0.97 <= amplitude <= 1.03, (amplitude, typical)
    assert typical < 0.05, (amplitude, typical, float(misses.max()))
