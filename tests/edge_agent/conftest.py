"""Fixtures for the edge agent: a recording in-test CSMS (real WebSockets) and agents wired to it."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.buffer import Outbox, OutboxStore
from edge_agent.clock import SystemClock
from edge_agent.frequency import SimulatedFrequency
from edge_agent.hardware.sim import SimulatedCar, SimulatedHardware
from edge_agent.ledger import Ledger
from edge_agent.ocpp_client import OcppClient
from edge_agent.runner import tick_forever
from edge_agent.station import Station, StationParams
from tests.edge_agent.csms import RecordingCsms

PASSWORD = "s3cret-station-pw"


@pytest.fixture
async def csms() -> AsyncIterator[RecordingCsms]:
    server = await RecordingCsms(stations={f"edge-{i}": PASSWORD for i in range(1, 6)}).start()
    yield server
    await server.stop()


@dataclass
class Agent:
    station: Station
    client: OcppClient
    store: OutboxStore
    hw: SimulatedHardware
    grid: SimulatedFrequency
    stop_event: asyncio.Event
    tasks: list[asyncio.Task[Any]]

    async def stop(self) -> None:
        self.stop_event.set()
        self.client.stop()
        await self.station.firmware.close()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    async def crash(self) -> None:
        """Kill the agent without any goodbye (as a power cut would): tasks cancelled, store closed as is."""
        for task in self.tasks:
            task.cancel()
        self.client.drop_connection()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.store._db.close()


@pytest.fixture
async def make_agent(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    agents: list[Agent] = []

    async def _make(
        csms: RecordingCsms,
        station_id: str = "edge-1",
        *,
        password: str = PASSWORD,
        versions: list[str] | None = None,
        tick_s: float = 0.05,
        soc: float = 0.6,
        plug: bool = True,
        start: bool = True,
        db: Path | None = None,
        ledger: Ledger | None = None,
        **params: Any,
    ) -> Agent:
        clock = SystemClock()
        store = OutboxStore(db or tmp_path / f"{station_id}.sqlite3")
        grid = SimulatedFrequency(sigma_hz=0.0, seed=1)
        hw = SimulatedHardware(clock=clock, grid=grid, seed=1)
        st = Station(
            StationParams(station_id=station_id, tick_s=tick_s, **{"idle_meter_interval_s": 1.0, **params}),
            clock=clock,
            hardware=hw,
            grid=grid,
            outbox=Outbox(store, station_id),
        )
        client = OcppClient(
            st, csms_url=csms.url, password=password, versions=versions, reconnect_min_s=0.05, reconnect_max_s=0.2,
            call_timeout_s=3.0, seed=1, ledger=ledger,
        )  # fmt: skip
        stop = asyncio.Event()
        tasks: list[asyncio.Task[Any]] = []
        if plug:
            st.plug_in(SimulatedCar(soc=soc, departure=st.departure_in(8), iso15118_latency_s=0.01))
        if start:
            tasks.append(asyncio.ensure_future(client.run()))
            tasks.append(asyncio.ensure_future(tick_forever([st], store, tick_s, stop=stop)))
        agent = Agent(st, client, store, hw, grid, stop, tasks)
        agents.append(agent)
        return agent

    yield _make
    for agent in agents:
        with contextlib.suppress(Exception):
            await agent.stop()
        with contextlib.suppress(Exception):
            agent.store.close()
